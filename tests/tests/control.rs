//! Operating runs: cancel, retry and graceful worker shutdown, against a real scheduler and
//! real worker processes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::resources::ResourceClass;
use harmonia_tests::cluster::{Cluster, LONG, SCHEDULER, cluster, cluster_with, one_slot_worker};
use harmonia_tests::process::ChildGuard;
use harmonia_tests::proxy::Proxy;
use harmonia_tests::{Client, Scope, submission, wait_for};
use mongodb::bson::oid::ObjectId;
use redis::AsyncCommands;
use serde_json::json;

/// A one-slot worker with heartbeats `heartbeat_ms` apart and `--claim-after-ms claim_after`,
/// running task `s` (a long sleep) on a deferred claim: started, its task still `queued`.
async fn running_on_a_deferred_claim(
    name: &str,
    heartbeat_ms: &'static str,
    claim_after: &'static str,
) -> (Cluster, ObjectId) {
    let mut worker = one_slot_worker(heartbeat_ms);
    worker.extend(["--claim-after-ms", claim_after]);
    let c = cluster_with(name, SCHEDULER, &[worker]).await.unwrap();
    let sleep = json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 120000}}]);
    let run_id = c.client.start(&submission(name, sleep)).await.unwrap();
    c.started("s").await.unwrap();
    let task = c.client.task(run_id, "s").await.unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Queued,
        "its claim is not written yet"
    );
    (c, run_id)
}

/// After a cancel of task `s`: the worker's one slot runs the next task within 10 s (the
/// attempt stopped), and nothing of the cancelled attempt was recorded.
async fn the_slot_is_free_and_nothing_was_kept(c: &Cluster, run_id: ObjectId) {
    let noop = json!([{"id": "x", "type": "debug.noop"}]);
    let next = c.client.start(&submission("next", noop)).await.unwrap();
    let run = c.client.finished(next, Duration::from_secs(10)).await;
    let run = run.unwrap_or_else(|e| panic!("the slot is held: {e:#}\n{}", c.workers[0].output()));
    assert_eq!(run.status, RunStatus::Succeeded);
    let task = c.client.task(run_id, "s").await.unwrap();
    assert_eq!(
        (task.status, task.attempts.len()),
        (TaskStatus::Cancelled, 0),
        "nothing of the attempt is kept"
    );
}

/// A task running on a deferred claim reads `queued`, so `cancel run` cancels it as a queued
/// task (and sends it no signal): the attempt stops when its claim write finds the task
/// cancelled, well before its worker's next heartbeat, and records nothing.
#[tokio::test]
async fn cancelling_a_task_running_on_a_deferred_claim_stops_it_when_its_claim_is_written() {
    let (c, run_id) = running_on_a_deferred_claim("cancel-deferred", "20000", "500").await;
    c.scope
        .scheduler_cli_ok(&["cancel", "run", &run_id.to_hex()])
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    the_slot_is_free_and_nothing_was_kept(&c, run_id).await;
    let log = c.workers[0].output();
    assert!(
        log.contains("the task moved on before its claim was written"),
        "{log}"
    );
}

/// `cancel task` on a task running on a deferred claim also signals it: the attempt stops at
/// once, long before its claim would be written or its worker's heartbeat would look.
#[tokio::test]
async fn cancelling_one_task_running_on_a_deferred_claim_signals_it_at_once() {
    let (c, run_id) = running_on_a_deferred_claim("cancel-task-deferred", "60000", "600000").await;
    c.scope
        .scheduler_cli_ok(&["cancel", "task", &run_id.to_hex(), "s"])
        .unwrap();
    let signalled = c.workers[0].says(
        "cancel signal: stopping the attempt",
        Duration::from_secs(10),
    );
    signalled.await.unwrap();
    the_slot_is_free_and_nothing_was_kept(&c, run_id).await;
}

