//! The safety net: MongoDB is the truth, and this pass makes Redis and the run aggregates agree
//! with it, whatever was lost.
//!
//! Every `reconcile_every` it: re-publishes queued tasks whose stream entries were written in an
//! older Redis epoch (Redis lost them: see `harmonia_shared::queue::epoch`); re-queues (or
//! fails, when out of attempts) tasks whose worker stopped renewing its lease (but only once
//! MongoDB has answered for a worker timeout: see `leases_can_be_judged`); marks queued tasks
//! no live worker can fit with a visible reason. Every `repair_every`, and right after a Redis
//! loss, it also repairs every active run in full, a page at a time (promotion or skipping that
//! lost events would have done), and recomputes its aggregates.

use std::sync::Arc;
use std::time::Instant;

use harmonia_shared::model::{TaskError, TaskStatus};
use harmonia_shared::queue::{SCHEDULER_GROUP, TaskEntry, WORKERS_GROUP};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::{ClaimRequest, Deferred, Ending, Outcome, lease_token};
use mongodb::bson::oid::ObjectId;

use crate::context::Scheduler;

pub async fn run(ctx: Arc<Scheduler>) {
    let mut last_repair: Option<Instant> = None;
    loop {
        if let Err(e) = pass(&ctx, &mut last_repair).await {
            ctx.report("reconcile", &e);
        }
        tokio::select! {
            () = tokio::time::sleep(ctx.options.reconcile_every) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

async fn pass(ctx: &Scheduler, last_repair: &mut Option<Instant>) -> anyhow::Result<()> {
    let started = Instant::now();
    let epoch = ctx.queue.epoch().await?;
    if epoch.started && last_repair.is_some() {
        tracing::warn!(
            "Redis lost its data or may have lost its last writes (a flush, a restart, a \
             failover): rebuilding it from MongoDB"
        );
    }
    // Every pass, not only when this replica saw the epoch start: another replica may have
    // started it, and a publisher's mark can land after the loss it belonged before.
    let stale = ctx.store.republish_stale(&epoch.id).await?;
    if stale > 0 {
        tracing::info!(
            requeued = stale,
            "re-publishing queued tasks whose stream entries Redis lost or may have lost"
        );
        ctx.publish.notify_one();
    }
    if leases_can_be_judged(ctx, started) {
        expire_leases(ctx).await?;
        if ctx
            .queue
            .outage()
            .up_for()
            .is_some_and(|up| up >= ctx.options.live_within)
        {
            expire_unwritten_claims(ctx).await?;
        }
    }
    mark_unfit(ctx).await?;
    // The first full repair waits one interval: a start needs none (lost events are reclaimed
    // from the events group), and on a big deployment it is the costliest pass.
    let due = last_repair.get_or_insert_with(Instant::now).elapsed() >= ctx.options.repair_every;
    if epoch.started || due {
        repair_runs(ctx).await?;
        prune_consumers(ctx).await?;
        *last_repair = Some(Instant::now());
    }
    Ok(())
}

/// Every process that ever read a stream stays a consumer of its group until removed: with
/// workers replaced all day, the groups would fill with the names of dead ones. Remove those
/// idle past `consumer_idle` that hold nothing pending (what a dead worker held is taken over
/// first, by `XAUTOCLAIM`, so nothing it read is dropped).
async fn prune_consumers(ctx: &Scheduler) -> anyhow::Result<()> {
    let keys = ctx.queue.keys();
    let mut groups: Vec<(String, &str)> = ctx
        .queue
        .classes()
        .await?
        .into_iter()
        .map(|class| (keys.task_stream(class), WORKERS_GROUP))
        .collect();
    let hints = ctx.queue.hint_streams().await?;
    groups.extend(hints.into_iter().map(|stream| (stream, WORKERS_GROUP)));
    groups.push((keys.events(), SCHEDULER_GROUP));
    groups.push((keys.submissions(), SCHEDULER_GROUP));
    for (stream, group) in groups {
        let removed = ctx
            .queue
            .prune_consumers(&stream, group, ctx.options.consumer_idle)
            .await?;
        if !removed.is_empty() {
            tracing::info!(%stream, group, ?removed, "removed consumers of processes gone for good");
        }
    }
    Ok(())
}

/// A lease that lapsed while MongoDB was stalled or unreachable was not abandoned: its worker
/// could not renew it. Leases are judged only once MongoDB has answered for a whole worker
/// timeout (every live worker heartbeats within it), counted from start-up and from the end of
/// the last outage. A stall the driver did not report shows as this pass's first steps (Redis's
/// epoch, then MongoDB) taking far longer than they should; it restarts the count the same way,
/// whichever of the two stalled.
fn leases_can_be_judged(ctx: &Scheduler, started: Instant) -> bool {
    let outage = ctx.store.outage();
    let live_within = ctx.options.live_within;
    if started.elapsed() > live_within / 3 {
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "reconcile pass stalled (a store did not answer): lease expiry waits a worker \
             timeout for heartbeats to catch up"
        );
        outage.stalled();
    }
    outage.up_for().is_some_and(|up| up >= live_within)
}

async fn expire_leases(ctx: &Scheduler) -> anyhow::Result<()> {
    let tasks = ctx.store.tasks();
    for task in tasks.expired_leases(256).await? {
        let Some(token) = task.lease_token.as_deref() else {
            continue;
        };
        let retry_at = task.retry_at(ctx.options.retry_base);
        let worker = task.worker_id.as_deref().unwrap_or("?");
        let error = TaskError {
            message: format!(
                "worker {worker} stopped renewing its lease during attempt {} (presumed dead)",
                task.attempt
            ),
            retryable: true,
        };
        let outcome = Outcome::Failed { error, retry_at };
        let Some(after) = tasks.finish(token, &outcome).await? else {
            continue; // the worker finished it after all
        };
        tracing::warn!(task = %task.id, node = %task.node_id, %worker,
            status = after.status.as_str(), "lease expired");
        if after.status == TaskStatus::Failed {
            ctx.queue.announce(&after).await?;
            ctx.store.settle_run(task.run_id).await?;
        }
    }
    Ok(())
}

/// The CPU stream's entries pending for a worker that stopped keeping them (a live worker
/// touches the entries of its deferred claims every heartbeat: see the worker's `hold`). An
/// entry that names no model may have been run on a deferred claim that was never written:
/// that attempt is counted as a lease expiry would count it (a retryable failure, or the
/// task's last), fenced like the claim it stands for, so an attempt whose claim was written
/// after all is left to its lease. An entry that names a model was never run unclaimed: it
/// is handed back to every worker. Judged only once Redis, too, has answered for a worker
/// timeout (an outage stops the touches).
async fn expire_unwritten_claims(ctx: &Scheduler) -> anyhow::Result<()> {
    let stream = ctx.queue.keys().task_stream(ResourceClass::CPU);
    let (consumer, within) = (&ctx.options.consumer, ctx.options.live_within);
    let stale = ctx
        .queue
        .take_stale(&stream, WORKERS_GROUP, consumer, within, 256)
        .await?;
    let mut lost = Vec::new();
    let mut acks = Vec::new();
    for (entry, holder) in stale {
        let task = TaskEntry::of(&entry);
        match task.as_ref().map(|t| (t, ObjectId::parse_str(&t.task_id))) {
            Some((t, Ok(id))) if t.model.is_none() => lost.push((id, t.attempt, holder)),
            Some((t, _)) if t.model.is_some() => {
                ctx.queue
                    .hand_back(ResourceClass::CPU, &entry.id, t)
                    .await?;
                continue;
            }
            _ => {}
        }
        acks.push(entry.id);
    }
    if !lost.is_empty() {
        count_lost_attempts(ctx, &lost).await?;
    }
    ctx.queue.ack_delete(&stream, WORKERS_GROUP, &acks).await?;
    Ok(())
}

/// Ends the attempts of tasks still queued as of the attempt their entry named, run by
/// `holder` on a claim it never wrote, as failures of a worker presumed dead.
async fn count_lost_attempts(
    ctx: &Scheduler,
    lost: &[(ObjectId, u32, String)],
) -> anyhow::Result<()> {
    let tasks = ctx.store.tasks();
    let requests: Vec<ClaimRequest> = lost
        .iter()
        .map(|(id, attempt, _)| ClaimRequest {
            id: *id,
            attempt: *attempt,
            gpu_indices: Vec::new(),
        })
        .collect();
    let found = tasks.queued_as_published(&requests).await?;
    let batch = ObjectId::new().to_hex();
    let mut ended = Vec::new();
    for ((id, attempt, holder), task) in lost.iter().zip(found) {
        let Some(mut task) = task else { continue };
        task.attempt += 1; // as the claim leaves it, so the retry counts this attempt
        let error = TaskError {
            message: format!(
                "worker {holder} stopped renewing its lease during attempt {} (presumed dead)",
                task.attempt
            ),
            retryable: true,
        };
        let outcome = Outcome::Failed {
            retry_at: task.retry_at(ctx.options.retry_base),
            error,
        };
        let deferred = Deferred {
            attempt: *attempt,
            worker_id: holder.clone(),
            started_at: mongodb::bson::DateTime::now(),
        };
        ended.push((task, lease_token(&batch, *id), outcome, deferred));
    }
    let endings: Vec<Ending<'_>> = ended
        .iter()
        .map(|(task, token, outcome, deferred)| Ending {
            id: task.id,
            lease_token: token,
            outcome,
            deferred: Some(deferred),
        })
        .collect();
    let recorded = tasks.finish_many(&endings).await?;
    for ((mut task, _, outcome, _), ok) in ended.into_iter().zip(recorded) {
        if !ok {
            continue; // its worker wrote the claim or the outcome after all
        }
        task.status = outcome.status();
        tracing::warn!(task = %task.id, node = %task.node_id, status = task.status.as_str(),
            "claim never written by a worker presumed dead: attempt counted");
        if let Outcome::Failed { error, .. } = outcome {
            task.error = Some(error);
        }
        if task.status == TaskStatus::Failed {
            ctx.queue.announce(&task).await?;
            ctx.store.settle_run(task.run_id).await?;
        }
    }
    Ok(())
}

/// Queued tasks that no live worker could run even when idle get a visible wait reason.
async fn mark_unfit(ctx: &Scheduler) -> anyhow::Result<()> {
    // Every class with a stream (Redis keeps the set; after a flush the publisher rebuilds it).
    let classes = ctx.queue.classes().await?;
    if classes.is_empty() {
        return Ok(());
    }
    let workers = ctx.store.workers().live(ctx.options.live_within).await?;
    for class in classes {
        let name = class.to_string();
        let fits = workers.iter().any(|w| {
            if class == ResourceClass::CPU {
                w.cpu_slots > 0
            } else {
                class.could_run_on(&w.gpus)
            }
        });
        let reason = (!fits).then(|| {
            if class == ResourceClass::CPU {
                "no live worker has CPU slots".to_owned()
            } else {
                format!(
                    "no live worker has {} free GPU(s) with at least {} MB each",
                    class.gpus, class.gpu_memory_mb
                )
            }
        });
        ctx.store
            .tasks()
            .set_wait_reason(&name, reason.as_deref())
            .await?;
    }
    Ok(())
}

/// Repairs every active run, a page at a time.
async fn repair_runs(ctx: &Scheduler) -> anyhow::Result<()> {
    const PAGE: i64 = 500;
    let mut after = None;
    loop {
        let page = ctx.store.runs().active_ids(after, PAGE).await?;
        for &run in &page {
            let (queued, skipped) = ctx.store.tasks().repair_run(run).await?;
            if queued + skipped > 0 {
                tracing::info!(%run, queued, skipped, "repaired run state lost events left behind");
                ctx.publish.notify_one();
            }
            ctx.store.refresh_run(run).await?;
        }
        match page.last() {
            Some(&last) if page.len() as i64 == PAGE => after = Some(last),
            _ => return Ok(()),
        }
    }
}
