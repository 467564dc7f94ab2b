//! The runs list (the API's filters, counts by status, paging) and the run page (the DAG, live).

use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use harmonia_shared::model::{FieldError, RunStatus, RunTask, TaskStatus, TokenScope, WorkflowRun};
use mongodb::bson::DateTime;

use super::dag::{self, MAX_DRAWN, NODE_H, NODE_W};
use super::page::{self, Chrome, PageResult, human_ms};
use super::session::Viewer;
use crate::control;
use crate::gateway::AppState;
use crate::gateway::views::RunSummary;
use crate::listing::ListParams;

/// The filter form's values as typed (empty strings for unset fields).
#[derive(Debug, Default)]
pub struct Filters {
    pub q: String,
    pub status: String,
    pub project: String,
    pub tag: String,
    pub task_type: String,
    pub created_by: String,
    pub since: String,
    pub until: String,
    pub sort: String,
    pub order: String,
    /// Runs a page, when the query set it (kept across pages).
    pub limit: String,
}

impl Filters {
    fn from(p: &ListParams) -> Self {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Self {
            q: s(&p.q),
            status: s(&p.status),
            project: s(&p.project),
            tag: s(&p.tag),
            task_type: s(&p.task_type),
            created_by: s(&p.created_by),
            since: s(&p.since),
            until: s(&p.until),
            sort: s(&p.sort),
            order: s(&p.order),
            limit: p.limit.map(|l| l.to_string()).unwrap_or_default(),
        }
    }

    /// `/runs?...` with these filters, `status` replaced and `cursor` added.
    fn href(&self, status: Option<&str>, cursor: Option<&str>) -> String {
        let pairs = [
            ("q", self.q.as_str()),
            ("status", status.unwrap_or(&self.status)),
            ("project", &self.project),
            ("tag", &self.tag),
            ("task_type", &self.task_type),
            ("created_by", &self.created_by),
            ("since", &self.since),
            ("until", &self.until),
            ("sort", &self.sort),
            ("order", &self.order),
            ("limit", &self.limit),
            ("cursor", cursor.unwrap_or("")),
        ];
        let query: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
            .collect();
        if query.is_empty() {
            "/runs".into()
        } else {
            format!("/runs?{}", query.join("&"))
        }
    }
}

/// A form leaves unset fields empty; the API's filters want them absent. A bare date
/// (`2026-11-24`, from a date picker) means that whole day: `since` its start, `until` its end.
fn cleaned(mut p: ListParams) -> ListParams {
    for f in [
        &mut p.q,
        &mut p.status,
        &mut p.project,
        &mut p.tag,
        &mut p.task_type,
        &mut p.created_by,
        &mut p.since,
        &mut p.until,
        &mut p.sort,
        &mut p.order,
        &mut p.cursor,
    ] {
        if f.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *f = None;
        }
    }
    p.since = p.since.map(|d| day_bound(d, 0));
    p.until = p.until.map(|d| day_bound(d, 1));
    p
}

fn day_bound(value: String, days_after: i64) -> String {
    let is_date = value.len() == 10 && value.as_bytes()[4] == b'-' && value.as_bytes()[7] == b'-';
    match DateTime::parse_rfc3339_str(format!("{value}T00:00:00Z")) {
        Ok(start) if is_date => {
            DateTime::from_millis(start.timestamp_millis() + days_after * 86_400_000)
                .try_to_rfc3339_string()
                .unwrap_or(value)
        }
        _ => value,
    }
}

#[derive(Debug)]
pub struct CountChip {
    pub status: &'static str,
    pub count: u64,
    pub href: String,
    pub selected: bool,
}

#[derive(Debug)]
pub struct RunRow {
    pub id: String,
    pub name: String,
    pub status: &'static str,
    pub project: String,
    pub succeeded: u32,
    pub task_count: u32,
    pub failed: u32,
    pub created_at: String,
    pub duration: String,
    pub created_by: String,
    pub tags: String,
}

impl From<&WorkflowRun> for RunRow {
    fn from(r: &WorkflowRun) -> Self {
        Self {
            id: r.id.to_hex(),
            name: r.name.clone(),
            status: r.status.as_str(),
            project: r.project.clone(),
            succeeded: r.counts.succeeded,
            task_count: r.task_count,
            failed: r.counts.failed,
            created_at: page::when(Some(r.created_at)),
            duration: r.duration_ms.map(human_ms).unwrap_or_default(),
            created_by: r.created_by.clone(),
            tags: r.tags.join(", "),
        }
    }
}

