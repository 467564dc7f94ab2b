//! Task streams: one per resource class, read by workers through the `workers` group.
//!
//! An entry only says "task X, as of attempt N, may be claimed". MongoDB decides whether a claim
//! wins (fenced on status and attempt), so duplicate or stale entries are harmless and Redis can
//! always be rebuilt from MongoDB.

use std::sync::LazyLock;

use redis::AsyncCommands;

use super::{Queue, QueueError};
use crate::resources::ResourceClass;

/// Consumer group of all workers on every task stream.
pub const WORKERS_GROUP: &str = "workers";

/// What a task stream entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEntry {
    /// The run_tasks `_id`, as hex.
    pub task_id: String,
    /// The task's `attempt` when it was published; a claim must still see this value.
    pub attempt: u32,
}

impl TaskEntry {
    /// The task an entry names; `None` for an entry that is not a task entry.
    pub fn of(entry: &super::Entry) -> Option<Self> {
        Some(Self {
            task_id: entry.get("task")?,
            attempt: entry.get("attempt")?,
        })
    }
}

/// KEYS: stream. ARGV: group, entry id, task id, attempt. Re-appends a copy and drops the
/// original, so a worker that read more than it can start hands the task back to everyone.
static HAND_BACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        redis.call('XADD', KEYS[1], '*', 'task', ARGV[3], 'attempt', ARGV[4])
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        ",
    )
});

impl Queue {
    /// Appends entries to their class streams in one atomic round trip, records the classes,
    /// and returns the epoch the entries were written in (`None`: Redis has none yet, after a
    /// loss the scheduler has not noticed). See [`super::epoch`].
    pub async fn publish(
        &self,
        entries: &[(ResourceClass, TaskEntry)],
    ) -> Result<Option<String>, QueueError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(self.keys().epoch());
        let mut classes: Vec<ResourceClass> = entries.iter().map(|(c, _)| *c).collect();
        classes.sort_unstable();
        classes.dedup();
        for class in &classes {
            pipe.sadd(self.keys().classes(), class.to_string());
        }
        for (class, entry) in entries {
            pipe.xadd(
                self.keys().task_stream(*class),
                "*",
                &[
                    ("task", entry.task_id.as_str()),
                    ("attempt", &entry.attempt.to_string()),
                ],
            )
            .ignore();
        }
        let mut conn = self.conn().await?;
        let (epoch, added): (Option<String>, Vec<i64>) = {
            let mut values: Vec<redis::Value> = pipe.query_async(&mut *conn).await?;
            let epoch =
                redis::from_redis_value(values.remove(0)).map_err(redis::RedisError::from)?;
            let added = values
                .into_iter()
                .map(redis::from_redis_value)
                .collect::<Result<_, _>>()
                .map_err(redis::RedisError::from)?;
            (epoch, added)
        };
        drop(conn);
        // A class new to Redis (first use, or after a loss) gets its `workers` group now, not
        // at some worker's first read: autoscalers read the group's lag, and with no worker
        // running yet there would be no group to read.
        for (class, _) in classes.iter().zip(added).filter(|(_, n)| *n == 1) {
            self.ensure_group(&self.keys().task_stream(*class), WORKERS_GROUP)
                .await?;
        }
        Ok(epoch)
    }

    /// The resource classes that have task streams.
    pub async fn classes(&self) -> Result<Vec<ResourceClass>, QueueError> {
        let mut conn = self.conn().await?;
        let names: Vec<String> = conn.smembers(self.keys().classes()).await?;
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Acks and deletes entries of one stream (trimming as we go).
    pub async fn ack_delete(
        &self,
        stream: &str,
        group: &str,
        ids: &[String],
    ) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let () = redis::pipe()
            .atomic()
            .xack(stream, group, ids)
            .ignore()
            .xdel(stream, ids)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        Ok(())
    }

    /// Hands an entry this worker read but cannot start back to all workers.
    pub async fn hand_back(
        &self,
        class: ResourceClass,
        entry_id: &str,
        entry: &TaskEntry,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let _: i32 = HAND_BACK
            .key(self.keys().task_stream(class))
            .arg(WORKERS_GROUP)
            .arg(entry_id)
            .arg(&entry.task_id)
            .arg(entry.attempt)
            .invoke_async(&mut *conn)
            .await?;
        Ok(())
    }
}

impl Queue {
    /// One read, for worker `consumer`, of new entries on the task streams of `classes` (at most
    /// `count` per stream, waiting up to [`super::BLOCK_MS`]), by class.
    pub async fn read_tasks(
        &self,
        consumer: &str,
        classes: &[ResourceClass],
        count: usize,
    ) -> Result<Vec<(ResourceClass, Vec<redis::streams::StreamId>)>, QueueError> {
        use redis::streams::{StreamReadOptions, StreamReadReply};
        let streams: Vec<String> = classes.iter().map(|c| self.keys.task_stream(*c)).collect();
        let cursors = vec![">"; streams.len()];
        let opts = StreamReadOptions::default()
            .group(WORKERS_GROUP, consumer)
            .count(count)
            .block(super::BLOCK_MS);
        let mut conn = self.conn().await?;
        let reply: Option<StreamReadReply> = conn.xread_options(&streams, &cursors, &opts).await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .filter_map(|k| Some((self.keys.class_of(&k.key)?, k.ids)))
                    .collect()
            })
            .unwrap_or_default())
    }
}
