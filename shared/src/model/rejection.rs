//! `submission_rejections`: every refused submission, where its submitter can read why.

use mongodb::bson::DateTime;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionRejection {
    /// The submission's stream entry id: a redelivered entry overwrites, never duplicates.
    #[serde(rename = "_id")]
    pub entry_id: String,
    pub request_id: Option<String>,
    pub errors: Vec<FieldError>,
    /// The first KiB of the payload, to recognise it by.
    pub payload_head: String,
    pub payload_bytes: u64,
    pub received_at: DateTime,
}

/// One problem with a submission, addressed by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}
