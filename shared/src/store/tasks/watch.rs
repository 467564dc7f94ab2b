//! Following a run as it happens: MongoDB change streams on its tasks and on the run, so a
//! dashboard or any client is told of each change without polling. (The deployment is a
//! replica set, which change streams need, as transactions do.)

use futures::{Stream, TryStreamExt};
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::options::FullDocumentType;
use serde::de::DeserializeOwned;

use crate::model::{RunTask, WorkflowRun};
use crate::store::{Repo, StoreError};

impl<T: DeserializeOwned + Send + Sync + Unpin + 'static> Repo<T> {
    /// Every later insert, update or replacement of a document whose `field` (a change-event
    /// path) is `id`, as the document after the change.
    async fn watch_changes(
        &self,
        field: &str,
        id: ObjectId,
    ) -> Result<impl Stream<Item = Result<T, StoreError>> + Send + Unpin + use<T>, StoreError> {
        let stream = self
            .coll
            .watch()
            .pipeline([doc! { "$match": {
                "operationType": { "$in": ["insert", "update", "replace"] },
                field: id,
            } }])
            .full_document(FullDocumentType::UpdateLookup)
            .await?;
        Ok(stream
            .map_err(StoreError::from)
            .try_filter_map(|event| std::future::ready(Ok(event.full_document))))
    }
}

impl Repo<RunTask> {
    /// Every later change to the run's tasks, as the task's document after the change. Open it
    /// before reading the tasks' current state, and no change falls between the two.
    pub async fn watch_run(
        &self,
        run_id: ObjectId,
    ) -> Result<impl Stream<Item = Result<RunTask, StoreError>> + Send + Unpin + use<>, StoreError>
    {
        self.watch_changes("fullDocument.run_id", run_id).await
    }
}

impl Repo<WorkflowRun> {
    /// Every later change to the run document (status, aggregates).
    pub async fn watch_one(
        &self,
        run_id: ObjectId,
    ) -> Result<
        impl Stream<Item = Result<WorkflowRun, StoreError>> + Send + Unpin + use<>,
        StoreError,
    > {
        self.watch_changes("documentKey._id", run_id).await
    }
}
