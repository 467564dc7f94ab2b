//! One typed configuration for every Harmonia binary.
//!
//! Precedence, lowest first: built-in defaults, the optional TOML file (`--config`), then flags
//! and their `HARMONIA_*` environment variables (clap resolves flag-over-env). Secrets never come
//! from flags (they would show in `ps`): only from environment variables or files, and they are
//! wrapped in [`SecretString`] so `Debug` and logs print `[REDACTED]`.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Dict;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

mod args;
pub use args::{ConfigArgs, ModelsArgs, MongoArgs, RedisArgs, S3Args};

/// Env var holding the S3 secret key (alternative: `--s3-secret-access-key-file`).
pub const S3_SECRET_ENV: &str = "HARMONIA_S3_SECRET_ACCESS_KEY";
/// Env vars holding a Hugging Face Hub token, first match wins.
pub const HUB_TOKEN_ENVS: [&str; 2] = ["HARMONIA_HUB_TOKEN", "HF_TOKEN"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
    #[error("config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: Box<figment::Error>,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            setting,
            message: message.into(),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    pub mongo: MongoConfig,
    pub s3: S3Config,
    pub models: ModelsConfig,
    /// `[scheduler]`: `harmonia-scheduler run`'s tuning as the file gives it (names as the
    /// flags, with `_`); the scheduler resolves it with [`resolve_tuning`].
    #[serde(default, skip_serializing_if = "Dict::is_empty")]
    pub scheduler: Dict,
    /// `[worker]`: `harmonia-worker run`'s tuning, likewise.
    #[serde(default, skip_serializing_if = "Dict::is_empty")]
    pub worker: Dict,
}

/// A `run` subcommand's tuning: `T`'s defaults, then the file's section, then the flags and
/// their `HARMONIA_*` variables (`args` serializes only the ones given). An unknown or
/// ill-typed key fails with its section's name.
pub fn resolve_tuning<T>(
    section: &'static str,
    file: &Dict,
    args: &impl Serialize,
) -> Result<T, ConfigError>
where
    T: Serialize + serde::de::DeserializeOwned + Default,
{
    Figment::from(Serialized::defaults(T::default()))
        .merge(Serialized::defaults(file))
        .merge(Serialized::defaults(args))
        .extract()
        .map_err(|e| ConfigError::invalid(section, e.to_string()))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server's URL; with `cluster`, seed nodes of the Cluster, comma-separated.
    pub url: String,
    pub prefix: String,
    pub pool_size: usize,
    /// Connect to a Redis Cluster (the prefix must then hold a hash tag, e.g. `{harmonia}`).
    #[serde(default)]
    pub cluster: bool,
}

