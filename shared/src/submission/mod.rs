//! The submission contract (see `docs/protocol.md`): parsing and validation of the JSON a client
//! XADDs to `<prefix>:submissions`.
//!
//! Validation walks the raw JSON instead of deserializing into typed structs, so one pass
//! reports *every* problem, each with its JSON path (`tasks[2].depends_on[0]`), instead of the
//! first one serde trips on. The `tasks` array is walked as it is parsed (`stream.rs`): one
//! task's JSON tree at a time, kept only as its typed [`TaskSpec`].

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The submission contract speaks of these too; they live in `model` (stored on runs, tasks and
/// rejections), so `model` never needs `submission`.
pub use crate::model::{FieldError, Resources};

/// Defaults and bounds for submitted tasks.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_TIMEOUT_S: u64 = 3600;
pub const MAX_TASKS: usize = 200_000;
pub(crate) const MAX_ID_LEN: usize = 128;
pub(crate) const MAX_TAGS: usize = 64;
pub(crate) const MAX_GPUS: u32 = 64;

/// Why a submission was refused before (or while) reading its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No usable `request_id`: the reply goes to the rejections stream.
    Anonymous(Vec<FieldError>),
    /// The submission names its request; the reply goes to that request's reply stream.
    Rejected {
        request_id: String,
        errors: Vec<FieldError>,
    },
}

/// A validated task of a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub params: Map<String, Value>,
    pub depends_on: Vec<String>,
    pub resources: Resources,
    pub max_attempts: u32,
    pub timeout_s: u64,
    pub priority: i32,
}

/// A validated submission; `tasks` are in a dependency (topological) order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub request_id: String,
    pub workspace: String,
    pub project: String,
    pub name: String,
    pub created_by: String,
    pub tags: Vec<String>,
    pub tasks: Vec<TaskSpec>,
}

/// Parses and validates raw submission bytes. `max_bytes` is checked before parsing so a huge
/// payload costs no parse.
pub fn parse(raw: &[u8], max_bytes: usize) -> Result<Submission, Refusal> {
    if raw.len() > max_bytes {
        let error = FieldError {
            path: "$".into(),
            message: format!(
                "submission is {} bytes; the limit is {max_bytes}",
                raw.len()
            ),
        };
        // The request id is usually near the start; a cheap look lets the client get its reply
        // on its own stream without us parsing the whole payload.
        return Err(match sniff_request_id(raw) {
            Some(request_id) => Refusal::Rejected {
                request_id,
                errors: vec![error],
            },
            None => Refusal::Anonymous(vec![error]),
        });
    }
    let top = stream::read(raw).map_err(|e| {
        Refusal::Anonymous(vec![FieldError {
            path: "$".into(),
            message: format!("not valid JSON: {e}"),
        }])
    })?;
    let (obj, tasks) = match top {
        stream::Top::Object { fields, tasks } => (fields, tasks),
        stream::Top::Other(kind) => {
            return Err(Refusal::Anonymous(vec![err(
                "$",
                format!("expected a JSON object, got {kind}"),
            )]));
        }
    };
    let mut v = Validator::default();
    let request_id = v.id(&obj, "request_id", "request_id");
    let Some(request_id) = request_id else {
        return Err(Refusal::Anonymous(v.errors));
    };
    match validate(&obj, tasks, request_id.clone(), v) {
        Ok(sub) => Ok(sub),
        Err(errors) => Err(Refusal::Rejected { request_id, errors }),
    }
}

pub(crate) const TOP_FIELDS: &[&str] = &[
    "request_id",
    "workspace",
    "project",
    "name",
    "created_by",
    "tags",
    "tasks",
];
pub(crate) const TASK_FIELDS: &[&str] = &[
    "id",
    "type",
    "params",
    "depends_on",
    "resources",
    "max_attempts",
    "timeout_s",
    "priority",
];

/// `obj`: the top-level fields but `tasks`, which [`stream`] has read and validated already.
fn validate(
    obj: &Map<String, Value>,
    tasks: stream::Tasks,
    request_id: String,
    mut v: Validator,
) -> Result<Submission, Vec<FieldError>> {
    v.unknown_fields(obj, "", TOP_FIELDS);
    let workspace = v.id(obj, "workspace", "workspace").unwrap_or_default();
    let project = v.id(obj, "project", "project").unwrap_or_default();
    let name = v.string(obj, "name", "name", 256).unwrap_or_default();
    let created_by = v
        .string(obj, "created_by", "created_by", 256)
        .unwrap_or_default();
    let tags = v.tags(obj);
    let tasks = v.tasks(tasks);
    if v.errors.is_empty() {
        Ok(Submission {
            request_id,
            workspace,
            project,
            name,
            created_by,
            tags,
            tasks,
        })
    } else {
        Err(v.errors)
    }
}

