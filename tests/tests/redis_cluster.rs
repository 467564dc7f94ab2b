//! Harmonia on a real Redis Cluster (three masters with a replica each, on loopback): the
//! scheduler, the workers and the CLI connect with `--redis-cluster`, every key of the scope's
//! deployment shares the prefix's hash tag, and a master failover mid-run loses no task and
//! runs none twice.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_tests::client::chain_and_fan;
use harmonia_tests::cluster::{Cluster, LONG, SCHEDULER, WORKER, cluster_in, one_slot_worker};
use harmonia_tests::redis_cluster::RedisCluster;
use harmonia_tests::{Scope, submission, wait_for};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

/// A scope whose Redis is a cluster of its own, with a hash-tagged prefix.
async fn on_a_cluster(test: &str) -> (Scope, RedisCluster) {
    let mut scope = Scope::new(test);
    let cluster = RedisCluster::start(&scope.dir.join("redis-cluster"))
        .await
        .unwrap();
    scope.config.redis.url = cluster.url();
    scope.config.redis.cluster = true;
    scope.config.redis.prefix = format!("{{{}}}", scope.config.redis.prefix);
    (scope, cluster)
}

fn cpu_worker() -> Vec<&'static str> {
    let mut args = WORKER.to_vec();
    args.extend(["--gpus", "none"]);
    args
}

/// Tasks of the scope's runs that succeeded so far.
async fn succeeded(c: &Cluster) -> anyhow::Result<u64> {
    let tasks = c
        .client
        .store
        .db()
        .collection::<mongodb::bson::Document>("run_tasks");
    Ok(tasks.count_documents(doc! {"status": "succeeded"}).await?)
}

/// Three runs of 28 tasks (84), started and then run until a tenth succeeded.
async fn three_runs_under_way(c: &Cluster) -> Vec<ObjectId> {
    let mut runs = Vec::new();
    for r in 0..3 {
        // A chain of 8 tasks of 400 ms beside 20 independent ones of 100 ms.
        let body = submission(&format!("cluster-{r}"), chain_and_fan(8, 400, 20, 100));
        runs.push(c.client.start(&body).await.unwrap());
    }
    wait_for("a tenth of the tasks to succeed", LONG, || async {
        Ok((succeeded(c).await? >= 9).then_some(()))
    })
    .await
    .unwrap();
    runs
}

/// Every run succeeds, each task on its first attempt; `left` tasks were still to do when the
/// fault was over.
async fn each_task_succeeds_once(c: &Cluster, runs: &[ObjectId], left: u64) {
    for run in runs {
        let run = c.client.finished(*run, LONG).await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    }
    eprintln!("the fault was over with {left} of 84 tasks not yet done");
    assert!(left > 0, "the runs outlasted the fault");
    for run in runs {
        for t in c.client.tasks(*run).await.unwrap() {
            assert_eq!(t.status, TaskStatus::Succeeded);
            assert_eq!(t.attempt, 1, "{} ran twice: {:?}", t.node_id, t.attempts);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_complete_on_a_redis_cluster_through_a_master_failover_each_task_once() {
    let (scope, redis) = on_a_cluster("cluster-failover").await;
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker(), cpu_worker()])
        .await
        .unwrap();
    let runs = three_runs_under_way(&c).await;
    // The master of the deployment's slot hands over to its replica (CLUSTER FAILOVER).
    let key = c.client.queue.keys().submissions();
    let before = redis.master_of(&key).await.unwrap();
    let after = redis.fail_over(&key).await.unwrap();
    assert_ne!(before.port, after);
    wait_for("every node to see the new master", LONG, || async {
        Ok((redis.master_of(&key).await?.port == after).then_some(()))
    })
    .await
    .unwrap();
    let left = 84 - succeeded(&c).await.unwrap();
    each_task_succeeds_once(&c, &runs, left).await;
}

/// The master is SIGKILLed: what it had not replicated yet is gone with it (entries, acks), and
/// its replica takes over only after the node timeout (2 s) and an election. MongoDB, the
/// truth, puts back what Redis lost; no task is lost or runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn runs_complete_when_the_master_of_their_slot_is_killed_each_task_once() {
    let (scope, mut redis) = on_a_cluster("cluster-master-killed").await;
    let c = cluster_in(scope, SCHEDULER, &[cpu_worker(), cpu_worker()])
        .await
        .unwrap();
    let runs = three_runs_under_way(&c).await;
    let key = c.client.queue.keys().submissions();
    let killed = redis.master_of(&key).await.unwrap().port;
    let after = redis.kill_master_of(&key).await.unwrap();
    assert_ne!(killed, after);
    let left = 84 - succeeded(&c).await.unwrap();
    each_task_succeeds_once(&c, &runs, left).await;
}

/// The cancel signal travels by pub/sub, which a Cluster delivers on every node: the worker
/// (subscribed on a seed node) stops the attempt at once, well before its next heartbeat
/// (10 s here) would have told it.
#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_on_a_redis_cluster_stops_its_task_at_once() {
    let (scope, _redis) = on_a_cluster("cluster-cancel").await;
    let c = cluster_in(scope, SCHEDULER, &[one_slot_worker("10000")])
        .await
        .unwrap();
    let body = submission(
        "cluster-cancel",
        json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 60000}}]),
    );
    let run_id = c.client.start(&body).await.unwrap();
    c.client
        .task_reaches(run_id, "s", TaskStatus::Running)
        .await
        .unwrap();
    c.scope
        .scheduler_cli_ok(&["cancel", "run", &run_id.to_hex()])
        .unwrap();
    let cancelled = Instant::now();
    let run = c
        .client
        .finished(run_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    c.workers[0]
        .says(
            "cancel signal: stopping the attempt",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    // Its one slot is free again: the next task runs now, not after a heartbeat.
    let next = submission("after", json!([{"id": "x", "type": "debug.noop"}]));
    let next = c.client.start(&next).await.unwrap();
    let next = c
        .client
        .finished(next, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(next.status, RunStatus::Succeeded);
    assert!(
        cancelled.elapsed() < Duration::from_secs(8),
        "{:?}",
        cancelled.elapsed()
    );
}
