//! Following a run as it happens: MongoDB change streams on its tasks and on the run, so a
//! dashboard or any client is told of each change without polling. (The deployment is a
//! replica set, which change streams need, as transactions do.)

use futures::{Stream, TryStreamExt};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::options::FullDocumentType;

use super::TaskRepo;
use crate::model::{RunTask, WorkflowRun};
use crate::store::{RunRepo, StoreError};

/// The current documents of changed inserts, updates and replacements.
fn changed(run_field: &str, run_id: ObjectId) -> [mongodb::bson::Document; 1] {
    [doc! { "$match": {
        "operationType": { "$in": ["insert", "update", "replace"] },
        run_field: run_id,
    } }]
}

impl TaskRepo {
    /// Every later change to the run's tasks, as the task's document after the change. Open it
    /// before reading the tasks' current state, and no change falls between the two.
    pub async fn watch_run(
        &self,
        run_id: ObjectId,
    ) -> Result<impl Stream<Item = Result<RunTask, StoreError>> + Send + Unpin + use<>, StoreError>
    {
        let stream = self
            .coll
            .watch()
            .pipeline(changed("fullDocument.run_id", run_id))
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        Ok(stream
            .map_err(StoreError::from)
            .try_filter_map(|event| std::future::ready(Ok(event.full_document))))
    }
}

impl RunRepo {
    /// Every later change to the run document (status, aggregates).
    pub async fn watch_one(
        &self,
        run_id: ObjectId,
    ) -> Result<
        impl Stream<Item = Result<WorkflowRun, StoreError>> + Send + Unpin + use<>,
        StoreError,
    > {
        let stream = self
            .coll
            .watch()
            .pipeline(changed("documentKey._id", run_id))
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        Ok(stream
            .map_err(StoreError::from)
            .try_filter_map(|event| std::future::ready(Ok(event.full_document))))
    }
}
