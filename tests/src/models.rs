//! Real models for tests: the local Hub mirror's files (installed by `scripts/install-deps`)
//! and a mirror server on a free port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hub::Mirror;

pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const SMOLLM: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";

/// The directory of real model repos (`<org>/<name>/<files>`): `HARMONIA_HUB_ROOT`, else the
/// project's `.harmonia/hub`.
pub fn hub_root() -> anyhow::Result<PathBuf> {
    let root = std::env::var_os("HARMONIA_HUB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::servers::workspace_root().join(".harmonia/hub"));
    anyhow::ensure!(
        root.join(MINILM).join("model.safetensors").is_file(),
        "no models under {} (run scripts/install-deps, or scripts/test which calls it)",
        root.display()
    );
    Ok(root)
}

/// A mirror serving on loopback.
#[derive(Debug)]
pub struct RunningMirror {
    pub mirror: Arc<Mirror>,
    pub url: String,
}

/// Indexes `root` and serves it until the test process ends.
pub async fn serve_mirror(root: &Path) -> anyhow::Result<RunningMirror> {
    let mirror = Arc::new(Mirror::index(root)?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crate::hub::serve(
        mirror.clone(),
        listener,
        std::future::pending(),
    ));
    Ok(RunningMirror { mirror, url })
}

/// A synthetic repo `org/name` with one weights file of `size` bytes and a model card.
pub fn synthetic_repo(root: &Path, repo: &str, size: usize) -> anyhow::Result<Vec<u8>> {
    let dir = root.join(repo);
    std::fs::create_dir_all(&dir)?;
    let bytes: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("model.safetensors"), &bytes)?;
    std::fs::write(
        dir.join("README.md"),
        "---\nlicense: mit\n---\n# A synthetic test model\n",
    )?;
    Ok(bytes)
}

/// How long a model run may take in tests.
pub const RUN: std::time::Duration = std::time::Duration::from_secs(300);

/// A cluster whose workers download from `mirror`: one worker per entry of `slots` (its CPU
/// slots), with the test timings.
pub async fn cluster(
    name: &str,
    mirror: &RunningMirror,
    slots: &[&str],
) -> anyhow::Result<crate::cluster::Cluster> {
    let mut scope = crate::Scope::new(name);
    scope.config.models.hub_endpoint = mirror.url.clone();
    let workers: Vec<Vec<&str>> = slots
        .iter()
        .map(|s| {
            let mut args = crate::cluster::WORKER.to_vec();
            if let Some(at) = args.iter().position(|a| *a == "--cpu-slots") {
                args[at + 1] = s;
            }
            args.extend(["--gpus", "none"]);
            args
        })
        .collect();
    crate::cluster::cluster_in(scope, crate::cluster::SCHEDULER, &workers).await
}

/// A task's outputs (empty when it has none).
pub fn outputs(task: &harmonia_shared::model::RunTask) -> mongodb::bson::Document {
    task.outputs.clone().unwrap_or_default()
}
