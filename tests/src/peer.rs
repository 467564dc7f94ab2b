//! The apalis-redis peer of `scripts/bench` (`scripts/peers/apalis`): run against a redis-server
//! of its own (it flushes it), started like the suites' servers, and read its `RESULT` line.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::servers::RedisServer;

/// Runs `apalis-bench <mode> <args>` against a fresh redis-server with its scratch files under
/// `dir`, and returns its `RESULT` JSON.
pub async fn apalis(binary: &Path, dir: &Path, mode: &str, args: &[&str]) -> anyhow::Result<Value> {
    let redis = RedisServer::start(&dir.join("redis")).await?;
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    let binary = binary.to_owned();
    let (mode, args) = (
        mode.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let port = redis.port.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&binary)
            .arg(&mode)
            .args(&args)
            .env("REDIS_HOST", "127.0.0.1")
            .env("REDIS_PORT", port)
            .env("BENCH_WORK", &work)
            .output()
            .with_context(|| format!("running {}", binary.display()))
    })
    .await??;
    drop(redis);
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "apalis-bench failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("apalis-bench printed no RESULT line")?;
    Ok(serde_json::from_str(line)?)
}
