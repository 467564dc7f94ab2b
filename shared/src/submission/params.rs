//! The one rule every task's `params` obey, whatever its type: it is stored in MongoDB as a
//! document, so no key may start with `$` (operator syntax: `{"$where": ...}` must never reach
//! a query or an update as one), contain a `.` (MongoDB reads it as a path), or contain a NUL
//! byte (BSON cannot store it). Checked at every depth, arrays included.

use serde_json::Value;

/// Deepest nesting walked; deeper params are refused (the JSON parser already caps it at 128).
const MAX_DEPTH: usize = 64;

/// Problems with `params`' keys, as (path below `params`, message).
pub fn key_problems(params: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    walk_object(params, "", 0, &mut problems);
    problems
}

fn walk_object(
    object: &serde_json::Map<String, Value>,
    path: &str,
    depth: usize,
    problems: &mut Vec<(String, String)>,
) {
    for (key, value) in object {
        let here = join(path, key);
        if let Some(message) = key_problem(key) {
            problems.push((here.clone(), message));
        }
        walk(value, &here, depth + 1, problems);
    }
}

fn walk(value: &Value, path: &str, depth: usize, problems: &mut Vec<(String, String)>) {
    if depth > MAX_DEPTH {
        problems.push((
            path.to_owned(),
            format!("nested deeper than {MAX_DEPTH} levels"),
        ));
        return;
    }
    match value {
        Value::Object(object) => walk_object(object, path, depth, problems),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), depth + 1, problems);
            }
        }
        _ => {}
    }
}

fn key_problem(key: &str) -> Option<String> {
    if key.starts_with('$') {
        Some(format!(
            "key '{key}' starts with '$', which MongoDB reserves for operators"
        ))
    } else if key.contains('.') {
        Some(format!(
            "key '{key}' contains '.', which MongoDB reads as a path"
        ))
    } else if key.contains('\0') {
        Some("a key contains a NUL character".to_owned())
    } else {
        None
    }
}

/// `a.b`, `a[0].b`; a key that would read as syntax is written `["k.ey"]`.
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(params: Value) -> Vec<String> {
        let Value::Object(map) = params else {
            panic!("params must be an object")
        };
        key_problems(&map).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn operator_and_dotted_keys_are_found_at_any_depth() {
        let found = problems(json!({
            "$where": "sleep(1000)",
            "ok": {"inner": [{"a.b": 1}, {"fine": {"$gt": 0}}]},
            "nul\u{0}key": true
        }));
        assert_eq!(
            found,
            [
                r#"["$where"]"#,
                r#"ok.inner[0]["a.b"]"#,
                r#"ok.inner[1].fine["$gt"]"#,
                r#"["nul\u0000key"]"#,
            ]
        );
    }

    #[test]
    fn ordinary_keys_and_values_pass() {
        // `$` and `.` in values are data, not syntax.
        assert!(
            problems(json!({"ms": 5, "text": "$where a.b", "list": ["$x"], "a-b_c": {}}))
                .is_empty()
        );
    }

    #[test]
    fn params_nested_too_deep_are_refused_once() {
        let mut value = json!(1);
        for _ in 0..100 {
            value = json!({ "k": value });
        }
        assert_eq!(problems(value).len(), 1);
    }
}
