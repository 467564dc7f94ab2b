//! The submission contract (see `docs/protocol.md`): parsing and validation of the JSON a client
//! XADDs to `<prefix>:submissions`.
//!
//! Validation walks the raw JSON value instead of deserializing into typed structs, so one pass
//! reports *every* problem, each with its JSON path (`tasks[2].depends_on[0]`), instead of the
//! first one serde trips on.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::task_types;

/// Defaults and bounds for submitted tasks.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_TIMEOUT_S: u64 = 3600;
pub const MAX_TASKS: usize = 200_000;
const MAX_ID_LEN: usize = 128;
const MAX_TAGS: usize = 64;
const MAX_GPUS: u32 = 64;

/// One problem with a submission, addressed by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

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

/// What a task needs from the worker that runs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub gpus: u32,
    pub gpu_memory_mb: u64,
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
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        Refusal::Anonymous(vec![FieldError {
            path: "$".into(),
            message: format!("not valid JSON: {e}"),
        }])
    })?;
    let Value::Object(obj) = value else {
        return Err(Refusal::Anonymous(vec![err(
            "$",
            format!("expected a JSON object, got {}", kind(&value)),
        )]));
    };
    let mut v = Validator::default();
    let request_id = v.id(&obj, "request_id", "request_id");
    let Some(request_id) = request_id else {
        return Err(Refusal::Anonymous(v.errors));
    };
    match validate(obj, request_id.clone(), v) {
        Ok(sub) => Ok(sub),
        Err(errors) => Err(Refusal::Rejected { request_id, errors }),
    }
}

const TOP_FIELDS: &[&str] = &[
    "request_id",
    "workspace",
    "project",
    "name",
    "created_by",
    "tags",
    "tasks",
];
const TASK_FIELDS: &[&str] = &[
    "id",
    "type",
    "params",
    "depends_on",
    "resources",
    "max_attempts",
    "timeout_s",
    "priority",
];

