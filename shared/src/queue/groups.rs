//! Consumer groups: creating them, reading through them, and taking over what a dead consumer
//! left pending. Every group reader (scheduler ingest and events, workers) goes through here.
//!
//! A group lives in Redis only, so a FLUSHALL or a restart on an empty data dir deletes it; a
//! read then fails with `NOGROUP`. Readers call [`Queue::ensure_group`] again after any failed
//! read: it is idempotent and cheap.

use std::sync::LazyLock;
use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply,
};

use super::{Queue, QueueError};

/// KEYS: stream. ARGV: group, min idle ms. Removes every consumer of the group that holds no
/// pending entry and has been idle that long, in one step, so no entry can be delivered to it
/// between the check and the removal (removing a consumer drops its pending entries). Returns
/// the removed names. A live consumer removed while idle is recreated by its next read.
static PRUNE_CONSUMERS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
        local removed = {}
        if not ok then return removed end
        for _, c in ipairs(consumers) do
            local f = {}
            for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
            if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) then
                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
                table.insert(removed, f['name'])
            end
        end
        return removed
        ",
    )
});

/// What Redis says of one consumer group on a stream (`XINFO GROUPS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub consumers: u64,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to any consumer. `None` when Redis cannot tell, which happens
    /// while an entry deleted out of order sits after the oldest one still in the stream.
    pub lag: Option<u64>,
}

/// One entry of an XREADGROUP reply: its id and its fields.
type EntryRow = (
    String,
    Option<std::collections::HashMap<String, redis::Value>>,
);

