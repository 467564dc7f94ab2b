//! Repository for `dashboard_sessions`.

use std::time::Duration;

use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::Session;
use crate::model::token::hash_secret;

pub const COLLECTION: &str = "dashboard_sessions";

impl crate::store::Stored for Session {
    const COLLECTION: &'static str = COLLECTION;
}

pub type SessionRepo = crate::store::Repo<Session>;

impl SessionRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        // MongoDB deletes expired sessions itself (within a minute of expiry); `get` checks
        // the time too, so an expired one is never honoured in between.
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "expires_at": 1 })
                    .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
                    .build(),
            )
            .await?;
        self.coll
            .create_index(IndexModel::builder().keys(doc! { "token_id": 1 }).build())
            .await?;
        Ok(())
    }

    pub async fn insert(&self, session: &Session) -> Result<(), StoreError> {
        self.coll.insert_one(session).await?;
        Ok(())
    }

    /// The unexpired session whose cookie secret is `secret`.
    pub async fn get(&self, secret: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! {
                "_id": hash_secret(secret),
                "expires_at": { "$gt": DateTime::now() },
            })
            .await?)
    }

    /// Signs out: the cookie's secret no longer opens anything.
    pub async fn delete(&self, secret: &str) -> Result<(), StoreError> {
        self.coll
            .delete_one(doc! { "_id": hash_secret(secret) })
            .await?;
        Ok(())
    }
}
