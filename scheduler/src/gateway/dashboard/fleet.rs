//! Workers (resources, GPUs, models, in-flight tasks), queues (with the last hour sampled by this
//! gateway) and dead letters. Admin tokens only, as in the API; a task of another workspace
//! shows on a worker as busy, never by name.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, State};
use harmonia_shared::model::{RunTask, TokenScope, WorkerDoc, WorkerState};
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;

use super::page::{self, Chrome, PageResult, human_ms, when};
use super::sampler::{self, Sample};
use super::session::Viewer;
use crate::gateway::AppState;
use crate::gateway::fleet::{own_letter, own_letters};

/// A worker whose heartbeat is older than this is shown as silent.
const ALIVE_WITHIN: Duration = Duration::from_secs(30);

/// An in-flight task, named only if it belongs to the viewer's workspace.
#[derive(Debug, Clone)]
pub struct TaskRef {
    pub run_id: String,
    pub node_id: String,
    pub visible: bool,
}

#[derive(Debug)]
pub struct GpuRow {
    pub index: u32,
    pub name: String,
    pub memory: String,
    pub task: Option<TaskRef>,
}

#[derive(Debug)]
pub struct WorkerCard {
    pub id: String,
    pub state: &'static str,
    pub alive: bool,
    pub heartbeat_age: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started: String,
    pub cpu_slots: u32,
    pub running_tasks: u32,
    pub tasks: Vec<TaskRef>,
    pub gpus: Vec<GpuRow>,
    pub models_cached: Vec<String>,
    pub models_loaded: Vec<String>,
}

#[derive(Debug, Template)]
#[template(path = "workers.html")]
pub struct WorkersPage {
    pub chrome: Chrome,
    pub workers: Vec<WorkerCard>,
    pub live: usize,
    pub live_within_s: u64,
}

fn state_name(s: WorkerState) -> &'static str {
    match s {
        WorkerState::Running => "running",
        WorkerState::Draining => "draining",
        WorkerState::Stopped => "stopped",
    }
}

fn card(w: &WorkerDoc, tasks: &[(&RunTask, bool)]) -> WorkerCard {
    let age = DateTime::now().timestamp_millis() - w.heartbeat_at.timestamp_millis();
    let mine: Vec<(&RunTask, TaskRef)> = tasks
        .iter()
        .filter(|(t, _)| t.worker_id.as_deref() == Some(w.id.as_str()))
        .map(|(t, visible)| {
            let r = TaskRef {
                run_id: t.run_id.to_hex(),
                node_id: t.node_id.clone(),
                visible: *visible,
            };
            (*t, r)
        })
        .collect();
    let gpus = w
        .gpus
        .iter()
        .map(|g| GpuRow {
            index: g.index,
            name: g.name.clone(),
            memory: match g.memory_free_mb {
                Some(free) => format!("{} MiB ({free} MiB free)", g.memory_mb),
                None => format!("{} MiB", g.memory_mb),
            },
            task: mine
                .iter()
                .find(|(t, _)| t.gpu_indices.contains(&g.index))
                .map(|(_, r)| r.clone()),
        })
        .collect();
    WorkerCard {
        id: w.id.clone(),
        state: state_name(w.state),
        alive: w.state != WorkerState::Stopped && age <= ALIVE_WITHIN.as_millis() as i64,
        heartbeat_age: human_ms(age),
        host: w.host.clone(),
        pid: w.pid,
        version: w.version.clone(),
        started: when(Some(w.started_at)),
        cpu_slots: w.cpu_slots,
        running_tasks: w.running_tasks,
        tasks: mine.into_iter().map(|(_, r)| r).collect(),
        gpus,
        models_cached: w.models_cached.clone(),
        models_loaded: w.models_loaded.clone(),
    }
}

/// `GET /workers`: every worker seen in the last hour.
pub async fn workers(State(state): State<Arc<AppState>>, viewer: Viewer) -> PageResult {
    viewer.caller().require(TokenScope::Admin)?;
    let workers = state
        .store
        .workers()
        .seen_within(Duration::from_secs(3600))
        .await?;
    let ids: Vec<String> = workers.iter().map(|w| w.id.clone()).collect();
    let running = state.store.tasks().running_on(&ids).await?;
    let run_ids: HashSet<ObjectId> = running.iter().map(|t| t.run_id).collect();
    let mut workspace_of = HashMap::new();
    for id in run_ids {
        if let Some(run) = state.store.runs().get(id).await? {
            workspace_of.insert(id, run.workspace);
        }
    }
    let tasks: Vec<(&RunTask, bool)> = running
        .iter()
        .map(|t| {
            let visible = workspace_of.get(&t.run_id) == Some(&viewer.token.workspace);
            (t, visible)
        })
        .collect();
    let cards: Vec<WorkerCard> = workers.iter().map(|w| card(w, &tasks)).collect();
    Ok(page::render(&WorkersPage {
        chrome: Chrome::new(&viewer, "workers"),
        live: cards.iter().filter(|c| c.alive).count(),
        live_within_s: ALIVE_WITHIN.as_secs(),
        workers: cards,
    }))
}

