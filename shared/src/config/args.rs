//! The command-line/env layer of the configuration: one clap `Args` group per section, each
//! flag with its `HARMONIA_*` variable.

use std::path::PathBuf;

use serde::Serialize;

/// Command-line/env layer. Every field is optional so that an absent flag does not override the
/// file; `skip_serializing_if` keeps `None` out of the merged figment.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ConfigArgs {
    /// TOML file with any of the settings below (sections `[redis]`, `[mongo]`, `[s3]`, `[models]`).
    #[arg(
        long = "config",
        env = "HARMONIA_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub models: ModelsArgs,
}

#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct RedisArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0
    #[arg(long = "redis-url", env = "HARMONIA_REDIS_URL", global = true)]
    #[serde(rename = "url", skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (several deployments can share one Redis server).
    #[arg(long = "redis-prefix", env = "HARMONIA_REDIS_PREFIX", global = true)]
    #[serde(rename = "prefix", skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
    /// Connections in the Redis pool.
    #[arg(
        long = "redis-pool-size",
        env = "HARMONIA_REDIS_POOL_SIZE",
        global = true
    )]
    #[serde(rename = "pool_size", skip_serializing_if = "Option::is_none")]
    pub redis_pool_size: Option<usize>,
    /// Connect to a Redis Cluster: --redis-url then lists seed nodes, comma-separated, and the
    /// prefix must hold a hash tag (e.g. {harmonia}).
    #[arg(
        long = "redis-cluster",
        env = "HARMONIA_REDIS_CLUSTER",
        value_name = "BOOL",
        global = true
    )]
    #[serde(rename = "cluster", skip_serializing_if = "Option::is_none")]
    pub redis_cluster: Option<bool>,
}

#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct MongoArgs {
    /// MongoDB URI; a replica set is required (retryable writes).
    #[arg(long = "mongo-uri", env = "HARMONIA_MONGO_URI", global = true)]
    #[serde(rename = "uri", skip_serializing_if = "Option::is_none")]
    pub mongo_uri: Option<String>,
    /// MongoDB database name.
    #[arg(
        long = "mongo-database",
        env = "HARMONIA_MONGO_DATABASE",
        global = true
    )]
    #[serde(rename = "database", skip_serializing_if = "Option::is_none")]
    pub mongo_database: Option<String>,
}

#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct S3Args {
    /// S3 endpoint URL; unset means AWS's regional endpoint.
    #[arg(long = "s3-endpoint", env = "HARMONIA_S3_ENDPOINT", global = true)]
    #[serde(rename = "endpoint", skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[arg(long = "s3-region", env = "HARMONIA_S3_REGION", global = true)]
    #[serde(rename = "region", skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    #[arg(long = "s3-bucket", env = "HARMONIA_S3_BUCKET", global = true)]
    #[serde(rename = "bucket", skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted S3 servers.
    #[arg(
        long = "s3-force-path-style",
        env = "HARMONIA_S3_FORCE_PATH_STYLE",
        global = true
    )]
    #[serde(rename = "force_path_style", skip_serializing_if = "Option::is_none")]
    pub s3_force_path_style: Option<bool>,
    #[arg(
        long = "s3-access-key-id",
        env = "HARMONIA_S3_ACCESS_KEY_ID",
        global = true
    )]
    #[serde(rename = "access_key_id", skip_serializing_if = "Option::is_none")]
    pub s3_access_key_id: Option<String>,
    /// File holding the S3 secret key (or set HARMONIA_S3_SECRET_ACCESS_KEY).
    #[arg(
        long = "s3-secret-access-key-file",
        env = "HARMONIA_S3_SECRET_ACCESS_KEY_FILE",
        global = true
    )]
    #[serde(
        rename = "secret_access_key_file",
        skip_serializing_if = "Option::is_none"
    )]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// How long one S3 call is retried, with backoff, while S3 does not answer (or answers
    /// 5xx/429), in seconds; past it the task attempt fails and is retried as a whole.
    #[arg(
        long = "s3-retry-for-s",
        env = "HARMONIA_S3_RETRY_FOR_S",
        global = true
    )]
    #[serde(rename = "retry_for_s", skip_serializing_if = "Option::is_none")]
    pub s3_retry_for_s: Option<u64>,
}

#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ModelsArgs {
    /// Model cache directory (Hugging Face cache layout), shared by the workers of a host.
    #[arg(
        long = "model-cache-dir",
        env = "HARMONIA_MODEL_CACHE_DIR",
        global = true
    )]
    #[serde(rename = "cache_dir", skip_serializing_if = "Option::is_none")]
    pub model_cache_dir: Option<PathBuf>,
    /// Hugging Face Hub endpoint (or a Hub-compatible mirror); falls back to HF_ENDPOINT.
    #[arg(long = "hub-endpoint", env = "HARMONIA_HUB_ENDPOINT", global = true)]
    #[serde(rename = "hub_endpoint", skip_serializing_if = "Option::is_none")]
    pub hub_endpoint: Option<String>,
    /// File holding a Hub token (or set HARMONIA_HUB_TOKEN / HF_TOKEN).
    #[arg(
        long = "hub-token-file",
        env = "HARMONIA_HUB_TOKEN_FILE",
        global = true
    )]
    #[serde(rename = "hub_token_file", skip_serializing_if = "Option::is_none")]
    pub hub_token_file: Option<PathBuf>,
}
