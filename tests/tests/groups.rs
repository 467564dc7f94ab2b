//! The task streams' consumer group as a fleet sees it: consumers of dead workers are removed
//! once they hold nothing (never with entries pending), and the group's lag, which autoscalers
//! read (docs/scaling.md), is the number of tasks waiting for a worker. A read that brought
//! megabytes does not leave its connection's buffer in the pool.

use std::time::Duration;

use harmonia_shared::model::RunStatus;
use harmonia_shared::queue::WORKERS_GROUP;
use harmonia_shared::resources::ResourceClass;
use harmonia_tests::cluster::{LONG, SCHEDULER, WORKER, cluster_in};
use harmonia_tests::{Client, Scope, submission, wait_for};
use serde_json::json;

fn cpu_worker() -> Vec<&'static str> {
    let mut args = WORKER.to_vec();
    args.extend(["--gpus", "none"]);
    args
}

/// The test scheduler, removing consumers idle for 1.5 s at each repair pass (every 1 s).
fn pruning_scheduler() -> Vec<&'static str> {
    let mut args = SCHEDULER.to_vec();
    args.extend(["--consumer-idle-ms", "1500"]);
    args
}

fn noops(request_id: &str, n: usize) -> serde_json::Value {
    let tasks: Vec<_> = (0..n)
        .map(|i| json!({"id": format!("n{i}"), "type": "debug.noop"}))
        .collect();
    submission(request_id, json!(tasks))
}

async fn consumers(client: &Client, stream: &str) -> Vec<(String, u64)> {
    client
        .queue
        .consumers(stream, WORKERS_GROUP)
        .await
        .expect("XINFO CONSUMERS")
}

