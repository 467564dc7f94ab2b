//! Model files and loaded models on this host: Hub downloads into the shared cache (verified),
//! the warm pool, and the model code (BERT embeddings, llama generation, conversions).

pub mod bert;
pub mod cache;
pub mod convert;
pub mod encoder;
pub mod hub;
pub mod llama;
pub mod pool;
pub mod verify;

use std::path::PathBuf;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::ModelArtifact;
use tokio_util::sync::CancellationToken;

pub use hub::{Hub, HubError, Stage};
pub use pool::Pool;
use verify::Expected;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("model files: {0}")]
    Format(String),
}

impl From<ModelError> for ExecError {
    // Bad model files fail the same way on every attempt.
    fn from(e: ModelError) -> Self {
        ExecError::permanent_cause(e)
    }
}

/// Fixes the thread count candle's CPU matmuls use, once, before any thread starts: candle 0.11
/// asks for it on every matmul and, unless `RAYON_NUM_THREADS` is set, on a machine whose cores
/// all have the same capacity (servers, VMs) counts the physical cores by reading and parsing
/// `/proc/cpuinfo` each time. Measured on the 2-core development machine (`scripts/bench-models`,
/// MiniLM): that read was 3.7 % of the benchmark's CPU samples, and embedding one sentence at a
/// time went from 130-137 to 152-160 sentences/s with the count fixed. Sets `RAYON_NUM_THREADS`
/// to the count candle would have chosen; one already set is left as it is (rayon's global pool
/// reads the same variable).
///
/// # Safety
/// Writes the process environment: call it while no other thread exists (before the async
/// runtime starts), since another thread reading the environment meanwhile is undefined
/// behaviour.
#[allow(unsafe_code)]
pub unsafe fn fix_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    // SAFETY: the caller guarantees that no other thread exists yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}

/// Everything model-related a worker holds.
#[derive(Debug)]
pub struct Models {
    pub hub: Hub,
    pub pool: Pool,
    storage: harmonia_shared::storage::Storage,
}

impl Models {
    pub fn new(hub: Hub, pool: Pool, storage: harmonia_shared::storage::Storage) -> Self {
        Self { hub, pool, storage }
    }

    /// The device for a task: its first assigned GPU, or the CPU.
    pub fn device(gpus: &[u32]) -> Result<(candle_core::Device, String), ExecError> {
        match gpus.first() {
            None => Ok((candle_core::Device::Cpu, "cpu".to_owned())),
            Some(&i) => {
                #[cfg(feature = "cuda")]
                {
                    let d = candle_core::Device::new_cuda(i as usize)
                        .map_err(|e| ExecError::retryable(format!("opening GPU {i}: {e}")))?;
                    Ok((d, format!("cuda:{i}")))
                }
                #[cfg(not(feature = "cuda"))]
                Err(ExecError::permanent(format!(
                    "GPU {i} was assigned but this worker was built without the `cuda` feature"
                )))
            }
        }
    }

    /// Makes every file of a registered artifact present on this host and checks each against
    /// the registry's sha256 (the bytes are verified before any load). Files come from the
    /// Hub (snapshots) or from the bucket (conversions). Returns the directory holding them.
    pub async fn ensure_local(
        &self,
        artifact: &ModelArtifact,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Stage) + Send + Sync),
    ) -> Result<PathBuf, ExecError> {
        if artifact.lineage.is_none() {
            let cache = self.hub.repo_cache(&artifact.name, &artifact.version);
            for f in &artifact.files {
                let expected = Expected::Sha256(f.sha256.clone());
                self.hub
                    .fetch(
                        &artifact.name,
                        &artifact.version,
                        &artifact.version,
                        &f.name,
                        Some(f.size_bytes),
                        &expected,
                        cancel,
                        progress,
                    )
                    .await?;
            }
            return Ok(cache.snapshot_dir(&artifact.version));
        }
        // Converted artifacts live in the bucket; they are cached by id.
        let dir = self
            .hub
            .cache_dir()
            .join("harmonia-artifacts")
            .join(artifact.id.to_hex());
        for f in &artifact.files {
            let path = dir.join(&f.name);
            let expected = Expected::Sha256(f.sha256.clone());
            if path.exists() {
                let d = hub::hash_cancellable(path.clone(), &expected, cancel).await?;
                if d.check(&expected).is_ok() {
                    continue;
                }
            }
            let key = f.s3_key.as_deref().ok_or_else(|| {
                ExecError::permanent(format!(
                    "model artifact {} file {} has no copy in the bucket",
                    artifact.id, f.name
                ))
            })?;
            let bytes = self.storage.get_bytes(key).await?;
            let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if got != f.sha256 {
                crate::metrics::verification_failed();
                return Err(ExecError::permanent(format!(
                    "checksum mismatch for {} (s3://{}/{key}): expected sha256 {}, got {got}",
                    f.name,
                    self.storage.bucket(),
                    f.sha256
                )));
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let tmp = path.with_extension("incomplete");
            std::fs::write(&tmp, &bytes).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
        }
        Ok(dir)
    }
}

fn io(e: std::io::Error) -> ExecError {
    ExecError::retryable_from("model cache", e)
}
