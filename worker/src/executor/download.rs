//! `model.download`: fetch a Hub repo's files into the host cache, verify every file, and
//! register the snapshot (`model_artifacts`, `checksums`, `licenses`).

use std::time::Instant;

use harmonia_shared::error::ExecError;
use harmonia_shared::model::task_params::{DownloadParams, check_file_name};
use harmonia_shared::model::{ArtifactFile, CheckOf, Checksum, ExpectedSource, license};
use harmonia_shared::store::model_artifacts::Registration;
use mongodb::bson::{Document, doc};

use super::TaskContext;
use crate::models::hub::{Fetched, HubError, Listing, RemoteFile, Stage};
use crate::models::verify::Expected;

/// What fetching every file gave.
struct Fetch {
    verified: Vec<(String, Fetched)>,
    checks: Vec<Checksum>,
    /// Bytes that came over the network (not from the host cache).
    transferred: u64,
    cache_hits: u32,
    elapsed: std::time::Duration,
}

pub async fn run(ctx: &TaskContext, p: &DownloadParams) -> Result<Document, ExecError> {
    let hub = &ctx.env.models.hub;
    let listing = list(ctx, p).await?;
    let files = select_files(p, &listing)?;
    let fetch = fetch_all(ctx, p, &listing, &files).await?;
    let snapshot = hub
        .repo_cache(&p.repo, &p.revision)
        .snapshot_dir(&listing.sha);
    let mut artifact_files: Vec<ArtifactFile> = fetch
        .verified
        .iter()
        .map(|(name, f)| ArtifactFile {
            name: name.clone(),
            size_bytes: f.digests.size,
            sha256: f.digests.sha256.clone(),
            s3_key: None,
        })
        .collect();
    let path = if p.upload {
        upload(ctx, p, &listing.sha, &mut artifact_files, &fetch.verified).await?
    } else {
        snapshot.display().to_string()
    };
    let license = record_license(ctx, &p.repo, &fetch.verified).await?;
    let source_url = format!("{}/{}", hub.endpoint(), p.repo);
    let registration = Registration {
        name: &p.repo,
        version: &listing.sha,
        revision: &p.revision,
        path: &path,
        files: &artifact_files,
        source_url: &source_url,
        license_id: license.as_ref().map(|l| l.id),
        tags: &p.tags,
        format: format_of(&artifact_files),
        lineage: None,
        worker: &ctx.env.worker_id,
    };
    let store = &ctx.env.store;
    let artifact = store.register_model(&registration, fetch.checks).await?;
    ctx.progress("done", 100.0, None);
    let secs = fetch.elapsed.as_secs_f64().max(1e-6);
    Ok(doc! {
        "model_artifact_id": artifact.id,
        "repo": &p.repo,
        "commit": &listing.sha,
        "files": fetch.verified.len() as i64,
        "size_bytes": artifact_files.iter().map(|f| f.size_bytes).sum::<u64>() as i64,
        "bytes_downloaded": fetch.transferred as i64,
        "cache_hits": i64::from(fetch.cache_hits),
        "download_ms": fetch.elapsed.as_millis() as i64,
        "mb_per_s": fetch.transferred as f64 / 1e6 / secs,
        "snapshot_dir": snapshot.display().to_string(),
        "license": license.map(|l| l.spdx_id),
    })
}

