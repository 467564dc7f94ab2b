//! The task page: every attempt (worker, GPU ordinals, timings, error), the log tail, outputs
//! and artifacts with download links.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use harmonia_shared::model::{Artifact, AttemptRecord, RunTask, TokenScope};

use super::page::{self, Chrome, PageResult, human_bytes, when};
use super::runs::TaskRow;
use super::session::Viewer;
use crate::control;
use crate::gateway::AppState;
use crate::gateway::problem::Problem;
use crate::gateway::views::plain;

#[derive(Debug)]
pub struct AttemptRow {
    pub attempt: u32,
    pub outcome: String,
    pub worker: String,
    pub gpus: String,
    pub started: String,
    pub finished: String,
    pub error: String,
}

fn ordinals(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<&AttemptRecord> for AttemptRow {
    fn from(a: &AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            outcome: a.outcome.clone(),
            worker: a.worker_id.clone().unwrap_or_default(),
            gpus: ordinals(&a.gpu_indices),
            started: when(a.started_at),
            finished: when(Some(a.finished_at)),
            error: a
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
pub struct ArtifactRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub size: String,
    pub sha256: String,
    pub attempt: u32,
}

impl From<&Artifact> for ArtifactRow {
    fn from(a: &Artifact) -> Self {
        Self {
            id: a.id.to_hex(),
            name: a.name.clone(),
            kind: a.artifact_type.clone(),
            size: human_bytes(a.storage_ref.size_bytes),
            sha256: a.storage_ref.sha256.clone(),
            attempt: a.attempt,
        }
    }
}

#[derive(Debug, Template)]
#[template(path = "task.html")]
pub struct TaskPage {
    pub chrome: Chrome,
    pub run_id: String,
    pub run_name: String,
    pub t: TaskRow,
    pub resources: String,
    pub class: String,
    pub gpus: String,
    pub created: String,
    pub queued: String,
    pub started: String,
    pub finished: String,
    pub wait_reason: Option<String>,
    pub upstream: Vec<String>,
    pub downstream: Vec<String>,
    pub can_write: bool,
    pub error: Option<String>,
    pub attempts: Vec<AttemptRow>,
    pub log_tail: String,
    pub artifacts: Vec<ArtifactRow>,
    pub can_download: bool,
    pub outputs: Option<String>,
    pub params: String,
}

fn pretty<T: serde::Serialize>(doc: &T) -> String {
    serde_json::to_string_pretty(&plain(doc)).unwrap_or_default()
}

fn resources(t: &RunTask) -> String {
    match t.resources.gpus {
        0 => "CPU".into(),
        n => format!(
            "{n} GPU{} with {} MiB each",
            if n == 1 { "" } else { "s" },
            t.resources.gpu_memory_mb
        ),
    }
}

/// `GET /runs/{id}/tasks/{node}`.
pub async fn task(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path((id, node)): Path<(String, String)>,
) -> PageResult {
    let caller = viewer.caller();
    caller.require(TokenScope::RunsRead)?;
    let run_id = control::parse_run_id(&id)?;
    let run = caller.own(state.store.runs().get(run_id).await?, &id)?;
    let t = state
        .store
        .tasks()
        .by_node(run_id, &node)
        .await?
        .ok_or_else(|| Problem::not_found(format!("run {id} has no task '{node}'")))?;
    let artifacts = state.store.artifacts().for_producer(t.id).await?;
    let mut attempts: Vec<AttemptRow> = t.attempts.iter().map(AttemptRow::from).collect();
    attempts.reverse();
    Ok(page::render(&TaskPage {
        chrome: Chrome::new(&viewer, "runs"),
        run_id: id,
        run_name: run.name,
        resources: resources(&t),
        class: t.class.clone(),
        gpus: ordinals(&t.gpu_indices),
        created: when(Some(t.created_at)),
        queued: when(t.queued_at),
        started: when(t.started_at),
        finished: when(t.finished_at),
        wait_reason: t.wait_reason.clone(),
        upstream: t.upstream_node_ids.clone(),
        downstream: t.downstream_node_ids.clone(),
        can_write: viewer.can(TokenScope::RunsWrite),
        error: t.error.as_ref().map(|e| e.message.clone()),
        attempts,
        log_tail: t.log_tail.join("\n"),
        artifacts: artifacts
            .iter()
            .filter(|a| a.workspace == viewer.token.workspace)
            .map(ArtifactRow::from)
            .collect(),
        can_download: viewer.can(TokenScope::ArtifactsRead),
        outputs: t.outputs.as_ref().map(pretty),
        params: pretty(&t.params),
        t: TaskRow::from(&t),
    }))
}
