//! The worker's free devices: GPUs are assigned to one attempt at a time, CPU tasks take slots.

use std::sync::Mutex;

use harmonia_shared::resources::{Gpu, ResourceClass};
use tokio::sync::Notify;

/// Devices held by one attempt, given back when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alloc {
    CpuSlot,
    Gpus(Vec<Gpu>),
}

impl Alloc {
    pub fn gpu_indices(&self) -> Vec<u32> {
        match self {
            Self::CpuSlot => Vec::new(),
            Self::Gpus(g) => g.iter().map(|g| g.index).collect(),
        }
    }
}

#[derive(Debug)]
struct Free {
    gpus: Vec<Gpu>,
    cpu_slots: u32,
    /// Allocations not yet released: claims in progress plus attempts running.
    held: u32,
}

#[derive(Debug)]
pub struct Devices {
    free: Mutex<Free>,
    /// Signalled whenever something is released.
    pub released: Notify,
}

impl Devices {
    pub fn new(gpus: Vec<Gpu>, cpu_slots: u32) -> Self {
        Self {
            free: Mutex::new(Free {
                gpus,
                cpu_slots,
                held: 0,
            }),
            released: Notify::new(),
        }
    }

    /// Takes what `class` needs, if it is free now.
    pub fn try_take(&self, class: ResourceClass) -> Option<Alloc> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if class == ResourceClass::CPU {
            if free.cpu_slots == 0 {
                return None;
            }
            free.cpu_slots -= 1;
            free.held += 1;
            return Some(Alloc::CpuSlot);
        }
        let picked = class.pick(&free.gpus)?;
        let (taken, left): (Vec<Gpu>, Vec<Gpu>) =
            free.gpus.drain(..).partition(|g| picked.contains(&g.index));
        free.gpus = left;
        free.held += 1;
        Some(Alloc::Gpus(taken))
    }

    pub fn release(&self, alloc: Alloc) {
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            free.held = free.held.saturating_sub(1);
            match alloc {
                Alloc::CpuSlot => free.cpu_slots += 1,
                Alloc::Gpus(gpus) => free.gpus.extend(gpus),
            }
        }
        self.released.notify_waiters();
    }

    /// GPUs not allocated now.
    pub fn free_gpus(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gpus
            .len()
    }

    /// Allocations held: claims in progress and attempts running.
    pub fn held(&self) -> u32 {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).held
    }

    /// Classes from `known` that fit what is free now, and how many CPU slots are free.
    pub fn fitting(&self, known: &[ResourceClass]) -> (Vec<ResourceClass>, u32) {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let classes = known
            .iter()
            .copied()
            .filter(|c| {
                if *c == ResourceClass::CPU {
                    free.cpu_slots > 0
                } else {
                    c.pick(&free.gpus).is_some()
                }
            })
            .collect();
        (classes, free.cpu_slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_held_by_one_attempt_at_a_time() {
        let gpu = Gpu {
            index: 0,
            name: "A100".into(),
            memory_mb: 81920,
            uuid: None,
            memory_free_mb: None,
        };
        let devices = Devices::new(vec![gpu], 0);
        let class = ResourceClass {
            gpus: 1,
            gpu_memory_mb: 40000,
        };
        let first = devices.try_take(class).unwrap();
        assert_eq!(first.gpu_indices(), vec![0]);
        assert!(devices.try_take(class).is_none());
        assert!(devices.fitting(&[class]).0.is_empty());
        devices.release(first);
        assert_eq!(devices.fitting(&[class]).0, vec![class]);
        assert!(devices.try_take(ResourceClass::CPU).is_none());
    }
}
