//! Batched writes keep every fence: a worker claims a read's entries in one MongoDB write and
//! records its attempts' outcomes in group commits. These tests drive the store's batched
//! claim and finish directly against a real mongod (with a scheduler that queued the tasks),
//! and kill a worker that holds outcomes not yet written.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::{RunStatus, RunTask, TaskError, TaskStatus};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::{ClaimRequest, Deferred, Ending, Outcome, lease_token};
use harmonia_tests::cluster::{Cluster, LONG, SCHEDULER, WORKER, cluster_in};
use harmonia_tests::{Scope, submission, wait_for};
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use redis::AsyncCommands;
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
/// with no attempt recorded, `running` under a written claim, still `queued` on a deferred one
/// (`claims`). Returns the run and its tasks.
async fn held_back(
    c: &Cluster,
    name: &str,
    nodes: &[&str],
    claims: TaskStatus,
) -> (ObjectId, Vec<RunTask>) {
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
            .all(|t| t.status == claims && t.attempts.is_empty()),
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
            deferred: None,
        },
        Ending {
            id: cc.task.id,
            lease_token: &cc.lease_token,
            outcome: &failure,
            deferred: None,
        },
        Ending {
            id: queued[1].id,
            lease_token: "a lease nobody holds",
            outcome: &success,
            deferred: None,
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

/// Deferred claims: the read finds only tasks still queued as of their entry's attempt; one
/// write records the claims and outcomes of several attempts (the successes as one ranged
/// update, a failure as a statement), refuses the one whose task moved on, and a retry of the
/// same write applies nothing twice yet reports what had landed. A deferred claim written on
/// its own (a long attempt) makes the task run under that lease, and its outcome then goes by
/// the lease.
#[tokio::test(flavor = "multi_thread")]
async fn deferred_claims_are_written_with_their_outcomes_behind_the_claims_fence() {
    let scope = Scope::new("deferred-fences");
    let c = cluster_in(scope, SCHEDULER, &[]).await.unwrap();
    let nodes = ["a", "b", "c", "d", "e"];
    let run_id = c
        .client
        .start(&submission("deferred", noops(&nodes)))
        .await
        .unwrap();
    let mut queued = Vec::new();
    for node in nodes {
        let t = c.client.task_reaches(run_id, node, TaskStatus::Queued);
        queued.push(t.await.unwrap());
    }
    let tasks = c.client.store.tasks();
    let request = |i: usize, attempt: u32| ClaimRequest {
        id: queued[i].id,
        attempt,
        gpu_indices: Vec::new(),
    };
    let mut requests: Vec<ClaimRequest> = (0..5).map(|i| request(i, queued[i].attempt)).collect();
    requests[2].attempt += 1; // stale: published as of another attempt
    requests.push(request(4, queued[4].attempt)); // the same entry read twice
    let read = tasks.queued_as_published(&requests).await.unwrap();
    let found: Vec<bool> = read.iter().map(Option::is_some).collect();
    assert_eq!(found, [true, true, false, true, true, false]);

    let started_at = DateTime::from_millis(DateTime::now().timestamp_millis() - 5000);
    let claim = |i: usize| Deferred {
        attempt: queued[i].attempt,
        worker_id: "deferring-worker".into(),
        started_at,
    };
    let claims: Vec<Deferred> = (0..5).map(claim).collect();
    let tokens: Vec<String> = queued.iter().map(|t| lease_token("b1", t.id)).collect();
    let lease = Duration::from_secs(60);
    // d runs long: its claim is written on its own first (twice: as after a lost answer).
    for _ in 0..2 {
        let won = tasks.claim_deferred(queued[3].id, &tokens[3], &claims[3], lease);
        assert!(won.await.unwrap(), "the claim is d's, the retry knows it");
    }
    let d = c.client.task(run_id, "d").await.unwrap();
    assert_eq!(
        (d.status, d.lease_token.as_deref(), d.attempt),
        (
            TaskStatus::Running,
            Some(tokens[3].as_str()),
            queued[3].attempt + 1
        )
    );
    let other = lease_token("b2", queued[3].id);
    let late = tasks.claim_deferred(queued[3].id, &other, &claims[3], lease);
    assert!(
        !late.await.unwrap(),
        "another claim of the same entry finds d moved on"
    );

    let success = Outcome::Succeeded {
        outputs: mongodb::bson::doc! { "answer": 42 },
    };
    let failure = Outcome::Failed {
        error: TaskError {
            message: "boom".into(),
            retryable: false,
        },
        retry_at: None,
    };
    let stale = Deferred {
        attempt: queued[2].attempt + 1,
        ..claim(2)
    };
    let ending = |i: usize, outcome, deferred| Ending {
        id: queued[i].id,
        lease_token: &tokens[i],
        outcome,
        deferred,
    };
    let endings = [
        ending(0, &success, Some(&claims[0])),
        ending(1, &failure, Some(&claims[1])),
        ending(2, &success, Some(&stale)),
        ending(3, &success, None),
        ending(4, &success, Some(&claims[4])),
    ];
    let recorded = [true, true, false, true, true];
    assert_eq!(tasks.finish_many(&endings).await.unwrap(), recorded);
    assert_eq!(
        tasks.finish_many(&endings).await.unwrap(),
        recorded,
        "a retried write recognises what had landed"
    );
    for (i, status) in [
        (0, TaskStatus::Succeeded),
        (1, TaskStatus::Failed),
        (3, TaskStatus::Succeeded),
        (4, TaskStatus::Succeeded),
    ] {
        let t = c.client.task(run_id, nodes[i]).await.unwrap();
        let node = nodes[i];
        assert_eq!(
            (t.status, t.attempt),
            (status, queued[i].attempt + 1),
            "{node}"
        );
        assert_eq!(t.lease_token, None, "{node}");
        assert_eq!(
            t.started_at,
            Some(started_at),
            "{node}: when the attempt started"
        );
        assert!(
            t.duration_ms.unwrap() >= 5000,
            "{node}: {:?}",
            t.duration_ms
        );
        assert_eq!(t.attempts.len(), 1, "{node}: one record per attempt");
        let record = &t.attempts[0];
        assert_eq!(record.worker_id.as_deref(), Some("deferring-worker"));
        assert_eq!(record.attempt, queued[i].attempt + 1);
        if status == TaskStatus::Succeeded {
            assert_eq!(t.outputs.unwrap().get_i32("answer").unwrap(), 42, "{node}");
        }
    }
    let c_now = c.client.task(run_id, "c").await.unwrap();
    assert_eq!(
        (c_now.status, c_now.attempt, c_now.attempts.len()),
        (TaskStatus::Queued, queued[2].attempt, 0),
        "the stale entry's outcome changed nothing"
    );
}

/// An attempt on a deferred claim that runs past `--claim-after-ms` has its claim written on
/// its own: the task shows `running` under the worker's lease while it runs, and its outcome
/// then goes by that lease (one attempt, one record).
#[tokio::test(flavor = "multi_thread")]
async fn an_attempt_on_a_deferred_claim_that_runs_long_shows_running_under_a_lease() {
    let scope = Scope::new("deferred-long");
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none", "--claim-after-ms", "300"]);
    let c = cluster_in(scope, SCHEDULER, &[worker]).await.unwrap();
    let sleep = json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 3000}}]);
    let run_id = c.client.start(&submission("long", sleep)).await.unwrap();
    let running = c
        .client
        .task_reaches(run_id, "s", TaskStatus::Running)
        .await
        .unwrap();
    assert!(running.lease_token.is_some() && running.lease_expires_at.is_some());
    assert!(running.worker_id.is_some());
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let done = c.client.task(run_id, "s").await.unwrap();
    assert_eq!((done.attempt, done.attempts.len()), (1, 1));
    assert_eq!(
        done.started_at, running.started_at,
        "started when it ran, not when claimed"
    );
    assert!(done.duration_ms.unwrap() >= 3000, "{:?}", done.duration_ms);
}

