//! Reacts to task events: a success releases downstream tasks (queuing those now ready), a
//! final failure skips everything downstream, a cancel cancels it. Events are acked after
//! their effects; redelivery is harmless (every operation is idempotent). Events a dead replica
//! read but never acked are taken over after `reclaim_after`.

use std::sync::Arc;

use futures::StreamExt;

use harmonia_shared::model::TaskStatus;
use harmonia_shared::queue::{Entry, SCHEDULER_GROUP, TaskEvent};
use mongodb::bson::oid::ObjectId;

use crate::context::Scheduler;
use crate::reader::GroupReader;

/// Events handled at once.
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

/// Handles one read's events, settles their runs, and acks what was handled. False when some
/// are left pending for another try.
async fn handle_batch(ctx: &Arc<Scheduler>, entries: Vec<Entry>) -> bool {
    // Every handler is idempotent and commutes with the others ($pull, then queue what
    // waits on nothing), so events are handled concurrently.
    let results: Vec<(String, anyhow::Result<()>, Option<ObjectId>)> =
        futures::stream::iter(entries)
            .map(|entry| {
                let ctx = ctx.clone();
                async move {
                    let event: Option<TaskEvent> = entry
                        .get::<String>("payload")
                        .and_then(|p| serde_json::from_str(&p).ok());
                    let handled = match &event {
                        Some(event) => handle(&ctx, event).await,
                        None => Ok(()), // unreadable: nothing to do, drop it
                    };
                    let run = event.and_then(|e| ObjectId::parse_str(&e.run_id).ok());
                    (entry.id, handled, run)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    // A run whose last tasks just ended is settled once per batch, not once per task.
    let runs: std::collections::HashSet<ObjectId> =
        results.iter().filter_map(|(_, _, run)| *run).collect();
    for run_id in runs {
        if let Err(e) = ctx.store.settle_run(run_id).await {
            let what = format!("settling run {run_id}");
            ctx.store.outage().report(&what, &format_args!("{e:#}"));
        }
    }
    let mut all = true;
    let mut done = Vec::with_capacity(results.len());
    for (id, result, _) in results {
        match result {
            Ok(()) => done.push(id),
            Err(e) => {
                // Left pending: the backlog pass handles it again.
                let what = format!("task event {id} not handled yet");
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

pub async fn handle(ctx: &Scheduler, event: &TaskEvent) -> anyhow::Result<()> {
    let run_id = ObjectId::parse_str(&event.run_id)?;
    let tasks = ctx.store.tasks();
    match event.status {
        TaskStatus::Succeeded => {
            let queued = tasks
                .release_downstream(run_id, &event.node_id, &event.downstream)
                .await?;
            if queued > 0 {
                ctx.publish.notify_one();
            }
        }
        status @ (TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Skipped) => {
            let closing = if status == TaskStatus::Cancelled {
                TaskStatus::Cancelled
            } else {
                TaskStatus::Skipped
            };
            tasks
                .close_downstream(run_id, std::slice::from_ref(&event.node_id), closing)
                .await?;
        }
        TaskStatus::Pending | TaskStatus::Queued | TaskStatus::Running => {}
    }
    Ok(())
}
