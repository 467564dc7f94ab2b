//! `harmonia-worker run`: register, claim and execute until SIGTERM, then drain gracefully.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::config::resolve_tuning;
use harmonia_shared::health;
use harmonia_shared::model::WorkerState;
use harmonia_shared::queue::{TaskStream, WORKERS_GROUP};
use harmonia_shared::store::migrate::migrate;
use serde::{Deserialize, Serialize};

use crate::devices::Devices;
use crate::executor::Env;
use crate::models::{Hub, Models, Pool};
use crate::outcomes::Outcomes;
use crate::worker::{Options, Shutdown, Worker};
use crate::{claim, lease, registry};
use harmonia_shared::storage::Storage;

/// Tuning of the worker process. Each setting can also be given in the config file's
/// `[worker]` section (same name, `_` for `-`); a flag or its variable wins over the file.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct RunArgs {
    /// Name used in the worker id (default: the host name).
    #[arg(long, env = "HARMONIA_WORKER_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GPUs to advertise instead of detecting them: `index:name:memory_mb,...`, or `none`.
    #[arg(long, env = "HARMONIA_GPUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<String>,
    /// The `nvidia-smi` program GPUs are detected with (without `--gpus`); it is asked again
    /// every heartbeat for their free memory [default: nvidia-smi].
    #[arg(long, env = "HARMONIA_NVIDIA_SMI")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nvidia_smi: Option<String>,
    /// CPU tasks run at once (default: the number of CPUs).
    #[arg(long, env = "HARMONIA_CPU_SLOTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_slots: Option<u32>,
    /// Lease of a claimed task, in ms: renewed every heartbeat; if it lapses the task is retried
    /// elsewhere [default: 30000].
    #[arg(long, env = "HARMONIA_LEASE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Heartbeat interval, in ms (default: a third of the lease).
    #[arg(long, env = "HARMONIA_HEARTBEAT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// After SIGTERM, how long in-flight tasks may finish before they are handed back, in s
    /// [default: 30].
    #[arg(long, env = "HARMONIA_GRACE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_s: Option<u64>,
    /// Memory the warm model pool may hold on the host, in MiB (least recently used models are
    /// evicted beyond it) [default: 4096].
    #[arg(long, env = "HARMONIA_MODEL_POOL_RAM_MB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_pool_ram_mb: Option<u64>,
    /// GPU memory the warm model pool may hold per GPU, in MiB, capped at each GPU's own
    /// memory [default: 16384].
    #[arg(long, env = "HARMONIA_MODEL_POOL_VRAM_MB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_pool_vram_mb: Option<u64>,
    /// First retry delay after a retryable failure, in ms; doubles per attempt [default: 1000].
    #[arg(long, env = "HARMONIA_RETRY_BASE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_base_ms: Option<u64>,
    /// Serve Prometheus metrics at `http://<this address>/metrics` (e.g. `0.0.0.0:9100`);
    /// none when absent.
    #[arg(long, env = "HARMONIA_WORKER_METRICS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Outcomes recorded in one MongoDB write at most (a group commit) [default: 256].
    #[arg(long, env = "HARMONIA_OUTCOME_BATCH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_batch: Option<u32>,
    /// How long an outcome waits for others to share its write, in ms; 0 writes as soon as a
    /// write slot is free, which already batches under load [default: 0].
    #[arg(long, env = "HARMONIA_OUTCOME_LINGER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_linger_ms: Option<u64>,
    /// Read the task entries of models this worker holds first, and leave a fresh entry for a
    /// model it lacks to a free worker that holds it for `--affinity-wait-ms` [default: true].
    #[arg(long, env = "HARMONIA_MODEL_AFFINITY", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_affinity: Option<bool>,
    /// The head start, in ms, a free worker holding a task's model gets on a fresh entry
    /// before this one claims it [default: 50].
    #[arg(long, env = "HARMONIA_AFFINITY_WAIT_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_wait_ms: Option<u64>,
    /// No task is passed over for a held model's task that came more than this many ms after
    /// it: a worker whose hint entries are that much newer than the oldest entry of its class
    /// streams reads those alone, in arrival order, until it is taken [default: 10000].
    #[arg(long, env = "HARMONIA_AFFINITY_PATIENCE_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_patience_ms: Option<u64>,
    /// A CPU task read fresh (no model named) starts before its claim is written to MongoDB:
    /// the outcome writes both in one write. The claim is written first once the attempt has
    /// run this many ms, or before it stores anything. 0 writes every claim before its attempt
    /// starts [default: 1000].
    #[arg(long, env = "HARMONIA_CLAIM_AFTER_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_after_ms: Option<u64>,
}

