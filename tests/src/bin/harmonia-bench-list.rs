//! Benchmark of run listing (`GET /api/v1/runs`, `harmonia-scheduler list`): 10,000 runs in a
//! real mongod, each filter and sort, first page and a page reached by cursor. Every query
//! runs against the indexed collection and against the same runs in a collection without the
//! listing indexes (the peer in the same run); prints the plan, keys and documents examined,
//! and p50/p95 latencies with their ratio. Asserts nothing. Run it through `scripts/bench-list`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::Instant;

use clap::Parser;
use harmonia_shared::model::{RunStatus, TaskCounts, WorkflowRun};
use harmonia_shared::store::run_list::plan_stages;
use harmonia_shared::store::{Order, RunQuery, RunSort, Store};
use harmonia_tests::Scope;
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

#[derive(Debug, Parser)]
#[command(about = "Harmonia run-listing benchmark")]
struct Args {
    /// Runs in the collection.
    #[arg(long, default_value_t = 10_000)]
    runs: i64,
    /// Timed repetitions of each query.
    #[arg(long, default_value_t = 50)]
    reps: usize,
    /// Runs per page.
    #[arg(long, default_value_t = 50)]
    limit: i64,
}

const T0: i64 = 1_790_000_000_000;
const WORKSPACES: i64 = 4;

fn run(i: i64) -> WorkflowRun {
    WorkflowRun {
        id: ObjectId::new(),
        request_id: format!("bench-{i}"),
        workspace: format!("ws{}", i % WORKSPACES),
        project: format!("p{}", i % 7),
        name: format!(
            "{} nightly {i:05}",
            ["embed", "generate", "convert"][(i % 3) as usize]
        ),
        created_by: format!("user{}", i % 13),
        tags: vec![format!("t{}", i % 11), format!("batch{}", i % 5)],
        task_types: if i % 3 == 0 {
            vec!["model.download".into(), "inference.embed".into()]
        } else {
            vec!["debug.noop".into()]
        },
        status: RunStatus::ALL[(i % 5) as usize],
        task_count: 3,
        counts: TaskCounts::default(),
        failed_task_ids: vec![],
        retry_of: None,
        cancel_requested: false,
        created_at: DateTime::from_millis(T0 + i * 60_000),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        schema_version: harmonia_shared::model::SCHEMA_VERSION,
    }
}

fn queries(limit: i64) -> Vec<(&'static str, RunQuery)> {
    let ws = || RunQuery {
        workspace: Some("ws1".into()),
        limit,
        ..RunQuery::default()
    };
    vec![
        ("newest", ws()),
        (
            "oldest",
            RunQuery {
                order: Order::Asc,
                ..ws()
            },
        ),
        (
            "project",
            RunQuery {
                project: Some("p3".into()),
                ..ws()
            },
        ),
        (
            "status",
            RunQuery {
                status: Some(RunStatus::Failed),
                ..ws()
            },
        ),
        (
            "task_type",
            RunQuery {
                task_type: Some("inference.embed".into()),
                ..ws()
            },
        ),
        (
            "tag",
            RunQuery {
                tag: Some("t7".into()),
                ..ws()
            },
        ),
        (
            "created_by",
            RunQuery {
                created_by: Some("user5".into()),
                ..ws()
            },
        ),
        (
            "since/until",
            RunQuery {
                since: Some(DateTime::from_millis(T0 + 2_000 * 60_000)),
                until: Some(DateTime::from_millis(T0 + 4_000 * 60_000)),
                ..ws()
            },
        ),
        (
            "q=embed",
            RunQuery {
                name_contains: Some("embed".into()),
                ..ws()
            },
        ),
        (
            "sort=name",
            RunQuery {
                sort: RunSort::Name,
                order: Order::Asc,
                ..ws()
            },
        ),
        (
            "status+tag",
            RunQuery {
                status: Some(RunStatus::Queued),
                tag: Some("t3".into()),
                ..ws()
            },
        ),
        (
            "all workspaces",
            RunQuery {
                limit,
                ..RunQuery::default()
            },
        ),
    ]
}

/// p50 and p95 of `reps` timed `list` calls, in ms.
async fn time(store: &Store, q: &RunQuery, reps: usize) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let page = store.runs().list(q).await??;
        std::hint::black_box(page);
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[reps / 2], ms[(reps * 95 / 100).min(reps - 1)]))
}

async fn fill(store: &Store, n: i64) -> anyhow::Result<()> {
    let runs: Vec<WorkflowRun> = (0..n).map(run).collect();
    for chunk in runs.chunks(1000) {
        store.runs().insert_many(chunk).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scope = Scope::new("bench-list");
    let indexed = Store::connect(&scope.config.mongo).await?;
    harmonia_shared::store::migrate::migrate(&indexed).await?;
    let mut bare_config = scope.config.mongo.clone();
    bare_config.database = format!("{}_bare", bare_config.database);
    // The peer: the same documents with only `_id` indexed.
    let bare = Store::connect(&bare_config).await?;
    let start = Instant::now();
    fill(&indexed, args.runs).await?;
    fill(&bare, args.runs).await?;
    println!(
        "{} runs in {} workspaces, inserted twice in {:.1} s; {} reps per query, pages of {}",
        args.runs,
        WORKSPACES,
        start.elapsed().as_secs_f64(),
        args.reps,
        args.limit
    );
    println!(
        "{:<16} {:<6} {:>9} {:>9} {:>9} {:>9} {:>7}  plan (indexed)",
        "query", "page", "p50 ms", "p95 ms", "bare p50", "bare p95", "ratio"
    );
    for (name, mut q) in queries(args.limit) {
        let first = indexed.runs().list(&q).await??;
        for (page, cursor) in [("first", None), ("third", first.next.clone())] {
            q.cursor = cursor;
            if page == "third" {
                // Two pages on, so the cursor is a real one from deep in the listing.
                let second = indexed.runs().list(&q).await??;
                q.cursor = second.next;
            }
            let (p50, p95) = time(&indexed, &q, args.reps).await?;
            let (b50, b95) = time(&bare, &q, args.reps).await?;
            let stages = plan_stages(&indexed.runs().explain_list(&q).await?);
            println!(
                "{name:<16} {page:<6} {p50:>9.2} {p95:>9.2} {b50:>9.2} {b95:>9.2} {:>6.1}x  {}",
                b50 / p50.max(1e-3),
                stages.join(" < ")
            );
        }
    }
    Ok(())
}
