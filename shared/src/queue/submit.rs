//! The client side of the Redis-fronted API: submit, and wait for the one reply. Used by
//! `harmonia-scheduler submit`, the tests and the benchmarks; any other client follows the same
//! rules (docs/protocol.md, "Replies").

use std::time::Duration;

use redis::AsyncCommands;

use super::{Queue, QueueError};

/// How often a waiting client checks that its submission is still in Redis.
const CHECK_EVERY: Duration = Duration::from_secs(1);

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
        let deadline = tokio::time::Instant::now() + timeout;
        let mut entry: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
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
