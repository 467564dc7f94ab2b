//! Turning a validated submission into a run and its tasks: one MongoDB transaction, and
//! idempotent on the submission's `request_id`.

use std::collections::HashMap;

use harmonia_shared::model::{
    RunStatus, RunTask, SCHEMA_VERSION, TaskCounts, TaskStatus, WorkflowRun,
};
use harmonia_shared::resources::ResourceClass;
use harmonia_shared::store::{Store, StoreError};
use harmonia_shared::submission::Submission;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, DateTime};
use mongodb::error::{
    Error as MongoError, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};

/// The run a submission maps to, and whether this call created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub run_id: ObjectId,
    pub new: bool,
}

/// Creates the run for `sub`, or returns the one an earlier submission with the same
/// `request_id` created.
pub async fn create_run(store: &Store, sub: &Submission) -> Result<Created, StoreError> {
    if let Some(existing) = store.runs().by_request_id(&sub.request_id).await? {
        return Ok(Created {
            run_id: existing.id,
            new: false,
        });
    }
    let (run, tasks) = documents(sub, None)?;
    match insert_run(store, &run, &tasks).await {
        Ok(()) => Ok(Created {
            run_id: run.id,
            new: true,
        }),
        Err(e) if is_duplicate_key(&e) => {
            // Another scheduler replica created it between our look-up and our insert.
            let existing = store.runs().by_request_id(&sub.request_id).await?;
            existing
                .map(|r| Created {
                    run_id: r.id,
                    new: false,
                })
                .ok_or_else(|| e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Builds the run document and its tasks (in dependency order; roots `queued`, the rest
/// `pending`).
pub fn documents(
    sub: &Submission,
    retry_of: Option<ObjectId>,
) -> Result<(WorkflowRun, Vec<RunTask>), StoreError> {
    let now = DateTime::now();
    let run_id = ObjectId::new();
    let mut downstream: HashMap<&str, Vec<String>> = HashMap::new();
    for spec in &sub.tasks {
        for dep in &spec.depends_on {
            downstream
                .entry(dep.as_str())
                .or_default()
                .push(spec.id.clone());
        }
    }
    let tasks = sub
        .tasks
        .iter()
        .map(|spec| {
            let root = spec.depends_on.is_empty();
            Ok(RunTask {
                id: ObjectId::new(),
                run_id,
                node_id: spec.id.clone(),
                task_type: spec.task_type.clone(),
                params: bson::to_document(&spec.params).map_err(MongoError::from)?,
                upstream_node_ids: spec.depends_on.clone(),
                downstream_node_ids: downstream.remove(spec.id.as_str()).unwrap_or_default(),
                waiting_on: spec.depends_on.clone(),
                resources: spec.resources,
                class: ResourceClass::from(spec.resources).to_string(),
                max_attempts: spec.max_attempts,
                timeout_s: spec.timeout_s,
                priority: spec.priority,
                // Roots are ready now: queued, and due for the publisher.
                status: if root {
                    TaskStatus::Queued
                } else {
                    TaskStatus::Pending
                },
                attempt: 0,
                attempt_base: 0,
                publish_due: root.then_some(now),
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
                queued_at: root.then_some(now),
                started_at: None,
                finished_at: None,
                duration_ms: None,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let queued = u32::try_from(
        tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Queued)
            .count(),
    )
    .unwrap_or(u32::MAX);
    let task_count = u32::try_from(tasks.len()).unwrap_or(u32::MAX);
    let run = WorkflowRun {
        id: run_id,
        request_id: sub.request_id.clone(),
        workspace: sub.workspace.clone(),
        project: sub.project.clone(),
        name: sub.name.clone(),
        created_by: sub.created_by.clone(),
        tags: sub.tags.clone(),
        status: RunStatus::Queued,
        task_count,
        counts: TaskCounts {
            pending: task_count - queued,
            queued,
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
    };
    Ok((run, tasks))
}

/// Inserts the run and its tasks atomically, retrying transient transaction errors as the
/// driver's transaction guidance prescribes.
pub async fn insert_run(
    store: &Store,
    run: &WorkflowRun,
    tasks: &[RunTask],
) -> Result<(), MongoError> {
    let mut session = store.client().start_session().await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        session.start_transaction().await?;
        let written = async {
            store
                .runs()
                .insert(run, &mut session)
                .await
                .map_err(into_mongo)?;
            store
                .tasks()
                .insert_all(tasks, &mut session)
                .await
                .map_err(into_mongo)
        }
        .await;
        let result = match written {
            Ok(()) => commit(&mut session).await,
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        };
        match result {
            Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) && attempts < 5 => continue,
            other => return other,
        }
    }
}

async fn commit(session: &mut mongodb::ClientSession) -> Result<(), MongoError> {
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
            other => return other,
        }
    }
}

fn into_mongo(e: StoreError) -> MongoError {
    match e {
        StoreError::Mongo(m) => m,
        other => MongoError::custom(other.to_string()),
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().any(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}
