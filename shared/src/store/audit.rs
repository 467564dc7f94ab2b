//! Repository for `audit_logs`: append and read. There is deliberately no update or delete.

use futures::TryStreamExt;
use mongodb::IndexModel;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use super::StoreError;
use crate::model::AuditEntry;

pub const COLLECTION: &str = "audit_logs";

impl crate::store::Stored for AuditEntry {
    const COLLECTION: &'static str = COLLECTION;
}

pub type AuditRepo = crate::store::Repo<AuditEntry>;

/// What to read back: newest first, a page at a time.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub workspace: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Entries older than this one (the previous page's last id).
    pub before: Option<ObjectId>,
    pub limit: i64,
}

impl AuditRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        self.coll
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "workspace": 1, "created_at": -1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "created_at": -1, "_id": -1 })
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "resource_type": 1, "resource_id": 1, "created_at": 1 })
                    .build(),
            ])
            .await?;
        Ok(())
    }

    pub async fn append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.coll.insert_one(entry).await?;
        Ok(())
    }

    /// Entries matching `q`, newest first. (Ordered by `created_at`, then id: ids made by
    /// different processes in the same second do not sort by time.)
    pub async fn find(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut filter = Document::new();
        if let Some(w) = &q.workspace {
            filter.insert("workspace", w);
        }
        if let Some(a) = &q.actor {
            filter.insert("actor", a);
        }
        if let Some(a) = &q.action {
            filter.insert("action", a);
        }
        if let Some(before) = q.before {
            let at = self.coll.find_one(doc! { "_id": before }).await?;
            let at = at.map_or(mongodb::bson::DateTime::MIN, |e| e.created_at);
            filter.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": at } },
                    doc! { "created_at": at, "_id": { "$lt": before } },
                ],
            );
        }
        Ok(self
            .coll
            .find(filter)
            .sort(doc! { "created_at": -1, "_id": -1 })
            .limit(q.limit.clamp(1, 1000))
            .await?
            .try_collect()
            .await?)
    }

    /// Every entry about one resource, oldest first.
    pub async fn for_resource(
        &self,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        super::find_all(
            &self.coll,
            doc! { "resource_type": resource_type, "resource_id": resource_id },
            doc! { "created_at": 1, "_id": 1 },
        )
        .await
    }
}
