//! End-to-end benchmark of the core loop: a real scheduler and worker processes (built next to
//! this binary; use `--release`) against Redis, mongod and S3 started by the harness. Prints
//! figures; asserts nothing. Run it through `scripts/bench`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use clap::Parser;
use futures::TryStreamExt;
use harmonia_shared::model::RunStatus;
use harmonia_shared::queue::unix_us;
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
    /// Runs of two chained tasks submitted per second in the promotion phase.
    #[arg(long, default_value_t = 100)]
    chain_rate: u64,
    /// Duration of the latency and promotion phases, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_s: u64,
    /// Sizes of the DAG runs, in tasks (layers of 1,000, each task depending on two of the
    /// layer above), each on a cluster of its own; two sizes show whether promotion stays linear.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    dag_tasks: Vec<usize>,
    /// Phases to run; `peer` runs the apalis-redis peer with the throughput and latency
    /// phases' sizes and prints Harmonia / apalis from this invocation.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,peer,promotion,dag"
    )]
    phases: Vec<String>,
    /// The peer's binary (`scripts/bench` builds `scripts/peers/apalis`).
    #[arg(long, env = "HARMONIA_BENCH_APALIS")]
    apalis: Option<std::path::PathBuf>,
    /// Concurrency of the peer's one worker process.
    #[arg(long, default_value_t = 8)]
    apalis_conc: u32,
    /// Jobs per peer throughput round. apalis-redis 1.0 moves every due job with one Lua
    /// `unpack`, which Debian's redis-server 7.0 refuses beyond ~8,000 results, so the peer
    /// cannot queue 50,000 at once; it runs three rounds of this many and the median is used.
    #[arg(long, default_value_t = 7_000)]
    apalis_tasks: usize,
    /// The workers' `--claim-after-ms` (their default when absent; 0: every claim written
    /// before its attempt, as before deferred claims).
    #[arg(long)]
    claim_after_ms: Option<u64>,
}

/// What the phases measured, for the ratios against the peer.
#[derive(Debug, Default)]
struct Figures {
    /// Tasks per second, submission to the run's end.
    end_to_end: Option<f64>,
    /// Tasks per second, first start to last finish.
    executing: Option<f64>,
    /// Submit (XADD) -> the no-op started, microseconds: p50, p99.
    start_us: Option<(f64, f64)>,
}

async fn cluster(name: &str, args: &Args) -> anyhow::Result<Cluster> {
    let max_bytes = (64u64 << 20).to_string();
    let scheduler = ["run", "--max-submission-bytes", &max_bytes, "--log", "warn"];
    let slots = args.cpu_slots.to_string();
    let mut worker = vec![
        "run",
        "--gpus",
        "none",
        "--cpu-slots",
        &slots,
        "--log",
        "warn",
    ];
    let claim_after = args.claim_after_ms.map(|ms| ms.to_string());
    if let Some(ms) = &claim_after {
        worker.extend(["--claim-after-ms", ms]);
    }
    cluster_with(name, &scheduler, &vec![worker; args.workers]).await
}

