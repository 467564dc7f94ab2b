//! `workers`: one document per worker process: what it offers and whether it is alive.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

use crate::resources::Gpu;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Running,
    /// Finishing in-flight tasks after SIGTERM; claims nothing new.
    Draining,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerDoc {
    /// Unique per process: `<host>-<pid>-<random>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub gpus: Vec<Gpu>,
    pub cpu_slots: u32,
    pub state: WorkerState,
    pub running_tasks: u32,
    pub started_at: DateTime,
    pub heartbeat_at: DateTime,
    /// Models this worker holds, so routing can prefer it: repos in its host's cache, and
    /// models loaded in its warm pool (`device/manifest-sha256/file`).
    #[serde(default)]
    pub models_cached: Vec<String>,
    #[serde(default)]
    pub models_loaded: Vec<String>,
}