/// Workers read the CPU stream from their start, not once a first task has announced the
/// class (up to a class refresh later, each at its own moment): otherwise the first worker to
/// look takes the first tasks of a fresh Redis, one per slot, while the others still wait.
/// (Redis 7.0 lists a consumer only once a blocked read is served: the group a worker made
/// for its read is what shows it.)
#[tokio::test(flavor = "multi_thread")]
async fn workers_read_the_cpu_stream_from_their_start_before_any_task_is_published() {
    let scope = Scope::new("read-from-start");
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker()]).await.unwrap();
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    wait_for("the worker's group on the CPU stream", LONG, || async {
        let group = c.client.queue.group_info(&stream, WORKERS_GROUP).await?;
        Ok(group.map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.workers[0].output()));
    let classes = c.client.queue.classes().await.unwrap();
    assert!(classes.is_empty(), "no task announced a class: {classes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_consumer_is_removed_only_once_nothing_it_read_is_pending() {
    let scope = Scope::new("prune-consumers");
    let c = cluster_in(scope, &pruning_scheduler(), &[]).await.unwrap();
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    let run_id = c.client.start(&noops("ghosts", 3)).await.unwrap();
    wait_for("3 entries published", LONG, || async {
        let info = c.client.queue.group_info(&stream, WORKERS_GROUP).await?;
        Ok(info.is_some_and(|g| g.lag == Some(3)).then_some(()))
    })
    .await
    .unwrap();
    // Two readers that die without a word: one read an entry (it stays pending), one read
    // when nothing was left for it.
    let read = c
        .client
        .queue
        .read_group(&stream, WORKERS_GROUP, "ghost-holding", false, 1);
    assert_eq!(read.await.unwrap().len(), 1);
    let read = c
        .client
        .queue
        .read_group(&stream, WORKERS_GROUP, "ghost-empty", true, 1);
    assert!(read.await.unwrap().is_empty());

    // A repair pass after the idle time removes the empty one and keeps the one holding an
    // entry: removing it would drop the entry from the group for good.
    wait_for("the empty ghost to be removed", LONG, || async {
        let names = consumers(&c.client, &stream).await;
        Ok((!names.iter().any(|(n, _)| n == "ghost-empty")).then_some(names))
    })
    .await
    .unwrap();
    let names = consumers(&c.client, &stream).await;
    assert!(
        names.contains(&("ghost-holding".to_owned(), 1)),
        "{names:?}"
    );

    // The scheduler takes the entry over once it sat idle a worker timeout (the ghost may
    // have run it on a deferred claim: that attempt is counted), a worker runs every task, and
    // the ghost, holding nothing now, goes too.
    let worker = c
        .scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    wait_for("the emptied ghost to be removed", LONG, || async {
        let names = consumers(&c.client, &stream).await;
        Ok((!names.iter().any(|(n, _)| n.starts_with("ghost"))).then_some(()))
    })
    .await
    .unwrap();
    let log = c.scheduler.output();
    assert!(
        log.contains("attempt counted"),
        "{log}\n{}",
        worker.output()
    );
    let lapsed: Vec<_> = c
        .client
        .tasks(run_id)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|t| t.attempts)
        .filter(|a| a.worker_id.as_deref() == Some("ghost-holding"))
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        lapsed,
        ["retrying"],
        "the ghost's one entry cost one attempt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_workers_consumer_is_removed_from_the_group() {
    let scope = Scope::new("prune-killed");
    let mut c = cluster_in(scope, &pruning_scheduler(), &[cpu_worker()])
        .await
        .unwrap();
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    let run_id = c.client.start(&noops("killed", 2)).await.unwrap();
    c.client.finished(run_id, LONG).await.unwrap();
    let names = consumers(&c.client, &stream).await;
    assert_eq!(names.len(), 1, "the worker reads as a consumer: {names:?}");
    c.workers[0].kill();
    wait_for("the dead worker's consumer to go", LONG, || async {
        Ok(consumers(&c.client, &stream).await.is_empty().then_some(()))
    })
    .await
    .unwrap();
    assert!(
        c.scheduler
            .output()
            .contains("removed consumers of processes gone for good")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workers_group_lag_is_the_number_of_tasks_waiting_for_a_worker() {
    let scope = Scope::new("group-lag");
    let c = cluster_in(scope, SCHEDULER, &[]).await.unwrap();
    let stream = c.client.queue.keys().task_stream(ResourceClass::CPU);
    let run_id = c.client.start(&noops("lag", 7)).await.unwrap();
    wait_for("a lag of 7", LONG, || async {
        let info = c.client.queue.group_info(&stream, WORKERS_GROUP).await?;
        Ok(info.is_some_and(|g| g.lag == Some(7)).then_some(()))
    })
    .await
    .unwrap();
    let _worker = c
        .scope
        .spawn("worker", "harmonia-worker", &cpu_worker())
        .unwrap();
    c.client.finished(run_id, LONG).await.unwrap();
    // Claimed entries are deleted: nothing waits, nothing is pending, and Redis can still tell.
    let info = wait_for("the group to settle", Duration::from_secs(10), || async {
        let info = c.client.queue.group_info(&stream, WORKERS_GROUP).await?;
        Ok(info.filter(|g| g.pending == 0))
    })
    .await
    .unwrap();
    assert_eq!(info.lag, Some(0), "{info:?}");
}

/// The ids in `stream`, oldest first.
async fn ids(client: &Client, stream: &str) -> Vec<String> {
    let mut conn = client.queue.conn().await.expect("a connection");
    let range: redis::streams::StreamRangeReply =
        redis::AsyncCommands::xrange_all(&mut conn, stream)
            .await
            .expect("XRANGE");
    range.ids.into_iter().map(|e| e.id).collect()
}

/// What consumer `consumer` reads of the CPU stream, without waiting.
async fn read_cpu(
    queue: &harmonia_shared::queue::Queue,
    consumer: &str,
) -> Vec<redis::streams::StreamId> {
    let cpu = harmonia_shared::queue::TaskStream::class(ResourceClass::CPU);
    let read = queue
        .read_tasks(consumer, std::slice::from_ref(&cpu), 10, false)
        .await
        .expect("XREADGROUP");
    read.into_iter().flat_map(|(_, entries)| entries).collect()
}

/// An entry that names a model is a pair: its class copy and its hint copy share one id.
/// Handing back either appends a new pair and drops the old one; acking one acks and deletes
/// both, so a task claimed through one copy is never read again through the other.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_naming_a_model_is_published_handed_back_and_acked_as_a_pair() {
    use harmonia_shared::queue::{TaskEntry, TaskStream};
    let scope = Scope::new("hint-pairs");
    let client = Client::connect(&scope).await.unwrap();
    let queue = &client.queue;
    let cpu = ResourceClass::CPU;
    let (class, hint) = (TaskStream::class(cpu), TaskStream::hint(cpu, "org/m"));
    let (class_key, hint_key) = (class.key(queue.keys()), hint.key(queue.keys()));
    for key in [&class_key, &hint_key] {
        queue.ensure_group(key, WORKERS_GROUP).await.unwrap();
    }
    let entry = TaskEntry {
        task_id: "0123456789abcdef01234567".into(),
        attempt: 2,
        model: Some("org/m".into()),
        ready_us: None,
        spec: None,
    };
    let before = harmonia_shared::queue::unix_us();
    queue.publish(&[(cpu, entry.clone())]).await.unwrap();
    let after = harmonia_shared::queue::unix_us();
    let first = ids(&client, &class_key).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        ids(&client, &hint_key).await,
        first,
        "one id for both copies"
    );

    let read = queue
        .read_tasks("w1", std::slice::from_ref(&class), 10, false)
        .await
        .unwrap();
    let got = &read[0].1[0];
    let published = TaskEntry::of(got).unwrap();
    let ready = published
        .ready_us
        .expect("the publisher stamps when the task became ready");
    assert!(
        (before..=after).contains(&ready),
        "{before} <= {ready} <= {after}"
    );
    assert_eq!(
        published,
        TaskEntry {
            ready_us: Some(ready),
            ..entry.clone()
        },
        "the class copy names the model"
    );
    queue.hand_back(cpu, &got.id, &published).await.unwrap();
    let second = ids(&client, &class_key).await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "appended anew");
    assert_eq!(ids(&client, &hint_key).await, second);

    let read = queue
        .read_hints("w2", std::slice::from_ref(&hint), 10)
        .await
        .unwrap();
    assert_eq!(read[0].1[0].id, second[0]);
    assert_eq!(
        TaskEntry::of(&read[0].1[0]),
        Some(published),
        "the pair handed back is the same task, ready since it was first published"
    );
    assert!(
        queue.holder_looking(cpu, "org/m").await.unwrap(),
        "a hint read marks a holder looking"
    );
    queue.ack_pairs(cpu, "org/m", &second).await.unwrap();
    assert!(ids(&client, &class_key).await.is_empty());
    assert!(ids(&client, &hint_key).await.is_empty());
    let pending = queue
        .group_info(&hint_key, WORKERS_GROUP)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.pending, 0, "the read copy was acked");
}

