//! The scheduler's command line: one file per subcommand.

mod cancel;
mod completions;
mod dlq;
mod queues;
mod retry;
mod run;
mod status;
mod submit;
mod workers;

use clap::{Parser, Subcommand};
use harmonia_shared::config::ConfigArgs;
use harmonia_shared::health::{self, CheckArgs};
use harmonia_shared::telemetry::LogArgs;

#[derive(Debug, Parser)]
#[command(
    name = "harmonia-scheduler",
    version,
    about = "Harmonia scheduler and control CLI"
)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler: ingest submissions, publish due tasks, react to task events, reconcile.
    Run(run::RunArgs),
    /// Submit a workflow run from a JSON file and print the scheduler's reply.
    Submit(submit::SubmitArgs),
    /// Print a run and its tasks.
    Status(status::StatusArgs),
    /// Cancel a run or a task.
    #[command(subcommand)]
    Cancel(cancel::CancelArgs),
    /// Retry a run (as a new run) or a task (and its downstream, in place).
    #[command(subcommand)]
    Retry(retry::RetryArgs),
    /// List the workers that heartbeated recently: state, liveness, slots, GPUs, models.
    Workers(workers::WorkersArgs),
    /// List the streams with their length, pending entries, lag and consumers.
    Queues(queues::QueuesArgs),
    /// Tasks that failed for good: list, show, replay (retry in place), purge.
    #[command(subcommand)]
    Dlq(dlq::DlqArgs),
    /// Check that Redis, MongoDB and S3 answer with this configuration.
    Check(CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    // Needs no configuration: it works before any is written.
    if let Command::Completions(a) = &args.command {
        return Ok(completions::run(a));
    }
    let config = harmonia_shared::Config::load(&args.config)?;
    match &args.command {
        Command::Run(a) => run::run(&config, a).await,
        Command::Submit(a) => submit::run(&config, a).await,
        Command::Status(a) => status::run(&config, a).await,
        Command::Cancel(a) => cancel::run(&config, a).await,
        Command::Retry(a) => retry::run(&config, a).await,
        Command::Workers(a) => workers::run(&config, a).await,
        Command::Queues(a) => queues::run(&config, a).await,
        Command::Dlq(a) => dlq::run(&config, a).await,
        Command::Check(a) => Ok(health::run_check(&config, a).await?),
        Command::Completions(a) => Ok(completions::run(a)),
    }
}
