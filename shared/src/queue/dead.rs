//! Reading and clearing the dead-letter stream (`harmonia:dead`): one entry per task that
//! failed for good, written by [`Queue::announce`]. MongoDB keeps the task itself; replaying
//! one is a task retry (the scheduler CLI's `dlq replay`), after which its entry is removed.

use redis::AsyncCommands;
use redis::streams::StreamRangeReply;

use super::{Queue, QueueError};

/// One dead letter: its stream entry id and its payload (task id, run id, node id, type,
/// attempt, last error).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub payload: serde_json::Value,
}

fn letters(reply: StreamRangeReply) -> Vec<DeadLetter> {
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let payload = entry
                .get::<String>("payload")
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or(serde_json::Value::Null);
            DeadLetter {
                id: entry.id,
                payload,
            }
        })
        .collect()
}

impl Queue {
    /// The newest `count` dead letters, newest first.
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut conn = self.conn().await?;
        let reply: StreamRangeReply = conn
            .xrevrange_count(self.keys().dead_letter(), "+", "-", count)
            .await?;
        Ok(letters(reply))
    }

    /// One dead letter by its entry id.
    pub async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        let mut conn = self.conn().await?;
        let reply: StreamRangeReply = conn.xrange(self.keys().dead_letter(), id, id).await?;
        Ok(letters(reply).pop())
    }

    /// Removes dead letters by id; returns how many existed.
    pub async fn remove_dead_letters(&self, ids: &[String]) -> Result<u64, QueueError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        Ok(conn.xdel(self.keys().dead_letter(), ids).await?)
    }

    /// Removes every dead letter; returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn().await?;
        let removed: u64 = conn
            .xtrim(
                self.keys().dead_letter(),
                redis::streams::StreamMaxlen::Equals(0),
            )
            .await?;
        Ok(removed)
    }
}
