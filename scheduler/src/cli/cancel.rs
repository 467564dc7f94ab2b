//! `harmonia-scheduler cancel run <id>` / `cancel task <run_id> <node_id>`.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;

use crate::ops::{Operator, cli_actor};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CancelArgs {
    /// Cancel every task of a run that has not finished.
    Run { run_id: String },
    /// Cancel one task and what depends on it.
    Task { run_id: String, node_id: String },
}

pub async fn run(config: &Config, args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::connect(&config.redis).await?;
    let store = Store::connect(&config.mongo).await?;
    let op = Operator {
        queue,
        store,
        actor: cli_actor(),
    };
    let (now, running) = match args {
        CancelArgs::Run { run_id } => op.cancel_run(run_id).await?,
        CancelArgs::Task { run_id, node_id } => op.cancel_task(run_id, node_id).await?,
    };
    writeln!(
        std::io::stdout().lock(),
        "cancelled {now} task(s); signalled {running} running task(s) to stop"
    )?;
    Ok(ExitCode::SUCCESS)
}
