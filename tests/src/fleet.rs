//! The container fleet of `docker/compose.yaml` under test: one compose project per test, with
//! the images `scripts/images --profile dev` builds (tag `test`), test timings from an override
//! file, and a client on the host reaching Redis, MongoDB and S3 through published ports.
//!
//! Containers belong to the Docker daemon, not to the test process: [`Fleet`] removes its project
//! (volumes included) on drop, and a new suite first removes projects of suites that died.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use harmonia_shared::Config;
use secrecy::SecretString;

use crate::process::alive;
use crate::servers::workspace_root;
use crate::{Client, wait_for};

/// Image tag of the test images (never `local`, which `scripts/fleet` builds in release).
pub const TAG: &str = "test";
const PROJECT_PREFIX: &str = "hmfleet";
const S3_KEY: &str = "harmonia-fleet";
const S3_SECRET: &str = "harmonia-fleet-secret";

/// Why the fleet tests cannot run here (no docker client, or an engine that does not answer),
/// or `None` when they can.
pub fn unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
    {
        Err(e) => Some(format!("no docker client ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Builds the test images once per suite (layers are reused when the binaries did not change),
/// and removes the projects of earlier suites that died before their drop ran.
fn prepare() -> anyhow::Result<()> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            remove_stale_projects();
            let out = Command::new(workspace_root().join("scripts/images"))
                .args(["--profile", "dev"])
                .env("HARMONIA_IMAGE_TAG", TAG)
                .output()
                .map_err(|e| format!("running scripts/images: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "scripts/images failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn remove_stale_projects() {
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
    else {
        return;
    };
    let mut projects: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|p| {
            p.strip_prefix(PROJECT_PREFIX)
                .and_then(|rest| rest.split('x').next()?.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect();
    projects.dedup();
    for project in projects {
        let _ = compose_command(&project, &[])
            .args(["down", "-v", "-t", "0"])
            .output();
    }
}

/// `docker compose` when the plugin works, else `docker-compose`, on docker/compose.yaml plus
/// the given override files, as project `project`.
fn compose_command(project: &str, overrides: &[&Path]) -> Command {
    static V2: OnceLock<bool> = OnceLock::new();
    let v2 = *V2.get_or_init(|| {
        Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let mut cmd = if v2 {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    };
    cmd.args(["-p", project, "-f"])
        .arg(workspace_root().join("docker/compose.yaml"));
    for file in overrides {
        cmd.arg("-f").arg(file);
    }
    cmd.env("HARMONIA_IMAGE_TAG", TAG)
        .env("HARMONIA_HUB_ROOT", workspace_root().join(".harmonia/hub"));
    cmd
}

/// Runs a command to completion; a failure carries its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out: Output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A compose project of the whole fleet.
#[derive(Debug)]
pub struct Fleet {
    project: Project,
    pub dir: PathBuf,
    pub config: Config,
    pub client: Client,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Scheduler settings of the test fleet: fast reconcile and repair, a short worker timeout.
const SCHEDULER_OVERRIDE: &str = r#"
services:
  scheduler:
    command: ["run", "--grace-s", "5", "--reconcile-ms", "200", "--repair-ms", "1000",
              "--retry-base-ms", "50", "--worker-timeout-ms", "4000"]
  worker:
    stop_grace_period: 25s
    environment:
"#;

/// Worker settings of the test fleet: a drain long enough for the tasks the tests run, and
/// leases of 10 s: short enough for tests, long enough that a heartbeat held up by a loaded
/// 2-core CI machine (containers starting, journaled writes on overlayfs) does not expire one
/// and re-run a task the exactly-once assertions count (with 3 s leases the rolling-replacement
/// test once saw a task run twice in CI, most likely so). The partition test, which needs a
/// lease to lapse quickly, sets a 3 s one.
const WORKER_ENV: &[(&str, &str)] = &[
    ("HARMONIA_CPU_SLOTS", "4"),
    ("HARMONIA_LEASE_MS", "10000"),
    ("HARMONIA_HEARTBEAT_MS", "500"),
    ("HARMONIA_GRACE_S", "15"),
    ("HARMONIA_RETRY_BASE_MS", "50"),
];

/// The compose override of a test fleet, with `extra` worker variables over [`WORKER_ENV`].
fn override_file_text(extra: &[(&str, &str)]) -> String {
    let mut env: BTreeMap<&str, &str> = WORKER_ENV.iter().copied().collect();
    env.extend(extra.iter().copied());
    let mut yaml = SCHEDULER_OVERRIDE.to_owned();
    for (key, value) in env {
        yaml.push_str(&format!("      {key}: \"{value}\"\n"));
    }
    yaml
}

impl Fleet {
    /// Starts the fleet with `workers` worker containers and waits until the scheduler answers
    /// and that many workers have registered. One fleet at a time per suite: two would share the
    /// machine's two cores and every timing with them.
    pub async fn up(test: &str, workers: usize) -> anyhow::Result<Self> {
        Self::up_with(test, workers, &[]).await
    }

    /// [`Self::up`] with some worker variables set otherwise (e.g. `HARMONIA_CPU_SLOTS`).
    pub async fn up_with(
        test: &str,
        workers: usize,
        worker_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let serial = SERIAL.lock().await;
        tokio::task::spawn_blocking(prepare).await??;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let project = format!("{PROJECT_PREFIX}{}x{n}", std::process::id());
        let dir = std::env::temp_dir()
            .join("harmonia-tests")
            .join(std::process::id().to_string())
            .join("fleet")
            .join(format!("{test}-{n}"));
        std::fs::create_dir_all(&dir)?;
        let override_file = dir.join("compose.test.yaml");
        std::fs::write(&override_file, override_file_text(worker_env))?;
        // Built before `up`, so that a half-started fleet is taken down too.
        let project = Project {
            name: project,
            override_file,
        };
        let mut up = project.command();
        up.args(["up", "-d", "--scale", &format!("worker={workers}")]);
        tokio::task::spawn_blocking(move || run(&mut up)).await??;
        let config = Self::host_config(&project)?;
        let client = wait_for(
            "the fleet's MongoDB and Redis",
            Duration::from_secs(90),
            || {
                let config = config.clone();
                async move { Ok(Some(Client::for_config(&config).await?)) }
            },
        )
        .await?;
        let fleet = Self {
            project,
            dir,
            config,
            client,
            _serial: serial,
        };
        fleet.await_workers(workers).await?;
        Ok(fleet)
    }

    /// The config a client on the host uses: published ports, MongoDB by direct connection
    /// (the replica set names its member by the container's network name).
    fn host_config(project: &Project) -> anyhow::Result<Config> {
        let port = |service, port| project.published(service, port);
        let mut config = Config::default();
        config.redis.url = format!("redis://{}", port("redis", 6379)?);
        config.mongo.uri = format!("mongodb://{}/?directConnection=true", port("mongo", 27017)?);
        config.s3.endpoint = Some(format!("http://{}", port("s3", 9000)?));
        config.s3.force_path_style = true;
        config.s3.access_key_id = Some(S3_KEY.into());
        config.s3.secret_access_key = Some(SecretString::from(S3_SECRET));
        Ok(config)
    }

    /// A compose command on this project.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.project.command().args(args))
    }

    /// `docker <args>`.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("docker").args(args))
    }

    /// A container's log (stdout and stderr; the binaries log on stderr).
    pub fn logs(&self, container: &str) -> anyhow::Result<String> {
        let out = Command::new("docker").args(["logs", container]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }

    /// Container ids of a service, oldest first.
    pub fn containers(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let ids = self.compose(&["ps", "-q", service])?;
        let mut ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let mut args = vec!["inspect", "--format", "{{.Created}} {{.Id}}"];
        args.extend(ids.iter().map(String::as_str));
        let mut created: Vec<String> = self.docker(&args)?.lines().map(str::to_owned).collect();
        created.sort();
        ids = created
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect();
        Ok(ids)
    }

    /// The compose project's name (prefix of its containers, networks and volumes).
    pub fn project_name(&self) -> &str {
        &self.project.name
    }

    /// The host address (`127.0.0.1:port`) a service's container port is published on.
    pub fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        self.project.published(service, port)
    }

    /// The project's network, as `docker network` names it.
    pub fn network(&self) -> String {
        format!("{}_default", self.project_name())
    }

    /// Runs `docker-compose up -d --scale worker=N` (existing containers are kept).
    pub fn scale_workers(&self, n: usize) -> anyhow::Result<()> {
        self.compose(&[
            "up",
            "-d",
            "--no-recreate",
            "--scale",
            &format!("worker={n}"),
            "worker",
        ])?;
        Ok(())
    }

    /// Waits until `n` workers have heartbeated in the last 3 s.
    pub async fn await_workers(&self, n: usize) -> anyhow::Result<()> {
        let workers = self.client.store.workers();
        wait_for(
            &format!("{n} live workers"),
            Duration::from_secs(90),
            || async {
                let live = workers.live(Duration::from_secs(3)).await?;
                Ok((live.len() >= n).then_some(()))
            },
        )
        .await
    }

    /// Saves every container's log under the test's directory (kept on failure for a person).
    pub fn save_logs(&self) {
        if let Ok(logs) = self.compose(&["logs", "--no-color", "-t"]) {
            let _ = std::fs::write(self.dir.join("compose.log"), logs);
        }
    }
}

/// A compose project, taken down (containers, network, volumes) on drop.
#[derive(Debug)]
struct Project {
    name: String,
    override_file: PathBuf,
}

impl Project {
    fn command(&self) -> Command {
        compose_command(&self.name, &[&self.override_file])
    }

    fn published(&self, service: &str, port: u16) -> anyhow::Result<String> {
        let out = run(self.command().args(["port", service, &port.to_string()]))?;
        Ok(out.trim().to_owned())
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "-v", "-t", "0", "--remove-orphans"])
            .output();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.save_logs();
    }
}
