//! Group commit of attempt outcomes: each worker records the outcomes of its attempts in
//! batched, fenced MongoDB writes instead of one journaled write per task.
//!
//! An attempt hands its outcome to the writer and waits for the answer; the writer takes
//! whatever has gathered (up to `batch`), writes it as one `update` command, announces the
//! final ones to the scheduler in one Redis round trip, and answers each attempt. While a write
//! is in flight the next batch gathers, so an idle worker writes at once (no added latency) and
//! a busy one writes fewer, larger batches. Nothing is acknowledged before MongoDB has it:
//! the stream entry was acked at claim time and the lease stays live (the attempt is still in
//! flight, so heartbeats extend it) until the write lands. A worker killed while outcomes wait
//! here loses only unacknowledged work: the leases lapse and the tasks run again.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use harmonia_shared::model::{RunTask, TaskError};
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use harmonia_shared::store::tasks::{Ending, Outcome};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Batched writes in flight at once: MongoDB commits concurrent batches in one journal flush.
const WRITES_IN_FLIGHT: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Outcomes per write at most.
    pub batch: usize,
    /// How long the first outcome of a batch waits for others (zero: none; a write goes out
    /// as soon as one of the [`WRITES_IN_FLIGHT`] is free).
    pub linger: Duration,
}

/// An outcome waiting to be written.
struct Pending {
    /// The task as it is once the outcome is recorded (what the scheduler is told).
    after: RunTask,
    lease_token: String,
    outcome: Outcome,
    done: oneshot::Sender<bool>,
}

/// The handle attempts record their outcomes through.
#[derive(Debug, Clone)]
pub struct Outcomes {
    tx: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("task", &self.after.id)
            .finish()
    }
}

impl Outcomes {
    /// Starts the writer. `drain` cuts a linger short (a stopping worker writes at once).
    pub fn start(store: Store, queue: Queue, limits: Limits, drain: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, queue, limits, drain, rx));
        Self { tx }
    }

    /// Records how the attempt of `task` holding `lease_token` ended, once it is durable in
    /// MongoDB, and tells the scheduler when the task reached a final state. False: the lease
    /// was lost and nothing was recorded.
    pub async fn record(&self, task: &RunTask, lease_token: &str, outcome: Outcome) -> bool {
        tracing::debug!(task = %task.id, "outcome waiting for its write");
        let (done, answer) = oneshot::channel();
        let pending = Pending {
            after: after(task, &outcome),
            lease_token: lease_token.to_owned(),
            outcome,
            done,
        };
        if self.tx.send(pending).is_err() {
            return false; // the writer is gone: the runtime is shutting down
        }
        answer.await.unwrap_or(false)
    }
}

/// The task as the outcome leaves it (for the event the scheduler gets).
fn after(task: &RunTask, outcome: &Outcome) -> RunTask {
    let mut after = task.clone();
    after.status = outcome.status();
    after.error = match outcome {
        Outcome::Failed { error, .. } => Some(error.clone()),
        Outcome::Cancelled => Some(TaskError {
            message: "cancelled".into(),
            retryable: false,
        }),
        Outcome::Succeeded { .. } | Outcome::HandedBack => None,
    };
    after
}

async fn writer(
    store: Store,
    queue: Queue,
    limits: Limits,
    drain: CancellationToken,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return; // every handle is gone
        };
        let mut batch = vec![first];
        if !limits.linger.is_zero() {
            let linger = tokio::time::sleep(limits.linger);
            tokio::pin!(linger);
            while batch.len() < limits.batch {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(p) => batch.push(p),
                        None => break,
                    },
                    () = &mut linger => break,
                    () = drain.cancelled() => break,
                }
            }
        }
        while batch.len() < limits.batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (store, queue) = (store.clone(), queue.clone());
        tokio::spawn(async move {
            flush(&store, &queue, batch).await;
            drop(slot);
        });
    }
}

/// Writes one batch (retrying through any outage: MongoDB is the truth, an outcome is never
/// dropped), announces the final outcomes, and answers each attempt.
async fn flush(store: &Store, queue: &Queue, batch: Vec<Pending>) {
    let endings: Vec<Ending<'_>> = batch
        .iter()
        .map(|p| Ending {
            id: p.after.id,
            lease_token: &p.lease_token,
            outcome: &p.outcome,
        })
        .collect();
    let forever = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let tasks = store.tasks();
    let write = || tasks.finish_many(&endings);
    let recorded = write
        .retry(forever)
        .sleep(tokio::time::sleep)
        .notify(|e, _| {
            let what = "recording task outcomes (will retry)";
            store.outage().report(what, &format_args!("{e:#}"));
        })
        .await
        .unwrap_or_else(|_| vec![false; batch.len()]); // not reached: the retries never end
    drop(endings);
    let mut finals = Vec::new();
    for (p, &ok) in batch.iter().zip(&recorded) {
        let t = &p.after;
        if !ok {
            tracing::warn!(task = %t.id, lease_token = %p.lease_token,
                "outcome refused: this worker lost the task's lease");
            continue;
        }
        tracing::info!(task = %t.id, node = %t.node_id, status = t.status.as_str(),
            error = t.error.as_ref().map(|e| e.message.as_str()), "task finished");
        if t.status.is_terminal() {
            finals.push(t.clone());
        }
    }
    // The scheduler releases the downstream tasks and settles the run when this was its last.
    if let Err(e) = queue.announce_all(&finals).await {
        // The scheduler's repair pass finds what these events would have told it.
        tracing::warn!(count = finals.len(), "announcing task outcomes: {e:#}");
    }
    for (p, ok) in batch.into_iter().zip(recorded) {
        let _ = p.done.send(ok);
    }
}