const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

#[derive(Debug, Template)]
#[template(path = "runs.html")]
pub struct RunsPage {
    pub chrome: Chrome,
    pub counts: Vec<CountChip>,
    pub f: Filters,
    pub statuses: [&'static str; 5],
    pub errors: Vec<FieldError>,
    pub runs: Vec<RunRow>,
    pub next: Option<String>,
}

/// `GET /runs`: the workspace's runs, filtered like `GET /api/v1/runs`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Query(params): Query<ListParams>,
) -> PageResult {
    let params = cleaned(params);
    let f = Filters::from(&params);
    let workspace = viewer.token.workspace.clone();
    let by_status = state.store.runs().count_by_status_in(&workspace).await?;
    let counts = STATUSES
        .iter()
        .map(|&s| CountChip {
            status: s,
            count: by_status
                .iter()
                .find(|(st, _)| st.as_str() == s)
                .map_or(0, |(_, n)| *n),
            href: f.href(Some(if f.status == s { "" } else { s }), None),
            selected: f.status == s,
        })
        .collect();
    let (runs, next, errors) = match params.query(Some(workspace)) {
        Err(errors) => (Vec::new(), None, errors),
        Ok(query) => match state.store.runs().list(&query).await? {
            Ok(page) => (
                page.runs.iter().map(RunRow::from).collect(),
                page.next.map(|c| f.href(None, Some(&c))),
                Vec::new(),
            ),
            Err(e) => (
                Vec::new(),
                None,
                vec![FieldError {
                    path: "cursor".into(),
                    message: e.to_string(),
                }],
            ),
        },
    };
    Ok(page::render(&RunsPage {
        chrome: Chrome::new(&viewer, "runs"),
        counts,
        f,
        statuses: STATUSES,
        errors,
        runs,
        next,
    }))
}

#[derive(Debug)]
pub struct GraphNode {
    pub node_id: String,
    pub label: String,
    pub task_type: String,
    pub status: &'static str,
    pub progress: String,
    pub x: u32,
    pub y: u32,
    pub bar: u32,
}

#[derive(Debug)]
pub struct Graph {
    pub width: u32,
    pub height: u32,
    pub edges: Vec<String>,
    pub nodes: Vec<GraphNode>,
}

/// Where each layer box starts after the previous (`run.html` draws them 176 wide).
const LAYER_STEP: u32 = 188;

/// One layer of a DAG too large to draw node by node.
#[derive(Debug, Default)]
pub struct LayerBox {
    pub index: usize,
    pub x: u32,
    pub total: u32,
    pub succeeded: u32,
    pub running: u32,
    pub queued: u32,
    pub failed: u32,
    pub cancelled: u32,
}

#[derive(Debug)]
pub struct TaskRow {
    pub node_id: String,
    pub task_type: String,
    pub status: &'static str,
    pub progress: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub worker: String,
    pub duration: String,
}

/// `stage 40%`, or nothing before the first report.
pub fn progress_text(t: &RunTask) -> String {
    match (&t.progress, t.status) {
        (_, TaskStatus::Succeeded) => "100%".into(),
        (Some(p), _) if p.stage.is_empty() => format!("{:.0}%", p.percent),
        (Some(p), _) => format!("{} {:.0}%", p.stage, p.percent),
        (None, _) => String::new(),
    }
}

impl From<&RunTask> for TaskRow {
    fn from(t: &RunTask) -> Self {
        Self {
            node_id: t.node_id.clone(),
            task_type: t.task_type.clone(),
            status: t.status.as_str(),
            progress: progress_text(t),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            worker: t.worker_id.clone().unwrap_or_default(),
            duration: t.duration_ms.map(human_ms).unwrap_or_default(),
        }
    }
}

fn short(id: &str) -> String {
    if id.chars().count() > 22 {
        format!("{}…", id.chars().take(21).collect::<String>())
    } else {
        id.to_owned()
    }
}

fn dag_nodes(tasks: &[RunTask]) -> Vec<dag::Node<'_>> {
    tasks
        .iter()
        .map(|t| dag::Node {
            id: &t.node_id,
            upstream: &t.upstream_node_ids,
        })
        .collect()
}

