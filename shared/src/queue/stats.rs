//! What an operator asks of a stream (`harmonia-scheduler queues`): its length, and for a group
//! reading it, what is pending, what nobody read yet (lag), and how old the oldest of each is.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use redis::streams::{StreamPendingReply, StreamRangeReply};
use serde::Serialize;

use super::{Queue, QueueError};

/// One stream, and one consumer group on it when asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub stream: String,
    pub group: Option<String>,
    /// Entries in the stream (task streams: waiting or being claimed; claimed ones are deleted).
    pub length: u64,
    /// Entries delivered to a consumer of the group and not yet acknowledged.
    pub pending: u64,
    /// Entries no consumer of the group has read yet (`None`: Redis cannot tell right now).
    pub lag: Option<u64>,
    pub consumers: u64,
    /// Time since the oldest pending entry was added to the stream.
    pub oldest_pending_age_ms: Option<u64>,
    /// Time since the oldest entry still in the stream was added.
    pub oldest_entry_age_ms: Option<u64>,
}

/// Milliseconds since an entry id's time part (`<ms>-<seq>`) was written.
fn age_ms(entry_id: &str) -> Option<u64> {
    let written: u64 = entry_id.split('-').next()?.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis();
    Some(u64::try_from(now).ok()?.saturating_sub(written))
}

impl Queue {
    /// The state of `stream`, and of `group` on it; a missing stream or group reads as empty.
    pub async fn stream_stats(
        &self,
        stream: &str,
        group: Option<&str>,
    ) -> Result<StreamStats, QueueError> {
        let mut conn = self.conn().await?;
        let length: u64 = conn.xlen(stream).await?;
        let first: StreamRangeReply = conn.xrange_count(stream, "-", "+", 1).await?;
        drop(conn);
        let mut stats = StreamStats {
            stream: stream.to_owned(),
            group: group.map(str::to_owned),
            length,
            pending: 0,
            lag: Some(0),
            consumers: 0,
            oldest_pending_age_ms: None,
            oldest_entry_age_ms: first.ids.first().and_then(|e| age_ms(&e.id)),
        };
        let Some(group) = group else {
            stats.lag = None;
            return Ok(stats);
        };
        if let Some(info) = self.group_info(stream, group).await? {
            stats.pending = info.pending;
            stats.lag = info.lag;
            stats.consumers = info.consumers;
        }
        if stats.pending > 0 {
            let mut conn = self.conn().await?;
            if let StreamPendingReply::Data(data) = conn.xpending(stream, group).await? {
                stats.oldest_pending_age_ms = age_ms(&data.start_id);
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entry_ids_age_comes_from_its_time_part() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let age = super::age_ms(&format!("{}-3", now - 1500)).unwrap_or_default();
        assert!((1500..60_000).contains(&age), "{age}");
        assert_eq!(super::age_ms("not-an-id"), None);
    }
}
