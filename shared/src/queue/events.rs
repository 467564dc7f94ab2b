//! Task events: workers (and the scheduler itself) append one when a task reaches a state its
//! downstream tasks care about; the scheduler consumes them to promote or skip downstream tasks.
//! Events are hints: the scheduler's reconcile pass recomputes the same from MongoDB.

use serde::{Deserialize, Serialize};

use super::{Queue, QueueError};
use crate::model::TaskStatus;

/// Entries kept (approximately) on the dead-letter stream.
pub const DEAD_LETTER_MAXLEN: usize = 100_000;

/// Consumer group of the scheduler replicas on the events stream.
pub const SCHEDULER_GROUP: &str = "scheduler";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub task_id: String,
    pub run_id: String,
    pub node_id: String,
    pub status: TaskStatus,
    /// The task's downstream nodes, so the scheduler need not read the task.
    #[serde(default)]
    pub downstream: Vec<String>,
}

impl Queue {
    /// Tells the scheduler a task reached a final state; a failure also goes to the dead-letter
    /// stream with its last error.
    pub async fn announce(&self, task: &crate::model::RunTask) -> Result<(), QueueError> {
        self.announce_all(std::slice::from_ref(task)).await
    }

    /// [`Queue::announce`] for many tasks, in one round trip.
    pub async fn announce_all(&self, tasks: &[crate::model::RunTask]) -> Result<(), QueueError> {
        self.announce_and_ack(tasks, &[]).await
    }

    /// [`Queue::announce_all`], and in the same round trip acks and deletes the given entries
    /// of the `workers` group (stream key, entry ids): a worker's group commit settles its
    /// deferred claims' entries with the outcomes' events.
    pub async fn announce_and_ack(
        &self,
        tasks: &[crate::model::RunTask],
        acks: &[(String, Vec<String>)],
    ) -> Result<(), QueueError> {
        let acks: Vec<&(String, Vec<String>)> =
            acks.iter().filter(|(_, ids)| !ids.is_empty()).collect();
        if tasks.is_empty() && acks.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in acks {
            pipe.xack(stream, super::WORKERS_GROUP, ids).ignore();
            pipe.xdel(stream, ids).ignore();
        }
        for task in tasks {
            if task.status == TaskStatus::Failed {
                let letter = serde_json::json!({
                    "task_id": task.id.to_hex(),
                    "run_id": task.run_id.to_hex(),
                    "node_id": task.node_id,
                    "type": task.task_type,
                    "attempt": task.attempt,
                    "error": task.error.as_ref().map(|e| e.message.as_str()),
                });
                // Capped like every Harmonia stream; MongoDB keeps each failed task and its error.
                pipe.xadd_maxlen(
                    self.keys().dead_letter(),
                    redis::streams::StreamMaxlen::Approx(DEAD_LETTER_MAXLEN),
                    "*",
                    &[("payload", letter.to_string())],
                )
                .ignore();
            }
            let event = TaskEvent {
                task_id: task.id.to_hex(),
                run_id: task.run_id.to_hex(),
                node_id: task.node_id.clone(),
                status: task.status,
                downstream: task.downstream_node_ids.clone(),
            };
            let payload = serde_json::to_string(&event).unwrap_or_default();
            pipe.xadd(self.keys().events(), "*", &[("payload", payload)])
                .ignore();
        }
        let mut conn = self.conn().await?;
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}
