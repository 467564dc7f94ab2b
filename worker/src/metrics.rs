//! Prometheus metrics of a worker, served on `--metrics-listen` at `/metrics`: tasks by type
//! and outcome, queue wait, dispatch latency and run time, in-flight tasks and free GPUs, bytes downloaded,
//! verification failures, warm-pool hits and misses. Recording is a no-op when no listener
//! is configured (no recorder installed).

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Installs the recorder and serves `/metrics` on `listen` (on the current runtime).
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets(&[
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        ])?
        // Dispatch is a matter of milliseconds while a worker is free.
        .set_buckets_for_metric(
            Matcher::Full("harmonia_task_dispatch_seconds".into()),
            &[
                0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.05, 0.1, 1.0, 10.0, 60.0,
            ],
        )?
        .install()?;
    describe_counter!(
        "harmonia_tasks_total",
        "Attempts finished, by task type and outcome"
    );
    describe_histogram!(
        "harmonia_task_queue_wait_seconds",
        Unit::Seconds,
        "Queued to started"
    );
    describe_histogram!(
        "harmonia_task_dispatch_seconds",
        Unit::Seconds,
        "Ready in Redis (entry appended) to started"
    );
    describe_histogram!(
        "harmonia_task_run_seconds",
        Unit::Seconds,
        "Started to outcome"
    );
    describe_gauge!(
        "harmonia_tasks_in_flight",
        "Attempts running on this worker"
    );
    describe_gauge!("harmonia_gpus_free", "GPUs of this worker not allocated");
    describe_counter!(
        "harmonia_download_bytes_total",
        Unit::Bytes,
        "Model bytes received from the Hub"
    );
    describe_counter!(
        "harmonia_verification_failures_total",
        "Files whose checksum did not match"
    );
    describe_counter!(
        "harmonia_model_pool_total",
        "Warm-pool lookups, by result (hit, miss)"
    );
    tracing::info!(%listen, "serving metrics");
    Ok(())
}

pub fn task_started(
    task_type: &str,
    queued_for: Option<Duration>,
    dispatched_in: Option<Duration>,
) {
    if let Some(wait) = queued_for {
        histogram!("harmonia_task_queue_wait_seconds", "type" => task_type.to_owned())
            .record(wait.as_secs_f64());
    }
    if let Some(wait) = dispatched_in {
        histogram!("harmonia_task_dispatch_seconds", "type" => task_type.to_owned())
            .record(wait.as_secs_f64());
    }
}

/// `outcome`: succeeded, failed, retry, cancelled, handed_back.
pub fn task_finished(task_type: &str, outcome: &'static str, ran_for: Duration) {
    counter!("harmonia_tasks_total", "type" => task_type.to_owned(), "outcome" => outcome)
        .increment(1);
    histogram!("harmonia_task_run_seconds", "type" => task_type.to_owned())
        .record(ran_for.as_secs_f64());
}

pub fn occupancy(in_flight: usize, free_gpus: usize) {
    gauge!("harmonia_tasks_in_flight").set(in_flight as f64);
    gauge!("harmonia_gpus_free").set(free_gpus as f64);
}

pub fn downloaded(bytes: u64) {
    counter!("harmonia_download_bytes_total").increment(bytes);
}

pub fn verification_failed() {
    counter!("harmonia_verification_failures_total").increment(1);
}

pub fn pool_lookup(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!("harmonia_model_pool_total", "result" => result).increment(1);
}
