//! The task types Harmonia knows, and the parameter checks the scheduler can do at submit time
//! (so a bad parameter is a rejected submission, not a failed task an hour later).

use serde_json::{Map, Value};

use super::task_params;

pub const DEBUG_NOOP: &str = "debug.noop";
pub const DEBUG_SLEEP: &str = "debug.sleep";
pub const DEBUG_FAIL: &str = "debug.fail";
pub const DEBUG_CRASH: &str = "debug.crash";
pub const DEBUG_WRITE: &str = "debug.write";
/// The most `debug.write` writes: it holds the bytes in memory.
pub const DEBUG_WRITE_MAX_BYTES: u64 = 64 << 20;
pub const MODEL_DOWNLOAD: &str = "model.download";
pub const INFERENCE_EMBED: &str = "inference.embed";
pub const INFERENCE_GENERATE: &str = "inference.generate";
pub const MODEL_CONVERT: &str = "model.convert";

pub const ALL: &[&str] = &[
    DEBUG_NOOP,
    DEBUG_SLEEP,
    DEBUG_FAIL,
    DEBUG_CRASH,
    DEBUG_WRITE,
    MODEL_DOWNLOAD,
    INFERENCE_EMBED,
    INFERENCE_GENERATE,
    MODEL_CONVERT,
];

pub fn is_known(task_type: &str) -> bool {
    ALL.contains(&task_type)
}

/// Problems with `params` for `task_type`, as (field, message) pairs.
pub fn check_params(task_type: &str, params: &Map<String, Value>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut uint = |field: &str, required: bool| match params.get(field) {
        None if !required => {}
        None => problems.push((field.to_owned(), "is required".to_owned())),
        Some(v) if v.as_u64().is_some() => {}
        Some(v) => problems.push((
            field.to_owned(),
            format!("expected a non-negative integer, got {v}"),
        )),
    };
    match task_type {
        DEBUG_SLEEP => uint("ms", true),
        // `times` absent means "always fail".
        DEBUG_FAIL => uint("times", false),
        DEBUG_WRITE => {
            uint("bytes", true);
            let n = params.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            if n > DEBUG_WRITE_MAX_BYTES {
                problems.push((
                    "bytes".to_owned(),
                    format!("at most {DEBUG_WRITE_MAX_BYTES}, got {n}"),
                ));
            }
        }
        MODEL_DOWNLOAD => typed(params, &mut problems, task_params::check_download),
        INFERENCE_EMBED => typed(params, &mut problems, task_params::check_embed),
        INFERENCE_GENERATE => typed(params, &mut problems, task_params::check_generate),
        MODEL_CONVERT => typed(params, &mut problems, task_params::check_convert),
        _ => {}
    }
    problems
}

fn typed<T: serde::de::DeserializeOwned>(
    params: &Map<String, Value>,
    problems: &mut Vec<(String, String)>,
    check: fn(&T) -> Vec<(String, String)>,
) {
    match task_params::parse::<T>(&Value::Object(params.clone())) {
        Ok(p) => problems.extend(check(&p)),
        Err(problem) => problems.push(problem),
    }
}
