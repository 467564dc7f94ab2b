//! Keeping claims alive: every heartbeat renews the leases of in-flight attempts (and stops the
//! ones cancelled or lost), records progress, and refreshes the worker's registry entry. Cancel
//! signals also arrive at once over pub/sub; the heartbeat is the fallback if one is missed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use harmonia_shared::model::WorkerState;
use mongodb::bson::DateTime;

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
    let tokens: Vec<String> = attempts.iter().map(|(t, _)| t.clone()).collect();
    let until = DateTime::from_millis(
        DateTime::now().timestamp_millis() + worker.options.lease.as_millis() as i64,
    );
    let stop = worker.store.tasks().extend_leases(&tokens, until).await?;
    for (token, attempt) in &attempts {
        if stop.contains(token) {
            // An attempt that has already run only waits for its outcome's write, which is
            // fenced itself: its lease is most likely gone because that write just landed.
            if attempt.ended.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            // Cancelled by a user, or re-queued while this worker was presumed dead (a stall
            // past the lease): either way its result would be refused, so stop working on it.
            if !attempt.cancel.is_cancelled() {
                tracing::warn!(task = %attempt.task_id, "lease lost or task cancelled: stopping the attempt");
            }
            attempt.cancel.cancel();
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
