//! Who this worker is and what it offers.

use std::sync::Arc;

use harmonia_shared::model::{WorkerDoc, WorkerState};
use harmonia_shared::nvidia_smi::{self, Discovery};
use harmonia_shared::resources::{Gpu, parse_gpu_list};
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

use crate::worker::Worker;

/// A worker id unique per process: host, pid, and a random suffix (pids repeat in containers).
pub fn worker_id(name: Option<&str>) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    // An ObjectId's middle five bytes are random per process and its last three a counter that
    // starts at random: unique per container even where host names and pids repeat (every
    // container's process can be pid 1 on a host called `worker`).
    let suffix = &ObjectId::new().to_hex()[8..];
    format!("{}-{}-{suffix}", name.unwrap_or(&host), std::process::id())
}

/// Where the GPUs a worker offers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// `--gpus`: declared by the operator, taken as given.
    Declared,
    /// Found by this `nvidia-smi` program, which is asked again on every heartbeat.
    Detected(String),
}

/// The GPUs to advertise and where they come from: the `--gpus` override when given (`none`
/// for none), else what `nvidia_smi` (the program) reports, with a line for each GPU it left
/// out and for a build that cannot use what it found.
pub async fn gpus(
    overridden: Option<&str>,
    nvidia_smi: &str,
) -> anyhow::Result<(GpuSource, Discovery)> {
    let (source, mut found) = match overridden {
        Some("none") | Some("") => (GpuSource::Declared, declared(Vec::new())),
        Some(list) => {
            let gpus =
                parse_gpu_list(list).map_err(|e| anyhow::anyhow!("invalid setting `gpus`: {e}"))?;
            (GpuSource::Declared, declared(gpus))
        }
        None => (
            GpuSource::Detected(nvidia_smi.to_owned()),
            nvidia_smi::discover(nvidia_smi).await,
        ),
    };
    let detected = matches!(source, GpuSource::Detected(_));
    found.notes.extend(build_note(
        cfg!(feature = "cuda"),
        detected,
        found.gpus.len(),
    ));
    Ok((source, found))
}

fn declared(gpus: Vec<Gpu>) -> Discovery {
    Discovery {
        status: format!("--gpus declares {} GPUs", gpus.len()),
        gpus,
        notes: Vec::new(),
    }
}

/// One line when this build cannot do what the host suggests: a `cuda` build with no usable
/// GPU serves CPU tasks only; a CPU-only build on a host with GPUs fails the model tasks it is
/// given a GPU for. (GPUs declared with `--gpus` are the operator's choice: no line.)
fn build_note(cuda: bool, detected: bool, gpus: usize) -> Option<String> {
    match (cuda, gpus) {
        (true, 0) => Some(
            "built with the `cuda` feature but no GPU is usable here: serving CPU tasks only"
                .to_owned(),
        ),
        (false, n) if n > 0 && detected => Some(format!(
            "{n} GPUs found but this worker was built without the `cuda` feature: model tasks \
             given a GPU will fail (build with --features cuda, or pass --gpus none)"
        )),
        _ => None,
    }
}

/// `offered` with each GPU's free memory as `now` reports it: matched by UUID where both have
/// one, else by index; unknown for a GPU `now` no longer lists as usable.
pub fn refreshed(offered: &[Gpu], now: &Discovery) -> Vec<Gpu> {
    offered
        .iter()
        .map(|gpu| {
            let seen = now.gpus.iter().find(|g| match (&g.uuid, &gpu.uuid) {
                (Some(a), Some(b)) => a == b,
                _ => g.index == gpu.index,
            });
            Gpu {
                memory_free_mb: seen.and_then(|g| g.memory_free_mb),
                ..gpu.clone()
            }
        })
        .collect()
}

/// Starts [`refresh_gpus`] where there is something to refresh: GPUs `nvidia-smi` found.
pub fn keep_gpus_fresh(
    worker: &Arc<Worker>,
    source: GpuSource,
    offered: Vec<Gpu>,
    said: Discovery,
) -> Option<tokio::task::JoinHandle<()>> {
    match source {
        GpuSource::Detected(program) if !offered.is_empty() => Some(tokio::spawn(refresh_gpus(
            worker.clone(),
            program,
            offered,
            said,
        ))),
        _ => None,
    }
}

