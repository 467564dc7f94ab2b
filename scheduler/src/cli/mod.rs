//! The scheduler's command line: one file per subcommand.

mod audit;
mod cancel;
mod completions;
mod dlq;
mod list;
pub mod queues;
mod retry;
mod run;
mod status;
mod submit;
mod tokens;
mod watch;
mod workers;
mod workspaces;

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
    /// Follow a run live until it ends: per-task status, stage and progress (exit 1 unless it
    /// succeeded).
    Watch(watch::WatchArgs),
    /// List runs: filter by project, status, task type, tag, submitter, dates, name; page on.
    List(list::ListArgs),
    /// Serve the HTTP API (tokens, runs, artifacts, fleet, OpenAPI, metrics).
    Gateway(crate::gateway::GatewayArgs),
    /// Bearer tokens of the HTTP API: create (shown once), list, revoke.
    #[command(subcommand)]
    Tokens(tokens::TokensArgs),
    /// Workspaces: the boundary of runs, artifacts and tokens.
    #[command(subcommand)]
    Workspaces(workspaces::WorkspacesArgs),
    /// Projects of a workspace: a submission names one.
    #[command(subcommand)]
    Projects(workspaces::ProjectsArgs),
    /// The audit log of operator actions, newest first.
    Audit(audit::AuditArgs),
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
        Command::List(a) => list::run(&config, a).await,
        Command::Watch(a) => watch::run(&config, a).await,
        Command::Gateway(a) => crate::gateway::run(&config, a).await,
        Command::Tokens(a) => tokens::run(&config, a).await,
        Command::Workspaces(a) => workspaces::workspaces(&config, a).await,
        Command::Projects(a) => workspaces::projects(&config, a).await,
        Command::Audit(a) => audit::run(&config, a).await,
        Command::Check(a) => Ok(health::run_check(&config, a).await?),
        Command::Completions(a) => Ok(completions::run(a)),
    }
}