fn validate(
    obj: Map<String, Value>,
    request_id: String,
    mut v: Validator,
) -> Result<Submission, Vec<FieldError>> {
    v.unknown_fields(&obj, "", TOP_FIELDS);
    let workspace = v.id(&obj, "workspace", "workspace").unwrap_or_default();
    let project = v.id(&obj, "project", "project").unwrap_or_default();
    let name = v.string(&obj, "name", "name", 256).unwrap_or_default();
    let created_by = v
        .string(&obj, "created_by", "created_by", 256)
        .unwrap_or_default();
    let tags = v.tags(&obj);
    let tasks = v.tasks(&obj);
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

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(prefix: &str, field: &str) -> String {
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

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Debug, Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(err(path, message));
    }

    fn unknown_fields(&mut self, obj: &Map<String, Value>, prefix: &str, known: &[&str]) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(join(prefix, key), format!("unknown field '{key}'"));
        }
    }

    /// A required identifier: 1-128 chars of `A-Za-z0-9-_.`.
    fn id(&mut self, obj: &Map<String, Value>, field: &str, path: &str) -> Option<String> {
        let s = self.string(obj, field, path, MAX_ID_LEN)?;
        if valid_id(&s) {
            Some(s)
        } else {
            self.push(path, format!("'{s}' may only contain A-Z a-z 0-9 - _ ."));
            None
        }
    }

    /// A required non-empty string of at most `max` chars.
    fn string(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        path: &str,
        max: usize,
    ) -> Option<String> {
        match obj.get(field) {
            None | Some(Value::Null) => {
                self.push(path, "is required");
                None
            }
            Some(Value::String(s)) if s.is_empty() => {
                self.push(path, "must not be empty");
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.push(path, format!("is longer than {max} characters"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.push(path, format!("expected a string, got {}", kind(other)));
                None
            }
        }
    }

    /// An optional integer in `range`, else `default`.
    fn int(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        match obj.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if range.contains(&i) => i,
                _ => {
                    self.push(
                        path,
                        format!(
                            "must be an integer from {} to {}, got {n}",
                            range.start(),
                            range.end()
                        ),
                    );
                    default
                }
            },
            Some(other) => {
                self.push(path, format!("expected an integer, got {}", kind(other)));
                default
            }
        }
    }

    fn tags(&mut self, obj: &Map<String, Value>) -> Vec<String> {
        let Some(value) = obj.get("tags").filter(|v| !v.is_null()) else {
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.push(
                "tags",
                format!("expected an array of strings, got {}", kind(value)),
            );
            return Vec::new();
        };
        if items.len() > MAX_TAGS {
            self.push("tags", format!("at most {MAX_TAGS} tags"));
        }
        let mut tags = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if !s.is_empty() && s.len() <= MAX_ID_LEN => tags.push(s.clone()),
                Value::String(_) => self.push(format!("tags[{i}]"), "must be 1-128 characters"),
                other => self.push(
                    format!("tags[{i}]"),
                    format!("expected a string, got {}", kind(other)),
                ),
            }
        }
        tags
    }

    fn tasks(&mut self, obj: &Map<String, Value>) -> Vec<TaskSpec> {
        let items = match obj.get("tasks") {
            None | Some(Value::Null) => {
                self.push("tasks", "is required");
                return Vec::new();
            }
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.push("tasks", format!("expected an array, got {}", kind(other)));
                return Vec::new();
            }
        };
        if items.is_empty() {
            self.push("tasks", "must contain at least one task");
            return Vec::new();
        }
        if items.len() > MAX_TASKS {
            self.push("tasks", format!("at most {MAX_TASKS} tasks per run"));
            return Vec::new();
        }
        let mut specs = Vec::with_capacity(items.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("tasks[{i}]");
            let Value::Object(task) = item else {
                self.push(path, format!("expected an object, got {}", kind(item)));
                continue;
            };
            if let Some(id) = task.get("id").and_then(Value::as_str) {
                if let Some(first) = seen.get(id) {
                    self.push(
                        format!("{path}.id"),
                        format!("duplicate task id '{id}' (also tasks[{first}])"),
                    );
                } else {
                    seen.insert(id.to_owned(), i);
                }
            }
            if let Some(spec) = self.task(task, &path) {
                specs.push((i, spec));
            }
        }
        self.check_dependencies(&specs, &seen);
        if !self.errors.is_empty() {
            return Vec::new();
        }
        let specs: Vec<TaskSpec> = specs.into_iter().map(|(_, s)| s).collect();
        match topological_order(&specs) {
            Ok(order) => order,
            Err(cycle) => {
                let first = seen.get(&cycle[0]).copied().unwrap_or(0);
                self.push(
                    format!("tasks[{first}].depends_on"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                );
                Vec::new()
            }
        }
    }

    fn task(&mut self, task: &Map<String, Value>, path: &str) -> Option<TaskSpec> {
        let before = self.errors.len();
        self.unknown_fields(task, path, TASK_FIELDS);
        let id = self.id(task, "id", &format!("{path}.id"));
        let type_path = format!("{path}.type");
        let task_type = self.string(task, "type", &type_path, MAX_ID_LEN);
        if let Some(t) = task_type.as_ref().filter(|t| !task_types::is_known(t)) {
            self.push(
                &type_path,
                format!(
                    "unknown task type '{t}' (known: {})",
                    task_types::ALL.join(", ")
                ),
            );
        }
        let params = match task.get("params") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(other) => {
                self.push(
                    format!("{path}.params"),
                    format!("expected an object, got {}", kind(other)),
                );
                Map::new()
            }
        };
        if let Some(t) = &task_type {
            for (field, message) in task_types::check_params(t, &params) {
                self.push(format!("{path}.params.{field}"), message);
            }
        }
        let depends_on = self.depends_on(task, path);
        let resources = self.resources(task, path);
        let max_attempts = self.int(
            task,
            "max_attempts",
            &format!("{path}.max_attempts"),
            1..=100,
            DEFAULT_MAX_ATTEMPTS.into(),
        );
        let timeout_s = self.int(
            task,
            "timeout_s",
            &format!("{path}.timeout_s"),
            1..=7 * 24 * 3600,
            DEFAULT_TIMEOUT_S as i64,
        );
        let priority = self.int(
            task,
            "priority",
            &format!("{path}.priority"),
            -1000..=1000,
            0,
        );
        if self.errors.len() > before {
            return None;
        }
        Some(TaskSpec {
            id: id?,
            task_type: task_type?,
            params,
            depends_on,
            resources,
            max_attempts: u32::try_from(max_attempts).ok()?,
            timeout_s: u64::try_from(timeout_s).ok()?,
            priority: i32::try_from(priority).ok()?,
        })
    }

    fn depends_on(&mut self, task: &Map<String, Value>, path: &str) -> Vec<String> {
        let path = format!("{path}.depends_on");
        let Some(value) = task.get("depends_on").filter(|v| !v.is_null()) else {
            return Vec::new();
        };
        let Value::Array(items) = value else {
            self.push(
                path,
                format!("expected an array of task ids, got {}", kind(value)),
            );
            return Vec::new();
        };
        let mut deps = Vec::new();
        for (j, item) in items.iter().enumerate() {
            match item {
                Value::String(s) if deps.contains(s) => {
                    self.push(format!("{path}[{j}]"), format!("'{s}' is listed twice"));
                }
                Value::String(s) => deps.push(s.clone()),
                other => self.push(
                    format!("{path}[{j}]"),
                    format!("expected a task id string, got {}", kind(other)),
                ),
            }
        }
        deps
    }

    fn resources(&mut self, task: &Map<String, Value>, path: &str) -> Resources {
        let path = format!("{path}.resources");
        let Some(value) = task.get("resources").filter(|v| !v.is_null()) else {
            return Resources::default();
        };
        let Value::Object(r) = value else {
            self.push(path, format!("expected an object, got {}", kind(value)));
            return Resources::default();
        };
        self.unknown_fields(r, &path, &["gpus", "gpu_memory_mb"]);
        let gpus = self.int(r, "gpus", &format!("{path}.gpus"), 0..=MAX_GPUS.into(), 0);
        let mem = self.int(
            r,
            "gpu_memory_mb",
            &format!("{path}.gpu_memory_mb"),
            0..=16 * 1024 * 1024,
            0,
        );
        if gpus == 0 && mem > 0 {
            self.push(
                format!("{path}.gpu_memory_mb"),
                "needs gpus of at least 1 (GPU memory is per GPU)",
            );
        }
        Resources {
            gpus: u32::try_from(gpus).unwrap_or(0),
            gpu_memory_mb: u64::try_from(mem).unwrap_or(0),
        }
    }

    fn check_dependencies(&mut self, specs: &[(usize, TaskSpec)], ids: &HashMap<String, usize>) {
        for (i, spec) in specs {
            for (j, dep) in spec.depends_on.iter().enumerate() {
                let path = format!("tasks[{i}].depends_on[{j}]");
                if dep == &spec.id {
                    self.push(path, format!("task '{dep}' depends on itself"));
                } else if !ids.contains_key(dep) {
                    self.push(path, format!("unknown task id '{dep}'"));
                }
            }
        }
    }
}

/// Kahn's algorithm; on a cycle, returns the ids along one cycle (first id repeated at the end).
fn topological_order(specs: &[TaskSpec]) -> Result<Vec<TaskSpec>, Vec<String>> {
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
        return Ok(order.into_iter().map(|i| specs[i].clone()).collect());
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

#[cfg(test)]
mod tests;