/// started_at - queued_at per task queued since `since`, sorted (ms).
async fn ready_to_started(c: &Cluster, since: mongodb::bson::DateTime) -> anyhow::Result<Vec<f64>> {
    let coll = c.client.store.db().collection::<Document>("run_tasks");
    let mut cursor = coll
        .find(doc! { "status": "succeeded", "queued_at": { "$gte": since } })
        .projection(doc! { "queued_at": 1, "started_at": 1 })
        .await?;
    let mut lat = Vec::new();
    while let Some(d) = cursor.try_next().await? {
        if let (Ok(q), Ok(s)) = (d.get_datetime("queued_at"), d.get_datetime("started_at")) {
            lat.push((s.timestamp_millis() - q.timestamp_millis()) as f64);
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

type Counters = std::collections::HashMap<String, i64>;

/// What `n` tasks cost mongod between two [`mongod_counters`] readings, per task.
fn print_mongod_per_task(before: &Counters, after: &Counters, n: f64) {
    let per_task = |k: &str| (after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0)) as f64 / n;
    println!(
        "  mongod per task: documents {:.2} inserted, {:.2} updated, {:.2} returned; \
         opcounters {:.3} insert, {:.3} update, {:.3} query, {:.3} getmore, {:.3} command",
        per_task("inserted"),
        per_task("updated"),
        per_task("returned"),
        per_task("insert"),
        per_task("update"),
        per_task("query"),
        per_task("getmore"),
        per_task("command"),
    );
}

/// mongod's operation and document counters (`serverStatus`), by name: what a phase cost the
/// database, whatever the harness read itself (a few queries) included.
async fn mongod_counters(c: &Cluster) -> anyhow::Result<Counters> {
    let status = c
        .client
        .store
        .db()
        .client()
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await?;
    let mut counters = std::collections::HashMap::new();
    let number = |v: &mongodb::bson::Bson| v.as_i64().or_else(|| v.as_i32().map(i64::from));
    for (k, v) in status.get_document("opcounters")? {
        counters.insert(k.clone(), number(v).unwrap_or(0));
    }
    for (k, v) in status.get_document("metrics")?.get_document("document")? {
        counters.insert(k.clone(), number(v).unwrap_or(0));
    }
    Ok(counters)
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

async fn throughput(args: &Args, fig: &mut Figures) -> anyhow::Result<()> {
    let c = cluster("bench-throughput", args).await?;
    let tasks: Vec<_> = (0..args.tasks)
        .map(|i| json!({"id": format!("t{i}"), "type": "debug.noop"}))
        .collect();
    let sub = submission("throughput", json!(tasks));
    let before = mongod_counters(&c).await?;
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
    let after = mongod_counters(&c).await?;
    let n = args.tasks as f64;
    println!(
        "throughput: {} no-op tasks, {} workers x {} slots",
        args.tasks, args.workers, args.cpu_slots
    );
    print_mongod_per_task(&before, &after, n);
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
    fig.end_to_end = Some(n / total.as_secs_f64());
    fig.executing = Some(n / window.max(0.001));
    Ok(())
}

async fn latency(args: &Args, fig: &mut Figures) -> anyhow::Result<()> {
    let c = cluster("bench-latency", args).await?;
    let one = json!([{"id": "t", "type": "debug.noop"}]);
    warm_up(&c, &one).await?;
    let before = mongod_counters(&c).await?;
    let since = mongodb::bson::DateTime::now();
    let n = args.rate * args.latency_s;
    let (sent_us, hop_us) = tokio::try_join!(
        submit_paced(&c, "lat", args.rate, n, &one),
        redis_hop(&c, args.rate, n)
    )?;
    wait_succeeded(&c, since, n).await?;
    let after = mongod_counters(&c).await?;
    let lat = ready_to_started(&c, since).await?;
    println!("latency: {n} single-task runs submitted at {}/s", args.rate);
    print_mongod_per_task(&before, &after, n as f64);
    println!(
        "  queued -> started (MongoDB queued_at -> started_at, 1 ms resolution; a run's tasks are queued_at before they are stored): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        quantile(&lat, 0.50),
        quantile(&lat, 0.99),
        quantile(&lat, 1.0)
    );
    let (mut us, mut queued) = submit_to_started_us(&c, &sent_us).await?;
    queued.sort_by(f64::total_cmp);
    us.sort_by(f64::total_cmp);
    println!(
        "  submit (XADD) -> queued (MongoDB queued_at, 1 ms resolution): p50 {:.0} ms, p99 {:.0} ms",
        quantile(&queued, 0.5) / 1000.0,
        quantile(&queued, 0.99) / 1000.0
    );
    let p = |q: f64| quantile(&us, q);
    println!(
        "  submit (XADD) -> started (the no-op's own clock, 1 us resolution): p50 {:.0} us, p99 {:.0} us, max {:.0} us ({} tasks)",
        p(0.5),
        p(0.99),
        p(1.0),
        us.len()
    );
    fig.start_us = Some((p(0.5), p(0.99)));
    print_ready_to_started(&c, since, None).await?;
    let hop = |q: f64| quantile(&hop_us, q);
    println!(
        "  Redis's own hop at the same time (a bare XADD -> a blocked XREAD returns, two pooled connections in this process, one entry per submission): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        hop(0.5),
        hop(0.9),
        hop(0.99),
        hop(1.0)
    );
    Ok(())
}

/// Redis's own append -> read hop on this machine while the latency phase runs: one connection
/// appends an entry stamped with this process's µs clock at the submissions' rate, another,
/// blocked in XREAD as a worker is in XREADGROUP, reads it. Ready -> started cannot be shorter
/// than this hop on the same machine at the same moment; the two are printed side by side.
async fn redis_hop(c: &Cluster, rate: u64, n: u64) -> anyhow::Result<Vec<f64>> {
    let key = format!("{}:bench:hop", c.scope.config.redis.prefix);
    let mut writer = c.client.queue.conn().await?;
    let mut reader = c.client.queue.conn().await?;
    let _: () = writer.del(&key).await?;
    let read = async {
        let mut last = "0-0".to_owned();
        let mut us = Vec::with_capacity(n as usize);
        let opts = redis::streams::StreamReadOptions::default()
            .count(100)
            .block(250);
        while us.len() < n as usize {
            let reply: Option<redis::streams::StreamReadReply> =
                reader.xread_options(&[&key], &[&last], &opts).await?;
            let now = unix_us();
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                let sent: i64 = entry.get("us").unwrap_or(now);
                us.push((now - sent) as f64);
                last = entry.id;
            }
        }
        us.sort_by(f64::total_cmp);
        anyhow::Ok(us)
    };
    let write = async {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
        for _ in 0..n {
            tick.tick().await;
            let _: String = writer.xadd(&key, "*", &[("us", unix_us())]).await?;
        }
        anyhow::Ok(())
    };
    let (us, ()) = tokio::try_join!(read, write)?;
    let _: () = writer.del(&key).await?;
    Ok(us)
}

/// Ready -> started on the no-ops' own clocks: from the stamp the publisher put on the task's
/// entry (right after MongoDB acknowledged the task queued: the run stored, or the upstream
/// outcome's promotion written) to the attempt's start. Only the tasks named `node`, if given.
async fn print_ready_to_started(
    c: &Cluster,
    since: mongodb::bson::DateTime,
    node: Option<&str>,
) -> anyhow::Result<()> {
    let mut filter = doc! { "queued_at": { "$gte": since } };
    if let Some(node) = node {
        filter.insert("node_id", node);
    }
    let mut tasks = c
        .client
        .store
        .db()
        .collection::<Document>("run_tasks")
        .find(filter)
        .projection(doc! { "outputs": 1 })
        .await?;
    let mut us = Vec::new();
    while let Some(t) = tasks.try_next().await? {
        let ready = t
            .get_document("outputs")
            .ok()
            .and_then(|o| o.get_i64("ready_unix_us").ok());
        if let (Some(ready), Some(started)) = (ready, started_unix_us(&t)) {
            us.push((started - ready) as f64);
        }
    }
    us.sort_by(f64::total_cmp);
    let p = |q: f64| quantile(&us, q);
    println!(
        "  ready (entry appended, the task queued in MongoDB) -> started (1 us resolution): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us ({} tasks)",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0),
        us.len()
    );
    Ok(())
}

/// Runs `tasks` once and waits for the run: workers learn a task stream exists within their
/// class refresh (500 ms); the phases measure steady state, not that.
async fn warm_up(c: &Cluster, tasks: &serde_json::Value) -> anyhow::Result<()> {
    let warm = c
        .client
        .start(&submission("warm-up", tasks.clone()))
        .await?;
    c.client.finished(warm, Duration::from_secs(30)).await?;
    Ok(())
}

/// XADDs `n` runs of `tasks` at `rate` per second, request ids `{prefix}-{i}`; returns when
/// each was sent (unix µs) by request id.
async fn submit_paced(
    c: &Cluster,
    prefix: &str,
    rate: u64,
    n: u64,
    tasks: &serde_json::Value,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let mut conn = c.client.queue.conn().await?;
    let stream = c.client.queue.keys().submissions();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut sent_us = std::collections::HashMap::new();
    for i in 0..n {
        tick.tick().await;
        let request_id = format!("{prefix}-{i}");
        let sub = submission(&request_id, tasks.clone());
        sent_us.insert(request_id, unix_us());
        let _: String = conn
            .xadd(&stream, "*", &[("payload", sub.to_string())])
            .await?;
    }
    Ok(sent_us)
}

/// Waits until `n` tasks queued since `since` have succeeded.
async fn wait_succeeded(c: &Cluster, since: mongodb::bson::DateTime, n: u64) -> anyhow::Result<()> {
    let coll = c.client.store.db().collection::<Document>("run_tasks");
    harmonia_tests::wait_for("every task to finish", Duration::from_secs(120), || async {
        let done = coll
            .count_documents(doc! { "status": "succeeded", "queued_at": { "$gte": since } })
            .await?;
        Ok((done == n).then_some(()))
    })
    .await
}

/// Runs of two no-op tasks, `b` after `a`, at `--chain-rate` per second: how long from the
/// upstream task's start to the downstream one's (its outcome, its event, the scheduler's
/// promotion and append, a worker's read), on the no-ops' own clocks.
async fn promotion(args: &Args) -> anyhow::Result<()> {
    let c = cluster("bench-promotion", args).await?;
    warm_up(&c, &chain()).await?;
    let before = mongod_counters(&c).await?;
    let since = mongodb::bson::DateTime::now();
    let n = args.chain_rate * args.latency_s;
    submit_paced(&c, "chain", args.chain_rate, n, &chain()).await?;
    wait_succeeded(&c, since, 2 * n).await?;
    let after = mongod_counters(&c).await?;
    let mut started: std::collections::HashMap<_, [Option<i64>; 2]> = Default::default();
    let mut tasks = c
        .client
        .store
        .db()
        .collection::<Document>("run_tasks")
        .find(doc! { "queued_at": { "$gte": since } })
        .projection(doc! { "run_id": 1, "node_id": 1, "outputs.started_unix_us": 1 })
        .await?;
    while let Some(t) = tasks.try_next().await? {
        let slot = usize::from(t.get_str("node_id")? == "b");
        started.entry(t.get_object_id("run_id")?).or_default()[slot] = started_unix_us(&t);
    }
    let mut us: Vec<f64> = started
        .values()
        .filter_map(|[a, b]| Some((b.as_ref()? - a.as_ref()?) as f64))
        .collect();
    us.sort_by(f64::total_cmp);
    let at = |q: f64| quantile(&us, q);
    println!(
        "promotion: {n} runs of two no-op tasks (b after a) submitted at {}/s",
        args.chain_rate
    );
    print_mongod_per_task(&before, &after, 2.0 * n as f64);
    println!(
        "  a started -> b started (a's outcome and event, promotion, b's append and read; 1 us resolution): p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us ({} runs)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        us.len()
    );
    print_ready_to_started(&c, since, Some("b")).await
}

/// Two no-op tasks, `b` after `a`.
fn chain() -> serde_json::Value {
    json!([
        {"id": "a", "type": "debug.noop"},
        {"id": "b", "type": "debug.noop", "depends_on": ["a"]}
    ])
}

/// When a no-op task started, by its own clock (its `outputs.started_unix_us`).
fn started_unix_us(task: &Document) -> Option<i64> {
    let outputs = task.get_document("outputs").ok()?;
    outputs.get_i64("started_unix_us").ok()
}

/// The `q` quantile of sorted values (0 when there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// For each latency run: its no-op's `started_unix_us`, and its `queued_at`, minus when its
/// submission was XADDed (µs).
async fn submit_to_started_us(
    c: &Cluster,
    sent_us: &std::collections::HashMap<String, i64>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let db = c.client.store.db();
    let mut request_of = std::collections::HashMap::new();
    let mut runs = db
        .collection::<Document>("workflow_runs")
        .find(doc! { "request_id": { "$regex": "^lat-" } })
        .projection(doc! { "request_id": 1 })
        .await?;
    while let Some(r) = runs.try_next().await? {
        request_of.insert(r.get_object_id("_id")?, r.get_str("request_id")?.to_owned());
    }
    let (mut out, mut queued) = (Vec::new(), Vec::new());
    let mut tasks = db
        .collection::<Document>("run_tasks")
        .find(doc! { "run_id": { "$in": request_of.keys().collect::<Vec<_>>() } })
        .projection(doc! { "run_id": 1, "queued_at": 1, "outputs.started_unix_us": 1 })
        .await?;
    while let Some(t) = tasks.try_next().await? {
        let started = started_unix_us(&t);
        let sent = request_of
            .get(&t.get_object_id("run_id")?)
            .and_then(|r| sent_us.get(r));
        if let (Some(started), Some(sent)) = (started, sent) {
            out.push((started - sent) as f64);
        }
        if let (Ok(q), Some(sent)) = (t.get_datetime("queued_at"), sent) {
            queued.push((q.timestamp_millis() * 1000 - sent) as f64);
        }
    }
    Ok((out, queued))
}

/// The apalis-redis peer with the same sizes, in this invocation, and the ratios.
async fn peer(args: &Args, fig: &Figures) -> anyhow::Result<()> {
    let Some(binary) = args.apalis.as_deref() else {
        println!("peer: skipped (no --apalis binary; scripts/bench builds scripts/peers/apalis)");
        return Ok(());
    };
    let dir = harmonia_tests::Scope::new("bench-peer").dir;
    let conc = args.apalis_conc.to_string();
    let n = args.apalis_tasks.to_string();
    let t = harmonia_tests::peer::apalis(
        binary,
        &dir,
        "throughput",
        &["--conc", &conc, "--n", &n, "--reps", "3"],
    )
    .await?;
    let median = |k: &str, per: bool| {
        let mut v: Vec<f64> = t["runs"]
            .as_array()
            .map(|runs| runs.iter().filter_map(|r| r[k].as_f64()).collect())
            .unwrap_or_default();
        if per {
            v = v.iter().map(|s| args.apalis_tasks as f64 / s).collect();
        }
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (enq, proc, wall) = (
        median("enq_rate", false),
        median("proc_rate", false),
        median("wall_s", true),
    );
    println!(
        "peer: apalis 1.0 + apalis-redis 1.0, one worker process x {conc}, 3 rounds of {n} no-op jobs (push_bulk, then process; median)"
    );
    println!("  enqueue {enq:.0} jobs/s, process {proc:.0} jobs/s, end to end {wall:.0} jobs/s");
    if let (Some(h), Some(x)) = (fig.end_to_end, fig.executing) {
        println!(
            "  harmonia / apalis: end to end {h:.0} / {wall:.0} = {:.2}x; executing {x:.0} / {proc:.0} = {:.2}x",
            h / wall,
            x / proc
        );
    }
    let latency_n = (args.rate * args.latency_s).to_string();
    let rate_s = args.rate.to_string();
    let l = harmonia_tests::peer::apalis(
        binary,
        &dir,
        "latency",
        &["--conc", &conc, "--n", &latency_n, "--rate", &rate_s],
    )
    .await?;
    let ms = |k: &str| l["start"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    println!(
        "  apalis push -> handler start at {}/s: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        args.rate,
        ms("p50"),
        ms("p99"),
        ms("max")
    );
    if let Some((p50, p99)) = fig.start_us {
        println!(
            "  harmonia / apalis start latency (lower is better): p50 {p50:.0} / {:.0} us = {:.2}x; p99 {p99:.0} / {:.0} us = {:.2}x",
            ms("p50"),
            p50 / ms("p50"),
            ms("p99"),
            p99 / ms("p99")
        );
    }
    Ok(())
}

async fn dag(args: &Args, size: usize) -> anyhow::Result<()> {
    let c = cluster(&format!("bench-dag-{size}"), args).await?;
    let width = 1000.min(size);
    let layers = size / width;
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
    let sub = submission(&format!("dag-{size}"), json!(tasks));
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
        "harmonia-bench on {} CPUs, mongod WiredTiger cache {} GB, snapshot history {} s, \
         workers' --claim-after-ms {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        harmonia_tests::servers::mongod_cache_gb(),
        harmonia_tests::servers::mongod_snapshot_history_s(),
        args.claim_after_ms.map_or_else(
            || "default (1000: deferred claims)".to_owned(),
            |ms| ms.to_string()
        )
    );
    let mut fig = Figures::default();
    for phase in &args.phases {
        match phase.as_str() {
            "throughput" => throughput(&args, &mut fig).await?,
            "latency" => latency(&args, &mut fig).await?,
            "peer" => peer(&args, &fig).await?,
            "promotion" => promotion(&args).await?,
            "dag" => {
                for &size in &args.dag_tasks {
                    dag(&args, size).await?;
                }
            }
            other => {
                anyhow::bail!("unknown phase {other} (throughput, latency, peer, promotion, dag)")
            }
        }
    }
    Ok(())
}
