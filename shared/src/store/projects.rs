//! Repository for `projects`.

use mongodb::IndexModel;
use mongodb::bson::{DateTime, doc};
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::{Lifecycle, Project};

pub const COLLECTION: &str = "projects";

impl crate::store::Stored for Project {
    const COLLECTION: &'static str = COLLECTION;
}

pub type ProjectRepo = crate::store::Repo<Project>;

impl ProjectRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let unique = IndexOptions::builder().unique(true).build();
        self.coll
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "slug": 1 })
                    .options(unique)
                    .build(),
            )
            .await?;
        Ok(())
    }

    /// Inserts the project; false when its workspace already has one with its slug.
    pub async fn create(&self, project: &Project) -> Result<bool, StoreError> {
        match self.coll.insert_one(project).await {
            Ok(_) => Ok(true),
            Err(e) if super::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, workspace: &str, slug: &str) -> Result<Option<Project>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! { "workspace": workspace, "slug": slug })
            .await?)
    }

    pub async fn list(&self, workspace: Option<&str>) -> Result<Vec<Project>, StoreError> {
        let filter = workspace.map_or_else(|| doc! {}, |w| doc! { "workspace": w });
        super::find_all(&self.coll, filter, doc! { "workspace": 1, "slug": 1 }).await
    }

    /// Archives or reactivates; false when there is no such project.
    pub async fn set_status(
        &self,
        workspace: &str,
        slug: &str,
        status: Lifecycle,
    ) -> Result<bool, StoreError> {
        let r = self
            .coll
            .update_one(
                doc! { "workspace": workspace, "slug": slug },
                doc! { "$set": { "status": status.as_str(), "updated_at": DateTime::now() } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }
}