/// [`RunArgs`] resolved: defaults < `[worker]` in the file < flags and env.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    pub name: Option<String>,
    pub gpus: Option<String>,
    pub nvidia_smi: String,
    pub cpu_slots: Option<u32>,
    pub lease_ms: u64,
    pub heartbeat_ms: Option<u64>,
    pub grace_s: u64,
    pub model_pool_ram_mb: u64,
    pub model_pool_vram_mb: u64,
    pub retry_base_ms: u64,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub outcome_batch: u32,
    pub outcome_linger_ms: u64,
    pub model_affinity: bool,
    pub affinity_wait_ms: u64,
    pub affinity_patience_ms: u64,
    pub claim_after_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            name: None,
            gpus: None,
            nvidia_smi: harmonia_shared::nvidia_smi::PROGRAM.to_owned(),
            cpu_slots: None,
            lease_ms: 30_000,
            heartbeat_ms: None,
            grace_s: 30,
            model_pool_ram_mb: 4096,
            model_pool_vram_mb: 16384,
            retry_base_ms: 1000,
            metrics_listen: None,
            outcome_batch: 256,
            outcome_linger_ms: 0,
            model_affinity: true,
            affinity_wait_ms: 50,
            affinity_patience_ms: 10_000,
            claim_after_ms: 1000,
        }
    }
}

/// The loops' settings from the resolved tuning.
fn options(args: &Tuning) -> Options {
    Options {
        lease: Duration::from_millis(args.lease_ms),
        heartbeat: Duration::from_millis(args.heartbeat_ms.unwrap_or(args.lease_ms / 3).max(10)),
        grace: Duration::from_secs(args.grace_s),
        retry_base: Duration::from_millis(args.retry_base_ms),
        reclaim_after: Duration::from_millis(args.lease_ms.max(2000)),
        affinity: crate::affinity::Settings {
            on: args.model_affinity,
            wait: Duration::from_millis(args.affinity_wait_ms),
            patience: Duration::from_millis(args.affinity_patience_ms),
        },
        claim_after: Duration::from_millis(args.claim_after_ms),
    }
}

pub async fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let args: Tuning = resolve_tuning("worker", &config.worker, args)?;
    let (source, found) = discover_gpus(&args).await?;
    let gpus = found.gpus.clone();
    let cpu_slots = args.cpu_slots.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    });
    if let Some(listen) = args.metrics_listen {
        crate::metrics::serve(listen)?;
    }
    let Some((queue, store)) = health::connect_waiting(config).await? else {
        return Ok(ExitCode::SUCCESS); // SIGTERM while waiting
    };
    migrate(&store).await?;
    let id = registry::worker_id(args.name.as_deref());
    let storage = Storage::new(&config.s3);
    // Outputs need the bucket; where this worker may not create one, it must already exist.
    if let Err(e) = storage.ensure_bucket().await {
        tracing::warn!("checking the bucket: {e:#}");
    }
    let hub = Hub::new(&config.models)?;
    let pool = Pool::new(
        args.model_pool_ram_mb << 20,
        args.model_pool_vram_mb << 20,
        &gpus,
    );
    let env = Arc::new(Env {
        worker_id: id.clone(),
        store: store.clone(),
        storage: storage.clone(),
        models: Models::new(hub, pool, storage),
    });
    let shutdown = Shutdown::default();
    let limits = crate::outcomes::Limits {
        batch: args.outcome_batch.max(1) as usize,
        linger: Duration::from_millis(args.outcome_linger_ms),
    };
    let outcomes = Outcomes::start(store.clone(), queue.clone(), limits, shutdown.drain.clone());
    let worker = Arc::new(Worker {
        id,
        queue,
        store,
        devices: Devices::new(gpus.clone(), cpu_slots),
        env,
        options: options(&args),
        inflight: Mutex::new(HashMap::new()),
        outcomes,
        shutdown,
        started_runs: Mutex::new(std::collections::VecDeque::new()),
    });

    // Registered once everything it claims with is ready: a live worker is one that claims.
    worker
        .store
        .workers()
        .register(&registry::document(&worker.id, gpus.clone(), cpu_slots))
        .await?;
    tracing::info!(worker = %worker.id, ?gpus, cpu_slots, "worker registered");
    let heartbeat = tokio::spawn(lease::heartbeat(worker.clone()));
    let listener = tokio::spawn(lease::cancel_listener(worker.clone()));
    let claims = tokio::spawn(claim::run(worker.clone()));
    let refresh = registry::keep_gpus_fresh(&worker, source, gpus, found);

    harmonia_shared::signal::terminated().await?;
    drain(&worker, claims).await;
    worker.shutdown.stop.cancel();
    let _ = tokio::join!(heartbeat, listener);
    if let Some(refresh) = refresh {
        let _ = refresh.await;
    }
    leave(&worker).await;
    Ok(ExitCode::SUCCESS)
}

