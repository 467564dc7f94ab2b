//! `GET /api/v1/runs/{id}/events`: a run as it happens, as Server-Sent Events. Each connection
//! starts with a snapshot (one `run` event, then one `task` event per task), then sends a `task`
//! event for every change to a task (status, attempt, progress) and a `run` event whenever the
//! run's counts or status change. MongoDB change streams feed it, so nothing is polled; a client
//! that reconnects gets a fresh snapshot, so it never needs `Last-Event-ID`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt, TryStreamExt};
use harmonia_shared::model::{Progress, RunTask, TaskCounts, TaskStatus, TokenScope, WorkflowRun};
use harmonia_shared::store::StoreError;
use serde::Serialize;
use tokio::sync::mpsc;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiResult, Problem};
use crate::control;

/// The `data` of a `task` event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskEvent {
    pub node_id: String,
    pub task_type: String,
    /// pending, queued, running, succeeded, failed, cancelled, skipped.
    pub status: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The worker's last report: stage and percent.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Progress>,
    pub worker_id: Option<String>,
    pub gpu_indices: Vec<u32>,
    pub duration_ms: Option<i64>,
}

impl From<&RunTask> for TaskEvent {
    fn from(t: &RunTask) -> Self {
        Self {
            node_id: t.node_id.clone(),
            task_type: t.task_type.clone(),
            status: t.status.as_str().into(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            progress: t.progress.clone(),
            worker_id: t.worker_id.clone(),
            gpu_indices: t.gpu_indices.clone(),
            duration_ms: t.duration_ms,
        }
    }
}

/// The `data` of a `run` event: status and exact counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunEvent {
    pub status: String,
    pub task_count: u32,
    /// Tasks by status: `pending`, `queued`, `running`, `succeeded`, `failed`, `cancelled`,
    /// `skipped`, as fields of the event.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub counts: TaskCounts,
    /// Set once the run has finished.
    pub duration_ms: Option<i64>,
}

impl From<&WorkflowRun> for RunEvent {
    fn from(r: &WorkflowRun) -> Self {
        Self {
            status: r.status.as_str().into(),
            task_count: r.task_count,
            counts: r.counts.clone(),
            duration_ms: r.duration_ms,
        }
    }
}

fn event<T: Serialize>(kind: &str, data: &T) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// What one connection knows of the run: the run document and each task's status, so counts
/// are exact without asking MongoDB again.
#[derive(Debug)]
struct Follow {
    run: WorkflowRun,
    statuses: HashMap<String, TaskStatus>,
}

impl Follow {
    fn run_event(&self) -> Event {
        let (counts, failed) =
            TaskCounts::of_nodes(self.statuses.iter().map(|(n, s)| (n.as_str(), *s)));
        event(
            "run",
            &RunEvent::from(&self.run.with_aggregates(counts, failed)),
        )
    }

    /// The snapshot a connection starts with.
    fn start(run: WorkflowRun, tasks: &[RunTask]) -> (Self, Vec<Event>) {
        let statuses = tasks
            .iter()
            .map(|t| (t.node_id.clone(), t.status))
            .collect();
        let follow = Self { run, statuses };
        let mut events = vec![follow.run_event()];
        events.extend(tasks.iter().map(|t| event("task", &TaskEvent::from(t))));
        (follow, events)
    }

    fn task_changed(&mut self, t: &RunTask) -> Vec<Event> {
        let before = self.statuses.insert(t.node_id.clone(), t.status);
        let mut events = vec![event("task", &TaskEvent::from(t))];
        if before != Some(t.status) {
            events.push(self.run_event());
        }
        events
    }

    fn run_changed(&mut self, run: WorkflowRun) -> Vec<Event> {
        self.run = run;
        vec![self.run_event()]
    }
}

enum Change {
    Task(Box<RunTask>),
    Run(Box<WorkflowRun>),
}

/// Forwards the snapshot and then every change until the client goes away (the send fails) or a
/// change stream fails (an `error` event, then the end: the client reconnects).
async fn forward(
    first: Vec<Event>,
    mut follow: Follow,
    mut changes: impl Stream<Item = Result<Change, StoreError>> + Unpin,
    tx: mpsc::Sender<Event>,
) {
    for e in first {
        if tx.send(e).await.is_err() {
            return;
        }
    }
    while let Some(change) = changes.next().await {
        let events = match change {
            Ok(Change::Task(t)) => follow.task_changed(&t),
            Ok(Change::Run(r)) => follow.run_changed(*r),
            Err(e) => {
                tracing::warn!("following run {}: {e}", follow.run.id);
                let _ = tx
                    .send(Event::default().event("error").data(e.to_string()))
                    .await;
                return;
            }
        };
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
        }
    }
}

/// Live task and run changes of a run, as Server-Sent Events.
///
/// Events: `run` (data: RunEvent) and `task` (data: TaskEvent). The stream starts with the
/// run's current state, then follows it; comments keep idle connections open.
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "`run` and `task` events"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    caller.require(TokenScope::RunsRead)?;
    let run_id = control::parse_run_id(&id)?;
    caller.own(state.store.runs().get(run_id).await?, &id)?;
    // The watches open before the snapshot is read: a change in between is sent twice (the
    // snapshot and the change agree), never missed.
    let tasks = state.store.tasks().watch_run(run_id).await?;
    let runs = state.store.runs().watch_one(run_id).await?;
    let run = caller.own(state.store.runs().get(run_id).await?, &id)?;
    let snapshot = state.store.tasks().for_run(run_id).await?;
    let (follow, first) = Follow::start(run, &snapshot);
    let changes = futures::stream::select(
        tasks.map_ok(|t| Change::Task(Box::new(t))),
        runs.map_ok(|r| Change::Run(Box::new(r))),
    );
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(forward(first, follow, changes, tx));
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
