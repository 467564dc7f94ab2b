//! Dev servers and helpers for `scripts/services` and the demo. Not for production.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "harmonia-dev", version, about = "Harmonia local dev services")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve S3 over a directory (s3s-fs) with SigV4 credential checks, until SIGTERM/Ctrl-C.
    S3 {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, env = "HARMONIA_DEV_S3_PORT", default_value_t = 9010)]
        port: u16,
        #[arg(long, env = "HARMONIA_S3_ACCESS_KEY_ID")]
        access_key: String,
        /// Read from the environment only, so it never shows in `ps`.
        #[arg(skip = std::env::var("HARMONIA_S3_SECRET_ACCESS_KEY").unwrap_or_default())]
        secret_key: String,
        /// Directory holding one sub-directory per bucket.
        root: PathBuf,
    },
    /// Serve a Hugging Face Hub-compatible mirror of `<root>/<org>/<name>/...` (files are hashed
    /// at start; the sha256 is each file's ETag) until SIGTERM/Ctrl-C.
    HubMirror {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, env = "HARMONIA_DEV_HUB_PORT", default_value_t = 9020)]
        port: u16,
        root: PathBuf,
    },
    /// Initiate a one-node replica set `rs0` on a local mongod and wait for a writable primary.
    MongoInit {
        #[arg(long)]
        port: u16,
        /// The member's address as clients must reach it (`host:port`); in a container, the
        /// service's name on its network. Default: 127.0.0.1:<port>.
        #[arg(long)]
        member: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
        Cmd::S3 {
            host,
            port,
            access_key,
            secret_key,
            root,
        } => {
            anyhow::ensure!(
                !secret_key.is_empty(),
                "set HARMONIA_S3_SECRET_ACCESS_KEY for the dev S3 server"
            );
            let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
            tracing::info!("s3 listening on http://{}", listener.local_addr()?);
            harmonia_tests::s3::serve(listener, &root, &access_key, &secret_key, async {
                let _ = harmonia_shared::signal::terminated().await;
            })
            .await
        }
        Cmd::HubMirror { host, port, root } => {
            let mirror = std::sync::Arc::new(harmonia_tests::hub::Mirror::index(&root)?);
            let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
            tracing::info!(
                "hub mirror of {} on http://{}",
                root.display(),
                listener.local_addr()?
            );
            harmonia_tests::hub::serve(mirror, listener, async {
                let _ = harmonia_shared::signal::terminated().await;
            })
            .await
        }
        Cmd::MongoInit { port, member } => {
            let member = member.unwrap_or_else(|| format!("127.0.0.1:{port}"));
            harmonia_tests::servers::init_replica_set(port, &member).await
        }
    }
}
