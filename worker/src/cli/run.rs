//! `harmonia-worker run`: register, claim and execute until SIGTERM, then drain gracefully.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::model::WorkerState;
use harmonia_shared::queue::{Queue, WORKERS_GROUP};
use harmonia_shared::store::Store;
use harmonia_shared::store::migrate::migrate;

use crate::devices::Devices;
use crate::executor::Env;
use crate::models::{Hub, Models, Pool};
use crate::worker::{Options, Shutdown, Worker};
use crate::{claim, lease, registry};
use harmonia_shared::storage::Storage;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Name used in the worker id (default: the host name).
    #[arg(long, env = "HARMONIA_WORKER_NAME")]
    pub name: Option<String>,
    /// GPUs to advertise instead of detecting them: `index:name:memory_mb,...`, or `none`.
    #[arg(long, env = "HARMONIA_GPUS")]
    pub gpus: Option<String>,
    /// CPU tasks run at once (default: the number of CPUs).
    #[arg(long, env = "HARMONIA_CPU_SLOTS")]
    pub cpu_slots: Option<u32>,
    /// Lease of a claimed task, in ms: renewed every heartbeat; if it lapses the task is retried
    /// elsewhere.
    #[arg(long, env = "HARMONIA_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Heartbeat interval, in ms (default: a third of the lease).
    #[arg(long, env = "HARMONIA_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// After SIGTERM, how long in-flight tasks may finish before they are handed back, in s.
    #[arg(long, env = "HARMONIA_GRACE_S", default_value_t = 30)]
    pub grace_s: u64,
    /// Memory the warm model pool may hold on the host, in MiB (least recently used models are
    /// evicted beyond it).
    #[arg(long, env = "HARMONIA_MODEL_POOL_RAM_MB", default_value_t = 4096)]
    pub model_pool_ram_mb: u64,
    /// GPU memory the warm model pool may hold per GPU, in MiB.
    #[arg(long, env = "HARMONIA_MODEL_POOL_VRAM_MB", default_value_t = 16384)]
    pub model_pool_vram_mb: u64,
    /// First retry delay after a retryable failure, in ms; doubles per attempt.
    #[arg(long, env = "HARMONIA_RETRY_BASE_MS", default_value_t = 1000)]
    pub retry_base_ms: u64,
}

pub async fn run(config: &Config, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let gpus = registry::gpus(args.gpus.as_deref())?;
    let cpu_slots = args.cpu_slots.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    });
    let queue = Queue::connect(&config.redis).await?;
    let store = Store::connect(&config.mongo).await?;
    migrate(&store).await?;
    let id = registry::worker_id(args.name.as_deref());
    store
        .workers()
        .register(&registry::document(&id, gpus.clone(), cpu_slots))
        .await?;
    tracing::info!(worker = %id, ?gpus, cpu_slots, "worker registered");
    let storage = Storage::new(&config.s3);
    // Outputs need the bucket; where this worker may not create one, it must already exist.
    if let Err(e) = storage.ensure_bucket().await {
        tracing::warn!("checking the bucket: {e:#}");
    }
    let hub = Hub::new(&config.models)?;
    let pool = Pool::new(args.model_pool_ram_mb << 20, args.model_pool_vram_mb << 20);
    let env = Arc::new(Env {
        worker_id: id.clone(),
        store: store.clone(),
        storage: storage.clone(),
        models: Models::new(hub, pool, storage),
    });
    let worker = Arc::new(Worker {
        id,
        queue,
        store,
        devices: Devices::new(gpus, cpu_slots),
        env,
        options: Options {
            lease: Duration::from_millis(args.lease_ms),
            heartbeat: Duration::from_millis(
                args.heartbeat_ms.unwrap_or(args.lease_ms / 3).max(10),
            ),
            grace: Duration::from_secs(args.grace_s),
            retry_base: Duration::from_millis(args.retry_base_ms),
            reclaim_after: Duration::from_millis(args.lease_ms.max(2000)),
        },
        inflight: Mutex::new(HashMap::new()),
        shutdown: Shutdown::default(),
        started_runs: Mutex::new(std::collections::VecDeque::new()),
    });

    let heartbeat = tokio::spawn(lease::heartbeat(worker.clone()));
    let listener = tokio::spawn(lease::cancel_listener(worker.clone()));
    let claims = tokio::spawn(claim::run(worker.clone()));

    harmonia_shared::signal::terminated().await?;
    drain(&worker).await;
    let _ = claims.await;
    worker.shutdown.stop.cancel();
    let _ = tokio::join!(heartbeat, listener);
    leave(&worker).await;
    Ok(ExitCode::SUCCESS)
}

/// Stops claiming, lets in-flight attempts finish within the grace period, hands back the rest.
/// "In flight" is every device allocation held, so a claim still being written counts too.
async fn drain(worker: &Worker) {
    worker.shutdown.drain.cancel();
    tracing::info!(held = worker.devices.held(), grace = ?worker.options.grace, "SIGTERM: draining");
    if tokio::time::timeout(worker.options.grace, all_released(worker))
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
}

/// Removes this worker's consumer from every task stream where it holds nothing, and marks it
/// stopped.
async fn leave(worker: &Worker) {
    let classes = worker.queue.classes().await.unwrap_or_default();
    for class in classes {
        let stream = worker.queue.keys().task_stream(class);
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
