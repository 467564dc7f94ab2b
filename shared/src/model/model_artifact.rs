//! `model_artifacts`: one document per model snapshot (a Hub revision, or a conversion of one).

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// One file of a snapshot, verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Path inside the repo (`1_Pooling/config.json`).
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
    /// Where a copy lives in the bucket, when one was uploaded.
    pub s3_key: Option<String>,
}

/// How a converted artifact was made from its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub source_artifact_id: ObjectId,
    /// `f16`, `bf16`, `safetensors` (from pickle), `q8_0`, `q4_0`.
    pub conversion: String,
    pub task_id: ObjectId,
    /// What the validation pass measured (e.g. the minimum cosine against the source).
    pub validation: Option<Document>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelArtifact {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The repo id (`sentence-transformers/all-MiniLM-L6-v2`).
    pub name: String,
    /// The commit the revision resolved to; conversions append their suffix (`<commit>-f16`).
    pub version: String,
    /// The revision that was asked for (`main`, a tag, a commit).
    pub revision: String,
    /// Where the files live: `s3://bucket/prefix` or the host-local snapshot directory.
    pub path: String,
    pub files: Vec<ArtifactFile>,
    pub size_bytes: u64,
    /// `sha256` of the manifest (`name\0sha256\n` per file, sorted): one value that names the
    /// exact set of bytes, used as the warm pool's key.
    #[serde(default)]
    pub hashes: Document,
    pub source_url: String,
    pub license_id: Option<ObjectId>,
    pub tags: Vec<String>,
    /// `safetensors`, `gguf`, `pytorch`, or `mixed`.
    pub format: String,
    pub lineage: Option<Lineage>,
    pub created_at: DateTime,
    /// The worker that first registered it.
    pub created_by: String,
    pub updated_at: DateTime,
}

impl ModelArtifact {
    pub fn manifest_sha256(&self) -> Option<&str> {
        self.hashes.get_str("sha256").ok()
    }

    pub fn file(&self, name: &str) -> Option<&ArtifactFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// The manifest hash of a set of files (order-independent).
pub fn manifest_sha256(files: &[ArtifactFile]) -> String {
    use sha2::Digest;
    let mut entries: Vec<_> = files.iter().map(|f| (&f.name, &f.sha256)).collect();
    entries.sort();
    let mut h = sha2::Sha256::new();
    for (name, sha) in entries {
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(sha.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}
