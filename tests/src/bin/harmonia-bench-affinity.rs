//! Benchmark of model affinity: a fleet of workers, each with its own model cache and a warm
//! pool that holds one model, runs a mixed workload of embedding tasks over several models
//! (the real MiniLM, served by the Hub mirror under one repository name per model), once with
//! `--model-affinity false` (placement by whoever reads first) and once with it on, each on
//! servers of its own. Prints the bytes the mirror sent, the models fetched and the cold loads
//! (embed tasks whose model was not in the pool), and the run's time, with on / off ratios.
//! Asserts nothing. Run it through `scripts/bench-affinity`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use harmonia_shared::model::RunStatus;
use harmonia_tests::cluster::{Cluster, cluster_in};
use harmonia_tests::models::{self, MINILM, RunningMirror};
use harmonia_tests::{Scope, submission};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Harmonia model-affinity benchmark")]
struct Args {
    /// Worker processes, each with its own model cache.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Embedding tasks in the run.
    #[arg(long, default_value_t = 400)]
    tasks: usize,
    /// Models (copies of MiniLM under their own repository names).
    #[arg(long, default_value_t = 4)]
    models: usize,
    /// CPU slots per worker.
    #[arg(long, default_value_t = 1)]
    cpu_slots: u32,
    /// Each worker's warm pool, in MiB (MiniLM takes ~87 MiB loaded: one model).
    #[arg(long, default_value_t = 128)]
    pool_mb: u64,
    /// Sentences per task.
    #[arg(long, default_value_t = 8)]
    sentences: usize,
    /// The workers' `--affinity-patience-ms` (default: theirs, 30 s).
    #[arg(long)]
    patience_ms: Option<u64>,
}

/// What one placement mode cost.
#[derive(Debug)]
struct Figures {
    seconds: f64,
    bytes: u64,
    /// Model snapshots in the fleet's caches at the end: how many times a model was fetched.
    fetches: usize,
    cold_loads: usize,
    /// When each model first ran on a worker other than the first to run it, seconds into
    /// the run, sorted: when the fetches beyond one per model happened.
    later_fetches_s: Vec<f64>,
}

/// `<root>/bench/minilm-<i>`: the real MiniLM's files, hard-linked under one name per model,
/// each with a model card of its own (the warm pool keys models by their files' hashes: with
/// identical files, the pool would take the four for one).
fn model_repos(root: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let source = models::hub_root()?.join(MINILM);
    let card = std::fs::read_to_string(source.join("README.md"))?;
    (0..n)
        .map(|i| {
            let repo = format!("bench/minilm-{i}");
            let dir = root.join(&repo);
            link_tree(&source, &dir)?;
            std::fs::remove_file(dir.join("README.md"))?;
            std::fs::write(dir.join("README.md"), format!("{card}\n<!-- {repo} -->\n"))?;
            Ok(repo)
        })
        .collect()
}

/// How many of the models' snapshots the fleet's caches hold (`cache-<i>` under `dir`).
fn snapshots(dir: &Path, workers: usize, repos: &[String]) -> usize {
    (0..workers)
        .flat_map(|i| repos.iter().map(move |r| (i, r)))
        .filter(|(i, r)| {
            let repo_dir = dir
                .join(format!("cache-{i}"))
                .join(format!("models--{}", r.replace('/', "--")))
                .join("snapshots");
            std::fs::read_dir(repo_dir).is_ok_and(|mut d| d.next().is_some())
        })
        .count()
}

