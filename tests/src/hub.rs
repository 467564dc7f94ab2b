//! A Hugging Face Hub-compatible mirror over a directory, so the real `hf-hub` download path
//! runs without internet (tests, the demo) and an air-gapped fleet can serve its own models.
//!
//! Layout: `<root>/<org>/<name>/<files...>` is repo `org/name`, served at revision `main` (and
//! its commit id). Every file is hashed once when the mirror starts: the sha256 is its ETag
//! and `X-Linked-Etag`, as for LFS files on the Hub. A file changed afterwards is therefore
//! served with its original hash, exactly the tampering a downloader must catch.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// One repository: its commit id and files (relative path -> (size, sha256 hex)).
#[derive(Debug, Clone)]
struct RepoIndex {
    commit: String,
    files: BTreeMap<String, (u64, String)>,
}

#[derive(Debug)]
pub struct Mirror {
    root: PathBuf,
    repos: BTreeMap<String, RepoIndex>,
    /// Body bytes sent, for tests that count downloads.
    pub bytes_served: AtomicU64,
    /// The `Authorization` headers seen, for tests that check a token reaches the Hub.
    pub authorizations: std::sync::Mutex<Vec<String>>,
    /// When non-zero, each response body is paced to this many bytes per second (tests of
    /// slow downloads).
    pub throttle_bytes_per_s: AtomicU64,
}

impl Mirror {
    /// Indexes `root` (hashing every file once).
    pub fn index(root: &Path) -> anyhow::Result<Self> {
        let mut repos = BTreeMap::new();
        for org in read_dirs(root)? {
            for repo in read_dirs(&org)? {
                let mut files = BTreeMap::new();
                collect(&repo, &repo, &mut files)?;
                let mut commit = Sha256::new();
                for (name, (_, sha)) in &files {
                    commit.update(format!("{name}\0{sha}\n"));
                }
                let id = format!(
                    "{}/{}",
                    org.file_name().unwrap_or_default().to_string_lossy(),
                    repo.file_name().unwrap_or_default().to_string_lossy()
                );
                let commit = hex::encode(commit.finalize())[..40].to_owned();
                repos.insert(id, RepoIndex { commit, files });
            }
        }
        Ok(Self {
            root: root.to_owned(),
            repos,
            bytes_served: AtomicU64::new(0),
            throttle_bytes_per_s: AtomicU64::new(0),
            authorizations: Default::default(),
        })
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/api/models/{org}/{name}/revision/{rev}", get(info))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .route("/_mirror/stats", get(stats))
            .with_state(self)
    }

    fn saw(&self, headers: &HeaderMap) {
        if let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            && let Ok(mut seen) = self.authorizations.lock()
        {
            seen.push(auth.to_owned());
        }
    }

    /// The sha256 the mirror advertises for a file, if it has it.
    pub fn sha256(&self, repo: &str, file: &str) -> Option<&str> {
        Some(self.repos.get(repo)?.files.get(file)?.1.as_str())
    }
}

fn read_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn collect(
    base: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, (u64, String)>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(base, &path, out)?;
        } else {
            let bytes = std::fs::read(&path)?;
            let rel = path
                .strip_prefix(base)?
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(
                rel,
                (bytes.len() as u64, hex::encode(Sha256::digest(&bytes))),
            );
        }
    }
    Ok(())
}

/// `{"bytes_served": N}`: what a mirror in another process (a container) has sent, for tests
/// that count downloads across workers.
async fn stats(State(mirror): State<Arc<Mirror>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "bytes_served": mirror.bytes_served.load(Ordering::Relaxed),
    }))
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": what })),
    )
        .into_response()
}

async fn info(
    State(m): State<Arc<Mirror>>,
    UrlPath((org, name, rev)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    m.saw(&headers);
    let id = format!("{org}/{name}");
    match m.repos.get(&id) {
        Some(repo) if rev == "main" || rev == repo.commit => axum::Json(serde_json::json!({
            "id": id,
            "sha": repo.commit,
            // Every file is served as an LFS file: the listing carries its sha256, as the Hub's
            // `?blobs=true` listing does for LFS files.
            "siblings": repo.files.iter().map(|(f, (size, sha))| serde_json::json!({
                "rfilename": f,
                "size": size,
                "lfs": { "sha256": sha, "size": size },
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Some(_) => not_found("Revision not found"),
        None => not_found("Repository not found"),
    }
}

/// Parses `bytes=a-b` / `bytes=a-` against `size`; the end is clamped to the last byte, as
/// hf-hub asks for its last chunk past the end.
fn range(headers: &HeaderMap, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = headers
        .get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = if end.is_empty() {
        size.saturating_sub(1)
    } else {
        end.parse().ok()?
    };
    if start >= size || start > end {
        return Some(Err(()));
    }
    Some(Ok((start, end.min(size - 1))))
}

async fn resolve(
    State(m): State<Arc<Mirror>>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    m.saw(&headers);
    let id = format!("{org}/{name}");
    let Some(repo) = m.repos.get(&id) else {
        return not_found("Repository not found");
    };
    if rev != "main" && rev != repo.commit {
        return not_found("Revision not found");
    }
    // Only indexed names are served, so `..` or absolute paths can never reach the disk.
    let Some((size, sha)) = repo.files.get(&file) else {
        return not_found("Entry not found");
    };
    let etag = format!("\"{sha}\"");
    let mut out = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    out.insert(header::ETAG, value(&etag));
    out.insert("x-linked-etag", value(&etag));
    out.insert("x-linked-size", value(&size.to_string()));
    out.insert("x-repo-commit", value(&repo.commit));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    let (status, start, end) = match range(&headers, *size) {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(Ok((a, b))) => {
            out.insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {a}-{b}/{size}")),
            );
            (StatusCode::PARTIAL_CONTENT, a, b)
        }
        Some(Err(())) => {
            out.insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return (StatusCode::RANGE_NOT_SATISFIABLE, out).into_response();
        }
    };
    let len = if *size == 0 { 0 } else { end - start + 1 };
    let path = m.root.join(&org).join(&name).join(&file);
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return not_found("Entry not found"),
    };
    if f.seek(SeekFrom::Start(start)).await.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    out.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    let mirror = m.clone();
    // A throttled transfer goes out in 64 KiB chunks, each followed by its pause (tests watch
    // it move); otherwise in 1 MiB reads, so that the mirror, which shares the machine's cores
    // with the client it serves, spends as little CPU per byte as a real server would.
    let throttled = m.throttle_bytes_per_s.load(Ordering::Relaxed) > 0;
    let read_size = if throttled { 64 * 1024 } else { 1 << 20 };
    // Bytes are counted as they leave, so an aborted transfer counts only what was sent.
    let chunks =
        tokio_util::io::ReaderStream::with_capacity(f.take(len), read_size).then(move |chunk| {
            let mirror = mirror.clone();
            async move {
                let chunk = chunk?;
                let rate = mirror.throttle_bytes_per_s.load(Ordering::Relaxed);
                if rate > 0 {
                    let pause = chunk.len() as f64 / rate as f64;
                    tokio::time::sleep(std::time::Duration::from_secs_f64(pause)).await;
                }
                mirror
                    .bytes_served
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok::<_, std::io::Error>(chunk)
            }
        });
    let body = Body::from_stream(chunks);
    (status, out, body).into_response()
}

/// Serves the mirror on `listener` until `shutdown` resolves.
pub async fn serve(
    mirror: Arc<Mirror>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, mirror.router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
