//! The worker's command line: one file per subcommand.

mod devices;
mod run;

use clap::{Parser, Subcommand};
use harmonia_shared::config::ConfigArgs;
use harmonia_shared::health::{self, CheckArgs};
use harmonia_shared::telemetry::LogArgs;

#[derive(Debug, Parser)]
#[command(name = "harmonia-worker", version, about = "Harmonia GPU-aware worker")]
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
    /// Register, claim and run tasks until SIGTERM.
    Run(Box<run::RunArgs>),
    /// Print the GPUs and CPUs this worker would advertise.
    Devices(devices::DevicesArgs),
    /// Check that Redis, MongoDB and S3 answer with this configuration.
    Check(CheckArgs),
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let config = harmonia_shared::Config::load(&args.config)?;
    match args.command {
        Command::Run(a) => run::run(&config, &a).await,
        Command::Devices(a) => devices::run(&a).await,
        Command::Check(check) => Ok(health::run_check(&config, &check).await?),
    }
}
