//! Reacts to task events: a success releases downstream tasks (queuing those now ready and
//! appending them to their streams), a final failure skips everything downstream, a cancel
//! cancels it. Events are acked after their effects; redelivery is harmless (every operation
//! is idempotent, and a released task still queued is appended again). Events a dead replica
//! read but never acked are taken over after `reclaim_after`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OnceCell, mpsc};

use harmonia_shared::model::TaskStatus;
use harmonia_shared::queue::{Entry, SCHEDULER_GROUP, TaskEvent};
use mongodb::bson::oid::ObjectId;

use crate::context::Scheduler;
use crate::reader::{GroupReader, InHand};

/// Runs whose events are handled at once.
const CONCURRENCY: usize = 64;

/// Events per read, and how many read events may wait for their run's handling before the
/// stream is read again.
const READ_COUNT: usize = 512;

/// How long a run's events that could not be handled wait before the next try.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One run's handling: the run, its events, and the result (`None`: the scheduler shut down
/// first, the events are left pending).
type Handling =
    Pin<Box<dyn Future<Output = (ObjectId, RunEvents, Option<anyhow::Result<()>>)> + Send>>;

/// The Redis epoch promoted tasks are queued in, read once for the runs started together, and
/// only if one of them promotes (most events, a single task's, have nothing below them).
type Epoch = Arc<OnceCell<Option<String>>>;

pub async fn run(ctx: Arc<Scheduler>) {
    // Events are read while earlier ones are handled, and each run's are handled as soon as
    // its earlier ones are done: an event that comes while other runs' promotions are being
    // written waits for none of them (reading a batch and handling it whole made every event
    // wait for the slowest run read with it). No event of a run is handled before one read
    // earlier, and never two handlings of a run at once.
    let in_hand = Arc::new(InHand::default());
    let (tx, mut rx) = mpsc::channel(1);
    let reader = tokio::spawn(read(ctx.clone(), in_hand.clone(), tx));
    let mut runs = Runs::default();
    let mut open = true;
    loop {
        if ctx.shutdown.is_cancelled() {
            // Left pending: this replica reads them again when it starts, others take them over.
            in_hand.finished(runs.drop_waiting());
        }
        runs.start(&ctx);
        if !open && runs.handling.is_empty() {
            break;
        }
        tokio::select! {
            Some(first) = runs.handling.next() => {
                // Acked together: every handling that is done by now.
                let mut ended = vec![first];
                while let Some(Some(more)) = runs.handling.next().now_or_never() {
                    ended.push(more);
                }
                runs.ended(&ctx, ended, &in_hand).await;
            }
            batch = rx.recv(), if open && runs.reads_on() => match batch {
                Some(entries) => runs.add(&ctx, entries, &in_hand).await,
                None => open = false,
            },
        }
    }
    let _ = reader.await;
}

/// Reads task events for [`run`] until the scheduler shuts down.
async fn read(ctx: Arc<Scheduler>, in_hand: Arc<InHand>, tx: mpsc::Sender<Vec<Entry>>) {
    let stream = ctx.queue.keys().events();
    // Events a dead replica read but never acked: promotion must not wait for repair.
    let every = ctx.options.reclaim_after / 2;
    let mut reader =
        GroupReader::new(stream, "task events", READ_COUNT, every).reading_on(in_hand.clone());
    while let Some(entries) = reader.next(&ctx).await {
        let n = entries.len();
        if tx.send(entries).await.is_err() {
            in_hand.finished(n);
            return;
        }
    }
}

/// What one or more reads' events say about one run.
#[derive(Debug, Default)]
struct RunEvents {
    entries: Vec<String>,
    succeeded: Vec<String>,
    /// The union of the succeeded nodes' downstream nodes.
    downstream: BTreeSet<String>,
    /// Failed or skipped: their downstream is skipped.
    failed: Vec<String>,
    cancelled: Vec<String>,
}

impl RunEvents {
    fn add(&mut self, event: TaskEvent) {
        match event.status {
            TaskStatus::Succeeded => {
                self.succeeded.push(event.node_id);
                self.downstream.extend(event.downstream);
            }
            TaskStatus::Failed | TaskStatus::Skipped => self.failed.push(event.node_id),
            TaskStatus::Cancelled => self.cancelled.push(event.node_id),
            TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Running => {}
        }
    }

    /// Takes in `later`'s events too (handled together: every operation commutes).
    fn merge(&mut self, later: RunEvents) {
        self.entries.extend(later.entries);
        self.succeeded.extend(later.succeeded);
        self.downstream.extend(later.downstream);
        self.failed.extend(later.failed);
        self.cancelled.extend(later.cancelled);
    }
}

/// The events in hand, by run: those being handled, and those read since, which wait for
/// their run's handling to end (or for a free slot) and are then handled together.
#[derive(Default)]
struct Runs {
    waiting: HashMap<ObjectId, RunEvents>,
    /// Runs with waiting events and no handling, in the order they came.
    ready: VecDeque<ObjectId>,
    /// Runs being handled (or waiting to be tried again).
    busy: HashSet<ObjectId>,
    handling: FuturesUnordered<Handling>,
}

impl Runs {
    /// Whether to take the next read's events: every run read so far has started, and not
    /// too many events wait for a run being handled.
    fn reads_on(&self) -> bool {
        let held: usize = self.waiting.values().map(|r| r.entries.len()).sum();
        self.handling.is_empty() || (self.ready.is_empty() && held < READ_COUNT)
    }

