//! Prometheus metrics on the gateway and on a worker: both parse as Prometheus text and their
//! counters move. And progress reaches MongoDB within a second, not at the next heartbeat.

use std::collections::HashSet;
use std::time::Duration;

use harmonia_tests::cluster::{LONG, SCHEDULER, WORKER, cluster_with, one_slot_worker};
use harmonia_tests::gateway::{Gateway, Token};
use harmonia_tests::process::free_port;
use harmonia_tests::{submission, wait_for};
use serde_json::json;

/// The scrape at `url`, parsed; panics unless it is valid Prometheus text.
async fn scrape(url: &str) -> prometheus_parse::Scrape {
    let text = reqwest::get(url)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("Prometheus text")
}

/// The value of `name` with all of `labels`, or 0.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref h) => {
                h.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_worker_metrics_parse_and_their_counters_move() {
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none", "--metrics-listen", &listen]);
    let c = cluster_with("metrics", SCHEDULER, &[worker]).await.unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:read").unwrap();
    let worker_url = format!("http://{listen}/metrics");
    wait_for("the worker's metrics endpoint", LONG, || async {
        Ok(reqwest::get(&worker_url).await.ok().map(|_| ()))
    })
    .await
    .unwrap();

    let before = scrape(&gw.url("/metrics")).await;
    let run = c
        .client
        .start(&submission(
            "m",
            json!([
                {"id": "a", "type": "debug.noop"}, {"id": "b", "type": "debug.noop"},
                {"id": "c", "type": "debug.fail", "params": {"times": 1}, "max_attempts": 2},
            ]),
        ))
        .await
        .unwrap();
    c.client.finished(run, LONG).await.unwrap();
    for _ in 0..3 {
        let r = gw.get(&token, "/api/v1/runs").send().await.unwrap();
        assert!(r.status().is_success());
    }

    let w = scrape(&worker_url).await;
    let tasks =
        |t: &str, o: &str| value(&w, "harmonia_tasks_total", &[("type", t), ("outcome", o)]);
    assert_eq!(tasks("debug.noop", "succeeded"), 2.0);
    assert_eq!(tasks("debug.fail", "retry"), 1.0);
    assert_eq!(tasks("debug.fail", "succeeded"), 1.0);
    assert_eq!(
        value(
            &w,
            "harmonia_task_run_seconds_count",
            &[("type", "debug.noop")]
        ),
        2.0
    );
    assert!(value(&w, "harmonia_task_queue_wait_seconds_count", &[]) >= 3.0);
    // Every start is timed from its entry's ready stamp: the retry's too.
    let dispatched = |t: &str| value(&w, "harmonia_task_dispatch_seconds_count", &[("type", t)]);
    assert_eq!(dispatched("debug.noop"), 2.0);
    assert_eq!(dispatched("debug.fail"), 2.0);
    assert_eq!(value(&w, "harmonia_tasks_in_flight", &[]), 0.0);

    let after = scrape(&gw.url("/metrics")).await;
    let listed = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "harmonia_http_requests_total",
            &[("route", "/api/v1/runs"), ("status", "200")],
        )
    };
    assert_eq!(listed(&after) - listed(&before), 3.0);
    let streams: HashSet<&str> = after
        .samples
        .iter()
        .filter(|s| s.metric == "harmonia_stream_length")
        .filter_map(|s| s.labels.get("stream"))
        .collect();
    assert!(
        streams.iter().any(|s| s.ends_with(":submissions")),
        "{streams:?}"
    );
    assert!(streams.iter().any(|s| s.contains(":tasks:")), "{streams:?}");
}

/// With heartbeats 10 s apart, a running task's progress still changes in MongoDB several
/// times within its first 4 seconds.
#[tokio::test(flavor = "multi_thread")]
async fn progress_reaches_mongodb_within_a_second_between_heartbeats() {
    let c = cluster_with("progress", SCHEDULER, &[one_slot_worker("10000")])
        .await
        .unwrap();
    let run = c
        .client
        .start(&submission(
            "p",
            json!([{"id": "s", "type": "debug.sleep", "params": {"ms": 6000}}]),
        ))
        .await
        .unwrap();
    c.client
        .task_reaches(run, "s", harmonia_shared::model::TaskStatus::Running)
        .await
        .unwrap();
    // Three distinct values within 4 s: heartbeats alone (10 s apart) would give at most one.
    let seen = std::sync::Mutex::new(HashSet::new());
    let distinct = wait_for(
        "3 distinct progress values",
        Duration::from_secs(4),
        || async {
            let task = c.client.task(run, "s").await?;
            let mut seen = seen.lock().expect("lock");
            if let Some(p) = task.progress {
                seen.insert(p.percent.to_bits());
            }
            Ok((seen.len() >= 3).then_some(seen.len()))
        },
    )
    .await;
    assert!(
        distinct.is_ok(),
        "only {} distinct progress values in 4 s",
        seen.lock().unwrap().len()
    );
    c.client.finished(run, LONG).await.unwrap();
}
