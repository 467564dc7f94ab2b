//! RFC 9457 problem details: every error the gateway answers, as `application/problem+json`,
//! with the same field paths as submission rejections in `errors`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use harmonia_shared::model::FieldError;
use serde::Serialize;

use crate::control::ControlError;

/// One problem with one field of the request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// JSON path of the field (`tasks[2].depends_on[0]`), or a query parameter's name.
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` when its status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// Seconds to wait before trying again (429).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after_s: None,
        }
    }

    /// 422 with one entry per field error.
    pub fn invalid(detail: impl Into<String>, errors: &[FieldError]) -> Self {
        let mut p = Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail);
        p.kind = "https://harmonia.invalid/problems/invalid-request".into();
        p.errors = errors
            .iter()
            .map(|e| FieldProblem {
                path: e.path.clone(),
                message: e.message.clone(),
            })
            .collect();
        p
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }

    /// A failure of ours: logged in full, answered without internals.
    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!("gateway request failed: {err:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request failed inside Harmonia; see the gateway's log",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after_s;
        let mut response = (status, axum::Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl From<ControlError> for Problem {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => Self::not_found(m),
            ControlError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            other => Self::internal(&other),
        }
    }
}

impl From<harmonia_shared::store::StoreError> for Problem {
    fn from(e: harmonia_shared::store::StoreError) -> Self {
        if e.is_transient() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "MongoDB does not answer; try again",
            );
        }
        Self::internal(&e)
    }
}

impl From<harmonia_shared::queue::QueueError> for Problem {
    fn from(e: harmonia_shared::queue::QueueError) -> Self {
        use harmonia_shared::queue::QueueError;
        match &e {
            QueueError::NoReply { .. } => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "{e}; the submission stays queued: send it again with the same Idempotency-Key to learn its outcome"
                ),
            ),
            _ if e.is_unreachable() => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis does not answer; try again",
            ),
            _ => Self::internal(&e),
        }
    }
}

impl From<harmonia_shared::storage::StorageError> for Problem {
    fn from(e: harmonia_shared::storage::StorageError) -> Self {
        Self::internal(&e)
    }
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, Problem>;
