//! Backing services that stop answering for a while: mongod frozen (SIGSTOP) past every lease,
//! S3 down while outputs are uploaded. The fleet waits them out: nothing is lost, no attempt is
//! wasted, and each process logs the outage once. Each test has the server it breaks to itself.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::storage::Storage;
use harmonia_tests::cluster::{SCHEDULER, WORKER, cluster_in};
use harmonia_tests::process::signal;
use harmonia_tests::servers::MongoReplicaSet;
use harmonia_tests::{Scope, submission, wait_for};
use serde_json::json;
use sha2::Digest;

const RUNS: usize = 4;
const DEADLINE: Duration = Duration::from_secs(180);

/// How long mongod stays frozen: longer than a lease many times over, and than the driver's
/// stall detection (heartbeat 5 s + connect timeout 5 s). `scripts/chaos` sets 30 s.
fn mongo_stall() -> Duration {
    seconds("HARMONIA_OUTAGE_MONGO_S", 15)
}

/// How long S3 stays down. `scripts/chaos` sets 30 s.
fn s3_down() -> Duration {
    seconds("HARMONIA_OUTAGE_S3_S", 8)
}

fn seconds(var: &str, default: u64) -> Duration {
    let s = std::env::var(var).ok().and_then(|v| v.parse().ok());
    Duration::from_secs(s.unwrap_or(default))
}

fn cpu_worker() -> Vec<&'static str> {
    let mut args = WORKER.to_vec();
    args.extend(["--gpus", "none"]);
    args
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mongod_frozen_past_every_lease_costs_no_attempt_and_logs_one_line_per_process() {
    let (scope, mongo) = Scope::with_own_mongo("mongo-stall").await.unwrap();
    // Heartbeats far apart next to reconcile passes, as in production (10 s against 1 s): when
    // MongoDB comes back the scheduler looks at the leases before the workers renew them.
    let mut worker = cpu_worker();
    for (flag, value) in [("--lease-ms", "2500"), ("--heartbeat-ms", "1000")] {
        let at = worker.iter().position(|a| *a == flag).unwrap();
        worker[at + 1] = value;
    }
    let c = cluster_in(scope, SCHEDULER, &[worker.clone(), worker])
        .await
        .unwrap();
    // Still running when MongoDB comes back, so their leases are there to be judged.
    let sleep_ms = (mongo_stall() + Duration::from_secs(5)).as_millis() as u64;
    let mut runs = Vec::new();
    for i in 0..RUNS {
        let body = submission(
            &format!("stall-{i}"),
            json!([
                {"id": "a", "type": "debug.sleep", "params": {"ms": sleep_ms}},
                {"id": "b", "type": "debug.noop", "depends_on": ["a"]}
            ]),
        );
        runs.push(c.client.start(&body).await.unwrap());
    }
    for &run in &runs {
        c.client
            .task_reaches(run, "a", TaskStatus::Running)
            .await
            .unwrap();
    }

    signal(mongo.process.pid(), libc::SIGSTOP);
    tokio::time::sleep(mongo_stall()).await; // the fault itself, not a wait for a condition
    signal(mongo.process.pid(), libc::SIGCONT);

    for &run in &runs {
        let finished = c.client.finished(run, DEADLINE).await.unwrap();
        assert_eq!(finished.status, RunStatus::Succeeded);
        let a = c.client.task(run, "a").await.unwrap();
        assert_eq!(
            a.attempt,
            1,
            "a lease that lapsed only because MongoDB was frozen is not taken away:\n{}",
            c.scheduler.output()
        );
    }
    let log = c.scheduler.output();
    assert!(!log.contains("lease expired"), "{log}");
    for process in std::iter::once(&c.scheduler).chain(&c.workers) {
        let log = process.output();
        assert_eq!(
            count(&log, "MongoDB unreachable"),
            1,
            "{}: one line when the outage starts\n{log}",
            process.name()
        );
        assert_eq!(
            count(&log, "MongoDB answers again"),
            1,
            "{}: one line when it ends\n{log}",
            process.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_written_while_s3_is_down_go_up_when_it_returns_in_the_same_attempt() {
    let (scope, mut s3) = Scope::with_own_s3("s3-down").await.unwrap();
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker()]).await.unwrap();
    let storage = Storage::new(&c.scope.config.s3);
    storage.ensure_bucket().await.unwrap();
    c.workers[0]
        .says("worker registered", DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    s3.stop();

    let mut runs = Vec::new();
    for i in 0..RUNS {
        let body = submission(
            &format!("write-{i}"),
            json!([{"id": "w", "type": "debug.write", "params": {"bytes": 100_000 + i}}]),
        );
        runs.push(c.client.start(&body).await.unwrap());
    }
    // Each task is running, which for `debug.write` means uploading into the outage.
    for &run in &runs {
        c.client
            .task_reaches(run, "w", TaskStatus::Running)
            .await
            .unwrap();
    }
    tokio::time::sleep(s3_down()).await; // the outage itself
    s3.restart().await.unwrap();

    for (i, &run) in runs.iter().enumerate() {
        let finished = c.client.finished(run, DEADLINE).await.unwrap();
        assert_eq!(finished.status, RunStatus::Succeeded);
        let w = c.client.task(run, "w").await.unwrap();
        assert_eq!(w.attempt, 1, "retried inside the attempt, not as a new one");
        let artifacts = c.client.store.artifacts().for_producer(w.id).await.unwrap();
        assert_eq!(artifacts.len(), 1);
        let pointer = &artifacts[0].storage_ref;
        let bytes = storage.get_bytes(&pointer.key).await.unwrap();
        assert_eq!(bytes.len(), 100_000 + i);
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), pointer.sha256);
    }
    let log = c.workers[0].output();
    assert_eq!(count(&log, "S3 unreachable"), 1, "{log}");
    assert_eq!(count(&log, "S3 answers again"), 1, "{log}");
}

