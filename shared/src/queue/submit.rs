//! The client side of the Redis-fronted API: submit, and wait for the one reply. Used by
//! `harmonia-scheduler submit`, the tests and the benchmarks; any other client follows the same
//! rules (docs/protocol.md, "Replies").

use std::time::Duration;

use redis::AsyncCommands;

use super::{Queue, QueueError};

/// How often a waiting client checks that its submission is still in Redis.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A live scheduler reads a submission within a fraction of a second: one still unread after
/// this is waiting for a scheduler that is not there, which the client is told.
const UNREAD_AFTER: Duration = Duration::from_secs(2);

impl Queue {
    /// XADDs `payload` (a submission whose request id is `request_id`) and returns the reply's
    /// payload. Until the reply is written the submission lives only in Redis: if its entry
    /// vanishes unanswered (Redis lost its data), it is sent again with the same request id,
    /// which is always safe. Redis errors (a restart, a dropped connection) are retried until
    /// `timeout`.
    pub async fn submit_and_wait(
        &self,
        request_id: &str,
        payload: &str,
        timeout: Duration,
    ) -> Result<String, QueueError> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let mut entry: Option<String> = None;
        let mut told = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !told && start.elapsed() >= UNREAD_AFTER && !left.is_zero() {
                told = true;
                self.tell_if_unread(left).await;
            }
            match self
                .submit_step(request_id, payload, &mut entry, left)
                .await
            {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%request_id, "submitting (will retry): {e}");
                    tokio::time::sleep(left.min(Duration::from_millis(200))).await;
                }
            }
            if left.is_zero() {
                return Err(QueueError::NoReply {
                    request_id: request_id.to_owned(),
                    waited: timeout,
                });
            }
        }
    }

    /// Warns when the submission is still unread: the stream's group does not exist (no
    /// scheduler ever ran against this Redis and prefix), or it has entries nobody read.
    async fn tell_if_unread(&self, left: Duration) {
        let stream = self.keys().submissions();
        let why = match self.group_info(&stream, super::SCHEDULER_GROUP).await {
            Ok(None) => format!("no scheduler has ever read {stream}"),
            Ok(Some(g)) if g.lag.is_some_and(|lag| lag > 0) => format!(
                "{} submission(s) unread in {stream}; its {} registered consumer(s) may be gone \
                 or far behind",
                g.lag.unwrap_or_default(),
                g.consumers
            ),
            _ => return,
        };
        tracing::warn!(
            "no scheduler has read this submission after {} s: {why}. Is a scheduler running \
             against this Redis and prefix? Still waiting {:.0} s for a reply (--timeout-s)",
            UNREAD_AFTER.as_secs(),
            left.as_secs_f64()
        );
    }

    /// One round: (re)send when there is no live entry, then wait up to a second for the reply.
    async fn submit_step(
        &self,
        request_id: &str,
        payload: &str,
        entry: &mut Option<String>,
        left: Duration,
    ) -> Result<Option<String>, QueueError> {
        let (submissions, replies) = (self.keys().submissions(), self.keys().replies(request_id));
        let mut conn = self.conn().await?;
        if let Some(id) = entry.as_deref() {
            // The ack that removes the entry writes the reply in the same script: an entry gone
            // with no reply was lost, not answered.
            let still_there: redis::streams::StreamRangeReply =
                conn.xrange(&submissions, id, id).await?;
            let answered: usize = conn.xlen(&replies).await?;
            if still_there.ids.is_empty() && answered == 0 {
                tracing::warn!(%request_id, "the submission vanished from Redis unanswered; sending it again");
                *entry = None;
            }
        }
        if entry.is_none() {
            let id: String = conn
                .xadd(&submissions, "*", &[("payload", payload)])
                .await?;
            *entry = Some(id);
        }
        drop(conn);
        Ok(self
            .next_entry(&replies, "0", left.min(CHECK_EVERY))
            .await?
            .and_then(|e| e.get::<String>("payload")))
    }
}
