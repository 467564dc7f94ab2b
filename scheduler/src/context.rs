//! What every scheduler loop shares.

use std::time::Duration;

use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Options {
    /// This replica's consumer name (unique per process).
    pub consumer: String,
    pub max_submission_bytes: usize,
    pub reply_ttl_s: u64,
    /// Stream entries pending this long on a dead replica are taken over.
    pub reclaim_after: Duration,
    /// First retry delay after a lost lease; doubles per attempt.
    pub retry_base: Duration,
    /// A worker is live if it heartbeated within this.
    pub live_within: Duration,
    /// How often the reconcile pass runs, and how often it repairs every active run in full.
    pub reconcile_every: Duration,
    pub repair_every: Duration,
    /// Group consumers idle this long with nothing pending are removed (dead processes).
    pub consumer_idle: Duration,
}

#[derive(Debug)]
pub struct Scheduler {
    pub queue: Queue,
    pub store: Store,
    pub options: Options,
    /// Wakes the publisher when tasks became due (promotion, new runs).
    pub publish: Notify,
    /// Cancelled on SIGTERM: every loop returns at its next wait. A token stays cancelled, so a
    /// loop cannot miss it (a broadcast message could be consumed by one wait and missed by
    /// the next).
    pub shutdown: CancellationToken,
}

impl Scheduler {
    /// Waits `delay`, or less if the scheduler shuts down meanwhile; false then.
    pub async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Logs a failed step: a warning, or only a debug line while the service it needed (Redis
    /// or MongoDB) is in a known outage, whose one warning has been written.
    pub fn report(&self, what: &str, e: &anyhow::Error) {
        let redis = e
            .chain()
            .any(|c| c.is::<harmonia_shared::queue::QueueError>());
        let outage = if redis {
            self.queue.outage()
        } else {
            self.store.outage()
        };
        outage.report(what, &format_args!("{e:#}"));
    }

    /// Takes over up to `count` entries of `stream` (read through the scheduler replicas' group)
    /// that another replica left pending past `reclaim_after`: it died or stalled between
    /// reading and acking them. True when it took any: they are then in this replica's backlog.
    /// `what` names the entries in the log ("submissions", "task events").
    pub async fn take_over(&self, stream: &str, what: &str, count: usize) -> bool {
        let (consumer, after) = (&self.options.consumer, self.options.reclaim_after);
        // Both loops read with one group name (`ingest::GROUP` is `SCHEDULER_GROUP`).
        let group = harmonia_shared::queue::SCHEDULER_GROUP;
        match self
            .queue
            .autoclaim(stream, group, consumer, after, count)
            .await
        {
            Ok(entries) if !entries.is_empty() => {
                tracing::info!(
                    count = entries.len(),
                    "reclaimed {what} left by another scheduler"
                );
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!("reclaiming {what}: {e:#}");
                false
            }
        }
    }
}
