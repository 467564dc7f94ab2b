//! One attempt, from a won claim to its fenced outcome in MongoDB.

use std::sync::Arc;
use std::time::Duration;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::{RunTask, TaskError, TaskKind};
use harmonia_shared::store::tasks::{Claim, Outcome};
use mongodb::bson::Document;

use crate::devices::Alloc;
use crate::executor::{self, TaskContext};
use crate::hold::{Hold, State, Written};
use crate::worker::{Inflight, Worker};

/// Runs the claimed attempt, gives the devices back, and records its outcome. Everything it
/// logs carries the run id, task id and attempt (a `task` span).
/// `ready_us`: when the task became ready, from its stream entry ([`TaskEntry::ready_us`]).
///
/// [`TaskEntry::ready_us`]: harmonia_shared::queue::TaskEntry::ready_us
pub async fn execute(
    worker: Arc<Worker>,
    claim: Claim,
    alloc: Alloc,
    hold: Hold,
    ready_us: Option<i64>,
) {
    use tracing::Instrument;
    let t = &claim.task;
    let span =
        tracing::info_span!("task", run_id = %t.run_id, task_id = %t.id, attempt = t.attempt);
    attempt(worker, claim, alloc, Arc::new(hold), ready_us)
        .instrument(span)
        .await;
}

async fn attempt(
    worker: Arc<Worker>,
    claim: Claim,
    alloc: Alloc,
    hold: Arc<Hold>,
    ready_us: Option<i64>,
) {
    let Claim { task, lease_token } = claim;
    let cancel = worker.shutdown.hand_back.child_token();
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(None);
    let attempt = Arc::new(Inflight {
        task_id: task.id.to_hex(),
        cancel: cancel.clone(),
        progress: progress_rx,
        ended: Default::default(),
        hold: hold.clone(),
    });
    worker
        .inflight()
        .insert(lease_token.clone(), attempt.clone());
    occupancy(&worker);
    let started = std::time::Instant::now();
    let reporter = tokio::spawn(crate::lease::report_progress(
        worker.clone(),
        lease_token.clone(),
        attempt.progress.clone(),
    ));
    let mut ctx = TaskContext::new(
        worker.env.clone(),
        task.clone(),
        alloc.gpu_indices(),
        cancel,
        lease_token.clone(),
        hold.clone(),
        progress_tx,
    );
    ctx.ready_us = ready_us;
    record_start(&worker, &ctx);
    let kind = executor::params::kind(&task);
    let uses_models = kind.as_ref().is_ok_and(TaskKind::uses_models);
    let run = run_within_timeout(&ctx, kind);
    let (result, promoter) = run_writing_claim_later(&worker, &hold, &ctx.cancel, run).await;
    let outcome = outcome_of(&worker, &task, result);
    reporter.abort();
    let label = outcome_label(&outcome);
    let state = hold.close().await;
    if let Some(promoter) = promoter {
        promoter.abort();
    }
    let deferred = match state {
        State::Leased => None,
        State::Deferred(unwritten) => Some(unwritten),
        // The task moved on before the claim was written: nothing of this attempt is kept.
        State::Lost => return forget(&worker, alloc, &lease_token),
    };
    // Handed to the writer before the devices go back, so a draining worker (which waits for
    // both) never takes this attempt for done before its outcome is durable.
    let recording = worker
        .outcomes
        .record(&task, &lease_token, outcome, deferred);
    attempt
        .ended
        .store(true, std::sync::atomic::Ordering::Release);
    // The devices are free once the executor has returned: the next task starts while this
    // outcome waits for its batched write. The attempt stays in flight (its lease heartbeated)
    // until the write lands.
    worker.devices.release(alloc);
    occupancy(&worker);
    recording.recorded().await;
    crate::metrics::task_finished(&task.task_type, label, started.elapsed());
    if uses_models {
        advertise_models(&worker).await;
    }
    worker.inflight().remove(&lease_token);
    occupancy(&worker);
}

/// An attempt whose task moved on before its claim was written: nothing of it is kept.
fn forget(worker: &Worker, alloc: Alloc, lease_token: &str) {
    worker.devices.release(alloc);
    worker.inflight().remove(lease_token);
    occupancy(worker);
}

