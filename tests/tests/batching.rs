//! Batched writes keep every fence: a worker claims a read's entries in one MongoDB write and
//! records its attempts' outcomes in group commits. These tests drive the store's batched
//! claim and finish directly against a real mongod (with a scheduler that queued the tasks),
//! and kill a worker that holds outcomes not yet written.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::{RunStatus, RunTask, TaskError, TaskStatus};
use harmonia_shared::store::tasks::{ClaimRequest, Ending, Outcome};
use harmonia_tests::cluster::{Cluster, LONG, SCHEDULER, WORKER, cluster_in};
use harmonia_tests::{Scope, submission, wait_for};
use mongodb::bson::oid::ObjectId;
use serde_json::json;

fn noops(nodes: &[&str]) -> serde_json::Value {
    let tasks: Vec<_> = nodes
        .iter()
        .map(|id| json!({"id": id, "type": "debug.noop", "max_attempts": 3}))
        .collect();
    json!(tasks)
}

/// Worker flags that hold every outcome back (a linger of 10 minutes, batches no run fills) and
/// log each outcome as it starts to wait.
const HOLD_OUTCOMES: &[&str] = &[
    "--gpus",
    "none",
    "--outcome-linger-ms",
    "600000",
    "--outcome-batch",
    "1000",
    "--log",
    "info,harmonia_worker=debug",
];

/// Starts a run of no-ops and waits until the cluster's one worker has finished every attempt
/// and holds back every outcome (it logs each at debug level): nothing written yet, each task
/// still running with no attempt recorded. Returns the run and its tasks.
async fn held_back(c: &Cluster, name: &str, nodes: &[&str]) -> (ObjectId, Vec<RunTask>) {
    let run_id = c
        .client
        .start(&submission(name, noops(nodes)))
        .await
        .unwrap();
    let worker = &c.workers[0];
    wait_for(
        "the worker's outcomes to wait for their write",
        LONG,
        || async {
            let waiting = worker
                .output()
                .matches("outcome waiting for its write")
                .count();
            Ok((waiting == nodes.len()).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", worker.output()));
    let tasks = c.client.tasks(run_id).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t.status == TaskStatus::Running && t.attempts.is_empty()),
        "nothing written yet: {:?}",
        tasks.iter().map(|t| t.status).collect::<Vec<_>>()
    );
    (run_id, tasks)
}

/// One write claims several entries: only those still queued at the attempt their entry names
/// are won, a stale entry and a duplicate in the same batch win nothing; one write then records
/// several outcomes, refuses the one whose lease it does not hold, and a retry of that same
/// write (as after a lost reply) applies nothing twice yet reports what had landed.
#[tokio::test(flavor = "multi_thread")]
async fn batched_claims_and_outcomes_keep_every_fence() {
    let scope = Scope::new("batched-fences");
    let c = cluster_in(scope, SCHEDULER, &[]).await.unwrap();
    let run_id = c
        .client
        .start(&submission("batched", noops(&["a", "b", "c"])))
        .await
        .unwrap();
    let mut queued = Vec::new();
    for node in ["a", "b", "c"] {
        let t = c
            .client
            .task_reaches(run_id, node, TaskStatus::Queued)
            .await
            .unwrap();
        queued.push(t);
    }
    let request = |i: usize, attempt: u32| ClaimRequest {
        id: queued[i].id,
        attempt,
        gpu_indices: Vec::new(),
    };
    let tasks = c.client.store.tasks();
    let claims = tasks
        .claim(
            &[
                request(0, queued[0].attempt),
                request(1, queued[1].attempt + 1), // stale: published as of another attempt
                request(2, queued[2].attempt),
                request(2, queued[2].attempt), // the same entry read twice
            ],
            "worker-under-test",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let won: Vec<bool> = claims.iter().map(Option::is_some).collect();
    assert_eq!(won, [true, false, true, false]);
    let (a, cc) = (claims[0].clone().unwrap(), claims[2].clone().unwrap());
    assert_ne!(a.lease_token, cc.lease_token);
    for (claim, node, was) in [(&a, "a", &queued[0]), (&cc, "c", &queued[2])] {
        let now = c.client.task(run_id, node).await.unwrap();
        assert_eq!(now.status, TaskStatus::Running);
        assert_eq!(now.lease_token.as_deref(), Some(claim.lease_token.as_str()));
        assert_eq!(now.worker_id.as_deref(), Some("worker-under-test"));
        assert_eq!(claim.task.attempt, was.attempt + 1);
    }
    assert_eq!(
        c.client.task(run_id, "b").await.unwrap().status,
        TaskStatus::Queued
    );

    let success = Outcome::Succeeded {
        outputs: mongodb::bson::doc! { "answer": 42 },
    };
    let failure = Outcome::Failed {
        error: TaskError {
            message: "$not a field path".into(),
            retryable: false,
        },
        retry_at: None,
    };
    let endings = [
        Ending {
            id: a.task.id,
            lease_token: &a.lease_token,
            outcome: &success,
        },
        Ending {
            id: cc.task.id,
            lease_token: &cc.lease_token,
            outcome: &failure,
        },
        Ending {
            id: queued[1].id,
            lease_token: "a lease nobody holds",
            outcome: &success,
        },
    ];
    assert_eq!(
        tasks.finish_many(&endings).await.unwrap(),
        [true, true, false]
    );
    assert_eq!(
        tasks.finish_many(&endings).await.unwrap(),
        [true, true, false],
        "a retried write recognises what had landed"
    );
    let a_now = c.client.task(run_id, "a").await.unwrap();
    assert_eq!(a_now.status, TaskStatus::Succeeded);
    assert_eq!(
        a_now.outputs.as_ref().unwrap().get_i32("answer").unwrap(),
        42,
        "outputs recorded"
    );
    let c_now = c.client.task(run_id, "c").await.unwrap();
    assert_eq!(c_now.status, TaskStatus::Failed);
    assert_eq!(
        c_now.error.as_ref().map(|e| e.message.as_str()),
        Some("$not a field path"),
        "an error starting with $ is stored as text"
    );
    for t in [&a_now, &c_now] {
        let outcomes: Vec<&str> = t.attempts.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes.len(), 1, "one record per attempt: {outcomes:?}");
        assert_eq!(
            t.attempts[0].worker_id.as_deref(),
            Some("worker-under-test")
        );
    }
    let b_now = c.client.task(run_id, "b").await.unwrap();
    assert_eq!(
        (b_now.status, b_now.attempts.len()),
        (TaskStatus::Queued, 0)
    );
}

/// A worker SIGKILLed while the outcomes of attempts it finished wait for their group commit
/// (a long linger holds them): none was acknowledged, so its leases lapse, another worker runs
/// the tasks again, and each task records exactly one success.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_holding_unwritten_outcomes_loses_none_and_runs_none_twice_to_success() {
    let scope = Scope::new("unwritten-outcomes");
    let mut holder = WORKER.to_vec();
    holder.extend(HOLD_OUTCOMES);
    let mut c = cluster_in(scope, SCHEDULER, &[holder]).await.unwrap();
    let nodes = ["n1", "n2", "n3", "n4"]; // the holder's 4 CPU slots
    let (run_id, before) = held_back(&c, "unwritten", &nodes).await;
    let holder_id = before[0].worker_id.clone().unwrap();

    c.workers[0].kill();
    let mut other = WORKER.to_vec();
    other.extend(["--gpus", "none"]);
    let _rescuer = c.scope.spawn("rescuer", "harmonia-worker", &other).unwrap();

    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    for t in c.client.tasks(run_id).await.unwrap() {
        assert_eq!(t.status, TaskStatus::Succeeded, "{}", t.node_id);
        let history: Vec<(&str, Option<&str>)> = t
            .attempts
            .iter()
            .map(|a| (a.outcome.as_str(), a.worker_id.as_deref()))
            .collect();
        assert_eq!(history.len(), 2, "{}: {history:?}", t.node_id);
        assert_eq!(
            history[0],
            ("retrying", Some(holder_id.as_str())),
            "{}: the killed attempt lapsed",
            t.node_id
        );
        assert_eq!(history[1].0, "succeeded", "{}", t.node_id);
        assert_ne!(history[1].1, Some(holder_id.as_str()));
        let successes = t.attempts.iter().filter(|a| a.outcome == "succeeded");
        assert_eq!(successes.count(), 1, "{}: exactly one success", t.node_id);
    }
}

