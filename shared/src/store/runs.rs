//! Repository for `workflow_runs`: the only code that knows that collection's name and shape.

use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use mongodb::options::IndexOptions;
use mongodb::{ClientSession, Collection, Database, IndexModel};

use super::StoreError;
use crate::model::WorkflowRun;

pub const COLLECTION: &str = "workflow_runs";

#[derive(Debug, Clone)]
pub struct RunRepo {
    coll: Collection<WorkflowRun>,
}

impl RunRepo {
    pub fn new(db: &Database) -> Self {
        Self {
            coll: db.collection(COLLECTION),
        }
    }

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

    pub async fn insert(
        &self,
        run: &WorkflowRun,
        session: &mut ClientSession,
    ) -> Result<(), StoreError> {
        self.coll.insert_one(run).session(session).await?;
        Ok(())
    }
}
