//! Real faults, one at a time: Redis flushed or restarted empty under a running scheduler, a
//! scheduler killed with task events in hand, a publisher racing a flush, a worker stalled past
//! its lease. Each test has the Redis it breaks to itself.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::queue::{SCHEDULER_GROUP, TaskEntry};
use harmonia_shared::resources::ResourceClass;
use harmonia_tests::cluster::{LONG, SCHEDULER, WORKER, cluster_in};
use harmonia_tests::process::signal;
use harmonia_tests::{Client, Scope, submission, wait_for};
use mongodb::bson::{DateTime, doc};
use serde_json::json;

fn cpu_worker() -> Vec<&'static str> {
    let mut args = WORKER.to_vec();
    args.extend(["--gpus", "none"]);
    args
}

fn chain(request_id: &str) -> serde_json::Value {
    submission(
        request_id,
        json!([
            {"id": "a", "type": "debug.noop"},
            {"id": "b", "type": "debug.noop", "depends_on": ["a"]}
        ]),
    )
}

/// Submits with a deadline short enough to fail a test rather than hang it.
async fn accepted(client: &Client, request_id: &str) -> mongodb::bson::oid::ObjectId {
    let reply = client
        .submit_waiting(&chain(request_id), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{request_id}: {e:#}"));
    assert_eq!(reply["status"], "accepted", "{reply}");
    mongodb::bson::oid::ObjectId::parse_str(reply["run_id"].as_str().unwrap()).unwrap()
}

/// Sets fields of task `node` directly in MongoDB (what a process would have done before it
/// died); returns the task as it was.
async fn set_task(
    client: &Client,
    run_id: mongodb::bson::oid::ObjectId,
    node: &str,
    fields: mongodb::bson::Document,
) -> harmonia_shared::model::RunTask {
    let task = client.task(run_id, node).await.unwrap();
    client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks")
        .update_one(doc! { "_id": task.id }, doc! { "$set": fields })
        .await
        .unwrap();
    task
}

/// Marks `node` succeeded, as its worker's outcome would have.
async fn succeeded(
    client: &Client,
    run_id: mongodb::bson::oid::ObjectId,
    node: &str,
) -> harmonia_shared::model::RunTask {
    let fields = doc! { "status": "succeeded", "finished_at": DateTime::now() };
    set_task(client, run_id, node, fields).await
}

/// A scheduler replica that takes over in a second what a dead one left pending, with the
/// repair pass an hour away: only the take-over can do the dead one's work.
const TAKE_OVER: [&str; 7] = [
    "run",
    "--reconcile-ms",
    "200",
    "--repair-ms",
    "3600000",
    "--reclaim-after-s",
    "1",
];

/// Appends `payload` to `stream` and has a scheduler that then died ("ghost") read it: the
/// entry is pending in the schedulers' group, never acked.
async fn left_pending_by_a_dead_scheduler(client: &Client, stream: &str, payload: String) {
    client
        .queue
        .ensure_group(stream, SCHEDULER_GROUP)
        .await
        .unwrap();
    let opts = redis::streams::StreamReadOptions::default().group(SCHEDULER_GROUP, "ghost");
    let mut conn = client.queue.conn().await.unwrap();
    let () = redis::pipe()
        .atomic()
        .xadd(stream, "*", &[("payload", payload)])
        .ignore()
        .xread_options(&[stream], &[">"], &opts)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A scheduler stores `chain(request_id)` and is SIGKILLed: what it left is all there is.
async fn stored_then_killed(
    scope: &Scope,
    client: &Client,
    request_id: &str,
) -> mongodb::bson::oid::ObjectId {
    let mut scheduler = scope
        .spawn("scheduler-1", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let run_id = accepted(client, request_id).await;
    scheduler.kill();
    run_id
}

/// A replica that takes over (logging `reclaimed <what>`) and a worker finish the run.
async fn finished_by_a_replica_taking_over(
    scope: &Scope,
    client: &Client,
    run_id: mongodb::bson::oid::ObjectId,
    what: &str,
) {
    let second = scope
        .spawn("scheduler-2", "harmonia-scheduler", &TAKE_OVER)
        .unwrap();
    let _worker = scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    let run = client
        .finished(run_id, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", second.output()));
    assert_eq!(run.status, RunStatus::Succeeded);
    let log = second.output();
    assert!(log.contains(&format!("reclaimed {what}")), "{log}");
}

/// Drops every entry of the CPU task stream (none read by a worker yet), keeping its group:
/// as if they had never been appended. Returns how many.
async fn drop_cpu_entries(client: &Client) -> i64 {
    let stream = client.queue.keys().task_stream(ResourceClass::CPU);
    let mut conn = client.queue.conn().await.unwrap();
    redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_scheduler_keeps_ingesting_after_redis_is_flushed_or_restarted_empty() {
    let (scope, mut redis) = Scope::with_own_redis("ingest-after-loss").await.unwrap();
    let mut c = cluster_in(scope, SCHEDULER, &[cpu_worker()]).await.unwrap();
    let before = accepted(&c.client, "before").await;
    assert_eq!(
        c.client.finished(before, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );

    let mut conn = c.client.queue.conn().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    drop(conn);
    let after_flush = accepted(&c.client, "after-flush").await;
    assert_eq!(
        c.client.finished(after_flush, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );

    redis.restart_empty().await.unwrap();
    let after_restart = accepted(&c.client, "after-restart").await;
    assert_eq!(
        c.client.finished(after_restart, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );
    assert!(
        c.scheduler.try_wait().is_none(),
        "the scheduler kept running throughout"
    );
}

/// A scheduler killed after reading an event but before acking it: a live replica takes the
/// event over long before the repair pass (an hour away here) would have done its work.
#[tokio::test(flavor = "multi_thread")]
async fn events_a_killed_scheduler_left_pending_are_taken_over() {
    let scope = Scope::new("events-reclaim");
    let client = Client::connect(&scope).await.unwrap();
    let run_id = stored_then_killed(&scope, &client, "events-reclaim").await;

    // Task a "succeeded" and its event was read by a scheduler that then died ("ghost").
    let a = succeeded(&client, run_id, "a").await;
    let event = json!({"task_id": a.id.to_hex(), "run_id": run_id.to_hex(), "node_id": "a",
        "status": "succeeded", "downstream": ["b"]});
    let events = client.queue.keys().events();
    left_pending_by_a_dead_scheduler(&client, &events, event.to_string()).await;
    let second = scope
        .spawn("scheduler-2", "harmonia-scheduler", &TAKE_OVER)
        .unwrap();
    let b = wait_for(
        "b to be released by the taken-over event",
        Duration::from_secs(20),
        || async {
            let b = client.task(run_id, "b").await?;
            Ok((b.status != TaskStatus::Pending).then_some(b))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", second.output()));
    assert_eq!(b.status, TaskStatus::Queued);
    assert!(
        second.output().contains("reclaimed task events"),
        "{}",
        second.output()
    );
}

/// A scheduler queued b after a's success, then died before appending b to its stream and
/// before acking a's event: the replica that takes the event over appends b (b's epoch is the
/// current one, so reconcile would not).
#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_whose_scheduler_died_before_appending_is_appended_by_the_one_taking_over() {
    let (scope, _redis) = Scope::with_own_redis("promotion-takeover").await.unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let run_id = stored_then_killed(&scope, &client, "promotion-takeover").await;
    assert_eq!(drop_cpu_entries(&client).await, 1, "a's entry was there");
    let epoch = client.queue.epoch().await.unwrap().id;
    let a = succeeded(&client, run_id, "a").await;
    // What the dead scheduler wrote for a's event: b queued in this epoch.
    let fields = doc! { "status": "queued", "waiting_on": [], "queued_at": DateTime::now(),
    "published_epoch": epoch };
    set_task(&client, run_id, "b", fields).await;
    let event = json!({"task_id": a.id.to_hex(), "run_id": run_id.to_hex(), "node_id": "a",
        "status": "succeeded", "downstream": ["b"]});
    let events = client.queue.keys().events();
    left_pending_by_a_dead_scheduler(&client, &events, event.to_string()).await;

    finished_by_a_replica_taking_over(&scope, &client, run_id, "task events").await;
}

/// The publisher writes an entry, Redis is flushed, reconcile re-publishes what it finds, and
/// only then does the publisher's mark land: the task must not stay queued with no entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_mark_that_lands_after_a_flush_is_published_again() {
    let (scope, _redis) = Scope::with_own_redis("publish-race").await.unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let run_id = stored_then_killed(&scope, &client, "publish-race").await;
    let tasks = client.store.tasks();
    // Task a is due again, as if just queued.
    let a = set_task(
        &client,
        run_id,
        "a",
        doc! { "publish_due": DateTime::now() },
    )
    .await;

    // The publisher's steps, with a flush and a reconcile pass between its XADD and its mark.
    let due = tasks.due_for_publish(10).await.unwrap();
    assert_eq!(due.len(), 1);
    let entry = TaskEntry {
        task_id: a.id.to_hex(),
        attempt: a.attempt,
        model: None,
        ready_us: None,
        spec: None,
    };
    let written_in = client
        .queue
        .publish(&[(ResourceClass::CPU, entry)])
        .await
        .unwrap();
    let mut conn = client.queue.conn().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let epoch = client.queue.epoch().await.unwrap();
    assert!(epoch.started, "a flushed Redis starts a new epoch");
    assert_eq!(
        client.store.republish_stale(&epoch.id).await.unwrap(),
        0,
        "the mark is not in yet"
    );
    tasks
        .mark_published(&due, written_in.as_deref())
        .await
        .unwrap();

    // The next pass sees the mark's older epoch.
    assert_eq!(client.store.republish_stale(&epoch.id).await.unwrap(), 1);
    assert_eq!(tasks.due_for_publish(10).await.unwrap(), due);

    // And a real scheduler and worker finish the run from there.
    let _scheduler = scope
        .spawn("scheduler-2", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let _worker = scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    assert_eq!(
        client.finished(run_id, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );
}

/// A scheduler stored a run, then died before appending its ready task to its stream and
/// before acking the submission (the task is queued in the current epoch, with no entry): the
/// replica that takes the submission over publishes the run's queued tasks again.
#[tokio::test(flavor = "multi_thread")]
async fn a_submission_taken_over_after_its_run_was_stored_publishes_the_runs_tasks() {
    let (scope, _redis) = Scope::with_own_redis("redelivered-submission")
        .await
        .unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let run_id = stored_then_killed(&scope, &client, "redelivered").await;
    // No worker ever read a's entry: drop it, as if it had never been appended.
    assert_eq!(drop_cpu_entries(&client).await, 1, "a's entry was there");
    let a = client.task(run_id, "a").await.unwrap();
    assert_eq!(a.status, TaskStatus::Queued);
    assert!(a.publish_due.is_none(), "nothing would publish a again");
    assert_eq!(
        a.published_epoch,
        Some(client.queue.epoch().await.unwrap().id)
    );

    // The submission, delivered to the scheduler that died and never acked.
    let submissions = client.queue.keys().submissions();
    let payload = chain("redelivered").to_string();
    left_pending_by_a_dead_scheduler(&client, &submissions, payload).await;
    finished_by_a_replica_taking_over(&scope, &client, run_id, "submissions").await;
}

/// After Redis lost its data, reconcile publishes queued tasks of an older epoch again, but
/// only those of runs that exist: tasks whose creation died before the run document (the
/// commit point) never run.
#[tokio::test(flavor = "multi_thread")]
async fn queued_tasks_of_a_run_never_stored_are_not_published_after_a_loss() {
    let (scope, _redis) = Scope::with_own_redis("orphan-tasks").await.unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let run_id = stored_then_killed(&scope, &client, "kept").await;
    // a was published in an epoch Redis no longer has (its entry is gone with it).
    let a = set_task(&client, run_id, "a", doc! { "published_epoch": "lost" }).await;
    assert_eq!(drop_cpu_entries(&client).await, 1, "a's entry was there");
    // A copy of a under a run id no run has: a creation that died before its run document.
    let raw = client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let mut orphan = raw.find_one(doc! { "_id": a.id }).await.unwrap().unwrap();
    let orphan_id = mongodb::bson::oid::ObjectId::new();
    orphan.insert("_id", orphan_id);
    orphan.insert("run_id", mongodb::bson::oid::ObjectId::new());
    raw.insert_one(&orphan).await.unwrap();

    let _scheduler = scope
        .spawn("scheduler-2", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let _worker = scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    // The pass that published a again saw the orphan too.
    assert_eq!(
        client.finished(run_id, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );
    let orphan = raw
        .find_one(doc! { "_id": orphan_id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(orphan.get_str("status").unwrap(), "queued");
    assert_eq!(orphan.get("publish_due"), Some(&mongodb::bson::Bson::Null));
    assert_eq!(orphan.get_str("published_epoch").unwrap(), "lost");
}

/// A worker frozen (SIGSTOP) past its lease loses the task to another worker; thawed
/// (SIGCONT), it stops its attempt at its next heartbeat and its late outcome is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stalled_past_its_lease_stops_its_attempt_and_its_outcome_is_refused() {
    let scope = Scope::new("stalled-worker");
    let workers = [cpu_worker(), cpu_worker()];
    let c = cluster_in(scope, SCHEDULER, &workers).await.unwrap();
    let body = submission(
        "stalled",
        json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 6000}, "max_attempts": 3}]),
    );
    let run_id = c.client.start(&body).await.unwrap();
    let first = c
        .client
        .task_reaches(run_id, "s", TaskStatus::Running)
        .await
        .unwrap();
    let owner = first.worker_id.clone().unwrap();
    let (stalled, other) = if owner.contains(&format!("-{}-", c.workers[0].pid())) {
        (&c.workers[0], &c.workers[1])
    } else {
        (&c.workers[1], &c.workers[0])
    };
    signal(stalled.pid(), libc::SIGSTOP);
    let second = wait_for("another worker to take the task over", LONG, || async {
        let t = c.client.task(run_id, "s").await?;
        Ok((t.status == TaskStatus::Running && t.attempt == first.attempt + 1).then_some(t))
    })
    .await;
    signal(stalled.pid(), libc::SIGCONT);
    let second = second.unwrap();
    assert!(
        second
            .worker_id
            .as_deref()
            .unwrap()
            .contains(&format!("-{}-", other.pid()))
    );

    wait_for("the thawed worker to stop and be refused", LONG, || async {
        let log = stalled.output();
        Ok((log.contains("stopping the attempt") && log.contains("outcome refused")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stalled.output()));
    // Stopped at its heartbeat, not after sleeping out its 6 s: the task is still running on
    // the other worker when the refusal is logged.
    let now = c.client.task(run_id, "s").await.unwrap();
    assert_eq!(
        (now.status, now.attempt),
        (TaskStatus::Running, second.attempt)
    );

    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let done = c.client.task(run_id, "s").await.unwrap();
    assert_eq!(
        done.attempt, second.attempt,
        "succeeded once, on the second attempt"
    );
    assert_eq!(done.worker_id, second.worker_id);
    // The history keeps both: the expired attempt with its worker and why, then the success.
    let history: Vec<(u32, &str, Option<&str>)> = done
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.worker_id.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            (first.attempt, "retrying", Some(owner.as_str())),
            (second.attempt, "succeeded", second.worker_id.as_deref()),
        ]
    );
    let why = done.attempts[0].error.as_ref().map(|e| e.message.as_str());
    assert!(
        why.is_some_and(|m| m.contains("stopped renewing its lease")),
        "{why:?}"
    );
}

/// SIGTERM while every loop is backing off from a Redis that is gone: the scheduler still
/// exits, within its grace period. (The ingest loop's backoff used to swallow the one shutdown
/// message, and the scheduler then retried forever.)
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduler_told_to_stop_while_redis_is_down_exits_within_its_grace() {
    let (scope, mut redis) = Scope::with_own_redis("shutdown-backoff").await.unwrap();
    let mut scheduler = scope
        .spawn("scheduler", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    scheduler
        .says("scheduler running", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    redis.process.kill();
    scheduler
        .says("Redis unreachable", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    scheduler.terminate();
    // The grace is 10 s; a little more for a loaded machine, far less than a hang.
    let exited = scheduler
        .exits_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("still running 15 s after SIGTERM: {e:#}"));
    assert!(exited.success(), "{exited:?}\n{}", scheduler.output());
}

/// More active runs than a repair page (500) and than the old cap (1,000) lost their task
/// events: the repair pass pages through every one of them.
#[tokio::test(flavor = "multi_thread")]
async fn lost_events_of_more_runs_than_a_page_are_all_repaired() {
    use futures::StreamExt;
    const RUNS: usize = 1_100;
    let scope = Scope::new("repair-pages");
    let client = Client::connect(&scope).await.unwrap();
    let mut first = scope
        .spawn("scheduler-1", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let runs: Vec<_> = futures::stream::iter(0..RUNS)
        .map(|i| {
            let client = &client;
            async move { accepted(client, &format!("page-{i}")).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    first.kill();
    // Every `a` "succeeded" with its event lost: only the repair pass can release `b`.
    let tasks = client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let done = doc! { "$set": { "status": "succeeded", "finished_at": DateTime::now() } };
    let a = tasks
        .update_many(doc! { "node_id": "a" }, done)
        .await
        .unwrap();
    assert_eq!(a.modified_count as usize, RUNS);

    let args = ["run", "--reconcile-ms", "200", "--repair-ms", "500"];
    let second = scope
        .spawn("scheduler-2", "harmonia-scheduler", &args)
        .unwrap();
    let pending = doc! { "node_id": "b", "status": "pending" };
    wait_for("every b to be released", LONG, || async {
        let left = tasks.count_documents(pending.clone()).await?;
        Ok((left == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", second.output()));
    assert_eq!(runs.len(), RUNS);
}

/// A worker started before Redis is up (containers start in any order) waits for it, saying so
/// once, instead of exiting into a crash loop; then it works.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_started_before_redis_waits_for_it_then_works() {
    let (scope, mut redis) = Scope::with_own_redis("redis-late").await.unwrap();
    redis.process.kill();
    let mut worker = scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    worker
        .says("Redis unreachable", LONG)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(worker.try_wait().is_none(), "{}", worker.output());

    redis.restart_empty().await.unwrap();
    let _scheduler = scope
        .spawn("scheduler", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let run_id = accepted(&client, "redis-late").await;
    assert_eq!(
        client.finished(run_id, LONG).await.unwrap().status,
        RunStatus::Succeeded
    );
    let log = worker.output();
    assert_eq!(log.matches("Redis unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("Redis answers again").count(), 1, "{log}");
}

/// One run with more pending tasks than a repair page (1,000) lost the events of all its
/// roots: half succeeded, half failed. The repair pass reads the run a page at a time and still
/// releases every task whose upstream succeeded and skips every task whose upstream failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_larger_than_a_repair_page_is_repaired_whole() {
    const PAIRS: usize = 1_500;
    let scope = Scope::new("repair-big-run");
    let client = Client::connect(&scope).await.unwrap();
    let mut first = scope
        .spawn("scheduler-1", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let tasks: Vec<serde_json::Value> = (0..PAIRS)
        .flat_map(|i| {
            [
                json!({"id": format!("r{i}"), "type": "debug.noop"}),
                json!({"id": format!("d{i}"), "type": "debug.noop", "depends_on": [format!("r{i}")]}),
            ]
        })
        .collect();
    let run_id = client
        .start(&submission("repair-big-run", json!(tasks)))
        .await
        .unwrap();
    first.kill();
    // No worker ever ran: the roots "ended" with their events lost.
    let coll = client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let roots = |parity: &str| {
        doc! { "run_id": run_id, "node_id": { "$regex": format!("^r\\d*[{parity}]$") } }
    };
    let ended =
        |status: &str| doc! { "$set": { "status": status, "finished_at": DateTime::now() } };
    let ok = coll
        .update_many(roots("02468"), ended("succeeded"))
        .await
        .unwrap();
    let failed = coll
        .update_many(roots("13579"), ended("failed"))
        .await
        .unwrap();
    assert_eq!((ok.modified_count + failed.modified_count) as usize, PAIRS);

    let args = ["run", "--reconcile-ms", "200", "--repair-ms", "500"];
    let second = scope
        .spawn("scheduler-2", "harmonia-scheduler", &args)
        .unwrap();
    let pending = doc! { "run_id": run_id, "status": "pending" };
    wait_for("no task of the run left pending", LONG, || async {
        let left = coll.count_documents(pending.clone()).await?;
        Ok((left == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", second.output()));
    for task in client.tasks(run_id).await.unwrap() {
        let Some(i) = task.node_id.strip_prefix('d') else {
            continue;
        };
        let even = i.parse::<usize>().unwrap() % 2 == 0;
        let want = if even {
            TaskStatus::Queued
        } else {
            TaskStatus::Skipped
        };
        assert_eq!(task.status, want, "{}", task.node_id);
    }
}

/// Waits until the CPU stream holds `n` entries (published, not yet taken: no worker runs).
async fn entries_in_cpu_stream(client: &Client, n: usize) {
    let stream = client.queue.keys().task_stream(ResourceClass::CPU);
    wait_for(&format!("{n} entries in the CPU stream"), LONG, || async {
        let mut conn = client.queue.conn().await?;
        let len: usize = redis::AsyncCommands::xlen(&mut conn, &stream).await?;
        Ok((len == n).then_some(()))
    })
    .await
    .unwrap();
}

/// Redis SIGKILLed and restarted from a snapshot taken before a task was published: the
/// snapshot brings the epoch key back but not the task's entry. Redis is another process now,
/// which starts a new epoch, so the task is published again and runs (it used to stay queued
/// for good: same epoch key, so its publish mark looked current). A failover to a replica that
/// had not received the last entries is the same loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_published_after_the_snapshot_redis_restarts_from_is_published_again() {
    let (scope, mut redis) = Scope::with_own_redis("snapshot-restart").await.unwrap();
    let _scheduler = scope
        .spawn("scheduler", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    let client = Client::connect(&scope).await.unwrap();
    let one = |id: &str| submission(id, json!([{"id": "t", "type": "debug.noop"}]));
    let before = client.start(&one("before-snapshot")).await.unwrap();
    entries_in_cpu_stream(&client, 1).await;
    let mut conn = client.queue.conn().await.unwrap();
    let () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    drop(conn);
    let after = client.start(&one("after-snapshot")).await.unwrap();
    entries_in_cpu_stream(&client, 2).await;

    redis.restart_from_snapshot().await.unwrap();
    let _worker = scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    for run_id in [before, after] {
        let run = client.finished(run_id, Duration::from_secs(20)).await;
        let run = run.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(run.status, RunStatus::Succeeded);
        let task = client.task(run_id, "t").await.unwrap();
        assert_eq!(task.attempt, 1, "{:?}", task.attempts);
    }
}