#[derive(Debug)]
pub struct QueueRow {
    pub stream: String,
    pub length: u64,
    pub pending: u64,
    pub lag: String,
    pub oldest_pending: String,
    pub oldest_entry: String,
    pub consumers: u64,
    pub samples: usize,
    pub peak: u64,
    pub length_line: String,
    pub lag_line: String,
}

#[derive(Debug, Template)]
#[template(path = "queues.html")]
pub struct QueuesPage {
    pub chrome: Chrome,
    pub queues: Vec<QueueRow>,
    pub sample_s: u64,
}

fn age(ms: Option<u64>) -> String {
    ms.map(|ms| human_ms(ms as i64)).unwrap_or_default()
}

/// `GET /queues`: each stream now, and its last hour.
pub async fn queues(State(state): State<Arc<AppState>>, viewer: Viewer) -> PageResult {
    viewer.caller().require(TokenScope::Admin)?;
    let stats = crate::cli::queues::collect(&state.queue).await?;
    let queues = stats
        .iter()
        .map(|s| {
            let history: Vec<Sample> = state.history.of(&s.stream);
            // The chart ends at the value shown beside it, however old the last sample is.
            let lengths: Vec<u64> = history.iter().map(|h| h.length).chain([s.length]).collect();
            let lags: Vec<u64> = history
                .iter()
                .map(|h| h.lag)
                .chain([s.lag.unwrap_or(0)])
                .collect();
            let peak = lengths.iter().chain(&lags).copied().max().unwrap_or(0);
            QueueRow {
                stream: s.stream.clone(),
                length: s.length,
                pending: s.pending,
                lag: s.lag.map(|l| l.to_string()).unwrap_or_default(),
                oldest_pending: age(s.oldest_pending_age_ms),
                oldest_entry: age(s.oldest_entry_age_ms),
                consumers: s.consumers,
                samples: history.len(),
                peak,
                length_line: sampler::sparkline(&lengths, peak, 160, 30),
                lag_line: sampler::sparkline(&lags, peak, 160, 30),
            }
        })
        .collect();
    Ok(page::render(&QueuesPage {
        chrome: Chrome::new(&viewer, "queues"),
        queues,
        sample_s: state.sample_every.as_secs(),
    }))
}

#[derive(Debug)]
pub struct LetterRow {
    pub id: String,
    pub run_id: String,
    pub run_name: String,
    pub node_id: String,
    pub error: String,
    pub attempts: String,
}

#[derive(Debug, Template)]
#[template(path = "dead_letters.html")]
pub struct LettersPage {
    pub chrome: Chrome,
    pub letters: Vec<LetterRow>,
}

/// `GET /dead-letters`: the newest 200 letters about this workspace's runs.
pub async fn dead_letters(State(state): State<Arc<AppState>>, viewer: Viewer) -> PageResult {
    let mut letters = Vec::new();
    for (l, run) in own_letters(&state, &viewer.caller(), 200).await? {
        let field = |k: &str| match &l.payload[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        letters.push(LetterRow {
            id: l.id.clone(),
            run_id: run.id.to_hex(),
            run_name: run.name,
            node_id: field("node_id"),
            error: field("error"),
            attempts: field("attempt"),
        });
    }
    Ok(page::render(&LettersPage {
        chrome: Chrome::new(&viewer, "dead-letters"),
        letters,
    }))
}

#[derive(Debug, Template)]
#[template(path = "dead_letter.html")]
pub struct LetterPage {
    pub chrome: Chrome,
    pub id: String,
    pub run_id: String,
    pub node_id: String,
    pub payload: String,
}

/// `GET /dead-letters/{id}`.
pub async fn dead_letter(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let letter = own_letter(&state, &viewer.caller(), &id).await?;
    let text = |k: &str| letter.payload[k].as_str().unwrap_or_default().to_owned();
    Ok(page::render(&LetterPage {
        chrome: Chrome::new(&viewer, "dead-letters"),
        run_id: text("run_id"),
        node_id: text("node_id"),
        payload: serde_json::to_string_pretty(&letter.payload).unwrap_or_default(),
        id: letter.id,
    }))
}
