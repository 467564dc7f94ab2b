//! Executors: one per task kind, picked by one `match` in [`run`]. Adding a kind is a variant
//! of `TaskKind` (shared/src/model/task_kind.rs), one file here and one arm in [`run`].

mod convert;
mod debug;
mod download;
mod embed;
mod generate;
mod output;
pub mod params;

use std::sync::Arc;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::TaskKind;
use harmonia_shared::model::{Progress, RunTask};
use mongodb::bson::Document;
use tokio_util::sync::CancellationToken;

/// What executors share on a worker: the store, the bucket and the models.
#[derive(Debug)]
pub struct Env {
    pub worker_id: String,
    pub store: harmonia_shared::store::Store,
    pub storage: harmonia_shared::storage::Storage,
    pub models: crate::models::Models,
}

/// What an executor gets for one attempt.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub env: Arc<Env>,
    pub task: RunTask,
    /// The attempt number within the current round (1 for the first try).
    pub attempt: u32,
    /// GPUs assigned to this attempt (empty for CPU tasks).
    pub gpus: Vec<u32>,
    /// Fires on cancellation or worker shutdown; executors must stop promptly.
    pub cancel: CancellationToken,
    /// The claim's lease token: writes of outputs are fenced by it.
    pub lease_token: String,
    /// When the task became ready, from its stream entry (microseconds since the Unix epoch,
    /// the publisher's clock); `None` for an entry without the stamp.
    pub ready_us: Option<i64>,
    /// The claim, which may not be written yet: [`TaskContext::claim`] before storing anything.
    hold: Arc<crate::hold::Hold>,
    progress: tokio::sync::watch::Sender<Option<Progress>>,
}

impl TaskContext {
    pub fn new(
        env: Arc<Env>,
        task: RunTask,
        gpus: Vec<u32>,
        cancel: CancellationToken,
        lease_token: String,
        hold: Arc<crate::hold::Hold>,
        progress: tokio::sync::watch::Sender<Option<Progress>>,
    ) -> Self {
        let attempt = task.attempts_used();
        Self {
            env,
            task,
            attempt,
            gpus,
            cancel,
            lease_token,
            ready_us: None,
            hold,
            progress,
        }
    }

    /// Makes sure MongoDB holds this attempt's claim (a deferred claim is written now): call
    /// it before anything outside the attempt is changed (an upload, a registration), so that
    /// nothing is stored by an attempt whose task was taken by another. `Cancelled` when the
    /// task moved on.
    pub async fn claim(&self) -> Result<(), ExecError> {
        if self.hold.write_claim().await? == crate::hold::Written::Held {
            Ok(())
        } else {
            tracing::warn!(task = %self.task.id, "the task moved on before its claim was written: stopping");
            self.cancel.cancel();
            Err(ExecError::Cancelled)
        }
    }

    /// Reports progress; the worker writes the latest value to MongoDB with its heartbeat.
    pub fn progress(&self, stage: &str, percent: f32, message: Option<String>) {
        self.progress.send_replace(Some(Progress {
            stage: stage.to_owned(),
            percent,
            message,
        }));
    }

    /// The succeeded upstream tasks of this one (their outputs feed it).
    pub async fn upstream(&self) -> Result<Vec<RunTask>, ExecError> {
        let mut out = Vec::with_capacity(self.task.upstream_node_ids.len());
        for node in &self.task.upstream_node_ids {
            let task = self
                .env
                .store
                .tasks()
                .by_node(self.task.run_id, node)
                .await?;
            out.extend(task);
        }
        Ok(out)
    }
}

/// Runs one attempt of a task of `kind`: the one place a new kind must be added on a worker.
/// Returns the outputs recorded on the task.
pub async fn run(ctx: &TaskContext, kind: &TaskKind) -> Result<Document, ExecError> {
    match kind {
        TaskKind::Noop => Ok(debug::noop(ctx)),
        TaskKind::Sleep(p) => debug::sleep(ctx, p).await,
        TaskKind::Fail(p) => debug::fail(ctx, p),
        TaskKind::Crash => debug::crash(ctx),
        TaskKind::Write(p) => debug::write(ctx, p).await,
        TaskKind::Download(p) => download::run(ctx, p).await,
        TaskKind::Embed(p) => embed::run(ctx, p).await,
        TaskKind::Generate(p) => generate::run(ctx, p).await,
        TaskKind::Convert(p) => convert::run(ctx, p).await,
    }
}
