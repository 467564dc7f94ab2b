//! What every scheduler loop shares.

use std::time::Duration;

use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use tokio::sync::Notify;

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
}

#[derive(Debug)]
pub struct Scheduler {
    pub queue: Queue,
    pub store: Store,
    pub options: Options,
    /// Wakes the publisher when tasks became due (promotion, new runs).
    pub publish: Notify,
}
