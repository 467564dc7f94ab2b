//! Typed parameters of every task kind (see `task_kind`). The scheduler checks them at submit
//! time (so a bad parameter is a rejected submission naming the field) and the worker parses
//! the same types.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// `debug.sleep`: sleeps, reporting progress, and stops at once when cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SleepParams {
    #[serde(deserialize_with = "non_negative")]
    pub ms: u64,
}

/// `debug.fail`: fails the first `times` attempts (every attempt when absent), retryably
/// unless `permanent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailParams {
    #[serde(default, deserialize_with = "non_negative_or_none")]
    pub times: Option<u64>,
    #[serde(default)]
    pub permanent: bool,
}

/// `debug.write`: works for `after_ms` (default 0; cancellable), then stores `bytes` bytes as
/// the task's output, as a model task works and then stores its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteParams {
    #[serde(deserialize_with = "non_negative")]
    pub bytes: u64,
    #[serde(default, deserialize_with = "non_negative")]
    pub after_ms: u64,
}

/// The most `debug.write` writes: it holds the bytes in memory.
pub const WRITE_MAX_BYTES: u64 = 64 << 20;

/// `model.download`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    /// `org/name` on the Hub.
    pub repo: String,
    #[serde(default = "main")]
    pub revision: String,
    /// Files to fetch; all files of the repo when absent.
    pub files: Option<Vec<String>>,
    /// Expected sha256 per file; else the Hub's own checksum is used.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    /// Also copy the verified snapshot to the bucket (`models/{repo}/{commit}/...`).
    #[serde(default)]
    pub upload: bool,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `inference.embed`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedParams {
    /// A `model_artifacts` id; by default the model of the upstream `model.download` or
    /// `model.convert` task.
    pub model_artifact_id: Option<String>,
    /// Which weights file of the artifact to load (default: the first `*.safetensors`).
    pub weights: Option<String>,
    pub texts: Option<Vec<String>>,
    /// A JSONL object in the bucket, one `{"text": ...}` per line.
    pub input_key: Option<String>,
    #[serde(default = "batch_size")]
    pub batch_size: u32,
    #[serde(default = "yes")]
    pub normalize: bool,
}

/// `inference.generate`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    pub model_artifact_id: Option<String>,
    /// The GGUF file of the artifact (default: the first `*.gguf`).
    pub weights: Option<String>,
    pub prompts: Vec<String>,
    #[serde(default = "max_tokens")]
    pub max_tokens: u32,
    /// 0 is greedy (deterministic).
    #[serde(default)]
    pub temperature: f64,
    #[serde(default)]
    pub seed: u64,
    /// Wrap each prompt as a chat turn (ChatML).
    #[serde(default = "yes")]
    pub chat: bool,
}

/// `model.convert`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertParams {
    pub model_artifact_id: Option<String>,
    /// The source weights file (default: `model.safetensors`, else `pytorch_model.bin`).
    pub weights: Option<String>,
    /// `f16`, `bf16`, `safetensors` (from a pickle), `q8_0`, `q4_0`.
    pub to: Vec<String>,
    /// Check each output by a forward pass against the source (BERT-family models).
    #[serde(default = "yes")]
    pub validate: bool,
}

pub const CONVERSIONS: &[&str] = &["f16", "bf16", "safetensors", "q8_0", "q4_0"];

/// A count: says "non-negative integer" rather than serde's "expected u64".
fn non_negative<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    v.as_u64().ok_or_else(|| {
        serde::de::Error::custom(format!("expected a non-negative integer, got {v}"))
    })
}

fn non_negative_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    non_negative(d).map(Some)
}

fn main() -> String {
    "main".into()
}
fn batch_size() -> u32 {
    32
}
fn max_tokens() -> u32 {
    64
}
fn yes() -> bool {
    true
}

/// Parses params, naming the field of the first problem (`files[2]`, `sha256`).
pub fn parse<T: DeserializeOwned>(params: &serde_json::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // Missing and unknown fields are reported at the object: name the field itself.
        let path = if path == "." {
            message.split('`').nth(1).unwrap_or_default().to_owned()
        } else {
            path
        };
        (path, message)
    })
}

/// Checks beyond the types, as (field, message) pairs.
pub fn check_download(p: &DownloadParams) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let parts: Vec<&str> = p.repo.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|s| !valid_repo_part(s)) {
        problems.push((
            "repo".into(),
            format!(
                "expected `org/name` (letters, digits, - _ .), got '{}'",
                p.repo
            ),
        ));
    }
    if p.revision.is_empty() || p.revision.contains("..") {
        problems.push(("revision".into(), "must be a branch, tag or commit".into()));
    }
    for (i, f) in p.files.iter().flatten().enumerate() {
        if let Err(m) = check_file_name(f) {
            problems.push((format!("files[{i}]"), m));
        }
    }
    for (file, sha) in &p.sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push((
                format!("sha256.{file}"),
                format!("expected 64 hex digits, got '{sha}'"),
            ));
        }
    }
    problems
}

