//! Repository for `api_tokens`.

use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};

use super::StoreError;
use crate::model::ApiToken;

pub const COLLECTION: &str = "api_tokens";

/// `last_used_at` is written at most once a minute per token: a busy client costs no write
/// per request.
const TOUCH_EVERY_MS: i64 = 60_000;

impl crate::store::Stored for ApiToken {
    const COLLECTION: &'static str = COLLECTION;
}

pub type TokenRepo = crate::store::Repo<ApiToken>;

impl TokenRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "created_at": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }

    pub async fn insert(&self, token: &ApiToken) -> Result<(), StoreError> {
        self.coll.insert_one(token).await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        Ok(self.coll.find_one(doc! { "_id": id }).await?)
    }

    pub async fn list(&self, workspace: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        let filter = workspace.map_or_else(|| doc! {}, |w| doc! { "workspace": w });
        super::find_all(&self.coll, filter, doc! { "created_at": -1 }).await
    }

    /// Revokes the token; false when there is no such token or it was revoked already.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let r = self
            .coll
            .update_one(
                doc! { "_id": id, "revoked_at": null },
                doc! { "$set": { "revoked_at": DateTime::now() } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Records a use, unless one was recorded in the last minute.
    pub async fn touch(&self, id: &str) -> Result<(), StoreError> {
        let now = DateTime::now();
        let stale = DateTime::from_millis(now.timestamp_millis() - TOUCH_EVERY_MS);
        self.coll
            .update_one(
                doc! { "_id": id, "$or": [
                    { "last_used_at": null }, { "last_used_at": { "$lt": stale } },
                ] },
                doc! { "$set": { "last_used_at": now } },
            )
            .await?;
        Ok(())
    }
}
