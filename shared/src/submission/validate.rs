//! The walk over a submission's JSON that collects every problem with its path.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::stream::Tasks;
use super::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S, FieldError, MAX_GPUS, MAX_ID_LEN, MAX_TAGS, MAX_TASKS,
    Resources, TASK_FIELDS, TaskSpec, err, join, kind, topological_order, valid_id,
};
use crate::model::{KindError, TaskKind};

#[derive(Debug, Default)]
pub(super) struct Validator {
    pub(super) errors: Vec<FieldError>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(err(path, message));
    }

    pub(super) fn unknown_fields(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        known: &[&str],
    ) {
        for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(join(prefix, key), format!("unknown field '{key}'"));
        }
    }

    /// A required identifier: 1-128 chars of `A-Za-z0-9-_.`.
    pub(super) fn id(
        &mut self,
        obj: &Map<String, Value>,
        field: &str,
        path: &str,
    ) -> Option<String> {
        let s = self.string(obj, field, path, MAX_ID_LEN)?;
        if valid_id(&s) {
            Some(s)
        } else {
            self.push(path, format!("'{s}' may only contain A-Z a-z 0-9 - _ ."));
            None
        }
    }

    /// A required non-empty string of at most `max` chars.
    pub(super) fn string(
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

    pub(super) fn tags(&mut self, obj: &Map<String, Value>) -> Vec<String> {
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

    /// The `tasks` field: its specs in dependency order, or none with the problems recorded.
    pub(super) fn tasks(&mut self, tasks: Tasks) -> Vec<TaskSpec> {
        match tasks {
            Tasks::Missing | Tasks::Other("null") => self.push("tasks", "is required"),
            Tasks::Other(kind) => self.push("tasks", format!("expected an array, got {kind}")),
            Tasks::Repeated => self.push("tasks", "appears more than once"),
            Tasks::Items(collector) => return collector.finish(self),
        }
        Vec::new()
    }

    fn task(&mut self, task: &Map<String, Value>, path: &str) -> Option<TaskSpec> {
        let before = self.errors.len();
        self.unknown_fields(task, path, TASK_FIELDS);
        let id = self.id(task, "id", &format!("{path}.id"));
        let type_path = format!("{path}.type");
        let task_type = self.string(task, "type", &type_path, MAX_ID_LEN);
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
        let key_problems = super::params::key_problems(&params);
        for (field, message) in &key_problems {
            self.push(format!("{path}.params{}", dotted(field)), message);
        }
        if let Some(t) = &task_type {
            match TaskKind::parse(t, &Value::Object(params.clone())) {
                Ok(_) => {}
                Err(KindError::Unknown) => self.push(
                    &type_path,
                    format!(
                        "unknown task type '{t}' (known: {})",
                        TaskKind::NAMES.join(", ")
                    ),
                ),
                // Params with bad keys were reported as such; their types would only repeat it.
                Err(KindError::Params(_)) if !key_problems.is_empty() => {}
                Err(KindError::Params(problems)) => {
                    for (field, message) in problems {
                        self.push(format!("{path}.params.{field}"), message);
                    }
                }
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
        // Exactly as many as listed: grown by pushes, two ids would hold room for four, and a
        // 100,000-task submission keeps every list until its run is stored.
        let mut deps = Vec::with_capacity(items.len());
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

/// Validates the items of `tasks` one at a time as they are read (see `super::stream`), keeping
/// only their typed specs.
#[derive(Debug, Default)]
pub(super) struct TaskCollector {
    /// The items' own problems, reported after the submission's top-level ones.
    v: Validator,
    specs: Vec<(usize, TaskSpec)>,
    /// Each id and the first item that has it.
    seen: HashMap<String, usize>,
    count: usize,
}

impl TaskCollector {
    pub(super) fn item(&mut self, item: &Value) {
        let i = self.count;
        self.count += 1;
        if self.count > MAX_TASKS {
            // Only the limit is reported for a submission over it: free what its items took.
            if self.count == MAX_TASKS + 1 {
                *self = Self {
                    count: self.count,
                    ..Self::default()
                };
            }
            return;
        }
        let path = format!("tasks[{i}]");
        let Value::Object(task) = item else {
            self.v
                .push(path, format!("expected an object, got {}", kind(item)));
            return;
        };
        if let Some(id) = task.get("id").and_then(Value::as_str) {
            if let Some(first) = self.seen.get(id) {
                self.v.push(
                    format!("{path}.id"),
                    format!("duplicate task id '{id}' (also tasks[{first}])"),
                );
            } else {
                self.seen.insert(id.to_owned(), i);
            }
        }
        if let Some(spec) = self.v.task(task, &path) {
            self.specs.push((i, spec));
        }
    }

    /// The specs in dependency order, or none with every problem pushed to `v`.
    fn finish(self, v: &mut Validator) -> Vec<TaskSpec> {
        let Self {
            v: mut items,
            specs,
            seen,
            count,
        } = self;
        if count == 0 {
            v.push("tasks", "must contain at least one task");
            return Vec::new();
        }
        if count > MAX_TASKS {
            v.push("tasks", format!("at most {MAX_TASKS} tasks per run"));
            return Vec::new();
        }
        items.check_dependencies(&specs, &seen);
        let failed = !items.errors.is_empty();
        v.errors.append(&mut items.errors);
        if failed || !v.errors.is_empty() {
            return Vec::new();
        }
        // Without errors every item is a spec, so a spec's position is its item's index.
        drop(seen);
        let mut specs: Vec<TaskSpec> = specs.into_iter().map(|(_, s)| s).collect();
        // The vector grew by doubling as items streamed in: give the slack back (megabytes for
        // a big run; shrinking a large allocation does not copy it).
        specs.shrink_to_fit();
        match topological_order(specs) {
            Ok(order) => order,
            Err((cycle, first)) => {
                v.push(
                    format!("tasks[{first}].depends_on"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                );
                Vec::new()
            }
        }
    }
}

/// A path below `params` appended to `…params`: `.a.b`, or `["$k"]` as is.
fn dotted(field: &str) -> String {
    if field.starts_with('[') {
        field.to_owned()
    } else {
        format!(".{field}")
    }
}