pub(crate) fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Finds `"request_id":"…"` in the first KiB without parsing the whole document.
fn sniff_request_id(raw: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&raw[..raw.len().min(1024)]);
    let rest = &head[head.find("\"request_id\"")? + "\"request_id\"".len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let id = &rest[..rest.find('"')?];
    valid_id(id).then(|| id.to_owned())
}

pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `specs` reordered so every task comes after the tasks it depends on (in place, not copied:
/// a run can have 200,000); on a cycle, the ids along one cycle (first id repeated at the end)
/// and the position in `specs` of the first.
pub(crate) fn topological_order(
    specs: Vec<TaskSpec>,
) -> Result<Vec<TaskSpec>, (Vec<String>, usize)> {
    let order = kahn(&specs).map_err(|cycle| {
        let first = specs.iter().position(|s| s.id == cycle[0]).unwrap_or(0);
        (cycle, first)
    })?;
    let mut specs = specs;
    permute(&mut specs, &order);
    Ok(specs)
}

/// Reorders `items` in place so that position `k` holds what was at `order[k]` (`order` is a
/// permutation): one cycle of swaps at a time, no second array of items.
fn permute<T>(items: &mut [T], order: &[usize]) {
    let mut placed = vec![false; items.len()];
    for start in 0..items.len() {
        let mut k = start;
        while !placed[k] {
            placed[k] = true;
            let from = order[k];
            if from == start {
                break;
            }
            items.swap(k, from);
            k = from;
        }
    }
}

/// Kahn's algorithm over indexes into `specs`.
fn kahn(specs: &[TaskSpec]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = specs.iter().map(|s| s.depends_on.len()).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    for (i, spec) in specs.iter().enumerate() {
        for dep in &spec.depends_on {
            downstream[index[dep.as_str()]].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..specs.len()).filter(|&i| indegree[i] == 0).collect();
    ready.reverse(); // keep submission order among ready tasks
    let mut order = Vec::with_capacity(specs.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in downstream[i].iter().rev() {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == specs.len() {
        return Ok(order);
    }
    // Walk upstream from any task left with unmet dependencies until a task repeats.
    let stuck: HashSet<usize> = (0..specs.len()).filter(|&i| indegree[i] > 0).collect();
    let mut at = *stuck.iter().min().unwrap_or(&0);
    let mut path: Vec<usize> = Vec::new();
    let mut pos: BTreeMap<usize, usize> = BTreeMap::new();
    loop {
        if let Some(&start) = pos.get(&at) {
            let mut cycle: Vec<String> = path[start..]
                .iter()
                .rev()
                .map(|&i| specs[i].id.clone())
                .collect();
            cycle.push(cycle[0].clone());
            return Err(cycle);
        }
        pos.insert(at, path.len());
        path.push(at);
        at = specs[at]
            .depends_on
            .iter()
            .map(|d| index[d.as_str()])
            .find(|i| stuck.contains(i))
            .unwrap_or(at);
    }
}

mod params;
mod stream;
mod validate;

use validate::Validator;

#[cfg(test)]
mod tests;

/// What must hold for any input, however malformed: [`parse`] answers without panicking, a
/// refusal names at least one problem, and an accepted submission lists each task after its
/// upstream tasks. Panics otherwise. The fuzz target (`fuzz/`) and the corpus test call it.
#[doc(hidden)]
pub fn assert_parse_invariants(raw: &[u8], max_bytes: usize) {
    match parse(raw, max_bytes) {
        Ok(sub) => {
            assert!(!sub.tasks.is_empty(), "accepted with no task");
            for (i, task) in sub.tasks.iter().enumerate() {
                for up in &task.depends_on {
                    let before = sub.tasks[..i].iter().any(|t| &t.id == up);
                    assert!(before, "task {} listed before its upstream {up}", task.id);
                }
            }
        }
        Err(Refusal::Rejected { errors, .. } | Refusal::Anonymous(errors)) => {
            assert!(!errors.is_empty(), "a refusal names at least one problem");
        }
    }
}
