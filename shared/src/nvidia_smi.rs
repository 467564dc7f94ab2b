//! GPU discovery through `nvidia-smi`: which GPUs a worker may offer, their free memory, and
//! why a GPU is left out. Every GPU or line that is left out, and every way the program can
//! fail (missing, driver not loaded, hung), ends up as a plain note the worker logs and
//! `harmonia-worker devices` prints, never as a silently empty list.

use std::time::Duration;

use crate::resources::Gpu;

/// The program asked unless configured otherwise (found on `PATH`).
pub const PROGRAM: &str = "nvidia-smi";

/// The columns asked for, in the order [`parse`] reads them.
pub const QUERY: &str = "--query-gpu=index,uuid,name,memory.total,memory.free,\
                         mig.mode.current,ecc.errors.uncorrected.volatile.total";
const FORMAT: &str = "--format=csv,noheader,nounits";
const COLUMNS: usize = 7;

/// How long `nvidia-smi` may take: on a wedged driver it can hang for minutes.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What asking `nvidia-smi` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The GPUs the worker may offer.
    pub gpus: Vec<Gpu>,
    /// How the probe went, in one line.
    pub status: String,
    /// One line per GPU or output line left out, and why.
    pub notes: Vec<String>,
}

/// A value `nvidia-smi` could not give (`[N/A]`, `[Not Supported]`, …) reads as `None`.
fn available(value: &str) -> Option<&str> {
    let bare = value.trim_start_matches('[').trim_end_matches(']');
    match bare {
        "" | "N/A" | "Not Supported" | "Unknown Error" | "Insufficient Permissions" => None,
        _ => Some(value),
    }
}

/// Parses the output of `nvidia-smi` [`QUERY`] [`FORMAT`]: the usable GPUs, and a note for
/// each line left out. A GPU in MIG mode is left out (its instances, not the whole GPU, are
/// what CUDA can use, and this worker does not pin attempts to instances), and so is one
/// reporting uncorrectable ECC errors since the driver loaded (its memory is failing).
pub fn parse(stdout: &str) -> (Vec<Gpu>, Vec<String>) {
    let mut gpus = Vec::new();
    let mut notes = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match parse_line(line) {
            Ok(gpu) => gpus.push(gpu),
            Err(why) => notes.push(why),
        }
    }
    (gpus, notes)
}

fn parse_line(line: &str) -> Result<Gpu, String> {
    let cols: Vec<&str> = line.split(',').map(str::trim).collect();
    if cols.len() != COLUMNS {
        return Err(format!(
            "nvidia-smi said `{line}`: not a GPU line, left out"
        ));
    }
    let index: u32 = cols[0].parse().map_err(|_| {
        format!(
            "nvidia-smi said `{line}`: index `{}` is not a number",
            cols[0]
        )
    })?;
    let name = cols[2].to_owned();
    let gpu = format!("GPU {index} ({name})");
    let memory_mb = available(cols[3])
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            format!(
                "{gpu}: total memory `{}` is not a number of MiB, left out",
                cols[3]
            )
        })?;
    if available(cols[5]) == Some("Enabled") {
        return Err(format!(
            "{gpu} is in MIG mode: left out (attempts are not pinned to MIG instances; \
             disable MIG on it, or declare the GPUs with --gpus)"
        ));
    }
    let ecc: u64 = available(cols[6]).and_then(|e| e.parse().ok()).unwrap_or(0);
    if ecc > 0 {
        return Err(format!(
            "{gpu} reports {ecc} uncorrectable ECC errors since the driver loaded: left out \
             until it is reset"
        ));
    }
    Ok(Gpu {
        index,
        name,
        memory_mb,
        uuid: available(cols[1]).map(str::to_owned),
        memory_free_mb: available(cols[4]).and_then(|m| m.parse().ok()),
    })
}

