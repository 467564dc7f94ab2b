//! `checksums`: one document per verification of one file, kept as an audit trail.

use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

/// Where the expected value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedSource {
    /// The submitter's `sha256` parameter.
    Task,
    /// The Hub's LFS sha256 (its `X-Linked-Etag`).
    HubLfs,
    /// The git blob id of a small (non-LFS) file: verified as git's sha1, sha256 recorded.
    GitBlob,
    /// Computed while writing a file this system produced (conversions, outputs).
    Produced,
}

/// What was checked, by whom: the fields every record needs.
#[derive(Debug, Clone, Copy)]
pub struct CheckOf<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub verified_by: &'a str,
    pub task_id: ObjectId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checksum {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The model artifact the file belongs to; absent when verification failed before any
    /// artifact was registered.
    pub artifact_id: Option<ObjectId>,
    pub repo: String,
    pub revision: String,
    pub file: String,
    pub algorithm: String,
    /// The value computed from the bytes.
    pub value: String,
    pub expected: Option<String>,
    pub expected_source: ExpectedSource,
    pub ok: bool,
    pub size_bytes: u64,
    pub verified_by: String,
    pub task_id: Option<ObjectId>,
    pub verified_at: DateTime,
}

impl Checksum {
    /// A successful check of `file` that computed `value`; `expected` is what it was compared
    /// with (none for files this system wrote).
    pub fn new(
        of: CheckOf<'_>,
        file: &str,
        value: String,
        expected: Option<&str>,
        source: ExpectedSource,
        size_bytes: u64,
    ) -> Self {
        Self {
            id: ObjectId::new(),
            artifact_id: None,
            repo: of.repo.to_owned(),
            revision: of.revision.to_owned(),
            file: file.to_owned(),
            algorithm: if source == ExpectedSource::GitBlob {
                "git-sha1"
            } else {
                "sha256"
            }
            .into(),
            value,
            expected: expected.map(str::to_owned),
            expected_source: source,
            ok: true,
            size_bytes,
            verified_by: of.verified_by.to_owned(),
            task_id: Some(of.task_id),
            verified_at: DateTime::now(),
        }
    }
}