/// Logs the start, marks the run started, and records the start's metrics: how long the task
/// waited since MongoDB queued it (`queued_at`, milliseconds; a new run's tasks from before
/// they were stored) and since it became ready in Redis (its entry's stamp, microseconds).
/// Both by the wall clocks of two hosts.
fn record_start(worker: &Worker, ctx: &TaskContext) {
    let (task, ready_us) = (&ctx.task, ctx.ready_us);
    tracing::info!(task = %task.id, node = %task.node_id, r#type = %task.task_type,
        attempt = ctx.attempt, gpus = ?ctx.gpus, "task started");
    mark_run_started(worker, task.run_id);
    let now_ms = mongodb::bson::DateTime::now().timestamp_millis();
    let queued_for = task
        .queued_at
        .and_then(|q| u64::try_from(now_ms - q.timestamp_millis()).ok())
        .map(Duration::from_millis);
    let now_us = harmonia_shared::queue::unix_us();
    let dispatched_in = ready_us
        .and_then(|r| u64::try_from(now_us - r).ok())
        .map(Duration::from_micros);
    crate::metrics::task_started(&task.task_type, queued_for, dispatched_in);
}

/// Marks the run started the first time this worker starts one of its tasks, off the start
/// path: the attempt need not wait for this write.
fn mark_run_started(worker: &Worker, run_id: mongodb::bson::oid::ObjectId) {
    if worker.first_start_of(run_id) {
        let store = worker.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.runs().mark_started(run_id).await {
                tracing::warn!(%run_id, "marking the run started: {e:#}");
            }
        });
    }
}

/// Runs the executor for `kind` within the task's timeout (past it: a retryable failure).
async fn run_within_timeout(
    ctx: &TaskContext,
    kind: Result<TaskKind, ExecError>,
) -> Result<Document, ExecError> {
    let kind = kind?;
    let limit = Duration::from_secs(ctx.task.timeout_s);
    match tokio::time::timeout(limit, executor::run(ctx, &kind)).await {
        Ok(result) => result,
        Err(_) => Err(ExecError::retryable(format!(
            "timed out after {} s",
            ctx.task.timeout_s
        ))),
    }
}

/// How the attempt ended, from what its executor returned.
fn outcome_of(worker: &Worker, task: &RunTask, result: Result<Document, ExecError>) -> Outcome {
    match result {
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
    }
}

/// Runs the attempt; on a deferred claim, once it has run for `--claim-after-ms`, a task is
/// spawned that writes the claim (a long attempt then shows as running, its lease renewed like
/// any other; if the task moved on meanwhile, the attempt is stopped). Short attempts spawn
/// nothing. The task is returned, to abort once the attempt has run.
async fn run_writing_claim_later<R>(
    worker: &Arc<Worker>,
    hold: &Arc<Hold>,
    cancel: &tokio_util::sync::CancellationToken,
    run: impl std::future::Future<Output = R>,
) -> (R, Option<tokio::task::JoinHandle<()>>) {
    tokio::pin!(run);
    if !matches!(hold.peek(), Some(State::Deferred(_))) {
        return (run.await, None);
    }
    tokio::select! {
        result = &mut run => return (result, None),
        () = tokio::time::sleep(worker.options.claim_after) => {}
    }
    let writer = tokio::spawn(write_claim(worker.clone(), hold.clone(), cancel.clone()));
    (run.await, Some(writer))
}

/// Writes a deferred claim, retrying through an outage; stops the attempt if the task moved on.
async fn write_claim(
    worker: Arc<Worker>,
    hold: Arc<Hold>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        match hold.write_claim().await {
            Ok(Written::Held | Written::Closed) => return,
            Ok(Written::MovedOn) => {
                tracing::warn!("the task moved on before its claim was written: stopping");
                cancel.cancel();
                return;
            }
            Err(e) => {
                let what = "writing a deferred claim (will retry)";
                worker.store.outage().report(what, &format_args!("{e:#}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn occupancy(worker: &Worker) {
    crate::metrics::occupancy(worker.inflight().len(), worker.devices.free_gpus());
}

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed {
            retry_at: Some(_), ..
        } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::HandedBack => "handed_back",
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
