//! `harmonia-scheduler run`: the long-running scheduler process.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use harmonia_shared::Config;
use harmonia_shared::config::resolve_tuning;
use harmonia_shared::health;
use harmonia_shared::store::migrate::migrate;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::{Options, Scheduler};
use crate::{events, ingest, publish, reconcile};

/// Tuning of the scheduler process. Each setting can also be given in the config file's
/// `[scheduler]` section (same name, `_` for `-`); a flag or its variable wins over the file.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct RunArgs {
    /// Consumer name of this replica in the submissions group (default: host-pid).
    #[arg(long, env = "HARMONIA_SCHEDULER_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Submissions larger than this are rejected without being parsed [default: 1048576].
    #[arg(long, env = "HARMONIA_MAX_SUBMISSION_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_submission_bytes: Option<usize>,
    /// Lifetime of a request's reply stream, in seconds [default: 86400].
    #[arg(long, env = "HARMONIA_REPLY_TTL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ttl_s: Option<u64>,
    /// Submissions and task events pending this long on another (dead) replica are taken
    /// over, in seconds [default: 30].
    #[arg(long, env = "HARMONIA_RECLAIM_AFTER_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_after_s: Option<u64>,
    /// First retry delay after a worker lost a task's lease, in ms; doubles per attempt
    /// [default: 1000].
    #[arg(long, env = "HARMONIA_RETRY_BASE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_base_ms: Option<u64>,
    /// A worker that has not heartbeated for this long (ms) no longer counts as live
    /// [default: 15000].
    #[arg(long, env = "HARMONIA_WORKER_TIMEOUT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_timeout_ms: Option<u64>,
    /// Interval of the reconcile pass (lost leases, lost Redis data, wait reasons), in ms
    /// [default: 1000].
    #[arg(long, env = "HARMONIA_RECONCILE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile_ms: Option<u64>,
    /// Interval of the full repair of active runs (lost events, exact aggregates), in ms
    /// [default: 10000].
    #[arg(long, env = "HARMONIA_REPAIR_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_ms: Option<u64>,
    /// Consumers (of dead workers or replicas) idle this long with nothing pending are removed
    /// from the stream groups at each repair pass, in ms [default: 600000].
    #[arg(long, env = "HARMONIA_CONSUMER_IDLE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_idle_ms: Option<u64>,
    /// After SIGTERM, how long the loops may take to finish their current step, in s; past it
    /// the process exits anyway (everything it left undone is redone from MongoDB and the
    /// streams' pending lists) [default: 10].
    #[arg(long, env = "HARMONIA_GRACE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_s: Option<u64>,
}

/// [`RunArgs`] resolved: defaults < `[scheduler]` in the file < flags and env.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    pub name: Option<String>,
    pub max_submission_bytes: usize,
    pub reply_ttl_s: u64,
    pub reclaim_after_s: u64,
    pub retry_base_ms: u64,
    pub worker_timeout_ms: u64,
    pub reconcile_ms: u64,
    pub repair_ms: u64,
    pub consumer_idle_ms: u64,
    pub grace_s: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            name: None,
            max_submission_bytes: 1 << 20,
            reply_ttl_s: 24 * 3600,
            reclaim_after_s: 30,
            retry_base_ms: 1000,
            worker_timeout_ms: 15_000,
            reconcile_ms: 1000,
            repair_ms: 10_000,
            consumer_idle_ms: 600_000,
            grace_s: 10,
        }
    }
}

pub async fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let args: Tuning = resolve_tuning("scheduler", &config.scheduler, args)?;
    let Some((queue, store)) = health::connect_waiting(config).await? else {
        return Ok(ExitCode::SUCCESS); // SIGTERM while waiting
    };
    let before = migrate(&store).await?;
    tracing::info!(schema_from = before, "database schema is current");
    match store.history_advice().await {
        Ok(Some(advice)) => tracing::warn!("{advice}"),
        Ok(None) => {}
        Err(e) => tracing::debug!("reading mongod's snapshot history window: {e}"),
    }

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
            consumer_idle: Duration::from_millis(args.consumer_idle_ms),
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
