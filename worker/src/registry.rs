//! Who this worker is and what it offers.

use harmonia_shared::model::{WorkerDoc, WorkerState};
use harmonia_shared::resources::{Gpu, detect_gpus, parse_gpu_list};
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

/// A worker id unique per process: host, pid, and a random suffix (pids repeat in containers).
pub fn worker_id(name: Option<&str>) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let suffix = &ObjectId::new().to_hex()[18..];
    format!("{}-{}-{suffix}", name.unwrap_or(&host), std::process::id())
}

/// The GPUs to advertise: the `--gpus` override when given (`none` for none), else detected.
pub fn gpus(overridden: Option<&str>) -> anyhow::Result<Vec<Gpu>> {
    match overridden {
        Some("none") | Some("") => Ok(Vec::new()),
        Some(list) => {
            parse_gpu_list(list).map_err(|e| anyhow::anyhow!("invalid setting `gpus`: {e}"))
        }
        None => Ok(detect_gpus()),
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