/// Entries are duplicated now and then (published again after a Redis loss): a worker that
/// reads a second entry of a task it already runs on a deferred claim runs it twice at once.
/// Its heartbeat sees the task named twice; the claim's own write decides, and the task
/// records one success on its first attempt (the duplicate used to be stopped and recorded as
/// a cancel, which cancelled the run).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_a_worker_reads_twice_on_deferred_claims_records_one_success() {
    let scope = Scope::new("deferred-twice");
    let worker: Vec<&str> = [
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        "2",
        "--heartbeat-ms",
        "200",
        "--claim-after-ms",
        "600000",
    ]
    .into();
    let c = cluster_in(scope, SCHEDULER, &[worker]).await.unwrap();
    let sleep = json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 3000}}]);
    let run_id = c.client.start(&submission("twice", sleep)).await.unwrap();
    c.started("s").await.unwrap();
    let task = c.client.task(run_id, "s").await.unwrap();
    assert_eq!(task.status, TaskStatus::Queued);
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    let mut conn = c.client.queue.conn().await.unwrap();
    let fields = [
        ("task", task.id.to_hex()),
        ("attempt", task.attempt.to_string()),
    ];
    let _: String = conn.xadd(&stream, "*", &fields).await.unwrap();
    let w = &c.workers[0];
    wait_for("the second attempt to start", LONG, || async {
        Ok((w.output().matches("task started").count() == 2).then_some(()))
    })
    .await
    .unwrap();

    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{}", w.output());
    let done = c.client.task(run_id, "s").await.unwrap();
    let history: Vec<&str> = done.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!((done.attempt, history), (1, vec!["succeeded"]));
}

