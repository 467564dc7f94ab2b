//! The core loop end to end: a real scheduler and real worker processes against real Redis,
//! mongod and S3. DAG order, retries, poison tasks, dead workers, GPU fit, Redis flushes,
//! cancel and retry.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_tests::cluster::{LONG, SCHEDULER, WORKER, cluster, cluster_in, ms};
use harmonia_tests::{Scope, submission, wait_for};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::test]
async fn a_diamond_runs_in_dependency_order_with_exact_aggregates() {
    let c = cluster("diamond", &["none", "none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "diamond",
            json!([
                {"id": "a", "type": "debug.sleep", "params": {"ms": 50}},
                {"id": "b", "type": "debug.sleep", "params": {"ms": 50}, "depends_on": ["a"]},
                {"id": "c", "type": "debug.noop", "depends_on": ["a"]},
                {"id": "d", "type": "debug.noop", "depends_on": ["b", "c"]}
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!((run.counts.succeeded, run.task_count), (4, 4));
    assert!(run.duration_ms.unwrap() >= 100, "{run:?}");
    let tasks = c.client.tasks(run_id).await.unwrap();
    let t = |n: &str| tasks.iter().find(|t| t.node_id == n).unwrap().clone();
    let (a, b, cc, d) = (t("a"), t("b"), t("c"), t("d"));
    assert!(ms(b.started_at) >= ms(a.finished_at));
    assert!(ms(cc.started_at) >= ms(a.finished_at));
    assert!(ms(d.started_at) >= ms(b.finished_at).max(ms(cc.finished_at)));
    assert_eq!(b.outputs.as_ref().unwrap().get_i64("slept_ms").unwrap(), 50);
    // A no-op says when its task became ready (its stream entry's stamp) and when it started,
    // in microseconds: a promoted task became ready only once all its upstream tasks finished.
    let us = |t: &harmonia_shared::model::RunTask, k: &str| {
        t.outputs.as_ref().unwrap().get_i64(k).unwrap()
    };
    for (task, upstream) in [(&cc, vec![&a]), (&d, vec![&b, &cc])] {
        let ready = us(task, "ready_unix_us");
        assert!(ready <= us(task, "started_unix_us"), "{task:?}");
        for u in upstream {
            assert!(ready >= ms(u.finished_at) * 1000, "{task:?} before {u:?}");
        }
    }
    assert!(
        [a, b, cc, d]
            .iter()
            .all(|t| t.attempt == 1 && t.lease_token.is_none())
    );
}

/// Downstream tasks are released by their upstream task's outcome event, not by the repair
/// pass (an hour away here): the event names the downstream tasks, whichever way the attempt
/// learnt them (a new run's first task starts from the copy in its entry).
#[tokio::test]
async fn a_chain_is_promoted_by_its_events_without_the_repair_pass() {
    let mut scheduler = SCHEDULER.to_vec();
    let at = scheduler.iter().position(|a| *a == "--repair-ms").unwrap();
    scheduler[at + 1] = "3600000";
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none"]);
    let c = harmonia_tests::cluster::cluster_with("chain-events", &scheduler, &[worker])
        .await
        .unwrap();
    let run_id = c
        .client
        .start(&submission(
            "chain-events",
            json!([
                {"id": "a", "type": "debug.noop"},
                {"id": "b", "type": "debug.noop", "depends_on": ["a"]},
                {"id": "c", "type": "debug.noop", "depends_on": ["b"]}
            ]),
        ))
        .await
        .unwrap();
    let run = c
        .client
        .finished(run_id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
}

#[tokio::test]
async fn a_thousand_task_fan_out_fan_in_completes_in_order() {
    let c = cluster("fan", &["none", "none"]).await.unwrap();
    let mut tasks = vec![json!({"id": "root", "type": "debug.noop"})];
    let middles: Vec<String> = (0..998).map(|i| format!("m{i}")).collect();
    for m in &middles {
        tasks.push(json!({"id": m, "type": "debug.noop", "depends_on": ["root"]}));
    }
    tasks.push(json!({"id": "sink", "type": "debug.noop", "depends_on": middles}));
    let run_id = c
        .client
        .start(&submission("fan", json!(tasks)))
        .await
        .unwrap();
    let run = c
        .client
        .finished(run_id, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.counts.succeeded, 1000);
    let all = c.client.tasks(run_id).await.unwrap();
    let root = all.iter().find(|t| t.node_id == "root").unwrap();
    let sink = all.iter().find(|t| t.node_id == "sink").unwrap();
    let mids = all.iter().filter(|t| t.node_id.starts_with('m'));
    let last_mid = mids.clone().map(|t| ms(t.finished_at)).max().unwrap();
    assert!(
        mids.clone()
            .all(|t| ms(t.started_at) >= ms(root.finished_at))
    );
    assert!(ms(sink.started_at) >= last_mid);
    // Both workers took part.
    let workers: std::collections::HashSet<_> = all.iter().map(|t| t.worker_id.clone()).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
}

#[tokio::test]
async fn a_failing_task_is_retried_with_backoff_then_succeeds() {
    let c = cluster("retry", &["none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "retry",
            json!([{"id": "flaky", "type": "debug.fail", "params": {"times": 2}, "max_attempts": 3}]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let task = c.client.task(run_id, "flaky").await.unwrap();
    assert_eq!(task.attempt, 3);
    assert_eq!(
        task.outputs
            .unwrap()
            .get_i64("succeeded_on_attempt")
            .unwrap(),
        3
    );
    // Two backoffs: 50 ms then 100 ms.
    assert!(run.duration_ms.unwrap() >= 150, "{run:?}");
}

/// A final failure skips its whole downstream, level by level however deep (the walk reads
/// one level at a time), and nothing that does not depend on it.
#[tokio::test]
async fn a_failure_skips_everything_below_it_and_nothing_beside_it() {
    let c = cluster("skip-deep", &["none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "skip-deep",
            json!([
                {"id": "boom", "type": "debug.fail", "params": {"permanent": true}},
                {"id": "ok", "type": "debug.noop"},
                {"id": "a", "type": "debug.noop", "depends_on": ["boom"]},
                {"id": "b", "type": "debug.noop", "depends_on": ["a"]},
                {"id": "c", "type": "debug.noop", "depends_on": ["b", "ok"]},
                {"id": "d", "type": "debug.noop", "depends_on": ["c"]},
                {"id": "beside", "type": "debug.noop", "depends_on": ["ok"]}
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    for (node, status) in [
        ("boom", TaskStatus::Failed),
        ("ok", TaskStatus::Succeeded),
        ("a", TaskStatus::Skipped),
        ("b", TaskStatus::Skipped),
        ("c", TaskStatus::Skipped),
        ("d", TaskStatus::Skipped),
        ("beside", TaskStatus::Succeeded),
    ] {
        let task = c.client.task(run_id, node).await.unwrap();
        assert_eq!(task.status, status, "{node}");
    }
}

#[tokio::test]
async fn a_poison_task_ends_in_the_dead_letter_stream() {
    let c = cluster("poison", &["none", "none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "poison",
            json!([
                {"id": "boom", "type": "debug.crash", "max_attempts": 2},
                {"id": "after", "type": "debug.noop", "depends_on": ["boom"]}
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.failed_task_ids, ["boom"]);
    let boom = c.client.task(run_id, "boom").await.unwrap();
    assert_eq!((boom.status, boom.attempt), (TaskStatus::Failed, 2));
    assert!(
        boom.error
            .unwrap()
            .message
            .contains("stopped renewing its lease")
    );
    assert_eq!(
        c.client.task(run_id, "after").await.unwrap().status,
        TaskStatus::Skipped
    );

    let mut conn = c.client.queue.conn().await.unwrap();
    let dead: redis::streams::StreamRangeReply = conn
        .xrange_all(c.client.queue.keys().dead_letter())
        .await
        .unwrap();
    assert_eq!(dead.ids.len(), 1);
    let entry: String = dead.ids[0].get("payload").unwrap();
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["node_id"], "boom");
    assert!(
        entry["error"].as_str().unwrap().contains("lease"),
        "{entry}"
    );
    // Both workers crashed on it (one attempt each).
    let mut workers = c.workers;
    for w in &mut workers {
        let status = w.try_wait();
        assert!(
            status.is_some_and(|s| !s.success()),
            "a worker survived the poison task"
        );
    }
}

#[tokio::test]
async fn a_killed_workers_task_reruns_elsewhere_and_applies_once() {
    let mut c = cluster("kill9", &["none", "none"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "kill9",
            json!([{"id": "slow", "type": "debug.sleep", "params": {"ms": 1500}}]),
        ))
        .await
        .unwrap();
    let running = c
        .client
        .task_reaches(run_id, "slow", TaskStatus::Running)
        .await
        .unwrap();
    let owner = running.worker_id.clone().unwrap();
    let victim = c
        .workers
        .iter_mut()
        .find(|w| owner.contains(&format!("-{}-", w.pid())))
        .unwrap();
    victim.kill();

    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(
        (run.counts.succeeded, run.counts.running, run.counts.queued),
        (1, 0, 0)
    );
    let task = c.client.task(run_id, "slow").await.unwrap();
    assert_eq!(task.attempt, 2);
    assert_ne!(task.worker_id.as_deref(), Some(owner.as_str()));
    assert_eq!(task.outputs.unwrap().get_i64("slept_ms").unwrap(), 1500);
}

#[tokio::test]
async fn gpu_tasks_run_only_on_a_fitting_worker_and_one_at_a_time() {
    let c = cluster("gpu", &["none", "0:A100:81920"]).await.unwrap();
    let gpu = json!({"gpus": 1, "gpu_memory_mb": 40000});
    let run_id = c
        .client
        .start(&submission(
            "gpu",
            json!([
                {"id": "g1", "type": "debug.sleep", "params": {"ms": 300}, "resources": gpu},
                {"id": "g2", "type": "debug.sleep", "params": {"ms": 300}, "resources": gpu},
                {"id": "cpu", "type": "debug.noop"}
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let g1 = c.client.task(run_id, "g1").await.unwrap();
    let g2 = c.client.task(run_id, "g2").await.unwrap();
    let gpu_worker = format!("-{}-", c.workers[1].pid());
    for t in [&g1, &g2] {
        assert!(t.worker_id.as_ref().unwrap().contains(&gpu_worker), "{t:?}");
        assert_eq!(t.gpu_indices, [0]);
    }
    let (first, second) = if ms(g1.started_at) <= ms(g2.started_at) {
        (&g1, &g2)
    } else {
        (&g2, &g1)
    };
    assert!(
        ms(second.started_at) >= ms(first.finished_at),
        "ran together: {g1:?} {g2:?}"
    );

    // Nobody has two GPUs: the task waits, with the reason visible, instead of failing.
    let big = c
        .client
        .start(&submission(
            "gpu-big",
            json!([{"id": "big", "type": "debug.noop", "resources": {"gpus": 2, "gpu_memory_mb": 1000}}]),
        ))
        .await
        .unwrap();
    let waiting = wait_for("a wait reason", LONG, || async {
        let t = c.client.task(big, "big").await?;
        Ok(t.wait_reason.clone().map(|r| (t, r)))
    })
    .await
    .unwrap();
    assert_eq!(waiting.0.status, TaskStatus::Queued);
    assert!(waiting.1.contains("2 free GPU"), "{}", waiting.1);
}

#[tokio::test]
async fn a_run_survives_a_redis_flushall() {
    // FLUSHALL would also wipe the other tests of this suite (their submissions not yet read
    // by their scheduler live only in Redis), so this test gets a Redis of its own.
    let (scope, _redis) = Scope::with_own_redis("flush").await.unwrap();
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none"]);
    let c = cluster_in(scope, SCHEDULER, &[worker.clone(), worker])
        .await
        .unwrap();
    let mut tasks = vec![];
    for (i, dep) in ["", "s0", "s1", "s2"].iter().enumerate() {
        let deps: Vec<&str> = if dep.is_empty() { vec![] } else { vec![dep] };
        tasks.push(json!({"id": format!("s{i}"), "type": "debug.sleep", "params": {"ms": 300}, "depends_on": deps}));
    }
    for i in 0..20 {
        tasks.push(json!({"id": format!("n{i}"), "type": "debug.noop", "depends_on": ["s1"]}));
    }
    let run_id = c
        .client
        .start(&submission("flush", json!(tasks)))
        .await
        .unwrap();
    c.started("s1").await.unwrap();
    let mut conn = c.client.queue.conn().await.unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let run = c.client.finished(run_id, LONG).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    assert_eq!(run.counts.succeeded, 24);
}

#[tokio::test]
async fn two_scheduler_replicas_share_the_work_without_doing_it_twice() {
    let mut c = cluster("replicas", &["none", "none"]).await.unwrap();
    let second = c
        .scope
        .spawn("scheduler-2", "harmonia-scheduler", SCHEDULER)
        .unwrap();
    c.workers.push(second);
    let mut runs = Vec::new();
    for r in 0..5 {
        let mut tasks = vec![json!({"id": "root", "type": "debug.noop"})];
        for i in 0..40 {
            tasks
                .push(json!({"id": format!("m{i}"), "type": "debug.noop", "depends_on": ["root"]}));
            tasks.push(json!({"id": format!("n{i}"), "type": "debug.noop", "depends_on": [format!("m{i}")]}));
        }
        runs.push(
            c.client
                .start(&submission(&format!("replicas-{r}"), json!(tasks)))
                .await
                .unwrap(),
        );
    }
    for run_id in runs {
        let run = c.client.finished(run_id, LONG).await.unwrap();
        assert_eq!(
            (run.status, run.counts.succeeded),
            (RunStatus::Succeeded, 81)
        );
        // Every task ran exactly once although both replicas promote and publish.
        let tasks = c.client.tasks(run_id).await.unwrap();
        assert!(tasks.iter().all(|t| t.attempt == 1), "a task ran twice");
    }
    let mut conn = c.client.queue.conn().await.unwrap();
    for r in 0..5 {
        let replies: redis::streams::StreamRangeReply = conn
            .xrange_all(c.client.queue.keys().replies(&format!("replicas-{r}")))
            .await
            .unwrap();
        assert_eq!(replies.ids.len(), 1, "exactly one reply per submission");
    }
}
