//! The web dashboard, served by the gateway beside the API: server-rendered pages (askama
//! templates compiled into the binary), one small script for confirmations and live updates, and
//! nothing fetched from elsewhere. It reads and acts as the token it was signed in with, through
//! the same stores and the same audited operator as the API.

pub mod actions;
pub mod dag;
pub mod fleet;
pub mod models;
pub mod page;
pub mod runs;
pub mod sampler;
pub mod session;
pub mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AppState;

const CSS: &str = include_str!("../../../assets/dashboard.css");
const JS: &str = include_str!("../../../assets/dashboard.js");

/// The dashboard's routes; the gateway merges them with the API's.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/runs") }))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::run))
        .route("/runs/{id}/tasks/{node}", get(tasks::task))
        .route("/runs/{id}/cancel", post(actions::cancel_run))
        .route("/runs/{id}/retry", post(actions::retry_run))
        .route("/runs/{id}/tasks/{node}/cancel", post(actions::cancel_task))
        .route("/runs/{id}/tasks/{node}/retry", post(actions::retry_task))
        .route("/workers", get(fleet::workers))
        .route("/queues", get(fleet::queues))
        .route("/dead-letters", get(fleet::dead_letters))
        .route("/dead-letters/{id}", get(fleet::dead_letter))
        .route("/dead-letters/{id}/replay", post(actions::replay))
        .route("/dead-letters/{id}/purge", post(actions::purge))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::one))
        .layer(axum::middleware::from_fn(session::flash))
        .layer(axum::middleware::from_fn(hardened))
        .route("/assets/dashboard.css", get(|| asset(CSS, "text/css")))
        .route("/assets/dashboard.js", get(|| asset(JS, "text/javascript")))
        .with_state(state)
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Pages run only the gateway's own script and style, are never framed, post forms only to the
/// gateway, and are not cached (they show live state and carry a CSRF token).
async fn hardened(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
