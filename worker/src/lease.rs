//! Keeping claims alive: every heartbeat renews the leases of in-flight attempts (and stops the
//! ones cancelled or lost), records progress, and refreshes the worker's registry entry. Cancel
//! signals also arrive at once over pub/sub; the heartbeat is the fallback if one is missed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use harmonia_shared::model::WorkerState;
use harmonia_shared::queue::WORKERS_GROUP;
use harmonia_shared::store::tasks::ClaimRequest;
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

use crate::hold::{State, Unwritten, Written, entries_by_stream};
use crate::worker::Worker;

pub async fn heartbeat(worker: Arc<Worker>) {
    loop {
        if let Err(e) = beat(&worker).await {
            worker
                .store
                .outage()
                .report("heartbeat", &format_args!("{e:#}"));
        }
        tokio::select! {
            () = tokio::time::sleep(worker.options.heartbeat) => {}
            () = worker.shutdown.stop.cancelled() => return,
        }
    }
}

async fn beat(worker: &Worker) -> anyhow::Result<()> {
    let attempts: Vec<(String, Arc<crate::worker::Inflight>)> = worker
        .inflight()
        .iter()
        .map(|(t, a)| (t.clone(), a.clone()))
        .collect();
    // Written claims have their leases renewed; deferred ones their entries kept pending here.
    let (mut leased, mut deferred) = (Vec::new(), Vec::new());
    for (token, attempt) in &attempts {
        match attempt.hold.peek() {
            Some(State::Leased) => leased.push((token, attempt)),
            Some(State::Deferred(unwritten)) => deferred.push((unwritten, attempt)),
            // Lost, or its claim being written right now: the next beat sees it.
            Some(State::Lost) | None => {}
        }
    }
    if let Err(e) = keep_deferred(worker, &deferred).await {
        // Not a reason to skip renewing the leases below.
        let what = "keeping deferred claims' entries";
        worker.queue.outage().report(what, &format_args!("{e:#}"));
    }
    let tokens: Vec<String> = leased.iter().map(|(t, _)| (*t).clone()).collect();
    let until = DateTime::from_millis(
        DateTime::now().timestamp_millis() + worker.options.lease.as_millis() as i64,
    );
    let stop = worker.store.tasks().extend_leases(&tokens, until).await?;
    for (token, attempt) in leased {
        if stop.contains(token) {
            stop_attempt(
                attempt,
                "lease lost or task cancelled: stopping the attempt",
            );
            continue;
        }
        let progress = attempt.progress.borrow().clone();
        if let Some(progress) = progress {
            worker
                .store
                .tasks()
                .report_progress(token, &progress)
                .await?;
        }
    }
    let state = if worker.is_draining() {
        WorkerState::Draining
    } else {
        WorkerState::Running
    };
    worker
        .store
        .workers()
        .heartbeat(
            &worker.id,
            state,
            u32::try_from(attempts.len()).unwrap_or(u32::MAX),
        )
        .await?;
    Ok(())
}

/// Stops an attempt whose result would be refused (cancelled by a user, or its task taken by
/// another worker while this one was presumed dead), unless it has already run: it only waits
/// for its outcome's write then, which is fenced itself (and most likely just landed).
fn stop_attempt(attempt: &crate::worker::Inflight, why: &str) {
    if attempt.ended.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    if !attempt.cancel.is_cancelled() {
        tracing::warn!(task = %attempt.task_id, "{why}");
    }
    attempt.cancel.cancel();
}

/// For attempts on deferred claims: resets their stream entries' idle time (so no other worker
/// takes them over while this one is alive), and stops those whose task moved on (cancelled,
/// or taken by another worker) without waiting for their claim or outcome to find out.
async fn keep_deferred(
    worker: &Worker,
    deferred: &[(Unwritten, &Arc<crate::worker::Inflight>)],
) -> anyhow::Result<()> {
    if deferred.is_empty() {
        return Ok(());
    }
    for (stream, ids) in entries_by_stream(deferred.iter().map(|(u, _)| u)) {
        worker
            .queue
            .touch(&stream, WORKERS_GROUP, &worker.id, &ids)
            .await?;
    }
    let requests: Vec<ClaimRequest> = deferred
        .iter()
        .filter_map(|(u, a)| {
            Some(ClaimRequest {
                id: ObjectId::parse_str(&a.task_id).ok()?,
                attempt: u.claim.attempt,
                gpu_indices: Vec::new(),
            })
        })
        .collect();
    let queued = worker.store.tasks().queued_as_published(&requests).await?;
    for ((_, attempt), still) in deferred.iter().zip(queued) {
        if still.is_some() || attempt.ended.load(std::sync::atomic::Ordering::Acquire) {
            continue;
        }
        // The read says the task moved on (or names it twice: an entry published again after
        // a Redis loss can run here twice). The claim's own fenced write decides: written, the
        // attempt goes on under its lease; refused, it stops and nothing of it is recorded.
        match attempt.hold.write_claim().await {
            Ok(Written::MovedOn) => {
                stop_attempt(
                    attempt,
                    "task cancelled or taken elsewhere: stopping the attempt",
                );
            }
            Ok(Written::Held | Written::Closed) => {}
            Err(e) => tracing::debug!("writing a deferred claim: {e:#}"),
        }
    }
    Ok(())
}

/// How often, at most, one attempt's progress is written between heartbeats.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Writes an attempt's progress to MongoDB as it changes, at most once per
/// [`PROGRESS_EVERY`], so watchers see stages and byte counts within a second rather than at
/// the next heartbeat. Ends when the attempt drops its sender (or is aborted); the write is
/// fenced by the lease token, so a lost lease writes nothing.
pub async fn report_progress(
    worker: Arc<Worker>,
    token: String,
    mut progress: tokio::sync::watch::Receiver<Option<harmonia_shared::model::Progress>>,
) {
    while progress.changed().await.is_ok() {
        let latest = progress.borrow_and_update().clone();
        if let Some(p) = latest
            && let Err(e) = worker.store.tasks().report_progress(&token, &p).await
        {
            tracing::debug!("writing progress: {e:#}");
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

/// Listens for cancel signals (comma-separated task ids) and stops matching attempts.
pub async fn cancel_listener(worker: Arc<Worker>) {
    loop {
        let listen = async {
            let signals = worker.queue.cancel_signals().await?;
            let mut signals = std::pin::pin!(signals);
            while let Some(ids) = signals.next().await {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                worker.cancel_tasks(&ids);
            }
            anyhow::Ok(())
        };
        tokio::select! {
            r = listen => if let Err(e) = r {
                tracing::warn!("cancel listener (reconnecting): {e:#}");
            },
            () = worker.shutdown.stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = worker.shutdown.stop.cancelled() => return,
        }
    }
}
