//! `harmonia-worker devices`: what this host would advertise (detected GPUs, or the override).

use std::io::Write;
use std::process::ExitCode;

use crate::registry;

#[derive(Debug, Clone, clap::Args)]
pub struct DevicesArgs {
    /// GPUs to advertise instead of detecting them: `index:name:memory_mb,...`, or `none`.
    #[arg(long, env = "HARMONIA_GPUS")]
    pub gpus: Option<String>,
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<ExitCode> {
    let gpus = registry::gpus(args.gpus.as_deref())?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = serde_json::json!({
        "source": if args.gpus.is_some() { "--gpus" } else { "nvidia-smi" },
        "gpus": gpus,
        "cpus": cpus,
    });
    writeln!(std::io::stdout().lock(), "{report:#}")?;
    Ok(ExitCode::SUCCESS)
}
