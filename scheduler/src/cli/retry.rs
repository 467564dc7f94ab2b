//! `harmonia-scheduler retry run <id>` / `retry task <run_id> <node_id>`.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;

use crate::ops::{Operator, cli_actor};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RetryArgs {
    /// Start a new run with fresh tasks, linked to this one.
    Run { run_id: String },
    /// Re-run one finished task and its whole downstream subtree on the same run.
    Task { run_id: String, node_id: String },
}

pub async fn run(config: &Config, args: &RetryArgs) -> anyhow::Result<ExitCode> {
    let op = Operator {
        queue: Queue::connect(&config.redis).await?,
        store: Store::connect(&config.mongo).await?,
        actor: cli_actor(),
    };
    let mut out = std::io::stdout().lock();
    match args {
        RetryArgs::Run { run_id } => {
            let new = op.retry_run(run_id).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({ "run_id": new.to_hex(), "retry_of": run_id })
            )?;
        }
        RetryArgs::Task { run_id, node_id } => {
            let nodes = op.retry_task(run_id, node_id).await?;
            writeln!(
                out,
                "{}",
                serde_json::json!({ "run_id": run_id, "reset": nodes })
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
