//! Turning a validated submission into a run and its tasks, idempotent on `request_id`.
//!
//! A run of 100,000 tasks does not fit in one MongoDB transaction (WiredTiger refuses
//! transactions larger than its cache), so creation uses a commit marker instead: every id is
//! derived from the `request_id`, all tasks are inserted first (a retry inserts only the
//! missing ones), and the run document goes in last. Nothing reads tasks of a run whose
//! document does not exist, so a run appears whole or not at all.
//!
//! A submission's ready tasks (those waiting on nothing) are inserted already queued and
//! marked as published in the current Redis epoch, and appended to their streams right after
//! the run document: no MongoDB write per task between creation and the claim. A scheduler
//! that dies (or fails) between the run document and the appends has not acked the
//! submission; when it is delivered again its run's queued tasks are published again. If
//! Redis lost its data meanwhile, the epoch differs and reconcile publishes them (never those
//! of a run whose document was not written).

use std::collections::HashMap;

use harmonia_shared::model::{
    RunStatus, RunTask, SCHEMA_VERSION, TaskCounts, TaskStatus, WorkflowRun,
};
use harmonia_shared::queue::{Queue, QueueError};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::tasks::{Published, WHOLE_READY_TASKS};
use harmonia_shared::store::{Store, StoreError};
use harmonia_shared::submission::{Submission, TaskSpec};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, DateTime};
use mongodb::error::Error as MongoError;
use sha2::{Digest, Sha256};

/// How a new run's ready tasks reach their streams.
#[derive(Debug, Clone, Copy)]
pub enum Dispatch<'a> {
    /// Inserted pending and queued once the run document exists; the scheduler's publisher
    /// appends them (a caller without the scheduler's Redis: the CLI's `retry run`).
    Publisher,
    /// Inserted queued and appended here (see the module's comment). `redelivered`: the
    /// submission was delivered before, and its first handling may have stopped between the
    /// run document and the appends.
    Direct { queue: &'a Queue, redelivered: bool },
}

impl<'a> Dispatch<'a> {
    /// The Redis the ready tasks are appended to here, if they are.
    fn queue(self) -> Option<&'a Queue> {
        match self {
            Dispatch::Direct { queue, .. } => Some(queue),
            Dispatch::Publisher => None,
        }
    }
}

/// Why a run could not be created (it may exist; creating it again completes it).
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("appending the run's ready tasks to their streams: {0}")]
    Queue(#[from] QueueError),
}

/// The run a submission maps to, and whether this call created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub run_id: ObjectId,
    pub new: bool,
}

/// The run id of a request: the same on every retry of the same submission.
pub fn run_id_for(request_id: &str) -> ObjectId {
    let digest = Sha256::digest(format!("harmonia-run:{request_id}").as_bytes());
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    ObjectId::from_bytes(bytes)
}

/// Task ids share the run's first 8 bytes and end with the task's index in dependency order,
/// so sorting a run's tasks by `_id` gives that order.
fn task_id(run_id: ObjectId, index: usize) -> ObjectId {
    let mut bytes = run_id.bytes();
    bytes[8..].copy_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// Tasks built and inserted at a time: a 100,000-task run is never all in memory as
/// documents (insert_missing writes them 1,000 a command, four commands at once).
const CREATE_CHUNK: usize = 4000;

/// What is known of a submission's run before it is created: the run an earlier delivery of
/// the same `request_id` created, or the Redis epoch a new run's ready tasks go in.
#[derive(Debug)]
pub enum Prior {
    Existing(Created),
    New { epoch: Option<String> },
}

/// Creates the run for `sub` (linked to `retry_of` when it retries another), or returns the
/// one an earlier submission with the same `request_id` created.
pub async fn create_run(
    store: &Store,
    sub: &Submission,
    retry_of: Option<ObjectId>,
    dispatch: Dispatch<'_>,
) -> Result<Created, CreateError> {
    match prior(store, sub, dispatch).await? {
        Prior::Existing(created) => Ok(created),
        Prior::New { epoch } => create_new(store, sub, retry_of, dispatch, epoch).await,
    }
}

/// Looks up the run of `sub`'s `request_id` and reads the current Redis epoch, at once. An
/// existing run whose submission was `redelivered` has its queued tasks made due again (the
/// first handling may have stopped before appending them). Reads only, apart from that: the
/// ingest makes them while it checks the submission's workspace and project.
pub async fn prior(
    store: &Store,
    sub: &Submission,
    dispatch: Dispatch<'_>,
) -> Result<Prior, CreateError> {
    let queue = dispatch.queue();
    // The epoch is read before the tasks go in: a loss after this read changes the epoch, and
    // reconcile publishes them again. It is never started here (the reconcile pass that starts
    // an epoch is the one that repairs what the loss broke). Read with the lookup: both are
    // on every submission's way to its run.
    let epoch = async {
        match queue {
            Some(queue) => queue.current_epoch().await.map_err(CreateError::from),
            None => Ok(None),
        }
    };
    let existing =
        async { Ok::<_, CreateError>(store.runs().by_request_id(&sub.request_id).await?) };
    let (existing, epoch) = tokio::try_join!(existing, epoch)?;
    let Some(existing) = existing else {
        return Ok(Prior::New { epoch });
    };
    if let Dispatch::Direct {
        redelivered: true, ..
    } = dispatch
    {
        // Due again: the scheduler's publisher appends them.
        store.tasks().republish_queued_in(existing.id).await?;
    }
    Ok(Prior::Existing(Created {
        run_id: existing.id,
        new: false,
    }))
}

/// Creates the run of a submission [`prior`] found no run for, its ready tasks published in
/// `epoch` (what [`prior`] read).
pub async fn create_new(
    store: &Store,
    sub: &Submission,
    retry_of: Option<ObjectId>,
    dispatch: Dispatch<'_>,
    epoch: Option<String>,
) -> Result<Created, CreateError> {
    let queue = dispatch.queue();
    let now = DateTime::now();
    let mut run = run_document(sub, retry_of, now);
    let downstream = downstream_of(sub);
    let models = crate::models::models_of(store, sub).await?;
    let mut ready = Vec::new();
    for (n, specs) in sub.tasks.chunks(CREATE_CHUNK).enumerate() {
        let mut tasks = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let index = n * CREATE_CHUNK + i;
            let below = downstream[index]
                .iter()
                .map(|&j| sub.tasks[j as usize].id.clone())
                .collect();
            let mut task = new_task(run.id, index, spec, below, now)?;
            task.model.clone_from(&models[index]);
            if queue.is_some() && spec.depends_on.is_empty() {
                task.status = TaskStatus::Queued;
                task.queued_at = Some(now);
                task.published_epoch.clone_from(&epoch);
                // The first few travel whole: their entries carry a copy for the worker.
                ready.push(if ready.len() < WHOLE_READY_TASKS {
                    Published::whole(task.clone())
                } else {
                    Published {
                        id: task.id,
                        class: task.class.clone(),
                        attempt: 0,
                        model: task.model.clone(),
                        task: None,
                    }
                });
            }
            tasks.push(task);
        }
        store.tasks().insert_missing(&tasks).await?;
    }
    let queued = u32::try_from(ready.len()).unwrap_or(u32::MAX);
    run.counts.pending -= queued;
    run.counts.queued = queued;
    let new = store.runs().insert(&run).await?; // false: a replica raced us
    // The commit point has passed: queue the ready tasks.
    match queue {
        Some(queue) => crate::publish::append(queue, &ready).await?,
        None => {
            store.tasks().queue_ready_in(run.id).await?;
        }
    }
    Ok(Created {
        run_id: run.id,
        new,
    })
}

