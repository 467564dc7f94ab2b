//! Task streams: one per resource class, read by workers through the `workers` group.
//!
//! An entry only says "task X, as of attempt N, may be claimed". MongoDB decides whether a claim
//! wins (fenced on status and attempt), so duplicate or stale entries are harmless and Redis can
//! always be rebuilt from MongoDB.
//!
//! An entry that names a model is written twice, under one id: in its class stream, where any
//! fitting worker finds it, and in the model's hint stream in that class, which only workers
//! holding the model read (see [`super::hints`]). The two are a pair: whoever is done with one
//! copy acks and deletes both, so a task claimed through either is not read again.

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
    /// The model repository the task works on, if the scheduler knows it: the entry then has
    /// a twin in that model's hint stream.
    pub model: Option<String>,
}

impl TaskEntry {
    /// The task an entry names; `None` for an entry that is not a task entry.
    pub fn of(entry: &super::Entry) -> Option<Self> {
        Some(Self {
            task_id: entry.get("task")?,
            attempt: entry.get("attempt")?,
            model: entry.get("model"),
        })
    }
}

/// A stream task entries are read from: a class's stream, or a model's hint stream in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskStream {
    pub class: ResourceClass,
    /// `Some`: the hint stream of this model.
    pub model: Option<String>,
}

impl TaskStream {
    pub fn class(class: ResourceClass) -> Self {
        Self { class, model: None }
    }

    pub fn hint(class: ResourceClass, model: &str) -> Self {
        Self {
            class,
            model: Some(model.to_owned()),
        }
    }

    /// Its key.
    pub fn key(&self, keys: &super::Keys) -> String {
        match &self.model {
            None => keys.task_stream(self.class),
            Some(model) => keys.hint_stream(self.class, model),
        }
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
            let stream = self.keys().task_stream(*class);
            let attempt = entry.attempt.to_string();
            match &entry.model {
                None => {
                    let fields = [("task", entry.task_id.as_str()), ("attempt", &attempt)];
                    pipe.xadd(stream, "*", &fields).ignore();
                }
                // EVAL, not EVALSHA: a transaction cannot recover from NOSCRIPT.
                Some(model) => {
                    pipe.cmd("EVAL")
                        .arg(super::hints::APPEND_PAIR.as_str())
                        .arg(3)
                        .arg(stream)
                        .arg(self.keys().hint_stream(*class, model))
                        .arg(self.keys().hint_streams())
                        .arg(&entry.task_id)
                        .arg(&attempt)
                        .arg(model)
                        .ignore();
                }
            }
        }
        let mut conn = self.conn().await?;
        let (epoch, added): (Option<String>, Vec<i64>) = {
            let mut values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
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

    /// Acks and deletes entries of one class stream (trimming as we go); entries that name a
    /// model go through [`Queue::ack_pairs`].
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
            .query_async(&mut conn)
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
        if let Some(model) = &entry.model {
            return self.hand_back_pair(class, model, entry_id, entry).await;
        }
        let mut conn = self.conn().await?;
        let _: i32 = HAND_BACK
            .key(self.keys().task_stream(class))
            .arg(WORKERS_GROUP)
            .arg(entry_id)
            .arg(&entry.task_id)
            .arg(entry.attempt)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}

impl Queue {
    /// One read, for worker `consumer`, of new entries on `streams` (at most `count` per
    /// stream; when `block`, waiting up to [`super::BLOCK_MS`] for one), by stream.
    pub async fn read_tasks(
        &self,
        consumer: &str,
        streams: &[TaskStream],
        count: usize,
        block: bool,
    ) -> Result<Vec<(TaskStream, Vec<redis::streams::StreamId>)>, QueueError> {
        let keys: Vec<String> = streams.iter().map(|s| s.key(&self.keys)).collect();
        let cursors = vec![">"; keys.len()];
        let opts = group_read(consumer, count, block);
        let mut conn = self.conn().await?;
        let reply: Option<redis::streams::StreamReadReply> =
            conn.xread_options(&keys, &cursors, &opts).await?;
        Ok(by_stream(reply, &keys, streams))
    }
}

/// XREADGROUP's options for worker `consumer` in the `workers` group.
pub(super) fn group_read(
    consumer: &str,
    count: usize,
    block: bool,
) -> redis::streams::StreamReadOptions {
    let opts = redis::streams::StreamReadOptions::default()
        .group(WORKERS_GROUP, consumer)
        .count(count);
    if block {
        opts.block(super::BLOCK_MS)
    } else {
        opts
    }
}

/// A read's reply by stream (`keys[i]` is the key of `streams[i]`).
pub(super) fn by_stream(
    reply: Option<redis::streams::StreamReadReply>,
    keys: &[String],
    streams: &[TaskStream],
) -> Vec<(TaskStream, Vec<redis::streams::StreamId>)> {
    let by_key: std::collections::HashMap<&str, &TaskStream> =
        keys.iter().map(String::as_str).zip(streams).collect();
    reply
        .map(|r| {
            r.keys
                .into_iter()
                .filter_map(|k| Some(((*by_key.get(k.key.as_str())?).clone(), k.ids)))
                .collect()
        })
        .unwrap_or_default()
}
