//! Starting real Redis, mongod and S3 processes on free loopback ports, and waiting until they
//! really answer (a PING, a writable replica-set primary, a listening socket).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use mongodb::bson::doc;

use crate::process::{ChildGuard, free_port};
use crate::wait::wait_for;

/// Finds an executable: `$env_var`, then each candidate path, then `$PATH`.
pub fn locate(env_var: &str, candidates: &[PathBuf], name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let in_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .iter()
        .chain(in_path.iter())
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!("{name} not found (set {env_var}, or run scripts/install-deps to install it)")
        })
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn redis_server_bin() -> anyhow::Result<PathBuf> {
    locate(
        "HARMONIA_REDIS_SERVER",
        &[PathBuf::from("/usr/bin/redis-server")],
        "redis-server",
    )
}

/// WiredTiger's cache for each mongod started here, in GB: `HARMONIA_MONGOD_CACHE_GB`, else
/// 0.25 (a test's data is small, and a test run starts many mongods at once). `scripts/bench`
/// sets 1: a 100,000-task run does not fit in 0.25, and eviction then dominates its writes.
pub fn mongod_cache_gb() -> String {
    std::env::var("HARMONIA_MONGOD_CACHE_GB").unwrap_or_else(|_| "0.25".into())
}

/// Snapshot history each mongod started here keeps, in seconds:
/// `HARMONIA_MONGOD_SNAPSHOT_HISTORY_S`, else 0, what docs/scaling.md recommends (Harmonia reads
/// no past snapshot; mongod's own default is 300). Set it to 300 to measure the default.
pub fn mongod_snapshot_history_s() -> String {
    std::env::var("HARMONIA_MONGOD_SNAPSHOT_HISTORY_S").unwrap_or_else(|_| "0".into())
}

/// mongod from the project's venv (`scripts/install-deps` puts it there).
pub fn mongod_bin() -> anyhow::Result<PathBuf> {
    let venv_lib = workspace_root().join(".harmonia/venv/lib");
    let candidates: Vec<PathBuf> = std::fs::read_dir(&venv_lib)
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("site-packages/fiftyone/db/bin/mongod"))
                .collect()
        })
        .unwrap_or_default();
    locate("HARMONIA_MONGOD", &candidates, "mongod")
}

#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    pub url: String,
    pub process: ChildGuard,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(dir, free_port()?).await
    }

    /// A crash and a restart on an empty data dir (no persistence): same port, nothing kept,
    /// every client connection broken.
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        let fresh = Self::start_on(&self.dir, self.port).await?;
        *self = fresh;
        Ok(())
    }

    /// A crash (SIGKILL) and a restart from the last snapshot (`SAVE`): what was written after
    /// it is lost, what was written before is back, the epoch key included.
    pub async fn restart_from_snapshot(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.dir.join("dump.rdb").is_file(),
            "no snapshot: SAVE first"
        );
        self.process.kill();
        let fresh = Self::start_on(&self.dir, self.port).await?;
        *self = fresh;
        Ok(())
    }

    async fn start_on(dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let process = ChildGuard::spawn(
            "redis-server",
            Command::new(redis_server_bin()?)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(dir),
            &dir.join("redis.log"),
        )?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        wait_for("redis to answer PING", Duration::from_secs(20), || async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok((pong == "PONG").then_some(()))
        })
        .await
        .with_context(|| format!("redis log:\n{}", process.output()))?;
        Ok(Self {
            port,
            url,
            process,
            dir: dir.to_owned(),
        })
    }
}

#[derive(Debug)]
pub struct MongoServer {
    pub port: u16,
    /// URI for clients: the one-node replica set `rs0`.
    pub uri: String,
    pub process: ChildGuard,
}

impl MongoServer {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let (port, process) = spawn_mongod(dir, "rs0", &mongod_cache_gb())?;
        init_replica_set(port, &format!("127.0.0.1:{port}"))
            .await
            .with_context(|| format!("mongod on port {port}; see {}", dir.display()))?;
        Ok(Self {
            port,
            uri: format!("mongodb://127.0.0.1:{port}/?replicaSet=rs0"),
            process,
        })
    }
}

