//! Fetching model files from the Hugging Face Hub (or a Hub-compatible mirror) into the host's
//! cache, verified.
//!
//! `hf-hub` provides the API client (endpoint, token, user agent), the repo listing and the
//! cache layout. The bytes are streamed here rather than through `ApiRepo::download`: that
//! path spawns detached chunk tasks that keep downloading after the caller is dropped (so a
//! cancelled task would not stop its transfer), never exposes the bytes (so hashing would be a
//! second pass), and re-downloads files already cached.

mod stream;

use std::path::PathBuf;

use harmonia_shared::error::ExecError;
use hf_hub::api::tokio::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::cache::{LockError, RepoCache};
use super::verify::{Digests, Expected, hash_file};

/// A repo at one revision, as the Hub lists it (`/api/models/{repo}/revision/{rev}?blobs=true`).
#[derive(Debug, Clone, Deserialize)]
pub struct Listing {
    /// The commit the revision resolved to.
    pub sha: String,
    pub siblings: Vec<RemoteFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RemoteFile {
    pub rfilename: String,
    pub size: Option<u64>,
    #[serde(rename = "blobId")]
    pub blob_id: Option<String>,
    pub lfs: Option<Lfs>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Lfs {
    pub sha256: String,
    pub size: u64,
}

impl RemoteFile {
    /// The Hub's own checksum of the file: the LFS sha256, else the git blob id.
    pub fn hub_expected(&self) -> Option<Expected> {
        match (&self.lfs, &self.blob_id) {
            (Some(lfs), _) => Expected::from_etag(&lfs.sha256),
            (None, Some(blob)) => Expected::from_etag(blob),
            (None, None) => None,
        }
    }

    pub fn size_bytes(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

/// One file fetched (or found) and verified.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `snapshots/<commit>/<file>` in the cache.
    pub path: PathBuf,
    pub digests: Digests,
    /// Body bytes received for this file (0 for a cache hit).
    pub transferred: u64,
    pub cache_hit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{what}: {status} from the Hub")]
    Status {
        what: String,
        status: reqwest::StatusCode,
    },
    #[error("{what}: {source}")]
    Network {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("checksum mismatch for {file}: expected {algorithm} {expected}, got {got}")]
    Mismatch {
        file: String,
        algorithm: &'static str,
        expected: String,
        got: String,
        size: u64,
    },
    #[error("{file}: received {got} bytes, expected {expected}")]
    Truncated {
        file: String,
        expected: u64,
        got: u64,
    },
    #[error("model cache: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Lock(#[from] LockError),
    #[error("cancelled")]
    Cancelled,
    #[error("hub client: {0}")]
    Client(String),
}

impl HubError {
    /// The Hub could not answer (network, or a server error), as opposed to answering no.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Status { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

impl From<HubError> for ExecError {
    fn from(e: HubError) -> Self {
        match &e {
            HubError::Cancelled | HubError::Lock(LockError::Cancelled) => ExecError::Cancelled,
            // Not found, unauthorised, forbidden: the same request will fail the same way.
            HubError::Status { status, .. } if status.is_client_error() => {
                ExecError::permanent_cause(e)
            }
            HubError::Mismatch { .. } | HubError::Client(_) => ExecError::permanent_cause(e),
            _ => ExecError::retryable_cause(e),
        }
    }
}

/// The Hub client and the host's cache.
#[derive(Clone)]
pub struct Hub {
    api: Api,
    endpoint: String,
    cache_dir: PathBuf,
}

impl std::fmt::Debug for Hub {
    // The API client carries the token in its default headers: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(config: &harmonia_shared::config::ModelsConfig) -> Result<Self, HubError> {
        let endpoint = config.hub_endpoint.trim_end_matches('/').to_owned();
        let api = ApiBuilder::from_cache(Cache::new(config.cache_dir.clone()))
            .with_endpoint(endpoint.clone())
            .with_progress(false)
            .with_token(
                config
                    .hub_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_owned()),
            )
            .with_user_agent("harmonia", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Client(e.to_string()))?;
        Ok(Self {
            api,
            endpoint,
            cache_dir: config.cache_dir.clone(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_dir
    }

    /// The files this host's cache holds for `repo@revision`, as a listing: each snapshot
    /// entry is a link named after its blob (the LFS sha256 or git id), which is what it will
    /// be verified against. `None` when the revision was never fetched here.
    pub fn cached_listing(&self, repo: &str, revision: &str) -> Option<Listing> {
        let cache = self.repo_cache(repo, revision);
        let commit = cache.cached_commit()?;
        let root = cache.snapshot_dir(&commit);
        let mut siblings = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                let path = entry.path();
                if super::cache::is_temp(&entry.file_name()) {
                    continue; // a link being replaced: the file it replaces is listed
                }
                if path.is_dir() && !path.is_symlink() {
                    dirs.push(path);
                    continue;
                }
                let blob = std::fs::read_link(&path).ok()?;
                let blob_id = blob.file_name()?.to_str()?.to_owned();
                let size = std::fs::metadata(&path).ok()?.len();
                let rfilename = path.strip_prefix(&root).ok()?.to_str()?.to_owned();
                let (lfs, blob_id) = match Expected::from_etag(&blob_id)? {
                    Expected::Sha256(sha256) => (Some(Lfs { sha256, size }), None),
                    Expected::GitSha1(id) => (None, Some(id)),
                };
                siblings.push(RemoteFile {
                    rfilename,
                    size: Some(size),
                    blob_id,
                    lfs,
                });
            }
        }
        siblings.sort_by(|a, b| a.rfilename.cmp(&b.rfilename));
        Some(Listing {
            sha: commit,
            siblings,
        })
    }

    /// Repos with something in this host's cache (`org/name`).
    pub fn cached_repos(&self) -> Vec<String> {
        let mut repos: Vec<String> = std::fs::read_dir(&self.cache_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some(name.strip_prefix("models--")?.replacen("--", "/", 1))
            })
            .collect();
        repos.sort();
        repos
    }

    pub fn repo_cache(&self, repo: &str, revision: &str) -> RepoCache {
        RepoCache::new(&self.cache_dir, repo, revision)
    }

    fn api_repo(&self, repo: &str, revision: &str) -> hf_hub::api::tokio::ApiRepo {
        self.api.repo(Repo::with_revision(
            repo.to_owned(),
            RepoType::Model,
            revision.to_owned(),
        ))
    }

    /// The files of `repo` at `revision` and the commit it resolves to.
    pub async fn listing(&self, repo: &str, revision: &str) -> Result<Listing, HubError> {
        let what = format!("listing {repo}@{revision}");
        let net = |source| HubError::Network {
            what: what.clone(),
            source,
        };
        let response = self
            .api_repo(repo, revision)
            .info_request()
            .query(&[("blobs", "true")])
            .send()
            .await
            .map_err(net)?;
        if !response.status().is_success() {
            return Err(HubError::Status {
                what,
                status: response.status(),
            });
        }
        response.json().await.map_err(net)
    }

    /// Makes `file` of `repo@commit` present and verified in the cache. Under a host-wide lock
    /// per blob: a second process asking for the same file waits, then finds it cached.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch(
        &self,
        repo: &str,
        revision: &str,
        commit: &str,
        file: &str,
        size: Option<u64>,
        expected: &Expected,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Stage) + Send + Sync),
    ) -> Result<Fetched, HubError> {
        let cache = self.repo_cache(repo, revision);
        // The blob's name is what the Hub calls it (sha256 for LFS files), as in the
        // huggingface_hub layout; the expected value doubles as that name.
        let blob_id = expected.value().to_owned();
        let _lock = cache
            .lock(&blob_id, cancel, || progress(Stage::WaitingForLock))
            .await?;
        let blob = cache.blob(&blob_id);
        if blob.exists() {
            progress(Stage::Verifying);
            let digests = hash_cancellable(blob.clone(), expected, cancel).await?;
            match digests.check(expected) {
                Ok(()) => {
                    let path = cache.publish(commit, file, &blob_id)?;
                    return Ok(Fetched {
                        path,
                        digests,
                        transferred: 0,
                        cache_hit: true,
                    });
                }
                Err(_) => {
                    crate::metrics::verification_failed();
                    // Corrupted on disk since it was verified: fetch it again.
                    tracing::warn!(%repo, %file, "cached blob fails verification; re-fetching");
                    cache.forget(commit, file, &blob_id);
                }
            }
        }
        let url = self.api_repo(repo, commit).url(file);
        let part = blob.with_extension("incomplete");
        let (digests, transferred) = self
            .stream_to(&url, file, &part, size, expected, cancel, progress)
            .await?;
        if let Err((want, got)) = digests.check(expected) {
            crate::metrics::verification_failed();
            // Never cached, never used.
            let _ = std::fs::remove_file(&part);
            cache.forget(commit, file, &blob_id);
            return Err(HubError::Mismatch {
                file: file.to_owned(),
                algorithm: expected.algorithm(),
                expected: want,
                got,
                size: digests.size,
            });
        }
        std::fs::rename(&part, &blob)?;
        let path = cache.publish(commit, file, &blob_id)?;
        Ok(Fetched {
            path,
            digests,
            transferred,
            cache_hit: false,
        })
    }
}

/// What a fetch is doing, for progress reports.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    WaitingForLock,
    Verifying,
    Downloading { done: u64, total: u64 },
}

/// Hashes a cached file off the async threads; stops early on cancellation.
pub async fn hash_cancellable(
    path: PathBuf,
    expected: &Expected,
    cancel: &CancellationToken,
) -> Result<Digests, HubError> {
    let (token, expected) = (cancel.clone(), expected.clone());
    let digests =
        tokio::task::spawn_blocking(move || hash_file(&path, &expected, &|| token.is_cancelled()))
            .await
            .map_err(|e| HubError::Io(std::io::Error::other(e)))??;
    digests.ok_or(HubError::Cancelled)
}
