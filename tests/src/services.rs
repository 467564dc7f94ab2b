//! One Redis, one mongod replica set and one S3 server per test binary (suite), started on
//! first use on free ports with their own data dir, and stopped when the suite's process exits.
//!
//! Tests inside a suite share the servers but never each other's data: every [`Scope`] gets its
//! own Redis key prefix, Mongo database and S3 bucket, exactly as two deployments would.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use harmonia_shared::Config;
use secrecy::SecretString;

use crate::process::{ChildGuard, alive, free_port, signal};
use crate::servers::{MongoServer, RedisServer, S3Server, workspace_root};

pub const S3_ACCESS_KEY: &str = "harmonia-test";
pub const S3_SECRET_KEY: &str = "harmonia-test-secret";

/// Set to `1` to give the suite a Redis Cluster (three masters with a replica each) instead of
/// one Redis server: every scope then connects in Cluster mode with a hash-tagged prefix.
/// `scripts/test` runs the core-loop suite so, besides everything on one server.
pub const CLUSTER_ENV: &str = "HARMONIA_TEST_REDIS_CLUSTER";

/// Where the suite's servers listen.
#[derive(Debug, Clone)]
pub struct Services {
    /// One URL, or a Cluster's seed nodes (comma-separated) when `redis_cluster`.
    pub redis_url: String,
    pub redis_cluster: bool,
    pub mongo_uri: String,
    pub s3_endpoint: String,
    /// Data dir of this suite: `$TMPDIR/harmonia-tests/<pid>`.
    pub root: PathBuf,
    /// Server pids, for tests that must stop or restart a server.
    pub mongod_pid: u32,
}

static SERVICES: OnceLock<Result<Services, String>> = OnceLock::new();
static CLEANUP: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The suite's services, started on first call (a few seconds: mongod dominates).
pub fn services() -> &'static Services {
    match SERVICES.get_or_init(|| start().map_err(|e| format!("{e:#}"))) {
        Ok(services) => services,
        Err(e) => panic!("starting test services failed: {e}"),
    }
}

fn suite_root() -> PathBuf {
    std::env::temp_dir().join("harmonia-tests")
}

