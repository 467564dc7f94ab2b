//! Repository for `run_tasks`. Its operations are split by who performs them: `lease` holds the
//! fenced transitions a worker makes (`batch`: many per write), `graph` the scheduler's
//! promotion, skipping, cancel and retry.

mod batch;
pub mod graph;
mod lease;
mod watch;

pub use graph::{NodeState, Published, WHOLE_READY_TASKS};
pub use lease::{Claim, ClaimRequest, Deferred, Ending, Outcome, lease_token};

use futures::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use super::StoreError;
use crate::model::RunTask;

pub const COLLECTION: &str = "run_tasks";

impl crate::store::Stored for RunTask {
    const COLLECTION: &'static str = COLLECTION;
}

pub type TaskRepo = crate::store::Repo<RunTask>;

/// An index named `name` that holds only the tasks whose status is `status`.
fn partial(name: &str, keys: Document, status: &str) -> IndexModel {
    let options = IndexOptions::builder()
        .name(name.to_owned())
        .partial_filter_expression(doc! { "status": status })
        .build();
    IndexModel::builder().keys(keys).options(options).build()
}

impl TaskRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.coll
            .create_indexes([
                // The seeds' `run_tasks.workflowRunId + nodeId`, unique: one task per node per run.
                IndexModel::builder()
                    .keys(doc! { "run_id": 1, "node_id": 1 })
                    .options(unique)
                    .build(),
                // Reconcile and status queries: tasks of a run by status.
                IndexModel::builder()
                    .keys(doc! { "run_id": 1, "status": 1 })
                    .build(),
                // The per-status indexes below hold only the tasks in the status they serve
                // (partial), so a task enters each once and most writes touch none of them: a
                // pending or finished task is in neither, a claim moves it from one to the other.
                // Running tasks by worker (handing back a dead worker's tasks).
                partial(
                    "running_by_worker",
                    doc! { "status": 1, "worker_id": 1 },
                    "running",
                ),
                // Wait reasons: setting one reads only the class's queued keys, clearing only
                // the keys that have a reason.
                partial(
                    "queued_by_class_reason",
                    doc! { "status": 1, "class": 1, "wait_reason": 1 },
                    "queued",
                ),
                // Expired leases.
                partial(
                    "running_by_lease_expiry",
                    doc! { "status": 1, "lease_expires_at": 1 },
                    "running",
                ),
                // Claims and completions are fenced on the lease token.
                IndexModel::builder()
                    .keys(doc! { "lease_token": 1 })
                    .options(
                        IndexOptions::builder()
                            .partial_filter_expression(
                                doc! { "lease_token": { "$type": "string" } },
                            )
                            .build(),
                    )
                    .build(),
                // Queued tasks published in an older Redis epoch (reconcile, every pass).
                IndexModel::builder()
                    .keys(doc! { "published_epoch": 1 })
                    .options(
                        IndexOptions::builder()
                            .partial_filter_expression(doc! { "status": "queued" })
                            .build(),
                    )
                    .build(),
                // The publisher's queue: tasks due to be appended to their stream.
                IndexModel::builder()
                    .keys(doc! { "publish_due": 1 })
                    .options(
                        IndexOptions::builder()
                            .partial_filter_expression(doc! { "publish_due": { "$type": "date" } })
                            .build(),
                    )
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Drops the full per-status indexes of schema 5 and earlier, which [`Self::create_indexes`]
    /// replaced with partial ones under new names (a partial index cannot take an old index's
    /// name and key with other options). Dropping one that is already gone is fine.
    pub async fn drop_full_status_indexes(&self) -> Result<(), StoreError> {
        for name in [
            "status_1_worker_id_1",
            "status_1_class_1_wait_reason_1",
            "status_1_lease_expires_at_1",
        ] {
            match self.coll.drop_index(name).await {
                Ok(()) => {}
                // IndexNotFound (27), or NamespaceNotFound (26) on a fresh database.
                Err(e) if matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if matches!(c.code, 26 | 27)) =>
                    {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Inserts the tasks that are not there yet (ids are deterministic, so a retried creation
    /// skips what an interrupted one inserted), in unordered batches of 1,000, four at a time
    /// (mongod commits concurrent batches together).
    pub async fn insert_missing(&self, tasks: &[RunTask]) -> Result<(), StoreError> {
        let chunks: Vec<&[RunTask]> = tasks.chunks(1000).collect();
        for group in chunks.chunks(4) {
            let inserts: Vec<_> = group.iter().map(|c| self.insert_chunk(c)).collect();
            futures::future::try_join_all(inserts).await?;
        }
        Ok(())
    }

    async fn insert_chunk(&self, chunk: &[RunTask]) -> Result<(), StoreError> {
        use mongodb::error::ErrorKind;
        match self.coll.insert_many(chunk).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(m)
                    if m.write_concern_error.is_none()
                        && m.write_errors
                            .as_ref()
                            .is_some_and(|errs| errs.iter().all(|w| w.code == 11000)) =>
                {
                    Ok(())
                }
                _ => Err(e.into()),
            },
        }
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<RunTask>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }

    pub async fn by_node(
        &self,
        run_id: ObjectId,
        node_id: &str,
    ) -> Result<Option<RunTask>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! { "run_id": run_id, "node_id": node_id })
            .await?)
    }

    /// Whether any task of the run is still pending, queued or running (an index-only probe).
    pub async fn any_active(&self, run_id: ObjectId) -> Result<bool, StoreError> {
        Ok(self
            .raw()
            .find_one(doc! {
                "run_id": run_id,
                "status": { "$in": ["pending", "queued", "running"] },
            })
            .projection(doc! { "_id": 1 })
            .await?
            .is_some())
    }

    /// Untyped access for projections (status maps of big runs).
    fn raw(&self) -> Collection<Document> {
        self.coll.clone_with_type()
    }

    /// The tasks running on these workers (the workers page: which GPU runs what).
    pub async fn running_on(&self, worker_ids: &[String]) -> Result<Vec<RunTask>, StoreError> {
        Ok(self
            .coll
            .find(doc! { "status": "running", "worker_id": { "$in": worker_ids } })
            .await?
            .try_collect()
            .await?)
    }

    /// All tasks of a run, in dependency order (ids are allocated in that order).
    pub async fn for_run(&self, run_id: ObjectId) -> Result<Vec<RunTask>, StoreError> {
        Ok(self
            .coll
            .find(doc! { "run_id": run_id })
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// Exact task counts of a run by status, and the failed node ids. The counts come from the
    /// `(run_id, status)` index alone (a covered query): cheap even for 100,000-task runs.
    pub async fn count_by_status(
        &self,
        run_id: ObjectId,
    ) -> Result<(crate::model::TaskCounts, Vec<String>), StoreError> {
        use crate::model::TaskStatus;
        let mut cursor = self
            .raw()
            .aggregate([
                doc! { "$match": { "run_id": run_id } },
                doc! { "$project": { "_id": 0, "status": 1 } },
                doc! { "$group": { "_id": "$status", "n": { "$sum": 1 } } },
            ])
            .hint(mongodb::options::Hint::Keys(
                doc! { "run_id": 1, "status": 1 },
            ))
            .await?;
        let mut counts = crate::model::TaskCounts::default();
        while let Some(group) = cursor.try_next().await? {
            let n = match group.get("n") {
                Some(mongodb::bson::Bson::Int32(n)) => u32::try_from(*n).unwrap_or(0),
                Some(mongodb::bson::Bson::Int64(n)) => u32::try_from(*n).unwrap_or(0),
                _ => 0,
            };
            let status: Option<TaskStatus> = group
                .get("_id")
                .cloned()
                .and_then(|b| mongodb::bson::from_bson(b).ok());
            match status {
                Some(TaskStatus::Pending) => counts.pending = n,
                Some(TaskStatus::Queued) => counts.queued = n,
                Some(TaskStatus::Running) => counts.running = n,
                Some(TaskStatus::Succeeded) => counts.succeeded = n,
                Some(TaskStatus::Failed) => counts.failed = n,
                Some(TaskStatus::Cancelled) => counts.cancelled = n,
                Some(TaskStatus::Skipped) => counts.skipped = n,
                None => {}
            }
        }
        let mut failed = Vec::new();
        if counts.failed > 0 {
            let mut cursor = self
                .raw()
                .find(doc! { "run_id": run_id, "status": "failed" })
                .projection(doc! { "node_id": 1 })
                .await?;
            while let Some(d) = cursor.try_next().await? {
                if let Ok(node) = d.get_str("node_id") {
                    failed.push(node.to_owned());
                }
            }
            failed.sort();
        }
        Ok((counts, failed))
    }
}
