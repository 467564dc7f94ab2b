//! Task outputs in the bucket, with their `artifacts` pointer. The key and the pointer are
//! the same for every attempt of a task, so a retry replaces its output instead of adding one.

use bytes::Bytes;
use harmonia_shared::error::ExecError;
use harmonia_shared::model::{Artifact, StorageRef};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document};
use sha2::Digest;

use super::TaskContext;

/// One output to store.
#[derive(Debug)]
pub struct Output<'a> {
    /// File name under the task's prefix (`embeddings.jsonl`).
    pub name: &'a str,
    pub artifact_type: &'a str,
    pub content_type: &'a str,
    pub bytes: Bytes,
    pub summary: Document,
    pub lineage: Document,
}

/// Uploads to `artifacts/{workspace}/{run_id}/{task_id}/{name}` and records the pointer.
pub async fn put(ctx: &TaskContext, out: Output<'_>) -> Result<Artifact, ExecError> {
    let run = ctx
        .env
        .store
        .runs()
        .get(ctx.task.run_id)
        .await?
        .ok_or_else(|| ExecError::permanent(format!("run {} is gone", ctx.task.run_id)))?;
    let key = format!(
        "artifacts/{}/{}/{}/{}",
        run.workspace,
        ctx.task.run_id.to_hex(),
        ctx.task.id.to_hex(),
        out.name
    );
    let sha256 = hex::encode(sha2::Sha256::digest(&out.bytes));
    let size = out.bytes.len() as u64;
    let storage = &ctx.env.storage;
    storage.put_bytes(&key, out.bytes, out.content_type).await?;
    let artifact = Artifact {
        id: ObjectId::new(),
        workspace: run.workspace.clone(),
        project: run.project.clone(),
        artifact_type: out.artifact_type.to_owned(),
        name: out.name.to_owned(),
        producer_type: "run_task".to_owned(),
        producer_id: ctx.task.id,
        run_id: ctx.task.run_id,
        attempt: ctx.task.attempt,
        storage_ref: StorageRef {
            bucket: storage.bucket().to_owned(),
            uri: format!("s3://{}/{key}", storage.bucket()),
            key,
            content_type: out.content_type.to_owned(),
            size_bytes: size,
            sha256,
        },
        summary: out.summary,
        lineage: out.lineage,
        created_by: ctx.env.worker_id.clone(),
        created_at: DateTime::now(),
    };
    Ok(ctx.env.store.artifacts().put(&artifact).await?)
}
