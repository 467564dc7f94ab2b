//! The dashboard's actions: each checks the session's CSRF token, then the token's scope and
//! workspace exactly as the API does, acts through the same audited operator, and redirects
//! back with a notice saying what it did (or why it could not).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};

use super::page::{PageError, PageResult};
use super::session::{CsrfForm, Notice, Viewer};
use crate::gateway::AppState;
use crate::gateway::auth::Caller;
use crate::gateway::problem::Problem;
use crate::gateway::{fleet, runs};

/// `1 task`, `3 tasks`.
fn tasks(n: impl Into<u64>) -> String {
    match n.into() {
        1 => "1 task".into(),
        n => format!("{n} tasks"),
    }
}

fn run_page(id: &str) -> String {
    format!("/runs/{id}")
}

fn task_page(id: &str, node: &str) -> String {
    format!("/runs/{id}/tasks/{}", urlencoding::encode(node))
}

/// Checks the form's CSRF token, then does `action` as the viewer's token and redirects to
/// `to` (or where the action says) with what it did. Nothing runs when the CSRF check fails. A
/// refusal the user can act on (a conflict, invalid input) comes back as a notice on `to`;
/// anything else (403, 404, 5xx) is an error page.
async fn act<F, Fut>(viewer: &Viewer, form: &CsrfForm, to: &str, action: F) -> PageResult
where
    F: FnOnce(Caller) -> Fut,
    Fut: Future<Output = Result<(Notice, Option<String>), Problem>>,
{
    viewer.check_csrf(&form.csrf)?;
    match action(viewer.caller()).await {
        Ok((notice, elsewhere)) => Ok(notice.redirect(elsewhere.as_deref().unwrap_or(to))),
        Err(p) if p.status == 409 || p.status == 422 => {
            Ok(Notice::failed(format!("Not done: {}", p.detail)).redirect(to))
        }
        Err(p) => Err(PageError(p)),
    }
}

fn cancelled(now: u64, running: usize, what: &str) -> Notice {
    Notice::done(format!(
        "Cancelled {}{what}; told {} running to stop.",
        tasks(now),
        tasks(running as u64)
    ))
}

pub async fn cancel_run(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(&viewer, &form, &run_page(&id), |caller| async move {
        runs::writable(&state, &caller, &id).await?;
        let (now, running) = state.operator(&caller).cancel_run(&id).await?;
        Ok((cancelled(now, running, ""), None))
    })
    .await
}

pub async fn retry_run(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(&viewer, &form, &run_page(&id), |caller| async move {
        runs::writable(&state, &caller, &id).await?;
        let new = state.operator(&caller).retry_run(&id).await?.to_hex();
        let notice = Notice::done(format!("Started run {new}, a retry of {id}."));
        Ok((notice, Some(run_page(&new))))
    })
    .await
}

pub async fn cancel_task(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path((id, node)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(
        &viewer,
        &form,
        &task_page(&id, &node),
        |caller| async move {
            runs::writable(&state, &caller, &id).await?;
            let (now, running) = state.operator(&caller).cancel_task(&id, &node).await?;
            let what = format!(" ({node} and what depends on it)");
            Ok((cancelled(now, running, &what), None))
        },
    )
    .await
}

pub async fn retry_task(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path((id, node)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(
        &viewer,
        &form,
        &task_page(&id, &node),
        |caller| async move {
            runs::writable(&state, &caller, &id).await?;
            let reset = state.operator(&caller).retry_task(&id, &node).await?;
            Ok((
                Notice::done(format!("Queued again: {}.", reset.join(", "))),
                None,
            ))
        },
    )
    .await
}

pub async fn replay(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(&viewer, &form, "/dead-letters", |caller| async move {
        let letter = fleet::own_letter(&state, &caller, &id).await?;
        let (run_id, reset) = state.operator(&caller).replay(&letter).await?;
        let notice = Notice::done(format!(
            "Replayed dead letter {id}: run {run_id} queues {} again.",
            reset.join(", ")
        ));
        Ok((notice, None))
    })
    .await
}

pub async fn purge(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> PageResult {
    act(&viewer, &form, "/dead-letters", |caller| async move {
        let letter = fleet::own_letter(&state, &caller, &id).await?;
        let only = std::slice::from_ref(&letter.id);
        state
            .operator(&caller)
            .purge(Some(only), caller.workspace())
            .await?;
        Ok((Notice::done(format!("Purged dead letter {id}.")), None))
    })
    .await
}
