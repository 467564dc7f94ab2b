//! `model.convert`: from a verified source model, write converted weights (f16, bf16,
//! safetensors from pickle, GGUF q8_0 / q4_0), validate them by a forward pass against the
//! source, upload them, and register each as a new `model_artifacts` version with lineage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_params::ConvertParams;
use harmonia_shared::model::{
    ArtifactFile, CheckOf, Checksum, ExpectedSource, Lineage, ModelArtifact,
};
use harmonia_shared::store::model_artifacts::Registration;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use super::TaskContext;
use super::params;
use crate::models::ModelError;
use crate::models::bert::{Embedder, cosine, read_json};
use crate::models::convert::{self, Conversion};
use crate::models::verify::{Expected, hash_file};

/// Sentences the converted model must embed like the source.
const VALIDATION: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "A worker downloads a model, verifies it and runs inference.",
    "Quantization trades a little accuracy for a smaller, faster model.",
    "Where is the nearest train station?",
    "MongoDB is the source of truth; Redis is the transport.",
    "Le chat dort sur le canapé.",
    "1234 5678 90",
    "Short.",
];

/// The model being converted, verified on this host.
struct Source {
    artifact: ModelArtifact,
    /// Its local snapshot directory.
    dir: PathBuf,
    /// The weights file converted.
    weights: String,
    is_bert: bool,
    /// The source's embeddings of [`VALIDATION`], when outputs are validated.
    reference: Option<Vec<Vec<f32>>>,
}

pub async fn run(ctx: &TaskContext, p: &ConvertParams) -> Result<Document, ExecError> {
    let source = prepare(ctx, p).await?;
    let work = ctx
        .env
        .models
        .hub
        .cache_dir()
        .join("harmonia-converted")
        .join(ctx.task.id.to_hex());
    let mut results = Vec::new();
    let mut ids = Vec::new();
    for (i, to) in p.to.iter().enumerate() {
        if ctx.cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let conversion = Conversion::parse(to).ok_or_else(|| {
            ExecError::permanent(format!("params.to[{i}]: unknown conversion '{to}'"))
        })?;
        let pct = i as f32 * 100.0 / p.to.len() as f32;
        let (result, id) = convert_one(ctx, &source, conversion, &work, pct).await?;
        results.push(result);
        ids.push(id);
    }
    let _ = std::fs::remove_dir_all(&work);
    ctx.progress("done", 100.0, None);
    let mut out = doc! { "source_artifact_id": source.artifact.id, "conversions": results };
    if let [only] = ids.as_slice() {
        out.insert("model_artifact_id", *only);
    }
    Ok(out)
}

/// Finds the source model and its weights, makes sure its files are here and verified, and
/// computes the validation reference.
async fn prepare(ctx: &TaskContext, p: &ConvertParams) -> Result<Source, ExecError> {
    let artifact = params::model(ctx, p.model_artifact_id.as_deref()).await?;
    let weights = match &p.weights {
        Some(w) => params::weights_file(&artifact, Some(w), &[])?,
        None => ["model.safetensors", "pytorch_model.bin"]
            .into_iter()
            .find(|n| artifact.file(n).is_some())
            .map_or_else(
                || params::weights_file(&artifact, None, &[".safetensors", ".bin"]),
                Ok,
            )?,
    }
    .to_owned();
    ctx.progress("verifying source", 0.0, None);
    let dir = ctx
        .env
        .models
        .ensure_local(&artifact, &ctx.cancel, &|_| {})
        .await?;
    let is_bert = read_json::<serde_json::Value>(&dir.join("config.json"))
        .ok()
        .and_then(|c| c.get("model_type")?.as_str().map(str::to_owned))
        .is_some_and(|t| t == "bert");
    let reference = if p.validate && is_bert {
        let (d, w) = (dir.clone(), dir.join(&weights));
        let load = move || embed_validation(&Embedder::load(&d, &w, &candle_core::Device::Cpu)?);
        Some(blocking(load).await?)
    } else {
        None
    };
    Ok(Source {
        artifact,
        dir,
        weights,
        is_bert,
        reference,
    })
}

/// One conversion: convert, validate against the source when asked, upload and register.
/// Returns its entry of the outputs and the new artifact's id.
async fn convert_one(
    ctx: &TaskContext,
    source: &Source,
    conversion: Conversion,
    work: &Path,
    pct: f32,
) -> Result<(Document, ObjectId), ExecError> {
    let to = conversion.name();
    ctx.progress("converting", pct, Some(to.to_owned()));
    let out_dir = work.join(to);
    std::fs::create_dir_all(&out_dir).map_err(io)?;
    let out = out_dir.join(conversion.file_name());
    let started = Instant::now();
    let architecture = if source.is_bert { "bert" } else { "unknown" };
    let meta = vec![
        ("general.architecture", architecture.to_owned()),
        ("general.name", source.artifact.name.clone()),
        ("harmonia.source_version", source.artifact.version.clone()),
    ];
    let (src, dst) = (source.dir.join(&source.weights), out.clone());
    let converted = blocking(move || convert::convert(&src, conversion, &dst, &meta)).await?;
    let convert_ms = started.elapsed().as_millis() as i64;
    let validation = match &source.reference {
        Some(reference) => {
            ctx.progress("validating", pct, Some(to.to_owned()));
            let (d, o, r) = (source.dir.clone(), out.clone(), reference.clone());
            let min = blocking(move || validate(&d, &o, &r)).await?;
            if min < conversion.min_cosine() {
                return Err(ExecError::permanent(format!(
                    "validation of {to} failed: least cosine similarity to the source {min:.6} \
                     < {}",
                    conversion.min_cosine()
                )));
            }
            Some(
                doc! { "min_cosine": f64::from(min), "threshold": f64::from(conversion.min_cosine()),
                "sentences": VALIDATION.len() as i64 },
            )
        }
        None => None,
    };
    let (artifact, dir) = (&source.artifact, &source.dir);
    let registered = register(
        ctx,
        artifact,
        dir,
        &source.weights,
        conversion,
        &out,
        validation.clone(),
    );
    let registered = registered.await?;
    let file = registered.file(&conversion.file_name()).cloned();
    let result = doc! {
        "to": to,
        "model_artifact_id": registered.id,
        "version": &registered.version,
        "file": conversion.file_name(),
        "size_bytes": file.as_ref().map_or(0, |f| f.size_bytes as i64),
        "sha256": file.map(|f| f.sha256),
        "convert_ms": convert_ms,
        "tensors": converted.tensors as i64,
        "kept_f32": converted.kept_f32 as i64,
        "validation": validation,
    };
    Ok((result, registered.id))
}