fn link_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            link_tree(&entry.path(), &target)?;
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn worker_args(cache: &Path, args: &Args, affinity: bool) -> Vec<String> {
    let mut a = [
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        &args.cpu_slots.to_string(),
        "--model-cache-dir",
        &cache.to_string_lossy(),
        "--model-pool-ram-mb",
        &args.pool_mb.to_string(),
        "--model-affinity",
        if affinity { "true" } else { "false" },
        "--log",
        "warn",
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(ms) = args.patience_ms {
        a.extend(["--affinity-patience-ms".to_owned(), ms.to_string()]);
    }
    a
}

/// Registers the models' artifacts with a worker of its own (then stopped, its cache unused
/// by the fleet); returns their ids.
async fn register(c: &mut Cluster, repos: &[String]) -> anyhow::Result<Vec<String>> {
    let tasks: Vec<Value> = repos
        .iter()
        .enumerate()
        .map(|(i, r)| json!({ "id": format!("get{i}"), "type": "model.download", "params": { "repo": r } }))
        .collect();
    let run_id = c
        .client
        .start(&submission("affinity-register", json!(tasks)))
        .await?;
    let run = c.client.finished(run_id, Duration::from_secs(600)).await?;
    anyhow::ensure!(
        run.status == RunStatus::Succeeded,
        "registering the models: {run:?}"
    );
    let mut ids = Vec::new();
    for i in 0..repos.len() {
        let task = c.client.task(run_id, &format!("get{i}")).await?;
        ids.push(
            models::outputs(&task)
                .get_object_id("model_artifact_id")?
                .to_hex(),
        );
    }
    let mut setup = c.workers.remove(0);
    setup.terminate();
    setup.exits_within(Duration::from_secs(60)).await?;
    Ok(ids)
}

/// The run: `tasks` embeddings, each on a model drawn from a fixed pseudo-random sequence.
fn workload(args: &Args, artifacts: &[String]) -> anyhow::Result<Value> {
    let sentences: Vec<String> = std::fs::read_to_string(
        harmonia_tests::servers::workspace_root().join("examples/sentences.jsonl"),
    )?
    .lines()
    .filter_map(|l| {
        serde_json::from_str::<Value>(l).ok()?["text"]
            .as_str()
            .map(str::to_owned)
    })
    .collect();
    anyhow::ensure!(
        !sentences.is_empty(),
        "no sentences in examples/sentences.jsonl"
    );
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let tasks: Vec<Value> = (0..args.tasks)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let model = &artifacts[(state % artifacts.len() as u64) as usize];
            let texts: Vec<&String> = (0..args.sentences)
                .map(|k| &sentences[(i * args.sentences + k) % sentences.len()])
                .collect();
            json!({ "id": format!("e{i:04}"), "type": "inference.embed",
                    "params": { "model_artifact_id": model, "texts": texts } })
        })
        .collect();
    Ok(json!(tasks))
}

async fn mode(args: &Args, affinity: bool) -> anyhow::Result<Figures> {
    let name = if affinity {
        "affinity-on"
    } else {
        "affinity-off"
    };
    let mut scope = Scope::new(name);
    let repos = model_repos(&scope.dir.join("hub"), args.models)?;
    let mirror: RunningMirror = models::serve_mirror(&scope.dir.join("hub")).await?;
    scope.config.models.hub_endpoint = mirror.url.clone();
    let dir = scope.dir.clone();
    let max_bytes = (64u64 << 20).to_string();
    let scheduler = ["run", "--max-submission-bytes", &max_bytes, "--log", "warn"];
    let setup = worker_args(&dir.join("cache-setup"), args, affinity);
    let setup: Vec<&str> = setup.iter().map(String::as_str).collect();
    let mut c = cluster_in(scope, &scheduler, &[setup]).await?;
    let artifacts = register(&mut c, &repos).await?;
    for i in 0..args.workers {
        let a = worker_args(&dir.join(format!("cache-{i}")), args, affinity);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        c.workers.push(
            c.scope
                .spawn(&format!("worker-{i}"), "harmonia-worker", &a)?,
        );
    }
    let live = || async {
        let n = c
            .client
            .store
            .workers()
            .live(Duration::from_secs(5))
            .await?
            .len();
        Ok((n >= args.workers).then_some(()))
    };
    harmonia_tests::wait_for("the workers register", Duration::from_secs(60), live).await?;
    let sent_before = mirror.mirror.bytes_served.load(Ordering::Relaxed);
    let started = Instant::now();
    let run_id = c
        .client
        .start(&submission(name, workload(args, &artifacts)?))
        .await?;
    let run = c.client.finished(run_id, Duration::from_secs(3600)).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        run.status == RunStatus::Succeeded,
        "{name}: {:?}",
        run.status
    );
    let tasks = c.client.tasks(run_id).await?;
    let mut cold_loads = 0;
    for task in &tasks {
        let out = models::outputs(task);
        cold_loads += usize::from(!out.get_bool("pool_hit").context("pool_hit")?);
    }
    let run_started = run.started_at.map_or(0, |t| t.timestamp_millis());
    Ok(Figures {
        seconds,
        bytes: mirror.mirror.bytes_served.load(Ordering::Relaxed) - sent_before,
        fetches: snapshots(&dir, args.workers, &repos),
        cold_loads,
        later_fetches_s: later_fetches(&tasks, run_started)?,
    })
}