/// A mongod for replica set `set` with data and log under `dir`, on a free port.
fn spawn_mongod(dir: &Path, set: &str, cache_gb: &str) -> anyhow::Result<(u16, ChildGuard)> {
    let dbpath = dir.join("db");
    std::fs::create_dir_all(&dbpath)?;
    let port = free_port()?;
    let process = ChildGuard::spawn(
        "mongod",
        Command::new(mongod_bin()?)
            .args(["--replSet", set, "--bind_ip", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--wiredTigerCacheSizeGB", cache_gb, "--quiet"])
            .arg("--setParameter")
            .arg(format!(
                "minSnapshotHistoryWindowInSeconds={}",
                mongod_snapshot_history_s()
            ))
            .arg("--dbpath")
            .arg(&dbpath)
            .arg("--logpath")
            .arg(dir.join("mongod.log")),
        &dir.join("mongod.stdout"),
    )?;
    Ok((port, process))
}

/// Initiates a one-node replica set `rs0` on a fresh mongod listening on `port` here, with
/// `member` (`host:port`) as the address clients are told to use, and waits for it to be a
/// writable primary. Safe to call again on an initiated node.
pub async fn init_replica_set(port: u16, member: &str) -> anyhow::Result<()> {
    let config = doc! {
        "_id": "rs0",
        "members": [{ "_id": 0, "host": member }],
    };
    initiate(port, config).await?;
    let admin = direct(port).await?.database("admin");
    wait_for("a writable primary", Duration::from_secs(30), || async {
        let hello = admin.run_command(doc! { "hello": 1 }).await?;
        Ok(hello
            .get_bool("isWritablePrimary")
            .unwrap_or(false)
            .then_some(()))
    })
    .await
}

/// `replSetInitiate` with `config` on the mongod at `port`, once it answers; an initiated node
/// is fine.
async fn initiate(port: u16, config: mongodb::bson::Document) -> anyhow::Result<()> {
    let admin = direct(port).await?.database("admin");
    wait_for("replSetInitiate", Duration::from_secs(30), || async {
        match admin
            .run_command(doc! { "replSetInitiate": config.clone() })
            .await
        {
            Ok(_) => Ok(Some(())),
            // 23 = AlreadyInitialized
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 23) => {
                Ok(Some(()))
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// Three mongods on loopback as one replica set (`rs3`), for failover tests: a client given
/// [`Self::uri`] (all three hosts) follows the primary wherever it moves.
#[derive(Debug)]
pub struct MongoReplicaSet {
    pub uri: String,
    pub ports: Vec<u16>,
    pub members: Vec<ChildGuard>,
}

impl MongoReplicaSet {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let (mut ports, mut members) = (Vec::new(), Vec::new());
        for i in 0..3 {
            let (port, process) = spawn_mongod(&dir.join(format!("m{i}")), "rs3", "0.25")?;
            ports.push(port);
            members.push(process);
        }
        let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let config = doc! {
            "_id": "rs3",
            "members": hosts
                .iter()
                .enumerate()
                .map(|(i, host)| doc! { "_id": i as i32, "host": host })
                .collect::<Vec<_>>(),
        };
        initiate(ports[0], config)
            .await
            .with_context(|| format!("replica set rs3; see {}", dir.display()))?;
        let set = Self {
            uri: format!("mongodb://{}/?replicaSet=rs3", hosts.join(",")),
            ports,
            members,
        };
        // Majority writes need a secondary caught up: wait for the whole set.
        wait_for(
            "one primary and two secondaries",
            Duration::from_secs(60),
            || async {
                let states = set.states().await?;
                let mut sorted = states.clone();
                sorted.sort();
                Ok((sorted == ["PRIMARY", "SECONDARY", "SECONDARY"]).then_some(()))
            },
        )
        .await?;
        Ok(set)
    }

    /// Each member's state as the set sees it (`PRIMARY`, `SECONDARY`, `STARTUP2`, …).
    pub async fn states(&self) -> anyhow::Result<Vec<String>> {
        let status = direct(self.ports[0])
            .await?
            .database("admin")
            .run_command(doc! { "replSetGetStatus": 1 })
            .await?;
        Ok(status
            .get_array("members")?
            .iter()
            .filter_map(|m| m.as_document()?.get_str("stateStr").ok())
            .map(str::to_owned)
            .collect())
    }

    /// The port of the member that is primary now.
    pub async fn primary(&self) -> anyhow::Result<Option<u16>> {
        for &port in &self.ports {
            let hello = direct(port)
                .await?
                .database("admin")
                .run_command(doc! { "hello": 1 })
                .await;
            if hello.is_ok_and(|h| h.get_bool("isWritablePrimary").unwrap_or(false)) {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    /// Makes the primary step down (`replSetStepDown`: it may not stand again for 60 s) and
    /// waits until another member is primary. Returns the old primary's port.
    pub async fn step_down(&self) -> anyhow::Result<u16> {
        let old = self.primary().await?.context("no primary to step down")?;
        let stepped = direct(old)
            .await?
            .database("admin")
            .run_command(doc! { "replSetStepDown": 60, "secondaryCatchUpPeriodSecs": 10 })
            .await;
        // The primary closes its connections as it steps down; the answer may be lost with them.
        if let Err(e) = stepped {
            tracing::info!("replSetStepDown on {old}: {e}");
        }
        wait_for(
            "another member to become primary",
            Duration::from_secs(60),
            || async { Ok(self.primary().await?.filter(|p| *p != old)) },
        )
        .await?;
        Ok(old)
    }
}

/// A client of one member alone (no server selection across the set).
async fn direct(port: u16) -> anyhow::Result<mongodb::Client> {
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000");
    Ok(mongodb::Client::with_uri_str(&uri).await?)
}

/// The dev S3 server (`harmonia-dev s3`) as a process of its own, so a test can take it down
/// (every connection with it) and bring it back on the same port over the same files.
#[derive(Debug)]
pub struct S3Server {
    pub port: u16,
    pub endpoint: String,
    pub process: ChildGuard,
    dir: PathBuf,
}

impl S3Server {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(dir, free_port()?).await
    }

    /// Kills the server: S3 is down until [`S3Server::restart`].
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and files.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        *self = Self::start_on(&self.dir, self.port).await?;
        Ok(())
    }

    async fn start_on(dir: &Path, port: u16) -> anyhow::Result<Self> {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        std::fs::create_dir_all(dir)?;
        let process = ChildGuard::spawn(
            "s3",
            Command::new(crate::services::binary_path("harmonia-dev")?)
                .args(["s3", "--port", &port.to_string()])
                .args(["--access-key", crate::services::S3_ACCESS_KEY])
                .env(
                    "HARMONIA_S3_SECRET_ACCESS_KEY",
                    crate::services::S3_SECRET_KEY,
                )
                .arg(dir.join("data")),
            // One log per start: a restart keeps the log of the run before it.
            &dir.join(format!("s3-{}.log", STARTS.fetch_add(1, Ordering::Relaxed))),
        )?;
        wait_for("s3 to listen", Duration::from_secs(20), || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                .then_some(()))
        })
        .await
        .with_context(|| format!("s3 log:\n{}", process.output()))?;
        Ok(Self {
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            process,
            dir: dir.to_owned(),
        })
    }
}
