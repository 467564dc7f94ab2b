//! Executors: one per task `type`, behind one trait. Adding a task type is one file here and
//! one line in [`Registry::builtin`].

mod convert;
mod debug;
mod download;
mod embed;
mod generate;
mod output;
mod params;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_types;
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
    progress: tokio::sync::watch::Sender<Option<Progress>>,
}

impl TaskContext {
    pub fn new(
        env: Arc<Env>,
        task: RunTask,
        gpus: Vec<u32>,
        cancel: CancellationToken,
        progress: tokio::sync::watch::Sender<Option<Progress>>,
    ) -> Self {
        let attempt = task.attempt.saturating_sub(task.attempt_base).max(1);
        Self {
            env,
            task,
            attempt,
            gpus,
            cancel,
            progress,
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

    pub fn params(&self) -> &Document {
        &self.task.params
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
                .await
                .map_err(|e| ExecError::Retryable(e.to_string()))?;
            out.extend(task);
        }
        Ok(out)
    }
}

/// Runs one task type. Returns the outputs recorded on the task.
pub trait Executor: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a TaskContext) -> BoxFuture<'a, Result<Document, ExecError>>;
}

/// `type` -> executor.
#[derive(Clone, Default)]
pub struct Registry {
    executors: HashMap<&'static str, Arc<dyn Executor>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<_> = self.executors.keys().collect();
        types.sort();
        f.debug_struct("Registry").field("types", &types).finish()
    }
}

impl Registry {
    /// Every executor built into this worker.
    pub fn builtin() -> Self {
        let mut r = Self::default();
        r.add(task_types::DEBUG_NOOP, debug::Noop);
        r.add(task_types::DEBUG_SLEEP, debug::Sleep);
        r.add(task_types::DEBUG_FAIL, debug::Fail);
        r.add(task_types::DEBUG_CRASH, debug::Crash);
        r.add(task_types::DEBUG_WRITE, debug::Write);
        r.add(task_types::MODEL_DOWNLOAD, download::Download);
        r.add(task_types::INFERENCE_EMBED, embed::Embed);
        r.add(task_types::INFERENCE_GENERATE, generate::Generate);
        r.add(task_types::MODEL_CONVERT, convert::Convert);
        r
    }

    pub fn add(&mut self, task_type: &'static str, executor: impl Executor + 'static) {
        self.executors.insert(task_type, Arc::new(executor));
    }

    pub fn get(&self, task_type: &str) -> Option<Arc<dyn Executor>> {
        self.executors.get(task_type).cloned()
    }
}