/// The GPUs to offer, logged with what discovery said about them (one line each).
async fn discover_gpus(
    args: &Tuning,
) -> anyhow::Result<(registry::GpuSource, harmonia_shared::nvidia_smi::Discovery)> {
    let (source, found) = registry::gpus(args.gpus.as_deref(), &args.nvidia_smi).await?;
    tracing::info!("GPUs: {}", found.status);
    for note in &found.notes {
        tracing::warn!("GPUs: {note}");
    }
    Ok((source, found))
}

/// Stops claiming, lets in-flight attempts finish within the grace period, hands back the rest.
/// "In flight" is every device allocation held, so a claim still being written counts too, and
/// every outcome not yet written. The claim loop is waited for first: a read it had in flight
/// returns after the drain began, and only once the loop is done is "nothing held" final.
async fn drain(worker: &Worker, claims: tokio::task::JoinHandle<()>) {
    worker.shutdown.drain.cancel();
    tracing::info!(held = worker.devices.held(), grace = ?worker.options.grace, "SIGTERM: draining");
    // Both within the grace period: a claim loop waiting on a Redis that does not answer (each
    // call times out, but they add up) does not hold the drain up; nothing it reads from now on
    // is started.
    let finished = async {
        let _ = claims.await;
        all_released(worker).await;
    };
    if tokio::time::timeout(worker.options.grace, finished)
        .await
        .is_err()
    {
        tracing::warn!(
            held = worker.devices.held(),
            "grace period over: handing tasks back"
        );
        // Executors are cooperative: they stop, and their fenced hand-back writes land. An
        // attempt a claim in progress registers from now on starts cancelled.
        worker.shutdown.hand_back.cancel();
        all_released(worker).await;
    }
}

async fn all_released(worker: &Worker) {
    while worker.devices.held() > 0 {
        tokio::select! {
            () = worker.devices.released.notified() => {}
            // `notify_waiters` reaches only waiters already registered: look again soon.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    // An attempt gives its devices back once it has handed its outcome to the writer; the
    // worker is done when every such outcome is durable too.
    worker.outcomes.settled().await;
}

/// Removes this worker's consumer from every task stream, and the hint streams of the models it
/// holds, where it holds nothing, and marks it stopped.
async fn leave(worker: &Worker) {
    let classes = worker.queue.classes().await.unwrap_or_default();
    let mut affinity = crate::affinity::Affinity::new(worker.options.affinity);
    affinity.refresh(worker).await;
    let hints = affinity.hint_streams(worker, &classes);
    let streams: Vec<String> = (classes.iter().map(|c| TaskStream::class(*c)))
        .chain(hints)
        .map(|s| s.key(worker.queue.keys()))
        .collect();
    for stream in streams {
        let left = worker.queue.leave_group(&stream, WORKERS_GROUP, &worker.id);
        if let Err(e) = left.await {
            tracing::debug!(%stream, "removing consumer: {e:#}");
        }
    }
    if let Err(e) = worker
        .store
        .workers()
        .heartbeat(&worker.id, WorkerState::Stopped, 0)
        .await
    {
        tracing::warn!("marking worker stopped: {e:#}");
    }
    tracing::info!("worker stopped");
}