#[tokio::test]
async fn cancelling_a_run_stops_running_tasks_within_seconds() {
    let c = cluster("cancel", &["none", "none"]).await.unwrap();
    let mut tasks: Vec<_> = (0..6)
        .map(|i| json!({"id": format!("s{i}"), "type": "debug.sleep", "params": {"ms": 60000}}))
        .collect();
    tasks.push(json!({"id": "after", "type": "debug.noop", "depends_on": ["s0"]}));
    let run_id = c
        .client
        .start(&submission("cancel", json!(tasks)))
        .await
        .unwrap();
    wait_for("six tasks running", LONG, || async {
        let run = c.client.store.runs().get(run_id).await?.unwrap();
        Ok((run.counts.running == 6).then_some(()))
    })
    .await
    .unwrap();
    let out = c
        .scope
        .scheduler_cli(&["cancel", "run", &run_id.to_hex()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    let run = c
        .client
        .finished(run_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(run.status, RunStatus::Cancelled);
    assert_eq!(run.counts.cancelled, 7, "{run:?}");

    // The workers are free again.
    let next = c
        .client
        .start(&submission(
            "after-cancel",
            json!([{"id": "x", "type": "debug.noop"}]),
        ))
        .await
        .unwrap();
    let next = c
        .client
        .finished(next, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(next.status, RunStatus::Succeeded);

    // Cancelling a finished run is refused with one clear line.
    let out = c
        .scope
        .scheduler_cli(&["cancel", "run", &run_id.to_hex()])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to cancel"));
}

#[tokio::test]
async fn retry_task_reruns_exactly_that_node_and_its_subtree() {
    let c = cluster("retry-task", &["none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "retry-task",
            json!([
                {"id": "a", "type": "debug.noop"},
                {"id": "b", "type": "debug.fail", "params": {"times": 1, "permanent": true}, "depends_on": ["a"]},
                {"id": "c", "type": "debug.noop", "depends_on": ["a"]},
                {"id": "d", "type": "debug.noop", "depends_on": ["b", "c"]}
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        c.client.task(run_id, "d").await.unwrap().status,
        TaskStatus::Skipped
    );
    let before_a = c.client.task(run_id, "a").await.unwrap();
    let before_c = c.client.task(run_id, "c").await.unwrap();

    let cli = |args: &[&str]| {
        c.scope
            .command("harmonia-scheduler")
            .unwrap()
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["retry", "task", &run_id.to_hex(), "b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reset: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reset["reset"], json!(["b", "d"]));

    let run = wait_for("the retried run to succeed", LONG, || async {
        let run = c.client.store.runs().get(run_id).await?.unwrap();
        Ok((run.status == RunStatus::Succeeded).then_some(run))
    })
    .await
    .unwrap();
    assert_eq!(run.counts.succeeded, 4);
    assert!(run.failed_task_ids.is_empty());
    let b = c.client.task(run_id, "b").await.unwrap();
    assert_eq!(
        (b.status, b.attempt),
        (TaskStatus::Succeeded, 3),
        "bumped on retry, then claimed"
    );
    // Untouched: same attempt and the same finish time as before.
    for (before, node) in [(before_a, "a"), (before_c, "c")] {
        let after = c.client.task(run_id, node).await.unwrap();
        assert_eq!(
            (after.attempt, after.finished_at),
            (before.attempt, before.finished_at)
        );
    }

    // Illegal transitions and unknown ids: one clear line, non-zero exit.
    let out = cli(&["retry", "task", &run_id.to_hex(), "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no task 'nope'"));
    let out = cli(&["retry", "run", "0123456789abcdef01234567"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run with id"));
}

#[tokio::test]
async fn retry_run_makes_a_new_linked_run_that_completes() {
    let c = cluster("retry-run", &["none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission("retry-run", json!([
            {"id": "a", "type": "debug.noop"}, {"id": "b", "type": "debug.noop", "depends_on": ["a"]}
        ])))
        .await
        .unwrap();
    c.client.finished(run_id, LONG).await.unwrap();
    let out = c
        .scope
        .scheduler_cli(&["retry", "run", &run_id.to_hex()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_id =
        mongodb::bson::oid::ObjectId::parse_str(reply["run_id"].as_str().unwrap()).unwrap();
    assert_ne!(new_id, run_id);
    let new = c.client.finished(new_id, LONG).await.unwrap();
    assert_eq!(new.status, RunStatus::Succeeded);
    assert_eq!(new.retry_of, Some(run_id));
    assert_eq!(c.client.tasks(new_id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sigterm_drains_in_flight_tasks_and_leaves_the_group() {
    let mut c = cluster("drain", &["none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "drain",
            json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 800}}]),
        ))
        .await
        .unwrap();
    // Started (on a deferred claim: the task still reads queued, its entry pending here).
    c.started("s").await.unwrap();
    let mut worker = c.workers.remove(0);
    worker.terminate();
    let status = worker.exits_within(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status:?}");
    // It finished the task instead of abandoning it.
    let task = c.client.task(run_id, "s").await.unwrap();
    assert_eq!((task.status, task.attempt), (TaskStatus::Succeeded, 1));
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    let consumers = c.client.queue.consumers(&stream, "workers").await.unwrap();
    assert!(consumers.is_empty(), "{consumers:?}");
    // Closing its MongoDB client on the way out is no outage (it used to log one).
    let log = worker.output();
    assert!(log.contains("worker stopped"), "{log}");
    assert!(!log.contains("MongoDB unreachable"), "{log}");
}

/// `submit` sends a submission again when Redis loses it before any scheduler read it (here a
/// FLUSHALL on a private Redis), and gets its reply.
#[tokio::test(flavor = "multi_thread")]
async fn submit_resends_a_submission_redis_lost() {
    let (scope, _redis) = harmonia_tests::Scope::with_own_redis("resubmit")
        .await
        .unwrap();
    harmonia_tests::Client::connect(&scope).await.unwrap(); // registers its workspace
    let file = scope.dir.join("submission.json");
    let body = submission("lost-once", json!([{ "id": "a", "type": "debug.noop" }]));
    std::fs::write(&file, body.to_string()).unwrap();
    let mut cli = scope.command("harmonia-scheduler").unwrap();
    cli.args(["submit", file.to_str().unwrap(), "--timeout-s", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let cli = tokio::process::Command::from(cli).spawn().unwrap();

    // No scheduler yet: the entry waits in the stream, then Redis loses it.
    let queue = harmonia_shared::queue::Queue::connect(&scope.config.redis)
        .await
        .unwrap();
    let stream = queue.keys().submissions();
    wait_for("the submission to be in Redis", LONG, || async {
        let mut conn = queue.conn().await?;
        let n: usize = conn.xlen(&stream).await?;
        Ok((n == 1).then_some(()))
    })
    .await
    .unwrap();
    let mut conn = queue.conn().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    let _scheduler = scope
        .spawn(
            "scheduler",
            "harmonia-scheduler",
            harmonia_tests::cluster::SCHEDULER,
        )
        .unwrap();
    let out = tokio::time::timeout(LONG, cli.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"accepted\""), "{stdout}");
    assert!(stderr.contains("sending it again"), "{stderr}");
    let store = harmonia_shared::store::Store::connect(&scope.config.mongo)
        .await
        .unwrap();
    assert!(
        store
            .runs()
            .by_request_id("lost-once")
            .await
            .unwrap()
            .is_some()
    );
}

/// `submit` with no scheduler running says so within seconds instead of waiting in silence,
/// and still waits out its timeout (a scheduler may be starting).
#[tokio::test(flavor = "multi_thread")]
async fn submit_with_no_scheduler_running_says_so_and_keeps_waiting() {
    let scope = harmonia_tests::Scope::new("no-scheduler");
    let file = scope.dir.join("run.json");
    let body = submission("lonely", json!([{"id": "a", "type": "debug.noop"}]));
    std::fs::write(&file, body.to_string()).unwrap();
    let started = std::time::Instant::now();
    let out = scope
        .scheduler_cli(&["submit", file.to_str().unwrap(), "--timeout-s", "4"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no reply, no success");
    assert!(
        stderr.contains("no scheduler has read this submission after 2 s")
            && stderr.contains("no scheduler has ever read"),
        "{stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited out --timeout-s"
    );
}

/// A scheduler on `scope`, and a worker (`args`, its log named `label`) whose Redis connections
/// go through a proxy that can hold Redis's replies back.
async fn behind_a_proxy(
    scope: &Scope,
    label: &str,
    args: &[&str],
) -> (Proxy, ChildGuard, ChildGuard) {
    let redis = scope.config.redis.url.trim_start_matches("redis://");
    let proxy = Proxy::start(redis.parse().unwrap()).await.unwrap();
    let scheduler = scope
        .spawn("scheduler", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let mut cmd = scope.command("harmonia-worker").unwrap();
    cmd.args(args)
        .env("HARMONIA_REDIS_URL", format!("redis://{}", proxy.addr));
    let log = scope.dir.join(format!("{label}.log"));
    let worker = ChildGuard::spawn(label, &mut cmd, &log).unwrap();
    (proxy, scheduler, worker)
}

/// Submits one `debug.noop` task after holding the worker's Redis replies back, until Redis has
/// handed the task's entry to that worker's blocked read (the reply waiting in the proxy).
/// A try whose read had timed out before the entry came finds it unread: the replies are let
/// through, the worker runs it, and the next try begins. Returns the run held back.
async fn deliver_to_held_read(client: &Client, proxy: &Proxy, stream: &str) -> ObjectId {
    for n in 0..30 {
        proxy.hold_replies();
        let body = submission(
            &format!("held-{n}"),
            json!([{"id": "t", "type": "debug.noop"}]),
        );
        let run_id = client.start(&body).await.unwrap();
        // Redis serves a blocked reader within the XADD itself: once the entry is in the stream,
        // it is either in the worker's pending list or unread for good (its read timed out).
        let pending = wait_for("the entry to be published", LONG, || async {
            let mut conn = client.queue.conn().await?;
            let len: usize = conn.xlen(stream).await?;
            let consumers = client.queue.consumers(stream, "workers").await?;
            let pending: u64 = consumers.iter().map(|(_, n)| n).sum();
            Ok((len == 1).then_some(pending))
        })
        .await
        .unwrap();
        if pending == 1 {
            return run_id;
        }
        proxy.release_replies();
        client.finished(run_id, LONG).await.unwrap();
    }
    panic!("Redis never handed an entry to the worker's blocked read in 30 tries");
}

/// An entry Redis hands a worker's blocked read just as the worker begins to drain is not run
/// there nor kept: the draining worker hands it back, and another worker runs it at once
/// instead of after the drained worker's lease (30 s here) or its pending entry's reclaim.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_read_as_a_worker_begins_to_drain_is_run_at_once_by_another_worker() {
    let scope = Scope::new("read-while-draining");
    let mut args = one_slot_worker("300");
    args.extend(["--grace-s", "10"]);
    let (proxy, _scheduler, mut draining) = behind_a_proxy(&scope, "draining", &args).await;
    let client = Client::connect(&scope).await.unwrap();
    // A first task makes the CPU stream and puts the worker in its blocking reads of it.
    let warm_up = submission("warm-up", json!([{"id": "t", "type": "debug.noop"}]));
    let warm_up = client.start(&warm_up).await.unwrap();
    client.finished(warm_up, LONG).await.unwrap();
    let stream = client.queue.keys().task_stream(ResourceClass::CPU);

    let run_id = deliver_to_held_read(&client, &proxy, &stream).await;
    draining.terminate();
    draining
        .says("SIGTERM: draining", Duration::from_secs(10))
        .await
        .unwrap();
    proxy.release_replies();
    let status = draining
        .exits_within(Duration::from_secs(15))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");

    let other = scope.spawn("other", "harmonia-worker", &args).unwrap();
    let run = client.finished(run_id, Duration::from_secs(10)).await;
    let run = run.unwrap_or_else(|e| panic!("{e:#}\n{}", draining.output()));
    assert_eq!(run.status, RunStatus::Succeeded);
    let task = client.task(run_id, "t").await.unwrap();
    assert_eq!(task.attempt, 1, "{:?}", task.attempts);
    let by = task.worker_id.unwrap();
    assert!(by.contains(&format!("-{}-", other.pid())), "{by}");
}

/// SIGTERM while the worker's Redis does not answer (a proxy holds every reply back): the task
/// it is running still finishes and is recorded, and the worker exits within its grace period
/// instead of waiting on Redis.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_told_to_stop_while_its_redis_does_not_answer_exits_within_its_grace() {
    let scope = Scope::new("drain-redis-silent");
    let args = [
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        "1",
        "--grace-s",
        "4",
    ];
    let (proxy, _scheduler, mut worker) = behind_a_proxy(&scope, "worker", &args).await;
    let client = Client::connect(&scope).await.unwrap();
    let body = submission(
        "silent",
        json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 1500}}]),
    );
    let run_id = client.start(&body).await.unwrap();
    worker.says("task started", LONG).await.unwrap();
    proxy.hold_replies();
    let stopped = std::time::Instant::now();
    worker.terminate();
    let status = worker.exits_within(Duration::from_secs(20)).await.unwrap();
    let took = stopped.elapsed();
    assert!(status.success(), "{status:?}\n{}", worker.output());
    assert!(
        took < Duration::from_secs(8),
        "{took:?}\n{}",
        worker.output()
    );
    let task = client.task(run_id, "s").await.unwrap();
    assert_eq!((task.status, task.attempt), (TaskStatus::Succeeded, 1));
}
