//! The warm model pool: loaded models kept across tasks, keyed by the verified artifact and the
//! device, evicted least-recently-used under a memory budget per device.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use harmonia_shared::resources::Gpu;
use tokio::sync::OnceCell;

type Loaded = Arc<dyn Any + Send + Sync>;

#[derive(Debug)]
struct Slot {
    cell: Arc<OnceCell<Loaded>>,
    device: String,
    bytes: u64,
    last_used: u64,
}

/// Budgets in bytes: `cpu` for host memory, `cuda:N` for GPU N.
#[derive(Debug)]
pub struct Pool {
    slots: Mutex<HashMap<String, Slot>>,
    budgets: HashMap<String, u64>,
    tick: std::sync::atomic::AtomicU64,
}

/// A model from the pool, and whether it was already loaded.
#[derive(Debug)]
pub struct Checkout<T> {
    pub model: Arc<T>,
    pub hit: bool,
}

impl Pool {
    /// `ram_bytes` bounds models on the CPU; on each of `gpus`, `vram_bytes` or the GPU's own
    /// memory, whichever is less. A device not listed keeps only the model last loaded on it.
    pub fn new(ram_bytes: u64, vram_bytes: u64, gpus: &[Gpu]) -> Self {
        let mut budgets = HashMap::from([("cpu".to_owned(), ram_bytes)]);
        for gpu in gpus {
            let budget = vram_bytes.min(gpu.memory_mb << 20);
            budgets.insert(format!("cuda:{}", gpu.index), budget);
        }
        Self {
            slots: Mutex::new(HashMap::new()),
            budgets,
            tick: Default::default(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The model under `key` on `device`, loading it with `load` (which returns the model and
    /// its size in bytes) if it is not in the pool. Concurrent callers for one key share one
    /// load.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        device: &str,
        load: F,
    ) -> Result<Checkout<T>, E>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(T, u64), E>>,
    {
        let full_key = format!("{device}/{key}");
        let cell = {
            let mut slots = self.slots();
            let tick = self.next_tick();
            let slot = slots.entry(full_key.clone()).or_insert_with(|| Slot {
                cell: Arc::new(OnceCell::new()),
                device: device.to_owned(),
                bytes: 0,
                last_used: tick,
            });
            slot.last_used = tick;
            slot.cell.clone()
        };
        let mut loaded_now = None;
        let model = cell
            .get_or_try_init(|| async {
                let (model, bytes) = load().await?;
                loaded_now = Some(bytes);
                Ok::<Loaded, E>(Arc::new(model))
            })
            .await?
            .clone();
        if let Some(bytes) = loaded_now {
            let mut slots = self.slots();
            if let Some(slot) = slots.get_mut(&full_key) {
                slot.bytes = bytes;
            }
            self.evict(&mut slots, device, &full_key);
        }
        let model = model
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("pool key {full_key} holds another model type"));
        crate::metrics::pool_lookup(loaded_now.is_none());
        Ok(Checkout {
            model,
            hit: loaded_now.is_none(),
        })
    }

    fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops least-recently-used models on `device` until it fits its budget (never `keep`,
    /// the one just loaded). A model still used by a running task is freed when it finishes.
    fn evict(&self, slots: &mut HashMap<String, Slot>, device: &str, keep: &str) {
        let budget = self.budgets.get(device).copied().unwrap_or(0);
        loop {
            let used: u64 = slots
                .values()
                .filter(|s| s.device == device)
                .map(|s| s.bytes)
                .sum();
            if used <= budget {
                return;
            }
            let victim = slots
                .iter()
                .filter(|(k, s)| s.device == device && k.as_str() != keep && s.cell.initialized())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    tracing::info!(model = %k, "evicting model from the warm pool");
                    slots.remove(&k);
                }
                None => return,
            }
        }
    }

    /// Keys of the loaded models (`device/key`), for the worker's advertisement.
    pub fn loaded(&self) -> Vec<String> {
        let mut keys: Vec<_> = self
            .slots()
            .iter()
            .filter(|(_, s)| s.cell.initialized())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn load(pool: &Pool, key: &str, bytes: u64) -> bool {
        load_on(pool, "cpu", key, bytes).await
    }

    async fn load_on(pool: &Pool, device: &str, key: &str, bytes: u64) -> bool {
        pool.get_or_load(key, device, || async {
            Ok::<_, ()>((key.to_owned(), bytes))
        })
        .await
        .expect("load")
        .hit
    }

    #[tokio::test]
    async fn hits_and_lru_eviction() {
        let pool = Pool::new(100, 0, &[]);
        assert!(!load(&pool, "a", 60).await);
        assert!(load(&pool, "a", 60).await, "second use is a hit");
        assert!(!load(&pool, "b", 30).await);
        assert!(load(&pool, "a", 60).await); // a is now the most recent
        assert!(!load(&pool, "c", 30).await); // 120 > 100: evicts b, the least recent
        assert_eq!(pool.loaded(), vec!["cpu/a", "cpu/c"]);
        assert!(!load(&pool, "b", 30).await, "b was evicted");
    }

    #[tokio::test]
    async fn a_failed_load_is_retried() {
        let pool = Pool::new(100, 0, &[]);
        let err = pool
            .get_or_load::<String, _, _, _>("x", "cpu", || async { Err("boom") })
            .await
            .expect_err("fails");
        assert_eq!(err, "boom");
        assert!(!load(&pool, "x", 1).await);
    }

    #[tokio::test]
    async fn each_gpu_has_its_own_budget_capped_at_its_memory() {
        const MIB: u64 = 1 << 20;
        let gpu = |index, memory_mb| Gpu {
            index,
            name: "test".into(),
            memory_mb,
            uuid: None,
            memory_free_mb: None,
        };
        // 3 MiB per GPU, but GPU 1 has only 2 MiB.
        let pool = Pool::new(100 * MIB, 3 * MIB, &[gpu(0, 80), gpu(1, 2)]);
        for key in ["a", "b", "c"] {
            assert!(!load_on(&pool, "cuda:0", key, MIB).await);
            assert!(!load_on(&pool, "cuda:1", key, MIB).await);
        }
        // GPU 0 holds all three (3 MiB); GPU 1 evicted its least recent (`a`) at 3 > 2 MiB.
        assert_eq!(
            pool.loaded(),
            ["cuda:0/a", "cuda:0/b", "cuda:0/c", "cuda:1/b", "cuda:1/c"]
        );
        // A fourth model on GPU 0 evicts only from GPU 0.
        assert!(!load_on(&pool, "cuda:0", "d", MIB).await);
        assert!(load_on(&pool, "cuda:1", "b", MIB).await, "GPU 1 untouched");
        assert!(!load_on(&pool, "cuda:0", "a", MIB).await, "GPU 0 evicted a");
        // A GPU the worker does not offer keeps only the model last loaded on it.
        assert!(!load_on(&pool, "cuda:7", "x", MIB).await);
        assert!(!load_on(&pool, "cuda:7", "y", MIB).await);
        assert!(
            !load_on(&pool, "cuda:7", "x", MIB).await,
            "x was evicted by y"
        );
    }
}