/// An entry carries when its task became ready (the publisher's clock, in microseconds, taken
/// as it appends), which the worker's dispatch latency is measured from; a worker that hands
/// the entry back passes the same time on, and an entry given one keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_says_when_its_task_became_ready_and_a_hand_back_keeps_it() {
    use harmonia_shared::queue::{TaskEntry, TaskStream, unix_us};
    let scope = Scope::new("ready-stamp");
    let client = Client::connect(&scope).await.unwrap();
    let queue = &client.queue;
    let cpu = ResourceClass::CPU;
    let class = TaskStream::class(cpu);
    queue
        .ensure_group(&class.key(queue.keys()), WORKERS_GROUP)
        .await
        .unwrap();
    let fresh = TaskEntry {
        task_id: "0123456789abcdef01234567".into(),
        attempt: 0,
        model: None,
        ready_us: None,
        spec: None,
    };
    let given = TaskEntry {
        task_id: "0123456789abcdef01234568".into(),
        ready_us: Some(1_700_000_000_123_456),
        ..fresh.clone()
    };
    let before = unix_us();
    queue
        .publish(&[(cpu, fresh.clone()), (cpu, given.clone())])
        .await
        .unwrap();
    let after = unix_us();
    let first = read_cpu(queue, "w1").await;
    let entries: Vec<TaskEntry> = first.iter().filter_map(TaskEntry::of).collect();
    assert_eq!(entries.len(), 2);
    let stamped = entries[0].ready_us.expect("a fresh entry is stamped");
    assert!(
        (before..=after).contains(&stamped),
        "{before} <= {stamped} <= {after}"
    );
    assert_eq!(entries[1], given, "a given time is kept");

    for (entry, task) in first.iter().zip(&entries) {
        queue.hand_back(cpu, &entry.id, task).await.unwrap();
    }
    let again: Vec<TaskEntry> = read_cpu(queue, "w2")
        .await
        .iter()
        .filter_map(TaskEntry::of)
        .collect();
    assert_eq!(
        again, entries,
        "handed back with the times they became ready"
    );
}

