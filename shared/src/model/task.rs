//! `run_tasks`: one document per node per run, self-sufficient for dequeue and promotion.

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for upstream tasks.
    Pending,
    /// Published to a task stream, waiting for a worker.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Never ran because an upstream task failed for good.
    Skipped,
}

impl TaskStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }
}

/// The last error of a task, with the retry policy it implied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    pub message: String,
    pub retryable: bool,
}

/// Stage and percentage an executor reports while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub percent: f32,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTask {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub run_id: ObjectId,
    pub node_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub params: Document,
    pub upstream_node_ids: Vec<String>,
    pub downstream_node_ids: Vec<String>,
    /// Upstream nodes not yet succeeded; the task is promoted when this is empty. Removing a
    /// node twice changes nothing, so a redelivered completion event cannot double-count.
    pub waiting_on: Vec<String>,
    pub resources: Resources,
    /// The task stream it is queued on (see [`crate::resources::ResourceClass`]).
    pub class: String,
    /// The model repository it works on, when the scheduler could tell at submission (see
    /// `docs/protocol.md`, model affinity): its stream entry is also offered first to the
    /// workers that hold this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub max_attempts: u32,
    pub timeout_s: u64,
    pub priority: i32,
    pub status: TaskStatus,
    /// Attempts started so far (claims). Every stream entry names the value it was published
    /// with and a claim must still see it: a stale or duplicate entry can never start a task.
    pub attempt: u32,
    /// `attempt` when the current round of attempts began (a manual retry or a hand-back starts
    /// a new round); `attempt - attempt_base` is checked against `max_attempts`.
    pub attempt_base: u32,
    /// Set while the task is queued but not yet on its Redis stream: the publisher appends it
    /// once this time has passed (retries wait here for their backoff).
    pub publish_due: Option<DateTime>,
    /// The Redis epoch its current stream entry was written in (see
    /// [`crate::queue::epoch`]): an entry from an older epoch was lost with Redis's data.
    #[serde(default)]
    pub published_epoch: Option<String>,
    /// Identifies one claim: every change a worker makes to a running task is fenced on it.
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<DateTime>,
    pub cancel_requested: bool,
    pub worker_id: Option<String>,
    /// The GPUs the worker assigned to this attempt.
    pub gpu_indices: Vec<u32>,
    /// Why a queued task is not running yet (e.g. no live worker has such a GPU).
    pub wait_reason: Option<String>,
    pub error: Option<TaskError>,
    pub outputs: Option<Document>,
    pub output_artifact_ids: Vec<ObjectId>,
    pub log_tail: Vec<String>,
    pub progress: Option<Progress>,
    pub created_at: DateTime,
    pub queued_at: Option<DateTime>,
    pub started_at: Option<DateTime>,
    pub finished_at: Option<DateTime>,
    pub duration_ms: Option<i64>,
    /// How each attempt ended, oldest first (the last `ATTEMPTS_KEPT`); written by the same
    /// fenced update that ends the attempt. Tasks stored before schema 5 have none.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
}

/// One ended attempt of a task: who ran it, on which GPUs, when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    /// `succeeded`, `failed`, `retrying` (failed, re-queued), `cancelled`, `handed_back` (not
    /// run: the worker was stopping).
    pub outcome: String,
    pub worker_id: Option<String>,
    #[serde(default)]
    pub gpu_indices: Vec<u32>,
    pub started_at: Option<DateTime>,
    pub finished_at: DateTime,
    pub error: Option<TaskError>,
}

/// How many ended attempts a task keeps.
pub const ATTEMPTS_KEPT: i32 = 20;

impl RunTask {
    /// Attempts used in the current round (a manual retry starts a new round): 1 for the first.
    pub fn attempts_used(&self) -> u32 {
        self.attempt.saturating_sub(self.attempt_base).max(1)
    }

    /// When a failed attempt of this task is tried again: `base` doubled per attempt used
    /// (see [`crate::error::backoff`]), or `None` when the round is out of attempts. The one rule
    /// for a failure the worker reports and a lease the scheduler finds expired.
    pub fn retry_at(&self, base: std::time::Duration) -> Option<DateTime> {
        let used = self.attempts_used();
        (used < self.max_attempts).then(|| {
            let delay = crate::error::backoff(base, used);
            DateTime::from_millis(DateTime::now().timestamp_millis() + delay.as_millis() as i64)
        })
    }
}

/// What a task needs from the worker that runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub gpus: u32,
    pub gpu_memory_mb: u64,
}
