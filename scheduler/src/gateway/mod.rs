//! The HTTP gateway (`harmonia-scheduler gateway`): the same operations as the CLI for clients
//! outside the network, behind bearer tokens bound to one workspace. Submissions still go
//! through the Redis submissions stream, so the scheduler stays the one writer of new runs.
//! Stateless: run any number of replicas behind a load balancer.

pub mod auth;
pub mod dashboard;
pub mod fleet;
pub mod live;
pub mod metrics;
pub mod problem;
pub mod projects;
pub mod runs;
pub mod views;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::storage::Storage;
use harmonia_shared::store::Store;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ops::Operator;
use auth::Caller;

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "HARMONIA_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// Requests per second each token may make (bursts up to twice this).
    #[arg(long, env = "HARMONIA_GATEWAY_RATE_PER_S", default_value_t = 50)]
    pub rate_per_s: u32,
    /// How long a presigned download URL stays valid, in seconds.
    #[arg(long, env = "HARMONIA_GATEWAY_PRESIGN_EXPIRY_S", default_value_t = 900)]
    pub presign_expiry_s: u64,
    /// How long `POST /api/v1/runs` waits for the scheduler's reply, in seconds.
    #[arg(long, env = "HARMONIA_GATEWAY_SUBMIT_TIMEOUT_S", default_value_t = 30)]
    pub submit_timeout_s: u64,
    /// Submissions larger than this are refused (keep it equal to the scheduler's).
    #[arg(long, env = "HARMONIA_MAX_SUBMISSION_BYTES", default_value_t = 1 << 20)]
    pub max_submission_bytes: usize,
    /// How long a dashboard sign-in lasts, in hours (the session also ends when its token is
    /// revoked, or on sign-out).
    #[arg(long, env = "HARMONIA_GATEWAY_SESSION_HOURS", default_value_t = 12)]
    pub session_hours: u64,
    /// Mark the dashboard's cookies `Secure` (browsers then send them over HTTPS only). Set it
    /// whenever the gateway is reached through TLS.
    #[arg(long, env = "HARMONIA_GATEWAY_COOKIE_SECURE", default_value_t = false)]
    pub cookie_secure: bool,
    /// How often the queues page's history samples every stream, in seconds.
    #[arg(long, env = "HARMONIA_GATEWAY_QUEUE_SAMPLE_S", default_value_t = 15)]
    pub queue_sample_s: u64,
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub queue: Queue,
    pub store: Store,
    pub storage: Storage,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub presign_expiry: Duration,
    pub submit_timeout: Duration,
    pub max_submission_bytes: usize,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub session_lifetime: Duration,
    pub cookie_secure: bool,
    /// The queues page's last hour.
    pub history: Arc<dashboard::sampler::QueueHistory>,
    pub sample_every: Duration,
}

impl AppState {
    /// The caller as an operator: what it does is audited under its token.
    pub fn operator(&self, caller: &Caller) -> Operator {
        Operator {
            queue: self.queue.clone(),
            store: self.store.clone(),
            actor: caller.actor(),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Harmonia", description = "Submit, follow and operate ML workflow runs."),
    modifiers(&BearerAuth),
    tags((name = "runs"), (name = "projects"), (name = "artifacts"), (name = "fleet"), (name = "health"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("hm_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every route (the API, its OpenAPI document, the dashboard), with the API generated from the
/// same handlers as its document.
pub fn router(state: Arc<AppState>) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(runs::submit, runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(live::events))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::retry_run))
        .routes(routes!(runs::cancel_task))
        .routes(routes!(runs::retry_task))
        .routes(routes!(projects::list, projects::create))
        .routes(routes!(fleet::artifact))
        .routes(routes!(fleet::download))
        .routes(routes!(fleet::workers))
        .routes(routes!(fleet::queues))
        .routes(routes!(fleet::dead_letters))
        .routes(routes!(fleet::replay))
        .routes(routes!(fleet::purge))
        .routes(routes!(fleet::audit))
        .routes(routes!(fleet::healthz))
        .routes(routes!(fleet::readyz))
        .routes(routes!(metrics::scrape))
        .with_state(state.clone())
        .split_for_parts();
    let api = Arc::new(api);
    router
        .merge(dashboard::router(state))
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let api = api.clone();
                async move { Json((*api).clone()) }
            }),
        )
        .fallback(|| async {
            problem::Problem::not_found("no such route (see /api/v1/openapi.json)")
        })
        .layer(axum::middleware::from_fn(metrics::track))
}

pub async fn run(config: &Config, args: &GatewayArgs) -> anyhow::Result<ExitCode> {
    let Some((queue, store)) = harmonia_shared::health::connect_waiting(config).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    harmonia_shared::store::migrate::migrate(&store).await?;
    let rate = NonZeroU32::new(args.rate_per_s.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    let state = Arc::new(AppState {
        queue,
        store,
        storage: Storage::new(&config.s3),
        limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        presign_expiry: Duration::from_secs(args.presign_expiry_s),
        submit_timeout: Duration::from_secs(args.submit_timeout_s),
        max_submission_bytes: args.max_submission_bytes,
        metrics: metrics::install()?,
        session_lifetime: Duration::from_secs(args.session_hours.max(1) * 3600),
        cookie_secure: args.cookie_secure,
        history: Arc::default(),
        sample_every: Duration::from_secs(args.queue_sample_s.max(1)),
    });
    let sampler = tokio::spawn(dashboard::sampler::run(
        state.queue.clone(),
        state.history.clone(),
        state.sample_every,
    ));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "gateway serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = harmonia_shared::signal::terminated().await;
        })
        .await?;
    sampler.abort();
    tracing::info!("gateway stopped");
    Ok(ExitCode::SUCCESS)
}
