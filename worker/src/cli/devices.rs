//! `harmonia-worker devices`: what this host would advertise (detected GPUs, or the override),
//! and why any GPU is left out.

use std::io::Write;
use std::process::ExitCode;

use crate::registry::{self, GpuSource};

#[derive(Debug, Clone, clap::Args)]
pub struct DevicesArgs {
    /// GPUs to advertise instead of detecting them: `index:name:memory_mb,...`, or `none`.
    #[arg(long, env = "HARMONIA_GPUS")]
    pub gpus: Option<String>,
    /// The `nvidia-smi` program GPUs are detected with.
    #[arg(long, env = "HARMONIA_NVIDIA_SMI", default_value = harmonia_shared::nvidia_smi::PROGRAM)]
    pub nvidia_smi: String,
}

pub async fn run(args: &DevicesArgs) -> anyhow::Result<ExitCode> {
    let (source, found) = registry::gpus(args.gpus.as_deref(), &args.nvidia_smi).await?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = serde_json::json!({
        "source": match source {
            GpuSource::Declared => "--gpus".to_owned(),
            GpuSource::Detected(program) => program,
        },
        "status": found.status,
        "gpus": found.gpus,
        "notes": found.notes,
        "cpus": cpus,
    });
    writeln!(std::io::stdout().lock(), "{report:#}")?;
    Ok(ExitCode::SUCCESS)
}
