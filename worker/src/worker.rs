//! What the worker's loops share.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use harmonia_shared::model::Progress;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use tokio_util::sync::CancellationToken;

use crate::devices::Devices;

#[derive(Debug, Clone)]
pub struct Options {
    pub lease: Duration,
    pub heartbeat: Duration,
    /// How long in-flight tasks may run on after SIGTERM before they are handed back.
    pub grace: Duration,
    pub retry_base: Duration,
    /// Task stream entries idle this long in a dead worker's pending list are taken over.
    pub reclaim_after: Duration,
    /// Model affinity: hint streams first, a head start for holders.
    pub affinity: crate::affinity::Settings,
    /// How long an attempt on a deferred claim runs before the claim is written (zero: every
    /// claim is written before its attempt starts).
    pub claim_after: Duration,
}

/// One attempt in flight, by lease token.
#[derive(Debug)]
pub struct Inflight {
    pub task_id: String,
    /// A child of [`Shutdown::hand_back`]: cancelled by a user's cancel, a lost lease, or the
    /// end of the grace period.
    pub cancel: CancellationToken,
    pub progress: tokio::sync::watch::Receiver<Option<Progress>>,
    /// Set once the attempt has run and its outcome is with the writer: its lease is still
    /// renewed until the write lands, but nothing is left to stop.
    pub ended: std::sync::atomic::AtomicBool,
    /// Its claim: written (heartbeats renew the lease), or deferred (heartbeats keep its
    /// stream entry pending for this worker).
    pub hold: std::sync::Arc<crate::hold::Hold>,
}

/// How a worker stops, one token per step, each cancelled once and for good (so no wait can
/// miss it): `drain` on SIGTERM (no new claims; attempts run on), `hand_back` when the grace
/// period is over (every attempt's token, a child of it, is cancelled, even one registered
/// after, and its task is handed back), `stop` once nothing is in flight (heartbeats and the
/// cancel listener end).
#[derive(Debug, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub hand_back: CancellationToken,
    pub stop: CancellationToken,
}

#[derive(Debug)]
pub struct Worker {
    pub id: String,
    pub queue: Queue,
    pub store: Store,
    pub devices: Devices,
    pub env: std::sync::Arc<crate::executor::Env>,
    pub options: Options,
    pub inflight: Mutex<HashMap<String, std::sync::Arc<Inflight>>>,
    /// Where attempts record their outcomes (batched writes).
    pub outcomes: crate::outcomes::Outcomes,
    pub shutdown: Shutdown,
    /// Runs this worker already marked started (bounded; forgetting one costs one no-op write).
    pub started_runs: Mutex<std::collections::VecDeque<mongodb::bson::oid::ObjectId>>,
}

impl Worker {
    pub fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::sync::Arc<Inflight>>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_draining(&self) -> bool {
        self.shutdown.drain.is_cancelled()
    }

    /// True the first time this worker starts a task of `run` (recently): the run's
    /// `started_at` needs writing only then.
    pub fn first_start_of(&self, run: mongodb::bson::oid::ObjectId) -> bool {
        let mut seen = self.started_runs.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&run) {
            return false;
        }
        if seen.len() >= 256 {
            seen.pop_front();
        }
        seen.push_back(run);
        true
    }

    /// Stops the attempts running the given tasks (a cancel signal).
    pub fn cancel_tasks(&self, task_ids: &[&str]) {
        for attempt in self.inflight().values() {
            if task_ids.contains(&attempt.task_id.as_str()) {
                tracing::info!(task = %attempt.task_id, "cancel signal: stopping the attempt");
                attempt.cancel.cancel();
            }
        }
    }
}
