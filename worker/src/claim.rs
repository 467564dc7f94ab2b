//! The claim loop: read entries only from streams whose resource class fits the devices free
//! right now, win the claim in MongoDB, then start the attempt.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonia_shared::queue::{Entry, TaskEntry, WORKERS_GROUP};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::ClaimRequest;
use mongodb::bson::oid::ObjectId;

use crate::devices::Alloc;
use crate::execute::execute;
use crate::worker::Worker;

const CLASS_REFRESH: Duration = Duration::from_millis(500);
/// How long a full worker, once something is released, waits before it reads again.
const BURST: Duration = Duration::from_millis(1);

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
        // Outcomes behind on their writes (a slow mongod): claim nothing more until they catch up.
        tokio::select! {
            () = worker.outcomes.room() => {}
            () = worker.shutdown.drain.cancelled() => continue,
        }
        let (fitting, free_cpu) = worker.devices.fitting(&classes);
        if fitting.is_empty() {
            tokio::select! {
                () = worker.devices.released.notified() => {
                    // Releases come in bursts (a claim's attempts ending together): let the
                    // rest of the burst land so the next read claims them in one write.
                    tokio::time::sleep(BURST).await;
                }
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
                // Devices are taken synchronously first, so claims in flight never over-commit
                // them; the read's claims are one MongoDB write, made while the loop reads on.
                let mut taken = Vec::new();
                for (class, entries) in batches {
                    for entry in entries {
                        match worker.devices.try_take(class) {
                            Some(alloc) => taken.push((class, entry, alloc)),
                            None => hand_back(&worker, class, &entry).await,
                        }
                    }
                }
                if !taken.is_empty() {
                    tokio::spawn(start(worker.clone(), taken));
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
                let mut taken = Vec::new();
                for entry in entries {
                    tracing::info!(entry = %entry.id, "took over a task entry a dead worker read");
                    match worker.devices.try_take(*class) {
                        Some(alloc) => taken.push((*class, entry, alloc)),
                        None => hand_back(worker, *class, &entry).await,
                    }
                }
                if !taken.is_empty() {
                    tokio::spawn(start(worker.clone(), taken));
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

/// Claims entries in MongoDB (one write) with the devices already taken for each, and runs
/// the attempts won; the devices of a lost claim go back.
async fn start(worker: Arc<Worker>, taken: Vec<(ResourceClass, Entry, Alloc)>) {
    let mut requests = Vec::with_capacity(taken.len());
    let mut claimable = Vec::with_capacity(taken.len());
    let mut acks: HashMap<ResourceClass, Vec<String>> = HashMap::new();
    for (class, entry, alloc) in taken {
        let task = TaskEntry::of(&entry);
        match task.and_then(|t| Some((ObjectId::parse_str(&t.task_id).ok()?, t.attempt))) {
            Some((id, attempt)) => {
                let gpu_indices = alloc.gpu_indices();
                requests.push(ClaimRequest {
                    id,
                    attempt,
                    gpu_indices,
                });
                claimable.push((class, entry, alloc));
            }
            None => {
                // Unreadable entry: drop it.
                acks.entry(class).or_default().push(entry.id);
                worker.devices.release(alloc);
            }
        }
    }
    let claims = if requests.is_empty() {
        Ok(Vec::new())
    } else {
        let tasks = worker.store.tasks();
        tasks
            .claim(&requests, &worker.id, worker.options.lease)
            .await
    };
    let claims = match claims {
        Ok(claims) => claims,
        Err(e) => {
            // MongoDB did not answer (an outage, a stall): the claims may or may not have
            // landed. The entries go back to every worker rather than being dropped, which
            // would leave the tasks queued with no entry; if a claim did land, its copy is
            // stale (the attempt moved on) and the lease expiry re-queues the task.
            let what = format!("claiming {} entries (handed back)", claimable.len());
            worker.store.outage().report(&what, &format_args!("{e:#}"));
            for (class, entry, alloc) in claimable {
                hand_back(&worker, class, &entry).await;
                worker.devices.release(alloc);
            }
            ack_all(&worker, acks).await;
            return;
        }
    };
    // MongoDB now holds the leases (or the entries were stale): the entries have done their job.
    let mut won = Vec::new();
    for ((class, entry, alloc), claim) in claimable.into_iter().zip(claims) {
        acks.entry(class).or_default().push(entry.id);
        match claim {
            Some(claim) => won.push((claim, alloc)),
            None => worker.devices.release(alloc),
        }
    }
    ack_all(&worker, acks).await;
    for (claim, alloc) in won {
        tokio::spawn(execute(worker.clone(), claim, alloc));
    }
}

async fn ack_all(worker: &Worker, acks: HashMap<ResourceClass, Vec<String>>) {
    for (class, ids) in acks {
        let stream = worker.queue.keys().task_stream(class);
        if let Err(e) = worker.queue.ack_delete(&stream, WORKERS_GROUP, &ids).await {
            tracing::warn!(%stream, "acking task entries: {e:#}");
        }
    }
}
