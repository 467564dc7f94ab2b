//! `inference.embed`: sentence embeddings with a BERT-family model from the warm pool, written
//! to the bucket as JSONL (`{"index": i, "embedding": [...]}` per line).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_params::EmbedParams;
use mongodb::bson::{Document, doc};

use super::TaskContext;
use super::output::{self, Output};
use super::params;
use crate::models::bert::Embedder;

pub async fn run(ctx: &TaskContext, p: &EmbedParams) -> Result<Document, ExecError> {
    let texts = match (&p.texts, &p.input_key) {
        (Some(t), _) => t.clone(),
        (None, Some(key)) => read_jsonl(ctx, key).await?,
        (None, None) => {
            return Err(ExecError::permanent(
                "params.texts: give texts or input_key",
            ));
        }
    };
    let artifact = params::model(ctx, p.model_artifact_id.as_deref()).await?;
    let weights = params::weights_file(&artifact, p.weights.as_deref(), &[".safetensors", ".bin"])?
        .to_owned();
    let pooled = params::pooled(ctx, &artifact, &weights, |dir, weights, device| {
        let e = Embedder::load(dir, weights, device)?;
        let bytes = e.weight_bytes;
        Ok((e, bytes))
    })
    .await?;
    let embedder: Arc<Embedder> = pooled.model;

    let n = texts.len();
    let started = Instant::now();
    let vectors = embed(ctx, embedder.clone(), texts, p).await?;
    let embed_ms = started.elapsed().as_secs_f64() * 1e3;
    let body = jsonl(&vectors, embedder.dim)?;
    ctx.progress("uploading", 100.0, None);
    let stored = output::put(
        ctx,
        Output {
            name: "embeddings.jsonl",
            artifact_type: "embeddings",
            content_type: "application/x-ndjson",
            bytes: body,
            summary: doc! { "count": n as i64, "dim": embedder.dim as i64, "normalized": p.normalize },
            lineage: doc! {
                "model_artifact_id": artifact.id,
                "model": &artifact.name,
                "model_version": &artifact.version,
                "inputs": match &p.input_key { Some(k) => doc! { "key": k }, None => doc! { "texts": n as i64 } },
            },
        },
    )
    .await?;
    Ok(doc! {
        "artifact_id": stored.id,
        "artifact_ids": [stored.id],
        "key": &stored.storage_ref.key,
        "sha256": &stored.storage_ref.sha256,
        "count": n as i64,
        "dim": embedder.dim as i64,
        "model_artifact_id": artifact.id,
        "device": &pooled.device,
        "pool_hit": pooled.hit,
        "model_load_ms": pooled.load_ms,
        "embed_ms": embed_ms,
        "sentences_per_s": n as f64 / (embed_ms / 1e3).max(1e-9),
    })
}

/// Embeds `texts` on a blocking thread, reporting progress; stops when cancelled.
async fn embed(
    ctx: &TaskContext,
    model: Arc<Embedder>,
    texts: Vec<String>,
    p: &EmbedParams,
) -> Result<Vec<Vec<f32>>, ExecError> {
    let n = texts.len();
    let (cancel, progress) = (ctx.cancel.clone(), ctx.clone());
    let (batch, normalize) = (p.batch_size as usize, p.normalize);
    tokio::task::spawn_blocking(move || {
        model.embed(
            &texts,
            batch,
            normalize,
            &|| cancel.is_cancelled(),
            &|done| {
                progress.progress("embedding", done as f32 * 100.0 / n.max(1) as f32, None);
            },
        )
    })
    .await
    .map_err(|e| ExecError::retryable_from("embedding", e))??
    .ok_or(ExecError::Cancelled)
}

/// One `{"index", "embedding"}` line per vector.
fn jsonl(vectors: &[Vec<f32>], dim: usize) -> Result<Bytes, ExecError> {
    let mut body = Vec::with_capacity(vectors.len() * dim * 12);
    for (i, v) in vectors.iter().enumerate() {
        let line = serde_json::json!({ "index": i, "embedding": v });
        serde_json::to_writer(&mut body, &line)
            .map_err(|e| ExecError::permanent_from("writing the embeddings", e))?;
        body.push(b'\n');
    }
    Ok(Bytes::from(body))
}

/// Texts from a JSONL object: one `{"text": "..."}` per line.
async fn read_jsonl(ctx: &TaskContext, key: &str) -> Result<Vec<String>, ExecError> {
    let bytes = ctx.env.storage.get_bytes(key).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ExecError::permanent(format!("params.input_key: {key} is not UTF-8: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                ExecError::permanent(format!("params.input_key: {key} line {}: {e}", i + 1))
            })?;
            v.get("text")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    ExecError::permanent(format!(
                        "params.input_key: {key} line {}: expected {{\"text\": string}}",
                        i + 1
                    ))
                })
        })
        .collect()
}
