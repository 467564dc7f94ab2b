//! Artifacts, workers, queues, dead letters, the audit log, health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use harmonia_shared::model::{Artifact, TokenScope, WorkflowRun};
use harmonia_shared::store::AuditQuery;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiResult, Problem};
use super::views::plain;

async fn own_artifact(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Artifact> {
    caller.require(TokenScope::ArtifactsRead)?;
    let missing = || Problem::not_found(format!("no artifact with id {id}"));
    let oid = ObjectId::parse_str(id).map_err(|_| missing())?;
    state
        .store
        .artifacts()
        .get(oid)
        .await?
        .filter(|a| a.workspace == caller.workspace())
        .ok_or_else(missing)
}

/// An artifact's record: where its bytes are, their size and sha256, what made it.
#[utoipa::path(get, path = "/api/v1/artifacts/{id}", tag = "artifacts",
    params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn artifact(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(plain(&own_artifact(&state, &caller, &id).await?)))
}

/// Redirects (302) to a presigned S3 URL for the artifact's bytes, valid for the gateway's
/// `--presign-expiry-s`.
#[utoipa::path(get, path = "/api/v1/artifacts/{id}/download", tag = "artifacts",
    params(("id" = String, Path)),
    responses((status = 302, description = "Location: a presigned URL"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let artifact = own_artifact(&state, &caller, &id).await?;
    let url = state
        .storage
        .presign_get(&artifact.storage_ref.key, state.presign_expiry)
        .await?;
    let expires = state.presign_expiry.as_secs().to_string();
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url),
            (header::HeaderName::from_static("x-expires-in-s"), expires),
        ],
    )
        .into_response())
}

/// Workers that heartbeated in the last hour (admin).
#[utoipa::path(get, path = "/api/v1/workers", tag = "fleet",
    responses((status = 200, body = Vec<Object>)), security(("bearer" = [])))]
pub async fn workers(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    caller.require(TokenScope::Admin)?;
    let workers = state
        .store
        .workers()
        .seen_within(Duration::from_secs(3600))
        .await?;
    Ok(Json(workers.iter().map(plain).collect()))
}

/// Every stream: length, pending, lag, consumers, oldest ages (admin).
#[utoipa::path(get, path = "/api/v1/queues", tag = "fleet",
    responses((status = 200, body = Vec<Object>)), security(("bearer" = [])))]
pub async fn queues(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<harmonia_shared::queue::stats::StreamStats>>> {
    caller.require(TokenScope::Admin)?;
    Ok(Json(crate::cli::queues::collect(&state.queue).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CountParams {
    /// How many (newest first); default 50, at most 1000.
    pub count: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub id: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// The dead letters of this workspace's runs, newest first (admin).
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "fleet", params(CountParams),
    responses((status = 200, body = Vec<DeadLetterView>)), security(("bearer" = [])))]
pub async fn dead_letters(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<CountParams>,
) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let mine = own_letters(&state, &caller, p.count.unwrap_or(50).min(1000)).await?;
    Ok(Json(
        mine.into_iter()
            .map(|(l, _)| DeadLetterView {
                id: l.id,
                payload: l.payload,
            })
            .collect(),
    ))
}

/// The newest `count` dead letters that are about runs of the caller's workspace, each with
/// its run (admin). Each run is read once, however many letters name it.
pub(crate) async fn own_letters(
    state: &AppState,
    caller: &Caller,
    count: usize,
) -> ApiResult<Vec<(harmonia_shared::queue::dead::DeadLetter, WorkflowRun)>> {
    caller.require(TokenScope::Admin)?;
    let op = state.operator(caller);
    let mut runs: HashMap<String, Option<WorkflowRun>> = HashMap::new();
    let mut mine = Vec::new();
    for l in state.queue.dead_letters(count).await? {
        let key = l.payload["run_id"].as_str().unwrap_or_default().to_owned();
        let run = match runs.get(&key) {
            Some(known) => known.clone(),
            None => {
                let found = op.letter_run(&l).await?;
                runs.insert(key, found.clone());
                found
            }
        };
        if let Some(run) = run.filter(|r| r.workspace == caller.workspace()) {
            mine.push((l, run));
        }
    }
    Ok(mine)
}

/// The letter, if it is about a run of the caller's workspace.
pub(crate) async fn own_letter(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<harmonia_shared::queue::dead::DeadLetter> {
    caller.require(TokenScope::Admin)?;
    let op = state.operator(caller);
    let letter = op.letter(id).await?;
    match op.letter_run(&letter).await? {
        Some(run) if run.workspace == caller.workspace() => Ok(letter),
        _ => Err(Problem::not_found(format!("no dead letter {id}"))),
    }
}

/// Retry the letter's task (and downstream) in place, then remove the letter (admin).
#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/replay", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 200, body = super::views::ActionResult), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<super::views::ActionResult>> {
    let letter = own_letter(&state, &caller, &id).await?;
    let (run_id, reset) = state.operator(&caller).replay(&letter).await?;
    Ok(Json(super::views::ActionResult {
        reset: Some(reset),
        ..super::views::ActionResult::for_run(&run_id)
    }))
}

/// Remove one dead letter without retrying its task (admin).
#[utoipa::path(delete, path = "/api/v1/dead-letters/{id}", tag = "fleet",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn purge(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let letter = own_letter(&state, &caller, &id).await?;
    state
        .operator(&caller)
        .purge(Some(std::slice::from_ref(&letter.id)), caller.workspace())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub actor: Option<String>,
    /// e.g. `run.cancel`, `token.create`.
    pub action: Option<String>,
    /// Entries older than this entry id (the previous page's last).
    pub before: Option<String>,
    /// Default 100, at most 1000.
    pub limit: Option<i64>,
}

/// The workspace's audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "fleet", params(AuditParams),
    responses((status = 200, body = Vec<Object>)), security(("bearer" = [])))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    caller.require(TokenScope::Admin)?;
    let before = match p.before.as_deref().map(ObjectId::parse_str) {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return Err(Problem::invalid(
                "the query is invalid",
                &[harmonia_shared::model::FieldError {
                    path: "before".into(),
                    message: "not an audit entry id".into(),
                }],
            ));
        }
        None => None,
    };
    let q = AuditQuery {
        workspace: Some(caller.workspace().to_owned()),
        actor: p.actor,
        action: p.action,
        before,
        limit: p.limit.unwrap_or(100),
    };
    let entries = state.store.audit().find(&q).await?;
    Ok(Json(entries.iter().map(plain).collect()))
}

/// The process is up (no dependency checked).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Redis and MongoDB answer: ready for traffic.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = String), (status = 503, body = Problem, content_type = "application/problem+json")))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> ApiResult<&'static str> {
    let (redis, mongo) = tokio::join!(state.queue.ping(), state.store.hello());
    let unready = |what: &str, e: &dyn std::fmt::Display| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} does not answer: {e}"),
        )
    };
    redis.map_err(|e| unready("Redis", &e))?;
    mongo.map_err(|e| unready("MongoDB", &e))?;
    Ok("ready")
}