    /// Groups a read's events by run; an unreadable event has nothing to do and is acked.
    async fn add(&mut self, ctx: &Scheduler, entries: Vec<Entry>, in_hand: &InHand) {
        let mut unreadable = Vec::new();
        for entry in entries {
            let event: Option<TaskEvent> = entry
                .get::<String>("payload")
                .and_then(|p| serde_json::from_str(&p).ok());
            let run = event
                .as_ref()
                .and_then(|e| ObjectId::parse_str(&e.run_id).ok());
            let (Some(event), Some(run)) = (event, run) else {
                unreadable.push(entry.id);
                continue;
            };
            let waiting = self.waiting.entry(run).or_insert_with(|| {
                if !self.busy.contains(&run) {
                    self.ready.push_back(run);
                }
                RunEvents::default()
            });
            waiting.entries.push(entry.id);
            waiting.add(event);
        }
        ack(ctx, &unreadable).await;
        in_hand.finished(unreadable.len());
    }

    /// Starts the ready runs' handling, up to [`CONCURRENCY`] at once.
    fn start(&mut self, ctx: &Arc<Scheduler>) {
        let epoch = Epoch::default();
        while self.handling.len() < CONCURRENCY {
            let Some(run) = self.ready.pop_front() else {
                return;
            };
            let Some(events) = self.waiting.remove(&run) else {
                continue;
            };
            self.busy.insert(run);
            let attempt = attempt(ctx.clone(), run, events, epoch.clone(), Duration::ZERO);
            self.handling.push(attempt);
        }
    }

    /// Acks what was handled; a run's events that could not be handled are tried again, with
    /// what came for it since, after [`RETRY_AFTER`].
    async fn ended(
        &mut self,
        ctx: &Arc<Scheduler>,
        ended: Vec<(ObjectId, RunEvents, Option<anyhow::Result<()>>)>,
        in_hand: &InHand,
    ) {
        let mut done = Vec::new();
        for (run, mut events, result) in ended {
            match result {
                Some(Ok(())) => done.extend(events.entries),
                Some(Err(e)) if !ctx.shutdown.is_cancelled() => {
                    let what = format!("{} task events not handled yet", events.entries.len());
                    ctx.report(&what, &e);
                    if let Some(later) = self.waiting.remove(&run) {
                        events.merge(later);
                    }
                    let epoch = Epoch::default();
                    let again = attempt(ctx.clone(), run, events, epoch, RETRY_AFTER);
                    self.handling.push(again);
                    continue;
                }
                // Left pending: read again at the next start, or taken over by a replica.
                Some(Err(_)) | None => in_hand.finished(events.entries.len()),
            }
            self.busy.remove(&run);
            if self.waiting.contains_key(&run) {
                self.ready.push_back(run);
            }
        }
        let n = done.len();
        ack(ctx, &done).await;
        in_hand.finished(n);
    }

    /// Forgets the events that wait (the scheduler is shutting down; they stay pending).
    /// Returns how many.
    fn drop_waiting(&mut self) -> usize {
        self.ready.clear();
        self.waiting.drain().map(|(_, r)| r.entries.len()).sum()
    }
}

async fn ack(ctx: &Scheduler, ids: &[String]) {
    let stream = ctx.queue.keys().events();
    if let Err(e) = ctx.queue.ack_delete(&stream, SCHEDULER_GROUP, ids).await {
        tracing::warn!("acking task events: {e:#}");
    }
}

/// Handles one run's events after `delay` (a retry), then settles the run, unless the
/// scheduler shuts down first.
fn attempt(
    ctx: Arc<Scheduler>,
    run_id: ObjectId,
    events: RunEvents,
    epoch: Epoch,
    delay: Duration,
) -> Handling {
    Box::pin(async move {
        if !delay.is_zero() && !ctx.pause(delay).await {
            return (run_id, events, None);
        }
        let handled = handle(&ctx, run_id, &events, &epoch).await;
        // A run whose last tasks just ended is settled once per handling, not per task.
        if let Err(e) = ctx.store.settle_run(run_id).await {
            let what = format!("settling run {run_id}");
            ctx.store.outage().report(&what, &format_args!("{e:#}"));
        }
        (run_id, events, Some(handled))
    })
}

/// Applies one run's events: successes release their downstream tasks, final failures skip
/// everything downstream, cancels cancel it.
async fn handle(
    ctx: &Scheduler,
    run_id: ObjectId,
    events: &RunEvents,
    epoch: &Epoch,
) -> anyhow::Result<()> {
    let tasks = ctx.store.tasks();
    if !events.succeeded.is_empty() && !events.downstream.is_empty() {
        // Promoted tasks are queued as published in this epoch (see `crate::publish::append`).
        let epoch = epoch
            .get_or_try_init(|| ctx.queue.current_epoch())
            .await
            .map_err(|e| anyhow::Error::from(e).context("reading the Redis epoch"))?;
        let downstream: Vec<String> = events.downstream.iter().cloned().collect();
        let ready = tasks
            .release_downstream(run_id, &events.succeeded, &downstream, epoch.as_deref())
            .await?;
        crate::publish::append(&ctx.queue, &ready).await?;
    }
    if !events.failed.is_empty() {
        tasks
            .close_downstream(run_id, &events.failed, TaskStatus::Skipped)
            .await?;
    }
    if !events.cancelled.is_empty() {
        tasks
            .close_downstream(run_id, &events.cancelled, TaskStatus::Cancelled)
            .await?;
    }
    Ok(())
}
