//! Reading an executor's typed parameters and its model.

use harmonia_shared::error::ExecError;
use harmonia_shared::model::{KindError, ModelArtifact, RunTask, TaskKind};
use mongodb::bson::oid::ObjectId;

use super::TaskContext;

/// The task's kind, with its typed params. The scheduler checked them at submit time, so an
/// error here means a task written by something else: permanent, naming the field.
pub fn kind(task: &RunTask) -> Result<TaskKind, ExecError> {
    let params = mongodb::bson::Bson::Document(task.params.clone()).into_relaxed_extjson();
    TaskKind::parse(&task.task_type, &params).map_err(|e| match e {
        KindError::Unknown => ExecError::permanent(format!(
            "this worker has no executor for type '{}'",
            task.task_type
        )),
        KindError::Params(problems) => {
            let named: Vec<String> = problems
                .iter()
                .map(|(field, m)| format!("params.{field}: {m}"))
                .collect();
            ExecError::permanent(named.join("; "))
        }
    })
}

/// The model a task works on: `model_artifact_id` when given, else the one an upstream task
/// produced (`outputs.model_artifact_id`).
pub async fn model(ctx: &TaskContext, explicit: Option<&str>) -> Result<ModelArtifact, ExecError> {
    let id = match explicit {
        Some(id) => ObjectId::parse_str(id)
            .map_err(|e| ExecError::permanent_from("params.model_artifact_id", e))?,
        None => ctx
            .upstream()
            .await?
            .iter()
            .find_map(|t| t.outputs.as_ref()?.get_object_id("model_artifact_id").ok())
            .ok_or_else(|| {
                ExecError::permanent(
                    "no model: give params.model_artifact_id or depend on a model.download task",
                )
            })?,
    };
    ctx.env
        .store
        .model_artifacts()
        .get(id)
        .await?
        .ok_or_else(|| ExecError::permanent(format!("model artifact {id} does not exist")))
}

/// The weights file to load: `wanted`, else the first file with one of `extensions`.
pub fn weights_file<'a>(
    artifact: &'a ModelArtifact,
    wanted: Option<&str>,
    extensions: &[&str],
) -> Result<&'a str, ExecError> {
    if let Some(w) = wanted {
        return artifact.file(w).map(|f| f.name.as_str()).ok_or_else(|| {
            ExecError::permanent(format!(
                "params.weights: {w} is not in model artifact {}",
                artifact.id
            ))
        });
    }
    let mut names: Vec<&str> = artifact.files.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    extensions
        .iter()
        .find_map(|ext| names.iter().find(|n| n.ends_with(ext)).copied())
        .ok_or_else(|| {
            ExecError::permanent(format!(
                "model artifact {} has no {} file",
                artifact.id,
                extensions.join(" or ")
            ))
        })
}

/// A model from the warm pool, and how it was obtained.
#[derive(Debug)]
pub struct Pooled<T> {
    pub model: std::sync::Arc<T>,
    pub hit: bool,
    pub load_ms: i64,
    /// `cpu` or `cuda:<i>`.
    pub device: String,
}

/// Loads a model from (snapshot dir, weights file) on a device: the model and its size.
pub type Loader<T> = fn(
    &std::path::Path,
    &std::path::Path,
    &candle_core::Device,
) -> Result<(T, u64), crate::models::ModelError>;

/// Takes `weights` of `artifact` from the warm pool on the task's device, or verifies the
/// files against the registry and loads them with `load` (returning the model and the bytes
/// it holds).
pub async fn pooled<T: Send + Sync + 'static>(
    ctx: &TaskContext,
    artifact: &ModelArtifact,
    weights: &str,
    load: Loader<T>,
) -> Result<Pooled<T>, ExecError> {
    let (device, device_key) = crate::models::Models::device(&ctx.gpus)?;
    let manifest = artifact.manifest_sha256().unwrap_or_default();
    ctx.progress("loading model", 0.0, None);
    let started = std::time::Instant::now();
    let models = &ctx.env.models;
    let checkout = models
        .pool
        .get_or_load(&format!("{manifest}/{weights}"), &device_key, || async {
            // The bytes are verified against the registry before they are loaded.
            let report = |_| ctx.progress("verifying model", 0.0, None);
            let dir = models.ensure_local(artifact, &ctx.cancel, &report).await?;
            let weights = dir.join(weights);
            tokio::task::spawn_blocking(move || load(&dir, &weights, &device))
                .await
                .map_err(|e| ExecError::retryable_from("loading the model", e))?
                .map_err(ExecError::from)
        })
        .await?;
    Ok(Pooled {
        model: checkout.model,
        hit: checkout.hit,
        load_ms: started.elapsed().as_millis() as i64,
        device: device_key,
    })
}
