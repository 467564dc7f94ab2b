//! One attempt, from a won claim to its fenced outcome in MongoDB.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use harmonia_shared::error::ExecError;
use harmonia_shared::model::{TaskError, TaskKind};
use harmonia_shared::store::tasks::{Claim, Outcome};

use crate::devices::Alloc;
use crate::executor::{self, TaskContext};
use crate::worker::{Inflight, Worker};

/// Runs the claimed attempt, records its outcome, and gives the devices back.
pub async fn execute(worker: Arc<Worker>, claim: Claim, alloc: Alloc) {
    let Claim { task, lease_token } = claim;
    let (task_id, run_id, node) = (task.id, task.run_id, task.node_id.clone());
    let cancel = worker.shutdown.hand_back.child_token();
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(None);
    let attempt = Arc::new(Inflight {
        task_id: task_id.to_hex(),
        cancel: cancel.clone(),
        progress: progress_rx,
    });
    worker
        .inflight()
        .insert(lease_token.clone(), attempt.clone());
    if worker.first_start_of(run_id)
        && let Err(e) = worker.store.runs().mark_started(run_id).await
    {
        tracing::warn!(%run_id, "marking the run started: {e:#}");
    }

    let ctx = TaskContext::new(
        worker.env.clone(),
        task.clone(),
        alloc.gpu_indices(),
        cancel,
        lease_token.clone(),
        progress_tx,
    );
    tracing::info!(task = %task_id, %node, r#type = %task.task_type, attempt = ctx.attempt,
        gpus = ?ctx.gpus, "task started");
    let kind = executor::params::kind(&task);
    let uses_models = kind.as_ref().is_ok_and(TaskKind::uses_models);
    let result = match kind {
        Err(e) => Err(e),
        Ok(kind) => {
            let limit = Duration::from_secs(task.timeout_s);
            match tokio::time::timeout(limit, executor::run(&ctx, &kind)).await {
                Ok(result) => result,
                Err(_) => Err(ExecError::retryable(format!(
                    "timed out after {} s",
                    task.timeout_s
                ))),
            }
        }
    };
    let outcome = match result {
        Ok(outputs) => Outcome::Succeeded { outputs },
        Err(ExecError::Cancelled) if worker.shutdown.hand_back.is_cancelled() => {
            Outcome::HandedBack
        }
        Err(ExecError::Cancelled) => Outcome::Cancelled,
        Err(e) => {
            let retry_at = task
                .retry_at(worker.options.retry_base)
                .filter(|_| e.is_retryable());
            Outcome::Failed {
                error: TaskError {
                    message: e.message(),
                    retryable: e.is_retryable(),
                },
                retry_at,
            }
        }
    };
    record(&worker, &lease_token, &outcome).await;
    if uses_models {
        advertise_models(&worker).await;
    }
    worker.inflight().remove(&lease_token);
    worker.devices.release(alloc);
}

async fn record(worker: &Worker, lease_token: &str, outcome: &Outcome) {
    // MongoDB is the truth: keep trying through an outage, however long, rather than lose an
    // outcome. (If the lease expires meanwhile, the write is refused and the retry wins.)
    let forever = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let tasks = worker.store.tasks();
    let finish = || tasks.finish(lease_token, outcome);
    let recorded = finish
        .retry(forever)
        .sleep(tokio::time::sleep)
        .notify(|e, _| {
            let what = "recording task outcome (will retry)";
            worker.store.outage().report(what, &format_args!("{e:#}"));
        })
        .await;
    let Ok(after) = recorded else {
        return; // not reached: the retries never end
    };
    let Some(after) = after else {
        tracing::warn!(%lease_token, "outcome refused: this worker lost the task's lease");
        return;
    };
    tracing::info!(task = %after.id, node = %after.node_id, status = after.status.as_str(),
        error = after.error.as_ref().map(|e| e.message.as_str()), "task finished");
    if !after.status.is_terminal() {
        return; // re-queued for a retry
    }
    // The scheduler releases the downstream tasks and settles the run when this was its last.
    if let Err(e) = worker.queue.announce(&after).await {
        // The scheduler's repair pass finds what this event would have told it.
        tracing::warn!(task = %after.id, "announcing task outcome: {e:#}");
    }
}

/// Publishes which models this worker now holds (cache and warm pool).
async fn advertise_models(worker: &Worker) {
    let models = &worker.env.models;
    let cached = models.hub.cached_repos();
    let loaded = models.pool.loaded();
    if let Err(e) = worker
        .store
        .workers()
        .set_models(&worker.id, &cached, &loaded)
        .await
    {
        tracing::warn!("advertising models: {e:#}");
    }
}