/// Asks `program` again every heartbeat and records the offered GPUs' free memory on the
/// worker's document when it changed; what it says about GPUs (one lost, ECC errors) is logged
/// when it changes.
/// The set of GPUs offered stays what it was at start-up.
pub async fn refresh_gpus(
    worker: Arc<Worker>,
    program: String,
    offered: Vec<Gpu>,
    mut said: Discovery,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(worker.options.heartbeat) => {}
            () = worker.shutdown.stop.cancelled() => return,
        }
        let now = nvidia_smi::discover(&program).await;
        if (&now.status, &now.notes) != (&said.status, &said.notes) {
            tracing::warn!(status = %now.status, notes = ?now.notes, "GPU discovery changed");
        }
        let gpus = refreshed(&offered, &now);
        // The registration wrote what discovery first saw: write only what changed since.
        let changed = gpus != refreshed(&offered, &said);
        if changed && let Err(e) = worker.store.workers().set_gpus(&worker.id, &gpus).await {
            let what = "recording the GPUs' free memory";
            worker.store.outage().report(what, &format_args!("{e:#}"));
            continue; // `said` stays: the next beat writes again
        }
        said = now;
    }
}

pub fn document(id: &str, gpus: Vec<Gpu>, cpu_slots: u32) -> WorkerDoc {
    let now = DateTime::now();
    WorkerDoc {
        id: id.to_owned(),
        host: std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        gpus,
        cpu_slots,
        state: WorkerState::Running,
        running_tasks: 0,
        started_at: now,
        heartbeat_at: now,
        models_cached: Vec::new(),
        models_loaded: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: Option<&str>, free: Option<u64>) -> Gpu {
        Gpu {
            index,
            name: "H100".into(),
            memory_mb: 81559,
            uuid: uuid.map(str::to_owned),
            memory_free_mb: free,
        }
    }

    #[test]
    fn free_memory_is_refreshed_by_uuid_and_unknown_for_a_gpu_no_longer_usable() {
        let offered = [
            gpu(0, Some("GPU-a"), Some(81008)),
            gpu(1, Some("GPU-b"), Some(81008)),
        ];
        let now = Discovery {
            // Renumbered (GPU-a's ordinal changed) and GPU-b gone.
            gpus: vec![
                gpu(5, Some("GPU-a"), Some(40431)),
                gpu(1, Some("GPU-c"), Some(7)),
            ],
            status: String::new(),
            notes: Vec::new(),
        };
        let fresh = refreshed(&offered, &now);
        assert_eq!(fresh[0].memory_free_mb, Some(40431));
        assert_eq!(fresh[0].index, 0, "what is offered does not change");
        assert_eq!(fresh[1].memory_free_mb, None);
        let declared = refreshed(&[gpu(1, None, None)], &now);
        assert_eq!(
            declared[0].memory_free_mb,
            Some(7),
            "no uuid: matched by index"
        );
    }

    #[test]
    fn a_build_that_cannot_use_what_it_found_says_so_once() {
        assert!(
            build_note(true, true, 0)
                .unwrap()
                .contains("serving CPU tasks only")
        );
        assert!(
            build_note(true, false, 0)
                .unwrap()
                .contains("serving CPU tasks only")
        );
        assert!(
            build_note(false, true, 2)
                .unwrap()
                .starts_with("2 GPUs found but")
        );
        assert_eq!(build_note(false, false, 2), None, "declared with --gpus");
        assert_eq!(build_note(false, true, 0), None);
        assert_eq!(build_note(true, true, 1), None);
    }

    #[test]
    fn worker_ids_carry_the_name_the_pid_and_a_random_part() {
        let (a, b) = (worker_id(Some("w")), worker_id(Some("w")));
        assert_ne!(a, b, "two workers of one process still differ");
        let prefix = format!("w-{}-", std::process::id());
        for id in [&a, &b] {
            let suffix = id.strip_prefix(&prefix).unwrap();
            assert_eq!(suffix.len(), 16, "{id}");
            assert!(suffix.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }
}
