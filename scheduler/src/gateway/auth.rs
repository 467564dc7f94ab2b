//! Bearer tokens: who is calling, for which workspace, with which scopes. Unknown, malformed,
//! revoked: 401. Known but lacking the scope: 403. Each token is rate limited on its own.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use harmonia_shared::model::{ApiToken, TokenScope, WorkflowRun, token};

use super::AppState;
use super::problem::Problem;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: ApiToken,
}

impl Caller {
    pub fn actor(&self) -> String {
        format!("token:{}", self.token.id)
    }

    pub fn workspace(&self) -> &str {
        &self.token.workspace
    }

    pub fn require(&self, scope: TokenScope) -> Result<(), Problem> {
        if self.token.allows(scope) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!("this token lacks the '{}' scope", scope.as_str()),
            ))
        }
    }

    /// The run, if it exists and belongs to the caller's workspace: a foreign run is as absent
    /// as a missing one (404, never 403, so ids of other workspaces leak nothing).
    pub fn own(&self, run: Option<WorkflowRun>, id: &str) -> Result<WorkflowRun, Problem> {
        run.filter(|r| r.workspace == self.token.workspace)
            .ok_or_else(|| Problem::not_found(format!("no run with id {id}")))
    }
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, detail)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("send 'Authorization: Bearer hm_<id>_<secret>'"))?;
        let presented = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
        let (id, secret) =
            token::split(presented.trim()).ok_or_else(|| unauthorized("not a Harmonia token"))?;
        let token = state
            .store
            .tokens()
            .get(id)
            .await?
            .filter(|t| t.secret_matches(secret))
            .ok_or_else(|| unauthorized("unknown or revoked token"))?;
        if let Err(not_until) = state.limiter.check_key(&token.id) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("token {} is over its rate limit", token.id),
            );
            p.retry_after_s = Some(wait.as_secs().max(1));
            return Err(p);
        }
        // Throttled in the repository; off the request's path.
        let (store, touched) = (state.store.clone(), token.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.tokens().touch(&touched).await {
                tracing::debug!("recording the use of token {touched}: {e}");
            }
        });
        Ok(Caller { token })
    }
}
