//! Repository for `licenses`: one document per SPDX id.

use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};
use mongodb::options::{IndexOptions, ReturnDocument};

use super::StoreError;
use crate::model::License;

pub const COLLECTION: &str = "licenses";

impl crate::store::Stored for License {
    const COLLECTION: &'static str = COLLECTION;
}

pub type LicenseRepo = crate::store::Repo<License>;

impl LicenseRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "spdx_id": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// The license with this SPDX id, created on first sight.
    pub async fn upsert(
        &self,
        spdx_id: &str,
        commercial_use: Option<bool>,
        text_path: Option<&str>,
        repo: &str,
    ) -> Result<License, StoreError> {
        let update = || {
            self.coll
                .find_one_and_update(
                    doc! { "spdx_id": spdx_id },
                    doc! {
                        "$setOnInsert": {
                            "_id": mongodb::bson::oid::ObjectId::new(),
                            "commercial_use": commercial_use,
                            "notes": null,
                            "first_seen_in": repo,
                            "created_at": DateTime::now(),
                        },
                        "$max": { "text_path": text_path },
                    },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
        };
        let found = match update().await {
            Err(e) if super::is_duplicate_key(&e) => update().await?,
            other => other?,
        };
        found.ok_or_else(|| {
            StoreError::Mongo(mongodb::error::Error::custom(
                "upserted license not returned",
            ))
        })
    }

    pub async fn get(
        &self,
        id: mongodb::bson::oid::ObjectId,
    ) -> Result<Option<License>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }
}
