//! Signing in to the dashboard: a token is exchanged once for a session cookie (HttpOnly,
//! SameSite=Strict), and every page is read as that token. Every action also needs the
//! session's CSRF token, which the pages put in their forms; signing in itself is guarded by a
//! double-submit cookie, since there is no session yet.

use std::sync::Arc;

use axum::Form;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use harmonia_shared::model::{ApiToken, Session, TokenScope, session, token};
use serde::Deserialize;

use super::page::{self, PageError};
use crate::gateway::AppState;
use crate::gateway::auth::{self, Caller};

pub const COOKIE: &str = "hm_session";
const LOGIN_CSRF_COOKIE: &str = "hm_login_csrf";
const NOTICE_COOKIE: &str = "hm_notice";

/// A signed-in browser: the token it signed in with and its session.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub token: ApiToken,
    pub session: Session,
    /// What the last action said, shown once on the next page.
    pub notice: Option<Notice>,
}

/// The outcome of an action, carried across its redirect in a cookie (never in the URL, so no
/// link can make the dashboard say something it did not).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

impl Notice {
    pub fn done(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            error: false,
        }
    }

    pub fn failed(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            error: true,
        }
    }

    fn encode(&self) -> String {
        let kind = if self.error { "error" } else { "ok" };
        format!("{kind}:{}", urlencoding::encode(&self.text))
    }

    fn decode(value: &str) -> Option<Self> {
        let (kind, text) = value.split_once(':')?;
        let text = urlencoding::decode(text).ok()?.into_owned();
        Some(Self {
            text,
            error: kind == "error",
        })
    }

    /// Redirects to `to`, showing this notice there.
    pub fn redirect(self, to: &str) -> Response {
        let cookie = Cookie::build((NOTICE_COOKIE, self.encode()))
            .http_only(true)
            .same_site(SameSite::Strict)
            .path("/")
            .build();
        (CookieJar::new().add(cookie), Redirect::to(to)).into_response()
    }
}

/// Hands a pending notice to the page and clears it once a page has shown it.
pub async fn flash(mut req: Request, next: middleware::Next) -> Response {
    let notice = CookieJar::from_headers(req.headers())
        .get(NOTICE_COOKIE)
        .and_then(|c| Notice::decode(c.value()));
    let had = notice.is_some();
    if let Some(n) = notice {
        req.extensions_mut().insert(n);
    }
    let mut res = next.run(req).await;
    if had && res.status().is_success() {
        res.headers_mut().append(
            header::SET_COOKIE,
            HeaderValue::from_static("hm_notice=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        );
    }
    res
}

impl Viewer {
    pub fn caller(&self) -> Caller {
        Caller {
            token: self.token.clone(),
        }
    }

    pub fn can(&self, scope: TokenScope) -> bool {
        self.token.allows(scope)
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, presented: &str) -> Result<(), PageError> {
        if same_secret(presented, &self.session.csrf) {
            Ok(())
        } else {
            Err(PageError::forbidden(
                "this form is stale or did not come from the dashboard (CSRF check failed); reload the page and try again",
            ))
        }
    }
}

/// Compares digests, not the secrets themselves, so timing tells nothing about a prefix.
fn same_secret(a: &str, b: &str) -> bool {
    !a.is_empty() && token::hash_secret(a) == token::hash_secret(b)
}

impl FromRequestParts<Arc<AppState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        let found = match jar.get(COOKIE) {
            Some(c) => auth::signed_in(state, c.value())
                .await
                .map_err(|p| PageError::from(p).into_response())?,
            None => None,
        };
        match found {
            Some((session, token)) => Ok(Viewer {
                token,
                session,
                notice: parts.extensions.get::<Notice>().cloned(),
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let to = format!("/login?next={}", urlencoding::encode(&next));
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Next {
    pub next: Option<String>,
    pub error: Option<String>,
}

/// Only paths of this site: `next` must not send a signed-in user elsewhere.
fn local(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/runs".to_owned(),
    }
}

pub async fn login_page(jar: CookieJar, Query(q): Query<Next>) -> Response {
    let mut csrf = [0u8; 16];
    rand::fill(&mut csrf);
    let csrf = hex::encode(csrf);
    let cookie = Cookie::build((LOGIN_CSRF_COOKIE, csrf.clone()))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/login")
        .build();
    let html = page::render(&page::Login {
        next: local(q.next.as_deref()),
        csrf,
        error: q.error,
    });
    (jar.add(cookie), html).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub csrf: String,
    pub next: Option<String>,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Result<Response, PageError> {
    let expected = jar.get(LOGIN_CSRF_COOKIE).map(|c| c.value().to_owned());
    if !expected.is_some_and(|e| same_secret(&form.csrf, &e)) {
        return Err(PageError::forbidden(
            "the sign-in form is stale (CSRF check failed); open /login again",
        ));
    }
    let next = local(form.next.as_deref());
    let again = |why: &str| {
        let to = format!(
            "/login?next={}&error={}",
            urlencoding::encode(&next),
            urlencoding::encode(why)
        );
        Ok(Redirect::to(&to).into_response())
    };
    if token::split(form.token.trim()).is_none() {
        return again("that is not a Harmonia token (hm_<id>_<secret>)");
    }
    let Some(token) = auth::verify(&state, &form.token).await? else {
        return again("unknown or revoked token");
    };
    if !token.allows(TokenScope::RunsRead) {
        return again("this token lacks the 'runs:read' scope the dashboard needs");
    }
    let new = session::start(&token.id, state.session_lifetime);
    state.store.sessions().insert(&new.session).await?;
    let cookie = Cookie::build((COOKIE, new.secret))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.cookie_secure)
        .path("/")
        .build();
    let jar = jar
        .remove(Cookie::build(LOGIN_CSRF_COOKIE).path("/login"))
        .add(cookie);
    tracing::info!(token = %token.id, "dashboard sign-in");
    Ok((jar, Redirect::to(&next)).into_response())
}

/// A form that only carries the CSRF token (every action's). A missing token is refused like a
/// wrong one, with the same page.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    viewer.check_csrf(&form.csrf)?;
    if let Some(c) = jar.get(COOKIE) {
        state.store.sessions().delete(c.value()).await?;
    }
    let jar = jar.remove(Cookie::build(COOKIE).path("/"));
    Ok((jar, Redirect::to("/login")).into_response())
}