fn graph(tasks: &[RunTask]) -> Graph {
    let nodes = dag_nodes(tasks);
    let layout = dag::layout(&nodes);
    let nodes = layout
        .nodes
        .iter()
        .map(|p| {
            let t = &tasks[p.index];
            let percent = match (t.status, &t.progress) {
                (TaskStatus::Succeeded, _) => 100.0,
                (_, Some(pr)) => f64::from(pr.percent).clamp(0.0, 100.0),
                _ => 0.0,
            };
            GraphNode {
                node_id: t.node_id.clone(),
                label: short(&t.node_id),
                task_type: t.task_type.clone(),
                status: t.status.as_str(),
                progress: progress_text(t),
                x: p.x,
                y: p.y,
                bar: (f64::from(NODE_W) * percent / 100.0).round() as u32,
            }
        })
        .collect();
    Graph {
        width: layout.width,
        height: layout.height,
        edges: layout.edges.into_iter().map(|e| e.path).collect(),
        nodes,
    }
}

fn layer_boxes(tasks: &[RunTask]) -> Vec<LayerBox> {
    let nodes = dag_nodes(tasks);
    let layer_of = dag::layers(&nodes);
    let count = layer_of.iter().max().map_or(0, |m| m + 1);
    let mut boxes: Vec<LayerBox> = (0..count)
        .map(|i| LayerBox {
            index: i + 1,
            x: 8 + i as u32 * LAYER_STEP,
            ..LayerBox::default()
        })
        .collect();
    for (t, &l) in tasks.iter().zip(&layer_of) {
        let b = &mut boxes[l];
        b.total += 1;
        match t.status {
            TaskStatus::Succeeded => b.succeeded += 1,
            TaskStatus::Running => b.running += 1,
            TaskStatus::Pending | TaskStatus::Queued => b.queued += 1,
            TaskStatus::Failed => b.failed += 1,
            TaskStatus::Cancelled | TaskStatus::Skipped => b.cancelled += 1,
        }
    }
    boxes
}

#[derive(Debug, Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub chrome: Chrome,
    pub run: RunSummary,
    pub duration: String,
    pub live: bool,
    pub can_write: bool,
    pub graph: Option<Graph>,
    pub node_w: u32,
    pub node_h: u32,
    pub layers: Vec<LayerBox>,
    pub layers_width: u32,
    pub tasks: Vec<TaskRow>,
    pub row_actions: bool,
}

/// `GET /runs/{id}`: the run, its DAG and its tasks; the page follows the run live.
pub async fn run(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let began = Instant::now();
    let caller = viewer.caller();
    caller.require(TokenScope::RunsRead)?;
    let run_id = control::parse_run_id(&id)?;
    let (run, tasks) = state.store.run_with_tasks(run_id).await?.unzip();
    let run = caller.own(run, &id)?;
    let mut tasks = tasks.unwrap_or_default();
    let read = began.elapsed();
    tasks.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let drawn = tasks.len() <= MAX_DRAWN;
    let layers = if drawn {
        Vec::new()
    } else {
        layer_boxes(&tasks)
    };
    let can_write = viewer.can(TokenScope::RunsWrite);
    let page = RunPage {
        chrome: Chrome::new(&viewer, "runs"),
        duration: run_duration(&run),
        live: !run.status.is_terminal(),
        can_write,
        graph: drawn.then(|| graph(&tasks)),
        node_w: NODE_W,
        node_h: NODE_H,
        layers_width: 16 + layers.len() as u32 * LAYER_STEP,
        layers,
        tasks: tasks.iter().map(TaskRow::from).collect(),
        row_actions: can_write && drawn,
        run: RunSummary::from(&run),
    };
    let mut res = page::render(&page);
    // How long the server took, for the browser's network panel and the benchmark.
    let timing = format!(
        "db;dur={:.1}, total;dur={:.1}",
        read.as_secs_f64() * 1000.0,
        began.elapsed().as_secs_f64() * 1000.0
    );
    if let Ok(v) = HeaderValue::from_str(&timing) {
        res.headers_mut().insert("server-timing", v);
    }
    Ok(res)
}

/// Finished: how long it took; running: how long so far.
fn run_duration(run: &WorkflowRun) -> String {
    match (run.duration_ms, run.status) {
        (Some(ms), _) => human_ms(ms),
        (None, RunStatus::Queued) => "not started".into(),
        (None, _) => {
            let start = run.started_at.unwrap_or(run.created_at);
            format!(
                "{} so far",
                human_ms(DateTime::now().timestamp_millis() - start.timestamp_millis())
            )
        }
    }
}
