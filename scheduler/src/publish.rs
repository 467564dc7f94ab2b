//! The publisher: appends queued tasks whose `publish_due` has passed to their resource class's
//! stream, then clears `publish_due`. Every path that makes a task runnable (new run,
//! promotion, retry backoff, lost lease, Redis flush) goes through here, so there is one way
//! into Redis and it is always re-derivable from MongoDB.

use std::sync::Arc;
use std::time::Duration;

use harmonia_shared::queue::TaskEntry;
use harmonia_shared::resources::ResourceClass;

use crate::context::Scheduler;

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
    let entries: Vec<(ResourceClass, TaskEntry)> = due
        .iter()
        .map(|p| {
            let class = p.class.parse().unwrap_or(ResourceClass::CPU);
            let entry = TaskEntry {
                task_id: p.id.to_hex(),
                attempt: p.attempt,
            };
            (class, entry)
        })
        .collect();
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