/// A worker's slot is free once its attempt has run, not once the outcome is written: with one
/// CPU slot and a linger that holds every outcome back, it runs all three tasks, each outcome
/// waiting. On SIGTERM it writes them and exits only once they are durable: every task
/// succeeded on its first attempt, none is left running for a lease to lapse.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_is_free_while_its_outcome_waits_and_a_drain_writes_every_outcome() {
    let scope = Scope::new("slot-before-write");
    let worker: Vec<&str> = [
        "run",
        "--cpu-slots",
        "1",
        "--lease-ms",
        "1500",
        "--heartbeat-ms",
        "300",
    ]
    .into_iter()
    .chain(HOLD_OUTCOMES.iter().copied())
    .collect();
    let mut c = cluster_in(scope, SCHEDULER, &[worker]).await.unwrap();
    let nodes = ["a", "b", "c"];
    // One slot runs all 3 attempts.
    let (run_id, _) = held_back(&c, "slot-free", &nodes).await;

    let mut worker = c.workers.remove(0);
    worker.terminate();
    let status = worker.exits_within(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}");
    // Read at once: written by the worker before it exited, not by a lease lapsing later.
    for t in c.client.tasks(run_id).await.unwrap() {
        assert_eq!(
            (t.status, t.attempt, t.attempts.len()),
            (TaskStatus::Succeeded, 1, 1),
            "{}",
            t.node_id
        );
    }
}
