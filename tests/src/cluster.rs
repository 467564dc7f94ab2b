//! A scheduler and worker processes on a test scope, with timings short enough for tests.

use std::time::Duration;

use crate::process::ChildGuard;
use crate::{Client, Scope};

/// Scheduler flags for tests: fast reconcile, repair and retries.
pub const SCHEDULER: &[&str] = &[
    "run",
    "--reconcile-ms",
    "200",
    "--repair-ms",
    "1000",
    "--retry-base-ms",
    "50",
    "--worker-timeout-ms",
    "3000",
];
/// Worker flags for tests: short leases and heartbeats.
pub const WORKER: &[&str] = &[
    "run",
    "--cpu-slots",
    "4",
    "--lease-ms",
    "1500",
    "--heartbeat-ms",
    "300",
    "--retry-base-ms",
    "50",
    "--grace-s",
    "10",
];

/// Worker flags for one CPU slot, no GPUs and a 30 s lease, with heartbeats `heartbeat_ms`
/// apart: for tests that need one task at a time and a lease that does not lapse on its own.
pub fn one_slot_worker(heartbeat_ms: &'static str) -> Vec<&'static str> {
    vec![
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        "1",
        "--lease-ms",
        "30000",
        "--heartbeat-ms",
        heartbeat_ms,
    ]
}

/// A generous deadline for a run in tests.
pub const LONG: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Cluster {
    pub scope: Scope,
    pub client: Client,
    pub scheduler: ChildGuard,
    pub workers: Vec<ChildGuard>,
}

impl Cluster {
    /// Waits until one of the workers logged the start of an attempt of task `node`. An attempt
    /// on a deferred claim runs while its task still reads `queued`, so this, not the task's
    /// status, is when a short task is in flight.
    pub async fn started(&self, node: &str) -> anyhow::Result<()> {
        let field = format!("node={node} ");
        crate::wait_for(&format!("task {node} to start"), LONG, || async {
            let started = self.workers.iter().any(|w| {
                w.output()
                    .lines()
                    .map(crate::process::plain)
                    .any(|l| l.contains("task started") && l.contains(&field))
            });
            Ok(started.then_some(()))
        })
        .await
    }
}

/// A scheduler and one worker per entry of `gpus` (`none` or an `index:name:mb` list), with
/// the test flags.
pub async fn cluster(name: &str, gpus: &[&str]) -> anyhow::Result<Cluster> {
    let workers: Vec<Vec<&str>> = gpus
        .iter()
        .map(|g| {
            let mut args = WORKER.to_vec();
            args.extend(["--gpus", g]);
            args
        })
        .collect();
    cluster_with(name, SCHEDULER, &workers).await
}

/// A scheduler run with `scheduler` args and one worker per entry of `workers`.
pub async fn cluster_with(
    name: &str,
    scheduler: &[&str],
    workers: &[Vec<&str>],
) -> anyhow::Result<Cluster> {
    cluster_in(Scope::new(name), scheduler, workers).await
}

/// [`cluster_with`] on a scope the caller configured (e.g. with a Hub mirror).
pub async fn cluster_in(
    scope: Scope,
    scheduler: &[&str],
    workers: &[Vec<&str>],
) -> anyhow::Result<Cluster> {
    let scheduler = scope.spawn("scheduler", "harmonia-scheduler", scheduler)?;
    let workers = workers
        .iter()
        .enumerate()
        .map(|(i, args)| scope.spawn(&format!("worker-{i}"), "harmonia-worker", args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = Client::connect(&scope).await?;
    Ok(Cluster {
        scope,
        client,
        scheduler,
        workers,
    })
}

/// Milliseconds of a timestamp that must be set.
pub fn ms(t: Option<mongodb::bson::DateTime>) -> i64 {
    t.map_or(i64::MIN, |t| t.timestamp_millis())
}
