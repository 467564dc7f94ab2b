//! Effects of an attempt that lost its lease: its outputs must never replace those of the
//! attempt that took the task over (the container version, with a real network partition, is
//! in fleet.rs).

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::storage::Storage;
use harmonia_tests::cluster::{LONG, SCHEDULER, WORKER, cluster_in};
use harmonia_tests::process::signal;
use harmonia_tests::{Scope, submission, wait_for};
use serde_json::json;
use sha2::Digest;

fn cpu_worker() -> Vec<&'static str> {
    let mut args = WORKER.to_vec();
    args.extend(["--gpus", "none"]);
    args
}

/// A worker frozen (SIGSTOP) while its task works, thawed after another worker re-ran the task
/// and stored its output: the thawed attempt's work is done, so it goes straight to storing its
/// output. It must store nothing: the pointer and the only object are the second attempt's.
/// (Before outputs were fenced, the late attempt overwrote the object and the pointer.)
#[tokio::test(flavor = "multi_thread")]
async fn a_late_attempt_thawed_after_the_task_was_rerun_stores_no_output() {
    let scope = Scope::new("late-output");
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker(), cpu_worker()])
        .await
        .unwrap();
    let body = submission(
        "late-output",
        json!([{"id": "w", "type": "debug.write", "params": {"bytes": 4096, "after_ms": 3000},
                "max_attempts": 3}]),
    );
    let run_id = c.client.start(&body).await.unwrap();
    let first = c
        .client
        .task_reaches(run_id, "w", TaskStatus::Running)
        .await
        .unwrap();
    let owner = first.worker_id.clone().unwrap();
    let frozen = if owner.contains(&format!("-{}-", c.workers[0].pid())) {
        &c.workers[0]
    } else {
        &c.workers[1]
    };
    signal(frozen.pid(), libc::SIGSTOP);
    let run = c.client.finished(run_id, LONG).await;
    signal(frozen.pid(), libc::SIGCONT);
    assert_eq!(run.unwrap().status, RunStatus::Succeeded);
    let done = c.client.task(run_id, "w").await.unwrap();
    assert_eq!(
        done.attempt,
        first.attempt + 1,
        "the other worker re-ran it"
    );

    wait_for("the thawed worker to be refused", LONG, || async {
        Ok(frozen.output().contains("outcome refused").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", frozen.output()));

    let pointers = c
        .client
        .store
        .artifacts()
        .for_producer(done.id)
        .await
        .unwrap();
    assert_eq!(pointers.len(), 1, "{pointers:?}");
    let pointer = &pointers[0];
    assert_eq!(
        (pointer.attempt, pointer.created_by.as_str()),
        (done.attempt, done.worker_id.as_deref().unwrap()),
        "the pointer is the live attempt's"
    );
    let storage = Storage::new(&c.scope.config.s3);
    let prefix = format!("artifacts/ml/{}/{}/", run_id.to_hex(), done.id.to_hex());
    let keys = storage.list(&prefix).await.unwrap();
    assert_eq!(
        keys,
        vec![pointer.storage_ref.key.clone()],
        "one object, the pointer's"
    );
    let bytes = storage.get_bytes(&pointer.storage_ref.key).await.unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&bytes)),
        pointer.storage_ref.sha256
    );
}

/// A new run's first tasks travel with a copy of their document in their stream entries, and
/// a worker starts them from that copy without reading MongoDB. A copy that is stale when it
/// is read (here: an entry appended again, naming a task that already succeeded) starts an
/// attempt that records nothing: the outcome is fenced on the task as MongoDB has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_copy_of_a_task_in_its_entry_starts_an_attempt_that_records_nothing() {
    use harmonia_shared::queue::{TaskEntry, WORKERS_GROUP};
    use harmonia_shared::resources::ResourceClass;
    let scope = Scope::new("stale-copy");
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker()]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "stale-copy",
            json!([{"id": "t", "type": "debug.noop"}]),
        ))
        .await
        .unwrap();
    c.client.finished(run_id, LONG).await.unwrap();
    let done = c.client.task(run_id, "t").await.unwrap();
    assert_eq!((done.status, done.attempt), (TaskStatus::Succeeded, 1));

    // The copy as it was while the task was queued for its second attempt.
    let copy = harmonia_shared::model::RunTask {
        status: TaskStatus::Queued,
        outputs: None,
        ..done.clone()
    };
    let entry = TaskEntry {
        task_id: done.id.to_hex(),
        attempt: done.attempt,
        model: None,
        ready_us: None,
        spec: TaskEntry::spec_of(&copy),
    };
    assert!(entry.task().is_some(), "the copy reads as queued");
    let starts = || {
        let out = c.workers[0].output();
        out.lines()
            .map(harmonia_tests::process::plain)
            .filter(|l| l.contains("task started") && l.contains("node=t "))
            .count()
    };
    assert_eq!(starts(), 1);
    let queue = &c.client.queue;
    queue.publish(&[(ResourceClass::CPU, entry)]).await.unwrap();
    wait_for("the copy's attempt to start", LONG, || async {
        Ok((starts() == 2).then_some(()))
    })
    .await
    .unwrap();
    let stream = queue.keys().task_stream(ResourceClass::CPU);
    wait_for("its entry to be acked", LONG, || async {
        let group = queue.group_info(&stream, WORKERS_GROUP).await?;
        Ok(group.filter(|g| g.pending == 0).map(|_| ()))
    })
    .await
    .unwrap();
    let after = c.client.task(run_id, "t").await.unwrap();
    assert_eq!(after, done, "nothing of the stale attempt was recorded");
}