impl Queue {
    /// Creates a consumer group (and its stream) if missing. Groups start at `0` so entries
    /// written before the group existed (e.g. right after a Redis flush) are still delivered.
    pub async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, group, "0").await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// One read of `stream` for `consumer` in `group`: its own pending entries when `backlog`
    /// (what it was given before a restart or a failed pass), else new ones, waiting up to
    /// [`super::BLOCK_MS`].
    pub async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        backlog: bool,
        count: usize,
    ) -> Result<Vec<StreamId>, QueueError> {
        use redis::streams::StreamReadOptions;
        let mut opts = StreamReadOptions::default()
            .group(group, consumer)
            .count(count);
        if !backlog {
            opts = opts.block(super::BLOCK_MS);
        }
        let cursor = if backlog { "0" } else { ">" };
        let mut conn = self.conn().await?;
        // Read as rows rather than `StreamReadReply`, whose parser clones the whole reply (a
        // submission can be megabytes): [[stream, [[id, [field, value, ...] or nil], ...]]].
        let rows: Option<Vec<(String, Vec<EntryRow>)>> =
            conn.xread_options(&[stream], &[cursor], &opts).await?;
        let entries: Vec<StreamId> = rows
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| StreamId {
                id,
                // An entry deleted while pending reads back with no fields.
                map: fields.unwrap_or_default(),
                ..StreamId::default()
            })
            .collect();
        if reply_bytes(&entries) > LARGE_REPLY_BYTES {
            conn.close();
        }
        Ok(entries)
    }

    /// Takes over up to `count` entries that sat unacknowledged in any consumer's pending list
    /// for at least `min_idle` (their reader died or stalled): they become `consumer`'s, and are
    /// returned. A missing stream or group reads as nothing to take.
    pub async fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: std::time::Duration,
        count: usize,
    ) -> Result<Vec<StreamId>, QueueError> {
        let mut conn = self.conn().await?;
        let idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let opts = StreamAutoClaimOptions::default().count(count);
        let reply: redis::RedisResult<StreamAutoClaimReply> = conn
            .xautoclaim_options(stream, group, consumer, idle, "0", opts)
            .await;
        unless_no_group(reply.map(|reply| reply.claimed))
    }

    /// Takes over, for `consumer`, the entries of `group` pending idle at least `min_idle` (at
    /// most `count`, oldest first), each with the consumer that held it. `XCLAIM` checks the
    /// idle time again, so an entry its holder touched meanwhile stays with it.
    pub async fn take_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<(StreamId, String)>, QueueError> {
        let mut conn = self.conn().await?;
        let idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        // IDLE filters on the server: the stale entries are found however many live ones
        // are pending before them.
        let pending: redis::RedisResult<redis::streams::StreamPendingCountReply> =
            redis::cmd("XPENDING")
                .arg(stream)
                .arg(group)
                .arg("IDLE")
                .arg(idle)
                .arg("-")
                .arg("+")
                .arg(count)
                .query_async(&mut conn)
                .await;
        let stale = unless_no_group(pending.map(|reply| reply.ids))?;
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = stale.iter().map(|p| p.id.as_str()).collect();
        let claimed: redis::streams::StreamClaimReply =
            conn.xclaim(stream, group, consumer, idle, &ids).await?;
        Ok(claimed
            .ids
            .into_iter()
            .filter_map(|entry| {
                let holder = stale.iter().find(|p| p.id == entry.id)?.consumer.clone();
                Some((entry, holder))
            })
            .collect())
    }

    /// Resets the idle time of entries `consumer` holds pending in `group` (`XCLAIM ... JUSTID`
    /// with no minimum idle time), so they are not taken over as a dead worker's while it is
    /// alive and working on them.
    pub async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let opts = redis::streams::StreamClaimOptions::default().with_justid();
        let reply: redis::RedisResult<redis::Value> = conn
            .xclaim_options(stream, group, consumer, 0, ids, opts)
            .await;
        // Redis lost the stream: nothing to keep; the outcome's fence decides.
        unless_no_group(reply.map(|_| ()))
    }

    /// The state of `group` on `stream`; `None` when either does not exist.
    pub async fn group_info(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Option<GroupInfo>, QueueError> {
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<StreamInfoGroupsReply> = conn.xinfo_groups(stream).await;
        let groups = match reply {
            Ok(reply) => reply.groups,
            Err(e) if e.to_string().contains("no such key") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(groups
            .into_iter()
            .find(|g| g.name == group)
            .map(|g| GroupInfo {
                consumers: g.consumers as u64,
                pending: g.pending as u64,
                lag: g.lag.map(|l| l as u64),
            }))
    }

    /// The consumers of `group` on `stream` with their pending counts; empty when either does
    /// not exist.
    pub async fn consumers(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        use redis::streams::StreamInfoConsumersReply;
        let mut conn = self.conn().await?;
        let reply: redis::RedisResult<StreamInfoConsumersReply> =
            conn.xinfo_consumers(stream, group).await;
        match reply {
            Ok(reply) => Ok(reply
                .consumers
                .into_iter()
                .map(|c| (c.name, c.pending as u64))
                .collect()),
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the consumers of `group` on `stream` that hold no pending entry and have been
    /// idle for `idle` (dead workers and scheduler replicas, once their entries were taken
    /// over). Returns their names.
    pub async fn prune_consumers(
        &self,
        stream: &str,
        group: &str,
        idle: Duration,
    ) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn().await?;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        Ok(PRUNE_CONSUMERS
            .key(stream)
            .arg(group)
            .arg(idle_ms)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Removes `consumer` from `group` on `stream` if it holds no pending entry (a consumer
    /// with pending entries stays, so they can be taken over). True when it was removed.
    pub async fn leave_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Result<bool, QueueError> {
        use redis::streams::StreamPendingCountReply;
        let mut conn = self.conn().await?;
        let pending: StreamPendingCountReply = conn
            .xpending_consumer_count(stream, group, "-", "+", 1, consumer)
            .await?;
        if !pending.ids.is_empty() {
            return Ok(false);
        }
        let _: i64 = conn.xgroup_delconsumer(stream, group, consumer).await?;
        Ok(true)
    }
}

/// `reply`, or nothing (`T::default()`) when Redis has no such group: it lost it with its data,
/// so nothing is pending in it.
fn unless_no_group<T: Default>(reply: redis::RedisResult<T>) -> Result<T, QueueError> {
    match reply {
        Err(e) if e.code() == Some("NOGROUP") => Ok(T::default()),
        reply => Ok(reply?),
    }
}

/// A read whose entries hold more than this closes its connection (see [`super::Conn::close`]).
const LARGE_REPLY_BYTES: usize = 1 << 20;

/// The bytes of the entries' field values (what the connection's read buffer had to hold).
fn reply_bytes(entries: &[StreamId]) -> usize {
    entries
        .iter()
        .flat_map(|e| e.map.values())
        .map(|v| match v {
            redis::Value::BulkString(b) => b.len(),
            redis::Value::SimpleString(s) => s.len(),
            _ => 0,
        })
        .sum()
}
