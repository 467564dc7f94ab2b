//! Repository for `workers`: registration, heartbeats, and who is alive.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::{WorkerDoc, WorkerState};

pub const COLLECTION: &str = "workers";
/// Stopped or vanished workers are forgotten after a day.
const RETENTION_S: u64 = 24 * 3600;

impl crate::store::Stored for WorkerDoc {
    const COLLECTION: &'static str = COLLECTION;
}

pub type WorkerRepo = crate::store::Repo<WorkerDoc>;

impl WorkerRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let ttl = IndexOptions::builder()
            .expire_after(Duration::from_secs(RETENTION_S))
            .build();
        self.coll
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "heartbeat_at": 1 })
                    .options(ttl)
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "state": 1, "heartbeat_at": -1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    pub async fn register(&self, worker: &WorkerDoc) -> Result<(), StoreError> {
        self.coll
            .replace_one(doc! { "_id": &worker.id }, worker)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        state: WorkerState,
        running_tasks: u32,
    ) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$set": {
                    "heartbeat_at": DateTime::now(),
                    "state": mongodb::bson::to_bson(&state)?,
                    "running_tasks": i64::from(running_tasks),
                } },
            )
            .await?;
        Ok(())
    }

    /// Records a worker's GPUs as it last saw them (their free memory changes).
    pub async fn set_gpus(
        &self,
        id: &str,
        gpus: &[crate::resources::Gpu],
    ) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "gpus": mongodb::bson::to_bson(gpus)? } },
            )
            .await?;
        Ok(())
    }

    /// Records the models a worker holds (after each model task).
    pub async fn set_models(
        &self,
        id: &str,
        cached: &[String],
        loaded: &[String],
    ) -> Result<(), StoreError> {
        self.coll
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "models_cached": cached, "models_loaded": loaded } },
            )
            .await?;
        Ok(())
    }

    /// Every worker that heartbeated within `within`, whatever its state, newest first.
    pub async fn seen_within(&self, within: Duration) -> Result<Vec<WorkerDoc>, StoreError> {
        let since =
            DateTime::from_millis(DateTime::now().timestamp_millis() - within.as_millis() as i64);
        Ok(self
            .coll
            .find(doc! { "heartbeat_at": { "$gte": since } })
            .sort(doc! { "heartbeat_at": -1 })
            .await?
            .try_collect()
            .await?)
    }

    /// Workers that heartbeated within `within` and still take work.
    pub async fn live(&self, within: Duration) -> Result<Vec<WorkerDoc>, StoreError> {
        let since =
            DateTime::from_millis(DateTime::now().timestamp_millis() - within.as_millis() as i64);
        Ok(self
            .coll
            .find(doc! { "state": "running", "heartbeat_at": { "$gte": since } })
            .await?
            .try_collect()
            .await?)
    }

    pub async fn get(&self, id: &str) -> Result<Option<WorkerDoc>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }
}
