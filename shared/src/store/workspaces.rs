//! Repository for `workspaces`.

use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::{Lifecycle, Workspace};

pub const COLLECTION: &str = "workspaces";

impl crate::store::Stored for Workspace {
    const COLLECTION: &'static str = COLLECTION;
}

pub type WorkspaceRepo = crate::store::Repo<Workspace>;

impl WorkspaceRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "slug": 1 })
                    .options(unique)
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Inserts the workspace; false when one with its slug exists.
    pub async fn create(&self, workspace: &Workspace) -> Result<bool, StoreError> {
        match self.coll.insert_one(workspace).await {
            Ok(_) => Ok(true),
            Err(e) if super::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, slug: &str) -> Result<Option<Workspace>, StoreError> {
        Ok(self.coll.find_one(doc! { "slug": slug }).await?)
    }

    pub async fn list(&self) -> Result<Vec<Workspace>, StoreError> {
        super::find_all(&self.coll, doc! {}, doc! { "slug": 1 }).await
    }

    /// Archives or reactivates; false when there is no such workspace.
    pub async fn set_status(&self, slug: &str, status: Lifecycle) -> Result<bool, StoreError> {
        let r = self
            .coll
            .update_one(
                doc! { "slug": slug },
                doc! { "$set": { "status": status.as_str(), "updated_at": DateTime::now() } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }
}
