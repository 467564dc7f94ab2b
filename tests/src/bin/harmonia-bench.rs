//! End-to-end benchmark of the core loop: a real scheduler and worker processes (built next to
//! this binary; use `--release`) against Redis, mongod and S3 started by the harness. Prints
//! figures; asserts nothing. Run it through `scripts/bench`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use clap::Parser;
use futures::TryStreamExt;
use harmonia_shared::model::RunStatus;
use harmonia_tests::cluster::{Cluster, cluster_with};
use harmonia_tests::submission;
use mongodb::bson::{Document, doc};
use redis::AsyncCommands;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Harmonia core-loop benchmark")]
struct Args {
    /// No-op tasks in the throughput run.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// CPU slots (concurrent tasks) per worker.
    #[arg(long, default_value_t = 64)]
    cpu_slots: u32,
    /// Submission rate of the latency phase (one single-task run each), per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Duration of the latency phase, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_s: u64,
    /// Tasks of the big DAG (layers of 1,000, each task depending on two of the layer above).
    #[arg(long, default_value_t = 100_000)]
    dag_tasks: usize,
    /// Phases to run.
    #[arg(long, value_delimiter = ',', default_value = "throughput,latency,dag")]
    phases: Vec<String>,
}

async fn cluster(name: &str, args: &Args) -> anyhow::Result<Cluster> {
    let max_bytes = (64u64 << 20).to_string();
    let scheduler = ["run", "--max-submission-bytes", &max_bytes, "--log", "warn"];
    let slots = args.cpu_slots.to_string();
    let worker = vec![
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        &slots,
        "--log",
        "warn",
    ];
    cluster_with(name, &scheduler, &vec![worker; args.workers]).await
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// started_at - queued_at per task queued since `since`, sorted (ms).
async fn ready_to_started(c: &Cluster, since: mongodb::bson::DateTime) -> anyhow::Result<Vec<i64>> {
    let coll = c.client.store.db().collection::<Document>("run_tasks");
    let mut cursor = coll
        .find(doc! { "status": "succeeded", "queued_at": { "$gte": since } })
        .projection(doc! { "queued_at": 1, "started_at": 1 })
        .await?;
    let mut lat = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        if let (Ok(q), Ok(s)) = (d.get_datetime("queued_at"), d.get_datetime("started_at")) {
            lat.push(s.timestamp_millis() - q.timestamp_millis());
        }
    }
    lat.sort_unstable();
    Ok(lat)
}

fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let c = cluster("bench-throughput", args).await?;
    let tasks: Vec<_> = (0..args.tasks)
        .map(|i| json!({"id": format!("t{i}"), "type": "debug.noop"}))
        .collect();
    let sub = submission("throughput", json!(tasks));
    let t0 = Instant::now();
    let run_id = c.client.start(&sub).await?;
    let accepted = t0.elapsed();
    let run = c.client.finished(run_id, Duration::from_secs(3600)).await?;
    let total = t0.elapsed();
    anyhow::ensure!(
        run.status == RunStatus::Succeeded,
        "run ended {:?}",
        run.status
    );
    let coll = c.client.store.db().collection::<Document>("run_tasks");
    let first: Option<Document> = coll
        .find_one(doc! {})
        .sort(doc! { "started_at": 1 })
        .await?;
    let last: Option<Document> = coll
        .find_one(doc! {})
        .sort(doc! { "finished_at": -1 })
        .await?;
    let window = match (first, last) {
        (Some(f), Some(l)) => {
            (l.get_datetime("finished_at")?.timestamp_millis()
                - f.get_datetime("started_at")?.timestamp_millis()) as f64
                / 1000.0
        }
        _ => 0.0,
    };
    let n = args.tasks as f64;
    println!(
        "throughput: {} no-op tasks, {} workers x {} slots",
        args.tasks, args.workers, args.cpu_slots
    );
    println!(
        "  submit -> accepted (validate + store the run): {:.2} s",
        accepted.as_secs_f64()
    );
    println!(
        "  submit -> run succeeded: {:.2} s = {:.0} tasks/s end to end",
        total.as_secs_f64(),
        n / total.as_secs_f64()
    );
    println!(
        "  first start -> last finish: {window:.2} s = {:.0} tasks/s executing",
        n / window.max(0.001)
    );
    let (rss, peak) = rss_mb(c.scheduler.pid());
    println!("  scheduler RSS {rss:.0} MB (peak {peak:.0} MB)");
    Ok(())
}

