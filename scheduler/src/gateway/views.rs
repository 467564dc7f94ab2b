//! What the API answers: documents as plain JSON (ids as hex strings, times as RFC 3339), and
//! the typed shapes the OpenAPI document describes.

use harmonia_shared::model::WorkflowRun;
use mongodb::bson::Bson;
use serde::Serialize;

/// A stored document as API JSON: ObjectIds become hex strings, dates RFC 3339 strings, and
/// the top-level `_id` becomes `id`.
pub fn plain<T: Serialize>(doc: &T) -> serde_json::Value {
    let bson = mongodb::bson::to_bson(doc).unwrap_or(Bson::Null);
    let mut value = convert(bson);
    if let Some(obj) = value.as_object_mut()
        && let Some(id) = obj.remove("_id")
    {
        obj.insert("id".into(), id);
    }
    value
}

fn convert(b: Bson) -> serde_json::Value {
    use serde_json::Value;
    match b {
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::DateTime(d) => Value::String(d.try_to_rfc3339_string().unwrap_or_default()),
        Bson::Document(d) => Value::Object(d.into_iter().map(|(k, v)| (k, convert(v))).collect()),
        Bson::Array(items) => Value::Array(items.into_iter().map(convert).collect()),
        other => other.into_relaxed_extjson(),
    }
}

/// One run in a listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub request_id: String,
    pub workspace: String,
    pub project: String,
    pub name: String,
    pub created_by: String,
    pub tags: Vec<String>,
    pub task_types: Vec<String>,
    /// queued, running, succeeded, failed, cancelled.
    pub status: String,
    pub task_count: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub retry_of: Option<String>,
}

impl From<&WorkflowRun> for RunSummary {
    fn from(r: &WorkflowRun) -> Self {
        let time = |d: mongodb::bson::DateTime| d.try_to_rfc3339_string().unwrap_or_default();
        Self {
            id: r.id.to_hex(),
            request_id: r.request_id.clone(),
            workspace: r.workspace.clone(),
            project: r.project.clone(),
            name: r.name.clone(),
            created_by: r.created_by.clone(),
            tags: r.tags.clone(),
            task_types: r.task_types.clone(),
            status: r.status.as_str().into(),
            task_count: r.task_count,
            succeeded: r.counts.succeeded,
            failed: r.counts.failed,
            running: r.counts.running,
            created_at: time(r.created_at),
            finished_at: r.finished_at.map(time),
            duration_ms: r.duration_ms,
            retry_of: r.retry_of.map(|id| id.to_hex()),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPage {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// A run with its tasks (progress, outputs, errors) and the artifacts they wrote.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    pub run: RunSummary,
    /// The run's tasks as stored (`status`, `attempt`, `progress`, `outputs`, `error`...).
    #[schema(value_type = Vec<Object>)]
    pub tasks: Vec<serde_json::Value>,
    #[schema(value_type = Vec<Object>)]
    pub artifacts: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub run_id: String,
    pub request_id: String,
}

/// What a control action did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionResult {
    pub run_id: String,
    /// Tasks cancelled now (cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<u64>,
    /// Running tasks told to stop (cancel).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signalled: Option<usize>,
    /// Nodes reset to run again (task retry, replay).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<Vec<String>>,
    /// The new run (run retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_run_id: Option<String>,
}

impl ActionResult {
    pub fn for_run(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            cancelled: None,
            signalled: None,
            reset: None,
            new_run_id: None,
        }
    }
}
