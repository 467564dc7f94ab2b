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
    // An ObjectId's middle five bytes are random per process and its last three a counter that
    // starts at random: unique per container even where host names and pids repeat (every
    // container's process can be pid 1 on a host called `worker`).
    let suffix = &ObjectId::new().to_hex()[8..];
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

#[cfg(test)]
mod tests {
    #[test]
    fn worker_ids_carry_the_name_the_pid_and_a_random_part() {
        let (a, b) = (super::worker_id(Some("w")), super::worker_id(Some("w")));
        assert_ne!(a, b, "two workers of one process still differ");
        let prefix = format!("w-{}-", std::process::id());
        for id in [&a, &b] {
            let suffix = id.strip_prefix(&prefix).unwrap();
            assert_eq!(suffix.len(), 16, "{id}");
            assert!(suffix.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }
}