/// What a finished (or failed to start) `nvidia-smi` run means.
pub fn interpret(program: &str, run: std::io::Result<std::process::Output>) -> Discovery {
    let output = match run {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return nothing(format!(
                "{program} was not found: no GPUs detected (no NVIDIA driver here, or declare \
                 GPUs with --gpus)"
            ));
        }
        Err(e) => return nothing(format!("{program} could not be run: {e}; no GPUs detected")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (gpus, mut notes) = parse(&stdout);
    if output.status.success() {
        let status = format!("{program} found {} usable GPUs", gpus.len());
        return Discovery {
            gpus,
            status,
            notes,
        };
    }
    // A failing nvidia-smi says why on stdout or stderr (driver not loaded, no devices, a
    // lost GPU); the lines already noted are not repeated.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty() && l.split(',').count() != COLUMNS)
        .unwrap_or("no message")
        .to_owned();
    notes.retain(|n| !n.contains(&said));
    let status = match output.status.code() {
        Some(code) => format!("{program} failed (exit status {code}): {said}"),
        None => format!("{program} was killed ({}): {said}", output.status),
    };
    Discovery {
        status: format!("{status} (usable GPUs: {})", gpus.len()),
        gpus,
        notes,
    }
}

fn nothing(status: String) -> Discovery {
    Discovery {
        gpus: Vec::new(),
        status,
        notes: Vec::new(),
    }
}

/// Runs `program` (normally `nvidia-smi`) with [`QUERY`], giving up after [`TIMEOUT`].
pub async fn discover(program: &str) -> Discovery {
    let run = tokio::process::Command::new(program)
        .args([QUERY, FORMAT])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(TIMEOUT, run).await {
        Ok(run) => interpret(program, run),
        Err(_) => nothing(format!(
            "{program} did not answer within {} s (a wedged driver?): no GPUs detected",
            TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    //! On the outputs in `shared/fixtures/nvidia-smi/` (see its README for where they come from).

    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output};

    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/fixtures/nvidia-smi/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn exited(code: i32, stdout: &str, stderr: &str) -> std::io::Result<Output> {
        Ok(Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        })
    }

    #[test]
    fn eight_h100s_are_read_with_their_uuids_and_free_memory() {
        let found = interpret("nvidia-smi", exited(0, &fixture("h100x8.csv"), ""));
        assert_eq!(found.gpus.len(), 8, "{found:?}");
        assert!(found.notes.is_empty(), "{:?}", found.notes);
        let first = &found.gpus[0];
        assert_eq!(first.index, 0);
        assert_eq!(first.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(first.memory_mb, 81559);
        assert_eq!(first.memory_free_mb, Some(81008));
        assert!(first.uuid.as_deref().is_some_and(|u| u.starts_with("GPU-")));
        // GPU 3 has a process on it: free memory is what is left, not the total.
        assert_eq!(found.gpus[3].memory_free_mb, Some(40431));
        assert_eq!(found.status, "nvidia-smi found 8 usable GPUs");
    }

    #[test]
    fn consumer_and_cloud_gpus_without_mig_or_ecc_reporting_are_usable() {
        let (gpus, notes) = parse(&fixture("mixed.csv"));
        let names: Vec<&str> = gpus.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["NVIDIA GeForce RTX 4090", "NVIDIA A10G", "Tesla T4"],
            "{notes:?}"
        );
        assert_eq!(gpus[0].memory_mb, 24564);
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn a_gpu_in_mig_mode_is_left_out_with_the_reason() {
        let (gpus, notes) = parse(&fixture("a100-mig.csv"));
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [1]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("GPU 0 (NVIDIA A100-SXM4-40GB) is in MIG mode"));
    }

    #[test]
    fn a_gpu_with_uncorrectable_ecc_errors_is_left_out_with_the_count() {
        let (gpus, notes) = parse(&fixture("v100-ecc.csv"));
        assert_eq!(gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [0, 1, 3]);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("GPU 2 (Tesla V100-SXM2-16GB) reports 2 uncorrectable ECC"));
    }

    #[test]
    fn a_lost_gpu_fails_the_run_but_the_others_are_still_offered() {
        let found = interpret("nvidia-smi", exited(15, &fixture("gpu-lost.csv"), ""));
        assert_eq!(
            found.gpus.iter().map(|g| g.index).collect::<Vec<_>>(),
            [0, 2, 3]
        );
        assert!(
            found.status.starts_with("nvidia-smi failed (exit status 15): Unable to determine the device handle for GPU 0000:3B:00.0: GPU is lost"),
            "{}",
            found.status
        );
        assert!(
            found.status.ends_with("(usable GPUs: 3)"),
            "{}",
            found.status
        );
        assert!(
            found.notes.is_empty(),
            "said once, in the status: {:?}",
            found.notes
        );
    }

    #[test]
    fn a_failing_run_is_named_by_its_message_not_by_a_gpu_it_left_out() {
        let mig = fixture("a100-mig.csv");
        let lost = "Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error";
        let found = interpret("nvidia-smi", exited(15, &format!("{mig}{lost}\n"), ""));
        assert!(
            found
                .status
                .ends_with(&format!("(exit status 15): {lost} (usable GPUs: 1)")),
            "{}",
            found.status
        );
        assert_eq!(found.notes.len(), 1, "{:?}", found.notes);
        assert!(found.notes[0].contains("is in MIG mode"));
    }

    #[test]
    fn a_host_without_the_driver_says_so() {
        let found = interpret("nvidia-smi", exited(9, &fixture("no-driver.txt"), ""));
        assert!(found.gpus.is_empty());
        assert_eq!(
            found.status,
            "nvidia-smi failed (exit status 9): NVIDIA-SMI has failed because it couldn't \
             communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is \
             installed and running. (usable GPUs: 0)"
        );
        let none = interpret("nvidia-smi", exited(6, "No devices were found\n", ""));
        assert!(
            none.status
                .contains("(exit status 6): No devices were found")
        );
    }

    #[test]
    fn a_missing_nvidia_smi_is_named_as_missing() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let found = interpret("nvidia-smi", Err(missing));
        assert!(found.gpus.is_empty());
        assert!(
            found
                .status
                .starts_with("nvidia-smi was not found: no GPUs detected")
        );
    }

    #[test]
    fn unreadable_lines_are_noted_not_dropped() {
        let (gpus, notes) = parse(
            "0, GPU-1, X, 100, 90, [N/A], 0\nsomething else\nx, GPU-2, Y, 1, 1, [N/A], 0\n1, GPU-3, Z, [N/A], 1, [N/A], 0\n",
        );
        assert_eq!(gpus.len(), 1);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("`something else`: not a GPU line"));
        assert!(notes[1].contains("index `x` is not a number"));
        assert!(notes[2].contains("GPU 1 (Z): total memory `[N/A]`"));
    }

    #[tokio::test]
    async fn discover_runs_the_program_and_reports_a_missing_one() {
        let found = discover("/nonexistent/nvidia-smi").await;
        assert!(
            found
                .status
                .starts_with("/nonexistent/nvidia-smi was not found")
        );
    }
}