/// Removes data dirs left by suites that died before their exit hook ran.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(suite_root()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let pid = entry.file_name().to_string_lossy().parse::<u32>().ok();
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> anyhow::Result<Services> {
    remove_stale_dirs();
    let root = suite_root().join(std::process::id().to_string());
    std::fs::create_dir_all(&root)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_root = root.clone();
    // The servers are spawned from this thread, which never exits: PDEATHSIG then fires only
    // when the whole suite process ends. Its runtime also serves the in-process S3.
    std::thread::Builder::new()
        .name("harmonia-test-services".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                match start_servers(&thread_root).await {
                    Ok((services, guards)) => {
                        let _ = tx.send(Ok(services));
                        // Keep the guards (and the S3 task) alive for the life of the process.
                        std::future::pending::<()>().await;
                        drop(guards);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let services = rx.recv().context("service thread died")??;
    // SAFETY: registering a plain `extern "C" fn` with atexit.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    Ok(services)
}

/// The suite's Redis: one server, or a Cluster when [`CLUSTER_ENV`] is `1`. Its URL (or seed
/// nodes) and its processes.
async fn start_redis(dir: &Path) -> anyhow::Result<(String, bool, Vec<ChildGuard>)> {
    if std::env::var(CLUSTER_ENV).is_ok_and(|v| v == "1") {
        let cluster = crate::redis_cluster::RedisCluster::start(dir).await?;
        return Ok((cluster.url(), true, cluster.nodes));
    }
    let redis = RedisServer::start(dir).await?;
    Ok((redis.url, false, vec![redis.process]))
}

async fn start_servers(root: &Path) -> anyhow::Result<(Services, Vec<ChildGuard>)> {
    let (redis_dir, mongo_dir) = (root.join("redis"), root.join("mongo"));
    let (redis, mongo) = tokio::join!(start_redis(&redis_dir), MongoServer::start(&mongo_dir));
    let ((redis_url, redis_cluster, redis_processes), mongo) = (redis?, mongo?);
    let s3_port = free_port()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", s3_port)).await?;
    let s3_root = root.join("s3");
    tokio::spawn(async move {
        let served = crate::s3::serve(
            listener,
            &s3_root,
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            std::future::pending(),
        )
        .await;
        if let Err(e) = served {
            tracing::error!("test S3 server stopped: {e:#}");
        }
    });
    if let Ok(mut pids) = CLEANUP.lock() {
        pids.extend(redis_processes.iter().map(ChildGuard::pid));
        pids.push(mongo.process.pid());
    }
    let services = Services {
        redis_url,
        redis_cluster,
        mongo_uri: mongo.uri.clone(),
        s3_endpoint: format!("http://127.0.0.1:{s3_port}"),
        root: root.to_owned(),
        mongod_pid: mongo.process.pid(),
    };
    let mut processes = redis_processes;
    processes.push(mongo.process);
    Ok((services, processes))
}

extern "C" fn stop_at_exit() {
    if let Ok(pids) = CLEANUP.lock() {
        for pid in pids.iter() {
            signal(*pid, libc::SIGKILL);
            if let Ok(pid) = libc::pid_t::try_from(*pid) {
                // SAFETY: reaping our own child; a null status pointer is allowed.
                unsafe {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
    }
    // HARMONIA_KEEP_TEST_DIRS=1 keeps the logs and data of a failed run for a post-mortem.
    if std::env::var_os("HARMONIA_KEEP_TEST_DIRS").is_none() {
        let _ = std::fs::remove_dir_all(suite_root().join(std::process::id().to_string()));
    }
}

/// One test's slice of the suite's services.
#[derive(Debug)]
pub struct Scope {
    pub name: String,
    pub config: Config,
    pub dir: PathBuf,
}

impl Scope {
    /// A fresh scope named after the test; names are made unique within the suite.
    pub fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let services = services();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        let name = format!("{slug}-{n}");
        let dir = services.root.join("scopes").join(&name);
        let _ = std::fs::create_dir_all(&dir);
        let mut config = Config::default();
        config.redis.url = services.redis_url.clone();
        config.redis.prefix = format!("t-{name}");
        if services.redis_cluster {
            config.redis.cluster = true;
            config.redis.prefix = format!("{{t-{name}}}");
        }
        config.mongo.uri = services.mongo_uri.clone();
        config.mongo.database = format!("t_{}", name.replace('-', "_"));
        config.s3.endpoint = Some(services.s3_endpoint.clone());
        config.s3.bucket = format!("t-{name}").chars().take(63).collect();
        config.s3.force_path_style = true;
        config.s3.access_key_id = Some(S3_ACCESS_KEY.into());
        config.s3.secret_access_key = Some(SecretString::from(S3_SECRET_KEY));
        config.models.cache_dir = dir.join("models");
        Self { name, config, dir }
    }

    /// A scope with a Redis server of its own, for tests that flush or restart Redis: the
    /// suite's shared Redis holds other tests' unread submissions, which a flush would lose.
    pub async fn with_own_redis(test: &str) -> anyhow::Result<(Self, RedisServer)> {
        let mut scope = Self::new(test);
        let redis = RedisServer::start(&scope.dir.join("redis")).await?;
        scope.config.redis.url = redis.url.clone();
        scope.config.redis.cluster = false;
        Ok((scope, redis))
    }

    /// A scope with a mongod of its own, for tests that stall or stop it.
    pub async fn with_own_mongo(test: &str) -> anyhow::Result<(Self, MongoServer)> {
        let mut scope = Self::new(test);
        let mongo = MongoServer::start(&scope.dir.join("mongo")).await?;
        scope.config.mongo.uri = mongo.uri.clone();
        Ok((scope, mongo))
    }

    /// A scope with an S3 server of its own, for tests that take it down.
    pub async fn with_own_s3(test: &str) -> anyhow::Result<(Self, S3Server)> {
        let mut scope = Self::new(test);
        let s3 = S3Server::start(&scope.dir.join("s3")).await?;
        scope.config.s3.endpoint = Some(s3.endpoint.clone());
        Ok((scope, s3))
    }

    /// The scope's config as the `HARMONIA_*` environment a spawned binary reads.
    pub fn env(&self) -> Vec<(String, String)> {
        let c = &self.config;
        let mut env = vec![
            ("HARMONIA_REDIS_URL", c.redis.url.clone()),
            ("HARMONIA_REDIS_PREFIX", c.redis.prefix.clone()),
            ("HARMONIA_REDIS_CLUSTER", c.redis.cluster.to_string()),
            ("HARMONIA_MONGO_URI", c.mongo.uri.clone()),
            ("HARMONIA_MONGO_DATABASE", c.mongo.database.clone()),
            ("HARMONIA_S3_BUCKET", c.s3.bucket.clone()),
            ("HARMONIA_S3_REGION", c.s3.region.clone()),
            (
                "HARMONIA_S3_FORCE_PATH_STYLE",
                c.s3.force_path_style.to_string(),
            ),
            ("HARMONIA_S3_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("HARMONIA_S3_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            (
                "HARMONIA_MODEL_CACHE_DIR",
                c.models.cache_dir.display().to_string(),
            ),
            ("HARMONIA_HUB_ENDPOINT", c.models.hub_endpoint.clone()),
        ];
        if let Some(endpoint) = &c.s3.endpoint {
            env.push(("HARMONIA_S3_ENDPOINT", endpoint.clone()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// A command for one of the workspace binaries, configured for this scope through env only
    /// (any `HARMONIA_*` of the developer's shell is removed first).
    pub fn command(&self, binary: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(binary_path(binary)?);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("HARMONIA_")) {
            cmd.env_remove(key);
        }
        cmd.envs(self.env());
        Ok(cmd)
    }

    /// Runs `harmonia-scheduler <args>` to completion (the control CLI).
    pub fn scheduler_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.command("harmonia-scheduler")?.args(args).output()?)
    }

    /// Runs the scheduler's CLI, which must succeed; its stdout.
    pub fn scheduler_cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run_ok("harmonia-scheduler", args)
    }

    /// Runs `binary <args>` to completion, which must succeed; its stdout.
    pub fn run_ok(&self, binary: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(binary)?.args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{binary} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawns a workspace binary (e.g. `harmonia-worker`) as a child that dies with the test.
    pub fn spawn(&self, label: &str, binary: &str, args: &[&str]) -> anyhow::Result<ChildGuard> {
        let mut cmd = self.command(binary)?;
        cmd.args(args);
        ChildGuard::spawn(label, &mut cmd, &self.dir.join(format!("{label}.log")))
    }
}

/// Path of a workspace binary built next to the running test executable.
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Tests live in target/<profile>/deps/, binaries (the bench) in target/<profile>/.
    let mut dir = exe.parent().context("executable has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` (scripts/test does) from {}",
        path.display(),
        workspace_root().display()
    );
    Ok(path)
}
