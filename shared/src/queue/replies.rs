//! Replies to submissions. The ack of the submission entry and the reply are one atomic script:
//! if two scheduler replicas ever process the same entry (one was slow, the other reclaimed it),
//! only the one whose XACK counts writes a reply. A request's reply stream holds one reply: a
//! resend of an answered request (its client missed the reply, or resent too early) is acked
//! without a second one. Only when Redis lost the first reply is a new one written.

use std::sync::LazyLock;

use serde::Serialize;

use super::{Queue, QueueError};
use crate::model::FieldError;

/// KEYS: submissions stream, reply stream. ARGV: group, entry id, payload, ttl seconds (0: none),
/// approximate max length of the reply stream (0: none), 1 when the stream holds one reply only.
static ACK_AND_REPLY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
        if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
            redis.call('XDEL', KEYS[1], ARGV[2])
            return 0
        end
        if tonumber(ARGV[5]) > 0 then
            redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'payload', ARGV[3])
        else
            redis.call('XADD', KEYS[2], '*', 'payload', ARGV[3])
        end
        if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
        redis.call('XDEL', KEYS[1], ARGV[2])
        return 1
        ",
    )
});

/// Entries kept (approximately) in the shared rejections stream; Mongo keeps them all.
pub const REJECTIONS_MAXLEN: u64 = 100_000;

/// The JSON held in a reply entry's `payload` field.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Accepted {
        run_id: String,
    },
    Rejected {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request_id: Option<String>,
        /// Set on the rejections stream: which submission entry this answers.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        entry_id: Option<String>,
        errors: Vec<FieldError>,
    },
}

/// Where a reply goes: the request's own reply stream, or the shared rejections stream.
#[derive(Debug, Clone, Copy)]
pub enum ReplyTo<'a> {
    Request(&'a str),
    Rejections,
}

impl Queue {
    /// Acks submission `entry_id` for `group` and, if this call's ack counted and the request
    /// has no reply yet, appends `reply`. Returns whether the reply was written.
    pub async fn ack_and_reply(
        &self,
        group: &str,
        entry_id: &str,
        to: ReplyTo<'_>,
        reply: &Reply,
        ttl_s: u64,
    ) -> Result<bool, QueueError> {
        let stream = match to {
            ReplyTo::Request(id) => self.keys().replies(id),
            ReplyTo::Rejections => self.keys().rejections(),
        };
        // A request's reply stream expires; the shared rejections stream is capped instead.
        let (ttl, maxlen, once) = match to {
            ReplyTo::Request(_) => (ttl_s, 0, 1),
            ReplyTo::Rejections => (0, REJECTIONS_MAXLEN, 0),
        };
        let payload = serde_json::to_string(reply).unwrap_or_default();
        let mut conn = self.conn().await?;
        let written: i32 = ACK_AND_REPLY
            .key(self.keys().submissions())
            .key(stream)
            .arg(group)
            .arg(entry_id)
            .arg(payload)
            .arg(ttl)
            .arg(maxlen)
            .arg(once)
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }
}

impl Queue {
    /// The first entry of `stream` after id `after` (`"0"`: from the start), waiting up to
    /// `timeout` for one to arrive. Reads in [`super::BLOCK_MS`] slices.
    pub async fn next_entry(
        &self,
        stream: &str,
        after: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<redis::streams::StreamId>, QueueError> {
        use redis::streams::{StreamReadOptions, StreamReadReply};
        let deadline = std::time::Instant::now() + timeout;
        let mut conn = self.conn().await?;
        let opts = StreamReadOptions::default().count(1).block(super::BLOCK_MS);
        loop {
            let reply: Option<StreamReadReply> =
                redis::AsyncCommands::xread_options(&mut conn, &[stream], &[after], &opts).await?;
            let entry = reply
                .and_then(|r| r.keys.into_iter().next())
                .and_then(|k| k.ids.into_iter().next());
            if entry.is_some() || std::time::Instant::now() >= deadline {
                return Ok(entry);
            }
        }
    }
}
