//! `inference.generate`: text generation with a quantized GGUF llama-family model from the
//! warm pool. Greedy, hence deterministic, at temperature 0.

use std::time::Instant;

use bytes::Bytes;
use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_params::GenerateParams;
use mongodb::bson::{Document, doc};

use super::TaskContext;
use super::output::{self, Output};
use super::params;
use crate::models::llama::Generator;

pub async fn run(ctx: &TaskContext, p: &GenerateParams) -> Result<Document, ExecError> {
    let artifact = params::model(ctx, p.model_artifact_id.as_deref()).await?;
    let weights = params::weights_file(&artifact, p.weights.as_deref(), &[".gguf"])?.to_owned();
    let pooled = params::pooled(ctx, &artifact, &weights, |_, weights, device| {
        let g = Generator::load(weights, device)?;
        let bytes = g.file_bytes;
        Ok((g, bytes))
    })
    .await?;
    let generator = pooled.model;

    let started = Instant::now();
    let mut results = Vec::with_capacity(p.prompts.len());
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    for (i, prompt) in p.prompts.iter().enumerate() {
        ctx.progress(
            "generating",
            i as f32 * 100.0 / p.prompts.len() as f32,
            None,
        );
        let (g, prompt_owned, cancel) = (generator.clone(), prompt.clone(), ctx.cancel.clone());
        let (chat, max, temp, seed) = (p.chat, p.max_tokens as usize, p.temperature, p.seed);
        let out = tokio::task::spawn_blocking(move || {
            g.generate(&prompt_owned, chat, max, temp, seed, &|| {
                cancel.is_cancelled()
            })
        })
        .await
        .map_err(|e| ExecError::retryable_from("generating", e))??
        .ok_or(ExecError::Cancelled)?;
        prompt_tokens += out.prompt_tokens;
        completion_tokens += out.completion_tokens;
        results.push(serde_json::json!({
            "index": i,
            "prompt": prompt,
            "text": out.text,
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "finish_reason": out.finish_reason,
        }));
    }
    let gen_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut body = Vec::new();
    for r in &results {
        serde_json::to_writer(&mut body, r)
            .map_err(|e| ExecError::permanent_from("writing the generations", e))?;
        body.push(b'\n');
    }
    let stored = output::put(
        ctx,
        Output {
            name: "generations.jsonl",
            artifact_type: "generations",
            content_type: "application/x-ndjson",
            bytes: Bytes::from(body),
            summary: doc! { "prompts": p.prompts.len() as i64, "completion_tokens": completion_tokens as i64 },
            lineage: doc! { "model_artifact_id": artifact.id, "model": &artifact.name },
        },
    )
    .await?;
    let texts: Vec<String> = results
        .iter()
        .filter_map(|r| r["text"].as_str().map(str::to_owned))
        .collect();
    Ok(doc! {
        "artifact_id": stored.id,
        "artifact_ids": [stored.id],
        "key": &stored.storage_ref.key,
        "texts": texts,
        "prompt_tokens": prompt_tokens as i64,
        "completion_tokens": completion_tokens as i64,
        "model_artifact_id": artifact.id,
        "device": &pooled.device,
        "pool_hit": pooled.hit,
        "model_load_ms": pooled.load_ms,
        "generate_ms": gen_ms,
        "tokens_per_s": completion_tokens as f64 / (gen_ms / 1e3).max(1e-9),
    })
}
