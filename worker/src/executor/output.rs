//! Task outputs in the bucket, with their `artifacts` pointer. Each attempt uploads under a key
//! of its own, then stores the pointer fenced by its lease (one per task and output name, so a
//! retry replaces its output instead of adding one) and deletes the object the pointer no
//! longer names. An attempt that lost its lease stores nothing and deletes its own upload: a
//! late write from a partitioned or frozen worker can never replace the live attempt's output.

use bytes::Bytes;
use harmonia_shared::error::ExecError;
use harmonia_shared::model::{Artifact, StorageRef};
use harmonia_shared::store::outputs::FencedPut;
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

/// Uploads to `artifacts/{workspace}/{run_id}/{task_id}/{attempt}/{name}` and records the
/// pointer. `Cancelled` when the attempt no longer holds the task.
pub async fn put(ctx: &TaskContext, out: Output<'_>) -> Result<Artifact, ExecError> {
    let run = ctx
        .env
        .store
        .runs()
        .get(ctx.task.run_id)
        .await?
        .ok_or_else(|| ExecError::permanent(format!("run {} is gone", ctx.task.run_id)))?;
    let key = format!(
        "artifacts/{}/{}/{}/{}/{}",
        run.workspace,
        ctx.task.run_id.to_hex(),
        ctx.task.id.to_hex(),
        ctx.task.attempt,
        out.name
    );
    let store = &ctx.env.store;
    ctx.claim().await?;
    if !store
        .tasks()
        .holds_lease(ctx.task.id, &ctx.lease_token)
        .await?
    {
        tracing::warn!(task = %ctx.task.id, output = out.name, "lease lost: not uploading the output");
        return Err(ExecError::Cancelled);
    }
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
    match store.put_output(&artifact, &ctx.lease_token).await? {
        FencedPut::Stored {
            artifact,
            replaced_key,
        } => {
            if let Some(old) = replaced_key.filter(|old| *old != artifact.storage_ref.key) {
                delete_quietly(ctx, &old, "replaced by a later attempt").await;
            }
            Ok(*artifact)
        }
        FencedPut::LeaseLost => {
            tracing::warn!(task = %ctx.task.id, output = artifact.name, "lease lost: output refused");
            delete_quietly(ctx, &artifact.storage_ref.key, "refused").await;
            Err(ExecError::Cancelled)
        }
    }
}

/// Deletes an object no pointer names; failing that only leaves an orphan behind (logged).
async fn delete_quietly(ctx: &TaskContext, key: &str, why: &str) {
    match ctx.env.storage.delete(key).await {
        Ok(()) => tracing::info!(task = %ctx.task.id, key, "deleted an output {why}"),
        Err(e) => tracing::warn!(task = %ctx.task.id, key, "deleting an output {why}: {e:#}"),
    }
}
