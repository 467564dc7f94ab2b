//! `harmonia-scheduler run`: the long-running scheduler process.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::{Store, migrate::migrate};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::{Options, Scheduler};
use crate::{events, ingest, publish, reconcile};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Consumer name of this replica in the submissions group (default: host-pid).
    #[arg(long, env = "HARMONIA_SCHEDULER_NAME")]
    pub name: Option<String>,
    /// Submissions larger than this are rejected without being parsed.
    #[arg(long, env = "HARMONIA_MAX_SUBMISSION_BYTES", default_value_t = 1 << 20)]
    pub max_submission_bytes: usize,
    /// Lifetime of a request's reply stream, in seconds.
    #[arg(long, env = "HARMONIA_REPLY_TTL_S", default_value_t = 24 * 3600)]
    pub reply_ttl_s: u64,
    /// Submissions and task events pending this long on another (dead) replica are taken
    /// over, in seconds.
    #[arg(long, env = "HARMONIA_RECLAIM_AFTER_S", default_value_t = 30)]
    pub reclaim_after_s: u64,
    /// First retry delay after a worker lost a task's lease, in ms; doubles per attempt.
    #[arg(long, env = "HARMONIA_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
    /// A worker that has not heartbeated for this long (ms) no longer counts as live.
    #[arg(long, env = "HARMONIA_WORKER_TIMEOUT_MS", default_value_t = 15_000)]
    pub worker_timeout_ms: u64,
    /// Interval of the reconcile pass (lost leases, lost Redis data, wait reasons), in ms.
    #[arg(long, env = "HARMONIA_RECONCILE_MS", default_value_t = 1000)]
    pub reconcile_ms: u64,
    /// Interval of the full repair of active runs (lost events, exact aggregates), in ms.
    #[arg(long, env = "HARMONIA_REPAIR_MS", default_value_t = 10_000)]
    pub repair_ms: u64,
    /// After SIGTERM, how long the loops may take to finish their current step, in s; past it
    /// the process exits anyway (everything it left undone is redone from MongoDB and the
    /// streams' pending lists).
    #[arg(long, env = "HARMONIA_GRACE_S", default_value_t = 10)]
    pub grace_s: u64,
}

pub async fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::connect(&config.redis).await?;
    let store = Store::connect(&config.mongo).await?;
    let before = migrate(&store).await?;
    tracing::info!(schema_from = before, "database schema is current");

    let ctx = Arc::new(Scheduler {
        queue,
        store,
        options: Options {
            consumer: args.name.clone().unwrap_or_else(default_name),
            max_submission_bytes: args.max_submission_bytes,
            reply_ttl_s: args.reply_ttl_s,
            reclaim_after: Duration::from_secs(args.reclaim_after_s),
            retry_base: Duration::from_millis(args.retry_base_ms),
            live_within: Duration::from_millis(args.worker_timeout_ms),
            reconcile_every: Duration::from_millis(args.reconcile_ms),
            repair_every: Duration::from_millis(args.repair_ms),
        },
        publish: Notify::new(),
        shutdown: CancellationToken::new(),
    });
    let mut loops = JoinSet::new();
    loops.spawn(ingest::run(ctx.clone()));
    loops.spawn(publish::run(ctx.clone()));
    loops.spawn(events::run(ctx.clone()));
    loops.spawn(reconcile::run(ctx.clone()));
    tracing::info!(consumer = %ctx.options.consumer, "scheduler running");
    let failed = tokio::select! {
        r = harmonia_shared::signal::terminated() => {
            r?;
            tracing::info!("shutting down");
            None
        }
        // Loops end only on shutdown: one that ended early panicked. Stop the others too.
        Some(done) = loops.join_next() => Some(done),
    };
    ctx.shutdown.cancel();
    if let Some(done) = failed {
        done?;
    }
    let grace = Duration::from_secs(args.grace_s);
    let joined = tokio::time::timeout(grace, async {
        while let Some(done) = loops.join_next().await {
            done?;
        }
        anyhow::Ok(())
    });
    match joined.await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(?grace, "loops still busy after the grace period: exiting"),
    }
    Ok(ExitCode::SUCCESS)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "scheduler".into());
    format!("{host}-{}", std::process::id())
}
