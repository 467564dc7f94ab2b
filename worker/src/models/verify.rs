//! Checksums: sha256 for every file, plus git's blob sha1 for small files the Hub keeps in git
//! (their ETag is that id, not a sha256).

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What a file must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Sha256(String),
    /// A git blob id: `sha1("blob {len}\0" + bytes)`.
    GitSha1(String),
}

impl Expected {
    /// The Hub's ETag of a file: a 64-hex sha256 for LFS files, a 40-hex git blob id otherwise.
    pub fn from_etag(etag: &str) -> Option<Self> {
        let etag = etag.trim_matches('"').to_ascii_lowercase();
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hex => Some(Self::Sha256(etag)),
            40 if hex => Some(Self::GitSha1(etag)),
            _ => None,
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Self::Sha256(v) | Self::GitSha1(v) => v,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "sha256",
            Self::GitSha1(_) => "git-sha1",
        }
    }
}

/// Both digests of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    /// Only computed when a git blob id is what the file is checked against.
    pub git_sha1: Option<String>,
    pub size: u64,
}

impl Digests {
    /// `Err((expected, got))` when the bytes are not what was expected.
    pub fn check(&self, expected: &Expected) -> Result<(), (String, String)> {
        let got = match expected {
            Expected::Sha256(_) => self.sha256.as_str(),
            Expected::GitSha1(_) => self.git_sha1.as_deref().unwrap_or("(not computed)"),
        };
        if got.eq_ignore_ascii_case(expected.value()) {
            Ok(())
        } else {
            Err((expected.value().to_owned(), got.to_owned()))
        }
    }
}

/// Hashes bytes as they stream past, so a download is read once.
#[derive(Debug, Clone)]
pub struct Hasher {
    sha256: Sha256,
    git: Option<Sha1>,
    size: u64,
}

impl Hasher {
    /// `size` is the file's full length (git's blob header names it up front); the git id is
    /// computed only for `Expected::GitSha1`.
    pub fn new(size: u64, expected: &Expected) -> Self {
        let git = matches!(expected, Expected::GitSha1(_)).then(|| {
            let mut git = Sha1::new();
            git.update(format!("blob {size}\0").as_bytes());
            git
        });
        Self {
            sha256: Sha256::new(),
            git,
            size: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(git) = &mut self.git {
            git.update(bytes);
        }
        self.size += bytes.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha256.finalize()),
            git_sha1: self.git.map(|g| hex::encode(g.finalize())),
            size: self.size,
        }
    }
}

/// Hashes a file on disk (blocking: call from `spawn_blocking`). Stops early, returning
/// `Ok(None)`, when `cancelled` says so.
pub fn hash_file(
    path: &Path,
    expected: &Expected,
    cancelled: &dyn Fn() -> bool,
) -> std::io::Result<Option<Digests>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut hasher = Hasher::new(len, expected);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancelled() {
            return Ok(None);
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hasher.finish()))
}

/// Hashes the first `len` bytes of a file (a partial download being resumed).
pub fn hash_prefix(
    path: &Path,
    total: u64,
    len: u64,
    expected: &Expected,
) -> std::io::Result<Hasher> {
    let mut file = std::fs::File::open(path)?.take(len);
    let mut hasher = Hasher::new(total, expected);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut h = Hasher::new(5, &Expected::GitSha1(String::new()));
        h.update(b"hello");
        let d = h.finish();
        assert_eq!(
            d.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        // `printf hello | git hash-object --stdin`
        let git = d.git_sha1.clone().expect("git id computed");
        assert_eq!(git, "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0");
        assert!(d.check(&Expected::GitSha1(git)).is_ok());
        let (want, got) = d
            .check(&Expected::Sha256("00".repeat(32)))
            .expect_err("mismatch");
        assert_eq!((want.len(), got), (64, d.sha256.clone()));
    }

    #[test]
    fn etags() {
        assert_eq!(
            Expected::from_etag(&format!("\"{}\"", "A".repeat(64))),
            Some(Expected::Sha256("a".repeat(64)))
        );
        assert!(matches!(
            Expected::from_etag(&"b".repeat(40)),
            Some(Expected::GitSha1(_))
        ));
        assert_eq!(Expected::from_etag("W/\"xyz\""), None);
    }
}
