//! `artifacts`: pointer documents for outputs stored in the bucket.

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// Where the bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageRef {
    pub bucket: String,
    pub key: String,
    pub uri: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub workspace: String,
    pub project: String,
    /// `embeddings`, `generations`, `model`.
    #[serde(rename = "type")]
    pub artifact_type: String,
    /// Output name, unique per producer: a retried task replaces its pointer, never adds one.
    pub name: String,
    pub producer_type: String,
    pub producer_id: ObjectId,
    pub run_id: ObjectId,
    /// The attempt that wrote the current bytes.
    pub attempt: u32,
    pub storage_ref: StorageRef,
    pub summary: Document,
    /// What it was made from: model artifact ids, input objects.
    pub lineage: Document,
    pub created_by: String,
    pub created_at: DateTime,
}
