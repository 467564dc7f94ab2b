//! A real Redis Cluster on loopback: three masters with one replica each, from Debian's
//! `redis-server`, created with `redis-cli --cluster create`, and a manual failover of the
//! master that holds a given key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::ChildGuard;
use crate::servers::{locate, redis_server_bin};
use crate::wait::wait_for;

/// Six nodes: masters first, then their replicas (as `redis-cli` pairs them).
#[derive(Debug)]
pub struct RedisCluster {
    pub ports: Vec<u16>,
    pub nodes: Vec<ChildGuard>,
}

/// A node's view of one cluster member (a `CLUSTER NODES` line).
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The id of its master, for a replica.
    pub of: Option<String>,
    pub slots: Vec<(u16, u16)>,
}

fn redis_cli_bin() -> anyhow::Result<PathBuf> {
    let beside = redis_server_bin()?.with_file_name("redis-cli");
    locate("HARMONIA_REDIS_CLI", &[beside], "redis-cli")
}

/// `n` distinct free ports whose cluster bus ports (+10,000) are free too: each pair stays bound
/// until all are picked, so no pick repeats one, or another's bus port.
fn free_node_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..100 {
        if ports.len() == n {
            break;
        }
        let node = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = node.local_addr()?.port();
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if let Ok(bus) = std::net::TcpListener::bind(("127.0.0.1", bus)) {
            held.extend([node, bus]);
            ports.push(port);
        }
    }
    anyhow::ensure!(ports.len() == n, "no {n} free port pairs for cluster nodes");
    Ok(ports)
}

/// One cluster start at a time per suite, until its nodes answer: a port is only taken once its
/// node binds it, so two starts at once could pick the same port (or one's node port as the
/// other's bus port), and one `redis-cli --cluster create` would then take the other's node.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl RedisCluster {
    /// Starts six nodes under `dir`, makes them a cluster and waits until every node says it
    /// is whole (`cluster_state:ok`, every slot served).
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let one_at_a_time = STARTING.lock().await;
        let ports = free_node_ports(6)?;
        let mut nodes = Vec::new();
        for port in &ports {
            nodes.push(start_node(&dir.join(port.to_string()), *port)?);
        }
        let cluster = Self { ports, nodes };
        for port in &cluster.ports {
            wait_for(
                "a cluster node to answer",
                Duration::from_secs(20),
                || async { Ok(Some(cluster.query::<String>(*port, &["PING"]).await?)) },
            )
            .await?;
        }
        drop(one_at_a_time);
        let mut create = Command::new(redis_cli_bin()?);
        create.args(["--cluster", "create"]);
        create.args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create.output().context("redis-cli --cluster create")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.await_whole().await?;
        Ok(cluster)
    }

    /// Seed URLs for clients: every node, comma-separated.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    /// One command on one node.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        port: u16,
        args: &[&str],
    ) -> anyhow::Result<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        Ok(cmd.query_async(&mut conn).await?)
    }

    /// Waits until every node reports `cluster_state:ok` and three masters have a replica each,
    /// synced.
    async fn await_whole(&self) -> anyhow::Result<()> {
        wait_for(
            "the cluster to be whole",
            Duration::from_secs(60),
            || async {
                for port in &self.ports {
                    let info: String = self.query(*port, &["CLUSTER", "INFO"]).await?;
                    if !info.contains("cluster_state:ok") {
                        return Ok(None);
                    }
                }
                let members = self.members().await?;
                let masters = members.iter().filter(|m| m.master).count();
                let replicas: Vec<&Member> = members.iter().filter(|m| m.of.is_some()).collect();
                // A replica that has not synced could not take over (nor would it have data).
                for replica in &replicas {
                    let info: String = self.query(replica.port, &["INFO", "replication"]).await?;
                    if !info.contains("master_link_status:up") {
                        return Ok(None);
                    }
                }
                Ok((masters == 3 && replicas.len() == 3).then_some(()))
            },
        )
        .await
    }

    /// The members as the first node that answers sees them (those flagged `fail` left out).
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let text: String = self.ask_any(&["CLUSTER", "NODES"]).await?;
        let live = text.lines().filter(|l| !l.contains("fail"));
        Ok(live.filter_map(parse_member).collect())
    }

    /// One command on the first node that answers.
    async fn ask_any<T: redis::FromRedisValue>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut last = None;
        for port in &self.ports {
            match self.query(*port, args).await {
                Ok(reply) => return Ok(reply),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node")))
    }

    /// The port of the master that serves `key`'s slot, as every node agrees.
    pub async fn master_of(&self, key: &str) -> anyhow::Result<Member> {
        let slot: u16 = self.ask_any(&["CLUSTER", "KEYSLOT", key]).await?;
        let members = self.members().await?;
        members
            .into_iter()
            .find(|m| m.master && m.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .with_context(|| format!("no master serves slot {slot}"))
    }

    /// A manual failover of the master that serves `key`: its replica takes over (after
    /// catching up, so nothing acknowledged is lost) and the old master becomes its replica.
    /// Returns the new master's port once it says it is the master.
    pub async fn fail_over(&self, key: &str) -> anyhow::Result<u16> {
        let master = self.master_of(key).await?;
        let members = self.members().await?;
        let replica = members
            .iter()
            .find(|m| m.of.as_deref() == Some(master.id.as_str()))
            .with_context(|| format!("master {} has no replica", master.port))?;
        let _: String = self.query(replica.port, &["CLUSTER", "FAILOVER"]).await?;
        let port = replica.port;
        wait_for(
            "the replica to become master",
            Duration::from_secs(30),
            || async {
                let role: Vec<redis::Value> = self.query(port, &["ROLE"]).await?;
                let is_master =
                    matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master");
                Ok(is_master.then_some(()))
            },
        )
        .await?;
        Ok(port)
    }
}

impl RedisCluster {
    /// SIGKILLs the master that serves `key`, then waits until its replica has taken over
    /// (after `cluster-node-timeout`, 2 s here, and an election). Returns the new master's port.
    pub async fn kill_master_of(&mut self, key: &str) -> anyhow::Result<u16> {
        let master = self.master_of(key).await?;
        let i = self
            .ports
            .iter()
            .position(|p| *p == master.port)
            .context("the master is not one of ours")?;
        self.nodes[i].kill();
        wait_for(
            "a replica to take over",
            Duration::from_secs(60),
            || async {
                let now = self.master_of(key).await?;
                Ok((now.port != master.port).then_some(now.port))
            },
        )
        .await
    }
}

fn start_node(dir: &Path, port: u16) -> anyhow::Result<ChildGuard> {
    std::fs::create_dir_all(dir)?;
    ChildGuard::spawn(
        format!("redis-cluster-{port}"),
        Command::new(redis_server_bin()?)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
            // Replicas sync at once (not after the default 5 s of waiting for others).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--cluster-config-file")
            .arg(dir.join("nodes.conf"))
            .arg("--dir")
            .arg(dir),
        &dir.join("redis.log"),
    )
}

/// `<id> <ip:port@bus> <flags> <master|-> <ping> <pong> <epoch> <link> <slot>...`
fn parse_member(line: &str) -> Option<Member> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let port = fields
        .get(1)?
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    Some(Member {
        id: (*fields.first()?).to_owned(),
        port,
        master: flags.contains("master"),
        of: Some(*fields.get(3)?)
            .filter(|m| *m != "-")
            .map(str::to_owned),
        slots,
    })
}
