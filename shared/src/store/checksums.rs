//! Repository for `checksums` (append-only).

use mongodb::IndexModel;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;

use super::StoreError;
use crate::model::Checksum;

pub const COLLECTION: &str = "checksums";

impl crate::store::Stored for Checksum {
    const COLLECTION: &'static str = COLLECTION;
}

pub type ChecksumRepo = crate::store::Repo<Checksum>;

impl ChecksumRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "artifact_id": 1, "verified_at": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "repo": 1, "file": 1, "verified_at": -1 })
                    .build(),
                IndexModel::builder().keys(doc! { "task_id": 1 }).build(),
            ])
            .await?;
        Ok(())
    }

    pub async fn record_many(&self, records: &[Checksum]) -> Result<(), StoreError> {
        if !records.is_empty() {
            self.coll.insert_many(records).await?;
        }
        Ok(())
    }

    /// Records successful checks of the files of one artifact.
    pub async fn record_for(
        &self,
        artifact_id: ObjectId,
        mut records: Vec<Checksum>,
    ) -> Result<(), StoreError> {
        for r in &mut records {
            r.artifact_id = Some(artifact_id);
        }
        self.record_many(&records).await
    }

    pub async fn for_task(&self, task_id: ObjectId) -> Result<Vec<Checksum>, StoreError> {
        super::find_all(
            &self.coll,
            doc! { "task_id": task_id },
            doc! { "verified_at": 1 },
        )
        .await
    }

    /// The checks of any of these artifacts, in one query.
    pub async fn for_artifacts(&self, ids: &[ObjectId]) -> Result<Vec<Checksum>, StoreError> {
        let filter = doc! { "artifact_id": { "$in": ids } };
        super::find_all(&self.coll, filter, doc! { "verified_at": 1 }).await
    }

    pub async fn for_artifact(&self, artifact_id: ObjectId) -> Result<Vec<Checksum>, StoreError> {
        let filter = doc! { "artifact_id": artifact_id };
        super::find_all(&self.coll, filter, doc! { "verified_at": 1 }).await
    }
}
