//! The claim loop: read entries only from streams whose resource class fits the devices free
//! right now (the hint streams of the models this worker holds first: [`crate::affinity`]),
//! win the claim in MongoDB, then start the attempt (or, for a CPU entry that names no model,
//! start it on a deferred claim its outcome will write: [`crate::hold`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmonia_shared::model::{RunTask, TaskStatus};
use harmonia_shared::queue::{Entry, TaskEntry, TaskStream, WORKERS_GROUP};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::{Claim, ClaimRequest, Deferred, lease_token};
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

use crate::affinity::Affinity;
use crate::devices::Alloc;
use crate::execute::execute;
use crate::hold::{Hold, State, Unwritten};
use crate::worker::Worker;

const CLASS_REFRESH: Duration = Duration::from_millis(500);
/// How long a full worker, once something is released, waits before it reads again.
const BURST: Duration = Duration::from_millis(1);
/// How often an entry held back for a model's holder is looked for (gone: the holder has it).
const DEFER_POLL: Duration = Duration::from_millis(10);

/// What the claim loop keeps between rounds.
struct Loop {
    classes: Vec<ResourceClass>,
    classes_at: Option<Instant>,
    /// Streams whose `workers` group this worker made sure of.
    grouped: HashSet<TaskStream>,
    reclaimed_at: Instant,
    affinity: Affinity,
}

