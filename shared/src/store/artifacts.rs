//! Repository for `artifacts`: pointers to outputs in the bucket.

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, doc};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{ClientSession, IndexModel};

use super::StoreError;
use crate::model::Artifact;

pub const COLLECTION: &str = "artifacts";

impl crate::store::Stored for Artifact {
    const COLLECTION: &'static str = COLLECTION;
}

pub type ArtifactRepo = crate::store::Repo<Artifact>;

impl ArtifactRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_indexes([
                // One pointer per output name of a producer: retries replace, never add.
                IndexModel::builder()
                    .keys(doc! { "producer_type": 1, "producer_id": 1, "name": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "run_id": 1, "created_at": 1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "project": 1, "created_at": -1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Saves the pointer for `(producer, name)` inside `session`'s transaction, replacing one
    /// an earlier attempt left. Returns the stored pointer (its id is stable across attempts)
    /// and the pointer it replaced, if any.
    pub async fn put_in(
        &self,
        session: &mut ClientSession,
        artifact: &Artifact,
    ) -> Result<(Artifact, Option<Artifact>), StoreError> {
        let mut set = bson::to_document(artifact)?;
        set.remove("_id");
        set.remove("created_at");
        let before = self
            .coll
            .find_one_and_update(
                doc! {
                    "producer_type": &artifact.producer_type,
                    "producer_id": artifact.producer_id,
                    "name": &artifact.name,
                },
                doc! {
                    "$set": set,
                    "$setOnInsert": { "_id": artifact.id, "created_at": artifact.created_at },
                },
            )
            .upsert(true)
            .return_document(ReturnDocument::Before)
            .session(session)
            .await?;
        let mut stored = artifact.clone();
        if let Some(before) = &before {
            stored.id = before.id;
            stored.created_at = before.created_at;
        }
        Ok((stored, before))
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<Artifact>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }

    pub async fn for_run(&self, run_id: ObjectId) -> Result<Vec<Artifact>, StoreError> {
        super::find_all(
            &self.coll,
            doc! { "run_id": run_id },
            doc! { "created_at": 1 },
        )
        .await
    }

    pub async fn for_producer(&self, producer_id: ObjectId) -> Result<Vec<Artifact>, StoreError> {
        let filter = doc! { "producer_id": producer_id };
        super::find_all(&self.coll, filter, doc! { "name": 1 }).await
    }
}
