//! `workflow_runs`: one document per run, with the seeds' aggregates (counts by status,
//! failed task ids, duration) kept up to date as tasks change.

use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Tasks of a run by status, recomputed from the tasks (periodically while the run is active,
/// and exactly when it ends); the sum is `task_count`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub pending: u32,
    pub queued: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub cancelled: u32,
    pub skipped: u32,
}

impl TaskCounts {
    /// Counts of the tasks' statuses, and the failed ones' node ids (sorted): what
    /// [`WorkflowRun::with_aggregates`] takes, from tasks already in hand.
    pub fn of_nodes<'a>(
        tasks: impl IntoIterator<Item = (&'a str, super::TaskStatus)>,
    ) -> (Self, Vec<String>) {
        let mut failed = Vec::new();
        let counts = Self::tally(tasks.into_iter().map(|(node, status)| {
            if status == super::TaskStatus::Failed {
                failed.push(node.to_owned());
            }
            status
        }));
        failed.sort();
        (counts, failed)
    }

    /// Counts of these statuses.
    pub fn tally(statuses: impl IntoIterator<Item = super::TaskStatus>) -> Self {
        use super::TaskStatus as S;
        let mut c = Self::default();
        for s in statuses {
            let n = match s {
                S::Pending => &mut c.pending,
                S::Queued => &mut c.queued,
                S::Running => &mut c.running,
                S::Succeeded => &mut c.succeeded,
                S::Failed => &mut c.failed,
                S::Cancelled => &mut c.cancelled,
                S::Skipped => &mut c.skipped,
            };
            *n += 1;
        }
        c
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRun {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The submitter's idempotency key: unique.
    pub request_id: String,
    pub workspace: String,
    pub project: String,
    pub name: String,
    pub created_by: String,
    pub tags: Vec<String>,
    /// The distinct task types of the run, sorted (for listing runs by type).
    #[serde(default)]
    pub task_types: Vec<String>,
    pub status: RunStatus,
    pub task_count: u32,
    pub counts: TaskCounts,
    pub failed_task_ids: Vec<String>,
    /// Set on runs made by `retry run`: the run this one retries.
    pub retry_of: Option<ObjectId>,
    pub cancel_requested: bool,
    pub created_at: DateTime,
    pub started_at: Option<DateTime>,
    pub finished_at: Option<DateTime>,
    pub duration_ms: Option<i64>,
    pub schema_version: i32,
}

impl WorkflowRun {
    /// This run with exact aggregates, and the status and timings they imply (pure: nothing is
    /// written, so status queries can show exact counts without touching the database).
    pub fn with_aggregates(&self, counts: TaskCounts, failed_task_ids: Vec<String>) -> Self {
        let active = counts.pending + counts.queued + counts.running;
        let status = if active > 0 {
            if self.started_at.is_some() || counts.running + counts.succeeded + counts.failed > 0 {
                RunStatus::Running
            } else {
                RunStatus::Queued
            }
        } else if counts.failed > 0 {
            RunStatus::Failed
        } else if counts.cancelled + counts.skipped > 0 || self.cancel_requested {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        };
        let finished_at = status
            .is_terminal()
            .then(|| self.finished_at.unwrap_or_else(DateTime::now));
        let started = self.started_at.unwrap_or(self.created_at);
        let mut run = self.clone();
        run.duration_ms = finished_at.map(|f| f.timestamp_millis() - started.timestamp_millis());
        run.counts = counts;
        run.failed_task_ids = failed_task_ids;
        run.status = status;
        run.finished_at = finished_at;
        run
    }
}