/// A submission that arrives while mongod is frozen waits for it and is accepted once it thaws,
/// after many failed tries (an outage's failures do not count towards giving up on it).
#[tokio::test(flavor = "multi_thread")]
async fn a_submission_sent_while_mongod_is_frozen_is_accepted_when_it_thaws() {
    let (mut scope, mongo) = Scope::with_own_mongo("submit-frozen").await.unwrap();
    // Fail fast while frozen, so many more than five tries fit in the outage.
    scope.config.mongo.uri = format!(
        "{}&serverSelectionTimeoutMS=500&connectTimeoutMS=500&heartbeatFrequencyMS=500",
        mongo.uri
    );
    let scheduler = scope
        .spawn("scheduler", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    scheduler
        .says("scheduler running", DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let client = harmonia_tests::Client::connect(&scope).await.unwrap();

    signal(mongo.process.pid(), libc::SIGSTOP);
    let body = submission("frozen", json!([{"id": "a", "type": "debug.noop"}]));
    let reply = tokio::spawn(async move { client.submit_waiting(&body, DEADLINE).await });
    scheduler
        .says("MongoDB unreachable", DEADLINE)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage goes on: many failed tries
    signal(mongo.process.pid(), libc::SIGCONT);

    let reply = reply.await.unwrap().unwrap();
    assert_eq!(
        reply["status"],
        "accepted",
        "{reply}\n{}",
        scheduler.output()
    );
}

/// The primary of a real three-member replica set steps down (`replSetStepDown`) in the middle
/// of a 2,000-task run: the driver follows the new primary (retryable writes and reads, majority
/// write concern), the run completes, and every task succeeded exactly once, in MongoDB and in
/// the workers' logs.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_stepping_down_mid_run_loses_no_task_and_runs_none_twice() {
    const TASKS: usize = 2000;
    let mut scope = Scope::new("step-down");
    let set = MongoReplicaSet::start(&scope.dir.join("rs")).await.unwrap();
    scope.config.mongo.uri = set.uri.clone();
    // Leases longer than an election, as in production (30 s against a few seconds): the
    // step-down must not cost any attempt.
    let mut worker = cpu_worker();
    let at = worker.iter().position(|a| *a == "--lease-ms").unwrap();
    worker[at + 1] = "20000";
    worker.extend(["--log-format", "json"]);
    let c = cluster_in(scope, SCHEDULER, &[worker.clone(), worker])
        .await
        .unwrap();
    // 8 slots at 20 ms a task: several seconds of work, so the step-down lands in the middle.
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| json!({"id": format!("t{i}"), "type": "debug.sleep", "params": {"ms": 20}}))
        .collect();
    let run = c
        .client
        .start(&submission("step-down", json!(tasks)))
        .await
        .unwrap();
    let succeeded = || async {
        let (counts, _) = c.client.store.tasks().count_by_status(run).await?;
        anyhow::Ok(counts.succeeded as usize)
    };
    wait_for("a tenth of the tasks to succeed", DEADLINE, || async {
        Ok((succeeded().await? >= TASKS / 10).then_some(()))
    })
    .await
    .unwrap();
    let old = set.step_down().await.unwrap();
    let at_step_down = succeeded().await.unwrap();
    assert!(at_step_down < TASKS, "the step-down came after the run");

    let finished = c.client.finished(run, DEADLINE).await.unwrap();
    assert_eq!(
        finished.status,
        RunStatus::Succeeded,
        "{}",
        c.scheduler.output()
    );
    assert_ne!(set.primary().await.unwrap(), Some(old));
    for task in c.client.tasks(run).await.unwrap() {
        let successes = task.attempts.iter().filter(|a| a.outcome == "succeeded");
        assert_eq!(
            successes.count(),
            1,
            "{}: {:?}",
            task.node_id,
            task.attempts
        );
    }
    let mut started: HashMap<String, usize> = HashMap::new();
    let mut ran: HashMap<String, usize> = HashMap::new();
    for line in c
        .workers
        .iter()
        .flat_map(|w| w.output().lines().map(str::to_owned).collect::<Vec<_>>())
    {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        // No attempt was stopped: an attempt whose outcome is being written is not told its
        // lease is lost when that write clears it.
        assert_ne!(
            event["message"], "lease lost or task cancelled: stopping the attempt",
            "{line}"
        );
        if event["message"] == "task started" {
            *started
                .entry(event["task"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        if event["message"] == "task finished" && event["status"] == "succeeded" {
            *ran.entry(event["task"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(ran.len(), TASKS, "every task ran to success in a worker");
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "succeeded more than once: {twice:?}");
    let twice: Vec<_> = started.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
}
