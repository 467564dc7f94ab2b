//! Streaming one file from the Hub into a partial file in the cache: resuming what an earlier
//! attempt left, hashing as the bytes arrive, writing and hashing on a thread of their own so
//! they overlap with receiving.

use std::io::Write;
use std::path::Path;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Hub, HubError, Stage};
use crate::models::verify::{Digests, Expected, Hasher, hash_prefix};

/// A response ready to stream.
struct Opened {
    response: reqwest::Response,
    /// Bytes of the file already in the partial file (0 unless the server honoured the range).
    start: u64,
    /// The whole file's length.
    total: u64,
}

impl Hub {
    /// Streams `url` into `part`, resuming a partial file, hashing as the bytes arrive.
    /// Returns the digests and how many bytes came over the network.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn stream_to(
        &self,
        url: &str,
        file: &str,
        part: &Path,
        size: Option<u64>,
        expected: &Expected,
        cancel: &CancellationToken,
        progress: &(dyn Fn(Stage) + Send + Sync),
    ) -> Result<(Digests, u64), HubError> {
        if let Some(parent) = part.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let opened = self.open(url, file, part, size, cancel).await?;
        let (start, total) = (opened.start, opened.total);
        let hasher = if start > 0 {
            let (p, e) = (part.to_owned(), expected.clone());
            tokio::task::spawn_blocking(move || hash_prefix(&p, total, start, &e))
                .await
                .map_err(|e| HubError::Io(std::io::Error::other(e)))??
        } else {
            Hasher::new(total, expected)
        };
        let out_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(start == 0)
            .append(start > 0)
            .open(part)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
        let sink = tokio::task::spawn_blocking(move || write_and_hash(rx, hasher, out_file));
        let what = format!("downloading {file}");
        let (ended, transferred) = receive(opened, tx, cancel, progress, &what).await;
        // What arrived so far is on disk either way: the next attempt resumes from it. The
        // file is not fsynced: a blob is re-hashed on every cache hit, so a torn write after a
        // crash is caught there rather than paid for here.
        let hasher = sink
            .await
            .map_err(|e| HubError::Io(std::io::Error::other(e)))??;
        ended?;
        if hasher.bytes() != total {
            // A short body: keep it, the next attempt resumes.
            return Err(HubError::Truncated {
                file: file.to_owned(),
                expected: total,
                got: hasher.bytes(),
            });
        }
        Ok((hasher.finish(), transferred))
    }

    /// Sends the request, for the rest of the file when part of it is already here.
    async fn open(
        &self,
        url: &str,
        file: &str,
        part: &Path,
        size: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<Opened, HubError> {
        let have = match (size, std::fs::metadata(part)) {
            (Some(total), Ok(m)) if m.len() <= total => m.len(),
            _ => 0,
        };
        let mut request = self.api.client().get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let what = format!("downloading {file}");
        let response = tokio::select! {
            () = cancel.cancelled() => return Err(HubError::Cancelled),
            r = request.send() => r.map_err(|source| HubError::Network { what: what.clone(), source })?,
        };
        let status = response.status();
        if !status.is_success() {
            return Err(HubError::Status { what, status });
        }
        // A server that ignores the range sends the whole file: start over.
        let resumed = have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT;
        let start = if resumed { have } else { 0 };
        let total = size
            .or_else(|| response.content_length().map(|n| n + start))
            .ok_or_else(|| HubError::Client(format!("{file}: the Hub sent no length")))?;
        Ok(Opened {
            response,
            start,
            total,
        })
    }
}

/// Moves the body's chunks to the writer until it ends, fails or is cancelled. Returns how it
/// ended and the bytes received.
async fn receive(
    opened: Opened,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
    cancel: &CancellationToken,
    progress: &(dyn Fn(Stage) + Send + Sync),
    what: &str,
) -> (Result<(), HubError>, u64) {
    let Opened {
        response,
        start,
        total,
    } = opened;
    let mut body = response.bytes_stream();
    let mut transferred = 0u64;
    let ended = loop {
        let chunk = tokio::select! {
            () = cancel.cancelled() => break Err(HubError::Cancelled),
            c = body.next() => c,
        };
        let chunk = match chunk {
            None => break Ok(()),
            Some(Err(source)) => {
                let what = what.to_owned();
                break Err(HubError::Network { what, source });
            }
            Some(Ok(c)) => c,
        };
        transferred += chunk.len() as u64;
        crate::metrics::downloaded(chunk.len() as u64);
        if tx.send(chunk).await.is_err() {
            break Ok(()); // the writer failed; its error is reported by the caller
        }
        progress(Stage::Downloading {
            done: start + transferred,
            total,
        });
    };
    drop(body); // closes the connection at once on cancel
    (ended, transferred)
}

/// The writer thread: hashes and writes each chunk, then flushes.
fn write_and_hash(
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    mut hasher: Hasher,
    out_file: std::fs::File,
) -> Result<Hasher, std::io::Error> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out_file);
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(hasher)
}
