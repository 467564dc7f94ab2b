use std::process::ExitCode;

use clap::Parser;
use harmonia_scheduler::cli::{self, Args};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let log = args.log.clone();
    harmonia_shared::telemetry::run_main(&log, cli::run(args)).await
}
