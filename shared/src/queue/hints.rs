//! Model affinity in Redis: the hint stream copy of an entry that names a model, and whether
//! any worker holding the model is looking for work.
//!
//! A task that names a model is appended to its class stream and, under the same id, to the
//! model's hint stream in that class (`<prefix>:hints:<class>:<model>`). Workers that hold the
//! model read its hint stream before anything else; every other fitting worker still finds the
//! class copy, so a hint is only ever a preference: losing one (a failed append, a trim) costs
//! affinity, never the task. Whichever copy a worker is done with, it acks and deletes both.

use std::sync::LazyLock;
use std::time::Duration;

use super::tasks::{TaskEntry, TaskStream, WORKERS_GROUP};
use super::{Queue, QueueError};
use crate::resources::ResourceClass;

/// How long a read of a hint stream marks its reader as looking for work.
pub const LOOKING: Duration = Duration::from_secs(1);

/// KEYS: class stream, hint stream, set of hint streams. ARGV: task id, attempt, model, ready
/// time (`''`: none; then anything). Appends the class copy, then the hint copy under the same
/// id, and records the hint stream (for the scheduler's consumer pruning). The hint's append
/// may fail (its stream holds a later id, after the class stream was deleted by hand): the
/// class copy alone still runs the task.
const APPEND: &str = r"
local fields = {'task', ARGV[1], 'attempt', ARGV[2], 'model', ARGV[3]}
if ARGV[4] ~= '' then
    table.insert(fields, 'ready_us')
    table.insert(fields, ARGV[4])
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.pcall('XADD', KEYS[2], id, unpack(fields))
redis.call('SADD', KEYS[3], KEYS[2])
";

/// [`APPEND`] as a script of its own (sent with EVAL inside the publisher's transaction).
pub static APPEND_PAIR: LazyLock<String> = LazyLock::new(|| format!("{APPEND}return id"));

/// KEYS: class stream, hint stream. ARGV: group, entry ids. Acks and deletes both copies of
/// each entry (the hint stream's group may not exist: no holder ever read it).
static ACK_PAIRS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        for i = 2, #ARGV do
            for k = 1, 2 do
                redis.pcall('XACK', KEYS[k], ARGV[1], ARGV[i])
                redis.call('XDEL', KEYS[k], ARGV[i])
            end
        end
        return 1
        ",
    )
});

/// KEYS: class stream, hint stream, set of hint streams. ARGV: task id, attempt, model, ready
/// time, group, entry id. Appends the pair anew and drops the old one.
static HAND_BACK_PAIR: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{APPEND}
        for k = 1, 2 do
            redis.pcall('XACK', KEYS[k], ARGV[5], ARGV[6])
            redis.call('XDEL', KEYS[k], ARGV[6])
        end
        return 1
        "
    ))
});

impl Queue {
    /// Acks and deletes entries of `class` that name `model`: both copies of each.
    pub async fn ack_pairs(
        &self,
        class: ResourceClass,
        model: &str,
        ids: &[String],
    ) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let _: i32 = ACK_PAIRS
            .key(self.keys().task_stream(class))
            .key(self.keys().hint_stream(class, model))
            .arg(WORKERS_GROUP)
            .arg(ids)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// [`Queue::hand_back`] of an entry that names `model`: the pair goes back as a new pair.
    pub(super) async fn hand_back_pair(
        &self,
        class: ResourceClass,
        model: &str,
        entry_id: &str,
        entry: &TaskEntry,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let _: i32 = HAND_BACK_PAIR
            .key(self.keys().task_stream(class))
            .key(self.keys().hint_stream(class, model))
            .key(self.keys().hint_streams())
            .arg(&entry.task_id)
            .arg(entry.attempt)
            .arg(model)
            .arg(entry.ready_arg())
            .arg(WORKERS_GROUP)
            .arg(entry_id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether a worker holding `model` read its hint stream in `class` within the last
    /// [`LOOKING`]: a worker with a slot free reads every [`super::BLOCK_MS`] at most, one with
    /// every slot busy stops reading. (Not the consumer's idle time: Redis 7.0 refreshes it
    /// only when a read returns entries.)
    pub async fn holder_looking(
        &self,
        class: ResourceClass,
        model: &str,
    ) -> Result<bool, QueueError> {
        use redis::AsyncCommands;
        let mut conn = self.conn().await?;
        Ok(conn.exists(self.keys().looking(class, model)).await?)
    }

    /// A read of the hint streams `hints` for `consumer`, without waiting, marking it as
    /// looking for work on each (see [`Queue::holder_looking`]).
    pub async fn read_hints(
        &self,
        consumer: &str,
        hints: &[TaskStream],
        count: usize,
    ) -> Result<Vec<(TaskStream, Vec<redis::streams::StreamId>)>, QueueError> {
        let mut pipe = redis::pipe();
        for hint in hints {
            let model = hint.model.as_deref().unwrap_or_default();
            pipe.cmd("SET")
                .arg(self.keys().looking(hint.class, model))
                .arg(consumer)
                .arg("PX")
                .arg(LOOKING.as_millis() as u64)
                .ignore();
        }
        let keys: Vec<String> = hints.iter().map(|s| s.key(self.keys())).collect();
        let cursors = vec![">"; keys.len()];
        let opts = super::tasks::group_read(consumer, count, false);
        pipe.xread_options(&keys, &cursors, &opts);
        let mut conn = self.conn().await?;
        let (reply,): (Option<redis::streams::StreamReadReply>,) =
            pipe.query_async(&mut conn).await?;
        Ok(super::tasks::by_stream(reply, &keys, hints))
    }

    /// Whether each entry (class, id) is still in its class stream: a holder that claimed it
    /// through its hint copy has deleted it.
    pub async fn present(
        &self,
        entries: &[(ResourceClass, &str)],
    ) -> Result<Vec<bool>, QueueError> {
        let mut pipe = redis::pipe();
        for (class, id) in entries {
            pipe.cmd("XRANGE")
                .arg(self.keys().task_stream(*class))
                .arg(*id)
                .arg(*id);
        }
        let mut conn = self.conn().await?;
        let found: Vec<redis::streams::StreamRangeReply> = pipe.query_async(&mut conn).await?;
        Ok(found.iter().map(|r| !r.ids.is_empty()).collect())
    }

    /// Every hint stream entries were appended to.
    pub async fn hint_streams(&self) -> Result<Vec<String>, QueueError> {
        use redis::AsyncCommands;
        let mut conn = self.conn().await?;
        Ok(conn.smembers(self.keys().hint_streams()).await?)
    }

    /// The Redis time (ms) of the oldest entry still in the task streams of `classes`: one not
    /// yet taken, or one a worker is claiming right now. `None` when they are empty.
    pub async fn oldest_entry_ms(
        &self,
        classes: &[ResourceClass],
    ) -> Result<Option<u64>, QueueError> {
        let mut pipe = redis::pipe();
        for class in classes {
            pipe.cmd("XRANGE")
                .arg(self.keys().task_stream(*class))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1);
        }
        let mut conn = self.conn().await?;
        let heads: Vec<redis::streams::StreamRangeReply> = pipe.query_async(&mut conn).await?;
        Ok(heads
            .iter()
            .filter_map(|r| r.ids.first())
            .filter_map(|e| e.id.split('-').next()?.parse().ok())
            .min())
    }
}
