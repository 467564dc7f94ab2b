//! `harmonia-scheduler run`: the long-running scheduler process.

use std::process::ExitCode;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::{Store, migrate::migrate};
use tokio::sync::broadcast;

use crate::ingest::{self, IngestOptions};

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
    /// Submissions pending this long on another (dead) replica are taken over, in seconds.
    #[arg(long, env = "HARMONIA_RECLAIM_AFTER_S", default_value_t = 30)]
    pub reclaim_after_s: u64,
}

pub async fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::connect(&config.redis).await?;
    let store = Store::connect(&config.mongo).await?;
    let before = migrate(&store).await?;
    tracing::info!(schema_from = before, "database schema is current");

    let (shutdown_tx, _) = broadcast::channel(1);
    let consumer = args.name.clone().unwrap_or_else(default_name);
    let ingest = tokio::spawn(ingest::run(
        queue,
        store,
        IngestOptions {
            consumer: consumer.clone(),
            max_submission_bytes: args.max_submission_bytes,
            reply_ttl_s: args.reply_ttl_s,
            reclaim_after: Duration::from_secs(args.reclaim_after_s),
        },
        shutdown_tx.subscribe(),
    ));
    tracing::info!(%consumer, "scheduler running");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(());
    ingest.await??;
    Ok(ExitCode::SUCCESS)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "scheduler".into());
    format!("{host}-{}", std::process::id())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
