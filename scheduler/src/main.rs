use std::process::ExitCode;

use clap::Parser;
use harmonia_scheduler::cli::{self, Args};

fn main() -> ExitCode {
    // Before the runtime's threads exist, so that none has an arena of its own yet.
    one_malloc_arena();
    let args = Args::parse();
    let log = args.log.clone();
    harmonia_shared::telemetry::run_main(&log, cli::run(args))
}

/// glibc's malloc gives threads that allocate at the same time arenas of their own (up to 8
/// per core), and what one arena frees only that arena reuses. The scheduler reads a big
/// submission on one runtime thread and builds and inserts its tasks on others, so each arena
/// keeps its own high-water mark: one arena took a 100,000-task DAG's peak RSS from 103 to
/// 89 MB at the same speed (docs/benchmarks.md). A `MALLOC_ARENA_MAX` in the environment is
/// left to decide.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets an allocator parameter, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
