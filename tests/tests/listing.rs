//! Listing runs (`GET /api/v1/runs`, `harmonia-scheduler list`): every filter and sort returns
//! the right runs, pages cover them exactly once, and MongoDB serves each query from an index.

use harmonia_shared::model::{RunStatus, TaskCounts, WorkflowRun};
use harmonia_shared::store::run_list::plan_stages;
use harmonia_shared::store::{Order, RunQuery, RunSort, Store};
use harmonia_tests::Scope;
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

const T0: i64 = 1_790_000_000_000;

/// Run `i` of the fixture: attributes cycle with different periods so filters intersect.
fn run(i: i64) -> WorkflowRun {
    let status = RunStatus::ALL[(i % 5) as usize];
    WorkflowRun {
        id: ObjectId::new(),
        request_id: format!("req-{i}"),
        workspace: if i % 10 == 9 {
            "other".into()
        } else {
            "ml".into()
        },
        project: format!("p{}", i % 3),
        name: format!(
            "{} run {i:03}",
            if i % 4 == 0 { "Embed" } else { "generate" }
        ),
        created_by: format!("user{}", i % 2),
        tags: vec![format!("t{}", i % 6), "all".into()],
        task_types: if i % 2 == 0 {
            vec!["debug.noop".into()]
        } else {
            vec!["model.embed".into(), "debug.noop".into()]
        },
        status,
        task_count: 1,
        counts: TaskCounts::default(),
        failed_task_ids: vec![],
        retry_of: None,
        cancel_requested: false,
        // Two runs per second, so pages cut through equal timestamps too.
        created_at: DateTime::from_millis(T0 + (i / 2) * 1000),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        schema_version: harmonia_shared::model::SCHEMA_VERSION,
    }
}

async fn fixture(name: &str) -> (Store, Vec<WorkflowRun>) {
    let scope = Scope::new(name);
    let store = Store::connect(&scope.config.mongo).await.expect("mongo");
    harmonia_shared::store::migrate::migrate(&store)
        .await
        .expect("migrate");
    let runs: Vec<WorkflowRun> = (0..120).map(run).collect();
    for r in &runs {
        assert!(store.runs().insert(r).await.expect("insert"));
    }
    (store, runs)
}

/// Every page of `q`, following cursors.
async fn all_pages(store: &Store, mut q: RunQuery) -> Vec<WorkflowRun> {
    let mut out = Vec::new();
    loop {
        let page = store.runs().list(&q).await.expect("list").expect("cursor");
        out.extend(page.runs);
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => return out,
        }
    }
}

/// A listing query, named, with the predicate its results must satisfy.
type Case = (&'static str, RunQuery, fn(&WorkflowRun) -> bool);

fn queries() -> Vec<Case> {
    let ml = || RunQuery {
        workspace: Some("ml".into()),
        limit: 7,
        ..RunQuery::default()
    };
    vec![
        ("workspace", ml(), |_| true),
        (
            "project",
            RunQuery {
                project: Some("p1".into()),
                ..ml()
            },
            |r| r.project == "p1",
        ),
        (
            "status",
            RunQuery {
                status: Some(RunStatus::Failed),
                ..ml()
            },
            |r| r.status == RunStatus::Failed,
        ),
        (
            "task type",
            RunQuery {
                task_type: Some("model.embed".into()),
                ..ml()
            },
            |r| r.task_types.contains(&"model.embed".to_owned()),
        ),
        (
            "tag",
            RunQuery {
                tag: Some("t4".into()),
                ..ml()
            },
            |r| r.tags.contains(&"t4".to_owned()),
        ),
        (
            "created_by",
            RunQuery {
                created_by: Some("user1".into()),
                ..ml()
            },
            |r| r.created_by == "user1",
        ),
        (
            "date range",
            RunQuery {
                since: Some(DateTime::from_millis(T0 + 10_000)),
                until: Some(DateTime::from_millis(T0 + 30_000)),
                ..ml()
            },
            |r| (T0 + 10_000..T0 + 30_000).contains(&r.created_at.timestamp_millis()),
        ),
        (
            "name",
            RunQuery {
                name_contains: Some("embed".into()),
                ..ml()
            },
            |r| r.name.to_lowercase().contains("embed"),
        ),
        (
            "status + tag",
            RunQuery {
                status: Some(RunStatus::Queued),
                tag: Some("t0".into()),
                ..ml()
            },
            |r| r.status == RunStatus::Queued && r.tags.contains(&"t0".to_owned()),
        ),
        (
            "name sort",
            RunQuery {
                sort: RunSort::Name,
                order: Order::Asc,
                ..ml()
            },
            |_| true,
        ),
        (
            "oldest first",
            RunQuery {
                order: Order::Asc,
                ..ml()
            },
            |_| true,
        ),
        (
            "project by name",
            RunQuery {
                project: Some("p2".into()),
                sort: RunSort::Name,
                ..ml()
            },
            |r| r.project == "p2",
        ),
    ]
}

fn expected_order(q: &RunQuery, mut runs: Vec<&WorkflowRun>) -> Vec<ObjectId> {
    runs.sort_by(|a, b| {
        let key = match q.sort {
            RunSort::CreatedAt => a.created_at.cmp(&b.created_at),
            RunSort::Name => a.name.cmp(&b.name),
        };
        key.then(a.id.cmp(&b.id))
    });
    if q.order == Order::Desc {
        runs.reverse();
    }
    runs.into_iter().map(|r| r.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_filter_and_sort_pages_through_exactly_the_matching_runs() {
    let (store, runs) = fixture("listing-filters").await;
    for (what, q, keep) in queries() {
        let want = expected_order(
            &q,
            runs.iter()
                .filter(|r| r.workspace == "ml" && keep(r))
                .collect(),
        );
        assert!(!want.is_empty(), "{what}: the fixture has matches");
        let got: Vec<ObjectId> = all_pages(&store, q.clone())
            .await
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listing_query_is_served_by_an_index() {
    let (store, _) = fixture("listing-explain").await;
    for (what, mut q, _) in queries() {
        // Explain a later page too: the cursor adds an $or on the sort keys.
        let first = store.runs().list(&q).await.unwrap().unwrap();
        for cursor in [None, first.next] {
            q.cursor = cursor;
            let explain = store.runs().explain_list(&q).await.unwrap();
            let stages = plan_stages(&explain);
            assert!(stages.iter().any(|s| s == "IXSCAN"), "{what}: {stages:?}");
            assert!(
                !stages.iter().any(|s| s == "COLLSCAN"),
                "{what}: {stages:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_from_another_sort_is_refused() {
    let (store, _) = fixture("listing-cursor").await;
    let q = RunQuery {
        limit: 5,
        ..RunQuery::default()
    };
    let next = store.runs().list(&q).await.unwrap().unwrap().next.unwrap();
    let other = RunQuery {
        sort: RunSort::Name,
        cursor: Some(next),
        ..q.clone()
    };
    assert!(store.runs().list(&other).await.unwrap().is_err());
    let garbage = RunQuery {
        cursor: Some("zz".into()),
        ..q
    };
    assert!(store.runs().list(&garbage).await.unwrap().is_err());
}
