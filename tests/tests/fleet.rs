//! The fleet in real containers (docker/compose.yaml): scale-out, drain on `docker stop`, a
//! rolling restart, a partitioned worker, a Redis container replaced by an empty one, and the
//! model workflow over a shared model cache. Each test runs its own compose project; they run
//! one at a time. Without a Docker engine every test says so in one line and passes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harmonia_shared::model::{RunStatus, RunTask, TaskStatus};
use harmonia_tests::fleet::{self, Fleet};
use harmonia_tests::{submission, wait_for};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

/// `None` (and one line on stderr) when there is no Docker engine to test against.
fn docker() -> Option<()> {
    match fleet::unavailable() {
        Some(why) => {
            eprintln!("fleet test skipped: {why}");
            None
        }
        None => Some(()),
    }
}

/// Submits `runs` runs of `per_run` independent tasks and returns their ids.
async fn submit_runs(
    fleet: &Fleet,
    name: &str,
    runs: usize,
    per_run: usize,
    task: serde_json::Value,
) -> anyhow::Result<Vec<ObjectId>> {
    let mut ids = Vec::new();
    for r in 0..runs {
        let tasks: Vec<serde_json::Value> = (0..per_run)
            .map(|i| {
                let mut t = task.clone();
                t["id"] = json!(format!("t{i}"));
                t
            })
            .collect();
        let request = format!("{name}-{r}");
        ids.push(
            fleet
                .client
                .start(&submission(&request, json!(tasks)))
                .await?,
        );
    }
    Ok(ids)
}

async fn count(fleet: &Fleet, status: TaskStatus) -> anyhow::Result<u64> {
    Ok(fleet
        .client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks")
        .count_documents(doc! { "status": status.as_str() })
        .await?)
}

async fn all_tasks(fleet: &Fleet, runs: &[ObjectId]) -> anyhow::Result<Vec<RunTask>> {
    let mut tasks = Vec::new();
    for run in runs {
        tasks.extend(fleet.client.tasks(*run).await?);
    }
    Ok(tasks)
}

/// Every task succeeded, on its first attempt (so it ran exactly once).
fn assert_each_ran_once(tasks: &[RunTask]) {
    for t in tasks {
        assert_eq!(
            t.status,
            TaskStatus::Succeeded,
            "task {} {:?}",
            t.node_id,
            t.error
        );
        assert_eq!(t.attempt, 1, "task {} ran {} times", t.node_id, t.attempt);
    }
}

/// Completions per second between two samples `(time, succeeded)`.
fn rate(a: (Instant, u64), b: (Instant, u64)) -> f64 {
    (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64().max(1e-3)
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_one_worker_container_to_four_mid_run_runs_every_task_exactly_once() {
    if docker().is_none() {
        return;
    }
    let fleet = Fleet::up("scale-out", 1).await.expect("fleet up");
    let sleep = json!({"type": "debug.sleep", "params": {"ms": 20}});
    let runs = submit_runs(&fleet, "scale", 20, 100, sleep)
        .await
        .expect("submit");

    // One worker for a few seconds: its rate.
    let first = wait_for(
        "100 tasks done by one worker",
        Duration::from_secs(120),
        || async {
            let done = count(&fleet, TaskStatus::Succeeded).await?;
            Ok((done >= 100).then_some((Instant::now(), done)))
        },
    )
    .await
    .expect("one worker works");
    tokio::time::sleep(Duration::from_secs(3)).await; // a measuring window, not a synchronisation
    let before = (
        Instant::now(),
        count(&fleet, TaskStatus::Succeeded).await.expect("count"),
    );

    fleet.scale_workers(4).expect("scale to 4");
    fleet.await_workers(4).await.expect("4 workers up");
    let scaled = (
        Instant::now(),
        count(&fleet, TaskStatus::Succeeded).await.expect("count"),
    );
    for run in &runs {
        let run = fleet
            .client
            .finished(*run, Duration::from_secs(300))
            .await
            .expect("run ends");
        assert_eq!(run.status, RunStatus::Succeeded);
    }
    let end = (
        Instant::now(),
        count(&fleet, TaskStatus::Succeeded).await.expect("count"),
    );
    let tasks = all_tasks(&fleet, &runs).await.expect("tasks");
    assert_eq!(tasks.len(), 2000);
    assert_each_ran_once(&tasks);
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tasks {
        *per_worker
            .entry(t.worker_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    eprintln!(
        "scale-out: 1 worker {:.0} tasks/s; 4 workers {:.0} tasks/s ({} tasks after scaling); per worker {per_worker:?}",
        rate(first, before),
        rate(scaled, end),
        end.1 - scaled.1,
    );
    assert_eq!(
        per_worker.len(),
        4,
        "every added worker took tasks: {per_worker:?}"
    );
}
