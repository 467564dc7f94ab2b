//! GPU inventory, task resource classes, and the fit rule.
//!
//! Tasks are queued on one Redis stream per *resource class* (GPU count + GPU memory per GPU,
//! exactly as submitted). A worker reads only the streams whose class fits its currently free
//! devices, so it never claims a task it cannot start right away, and a task is always visible
//! to every worker that could run it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::Resources;

/// One GPU a worker advertises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// The CUDA ordinal.
    pub index: u32,
    pub name: String,
    /// Total memory, MiB: what tasks' `gpu_memory_mb` is matched against.
    pub memory_mb: u64,
    /// `GPU-…`, as `nvidia-smi` reports it (none for GPUs declared with `--gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Free memory, MiB, as of the worker's last look (refreshed on its heartbeat); none for
    /// GPUs declared with `--gpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_free_mb: Option<u64>,
}

/// The queue a task waits in, derived from its resource needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceClass {
    pub gpus: u32,
    pub gpu_memory_mb: u64,
}

impl From<Resources> for ResourceClass {
    fn from(r: Resources) -> Self {
        Self {
            gpus: r.gpus,
            // Memory only matters with GPUs; normalise so CPU tasks share one class.
            gpu_memory_mb: if r.gpus == 0 { 0 } else { r.gpu_memory_mb },
        }
    }
}

impl ResourceClass {
    pub const CPU: Self = Self {
        gpus: 0,
        gpu_memory_mb: 0,
    };

    /// The GPUs (by index) this class would get from `free`, smallest sufficient ones first so
    /// that big cards stay free for tasks that need them; `None` if it does not fit.
    pub fn pick(&self, free: &[Gpu]) -> Option<Vec<u32>> {
        if self.gpus == 0 {
            return Some(Vec::new());
        }
        let mut fitting: Vec<&Gpu> = free
            .iter()
            .filter(|g| g.memory_mb >= self.gpu_memory_mb)
            .collect();
        if fitting.len() < self.gpus as usize {
            return None;
        }
        fitting.sort_by_key(|g| (g.memory_mb, g.index));
        Some(
            fitting
                .iter()
                .take(self.gpus as usize)
                .map(|g| g.index)
                .collect(),
        )
    }

    /// Whether a worker with these devices (all free) could ever run this class.
    pub fn could_run_on(&self, gpus: &[Gpu]) -> bool {
        self.pick(gpus).is_some()
    }
}

impl fmt::Display for ResourceClass {
    /// The stream suffix: `cpu`, or `g<count>m<memory_mb>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gpus == 0 {
            f.write_str("cpu")
        } else {
            write!(f, "g{}m{}", self.gpus, self.gpu_memory_mb)
        }
    }
}

impl FromStr for ResourceClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "cpu" {
            return Ok(Self::CPU);
        }
        let bad = || format!("'{s}' is not a resource class (cpu or g<n>m<mb>)");
        let rest = s.strip_prefix('g').ok_or_else(bad)?;
        let (gpus, mem) = rest.split_once('m').ok_or_else(bad)?;
        Ok(Self {
            gpus: gpus.parse().map_err(|_| bad())?,
            gpu_memory_mb: mem.parse().map_err(|_| bad())?,
        })
    }
}

/// Parses `--gpus 0:A100:81920,1:A100:81920` (index:name:memory_mb, comma separated).
pub fn parse_gpu_list(s: &str) -> Result<Vec<Gpu>, String> {
    let mut gpus = Vec::new();
    for (i, item) in s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .enumerate()
    {
        let parts: Vec<&str> = item.split(':').collect();
        let [index, name, mem] = parts[..] else {
            return Err(format!(
                "gpus[{i}] = '{item}': expected index:name:memory_mb, e.g. 0:A100:81920"
            ));
        };
        let index = index
            .parse()
            .map_err(|_| format!("gpus[{i}] = '{item}': index '{index}' is not a number"))?;
        let memory_mb = mem
            .parse()
            .map_err(|_| format!("gpus[{i}] = '{item}': memory '{mem}' is not a number of MB"))?;
        if gpus.iter().any(|g: &Gpu| g.index == index) {
            return Err(format!("gpus[{i}] = '{item}': GPU {index} is listed twice"));
        }
        gpus.push(Gpu {
            index,
            name: name.to_owned(),
            memory_mb,
            uuid: None,
            memory_free_mb: None,
        });
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, memory_mb: u64) -> Gpu {
        Gpu {
            index,
            name: "test".into(),
            memory_mb,
            uuid: None,
            memory_free_mb: None,
        }
    }

    #[test]
    fn class_names_round_trip() {
        for class in [
            ResourceClass::CPU,
            ResourceClass {
                gpus: 2,
                gpu_memory_mb: 40000,
            },
        ] {
            assert_eq!(class.to_string().parse::<ResourceClass>(), Ok(class));
        }
        assert!("g1".parse::<ResourceClass>().is_err());
    }

    #[test]
    fn fit_prefers_the_smallest_sufficient_gpus() {
        let free = [gpu(0, 81920), gpu(1, 24576), gpu(2, 40960)];
        let need = |gpus, gpu_memory_mb| ResourceClass {
            gpus,
            gpu_memory_mb,
        };
        assert_eq!(need(1, 20000).pick(&free), Some(vec![1]));
        assert_eq!(need(1, 40000).pick(&free), Some(vec![2]));
        assert_eq!(need(2, 40000).pick(&free), Some(vec![2, 0]));
        assert_eq!(need(2, 50000).pick(&free), None);
        assert_eq!(need(4, 0).pick(&free), None);
        assert_eq!(ResourceClass::CPU.pick(&[]), Some(vec![]));
    }

    #[test]
    fn gpu_lists_parse_with_clear_errors() {
        let gpus = parse_gpu_list("0:A100:81920, 1:A100:81920").unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].memory_mb, 81920);
        assert!(parse_gpu_list("0:A100").unwrap_err().contains("gpus[0]"));
        assert!(parse_gpu_list("0:A:1,0:B:2").unwrap_err().contains("twice"));
    }
}