pub fn check_write(p: &WriteParams) -> Vec<(String, String)> {
    if p.bytes > WRITE_MAX_BYTES {
        return vec![(
            "bytes".into(),
            format!("at most {WRITE_MAX_BYTES}, got {}", p.bytes),
        )];
    }
    Vec::new()
}

pub fn check_embed(p: &EmbedParams) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match (&p.texts, &p.input_key) {
        (None, None) => problems.push(("texts".into(), "give `texts` or `input_key`".into())),
        (Some(_), Some(_)) => problems.push((
            "input_key".into(),
            "give `texts` or `input_key`, not both".into(),
        )),
        (Some(t), None) if t.is_empty() => problems.push(("texts".into(), "is empty".into())),
        _ => {}
    }
    if !(1..=1024).contains(&p.batch_size) {
        problems.push((
            "batch_size".into(),
            format!("must be 1..=1024, got {}", p.batch_size),
        ));
    }
    problems.extend(check_artifact_id(p.model_artifact_id.as_deref()));
    problems
}

pub fn check_generate(p: &GenerateParams) -> Vec<(String, String)> {
    let mut problems = check_artifact_id(p.model_artifact_id.as_deref());
    if p.prompts.is_empty() {
        problems.push(("prompts".into(), "is empty".into()));
    }
    if !(1..=4096).contains(&p.max_tokens) {
        problems.push((
            "max_tokens".into(),
            format!("must be 1..=4096, got {}", p.max_tokens),
        ));
    }
    if !(0.0..=5.0).contains(&p.temperature) {
        problems.push((
            "temperature".into(),
            format!("must be 0..=5, got {}", p.temperature),
        ));
    }
    problems
}

pub fn check_convert(p: &ConvertParams) -> Vec<(String, String)> {
    let mut problems = check_artifact_id(p.model_artifact_id.as_deref());
    if p.to.is_empty() {
        problems.push((
            "to".into(),
            format!("is empty; expected some of {}", CONVERSIONS.join(", ")),
        ));
    }
    for (i, t) in p.to.iter().enumerate() {
        if !CONVERSIONS.contains(&t.as_str()) {
            problems.push((
                format!("to[{i}]"),
                format!(
                    "unknown conversion '{t}'; expected one of {}",
                    CONVERSIONS.join(", ")
                ),
            ));
        }
    }
    problems
}

fn check_artifact_id(id: Option<&str>) -> Vec<(String, String)> {
    match id {
        Some(id) if mongodb::bson::oid::ObjectId::parse_str(id).is_err() => vec![(
            "model_artifact_id".into(),
            format!("expected a 24-hex-digit id, got '{id}'"),
        )],
        _ => Vec::new(),
    }
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Rejects repo file names that could escape a snapshot directory.
pub fn check_file_name(name: &str) -> Result<(), String> {
    use std::path::{Component, Path};
    if name.is_empty() || name.len() > 1024 {
        return Err(format!("file name '{name}' is empty or too long"));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(format!("file name '{name}' contains a backslash or NUL"));
    }
    for c in Path::new(name).components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(format!("file name '{name}' contains '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("file name '{name}' is an absolute path"));
            }
            Component::CurDir => return Err(format!("file name '{name}' contains '.'")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_named() {
        let err = parse::<DownloadParams>(&json!({ "repo": "a/b", "files": ["x", 3] }))
            .expect_err("bad type");
        assert_eq!(err.0, "files[1]");
        let err =
            parse::<DownloadParams>(&json!({ "repo": "a/b", "bogus": 1 })).expect_err("unknown");
        assert_eq!(err.0, "bogus");
        assert!(err.1.contains("unknown field `bogus`"), "{err:?}");
        let err = parse::<GenerateParams>(&json!({})).expect_err("missing");
        assert_eq!(err, ("prompts".into(), "missing field `prompts`".into()));
        let p: DownloadParams = parse(&json!({ "repo": "a/b", "files": ["../etc/passwd"],
            "sha256": { "x": "zz" } }))
        .expect("parses");
        let problems = check_download(&p);
        assert_eq!(problems[0].0, "files[0]");
        assert_eq!(problems[1].0, "sha256.x");
        let p: ConvertParams = parse(&json!({ "to": ["f16", "q5"] })).expect("parses");
        assert_eq!(check_convert(&p)[0].0, "to[1]");
    }

    #[test]
    fn file_names() {
        assert!(check_file_name("model.safetensors").is_ok());
        assert!(check_file_name("1_Pooling/config.json").is_ok());
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "a\\b", "./a"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }
}