/// Each task's downstream tasks (the reverse of `depends_on`), as positions in `sub.tasks`:
/// four bytes an edge where ids would take a string each.
fn downstream_of(sub: &Submission) -> Vec<Vec<u32>> {
    let position: HashMap<&str, u32> = sub
        .tasks
        .iter()
        .enumerate()
        .map(|(i, spec)| (spec.id.as_str(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let mut downstream = vec![Vec::new(); sub.tasks.len()];
    for (i, spec) in sub.tasks.iter().enumerate() {
        for dep in &spec.depends_on {
            if let Some(&p) = position.get(dep.as_str()) {
                downstream[p as usize].push(u32::try_from(i).unwrap_or(u32::MAX));
            }
        }
    }
    downstream
}

/// The run document of a new run (its tasks are inserted before it, all `pending`; those
/// waiting on nothing are queued once it exists).
fn run_document(sub: &Submission, retry_of: Option<ObjectId>, now: DateTime) -> WorkflowRun {
    let task_count = u32::try_from(sub.tasks.len()).unwrap_or(u32::MAX);
    WorkflowRun {
        id: run_id_for(&sub.request_id),
        request_id: sub.request_id.clone(),
        workspace: sub.workspace.clone(),
        project: sub.project.clone(),
        name: sub.name.clone(),
        created_by: sub.created_by.clone(),
        tags: sub.tags.clone(),
        task_types: {
            let types: std::collections::BTreeSet<&str> =
                sub.tasks.iter().map(|t| t.task_type.as_str()).collect();
            types.into_iter().map(str::to_owned).collect()
        },
        status: RunStatus::Queued,
        task_count,
        counts: TaskCounts {
            pending: task_count,
            ..TaskCounts::default()
        },
        failed_task_ids: Vec::new(),
        retry_of,
        cancel_requested: false,
        created_at: now,
        started_at: None,
        finished_at: None,
        duration_ms: None,
        schema_version: SCHEMA_VERSION,
    }
}

/// The `run_tasks` document of task `index` of a new run: pending, nothing run yet.
fn new_task(
    run_id: ObjectId,
    index: usize,
    spec: &TaskSpec,
    downstream_node_ids: Vec<String>,
    now: DateTime,
) -> Result<RunTask, StoreError> {
    Ok(RunTask {
        id: task_id(run_id, index),
        run_id,
        node_id: spec.id.clone(),
        task_type: spec.task_type.clone(),
        params: bson::to_document(&spec.params).map_err(MongoError::from)?,
        upstream_node_ids: spec.depends_on.clone(),
        downstream_node_ids,
        waiting_on: spec.depends_on.clone(),
        resources: spec.resources,
        class: ResourceClass::from(spec.resources).to_string(),
        model: None,
        max_attempts: spec.max_attempts,
        timeout_s: spec.timeout_s,
        priority: spec.priority,
        status: TaskStatus::Pending,
        attempt: 0,
        attempt_base: 0,
        publish_due: None,
        published_epoch: None,
        lease_token: None,
        lease_expires_at: None,
        cancel_requested: false,
        worker_id: None,
        gpu_indices: Vec::new(),
        wait_reason: None,
        error: None,
        outputs: None,
        output_artifact_ids: Vec::new(),
        log_tail: Vec::new(),
        progress: None,
        created_at: now,
        queued_at: None,
        started_at: None,
        finished_at: None,
        duration_ms: None,
        attempts: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_request_and_ordered_per_run() {
        let run = run_id_for("req-1");
        assert_eq!(run, run_id_for("req-1"));
        assert_ne!(run, run_id_for("req-2"));
        let ids: Vec<ObjectId> = (0..300).map(|i| task_id(run, i)).collect();
        assert!(ids.windows(2).all(|w| w[0].bytes() < w[1].bytes()));
    }
}