/// A worker SIGKILLed while the outcomes of attempts it finished wait for their group commit
/// (a long linger holds them): none was acknowledged, so its leases lapse, another worker runs
/// the tasks again, and each task records exactly one success.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_holding_unwritten_outcomes_loses_none_and_runs_none_twice_to_success() {
    killed_holding_unwritten_outcomes("unwritten-outcomes", &["--claim-after-ms", "0"]).await;
}

/// The same on deferred claims (the default): the killed worker wrote nothing at all, its
/// tasks are still queued with their entries pending for it; the scheduler takes those over
/// once it stops touching them, counts each lost attempt, and each task records exactly one
/// success, on the rescuer.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_holding_unwritten_deferred_claims_loses_none_and_runs_none_twice_to_success()
 {
    killed_holding_unwritten_outcomes("unwritten-deferred", &[]).await;
}

async fn killed_holding_unwritten_outcomes(name: &str, claims: &[&str]) {
    let scope = Scope::new(name);
    let mut holder = WORKER.to_vec();
    holder.extend(HOLD_OUTCOMES);
    holder.extend(claims);
    let mut c = cluster_in(scope, SCHEDULER, &[holder]).await.unwrap();
    let nodes = ["n1", "n2", "n3", "n4"]; // the holder's 4 CPU slots
    let status = if claims.is_empty() {
        TaskStatus::Queued
    } else {
        TaskStatus::Running
    };
    let (run_id, _) = held_back(&c, name, &nodes, status).await;
    let holder_pid = format!("-{}-", c.workers[0].pid());

    c.workers[0].kill();
    let mut other = WORKER.to_vec();
    other.extend(["--gpus", "none"]);
    let _rescuer = c.scope.spawn("rescuer", "harmonia-worker", &other).unwrap();

    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    for t in c.client.tasks(run_id).await.unwrap() {
        assert_eq!(t.status, TaskStatus::Succeeded, "{}", t.node_id);
        let history: Vec<(&str, &str)> = t
            .attempts
            .iter()
            .map(|a| (a.outcome.as_str(), a.worker_id.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(history.len(), 2, "{}: {history:?}", t.node_id);
        assert_eq!(
            history[0].0, "retrying",
            "{}: the killed attempt lapsed",
            t.node_id
        );
        assert!(
            history[0].1.contains(&holder_pid),
            "{}: {history:?}",
            t.node_id
        );
        assert_eq!(history[1].0, "succeeded", "{}", t.node_id);
        assert!(!history[1].1.contains(&holder_pid), "{}", t.node_id);
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
    let (run_id, _) = held_back(&c, "slot-free", &nodes, TaskStatus::Queued).await;

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