/// The repo's files at the revision, from the Hub; from the host cache when the Hub is
/// unreachable and the cache holds every file asked for (each is verified again on fetch).
async fn list(ctx: &TaskContext, p: &DownloadParams) -> Result<Listing, ExecError> {
    let hub = &ctx.env.models.hub;
    ctx.progress("listing", 0.0, Some(format!("{}@{}", p.repo, p.revision)));
    let listing = tokio::select! {
        () = ctx.cancel.cancelled() => return Err(ExecError::Cancelled),
        l = hub.listing(&p.repo, &p.revision) => l,
    };
    match listing {
        Ok(l) => Ok(l),
        Err(e) if e.is_unavailable() => match hub.cached_listing(&p.repo, &p.revision) {
            // Every asked-for file must be here; otherwise it is a retry for when the Hub is back.
            Some(cached)
                if p.files
                    .iter()
                    .flatten()
                    .all(|f| cached.siblings.iter().any(|s| &s.rfilename == f)) =>
            {
                tracing::warn!(repo = %p.repo, "the Hub is unavailable ({e}); using the host cache");
                Ok(cached)
            }
            _ => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Fetches and verifies every file in turn, reporting progress over all of them.
async fn fetch_all(
    ctx: &TaskContext,
    p: &DownloadParams,
    listing: &Listing,
    files: &[RemoteFile],
) -> Result<Fetch, ExecError> {
    let total: u64 = files.iter().filter_map(|f| f.size_bytes()).sum();
    let started = Instant::now();
    let mut fetch = Fetch {
        verified: Vec::new(),
        checks: Vec::new(),
        transferred: 0,
        cache_hits: 0,
        elapsed: Default::default(),
    };
    let mut done_before = 0u64;
    for file in files {
        let name = file.rfilename.as_str();
        let (expected, source) = expected_for(p, file)?;
        let report = |stage: Stage| {
            let (label, done) = match stage {
                Stage::WaitingForLock => ("waiting for another download", done_before),
                Stage::Verifying => ("verifying", done_before),
                Stage::Downloading { done, .. } => ("downloading", done_before + done),
            };
            let pct = if total == 0 {
                0.0
            } else {
                done as f32 * 100.0 / total as f32
            };
            ctx.progress(label, pct.min(100.0), Some(name.to_owned()));
        };
        let fetched = fetch_one(ctx, p, listing, file, (&expected, source), &report).await?;
        done_before += fetched.digests.size;
        fetch.transferred += fetched.transferred;
        fetch.cache_hits += u32::from(fetched.cache_hit);
        let value = match &expected {
            Expected::Sha256(_) => fetched.digests.sha256.clone(),
            Expected::GitSha1(_) => fetched.digests.git_sha1.clone().unwrap_or_default(),
        };
        let size = fetched.digests.size;
        let check = Checksum::new(
            check_of(ctx, p),
            name,
            value,
            Some(expected.value()),
            source,
            size,
        );
        fetch.checks.push(check);
        fetch.verified.push((name.to_owned(), fetched));
    }
    fetch.elapsed = started.elapsed();
    Ok(fetch)
}

/// What a file must hash to: the submitter's sha256, else the Hub's own checksum.
fn expected_for(
    p: &DownloadParams,
    file: &RemoteFile,
) -> Result<(Expected, ExpectedSource), ExecError> {
    let name = file.rfilename.as_str();
    if let Some(sha) = p.sha256.get(name) {
        return Ok((
            Expected::Sha256(sha.to_ascii_lowercase()),
            ExpectedSource::Task,
        ));
    }
    match file.hub_expected() {
        Some(e @ Expected::Sha256(_)) => Ok((e, ExpectedSource::HubLfs)),
        Some(e @ Expected::GitSha1(_)) => Ok((e, ExpectedSource::GitBlob)),
        None => Err(ExecError::permanent(format!(
            "the Hub gives no checksum for {name}; pass params.sha256.{name}"
        ))),
    }
}

/// Fetches one file into the cache, verified; a mismatch is recorded as a failed checksum and
/// fails the task for good.
async fn fetch_one(
    ctx: &TaskContext,
    p: &DownloadParams,
    listing: &Listing,
    file: &RemoteFile,
    (expected, source): (&Expected, ExpectedSource),
    report: &(dyn Fn(Stage) + Send + Sync),
) -> Result<Fetched, ExecError> {
    let (name, size) = (file.rfilename.as_str(), file.size_bytes());
    let hub = &ctx.env.models.hub;
    let fetched = hub
        .fetch(
            &p.repo,
            &p.revision,
            &listing.sha,
            name,
            size,
            expected,
            &ctx.cancel,
            report,
        )
        .await;
    match fetched {
        Ok(f) => Ok(f),
        Err(HubError::Mismatch {
            file: f,
            algorithm,
            expected: want,
            got,
            size,
        }) => {
            let failed = Checksum {
                ok: false,
                ..Checksum::new(check_of(ctx, p), &f, got.clone(), Some(&want), source, size)
            };
            let checksums = ctx.env.store.checksums();
            checksums.record_many(&[failed]).await?;
            Err(ExecError::permanent(format!(
                "checksum mismatch for {f}: expected {algorithm} {want}, got {got}; \
                 the file was discarded"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Copies the verified snapshot to `models/{repo}/{commit}/...` in the bucket (skipping objects
/// already there) and records each file's key. Returns the snapshot's S3 URI.
async fn upload(
    ctx: &TaskContext,
    p: &DownloadParams,
    commit: &str,
    files: &mut [ArtifactFile],
    verified: &[(String, Fetched)],
) -> Result<String, ExecError> {
    ctx.progress("uploading", 100.0, None);
    ctx.claim().await?;
    let storage = &ctx.env.storage;
    let prefix = format!("models/{}/{commit}", p.repo);
    for (f, (_, fetched)) in files.iter_mut().zip(verified) {
        let key = format!("{prefix}/{}", f.name);
        // Keys are content-addressed by commit: an object of the right size is this file.
        if storage.head(&key).await? != Some(f.size_bytes) {
            storage
                .put_file(&key, &fetched.path, "application/octet-stream")
                .await?;
        }
        f.s3_key = Some(key);
    }
    Ok(format!("s3://{}/{prefix}", storage.bucket()))
}

/// The files to fetch: those asked for (each must exist), or the whole repo. Every name is
/// checked, including the Hub's own.
fn select_files(p: &DownloadParams, listing: &Listing) -> Result<Vec<RemoteFile>, ExecError> {
    let by_name = |n: &str| listing.siblings.iter().find(|s| s.rfilename == n);
    let mut out: Vec<RemoteFile> = match &p.files {
        Some(names) => names
            .iter()
            .map(|n| {
                by_name(n).cloned().ok_or_else(|| {
                    ExecError::permanent(format!(
                        "params.files: {n} is not in {}@{}",
                        p.repo, p.revision
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        None => listing.siblings.clone(),
    };
    // The model card names the license; it is small, so it comes along.
    if let Some(card) = by_name("README.md")
        && !out.iter().any(|f| f.rfilename == "README.md")
    {
        out.push(card.clone());
    }
    for f in &out {
        check_file_name(&f.rfilename)
            .map_err(|m| ExecError::permanent(format!("refusing a file from the Hub: {m}")))?;
    }
    Ok(out)
}

fn check_of<'a>(ctx: &'a TaskContext, p: &'a DownloadParams) -> CheckOf<'a> {
    CheckOf {
        repo: &p.repo,
        revision: &p.revision,
        verified_by: &ctx.env.worker_id,
        task_id: ctx.task.id,
    }
}

/// Reads the license from the model card's front matter, when there is one.
async fn record_license(
    ctx: &TaskContext,
    repo: &str,
    files: &[(String, Fetched)],
) -> Result<Option<harmonia_shared::model::License>, ExecError> {
    let Some((_, card)) = files.iter().find(|(n, _)| n == "README.md") else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(&card.path)
        .await
        .unwrap_or_default();
    let Some(card_id) = license::card_license(&text) else {
        return Ok(None);
    };
    let (spdx, commercial) = license::from_card_id(&card_id);
    let text_path = files
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("LICENSE") || n.eq_ignore_ascii_case("LICENSE.txt"))
        .map(|(_, f)| f.path.display().to_string());
    let l = ctx
        .env
        .store
        .licenses()
        .upsert(&spdx, commercial, text_path.as_deref(), repo)
        .await?;
    Ok(Some(l))
}

fn format_of(files: &[ArtifactFile]) -> &'static str {
    let has = |ext: &str| files.iter().any(|f| f.name.ends_with(ext));
    match (has(".safetensors"), has(".gguf"), has(".bin")) {
        (true, false, _) => "safetensors",
        (false, true, false) => "gguf",
        (false, false, true) => "pytorch",
        (false, false, false) => "other",
        _ => "mixed",
    }
}
