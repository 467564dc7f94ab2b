//! Group commit of attempt outcomes: each worker records the outcomes of its attempts in
//! batched, fenced MongoDB writes instead of one journaled write per task.
//!
//! An attempt hands its outcome to the writer, gives its devices back (the next task may start
//! while the write is under way), and waits for the answer; the writer takes
//! whatever has gathered (up to `batch`), writes it as one `update` command, announces the
//! final ones to the scheduler in one Redis round trip, and answers each attempt. While a write
//! is in flight the next batch gathers, so an idle worker writes at once (no added latency) and
//! a busy one writes fewer, larger batches. Nothing is acknowledged before MongoDB has it:
//! the lease stays live (the attempt is still in flight, so heartbeats extend it) until the
//! write lands; on a deferred claim ([`crate::hold`]) the write carries the claim too, and the
//! stream entry stays pending for this worker until then. A worker killed while outcomes wait
//! here loses only unacknowledged work: the leases lapse and the tasks run again.
//!
//! The outcomes waiting are bounded ([`Outcomes::room`]): a worker whose writes fall behind
//! (a slow mongod) stops claiming until they catch up, rather than piling up attempts whose
//! results exist only in its memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use harmonia_shared::model::{RunTask, TaskError};
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use harmonia_shared::store::tasks::{Ending, Outcome};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::hold::{Unwritten, entries_by_stream};

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
    /// The attempt's claim when it was never written: the outcome writes it, and its entry is
    /// acked after the write.
    deferred: Option<Unwritten>,
    done: oneshot::Sender<bool>,
}

/// The handle attempts record their outcomes through.
#[derive(Debug, Clone)]
pub struct Outcomes {
    tx: mpsc::UnboundedSender<Pending>,
    backlog: Arc<Backlog>,
}

/// Outcomes handed to the writer and not yet answered.
#[derive(Debug)]
struct Backlog {
    waiting: AtomicUsize,
    /// At most this many wait: what the writer takes in one round (a full batch per write in
    /// flight).
    limit: usize,
    /// Signalled whenever an outcome is answered.
    answered: Notify,
}

impl Backlog {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            limit,
            answered: Notify::new(),
        })
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Returns once `done(waiting)` holds.
    async fn until(&self, done: impl Fn(usize) -> bool) {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check, so an answer between the check and the wait wakes it.
            answered.as_mut().enable();
            if done(self.waiting()) {
                return;
            }
            answered.await;
        }
    }

    async fn room(&self) {
        self.until(|waiting| waiting < self.limit).await;
    }
}

/// An outcome handed to the writer: await it for the answer. It counts as waiting until it is
/// dropped.
#[derive(Debug)]
pub struct Recording {
    answer: oneshot::Receiver<bool>,
    backlog: Arc<Backlog>,
}

impl Recording {
    fn new(backlog: &Arc<Backlog>, answer: oneshot::Receiver<bool>) -> Self {
        backlog.waiting.fetch_add(1, Ordering::AcqRel);
        Self {
            answer,
            backlog: backlog.clone(),
        }
    }

    /// True once the outcome is durable in MongoDB (and announced when final); false: the
    /// lease was lost and nothing was recorded.
    pub async fn recorded(mut self) -> bool {
        (&mut self.answer).await.unwrap_or(false)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.backlog.waiting.fetch_sub(1, Ordering::AcqRel);
        self.backlog.answered.notify_waiters();
    }
}

impl Outcomes {
    /// Starts the writer. `drain` cuts a linger short (a stopping worker writes at once).
    pub fn start(store: Store, queue: Queue, limits: Limits, drain: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, queue, limits, drain, rx));
        let backlog = Backlog::new(limits.batch * WRITES_IN_FLIGHT);
        Self { tx, backlog }
    }

    /// Hands the writer how the attempt of `task` holding `lease_token` ended. It is recorded
    /// once it is durable in MongoDB, and the scheduler told when the task reached a final
    /// state: await the answer on the returned [`Recording`].
    pub fn record(
        &self,
        task: &RunTask,
        lease_token: &str,
        outcome: Outcome,
        deferred: Option<Unwritten>,
    ) -> Recording {
        tracing::debug!(task = %task.id, "outcome waiting for its write");
        let (done, answer) = oneshot::channel();
        let recording = Recording::new(&self.backlog, answer);
        let pending = Pending {
            after: after(task, &outcome),
            lease_token: lease_token.to_owned(),
            outcome,
            deferred,
            done,
        };
        // If the writer is gone (the runtime is shutting down) the answer reads false.
        let _ = self.tx.send(pending);
        recording
    }

    /// Returns once fewer outcomes wait than the writer takes in one round (a full batch per
    /// write in flight).
    pub async fn room(&self) {
        self.backlog.room().await;
    }

    /// Returns once every outcome handed over is answered.
    pub async fn settled(&self) {
        self.backlog.until(|waiting| waiting == 0).await;
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
            deferred: p.deferred.as_ref().map(|u| &u.claim),
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
            if p.deferred.is_some() {
                tracing::warn!(task = %t.id, lease_token = %p.lease_token,
                    "outcome refused: the task moved on (cancelled, or taken by another worker)");
            } else {
                tracing::warn!(task = %t.id, lease_token = %p.lease_token,
                    "outcome refused: this worker lost the task's lease");
            }
            continue;
        }
        tracing::info!(task = %t.id, node = %t.node_id, status = t.status.as_str(),
            error = t.error.as_ref().map(|e| e.message.as_str()), "task finished");
        if t.status.is_terminal() {
            finals.push(t.clone());
        }
    }
    // The scheduler releases the downstream tasks and settles the run when this was its last;
    // the deferred claims' entries (until now pending for this worker, so a worker that died
    // first left them to be taken over) are acked in the same round trip.
    let entries = entries_by_stream(batch.iter().filter_map(|p| p.deferred.as_ref()));
    if let Err(e) = queue.announce_and_ack(&finals, &entries).await {
        // The scheduler's repair pass finds what these events would have told it; entries
        // left pending are taken over and acked (their tasks moved on).
        tracing::warn!(count = finals.len(), "announcing task outcomes: {e:#}");
    }
    for (p, ok) in batch.into_iter().zip(recorded) {
        let _ = p.done.send(ok);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn claims_wait_for_room_while_the_backlog_is_full_and_resume_when_an_outcome_is_answered()
    {
        let backlog = Backlog::new(2);
        let (_, first) = oneshot::channel();
        let first = Recording::new(&backlog, first);
        assert!(backlog.room().now_or_never().is_some(), "one of two waits");
        let (done, second) = oneshot::channel();
        let second = Recording::new(&backlog, second);
        assert!(backlog.room().now_or_never().is_none(), "full");

        let room = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room().await }
        });
        done.send(true).unwrap();
        assert!(second.recorded().await);
        room.await.unwrap();
        assert_eq!(backlog.waiting(), 1);
        drop(first);
        assert_eq!(backlog.waiting(), 0);
    }

    #[tokio::test]
    async fn settled_returns_only_once_every_outcome_is_answered() {
        let backlog = Backlog::new(8);
        backlog.until(|w| w == 0).now_or_never().unwrap();
        let (done, answer) = oneshot::channel();
        let recording = Recording::new(&backlog, answer);
        let settled = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.until(|w| w == 0).await }
        });
        tokio::task::yield_now().await;
        assert!(!settled.is_finished());
        drop(done); // the writer went away: the answer reads false
        assert!(!recording.recorded().await);
        settled.await.unwrap();
    }
}
