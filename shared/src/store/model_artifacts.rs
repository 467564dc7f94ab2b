//! Repository for `model_artifacts`.

use mongodb::IndexModel;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{self, DateTime, doc};
use mongodb::options::{IndexOptions, ReturnDocument};

use super::StoreError;
use crate::model::{ArtifactFile, ModelArtifact};

pub const COLLECTION: &str = "model_artifacts";

/// What a worker learnt about a snapshot: merged into the `(name, version)` document.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub revision: &'a str,
    pub path: &'a str,
    pub files: &'a [ArtifactFile],
    pub source_url: &'a str,
    pub license_id: Option<ObjectId>,
    pub tags: &'a [String],
    pub format: &'a str,
    pub lineage: Option<&'a crate::model::Lineage>,
    pub worker: &'a str,
}

impl crate::store::Stored for ModelArtifact {
    const COLLECTION: &'static str = COLLECTION;
}

pub type ModelArtifactRepo = crate::store::Repo<ModelArtifact>;

impl ModelArtifactRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "name": 1, "version": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
                IndexModel::builder().keys(doc! { "tags": 1 }).build(),
                IndexModel::builder()
                    .keys(doc! { "lineage.source_artifact_id": 1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Registers a snapshot, or merges more files into one already registered: two tasks that
    /// fetched different files of one revision describe one artifact. One atomic update, so
    /// concurrent registrations cannot lose each other's files.
    pub async fn register(&self, r: &Registration<'_>) -> Result<ModelArtifact, StoreError> {
        let names: Vec<&str> = r.files.iter().map(|f| f.name.as_str()).collect();
        // Pipeline updates evaluate strings starting with `$`: every value from outside is
        // wrapped in `$literal`.
        let lit = |v: bson::Bson| doc! { "$literal": v };
        let new_files = lit(bson::to_bson(r.files)?);
        let kept = doc! { "$filter": {
            "input": { "$ifNull": ["$files", []] },
            "cond": { "$not": { "$in": ["$$this.name", lit(bson::to_bson(&names)?)] } },
        } };
        let merged = doc! { "$concatArrays": [kept, new_files] };
        let now = DateTime::now();
        let mut set = doc! {
            "revision": lit(r.revision.into()),
            "path": lit(r.path.into()),
            "source_url": lit(r.source_url.into()),
            "format": lit(r.format.into()),
            "updated_at": now,
            "files": merged,
            "created_at": { "$ifNull": ["$created_at", now] },
            "created_by": { "$ifNull": ["$created_by", lit(r.worker.into())] },
            "tags": { "$setUnion": [{ "$ifNull": ["$tags", []] }, lit(bson::to_bson(r.tags)?)] },
            "lineage": { "$ifNull": ["$lineage", lit(bson::to_bson(&r.lineage)?)] },
            "license_id": { "$ifNull": [r.license_id, "$license_id"] },
        };
        if r.license_id.is_none() {
            set.insert("license_id", doc! { "$ifNull": ["$license_id", null] });
        }
        let pipeline = vec![
            doc! { "$set": set },
            doc! { "$set": {
                "size_bytes": { "$sum": "$files.size_bytes" },
            } },
        ];
        let filter = doc! { "name": r.name, "version": r.version };
        let update = || {
            self.coll
                .find_one_and_update(filter.clone(), pipeline.clone())
                .upsert(true)
                .return_document(ReturnDocument::After)
        };
        // Two first registrations can race on the unique index; the loser merges on retry.
        let doc = match update().await {
            Err(e) if super::is_duplicate_key(&e) => update().await?,
            other => other?,
        };
        let mut artifact = doc.ok_or_else(|| {
            StoreError::Mongo(mongodb::error::Error::custom(
                "upserted model artifact not returned",
            ))
        })?;
        // The manifest hash covers the merged file list, so it is computed after the merge.
        let manifest = crate::model::model_artifact::manifest_sha256(&artifact.files);
        if artifact.manifest_sha256() != Some(manifest.as_str()) {
            self.coll
                .update_one(
                    doc! { "_id": artifact.id, "files": bson::to_bson(&artifact.files)? },
                    doc! { "$set": { "hashes.sha256": &manifest } },
                )
                .await?;
            artifact.hashes.insert("sha256", manifest);
        }
        Ok(artifact)
    }

    pub async fn get(&self, id: ObjectId) -> Result<Option<ModelArtifact>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }

    /// The newest `limit` snapshots, conversions included.
    pub async fn newest(&self, limit: i64) -> Result<Vec<ModelArtifact>, StoreError> {
        use futures::TryStreamExt;
        Ok(self
            .coll
            .find(doc! {})
            .sort(doc! { "_id": -1 })
            .limit(limit)
            .await?
            .try_collect()
            .await?)
    }

    /// The conversions made from `source`.
    pub async fn derived_from(&self, source: ObjectId) -> Result<Vec<ModelArtifact>, StoreError> {
        super::find_all(
            &self.coll,
            doc! { "lineage.source_artifact_id": source },
            doc! { "_id": 1 },
        )
        .await
    }

    pub async fn by_name_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ModelArtifact>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! { "name": name, "version": version })
            .await?)
    }
}
