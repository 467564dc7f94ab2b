//! Prometheus metrics of the gateway: requests by route and status, their latency, and the
//! streams' backlog, read from Redis at each scrape.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

/// Installs the process's recorder (once; later calls get the same handle).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])?
        .install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Counts each request and times it, labelled by its route template (not its ids).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("harmonia_http_requests_total", &labels).increment(1);
    metrics::histogram!("harmonia_http_request_seconds", &labels[..2])
        .record(start.elapsed().as_secs_f64());
    response
}

/// Prometheus text exposition: the gateway's metrics and every stream's backlog.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    match crate::cli::queues::collect(&state.queue).await {
        Ok(streams) => {
            for s in streams {
                let labels = [("stream", s.stream.clone())];
                metrics::gauge!("harmonia_stream_length", &labels).set(s.length as f64);
                metrics::gauge!("harmonia_stream_pending", &labels).set(s.pending as f64);
                if let Some(lag) = s.lag {
                    metrics::gauge!("harmonia_stream_lag", &labels).set(lag as f64);
                }
                let oldest = s.oldest_pending_age_ms.unwrap_or(0) as f64 / 1e3;
                metrics::gauge!("harmonia_stream_oldest_pending_seconds", &labels).set(oldest);
            }
        }
        Err(e) => tracing::debug!("reading stream stats for /metrics: {e}"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
