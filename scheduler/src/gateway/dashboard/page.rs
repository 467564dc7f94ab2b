//! The pages' templates (askama, compiled in; `scheduler/templates/`), what every page shares,
//! and errors as HTML pages.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use harmonia_shared::model::TokenScope;

use super::session::{Notice, Viewer};
use crate::gateway::problem::Problem;

/// The frame around every page: who is signed in, the CSRF token for its forms, the nav.
#[derive(Debug, Clone)]
pub struct Chrome {
    pub workspace: String,
    pub token_name: String,
    pub csrf: String,
    pub admin: bool,
    pub active: &'static str,
    pub notice: Option<Notice>,
}

impl Chrome {
    pub fn new(viewer: &Viewer, active: &'static str) -> Self {
        Self {
            workspace: viewer.token.workspace.clone(),
            token_name: viewer.token.name.clone(),
            csrf: viewer.session.csrf.clone(),
            admin: viewer.can(TokenScope::Admin),
            active,
            notice: viewer.notice.clone(),
        }
    }
}

/// Renders a template, or the error page if it cannot (a bug: every field is checked by the
/// compiler, so only a formatting failure gets here).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => PageError::from(Problem::internal(&e)).into_response(),
    }
}

#[derive(Debug, Template)]
#[template(path = "login.html")]
pub struct Login {
    pub next: String,
    pub csrf: String,
    pub error: Option<String>,
}

#[derive(Debug, Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    detail: &'a str,
}

/// An error shown as a page: the status and detail of the API's problem for the same failure.
#[derive(Debug)]
pub struct PageError(pub Problem);

impl PageError {
    pub fn forbidden(detail: &str) -> Self {
        Self(Problem::new(StatusCode::FORBIDDEN, detail))
    }
}

impl<E: Into<Problem>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let p = self.0;
        let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut detail = p.detail.clone();
        for e in &p.errors {
            detail.push_str(&format!("; {}: {}", e.path, e.message));
        }
        let page = ErrorPage {
            title: &p.title,
            detail: &detail,
        };
        let html = page.render().unwrap_or(detail);
        (status, Html(html)).into_response()
    }
}

pub type PageResult = Result<Response, PageError>;

/// `1.2 s`, `3 min 4 s`, `2 h 5 min`: a duration for people.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `812 B`, `3.4 MiB`...
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A stored time as RFC 3339 (UTC), or an empty string.
pub fn when(t: Option<mongodb::bson::DateTime>) -> String {
    t.and_then(|t| t.try_to_rfc3339_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_people_write_them() {
        assert_eq!(human_ms(812), "812 ms");
        assert_eq!(human_ms(1_250), "1.2 s");
        assert_eq!(human_ms(184_000), "3 min 4 s");
        assert_eq!(human_ms(7_500_000), "2 h 5 min");
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 400_000), "3.4 MiB");
    }
}
