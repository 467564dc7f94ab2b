//! The claim loop: read entries only from streams whose resource class fits the devices free
//! right now, win the claim in MongoDB, then start the attempt.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonia_shared::queue::{Entry, TaskEntry, WORKERS_GROUP};
use harmonia_shared::resources::ResourceClass;
use mongodb::bson::oid::ObjectId;

use crate::devices::Alloc;
use crate::execute::execute;
use crate::worker::Worker;

const CLASS_REFRESH: Duration = Duration::from_millis(500);

/// Claims and starts tasks until the worker drains.
pub async fn run(worker: Arc<Worker>) {
    let mut classes: Vec<ResourceClass> = Vec::new();
    let mut classes_at: Option<Instant> = None;
    let mut grouped: HashSet<ResourceClass> = HashSet::new();
    let mut reclaimed_at = Instant::now();
    while !worker.is_draining() {
        if classes_at.is_none_or(|t| t.elapsed() >= CLASS_REFRESH) {
            match worker.queue.classes().await {
                Ok(c) => classes = c,
                Err(e) => worker
                    .queue
                    .outage()
                    .report("listing task classes", &format_args!("{e:#}")),
            }
            classes_at = Some(Instant::now());
        }
        let (fitting, free_cpu) = worker.devices.fitting(&classes);
        if fitting.is_empty() {
            tokio::select! {
                () = worker.devices.released.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = worker.shutdown.drain.cancelled() => {}
            }
            continue;
        }
        for class in &fitting {
            if !grouped.contains(class) {
                let stream = worker.queue.keys().task_stream(*class);
                match worker.queue.ensure_group(&stream, WORKERS_GROUP).await {
                    Ok(()) => {
                        grouped.insert(*class);
                    }
                    Err(e) => tracing::warn!(%stream, "creating consumer group: {e:#}"),
                }
            }
        }
        if reclaimed_at.elapsed() >= worker.options.reclaim_after / 2 {
            reclaim(&worker, &fitting).await;
            reclaimed_at = Instant::now();
        }
        // COUNT is per stream; only the CPU stream can fill several slots at once.
        let count = if fitting.contains(&ResourceClass::CPU) {
            free_cpu.max(1) as usize
        } else {
            1
        };
        match worker.queue.read_tasks(&worker.id, &fitting, count).await {
            Ok(batches) => {
                // Claims are journaled MongoDB writes: make them concurrently. Devices are
                // taken synchronously first, so concurrency never over-commits them.
                for (class, entries) in batches {
                    for entry in entries {
                        match worker.devices.try_take(class) {
                            Some(alloc) => {
                                tokio::spawn(start(worker.clone(), class, entry, alloc));
                            }
                            None => hand_back(&worker, class, &entry).await,
                        }
                    }
                }
            }
            Err(e) => {
                if e.is_no_group() {
                    // Redis lost the stream (flush/restart): recreate groups next round.
                    grouped.clear();
                } else {
                    let what = "reading task streams";
                    worker.queue.outage().report(what, &format_args!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Takes over entries that sat unacked past `reclaim_after` in the pending list of a worker
/// that died between reading and claiming them.
async fn reclaim(worker: &Arc<Worker>, classes: &[ResourceClass]) {
    for class in classes {
        let stream = worker.queue.keys().task_stream(*class);
        let claimed = worker.queue.autoclaim(
            &stream,
            WORKERS_GROUP,
            &worker.id,
            worker.options.reclaim_after,
            16,
        );
        match claimed.await {
            Ok(entries) => {
                for entry in entries {
                    tracing::info!(entry = %entry.id, "took over a task entry a dead worker read");
                    match worker.devices.try_take(*class) {
                        Some(alloc) => {
                            tokio::spawn(start(worker.clone(), *class, entry, alloc));
                        }
                        None => hand_back(worker, *class, &entry).await,
                    }
                }
            }
            Err(e) => tracing::debug!(%stream, "XAUTOCLAIM: {e:#}"),
        }
    }
}

/// Returns an entry this worker read but cannot start now to every other worker.
async fn hand_back(worker: &Worker, class: ResourceClass, entry: &Entry) {
    let Some(task) = TaskEntry::of(entry) else {
        return;
    };
    if let Err(e) = worker.queue.hand_back(class, &entry.id, &task).await {
        tracing::warn!("handing back a task entry: {e:#}");
    }
}

/// Claims one entry in MongoDB with the devices already taken for it, and runs it; on a lost
/// claim the devices go back.
async fn start(worker: Arc<Worker>, class: ResourceClass, entry: Entry, alloc: Alloc) {
    let stream = worker.queue.keys().task_stream(class);
    let task = TaskEntry::of(&entry);
    let claim = match task
        .as_ref()
        .map(|t| (ObjectId::parse_str(&t.task_id), t.attempt))
    {
        Some((Ok(id), attempt)) => {
            worker
                .store
                .tasks()
                .claim(
                    id,
                    attempt,
                    &worker.id,
                    &alloc.gpu_indices(),
                    worker.options.lease,
                )
                .await
        }
        _ => Ok(None), // unreadable entry: drop it
    };
    let claim = match claim {
        Ok(claim) => claim,
        Err(e) => {
            // MongoDB did not answer (an outage, a stall): the claim may or may not have
            // landed. The entry goes back to every worker rather than being dropped, which
            // would leave the task queued with no entry; if the claim did land, the copy is
            // stale (the attempt moved on) and the lease expiry re-queues the task.
            let what = format!("claiming entry {} (handed back)", entry.id);
            worker.store.outage().report(&what, &format_args!("{e:#}"));
            hand_back(&worker, class, &entry).await;
            worker.devices.release(alloc);
            return;
        }
    };
    // MongoDB now holds the lease (or the entry was stale): the entry has done its job.
    let ids = [entry.id.clone()];
    if let Err(e) = worker.queue.ack_delete(&stream, WORKERS_GROUP, &ids).await {
        tracing::warn!(%stream, "acking task entry: {e:#}");
    }
    match claim {
        Some(claim) => execute(worker, claim, alloc).await,
        None => worker.devices.release(alloc),
    }
}