/// Uploads the converted weights with the source's other files (config, tokenizer) so the new
/// artifact is self-contained, and registers it.
async fn register(
    ctx: &TaskContext,
    source: &ModelArtifact,
    dir: &Path,
    weights: &str,
    conversion: Conversion,
    out: &Path,
    validation: Option<Document>,
) -> Result<ModelArtifact, ExecError> {
    ctx.claim().await?;
    let version = format!("{}-{}", source.version, conversion.name());
    let prefix = format!("models/{}/{version}", source.name);
    let storage = &ctx.env.storage;
    let mut uploads: Vec<(String, PathBuf)> = source
        .files
        .iter()
        .filter(|f| f.name != weights && !is_weights(&f.name))
        .map(|f| (f.name.clone(), dir.join(&f.name)))
        .collect();
    uploads.push((conversion.file_name(), out.to_owned()));
    let mut files = Vec::new();
    let mut checks = Vec::new();
    for (name, path) in uploads {
        let key = format!("{prefix}/{name}");
        let (file, check) = upload_one(ctx, source, &version, name, &path, key).await?;
        files.push(file);
        checks.push(check);
    }
    let mut tags = source.tags.clone();
    tags.push(conversion.name().to_owned());
    let lineage = Lineage {
        source_artifact_id: source.id,
        conversion: conversion.name().to_owned(),
        task_id: ctx.task.id,
        validation,
    };
    let path = format!("s3://{}/{prefix}", storage.bucket());
    let artifact = ctx
        .env
        .store
        .register_model(
            &Registration {
                name: &source.name,
                version: &version,
                revision: &source.revision,
                path: &path,
                files: &files,
                source_url: &source.source_url,
                license_id: source.license_id,
                tags: &tags,
                format: conversion.format(),
                lineage: Some(&lineage),
                worker: &ctx.env.worker_id,
            },
            checks,
        )
        .await?;
    Ok(artifact)
}

/// Hashes one file of the new artifact and uploads it to `key`; returns its record and the
/// checksum of what this system produced.
async fn upload_one(
    ctx: &TaskContext,
    source: &ModelArtifact,
    version: &str,
    name: String,
    path: &Path,
    key: String,
) -> Result<(ArtifactFile, Checksum), ExecError> {
    let (p, expected) = (path.to_owned(), Expected::Sha256(String::new()));
    let digests = blocking(move || {
        hash_file(&p, &expected, &|| false)
            .map_err(|e| ModelError::Format(e.to_string()))?
            .ok_or_else(|| ModelError::Format("hashing stopped".into()))
    })
    .await?;
    let storage = &ctx.env.storage;
    storage
        .put_file(&key, path, "application/octet-stream")
        .await?;
    let of = CheckOf {
        repo: &source.name,
        revision: version,
        verified_by: &ctx.env.worker_id,
        task_id: ctx.task.id,
    };
    let (sha256, size) = (digests.sha256, digests.size);
    let check = Checksum::new(
        of,
        &name,
        sha256.clone(),
        None,
        ExpectedSource::Produced,
        size,
    );
    let file = ArtifactFile {
        name,
        size_bytes: size,
        sha256,
        s3_key: Some(key),
    };
    Ok((file, check))
}

fn is_weights(name: &str) -> bool {
    [
        ".safetensors",
        ".bin",
        ".gguf",
        ".pt",
        ".pth",
        ".onnx",
        ".h5",
        ".msgpack",
        ".ot",
    ]
    .iter()
    .any(|e| name.ends_with(e))
}

fn embed_validation(model: &Embedder) -> Result<Vec<Vec<f32>>, ModelError> {
    let texts: Vec<String> = VALIDATION.iter().map(|s| (*s).to_owned()).collect();
    Ok(model
        .embed(&texts, 8, true, &|| false, &|_| {})?
        .unwrap_or_default())
}

/// The least cosine similarity between the converted model's embeddings and the source's.
fn validate(dir: &Path, converted: &Path, reference: &[Vec<f32>]) -> Result<f32, ModelError> {
    let config = read_json(&dir.join("config.json"))?;
    let tensors = convert::reload(converted)?;
    let model = Embedder::from_tensors(dir, &config, tensors, &candle_core::Device::Cpu)?;
    let got = embed_validation(&model)?;
    Ok(got
        .iter()
        .zip(reference)
        .map(|(a, b)| cosine(a, b))
        .fold(f32::INFINITY, f32::min))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, ExecError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExecError::retryable_from("conversion thread", e))??)
}

fn io(e: std::io::Error) -> ExecError {
    ExecError::retryable_from("conversion scratch space", e)
}
