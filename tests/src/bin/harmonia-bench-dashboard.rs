//! Benchmark of the dashboard's run page: a real scheduler, gateway and mongod; runs of 200 tasks
//! (drawn as an SVG graph) and 1,000 tasks (drawn as layers, with the full task table), first
//! waiting (no worker), then finished (a worker ran them). Each page is fetched `--reps` times
//! as a signed-in browser would; prints the server's own time (its `Server-Timing` header: reading
//! MongoDB, and in all), the client's wall time and the page's size, against the 300 ms budget.
//! Asserts nothing. Run it through `scripts/bench-dashboard`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use harmonia_tests::cluster::{SCHEDULER, WORKER};
use harmonia_tests::gateway::{DashboardSession, Gateway, Token};
use harmonia_tests::{Client, Scope, submission};
use mongodb::bson::oid::ObjectId;
use serde_json::{Value, json};

const BUDGET_MS: f64 = 300.0;

#[derive(Debug, Parser)]
#[command(about = "Harmonia dashboard run-page benchmark")]
struct Args {
    /// Timed fetches of each page.
    #[arg(long, default_value_t = 30)]
    reps: usize,
    /// Task counts of the runs to render.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    sizes: Vec<usize>,
}

/// `n` no-op tasks in layers of 100, each depending on two tasks of the layer before.
fn dag(n: usize) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|i| {
            let layer = i / 100;
            let deps: Vec<String> = if layer == 0 {
                Vec::new()
            } else {
                let base = (layer - 1) * 100;
                vec![
                    format!("t{:04}", base + i % 100),
                    format!("t{:04}", base + (i * 7 + 3) % 100),
                ]
            };
            json!({ "id": format!("t{i:04}"), "type": "debug.noop", "depends_on": deps })
        })
        .collect();
    Value::Array(tasks)
}

#[derive(Debug, Default)]
struct Sample {
    db_ms: f64,
    server_ms: f64,
    wall_ms: f64,
    bytes: usize,
}

fn timing(header: &str, name: &str) -> Option<f64> {
    header.split(',').find_map(|part| {
        let (n, rest) = part.trim().split_once(';')?;
        (n == name)
            .then(|| rest.trim().strip_prefix("dur="))??
            .parse()
            .ok()
    })
}

async fn fetch(gw: &Gateway, s: &DashboardSession, path: &str) -> anyhow::Result<Sample> {
    let began = Instant::now();
    let r = gw
        .http
        .get(gw.url(path))
        .header("cookie", &s.cookie)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    let header = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = r.bytes().await?;
    Ok(Sample {
        db_ms: timing(&header, "db").unwrap_or(f64::NAN),
        server_ms: timing(&header, "total").context("no Server-Timing total")?,
        wall_ms: began.elapsed().as_secs_f64() * 1000.0,
        bytes: body.len(),
    })
}

fn pct(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(i).copied().unwrap_or(f64::NAN)
}

async fn measure(
    gw: &Gateway,
    s: &DashboardSession,
    label: &str,
    run: ObjectId,
    reps: usize,
) -> anyhow::Result<()> {
    let path = format!("/runs/{run}");
    fetch(gw, s, &path).await?; // warm the connection and mongod's cache
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        samples.push(fetch(gw, s, &path).await?);
    }
    let mut server: Vec<f64> = samples.iter().map(|x| x.server_ms).collect();
    let mut db: Vec<f64> = samples.iter().map(|x| x.db_ms).collect();
    let mut wall: Vec<f64> = samples.iter().map(|x| x.wall_ms).collect();
    let p95 = pct(&mut server, 0.95);
    println!(
        "{label:<26} server p50 {:>6.1} ms  p95 {:>6.1} ms  max {:>6.1} ms | mongodb p50 {:>6.1} ms | wall p50 {:>6.1} ms | {:>7} bytes | p95 / budget {:.2}",
        pct(&mut server, 0.5),
        p95,
        pct(&mut server, 1.0),
        pct(&mut db, 0.5),
        pct(&mut wall, 0.5),
        samples.last().map_or(0, |x| x.bytes),
        p95 / BUDGET_MS,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scope = Scope::new("bench-dashboard");
    let client = Client::for_config(&scope.config).await?;
    let _scheduler = scope.spawn("scheduler", "harmonia-scheduler", SCHEDULER)?;
    let gw = Gateway::start(&scope, &["--rate-per-s", "100000"]).await?;
    let token = Token::create(&scope, "ml", "runs:read,runs:write")?;
    let session = DashboardSession::sign_in(&gw, &token).await?;
    println!(
        "run page (GET /runs/{{id}}), {} fetches each, budget {BUDGET_MS} ms of server time",
        args.reps
    );
    let mut runs = Vec::new();
    for &n in &args.sizes {
        let run = client
            .start(&submission(&format!("bench-{n}"), dag(n)))
            .await?;
        measure(
            &gw,
            &session,
            &format!("{n} tasks, waiting"),
            run,
            args.reps,
        )
        .await?;
        runs.push((n, run));
    }
    let mut worker_args = WORKER.to_vec();
    worker_args.extend(["--gpus", "none"]);
    let _worker = scope.spawn("worker", "harmonia-worker", &worker_args)?;
    for &(n, run) in &runs {
        client.finished(run, Duration::from_secs(600)).await?;
        measure(
            &gw,
            &session,
            &format!("{n} tasks, finished"),
            run,
            args.reps,
        )
        .await?;
    }
    Ok(())
}
