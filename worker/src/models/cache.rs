//! The model cache on a host: the Hugging Face cache layout (`models--org--name/{blobs,
//! snapshots,refs}`), shared by every worker process there, plus per-blob file locks so two
//! processes never fetch the same bytes at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::{Cache, Repo, RepoType};
use tokio_util::sync::CancellationToken;

/// A repo's place in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    repo: Repo,
    dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo_id: &str, revision: &str) -> Self {
        let repo = Repo::with_revision(repo_id.to_owned(), RepoType::Model, revision.to_owned());
        let dir = cache_dir.join(repo.folder_name());
        Self {
            root: cache_dir.to_owned(),
            repo,
            dir,
        }
    }

    pub fn blob(&self, blob_id: &str) -> PathBuf {
        self.dir.join("blobs").join(blob_id)
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// The commit this revision resolved to when it was last fetched here (a revision that is
    /// itself a cached commit resolves to itself).
    pub fn cached_commit(&self) -> Option<String> {
        let rev = self.repo.revision();
        match std::fs::read_to_string(self.dir.join("refs").join(rev)) {
            Ok(commit) => Some(commit.trim().to_owned()),
            Err(_) if self.snapshot_dir(rev).is_dir() => Some(rev.to_owned()),
            Err(_) => None,
        }
    }

    /// The commit the revision pointed to when it was last fetched, and the file's place in
    /// that snapshot, if cached (the lookup `hf-hub` itself does, no network).
    pub fn cached(&self, file: &str) -> Option<PathBuf> {
        Cache::new(self.root.clone())
            .repo(self.repo.clone())
            .get(file)
    }

    /// Links `snapshots/<commit>/<file>` to its verified blob and points the revision at the
    /// commit.
    pub fn publish(&self, commit: &str, file: &str, blob_id: &str) -> std::io::Result<PathBuf> {
        let pointer = self.snapshot_dir(commit).join(file);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Relative, like huggingface_hub's, so the cache can be moved or mounted elsewhere.
        let depth = Path::new(file).components().count();
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob_id);
        // Tasks load models from the snapshot without the blob's lock, on this worker and on
        // others sharing the cache, so the link and the ref are replaced by a rename (atomic),
        // never removed or truncated first, and left alone when they already say the same.
        if std::fs::read_link(&pointer).ok().as_deref() != Some(target.as_path()) {
            let temp = sibling_temp(&pointer);
            std::os::unix::fs::symlink(&target, &temp)?;
            rename_or_remove(&temp, &pointer)?;
        }
        if self.repo.revision() != commit {
            self.write_ref(commit)?;
        }
        Ok(pointer)
    }

    /// Points the revision at `commit` (`refs/<revision>`, as `hf-hub` reads it).
    fn write_ref(&self, commit: &str) -> std::io::Result<()> {
        let path = self.dir.join("refs").join(self.repo.revision());
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temp = sibling_temp(&path);
        std::fs::write(&temp, commit)?;
        rename_or_remove(&temp, &path)
    }

    /// Removes a file from the snapshot (a blob that failed verification must never be found).
    pub fn forget(&self, commit: &str, file: &str, blob_id: &str) {
        let _ = std::fs::remove_file(self.snapshot_dir(commit).join(file));
        let _ = std::fs::remove_file(self.blob(blob_id));
    }

    fn lock_path(&self, blob_id: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(self.repo.folder_name())
            .join(format!("{blob_id}.lock"))
    }

    /// Takes the host-wide lock on one blob. Polls, so a cancelled task stops waiting at once;
    /// `waiting` is called once if another process holds it.
    pub async fn lock(
        &self,
        blob_id: &str,
        cancel: &CancellationToken,
        waiting: impl FnOnce(),
    ) -> Result<BlobLock, LockError> {
        let path = self.lock_path(blob_id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(LockError::Io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(LockError::Io)?;
        let mut waiting = Some(waiting);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(BlobLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if let Some(f) = waiting.take() {
                        f();
                    }
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
            }
            tokio::select! {
                () = cancel.cancelled() => return Err(LockError::Cancelled),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// Held while a blob is fetched or checked; the OS releases it when the file closes, even if
/// the process dies.
#[derive(Debug)]
pub struct BlobLock {
    _file: std::fs::File,
}

/// A name beside `path` for a file that replaces it by a rename: unique to this process and
/// call, hidden, so no reader of the directory takes it for a model file.
fn sibling_temp(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Whether a snapshot entry is a [`sibling_temp`] name, about to replace a model file.
pub fn is_temp(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Renames `temp` over `path`; removes `temp` when that fails.
fn rename_or_remove(temp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(temp);
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cache lock: {0}")]
    Io(std::io::Error),
    #[error("cancelled while waiting for the cache lock")]
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshot_links_resolve_to_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = RepoCache::new(dir.path(), "org/name", "main");
        std::fs::create_dir_all(repo.blob("x").parent().expect("parent")).expect("mkdir");
        std::fs::write(repo.blob("abc"), b"bytes").expect("write");
        let path = repo
            .publish("c0ffee", "sub/dir/f.bin", "abc")
            .expect("publish");
        assert_eq!(std::fs::read(&path).expect("read"), b"bytes");
        assert_eq!(repo.cached("sub/dir/f.bin"), Some(path));
        repo.forget("c0ffee", "sub/dir/f.bin", "abc");
        assert_eq!(repo.cached("sub/dir/f.bin"), None);
    }

    /// Another worker's task (or this one's) loads a model from its snapshot while a
    /// verification re-publishes the same files: the file and the revision's ref must never
    /// be missing or empty in between (it used to be unlinked, then linked again, and the ref
    /// truncated, then written).
    #[test]
    fn a_snapshot_file_and_its_ref_stay_readable_while_they_are_published_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = RepoCache::new(dir.path(), "org/name", "main");
        std::fs::create_dir_all(repo.blob("x").parent().expect("parent")).expect("mkdir");
        std::fs::write(repo.blob("one"), b"bytes").expect("write");
        std::fs::write(repo.blob("two"), b"bytes").expect("write");
        let path = repo
            .publish("c0ffee", "tokenizer.json", "one")
            .expect("publish");
        let refs = dir.path().join("models--org--name/refs/main");
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(&path);
                    assert_eq!(bytes.as_deref().ok(), Some(&b"bytes"[..]), "{bytes:?}");
                    let commit = std::fs::read_to_string(&refs).expect("the ref");
                    assert_eq!(commit, "c0ffee");
                    reads += 1;
                }
                reads
            });
            // Published again and again, as every cache hit does; now and then to another
            // blob, as a re-fetch after a failed verification does.
            for i in 0..20_000 {
                let blob = if i % 100 == 99 { "two" } else { "one" };
                repo.publish("c0ffee", "tokenizer.json", blob)
                    .expect("publish");
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().expect("the reader") > 0);
        });
    }
}