/// Claims and starts tasks until the worker drains.
pub async fn run(worker: Arc<Worker>) {
    let mut state = Loop {
        classes: with_cpu(Vec::new()),
        classes_at: None,
        grouped: HashSet::new(),
        reclaimed_at: Instant::now(),
        affinity: Affinity::new(worker.options.affinity),
    };
    while !worker.is_draining() {
        if state
            .classes_at
            .is_none_or(|t| t.elapsed() >= CLASS_REFRESH)
        {
            match worker.queue.classes().await {
                Ok(c) => state.classes = with_cpu(c),
                Err(e) => worker
                    .queue
                    .outage()
                    .report("listing task classes", &format_args!("{e:#}")),
            }
            state.affinity.refresh(&worker).await;
            state.classes_at = Some(Instant::now());
        }
        // Outcomes behind on their writes (a slow mongod): claim nothing more until they catch up.
        tokio::select! {
            () = worker.outcomes.room() => {}
            () = worker.shutdown.drain.cancelled() => continue,
        }
        let (fitting, free_cpu) = worker.devices.fitting(&state.classes);
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
        // COUNT is per stream; only the CPU stream can fill several slots at once.
        let count = if fitting.contains(&ResourceClass::CPU) {
            free_cpu.max(1) as usize
        } else {
            1
        };
        let hints = state.affinity.hint_streams(&worker, &fitting);
        let classes = fitting.iter().map(|c| TaskStream::class(*c));
        let streams: Vec<TaskStream> = hints.iter().cloned().chain(classes).collect();
        state.group(&worker, &streams).await;
        if state.reclaimed_at.elapsed() >= worker.options.reclaim_after / 2 {
            reclaim(&worker, &streams).await;
            state.reclaimed_at = Instant::now();
        }
        match read(&worker, &mut state.affinity, &hints, &streams, count).await {
            Ok(batches) => take(&worker, &mut state.affinity, batches).await,
            Err(e) if e.is_no_group() => {
                // Redis lost the stream (flush/restart): recreate groups next round.
                state.grouped.clear();
            }
            Err(e) => {
                let what = "reading task streams";
                worker.queue.outage().report(what, &format_args!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The classes to read: those announced, and CPU always. A worker with CPU slots reads the CPU
/// stream from its start, so the first CPU tasks of a fresh Redis do not wait for a class
/// refresh to find it (one worker would take them all while the others looked later).
fn with_cpu(mut classes: Vec<ResourceClass>) -> Vec<ResourceClass> {
    if !classes.contains(&ResourceClass::CPU) {
        classes.push(ResourceClass::CPU);
    }
    classes
}

impl Loop {
    /// Makes sure each of `streams` has its `workers` group.
    async fn group(&mut self, worker: &Worker, streams: &[TaskStream]) {
        for stream in streams {
            if self.grouped.contains(stream) {
                continue;
            }
            let key = stream.key(worker.queue.keys());
            match worker.queue.ensure_group(&key, WORKERS_GROUP).await {
                Ok(()) => {
                    self.grouped.insert(stream.clone());
                }
                Err(e) => tracing::warn!(stream = %key, "creating consumer group: {e:#}"),
            }
        }
    }
}

/// One read: the held models' hint streams alone first, and when they have nothing, every
/// stream, waiting for an entry. While an entry of the class streams would be passed over for
/// work that came more than the patience after it, the class streams alone, in arrival order.
async fn read(
    worker: &Worker,
    affinity: &mut Affinity,
    hints: &[TaskStream],
    streams: &[TaskStream],
    count: usize,
) -> Result<Vec<(TaskStream, Vec<Entry>)>, harmonia_shared::queue::QueueError> {
    let queue = &worker.queue;
    if !hints.is_empty() {
        let classes: Vec<TaskStream> = streams
            .iter()
            .filter(|s| s.model.is_none())
            .cloned()
            .collect();
        if !affinity.hints_first(worker, &classes).await {
            return queue.read_tasks(&worker.id, &classes, count, true).await;
        }
        let got = queue.read_hints(&worker.id, hints, count).await?;
        if got.iter().any(|(_, entries)| !entries.is_empty()) {
            affinity.served(&got);
            return Ok(got);
        }
    }
    queue.read_tasks(&worker.id, streams, count, true).await
}

/// Takes devices for what a read returned (handing back what does not fit), then claims:
/// at once, or after the head start a holder of the entry's model gets.
async fn take(
    worker: &Arc<Worker>,
    affinity: &mut Affinity,
    batches: Vec<(TaskStream, Vec<Entry>)>,
) {
    // Devices are taken synchronously first, so claims in flight never over-commit them; the
    // read's claims are one MongoDB write, made while the loop reads on.
    let mut now = Vec::new();
    let mut later = Vec::new();
    let mut seen = HashSet::new();
    for (stream, entries) in batches {
        let class = stream.class;
        for entry in entries {
            // Both copies of a pair in one read: the second is acked with the first.
            if !seen.insert(entry.id.clone()) {
                continue;
            }
            let Some(alloc) = devices_for(worker, class) else {
                hand_back(worker, class, &entry).await;
                continue;
            };
            match affinity.defer(worker, class, &entry).await {
                d if d.is_zero() => now.push((class, entry, alloc)),
                d => later.push((d, (class, entry, alloc))),
            }
        }
    }
    if !now.is_empty() {
        tokio::spawn(start(worker.clone(), now));
    }
    if let Some(wait) = later.iter().map(|(d, _)| *d).max() {
        let taken = later.into_iter().map(|(_, t)| t).collect();
        tokio::spawn(start_after(worker.clone(), wait, taken));
    }
}

/// [`start`] once `wait` has passed (a holder of the model had it first). Entries a holder
/// took meanwhile (their class copy is gone) are let go at once, their devices with them; a
/// drain hands the rest back.
async fn start_after(
    worker: Arc<Worker>,
    wait: Duration,
    mut taken: Vec<(ResourceClass, Entry, Alloc)>,
) {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || worker.is_draining() {
            break;
        }
        tokio::time::sleep(left.min(DEFER_POLL)).await;
        taken = let_go_of_taken(&worker, taken).await;
        if taken.is_empty() {
            return;
        }
    }
    if worker.is_draining() {
        for (class, entry, alloc) in taken {
            hand_back(&worker, class, &entry).await;
            worker.devices.release(alloc);
        }
        return;
    }
    start(worker, taken).await;
}

/// Keeps the entries whose class copy is still there; the others (a holder claimed them and
/// deleted the pair) are acked and their devices released.
async fn let_go_of_taken(
    worker: &Worker,
    taken: Vec<(ResourceClass, Entry, Alloc)>,
) -> Vec<(ResourceClass, Entry, Alloc)> {
    let ids: Vec<(ResourceClass, &str)> =
        taken.iter().map(|(c, e, _)| (*c, e.id.as_str())).collect();
    let present = match worker.queue.present(&ids).await {
        Ok(present) => present,
        Err(e) => {
            tracing::debug!("looking for deferred task entries: {e:#}");
            return taken;
        }
    };
    let mut kept = Vec::new();
    let mut acks: Acks = HashMap::new();
    for ((class, entry, alloc), present) in taken.into_iter().zip(present) {
        if present {
            kept.push((class, entry, alloc));
        } else {
            let model = TaskEntry::of(&entry).and_then(|t| t.model);
            acks.entry((class, model)).or_default().push(entry.id);
            worker.devices.release(alloc);
        }
    }
    ack_all(worker, acks).await;
    kept
}

/// Takes over entries that sat unacked past `reclaim_after` in the pending list of a worker
/// that died between reading and claiming them (GPU classes and hint streams: the CPU
/// stream's go to the scheduler, `reconcile::expire_unwritten_claims`).
async fn reclaim(worker: &Arc<Worker>, streams: &[TaskStream]) {
    for stream in streams {
        // The CPU stream's are the scheduler's: one of them may have run on a deferred claim
        // that was never written, and must be counted, not run again uncounted.
        if *stream == TaskStream::class(ResourceClass::CPU) {
            continue;
        }
        let key = stream.key(worker.queue.keys());
        let claimed = worker.queue.autoclaim(
            &key,
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
                    match devices_for(worker, stream.class) {
                        Some(alloc) => taken.push((stream.class, entry, alloc)),
                        None => hand_back(worker, stream.class, &entry).await,
                    }
                }
                if !taken.is_empty() {
                    tokio::spawn(start(worker.clone(), taken));
                }
            }
            Err(e) => tracing::debug!(stream = %key, "XAUTOCLAIM: {e:#}"),
        }
    }
}

/// Devices for an entry of `class` just read, if free. None once the drain has begun: a read
/// that returns after that starts nothing, and what it brought goes back to the other workers
/// at once (not after this worker's lease or the pending entry's reclaim time).
fn devices_for(worker: &Worker, class: ResourceClass) -> Option<Alloc> {
    if worker.is_draining() {
        return None;
    }
    worker.devices.try_take(class)
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

/// Starts the attempts of entries read, with the devices already taken for each: CPU entries
/// that name no model on a deferred claim (a read of their tasks, no write: see
/// [`crate::hold`]), the rest claimed in MongoDB first (one write). Devices of entries that
/// win nothing go back.
async fn start(worker: Arc<Worker>, taken: Vec<(ResourceClass, Entry, Alloc)>) {
    let defer = !worker.options.claim_after.is_zero();
    let mut requests = Vec::with_capacity(taken.len());
    let mut claimable = Vec::with_capacity(taken.len());
    let mut deferrable = Vec::new();
    let mut acks: Acks = HashMap::new();
    for (class, entry, alloc) in taken {
        let task = TaskEntry::of(&entry);
        match task.and_then(|t| Some((ObjectId::parse_str(&t.task_id).ok()?, t))) {
            Some((id, task)) => {
                let gpu_indices = alloc.gpu_indices();
                let request = ClaimRequest {
                    id,
                    attempt: task.attempt,
                    gpu_indices,
                };
                if defer && class == ResourceClass::CPU && task.model.is_none() {
                    deferrable.push(Deferrable {
                        request,
                        entry,
                        alloc,
                        task,
                    });
                } else {
                    requests.push(request);
                    claimable.push((class, entry, alloc, task));
                }
            }
            None => {
                // Unreadable entry: drop it.
                acks.entry((class, None)).or_default().push(entry.id);
                worker.devices.release(alloc);
            }
        }
    }
    ack_all(&worker, acks).await;
    if !deferrable.is_empty() {
        start_deferred(&worker, deferrable).await;
    }
    if !requests.is_empty() {
        claim_and_start(&worker, &requests, claimable).await;
    }
}

/// Claims entries in MongoDB (one write) and runs the attempts won.
async fn claim_and_start(
    worker: &Arc<Worker>,
    requests: &[ClaimRequest],
    claimable: Vec<(ResourceClass, Entry, Alloc, TaskEntry)>,
) {
    let tasks = worker.store.tasks();
    let claims = match tasks
        .claim(requests, &worker.id, worker.options.lease)
        .await
    {
        Ok(claims) => claims,
        Err(e) => {
            // MongoDB did not answer (an outage, a stall): the claims may or may not have
            // landed. The entries go back to every worker rather than being dropped, which
            // would leave the tasks queued with no entry; if a claim did land, its copy is
            // stale (the attempt moved on) and the lease expiry re-queues the task.
            let what = format!("claiming {} entries (handed back)", claimable.len());
            worker.store.outage().report(&what, &format_args!("{e:#}"));
            for (class, entry, alloc, _) in claimable {
                hand_back(worker, class, &entry).await;
                worker.devices.release(alloc);
            }
            return;
        }
    };
    // MongoDB now holds the leases (or the entries were stale): the entries have done their job.
    let mut won = Vec::new();
    let mut acks: Acks = HashMap::new();
    for ((class, entry, alloc, task), claim) in claimable.into_iter().zip(claims) {
        acks.entry((class, task.model)).or_default().push(entry.id);
        match claim {
            Some(claim) => won.push((claim, alloc, task.ready_us)),
            None => worker.devices.release(alloc),
        }
    }
    ack_all(worker, acks).await;
    for (claim, alloc, ready) in won {
        let hold = Hold::new(State::Leased, claim.task.id, &claim.lease_token, worker);
        tokio::spawn(execute(worker.clone(), claim, alloc, hold, ready));
    }
}

/// Runs attempts on deferred claims: the tasks as their entries carry them, or else one read
/// of them (those still queued as of their entry's attempt run; the other entries are stale
/// and acked), each entry left pending in this worker's list until the claim or the outcome
/// is written.
async fn start_deferred(worker: &Arc<Worker>, entries: Vec<Deferrable>) {
    let found = match deferred_tasks(worker, &entries).await {
        Ok(found) => found,
        Err(e) => {
            let what = format!("reading {} tasks (handed back)", entries.len());
            worker.store.outage().report(&what, &format_args!("{e:#}"));
            for Deferrable { entry, alloc, .. } in entries {
                hand_back(worker, ResourceClass::CPU, &entry).await;
                worker.devices.release(alloc);
            }
            return;
        }
    };
    let stream = worker.queue.keys().task_stream(ResourceClass::CPU);
    let batch = ObjectId::new().to_hex();
    let mut stale = Vec::new();
    for (taken, found) in entries.into_iter().zip(found) {
        let Deferrable {
            request,
            entry,
            alloc,
            task: published,
        } = taken;
        let Some(task) = found else {
            stale.push(entry.id);
            worker.devices.release(alloc);
            continue;
        };
        let ready = published.ready_us;
        let (claim, unwritten) = deferred_claim(worker, &batch, task, request.attempt);
        let unwritten = Unwritten {
            stream: stream.clone(),
            entry_id: entry.id,
            claim: unwritten,
        };
        let hold = Hold::new(
            State::Deferred(unwritten),
            claim.task.id,
            &claim.lease_token,
            worker,
        );
        tokio::spawn(execute(worker.clone(), claim, alloc, hold, ready));
    }
    if let Err(e) = worker
        .queue
        .ack_delete(&stream, WORKERS_GROUP, &stale)
        .await
    {
        tracing::warn!("acking stale task entries: {e:#}");
    }
}

/// An entry read for an attempt on a deferred claim, with the devices taken for it.
struct Deferrable {
    request: ClaimRequest,
    entry: Entry,
    alloc: Alloc,
    /// The entry as published (read once).
    task: TaskEntry,
}

/// The task of each entry, if queued as of the entry's attempt: the copy the entry carries
/// (a new run's first tasks, a small promotion's: [`TaskEntry::spec`]), else from one MongoDB
/// read for the rest. A copy that has gone stale since (the task cancelled or re-queued) is
/// caught where every deferred attempt is: by its claim's write, its heartbeat's check, and
/// its fenced outcome.
async fn deferred_tasks(
    worker: &Worker,
    entries: &[Deferrable],
) -> Result<Vec<Option<RunTask>>, harmonia_shared::store::StoreError> {
    let mut found: Vec<Option<RunTask>> = entries.iter().map(|d| d.task.task()).collect();
    let unread: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
    if unread.is_empty() {
        return Ok(found);
    }
    let requests: Vec<ClaimRequest> = unread.iter().map(|&i| entries[i].request.clone()).collect();
    let read = worker.store.tasks().queued_as_published(&requests).await?;
    for (i, task) in unread.into_iter().zip(read) {
        found[i] = task;
    }
    Ok(found)
}

/// The claim an attempt on `task` starts on without writing it: the task as the claim will
/// leave it, and what the claim records.
fn deferred_claim(
    worker: &Worker,
    batch: &str,
    mut task: RunTask,
    attempt: u32,
) -> (Claim, Deferred) {
    let started_at = DateTime::now();
    let lease_token = lease_token(batch, task.id);
    task.status = TaskStatus::Running;
    task.attempt += 1;
    task.worker_id = Some(worker.id.clone());
    task.started_at = Some(started_at);
    task.lease_token = Some(lease_token.clone());
    let deferred = Deferred {
        attempt,
        worker_id: worker.id.clone(),
        started_at,
    };
    (Claim { task, lease_token }, deferred)
}

/// Entry ids to ack, by class and model (an entry that names a model is acked with its twin).
type Acks = HashMap<(ResourceClass, Option<String>), Vec<String>>;

async fn ack_all(worker: &Worker, acks: Acks) {
    for ((class, model), ids) in acks {
        let acked = match &model {
            None => {
                let stream = worker.queue.keys().task_stream(class);
                worker.queue.ack_delete(&stream, WORKERS_GROUP, &ids).await
            }
            Some(model) => worker.queue.ack_pairs(class, model, &ids).await,
        };
        if let Err(e) = acked {
            tracing::warn!(%class, "acking task entries: {e:#}");
        }
    }
}
