use std::process::ExitCode;

use clap::Parser;
use harmonia_worker::cli::{self, Args};

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: no other thread exists yet (run_main starts the async runtime).
    unsafe { harmonia_worker::models::fix_cpu_threads() };
    let args = Args::parse();
    let log = args.log.clone();
    harmonia_shared::telemetry::run_main(&log, cli::run(args))
}