/// A new run's first ready tasks, and the tasks a small promotion queues, travel with a copy of
/// their document in their entries, as MongoDB stored it (less its history, which a ready task
/// does not have yet); the copy reads back only while it names the entry's task, queued as of
/// the entry's attempt. A copy over 4 KiB is not made, and a hand-back drops it (the next
/// worker reads MongoDB).
#[tokio::test(flavor = "multi_thread")]
async fn ready_tasks_travel_with_a_copy_until_they_are_handed_back() {
    use harmonia_shared::model::RunTask;
    use harmonia_shared::queue::{SPEC_MAX_BYTES, TaskEntry};
    let scope = Scope::new("task-copy");
    let c = cluster_in(scope, SCHEDULER, &[]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "task-copy",
            json!([{"id": "a", "type": "debug.sleep", "params": {"ms": 5}},
                   {"id": "b", "type": "debug.noop", "depends_on": ["a"]}]),
        ))
        .await
        .unwrap();
    let queue = &c.client.queue;
    let entries = read_cpu(queue, "w1").await;
    assert_eq!(entries.len(), 1, "only `a` is ready");
    let entry = TaskEntry::of(&entries[0]).unwrap();
    let stored = c.client.task(run_id, "a").await.unwrap();
    assert_eq!(stored.downstream_node_ids, vec!["b".to_owned()]);
    let copy = entry.task().expect("a copy that reads as queued");
    assert_eq!(
        copy, stored,
        "the downstream list too: the outcome's event names it"
    );
    let later = TaskEntry {
        attempt: entry.attempt + 1,
        ..entry.clone()
    };
    assert_eq!(later.task(), None, "a copy of another attempt");
    let big = RunTask {
        params: mongodb::bson::doc! { "text": "x".repeat(SPEC_MAX_BYTES) },
        ..stored
    };
    assert_eq!(TaskEntry::spec_of(&big), None, "too big to carry");

    queue
        .hand_back(ResourceClass::CPU, &entries[0].id, &entry)
        .await
        .unwrap();
    let again = read_cpu(queue, "w2").await;
    let back = TaskEntry::of(&again[0]).unwrap();
    assert_eq!(
        back,
        TaskEntry {
            spec: None,
            ..entry
        },
        "handed back without the copy"
    );

    // `a` succeeds (written and announced as its worker's outcome would be): `b` is promoted,
    // and its entry carries it too, as the promotion left it.
    let coll = c
        .client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    let succeeded = mongodb::bson::doc! { "$set": { "status": "succeeded" } };
    coll.update_one(mongodb::bson::doc! { "_id": copy.id }, succeeded)
        .await
        .unwrap();
    queue
        .announce(&c.client.task(run_id, "a").await.unwrap())
        .await
        .unwrap();
    let promoted = wait_for("b's entry", LONG, || async {
        Ok(read_cpu(queue, "w3").await.first().and_then(TaskEntry::of))
    })
    .await
    .unwrap();
    let b = c.client.task(run_id, "b").await.unwrap();
    assert_eq!(promoted.task(), Some(b), "a promoted task's copy");
}

/// Connections to the server as it lists them (`CLIENT LIST`), `admin`'s own included.
async fn connected(admin: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<usize> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(admin).await?;
    Ok(list.lines().count())
}

/// A read that brought megabytes (a large submission) closes its connection instead of pooling
/// it: the connection's read buffer keeps the size of the largest reply it carried. A small
/// read leaves its connection in the pool.
#[tokio::test]
async fn a_read_that_brought_megabytes_closes_its_connection() {
    use harmonia_shared::queue::Queue;
    use redis::AsyncCommands;
    let (scope, redis) = Scope::with_own_redis("large-read").await.unwrap();
    let queue = Queue::connect(&scope.config.redis).await.unwrap();
    let stream = queue.keys().submissions();
    queue.ensure_group(&stream, "g").await.unwrap();
    let add = |payload: String| {
        let queue = &queue;
        let stream = &stream;
        async move {
            let mut conn = queue.conn().await.unwrap();
            let _: String = conn
                .xadd(stream, "*", &[("payload", payload)])
                .await
                .unwrap();
        }
    };
    // One connection asks throughout: a fresh one per count could still see the last one.
    let mut admin = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pooled = connected(&mut admin).await.unwrap();

    add("small".into()).await;
    let read = queue
        .read_group(&stream, "g", "c", false, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        connected(&mut admin).await.unwrap(),
        pooled,
        "kept in the pool"
    );

    add("x".repeat(2 << 20)).await;
    let read = queue
        .read_group(&stream, "g", "c", false, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    wait_for(
        "the connection that read 2 MB to close",
        Duration::from_secs(5),
        || {
            let mut admin = admin.clone();
            async move { Ok((connected(&mut admin).await? == pooled - 1).then_some(())) }
        },
    )
    .await
    .unwrap();
}
