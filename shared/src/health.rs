//! Checks that Redis, MongoDB and S3 answer with the given config; `harmonia-* check` prints it.

use serde::Serialize;

use crate::config::Config;
use crate::queue::Queue;
use crate::storage::Storage;
use crate::store::{Store, redact_uri};

/// One line per backing service.
#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub service: &'static str,
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub services: Vec<ServiceStatus>,
}

impl HealthReport {
    pub fn ok(&self) -> bool {
        self.services.iter().all(|s| s.ok)
    }
}

/// Connects to Redis and MongoDB for a long-running process, waiting for each while it does not
/// answer (containers start in any order; see [`crate::outage::connect`]). `None` when SIGTERM
/// came first.
pub async fn connect_waiting(config: &Config) -> anyhow::Result<Option<(Queue, Store)>> {
    use crate::outage::connect;
    let redis = || Queue::connect(&config.redis);
    let mongo = || Store::connect(&config.mongo);
    let both = async {
        let queue = connect("Redis", redis, crate::queue::QueueError::is_unreachable).await?;
        let store = connect("MongoDB", mongo, crate::store::StoreError::is_transient).await?;
        anyhow::Ok((queue, store))
    };
    tokio::select! {
        both = both => both.map(Some),
        _ = crate::signal::terminated() => Ok(None),
    }
}

/// Probes all three services concurrently; never fails, failures are in the report.
pub async fn check(config: &Config) -> HealthReport {
    let redis = async {
        let result = match Queue::connect(&config.redis).await {
            Ok(queue) => queue.ping().await.map(|v| format!("redis {v}")),
            Err(e) => Err(e),
        };
        status("redis", redis_target(&config.redis), result)
    };
    let mongo = async {
        let result = match Store::connect(&config.mongo).await {
            Ok(store) => describe_mongo(&store, &config.mongo.database).await,
            Err(e) => Err(e),
        };
        status("mongodb", redact_uri(&config.mongo.uri), result)
    };
    let s3 = async {
        let storage = Storage::new(&config.s3);
        let result = storage
            .ensure_bucket()
            .await
            .map(|()| format!("bucket {} ready", storage.bucket()));
        let target = config
            .s3
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("aws {}", config.s3.region));
        status("s3", target, result)
    };
    let (redis, mongo, s3) = tokio::join!(redis, mongo, s3);
    HealthReport {
        services: vec![redis, mongo, s3],
    }
}

/// mongod's version and the database, with the snapshot-history advice when there is one
/// (advice, not a failure: a mongod that keeps history works, only slower).
async fn describe_mongo(store: &Store, database: &str) -> Result<String, crate::store::StoreError> {
    let line = format!(
        "mongod {}, database {database}",
        store.server_version().await?
    );
    Ok(match store.history_advice().await {
        Ok(Some(advice)) => format!("{line}; {advice}"),
        Ok(None) | Err(_) => line,
    })
}

/// The Redis URL as printed: each seed node of a Cluster redacted on its own (each may carry a
/// password).
fn redis_target(redis: &crate::config::RedisConfig) -> String {
    let urls: Vec<String> = redis.urls().iter().map(|u| redact_uri(u)).collect();
    urls.join(",")
}

fn status<E: std::fmt::Display>(
    service: &'static str,
    target: String,
    result: Result<String, E>,
) -> ServiceStatus {
    match result {
        Ok(detail) => ServiceStatus {
            service,
            target,
            ok: true,
            detail,
        },
        Err(e) => ServiceStatus {
            service,
            target,
            ok: false,
            detail: e.to_string(),
        },
    }
}

impl std::fmt::Display for HealthReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.services {
            let mark = if s.ok { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {:<8} {:<40} {}", s.service, s.target, s.detail)?;
        }
        Ok(())
    }
}

/// `check` subcommand shared by both binaries.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

/// Runs the check and prints the report on stdout; the exit code says whether all answered.
pub async fn run_check(
    config: &Config,
    args: &CheckArgs,
) -> std::io::Result<std::process::ExitCode> {
    use std::io::Write;
    let report = check(config).await;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(if report.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_seed_node_of_a_cluster_is_printed_without_its_password() {
        let mut redis = crate::Config::default().redis;
        redis.url = "redis://:one@10.0.0.1:7000,redis://10.0.0.2:7000,redis://u:two@h:1".into();
        let printed = super::redis_target(&redis);
        assert_eq!(
            printed,
            "redis://***@10.0.0.1:7000,redis://10.0.0.2:7000,redis://***@h:1"
        );
    }
}
