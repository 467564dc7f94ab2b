//! `/api/v1/runs`: submit (through the Redis submissions stream, like any client), list, read,
//! cancel and retry.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use harmonia_shared::model::{FieldError, TokenScope};
use harmonia_shared::queue::Reply;
use harmonia_shared::submission::{self, Refusal};
use mongodb::bson::oid::ObjectId;
use serde_json::Value;

use super::AppState;
use super::auth::Caller;
use super::problem::{ApiResult, Problem};
use super::views::{Accepted, ActionResult, RunDetail, RunPage, RunSummary, plain};
use crate::control;
use crate::listing::ListParams;

fn invalid(path: &str, message: impl Into<String>) -> Problem {
    Problem::invalid(
        "the submission is invalid",
        &[FieldError {
            path: path.into(),
            message: message.into(),
        }],
    )
}

/// The body as a submission object: `workspace` defaults to the token's (and may not name
/// another), `request_id` comes from `Idempotency-Key`, `created_by` defaults to the token.
fn prepare(caller: &Caller, headers: &HeaderMap, body: &[u8]) -> ApiResult<(String, Value)> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| invalid("$", format!("not valid JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| invalid("$", "a submission is a JSON object"))?;
    match obj.get("workspace") {
        None => {
            obj.insert("workspace".into(), caller.workspace().into());
        }
        Some(Value::String(w)) if w == caller.workspace() => {}
        Some(_) => {
            return Err(invalid(
                "workspace",
                format!(
                    "this token submits to workspace '{}' only",
                    caller.workspace()
                ),
            ));
        }
    }
    obj.entry("created_by")
        .or_insert_with(|| caller.actor().into());
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| invalid("Idempotency-Key", "not a visible ASCII string"))?;
    let request_id = match (key, obj.get("request_id")) {
        (Some(k), Some(Value::String(r))) if &k != r => {
            return Err(invalid(
                "request_id",
                "differs from the Idempotency-Key header; send one or make them equal",
            ));
        }
        (Some(k), _) => k,
        (None, Some(Value::String(r))) => r.clone(),
        (None, Some(_)) => return Err(invalid("request_id", "expected a string")),
        (None, None) => format!("req-{}", ObjectId::new().to_hex()),
    };
    obj.insert("request_id".into(), request_id.clone().into());
    Ok((request_id, value))
}

/// Submit a workflow run.
///
/// The body is the submission JSON of the Redis-fronted API (docs/protocol.md). It is checked
/// here, then XADDed to the submissions stream, and the scheduler's reply is returned.
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs",
    request_body(content = Object, description = "a submission (docs/protocol.md)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "becomes the submission's request_id: resending returns the same run")),
    responses(
        (status = 201, body = Accepted),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 504, body = Problem, description = "no scheduler replied in time; the submission stays queued"),
    ),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    caller.require(TokenScope::RunsWrite)?;
    let (request_id, value) = prepare(&caller, &headers, &body)?;
    let payload = value.to_string();
    // The same checks the scheduler makes, so bad input is answered without a round trip.
    if let Err(refusal) = submission::parse(payload.as_bytes(), state.max_submission_bytes) {
        let errors = match refusal {
            Refusal::Anonymous(e) | Refusal::Rejected { errors: e, .. } => e,
        };
        return Err(Problem::invalid("the submission is invalid", &errors));
    }
    let reply = state
        .queue
        .submit_and_wait(&request_id, &payload, state.submit_timeout)
        .await?;
    let reply: Reply = serde_json::from_str(&reply).map_err(|e| Problem::internal(&e))?;
    match reply {
        Reply::Accepted { run_id } => {
            let id = ObjectId::parse_str(&run_id).map_err(|e| Problem::internal(&e))?;
            state.operator(&caller).submitted(id, &request_id).await?;
            Ok((StatusCode::CREATED, Json(Accepted { run_id, request_id })))
        }
        Reply::Rejected { errors, .. } => Err(Problem::invalid(
            "the scheduler rejected the submission",
            &errors,
        )),
    }
}

