//! Repository for `workflow_runs`: the only code that knows that collection's name and shape.

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::WorkflowRun;

pub const COLLECTION: &str = "workflow_runs";

impl crate::store::Stored for WorkflowRun {
    const COLLECTION: &'static str = COLLECTION;
}

pub type RunRepo = crate::store::Repo<WorkflowRun>;

impl RunRepo {
    /// The seeds' indexes: idempotency key, project history, status filters.
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.coll
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "request_id": 1 })
                    .options(unique)
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "project": 1, "created_at": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "status": 1, "created_at": -1 })
                    .build(),
                IndexModel::builder().keys(doc! { "retry_of": 1 }).build(),
                // Repair pages through active runs in id order.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "_id": 1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<WorkflowRun>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }

    pub async fn by_request_id(&self, request_id: &str) -> Result<Option<WorkflowRun>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! { "request_id": request_id })
            .await?)
    }

    /// Inserts the run document, the commit point of a run's creation; false when a run with its id or `request_id` already exists (another
    /// scheduler replica stored the same submission first).
    pub async fn insert(&self, run: &WorkflowRun) -> Result<bool, StoreError> {
        match self.coll.insert_one(run).await {
            Ok(_) => Ok(true),
            Err(e) if super::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Which of `ids` are runs (the others' creation died before its commit point).
    pub async fn existing(&self, ids: &[ObjectId]) -> Result<Vec<ObjectId>, StoreError> {
        let mut cursor = self
            .coll
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .await?;
        let mut found = Vec::with_capacity(ids.len());
        while let Some(d) = cursor.try_next().await? {
            if let Ok(id) = d.get_object_id("_id") {
                found.push(id);
            }
        }
        Ok(found)
    }

    /// Inserts many runs at once (benchmarks and imports; not the submission path).
    pub async fn insert_many(&self, runs: &[WorkflowRun]) -> Result<(), StoreError> {
        self.coll.insert_many(runs).await?;
        Ok(())
    }

    /// Marks the run running when its first task starts (matches nothing afterwards).
    pub async fn mark_started(&self, run_id: ObjectId) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": run_id, "started_at": null },
                doc! { "$set": { "started_at": DateTime::now(), "status": "running" } },
            )
            .await?;
        Ok(())
    }

    /// Persists aggregates derived by [`WorkflowRun::with_aggregates`].
    pub async fn set_aggregates(&self, updated: &WorkflowRun) -> Result<(), StoreError> {
        let status = updated.status;
        // A recount taken while tasks were still moving must not reopen a run that a later
        // recount already finished.
        let mut filter = doc! { "_id": updated.id };
        if !status.is_terminal() {
            filter.insert("status", doc! { "$in": ["queued", "running"] });
        }
        self.coll
            .update_one(
                filter,
                doc! { "$set": {
                    "counts": mongodb::bson::to_bson(&updated.counts)?,
                    "failed_task_ids": &updated.failed_task_ids,
                    "status": mongodb::bson::to_bson(&status)?,
                    "finished_at": updated.finished_at,
                    "duration_ms": updated.duration_ms,
                } },
            )
            .await?;
        Ok(())
    }

    /// Runs not finished yet (the reconcile pass's scope).
    /// One page of active (queued or running) run ids, in id order after `after`: repair walks
    /// all of them, a page at a time.
    pub async fn active_ids(
        &self,
        after: Option<ObjectId>,
        limit: i64,
    ) -> Result<Vec<ObjectId>, StoreError> {
        use futures::TryStreamExt;
        let mut filter = doc! { "status": { "$in": ["queued", "running"] } };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        let docs: Vec<mongodb::bson::Document> = self
            .coll
            .clone_with_type()
            .find(filter)
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get_object_id("_id").ok())
            .collect())
    }

    pub async fn set_cancel_requested(&self, run_id: ObjectId) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": run_id },
                doc! { "$set": { "cancel_requested": true } },
            )
            .await?;
        Ok(())
    }

    /// Reopens a finished run after `retry task`.
    pub async fn reopen(&self, run_id: ObjectId) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": run_id },
                doc! { "$set": {
                    "status": "running", "finished_at": null, "duration_ms": null,
                    "cancel_requested": false,
                } },
            )
            .await?;
        Ok(())
    }
}
