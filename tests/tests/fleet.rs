//! The fleet in real containers (docker/compose.yaml): scale-out, drain on `docker stop`, a
//! rolling restart, a partitioned worker, a Redis container replaced by an empty one, and the
//! model workflow over a shared model cache. Each test runs its own compose project; they run
//! one at a time. Without a Docker engine every test says so in one line and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harmonia_shared::model::{RunStatus, RunTask, TaskStatus};
use harmonia_tests::client::chain_and_fan;
use harmonia_tests::fleet::{self, Fleet};
use harmonia_tests::{submission, wait_for};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

/// `None` when there is no Docker engine to test against; the suite then says why, once.
fn docker() -> Option<()> {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let mut first = false;
    let why = WHY.get_or_init(|| {
        first = true;
        fleet::unavailable()
    });
    match why {
        Some(why) if first => {
            eprintln!("fleet tests skipped: {why}");
            None
        }
        Some(_) => None,
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

/// Waits until at least `n` tasks of the fleet have `status`.
async fn at_least(fleet: &Fleet, n: u64, status: TaskStatus) {
    let what = format!("{n} tasks {}", status.as_str());
    wait_for(&what, Duration::from_secs(120), || async {
        Ok((count(fleet, status).await? >= n).then_some(()))
    })
    .await
    .expect("tasks progress");
}

/// Waits until every run has ended, and asserts each succeeded.
async fn all_succeed(fleet: &Fleet, runs: &[ObjectId]) {
    for run in runs {
        let run = fleet
            .client
            .finished(*run, Duration::from_secs(300))
            .await
            .expect("run ends");
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    }
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
        // The history says why an attempt ended (a lease expiry names its worker).
        assert_eq!(
            t.attempt, 1,
            "task {} ran {} times: {:?}",
            t.node_id, t.attempt, t.attempts
        );
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
    // The gateway container serves beside them.
    let gateway = format!(
        "http://{}",
        fleet.published("gateway", 8080).expect("gateway port")
    );
    wait_for(
        "the gateway container to be ready",
        Duration::from_secs(60),
        || async {
            let ready = reqwest::get(format!("{gateway}/readyz")).await;
            Ok(ready.ok().filter(|r| r.status().is_success()).map(|_| ()))
        },
    )
    .await
    .expect("gateway ready");
    let sleep = json!({"type": "debug.sleep", "params": {"ms": 20}});
    let runs = submit_runs(&fleet, "scale", 20, 100, sleep)
        .await
        .expect("submit");

    // One worker's rate, over its tasks 100 to 400 (a window counted in tasks, not seconds).
    let done_at = |n: u64| {
        let fleet = &fleet;
        wait_for(
            "tasks done by one worker",
            Duration::from_secs(120),
            move || async move {
                let done = count(fleet, TaskStatus::Succeeded).await?;
                Ok((done >= n).then_some((Instant::now(), done)))
            },
        )
    };
    let first = done_at(100).await.expect("one worker works");
    let before = done_at(400).await.expect("one worker works on");

    fleet.scale_workers(4).expect("scale to 4");
    fleet.await_workers(4).await.expect("4 workers up");
    let scaled = (
        Instant::now(),
        count(&fleet, TaskStatus::Succeeded).await.expect("count"),
    );
    all_succeed(&fleet, &runs).await;
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

/// The container a worker runs in: worker ids start with the host name, which Docker sets to
/// the container id's first 12 characters.
fn container_of(fleet: &Fleet, worker_id: &str) -> String {
    fleet
        .containers("worker")
        .expect("worker containers")
        .into_iter()
        .find(|id| worker_id.starts_with(&id[..12]))
        .unwrap_or_else(|| panic!("no container runs worker {worker_id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_stop_drains_two_workers_mid_run_and_no_task_waits_for_a_lease() {
    if docker().is_none() {
        return;
    }
    let fleet = Fleet::up("drain", 3).await.expect("fleet up");
    // Long enough to read `running` for a while (its claim is written after 1 s).
    let sleep = json!({"type": "debug.sleep", "params": {"ms": 2500}});
    let runs = submit_runs(&fleet, "drain", 1, 40, sleep)
        .await
        .expect("submit");
    at_least(&fleet, 8, TaskStatus::Running).await;
    let workers = fleet.containers("worker").expect("containers");
    let stopped = &workers[..2];
    let started = Instant::now();
    let mut stop = vec!["stop", "-t", "25"];
    stop.extend(stopped.iter().map(String::as_str));
    fleet.docker(&stop).expect("docker stop");
    let took = started.elapsed();
    eprintln!("drain: docker stop of 2 workers took {took:?} (SIGKILL after 25 s)");
    for id in stopped {
        let code = fleet
            .docker(&["inspect", "-f", "{{.State.ExitCode}}", id])
            .expect("inspect");
        assert_eq!(code.trim(), "0", "worker {id} exited by itself, drained");
        let logs = fleet.logs(id).expect("logs");
        assert!(logs.contains("SIGTERM: draining"), "{logs}");
    }
    assert!(
        took < Duration::from_secs(15),
        "drained within the grace period"
    );

    all_succeed(&fleet, &runs).await;
    // A task whose lease had to expire would show a second attempt.
    assert_each_ran_once(&all_tasks(&fleet, &runs).await.expect("tasks"));
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_every_worker_container_one_by_one_mid_run_completes_the_run() {
    if docker().is_none() {
        return;
    }
    let fleet = Fleet::up("rolling", 2).await.expect("fleet up");
    let sleep = json!({"type": "debug.sleep", "params": {"ms": 300}});
    let runs = submit_runs(&fleet, "rolling", 3, 100, sleep)
        .await
        .expect("submit");
    at_least(&fleet, 20, TaskStatus::Succeeded).await;
    let originals = fleet.containers("worker").expect("containers");
    for old in &originals {
        fleet.docker(&["stop", "-t", "25", old]).expect("stop");
        fleet.docker(&["rm", old]).expect("rm");
        fleet.scale_workers(2).expect("replace");
        let current = fleet.containers("worker").expect("containers");
        assert!(!current.contains(old));
        // The replacement registered (its host name is new) before the next is stopped.
        let fresh: Vec<String> = current
            .iter()
            .filter(|c| !originals.contains(c))
            .cloned()
            .collect();
        wait_for(
            "the replacement to register",
            Duration::from_secs(60),
            || async {
                let live = fleet
                    .client
                    .store
                    .workers()
                    .live(Duration::from_secs(3))
                    .await?;
                Ok(fresh
                    .iter()
                    .all(|c| live.iter().any(|w| w.id.starts_with(&c[..12])))
                    .then_some(()))
            },
        )
        .await
        .expect("replacement up");
    }
    let unfinished = count(&fleet, TaskStatus::Queued).await.expect("count");
    all_succeed(&fleet, &runs).await;
    let tasks = all_tasks(&fleet, &runs).await.expect("tasks");
    assert_each_ran_once(&tasks);
    let workers: BTreeSet<&str> = tasks
        .iter()
        .filter_map(|t| t.worker_id.as_deref())
        .collect();
    eprintln!(
        "rolling restart: {} tasks over {} workers; {unfinished} still queued when the last worker was replaced",
        tasks.len(),
        workers.len()
    );
    assert!(unfinished > 0, "the run outlasted the rolling restart");
    assert!(workers.len() >= 3, "replacements took tasks: {workers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_past_its_lease_loses_its_task_and_its_late_output_is_refused() {
    if docker().is_none() {
        return;
    }
    let short_lease = [("HARMONIA_LEASE_MS", "3000")];
    let fleet = Fleet::up_with("partition", 2, &short_lease)
        .await
        .expect("fleet up");
    let body = submission(
        "partition",
        json!([{"id": "w", "type": "debug.write", "params": {"bytes": 65536, "after_ms": 5000},
                "max_attempts": 3}]),
    );
    let run_id = fleet.client.start(&body).await.expect("submit");
    let first = fleet
        .client
        .task_reaches(run_id, "w", TaskStatus::Running)
        .await
        .expect("runs");
    let cut = container_of(&fleet, first.worker_id.as_deref().expect("worker"));
    let network = fleet.network();
    fleet
        .docker(&["network", "disconnect", &network, &cut])
        .expect("disconnect");
    let run = fleet.client.finished(run_id, Duration::from_secs(90)).await;
    fleet
        .docker(&["network", "connect", &network, &cut])
        .expect("reconnect");
    assert_eq!(run.expect("run ends").status, RunStatus::Succeeded);
    let done = fleet.client.task(run_id, "w").await.expect("task");
    assert_eq!(done.attempt, first.attempt + 1, "re-run elsewhere");
    assert_ne!(done.worker_id, first.worker_id);

    wait_for(
        "the cut-off worker to be refused",
        Duration::from_secs(90),
        || async {
            let logs = fleet.logs(&cut)?;
            Ok((logs.contains("outcome refused") || logs.contains("lease lost")).then_some(()))
        },
    )
    .await
    .expect("late result refused");
    let pointers = fleet
        .client
        .store
        .artifacts()
        .for_producer(done.id)
        .await
        .expect("pointers");
    assert_eq!(pointers.len(), 1, "{pointers:?}");
    assert_eq!(pointers[0].attempt, done.attempt);
    assert_eq!(
        Some(pointers[0].created_by.as_str()),
        done.worker_id.as_deref()
    );
    let storage = harmonia_shared::storage::Storage::new(&fleet.config.s3);
    let prefix = format!("artifacts/ml/{}/{}/", run_id.to_hex(), done.id.to_hex());
    let keys = storage.list(&prefix).await.expect("list");
    assert_eq!(
        keys,
        vec![pointers[0].storage_ref.key.clone()],
        "one object, the pointer's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_container_replaced_by_an_empty_one_mid_run_loses_no_task() {
    if docker().is_none() {
        return;
    }
    let fleet = Fleet::up("redis-empty", 2).await.expect("fleet up");
    let mut runs = Vec::new();
    for r in 0..4 {
        // A chain of 5 tasks of 400 ms beside 30 independent ones of 200 ms.
        let tasks = chain_and_fan(5, 400, 30, 200);
        runs.push(
            fleet
                .client
                .start(&submission(&format!("redis-{r}"), tasks))
                .await
                .expect("submit"),
        );
    }
    at_least(&fleet, 20, TaskStatus::Succeeded).await;
    let volume = format!("{}_redis-data", fleet.project_name());
    fleet
        .compose(&["rm", "-s", "-f", "redis"])
        .expect("remove redis");
    fleet
        .docker(&["volume", "rm", &volume])
        .expect("remove its volume");
    fleet
        .compose(&["up", "-d", "redis"])
        .expect("an empty redis");
    let left = 140 - count(&fleet, TaskStatus::Succeeded).await.expect("count");
    all_succeed(&fleet, &runs).await;
    eprintln!("redis replaced empty with {left} of 140 tasks not yet done");
    assert!(left > 0, "the runs outlasted the Redis replacement");
    let tasks = all_tasks(&fleet, &runs).await.expect("tasks");
    assert!(tasks.iter().all(|t| t.status == TaskStatus::Succeeded));
}

/// Bytes the fleet's Hub mirror has sent so far.
async fn mirror_bytes_served(fleet: &Fleet) -> u64 {
    let hub = fleet.published("hub", 9020).expect("hub port");
    let stats: serde_json::Value = reqwest::get(format!("http://{hub}/_mirror/stats"))
        .await
        .expect("mirror stats")
        .json()
        .await
        .expect("stats json");
    stats["bytes_served"].as_u64().expect("bytes_served")
}

/// One task slot per worker, so two downloads of one model run at once on two containers:
/// they share the host's cache volume, and its per-blob locks let one fetch each file while
/// the other waits and verifies. Then the whole model workflow runs in the containers.
#[tokio::test(flavor = "multi_thread")]
async fn two_worker_containers_sharing_the_model_cache_fetch_each_file_once() {
    if docker().is_none() {
        return;
    }
    let fleet = Fleet::up_with("models", 2, &[("HARMONIA_CPU_SLOTS", "1")])
        .await
        .expect("fleet up");
    let download = |id: &str| {
        json!({"id": id, "type": "model.download",
               "params": {"repo": "sentence-transformers/all-MiniLM-L6-v2"}})
    };
    let twice = submission("download-twice", json!([download("d1"), download("d2")]));
    let run = fleet.client.start(&twice).await.expect("submit");
    all_succeed(&fleet, &[run]).await;
    let (d1, d2) = (
        fleet.client.task(run, "d1").await.expect("d1"),
        fleet.client.task(run, "d2").await.expect("d2"),
    );
    assert_ne!(d1.worker_id, d2.worker_id, "one download per container");
    let outputs = |t: &RunTask| t.outputs.clone().expect("outputs");
    let size = outputs(&d1).get_i64("size_bytes").expect("size");
    let transferred = outputs(&d1).get_i64("bytes_downloaded").expect("bytes")
        + outputs(&d2).get_i64("bytes_downloaded").expect("bytes");
    let served = mirror_bytes_served(&fleet).await;
    eprintln!(
        "models: 2 downloads on 2 containers; mirror sent {served} bytes, the files are {size}"
    );
    assert_eq!(served, size as u64, "each file crossed the network once");
    assert_eq!(transferred, size, "the workers' own counts agree");

    let workflow = harmonia_tests::servers::workspace_root().join("examples/model-workflow.json");
    let mut body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workflow).expect("example")).expect("json");
    body["request_id"] = json!("model-workflow");
    let run = fleet.client.start(&body).await.expect("submit");
    all_succeed(&fleet, &[run]).await;
}
