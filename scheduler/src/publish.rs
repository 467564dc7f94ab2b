//! The publisher: appends queued tasks whose `publish_due` has passed to their resource class's
//! stream, then clears `publish_due`. Retry backoffs, lost leases, a Redis flush and the repair
//! pass make tasks runnable this way. A new run's ready tasks and promoted ones are appended
//! by whoever queued them ([`append`]), before the submission or event that caused it is acked:
//! the queued state and the epoch are written with the queuing itself, and a redelivery appends
//! them again. Either way what is in Redis is re-derivable from MongoDB.

use std::sync::Arc;
use std::time::Duration;

use harmonia_shared::queue::{Queue, QueueError, TaskEntry};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::Published;

use crate::context::Scheduler;

/// Tasks published per pass, and entries appended per Redis transaction.
const BATCH: i64 = 1000;

pub async fn run(ctx: Arc<Scheduler>) {
    loop {
        match publish_due(&ctx).await {
            // A full batch: there is probably more, go again at once.
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(e) => ctx.report("publishing due tasks", &e),
        }
        tokio::select! {
            () = ctx.publish.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// One publishing pass; returns how many tasks it appended.
pub async fn publish_due(ctx: &Scheduler) -> anyhow::Result<usize> {
    let due = ctx.store.tasks().due_for_publish(BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let entries = entries(&due);
    // Streams first, then the marks: a crash in between re-publishes, and a duplicate entry
    // is harmless because claims are fenced on the attempt. The marks carry the Redis epoch
    // the entries were written in: if Redis loses them before (or after) the marks land,
    // reconcile sees the older epoch and publishes again.
    let epoch = ctx.queue.publish(&entries).await?;
    ctx.store
        .tasks()
        .mark_published(&due, epoch.as_deref())
        .await?;
    Ok(due.len())
}

/// The stream entries of `tasks`, by resource class.
fn entries(tasks: &[Published]) -> Vec<(ResourceClass, TaskEntry)> {
    tasks
        .iter()
        .map(|p| {
            let class = p.class.parse().unwrap_or(ResourceClass::CPU);
            let entry = TaskEntry {
                task_id: p.id.to_hex(),
                attempt: p.attempt,
                model: p.model.clone(),
                // Stamped as it is appended: the task is queued in MongoDB by then.
                ready_us: None,
                // A task that names a model is claimed in MongoDB, which returns it.
                spec: p
                    .task
                    .as_deref()
                    .filter(|t| t.model.is_none())
                    .and_then(TaskEntry::spec_of),
            };
            (class, entry)
        })
        .collect()
}

/// Appends tasks that were queued already marked as published (a new run's ready tasks,
/// promoted ones) to their streams, a transaction per [`BATCH`]. The epoch they go in is not
/// recorded again: if it is not the one the caller read before queuing them, reconcile sees
/// the difference and publishes them once more.
pub async fn append(queue: &Queue, tasks: &[Published]) -> Result<(), QueueError> {
    for chunk in tasks.chunks(BATCH as usize) {
        queue.publish(&entries(chunk)).await?;
    }
    Ok(())
}
