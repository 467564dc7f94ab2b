//! Task streams: one per resource class, read by workers through the `workers` group.
//!
//! An entry only says "task X, as of attempt N, may be claimed" (with when it became ready, and
//! for a new run's first tasks and a small promotion's a copy of the task so a worker need not
//! read it). MongoDB decides
//! whether a claim or an outcome wins (fenced on status and attempt), so duplicate or stale
//! entries are harmless and Redis can always be rebuilt from MongoDB.
//!
//! An entry that names a model is written twice, under one id: in its class stream, where any
//! fitting worker finds it, and in the model's hint stream in that class, which only workers
//! holding the model read (see [`super::hints`]). The two are a pair: whoever is done with one
//! copy acks and deletes both, so a task claimed through either is not read again.

use std::sync::LazyLock;

use redis::AsyncCommands;

use super::{Queue, QueueError};
use crate::model::{RunTask, TaskStatus};
use crate::resources::ResourceClass;

/// Consumer group of all workers on every task stream.
pub const WORKERS_GROUP: &str = "workers";

/// The largest task document an entry carries ([`TaskEntry::spec`]); a larger task is read
/// from MongoDB by the worker that takes it.
pub const SPEC_MAX_BYTES: usize = 4096;

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
    /// When the task became ready, by the publisher's clock in microseconds since the Unix
    /// epoch: the moment its entry was first appended, right after MongoDB acknowledged it
    /// queued. [`Queue::publish`] stamps entries that have none; a hand-back keeps it. `None`
    /// for an entry appended before entries carried it.
    pub ready_us: Option<i64>,
    /// The task document as MongoDB held it when the task was queued (BSON, made by
    /// [`TaskEntry::spec_of`]), so that a worker can start an attempt on a deferred claim
    /// without reading it: the scheduler adds it to a new run's first ready tasks and to the
    /// tasks of a small promotion ([`crate::store::tasks::WHOLE_READY_TASKS`]). The copy
    /// never decides anything the fenced outcome would not (docs/protocol.md §4). A hand-back
    /// drops it.
    pub spec: Option<Vec<u8>>,
}

impl TaskEntry {
    /// The task an entry names; `None` for an entry that is not a task entry.
    pub fn of(entry: &super::Entry) -> Option<Self> {
        Some(Self {
            task_id: entry.get("task")?,
            attempt: entry.get("attempt")?,
            model: entry.get("model"),
            ready_us: entry.get("ready_us"),
            spec: entry.get("spec"),
        })
    }

    /// `task` as an entry carries it: its history (attempts, log tail) and waiting list left
    /// out, which an attempt does not read; its downstream list kept, which the attempt's
    /// outcome event names for the scheduler's promotion. `None` when it would be over
    /// [`SPEC_MAX_BYTES`] (a task with many downstream tasks or large parameters).
    pub fn spec_of(task: &RunTask) -> Option<Vec<u8>> {
        let trimmed = RunTask {
            waiting_on: Vec::new(),
            attempts: Vec::new(),
            log_tail: Vec::new(),
            ..task.clone()
        };
        mongodb::bson::to_vec(&trimmed)
            .ok()
            .filter(|b| b.len() <= SPEC_MAX_BYTES)
    }

    /// `ready_us` as the hand-back scripts take it: `''` for none.
    pub(super) fn ready_arg(&self) -> String {
        self.ready_us.map(|t| t.to_string()).unwrap_or_default()
    }

    /// The task the entry carries, if it carries one that reads well and is queued as of the
    /// entry's attempt.
    pub fn task(&self) -> Option<RunTask> {
        let task: RunTask = mongodb::bson::from_slice(self.spec.as_deref()?).ok()?;
        let queued = task.status == TaskStatus::Queued && !task.cancel_requested;
        (queued && task.attempt == self.attempt && task.id.to_hex() == self.task_id).then_some(task)
    }
}

/// Now, in microseconds since the Unix epoch (the unit of [`TaskEntry::ready_us`]).
pub fn unix_us() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
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

/// KEYS: stream. ARGV: group, entry id, task id, attempt, ready time (`''`: none). Re-appends
/// a copy and drops the original, so a worker that read more than it can start hands the task
/// back to everyone.
static HAND_BACK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local fields = {'task', ARGV[3], 'attempt', ARGV[4]}
        if ARGV[5] ~= '' then
            table.insert(fields, 'ready_us')
            table.insert(fields, ARGV[5])
        end
        redis.call('XADD', KEYS[1], '*', unpack(fields))
        redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        ",
    )
});

impl Queue {
    /// Appends entries to their class streams in one atomic round trip (stamping those with no
    /// `ready_us` with the time of the call; an entry that names a model goes without its
    /// `spec`: it is claimed in MongoDB, which returns the task), records the classes, and
    /// returns the epoch the entries were written in (`None`: Redis has none yet, after a
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
        let now = unix_us().to_string();
        for (class, entry) in entries {
            let stream = self.keys().task_stream(*class);
            let attempt = entry.attempt.to_string();
            let ready = entry
                .ready_us
                .map_or_else(|| now.clone(), |t| t.to_string());
            match &entry.model {
                None => {
                    let xadd = pipe.cmd("XADD").arg(stream).arg("*");
                    xadd.arg("task")
                        .arg(&entry.task_id)
                        .arg("attempt")
                        .arg(&attempt);
                    xadd.arg("ready_us").arg(&ready);
                    if let Some(spec) = &entry.spec {
                        xadd.arg("spec").arg(spec.as_slice());
                    }
                    xadd.ignore();
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
                        .arg(&ready)
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
            .arg(entry.ready_arg())
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