/// List runs of the token's workspace.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(ListParams),
    responses((status = 200, body = RunPage), (status = 422, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<RunPage>> {
    caller.require(TokenScope::RunsRead)?;
    let query = params
        .query(Some(caller.workspace().to_owned()))
        .map_err(|errors| Problem::invalid("the query is invalid", &errors))?;
    let page = state
        .store
        .runs()
        .list(&query)
        .await?
        .map_err(|e| invalid("cursor", e.to_string()))?;
    Ok(Json(RunPage {
        runs: page.runs.iter().map(RunSummary::from).collect(),
        next: page.next,
    }))
}

/// A run with exact counts, its tasks (status, progress, outputs, errors) and its artifacts.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "run id")),
    responses((status = 200, body = RunDetail), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    caller.require(TokenScope::RunsRead)?;
    let run_id = control::parse_run_id(&id)?;
    let (run, tasks) = state.store.run_with_tasks(run_id).await?.unzip();
    let run = caller.own(run, &id)?;
    let tasks = tasks.unwrap_or_default();
    let artifacts = state.store.artifacts().for_run(run_id).await?;
    Ok(Json(RunDetail {
        run: RunSummary::from(&run),
        tasks: tasks.iter().map(plain).collect(),
        artifacts: artifacts.iter().map(plain).collect(),
    }))
}

/// Loads the run for a write action, as its workspace's token may see it.
pub(crate) async fn writable(state: &AppState, caller: &Caller, id: &str) -> ApiResult<()> {
    caller.require(TokenScope::RunsWrite)?;
    let run_id = control::parse_run_id(id)?;
    caller.own(state.store.runs().get(run_id).await?, id)?;
    Ok(())
}

/// Cancel every unfinished task of a run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path)),
    responses((status = 200, body = ActionResult), (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ActionResult>> {
    writable(&state, &caller, &id).await?;
    let (now, running) = state.operator(&caller).cancel_run(&id).await?;
    Ok(Json(ActionResult {
        cancelled: Some(now),
        signalled: Some(running),
        ..ActionResult::for_run(&id)
    }))
}

/// Retry a finished run as a new run.
#[utoipa::path(post, path = "/api/v1/runs/{id}/retry", tag = "runs",
    params(("id" = String, Path)),
    responses((status = 200, body = ActionResult), (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn retry_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ActionResult>> {
    writable(&state, &caller, &id).await?;
    let new = state.operator(&caller).retry_run(&id).await?;
    Ok(Json(ActionResult {
        new_run_id: Some(new.to_hex()),
        ..ActionResult::for_run(&id)
    }))
}

/// Cancel one task and what depends on it.
#[utoipa::path(post, path = "/api/v1/runs/{id}/tasks/{node}/cancel", tag = "runs",
    params(("id" = String, Path), ("node" = String, Path, description = "the task's id in the submission")),
    responses((status = 200, body = ActionResult), (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel_task(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, node)): Path<(String, String)>,
) -> ApiResult<Json<ActionResult>> {
    writable(&state, &caller, &id).await?;
    let (now, running) = state.operator(&caller).cancel_task(&id, &node).await?;
    Ok(Json(ActionResult {
        cancelled: Some(now),
        signalled: Some(running),
        ..ActionResult::for_run(&id)
    }))
}

/// Retry one finished task and its downstream subtree in place.
#[utoipa::path(post, path = "/api/v1/runs/{id}/tasks/{node}/retry", tag = "runs",
    params(("id" = String, Path), ("node" = String, Path)),
    responses((status = 200, body = ActionResult), (status = 409, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn retry_task(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((id, node)): Path<(String, String)>,
) -> ApiResult<Json<ActionResult>> {
    writable(&state, &caller, &id).await?;
    let reset = state.operator(&caller).retry_task(&id, &node).await?;
    Ok(Json(ActionResult {
        reset: Some(reset),
        ..ActionResult::for_run(&id)
    }))
}