/// See [`Figures::later_fetches_s`].
fn later_fetches(
    tasks: &[harmonia_shared::model::RunTask],
    run_started_ms: i64,
) -> anyhow::Result<Vec<f64>> {
    // (model, worker) -> first start.
    let mut first: std::collections::HashMap<(String, String), i64> = Default::default();
    for task in tasks {
        let model = models::outputs(task)
            .get_object_id("model_artifact_id")?
            .to_hex();
        let worker = task.worker_id.clone().unwrap_or_default();
        let at = task.started_at.map_or(i64::MAX, |t| t.timestamp_millis());
        let slot = first.entry((model, worker)).or_insert(at);
        *slot = (*slot).min(at);
    }
    let mut by_model: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for ((model, _), at) in first {
        by_model.entry(model).or_default().push(at);
    }
    let mut later: Vec<f64> = by_model
        .into_values()
        .flat_map(|mut starts| {
            starts.sort_unstable();
            starts.into_iter().skip(1)
        })
        .map(|at| (at - run_started_ms).max(0) as f64 / 1e3)
        .collect();
    later.sort_by(f64::total_cmp);
    Ok(later)
}

fn print(label: &str, tasks: usize, f: &Figures) {
    println!(
        "  {label:<13} {:>7.1} s ({:>5.1} tasks/s)  {:>8.1} MB from the mirror  {:>3} model fetches  {:>4} cold loads",
        f.seconds,
        tasks as f64 / f.seconds,
        f.bytes as f64 / 1e6,
        f.fetches,
        f.cold_loads
    );
    let at: Vec<String> = f
        .later_fetches_s
        .iter()
        .map(|s| format!("{s:.1}"))
        .collect();
    println!(
        "  {:<13} fetches beyond one per model began at (s into the run): {}",
        "",
        at.join(", ")
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "harmonia-bench-affinity on {} CPUs: {} workers x {} slot(s), own caches, pools of {} MiB; \
         {} embed tasks ({} sentences each) over {} models",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.workers,
        args.cpu_slots,
        args.pool_mb,
        args.tasks,
        args.sentences,
        args.models
    );
    let off = mode(&args, false).await?;
    print("affinity off", args.tasks, &off);
    let on = mode(&args, true).await?;
    print("affinity on", args.tasks, &on);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "  on / off: bytes {:.2}, model fetches {:.2}, cold loads {:.3}, time {:.2} \
         (fetches are at least one per model: {} of {} with random placement at most)",
        ratio(on.bytes as f64, off.bytes as f64),
        ratio(on.fetches as f64, off.fetches as f64),
        ratio(on.cold_loads as f64, off.cold_loads as f64),
        ratio(on.seconds, off.seconds),
        args.models,
        args.models * args.workers
    );
    Ok(())
}