async fn latency(args: &Args) -> anyhow::Result<()> {
    let c = cluster("bench-latency", args).await?;
    // Warm up: workers learn the task stream exists within their class refresh (500 ms);
    // measure steady state, not that.
    let warm = c
        .client
        .start(&submission(
            "warm-up",
            json!([{"id": "t", "type": "debug.noop"}]),
        ))
        .await?;
    c.client.finished(warm, Duration::from_secs(30)).await?;
    let since = mongodb::bson::DateTime::now();
    let n = args.rate * args.latency_s;
    let mut conn = c.client.queue.conn().await?;
    let stream = c.client.queue.keys().submissions();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate));
    for i in 0..n {
        tick.tick().await;
        let sub = submission(
            &format!("lat-{i}"),
            json!([{"id": "t", "type": "debug.noop"}]),
        );
        let _: String = conn
            .xadd(&stream, "*", &[("payload", sub.to_string())])
            .await?;
    }
    let coll = c.client.store.db().collection::<Document>("run_tasks");
    harmonia_tests::wait_for(
        "every latency task to finish",
        Duration::from_secs(120),
        || async {
            let done = coll
                .count_documents(doc! { "status": "succeeded", "queued_at": { "$gte": since } })
                .await?;
            Ok((done == n).then_some(()))
        },
    )
    .await?;
    let lat = ready_to_started(&c, since).await?;
    println!("latency: {n} single-task runs submitted at {}/s", args.rate);
    println!(
        "  ready -> started (MongoDB queued_at -> started_at, 1 ms resolution): p50 {} ms, p99 {} ms, max {} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn dag(args: &Args) -> anyhow::Result<()> {
    let c = cluster("bench-dag", args).await?;
    let width = 1000.min(args.dag_tasks);
    let layers = args.dag_tasks / width;
    let mut tasks = Vec::with_capacity(layers * width);
    for l in 0..layers {
        for i in 0..width {
            let deps: Vec<String> = if l == 0 {
                vec![]
            } else {
                let mut d = vec![
                    format!("l{}-{i}", l - 1),
                    format!("l{}-{}", l - 1, (i + 1) % width),
                ];
                d.dedup();
                d
            };
            tasks
                .push(json!({"id": format!("l{l}-{i}"), "type": "debug.noop", "depends_on": deps}));
        }
    }
    let count = tasks.len();
    let sub = submission("dag", json!(tasks));
    let bytes = sub.to_string().len();
    let t0 = Instant::now();
    let run_id = c.client.start(&sub).await?;
    let accepted = t0.elapsed();
    let run = c.client.finished(run_id, Duration::from_secs(3600)).await?;
    let total = t0.elapsed();
    let (rss, peak) = rss_mb(c.scheduler.pid());
    println!(
        "dag: {count} tasks in {layers} layers of {width} (2 upstreams each), submission {:.1} MB",
        bytes as f64 / 1e6
    );
    println!(
        "  accepted in {:.2} s; {:?} after {:.1} s = {:.0} tasks/s",
        accepted.as_secs_f64(),
        run.status,
        total.as_secs_f64(),
        count as f64 / total.as_secs_f64()
    );
    println!("  scheduler RSS at the end {rss:.0} MB, peak {peak:.0} MB");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "harmonia-bench on {} CPUs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for phase in &args.phases {
        match phase.as_str() {
            "throughput" => throughput(&args).await?,
            "latency" => latency(&args).await?,
            "dag" => dag(&args).await?,
            other => anyhow::bail!("unknown phase {other} (throughput, latency, dag)"),
        }
    }
    Ok(())
}
