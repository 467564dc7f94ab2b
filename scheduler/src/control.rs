//! Cancel and retry, with the EmboFlow seed's semantics. Each checks the transition is legal
//! first and fails with one clear sentence otherwise.

use std::collections::HashSet;

use harmonia_shared::model::{RunTask, TaskStatus, WorkflowRun};
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use harmonia_shared::submission::{Submission, TaskSpec};
use mongodb::bson::oid::ObjectId;

use crate::create;

/// Why a control action did not happen. The gateway maps these to 404, 409 and 500.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such run, task or letter (or, through the gateway, not one the caller may see).
    #[error("{0}")]
    NotFound(String),
    /// The transition is not legal in the resource's current state.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] harmonia_shared::store::StoreError),
    #[error(transparent)]
    Queue(#[from] harmonia_shared::queue::QueueError),
    #[error("encoding a task's params: {0}")]
    Encode(#[from] serde_json::Error),
}

type Result<T> = std::result::Result<T, ControlError>;

impl From<create::CreateError> for ControlError {
    fn from(e: create::CreateError) -> Self {
        match e {
            create::CreateError::Store(e) => Self::Store(e),
            create::CreateError::Queue(e) => Self::Queue(e),
        }
    }
}

macro_rules! conflict {
    ($($arg:tt)*) => { return Err(ControlError::Conflict(format!($($arg)*))) };
}

pub fn parse_run_id(id: &str) -> Result<ObjectId> {
    ObjectId::parse_str(id)
        .map_err(|_| ControlError::NotFound(format!("'{id}' is not a run id (24 hex digits)")))
}

pub async fn load_run(store: &Store, id: &str) -> Result<WorkflowRun> {
    let run_id = parse_run_id(id)?;
    store
        .runs()
        .get(run_id)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("no run with id {id}")))
}

async fn load_task(store: &Store, run: &WorkflowRun, node: &str) -> Result<RunTask> {
    store
        .tasks()
        .by_node(run.id, node)
        .await?
        .ok_or_else(|| ControlError::NotFound(format!("run {} has no task '{node}'", run.id)))
}

/// Signals the workers running these tasks (they also learn it from their lease renewal).
async fn signal_cancel(queue: &Queue, ids: &[ObjectId]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
    Ok(queue.signal_cancel(&ids).await?)
}

/// Cancels a whole run. Returns (tasks cancelled now, running tasks signalled).
pub async fn cancel_run(queue: &Queue, store: &Store, id: &str) -> Result<(u64, usize)> {
    let run = load_run(store, id).await?;
    if run.status.is_terminal() {
        conflict!(
            "run {id} has already {}; there is nothing to cancel",
            past(run.status)
        );
    }
    store.runs().set_cancel_requested(run.id).await?;
    let (now, running) = store.tasks().cancel(run.id, None).await?;
    signal_cancel(queue, &running).await?;
    store.refresh_run(run.id).await?;
    Ok((now, running.len()))
}

/// Cancels one task and everything downstream of it that has not run.
pub async fn cancel_task(
    queue: &Queue,
    store: &Store,
    id: &str,
    node: &str,
) -> Result<(u64, usize)> {
    let run = load_run(store, id).await?;
    let task = load_task(store, &run, node).await?;
    if task.status.is_terminal() {
        conflict!(
            "task '{node}' of run {id} is already {}",
            task.status.as_str()
        );
    }
    let nodes = [node.to_owned()];
    let tasks = store.tasks();
    // What waits below is found before the cancel lands: from then on the worker may stop the
    // attempt and the scheduler close those tasks on its `cancelled` event before this does.
    // They are this cancel's either way, so the count is of them cancelled, by whichever.
    let below = tasks.pending_downstream(run.id, &nodes).await?;
    let (now, running) = tasks.cancel(run.id, Some(&nodes)).await?;
    let downstream = if now == 0 && running.is_empty() {
        0 // it finished meanwhile: what waits on it is the scheduler's to promote or close
    } else {
        tasks.close(run.id, &below, TaskStatus::Cancelled).await?;
        tasks
            .count_in_status(run.id, &below, TaskStatus::Cancelled)
            .await?
    };
    // A queued task may be running on a deferred claim (docs/protocol.md §4): it is signalled
    // too, so its attempt stops at once rather than when it next looks at MongoDB. (A whole
    // run's queued tasks are not: one message per task of a large run would be too many.)
    let mut signalled = running.clone();
    if task.status == TaskStatus::Queued && !signalled.contains(&task.id) {
        signalled.push(task.id);
    }
    signal_cancel(queue, &signalled).await?;
    store.refresh_run(run.id).await?;
    Ok((now + downstream, running.len()))
}