impl RedisConfig {
    /// The URLs in `url`: one, or a Cluster's seed nodes.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() || (!self.cluster && urls.len() > 1) {
            return Err(ConfigError::invalid(
                "redis.url",
                "one URL (several, comma-separated, only as the seed nodes of a Cluster)",
            ));
        }
        for url in &urls {
            let parsed = url::Url::parse(url)
                .map_err(|e| ConfigError::invalid("redis.url", format!("not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                return Err(ConfigError::invalid(
                    "redis.url",
                    format!(
                        "scheme must be redis:// or rediss://, got {}://",
                        parsed.scheme()
                    ),
                ));
            }
        }
        check_name("redis.prefix", &self.prefix, |c| {
            !c.is_whitespace() && c != ':'
        })?;
        if self.cluster && hash_tag(&self.prefix).is_none() {
            return Err(ConfigError::invalid(
                "redis.prefix",
                format!(
                    "on a Redis Cluster the prefix must hold a hash tag, e.g. {{{}}}: the scripts \
                     and transactions touch several keys, which must share one slot",
                    self.prefix
                ),
            ));
        }
        if self.pool_size == 0 {
            return Err(ConfigError::invalid(
                "redis.pool_size",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The part of `key` Redis Cluster hashes: what is between the first `{` and the next `}`,
/// when that is not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    pub uri: String,
    pub database: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub force_path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Filled from env or file by [`Config::load`]; never serialized.
    #[serde(skip)]
    pub secret_access_key: Option<SecretString>,
    /// Retry budget of one call while S3 is unreachable, in seconds.
    pub retry_for_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub cache_dir: PathBuf,
    pub hub_endpoint: String,
    pub hub_token_file: Option<PathBuf>,
    #[serde(skip)]
    pub hub_token: Option<SecretString>,
}

impl Default for Config {
    fn default() -> Self {
        let cache_home = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/var/cache"));
        Self {
            redis: RedisConfig {
                url: "redis://127.0.0.1:6379".into(),
                prefix: "harmonia".into(),
                pool_size: 16,
                cluster: false,
            },
            mongo: MongoConfig {
                uri: "mongodb://127.0.0.1:27017/?replicaSet=rs0".into(),
                database: "harmonia".into(),
            },
            s3: S3Config {
                endpoint: None,
                region: "us-east-1".into(),
                bucket: "harmonia".into(),
                force_path_style: false,
                access_key_id: None,
                secret_access_key_file: None,
                secret_access_key: None,
                retry_for_s: 120,
            },
            scheduler: Dict::new(),
            worker: Dict::new(),
            models: ModelsConfig {
                cache_dir: cache_home.join("harmonia").join("hub"),
                hub_endpoint: std::env::var("HF_ENDPOINT")
                    .unwrap_or_else(|_| "https://huggingface.co".into()),
                hub_token_file: None,
                hub_token: None,
            },
        }
    }
}

impl Config {
    /// Merges defaults, file and flags/env, reads secrets, and validates every setting.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &args.config_file {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    "config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let file_err = |e: figment::Error| ConfigError::File {
            path: args.config_file.clone().unwrap_or_default(),
            source: Box::new(e),
        };
        let mut config: Config = figment
            .merge(Serialized::globals(args))
            .extract()
            .map_err(file_err)?;
        config.s3.secret_access_key = read_secret(
            &[S3_SECRET_ENV],
            config.s3.secret_access_key_file.as_deref(),
            "s3.secret_access_key_file",
        )?;
        config.models.hub_token = read_secret(
            &HUB_TOKEN_ENVS,
            config.models.hub_token_file.as_deref(),
            "models.hub_token_file",
        )?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting so a bad value fails at start-up with its name, not at first use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        if !self.mongo.uri.starts_with("mongodb://") {
            return Err(ConfigError::invalid(
                "mongo.uri",
                "must start with mongodb:// (mongodb+srv:// needs the DNS resolver, not built in)",
            ));
        }
        check_name("mongo.database", &self.mongo.database, |c| {
            !matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0')
        })?;
        if let Some(endpoint) = &self.s3.endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| ConfigError::invalid("s3.endpoint", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    "s3.endpoint",
                    "scheme must be http or https",
                ));
            }
        }
        check_name("s3.region", &self.s3.region, |c| {
            c.is_ascii_alphanumeric() || c == '-'
        })?;
        let bucket = &self.s3.bucket;
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(ConfigError::invalid(
                "s3.bucket",
                format!("{bucket:?} is not a valid bucket name (3-63 chars of a-z 0-9 . -)"),
            ));
        }
        if self.s3.access_key_id.is_some() != self.s3.secret_access_key.is_some() {
            return Err(ConfigError::invalid(
                "s3.access_key_id",
                format!(
                    "access key id and secret key must be set together (secret: env {S3_SECRET_ENV} or s3.secret_access_key_file)"
                ),
            ));
        }
        let hub = url::Url::parse(&self.models.hub_endpoint)
            .map_err(|e| ConfigError::invalid("models.hub_endpoint", format!("not a URL: {e}")))?;
        if !matches!(hub.scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "models.hub_endpoint",
                "scheme must be http or https",
            ));
        }
        Ok(())
    }
}

fn check_name(
    setting: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(setting, "must not be empty"));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(ConfigError::invalid(
            setting,
            format!("{value:?} contains the forbidden character {bad:?}"),
        ));
    }
    Ok(())
}

