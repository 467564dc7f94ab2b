//! Bearer tokens: who is calling, for which workspace, with which scopes. Unknown, malformed,
//! revoked: 401. Known but lacking the scope: 403. Each token is rate limited on its own.
//! A dashboard session cookie stands in for the token on GET and HEAD only (a download link, the
//! live events of a run page): those change nothing, so they need no CSRF token, and every
//! write still needs `Authorization` or a dashboard form with its CSRF token.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::request::Parts;
use governor::clock::{Clock, DefaultClock};
use harmonia_shared::model::{ApiToken, Session, TokenScope, WorkflowRun, session, token};
use harmonia_shared::store::StoreError;

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

/// The session whose cookie secret is `secret` and its token, while both are valid: revoking
/// the token ends its sessions at once.
pub async fn signed_in(
    state: &AppState,
    secret: &str,
) -> Result<Option<(Session, ApiToken)>, StoreError> {
    if !session::well_formed(secret) {
        return Ok(None);
    }
    let Some(session) = state.store.sessions().get(secret).await? else {
        return Ok(None);
    };
    let token = state.store.tokens().get(&session.token_id).await?;
    Ok(token
        .filter(|t| t.revoked_at.is_none())
        .map(|t| (session, t)))
}

/// The token of a safe request's dashboard session cookie, if it has a valid one.
async fn from_session(parts: &Parts, state: &AppState) -> Result<Option<ApiToken>, Problem> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Ok(None);
    }
    let jar = axum_extra::extract::cookie::CookieJar::from_headers(&parts.headers);
    let Some(cookie) = jar.get(super::dashboard::session::COOKIE) else {
        return Ok(None);
    };
    Ok(signed_in(state, cookie.value()).await?.map(|(_, t)| t))
}

/// The token `presented` (`hm_<id>_<secret>`) names, if it exists, is not revoked and the
/// secret is its own: the one check behind bearer requests and dashboard sign-in.
pub async fn verify(state: &AppState, presented: &str) -> Result<Option<ApiToken>, StoreError> {
    let Some((id, secret)) = token::split(presented.trim()) else {
        return Ok(None);
    };
    let found = state.store.tokens().get(id).await?;
    Ok(found.filter(|t| t.secret_matches(secret)))
}

async fn from_bearer(parts: &Parts, state: &AppState) -> Result<ApiToken, Problem> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("send 'Authorization: Bearer hm_<id>_<secret>'"))?;
    let presented = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <token>'"))?;
    if token::split(presented.trim()).is_none() {
        return Err(unauthorized("not a Harmonia token"));
    }
    verify(state, presented)
        .await?
        .ok_or_else(|| unauthorized("unknown or revoked token"))
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
        let session = if bearer {
            None
        } else {
            from_session(parts, state).await?
        };
        let token = match session {
            Some(token) => token,
            None => from_bearer(parts, state).await?,
        };
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
