//! `/api/v1/projects`: the projects of the token's workspace; an admin token creates them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use harmonia_shared::model::TokenScope;
use serde::Deserialize;

use super::AppState;
use super::auth::Caller;
use super::problem::ApiResult;
use super::views::plain;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1-64 of a-z, 0-9, '-', '_', '.'; what submissions name.
    pub slug: String,
    /// Display name (the slug when absent).
    pub name: Option<String>,
}

/// The workspace's projects.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    responses((status = 200, body = Vec<Object>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    caller.require(TokenScope::RunsRead)?;
    let projects = state
        .store
        .projects()
        .list(Some(caller.workspace()))
        .await?;
    Ok(Json(projects.iter().map(plain).collect()))
}

/// Create a project in the token's workspace (admin). 201 when created, 200 when it existed.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = Object), (status = 200, body = Object),
        (status = 422, body = super::problem::Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Json(new): Json<NewProject>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require(TokenScope::Admin)?;
    if let Err(message) = harmonia_shared::model::workspace::check_slug(&new.slug) {
        let error = harmonia_shared::model::FieldError {
            path: "slug".into(),
            message,
        };
        return Err(super::problem::Problem::invalid(
            "the project is invalid",
            &[error],
        ));
    }
    let name = new.name.as_deref().unwrap_or(&new.slug);
    let created = state
        .operator(&caller)
        .create_project(caller.workspace(), &new.slug, name)
        .await?;
    let project = state
        .store
        .projects()
        .get(caller.workspace(), &new.slug)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(project.as_ref().map(plain).unwrap_or_default()),
    ))
}
