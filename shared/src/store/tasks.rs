//! Repository for `run_tasks`.

use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};

use super::StoreError;
use crate::model::RunTask;

pub const COLLECTION: &str = "run_tasks";

#[derive(Debug, Clone)]
pub struct TaskRepo {
    coll: Collection<RunTask>,
}

impl TaskRepo {
    pub fn new(db: &Database) -> Self {
        Self {
            coll: db.collection(COLLECTION),
        }
    }

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
                // Fleet-wide scans: everything queued or running, by worker.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "worker_id": 1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Inserts a run's tasks inside the caller's transaction, in batches so one batch stays well
    /// under the 48 MB message limit.
    pub async fn insert_all(
        &self,
        tasks: &[RunTask],
        session: &mut ClientSession,
    ) -> Result<(), StoreError> {
        for chunk in tasks.chunks(10_000) {
            self.coll.insert_many(chunk).session(&mut *session).await?;
        }
        Ok(())
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
}