/// A secret from the first set env var, else from a file (trailing newline trimmed).
fn read_secret(
    envs: &[&str],
    file: Option<&Path>,
    setting: &'static str,
) -> Result<Option<SecretString>, ConfigError> {
    if let Some(value) = envs
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    {
        return Ok(Some(SecretString::from(value)));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(setting, format!("cannot read {}: {e}", path.display()))
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(ConfigError::invalid(
            setting,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Some(SecretString::from(text.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use secrecy::ExposeSecret;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn parse(args: &[&str]) -> ConfigArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).config
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tuning {
        a: u64,
        b: u64,
        c: u64,
    }

    impl Default for Tuning {
        fn default() -> Self {
            Self { a: 1, b: 2, c: 3 }
        }
    }

    #[derive(Serialize)]
    struct TuningArgs {
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        c: Option<u64>,
    }

    #[test]
    fn run_tuning_is_defaults_then_the_file_section_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "[scheduler]\nb = 20\nc = 30\n").unwrap();
        let args = parse(&["--config", file.to_str().unwrap()]);
        let config = Config::load(&args).unwrap();
        let flags = TuningArgs {
            b: None,
            c: Some(300),
        };
        let tuning: Tuning = resolve_tuning("scheduler", &config.scheduler, &flags).unwrap();
        assert_eq!(
            tuning,
            Tuning {
                a: 1,
                b: 20,
                c: 300
            }
        );

        std::fs::write(&file, "[scheduler]\nreconcile_msec = 5\n").unwrap();
        let config = Config::load(&args).unwrap();
        let err = resolve_tuning::<Tuning>("scheduler", &config.scheduler, &flags).unwrap_err();
        assert!(err.to_string().contains("`scheduler`"), "{err}");
        assert!(err.to_string().contains("reconcile_msec"), "{err}");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(
            &file,
            "[redis]\nurl = \"redis://10.0.0.1:7000\"\nprefix = \"fromfile\"\n[s3]\nbucket = \"file-bucket\"\n",
        )
        .unwrap();
        let args = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--redis-prefix",
            "fromflag",
        ]);
        let config = Config::load(&args).unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.1:7000");
        assert_eq!(config.redis.prefix, "fromflag");
        assert_eq!(config.s3.bucket, "file-bucket");
        assert_eq!(config.mongo.database, "harmonia");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: &[(&[&str], &str)] = &[
            (&["--redis-url", "http://x"], "redis.url"),
            (&["--redis-prefix", "a b"], "redis.prefix"),
            (&["--mongo-uri", "postgres://x"], "mongo.uri"),
            (&["--s3-bucket", "Bad_Bucket"], "s3.bucket"),
            (&["--s3-endpoint", "ftp://x"], "s3.endpoint"),
            (&["--hub-endpoint", "nope"], "models.hub_endpoint"),
            (&["--redis-url", "redis://a:1,redis://b:2"], "redis.url"),
            (
                &["--redis-cluster", "true", "--redis-prefix", "h"],
                "redis.prefix",
            ),
            (
                &["--redis-cluster", "true", "--redis-prefix", "{}h"],
                "redis.prefix",
            ),
        ];
        for (args, setting) in cases {
            let err = Config::load(&parse(args)).unwrap_err().to_string();
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_cluster_takes_seed_nodes_and_a_hash_tagged_prefix() {
        let args = parse(&[
            "--redis-cluster",
            "true",
            "--redis-url",
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000",
            "--redis-prefix",
            "{prod}",
        ]);
        let config = Config::load(&args).unwrap();
        assert!(config.redis.cluster);
        assert_eq!(
            config.redis.urls(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
        );
        assert_eq!(hash_tag("{prod}"), Some("prod"));
        assert_eq!(hash_tag("a{b}c{d}"), Some("b"));
        assert_eq!(hash_tag("{}a"), None);
        assert_eq!(hash_tag("a{b"), None);
    }

    #[test]
    fn unknown_and_mistyped_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("h.toml");
        std::fs::write(&file, "[redis]\npool_size = \"many\"\n").unwrap();
        let err = Config::load(&parse(&["--config", file.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool_size"), "{err}");
        std::fs::write(&file, "[redis]\nurll = \"redis://x\"\n").unwrap();
        let err = Config::load(&parse(&["--config", file.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3-secret");
        std::fs::write(&secret, "hunter2\n").unwrap();
        let args = parse(&[
            "--s3-access-key-id",
            "AKID",
            "--s3-secret-access-key-file",
            secret.to_str().unwrap(),
        ]);
        let config = Config::load(&args).unwrap();
        let key = config.s3.secret_access_key.as_ref().unwrap();
        assert_eq!(key.expose_secret(), "hunter2");
        let shown = format!("{config:?} {}", serde_json::to_string(&config).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn access_key_without_secret_is_an_error() {
        let err = Config::load(&parse(&["--s3-access-key-id", "AKID"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3.access_key_id"), "{err}");
    }
}
