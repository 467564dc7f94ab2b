//! `harmonia-scheduler workers`: the workers that heartbeated recently, from MongoDB.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::model::{WorkerDoc, WorkerState};
use harmonia_shared::store::Store;
use mongodb::bson::DateTime;
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct WorkersArgs {
    /// List workers that heartbeated within this many seconds, stopped ones included.
    #[arg(long, env = "HARMONIA_WORKERS_SINCE_S", default_value_t = 3600)]
    pub since_s: u64,
    /// A worker is live if it heartbeated within this (ms), as the scheduler judges it.
    #[arg(long, env = "HARMONIA_WORKER_TIMEOUT_MS", default_value_t = 15_000)]
    pub worker_timeout_ms: u64,
    /// Print the workers as JSON.
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

/// A worker's document with what an operator asks first: is it alive, how long since it spoke.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    worker: WorkerDoc,
    live: bool,
    heartbeat_age_ms: i64,
}

pub async fn run(config: &Config, args: &WorkersArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.mongo).await?;
    let now = DateTime::now().timestamp_millis();
    let workers = store
        .workers()
        .seen_within(Duration::from_secs(args.since_s))
        .await?;
    let rows: Vec<Row> = workers
        .into_iter()
        .map(|worker| {
            let age = now - worker.heartbeat_at.timestamp_millis();
            Row {
                live: worker.state != WorkerState::Stopped
                    && age <= i64::try_from(args.worker_timeout_ms).unwrap_or(i64::MAX),
                heartbeat_age_ms: age,
                worker,
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<40} {:<9} {:<5} {:>5} {:>7} {:>9} {:<24} models",
        "worker", "state", "live", "slots", "running", "heartbeat", "gpus"
    )?;
    for r in &rows {
        let w = &r.worker;
        let gpus: Vec<String> = w
            .gpus
            .iter()
            .map(|g| match g.memory_free_mb {
                Some(free) => format!("{}:{} {} MB ({free} free)", g.index, g.name, g.memory_mb),
                None => format!("{}:{} {} MB", g.index, g.name, g.memory_mb),
            })
            .collect();
        writeln!(
            out,
            "{:<40} {:<9} {:<5} {:>5} {:>7} {:>7.1} s {:<24} {} cached, {} loaded",
            w.id,
            format!("{:?}", w.state).to_lowercase(),
            if r.live { "yes" } else { "no" },
            w.cpu_slots,
            w.running_tasks,
            r.heartbeat_age_ms as f64 / 1e3,
            if gpus.is_empty() {
                "-".to_owned()
            } else {
                gpus.join(", ")
            },
            w.models_cached.len(),
            w.models_loaded.len(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