/// Resets a finished task and its whole downstream subtree on the same run, bumping the task's
/// attempt. Returns the nodes reset.
pub async fn retry_task(store: &Store, id: &str, node: &str) -> Result<Vec<String>> {
    let run = load_run(store, id).await?;
    let task = load_task(store, &run, node).await?;
    if !task.status.is_terminal() {
        conflict!(
            "task '{node}' of run {id} is {}; only finished tasks (failed, cancelled, skipped, succeeded) can be retried",
            task.status.as_str()
        );
    }
    let graph = store.tasks().graph(run.id).await?;
    if let Some((busy, state)) = subtree(&graph, node)
        .iter()
        .filter_map(|n| graph.get(n).map(|s| (n, s)))
        .find(|(_, s)| matches!(s.status, TaskStatus::Running))
    {
        conflict!(
            "task '{busy}' downstream of '{node}' is {}; cancel it or wait before retrying",
            state.status.as_str()
        );
    }
    let nodes = subtree(&graph, node);
    store
        .tasks()
        .reset(run.id, &nodes, &[node.to_owned()])
        .await?;
    store.runs().reopen(run.id).await?;
    store.refresh_run(run.id).await?;
    Ok(nodes)
}

/// `node` and every node downstream of it.
fn subtree(
    graph: &std::collections::HashMap<String, harmonia_shared::store::tasks::NodeState>,
    node: &str,
) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut stack = vec![node.to_owned()];
    while let Some(n) = stack.pop() {
        if let Some(state) = graph.get(&n)
            && seen.insert(n)
        {
            stack.extend(state.downstream.iter().cloned());
        }
    }
    let mut nodes: Vec<String> = seen.into_iter().collect();
    nodes.sort();
    nodes
}

/// Creates a new run with fresh tasks from an existing one, linked by `retry_of`.
pub async fn retry_run(store: &Store, id: &str) -> Result<ObjectId> {
    let run = load_run(store, id).await?;
    if !run.status.is_terminal() {
        conflict!(
            "run {id} is still {:?}; cancel it or wait before retrying",
            run.status
        );
    }
    let tasks = store.tasks().for_run(run.id).await?;
    let specs = tasks
        .iter()
        .map(|t| {
            Ok(TaskSpec {
                id: t.node_id.clone(),
                task_type: t.task_type.clone(),
                params: serde_json::to_value(&t.params)?
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                depends_on: t.upstream_node_ids.clone(),
                resources: t.resources,
                max_attempts: t.max_attempts,
                timeout_s: t.timeout_s,
                priority: t.priority,
            })
        })
        .collect::<std::result::Result<Vec<_>, serde_json::Error>>()?;
    let sub = Submission {
        request_id: format!("retry-{}", ObjectId::new().to_hex()),
        workspace: run.workspace.clone(),
        project: run.project.clone(),
        name: run.name.clone(),
        created_by: run.created_by.clone(),
        tags: run.tags.clone(),
        tasks: specs,
    };
    let created = create::create_run(store, &sub, Some(run.id), create::Dispatch::Publisher).await;
    Ok(created?.run_id)
}

fn past(status: harmonia_shared::model::RunStatus) -> &'static str {
    use harmonia_shared::model::RunStatus;
    match status {
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "been cancelled",
        RunStatus::Queued | RunStatus::Running => "started",
    }
}
