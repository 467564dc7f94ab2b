//! Repository for `submission_rejections`.

use mongodb::IndexModel;
use mongodb::bson::doc;
use mongodb::options::IndexOptions;

use super::StoreError;
use crate::model::SubmissionRejection;

pub const COLLECTION: &str = "submission_rejections";
/// Rejections are kept for 30 days.
const RETENTION_S: u64 = 30 * 24 * 3600;

impl crate::store::Stored for SubmissionRejection {
    const COLLECTION: &'static str = COLLECTION;
}

pub type RejectionRepo = crate::store::Repo<SubmissionRejection>;

impl RejectionRepo {
    pub async fn create_indexes(&self) -> Result<(), StoreError> {
        let ttl = IndexOptions::builder()
            .expire_after(std::time::Duration::from_secs(RETENTION_S))
            .build();
        self.coll
            .create_indexes([
                IndexModel::builder().keys(doc! { "request_id": 1 }).build(),
                IndexModel::builder()
                    .keys(doc! { "received_at": 1 })
                    .options(ttl)
                    .build(),
            ])
            .await?;
        Ok(())
    }

    /// Records a rejection; a redelivered submission entry replaces its earlier record.
    pub async fn record(&self, rejection: &SubmissionRejection) -> Result<(), StoreError> {
        self.coll
            .replace_one(doc! { "_id": &rejection.entry_id }, rejection)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<SubmissionRejection>, StoreError> {
        Ok(self
            .coll
            .find_one(doc! { "request_id": request_id })
            .await?)
    }
}
