//! Reacts to task events: a success releases downstream tasks (queuing those now ready and
//! appending them to their streams), a final failure skips everything downstream, a cancel
//! cancels it. Events are acked after their effects; redelivery is harmless (every operation
//! is idempotent, and a released task still queued is appended again). Events a dead replica
//! read but never acked are taken over after `reclaim_after`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;

use harmonia_shared::model::TaskStatus;
use harmonia_shared::queue::{Entry, SCHEDULER_GROUP, TaskEvent};
use mongodb::bson::oid::ObjectId;

use crate::context::Scheduler;
use crate::reader::GroupReader;

/// Runs whose events are handled at once.
const CONCURRENCY: usize = 64;

pub async fn run(ctx: Arc<Scheduler>) {
    let stream = ctx.queue.keys().events();
    // Events a dead replica read but never acked: promotion must not wait for repair.
    let every = ctx.options.reclaim_after / 2;
    let mut reader = GroupReader::new(stream, "task events", 512, every);
    while let Some(entries) = reader.next(&ctx).await {
        if !handle_batch(&ctx, entries).await {
            reader.retry_pending();
        }
    }
}

/// What one read's events say about one run.
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
}

/// Handles one read's events, a few writes per run however many of its tasks ended, settles
/// those runs, and acks what was handled. False when some are left pending for another try.
async fn handle_batch(ctx: &Arc<Scheduler>, entries: Vec<Entry>) -> bool {
    let mut runs: HashMap<ObjectId, RunEvents> = HashMap::new();
    let mut done = Vec::with_capacity(entries.len());
    for entry in entries {
        let event: Option<TaskEvent> = entry
            .get::<String>("payload")
            .and_then(|p| serde_json::from_str(&p).ok());
        let run = event
            .as_ref()
            .and_then(|e| ObjectId::parse_str(&e.run_id).ok());
        match (event, run) {
            (Some(event), Some(run)) => {
                let run = runs.entry(run).or_default();
                run.entries.push(entry.id);
                run.add(event);
            }
            _ => done.push(entry.id), // unreadable: nothing to do, drop it
        }
    }
    // Promoted tasks are queued as published in this epoch (see `crate::publish::append`);
    // read only when a success has tasks below it (most events, a single task's, have none).
    let promotes = runs.values().any(|r| !r.downstream.is_empty());
    let epoch = if promotes {
        match ctx.queue.current_epoch().await {
            Ok(epoch) => epoch,
            Err(e) => {
                ctx.report("reading the Redis epoch", &e.into());
                return false;
            }
        }
    } else {
        None
    };
    // Every handler is idempotent and commutes with the others ($pull, then queue what
    // waits on nothing), so runs are handled concurrently.
    let results: Vec<(Vec<String>, anyhow::Result<()>)> = futures::stream::iter(runs)
        .map(|(run_id, events)| {
            let (ctx, epoch) = (ctx.clone(), epoch.clone());
            async move {
                let handled = handle(&ctx, run_id, &events, epoch.as_deref()).await;
                // A run whose last tasks just ended is settled once per read, not per task.
                if let Err(e) = ctx.store.settle_run(run_id).await {
                    let what = format!("settling run {run_id}");
                    ctx.store.outage().report(&what, &format_args!("{e:#}"));
                }
                (events.entries, handled)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut all = true;
    for (ids, result) in results {
        match result {
            Ok(()) => done.extend(ids),
            Err(e) => {
                // Left pending: the backlog pass handles them again.
                let what = format!("{} task events not handled yet", ids.len());
                ctx.store.outage().report(&what, &format_args!("{e:#}"));
                all = false;
            }
        }
    }
    let stream = ctx.queue.keys().events();
    if let Err(e) = ctx.queue.ack_delete(&stream, SCHEDULER_GROUP, &done).await {
        tracing::warn!("acking task events: {e:#}");
    }
    all
}

/// Applies one run's events: successes release their downstream tasks, final failures skip
/// everything downstream, cancels cancel it.
async fn handle(
    ctx: &Scheduler,
    run_id: ObjectId,
    events: &RunEvents,
    epoch: Option<&str>,
) -> anyhow::Result<()> {
    let tasks = ctx.store.tasks();
    if !events.succeeded.is_empty() {
        let downstream: Vec<String> = events.downstream.iter().cloned().collect();
        let ready = tasks
            .release_downstream(run_id, &events.succeeded, &downstream, epoch)
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
