//! Consumer groups: creating them, reading through them, and taking over what a dead consumer
//! left pending. Every group reader (scheduler ingest and events, workers) goes through here.
//!
//! A group lives in Redis only, so a FLUSHALL or a restart on an empty data dir deletes it; a
//! read then fails with `NOGROUP`. Readers call [`Queue::ensure_group`] again after any failed
//! read: it is idempotent and cheap.

use redis::AsyncCommands;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId};

use super::{Queue, QueueError};

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
        use redis::streams::{StreamReadOptions, StreamReadReply};
        let mut opts = StreamReadOptions::default()
            .group(group, consumer)
            .count(count);
        if !backlog {
            opts = opts.block(super::BLOCK_MS);
        }
        let cursor = if backlog { "0" } else { ">" };
        let mut conn = self.conn().await?;
        let reply: Option<StreamReadReply> =
            conn.xread_options(&[stream], &[cursor], &opts).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
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
        match reply {
            Ok(reply) => Ok(reply.claimed),
            Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
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
