use serde_json::json;

use super::*;

fn submit(value: serde_json::Value) -> Result<Submission, Refusal> {
    parse(value.to_string().as_bytes(), 1 << 20)
}

fn rejected(value: serde_json::Value) -> Vec<FieldError> {
    match submit(value) {
        Err(Refusal::Rejected { errors, .. }) => errors,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn base(tasks: serde_json::Value) -> serde_json::Value {
    json!({"request_id": "r1", "workspace": "w", "project": "p", "name": "n",
           "created_by": "me", "tasks": tasks})
}

#[test]
fn a_diamond_is_accepted_in_dependency_order() {
    let sub = submit(base(json!([
        {"id": "d", "type": "debug.noop", "depends_on": ["b", "c"]},
        {"id": "b", "type": "debug.noop", "depends_on": ["a"]},
        {"id": "c", "type": "debug.sleep", "params": {"ms": 5}, "depends_on": ["a"],
         "resources": {"gpus": 1, "gpu_memory_mb": 40000}, "max_attempts": 5, "priority": 7},
        {"id": "a", "type": "debug.noop"}
    ])))
    .unwrap();
    let order: Vec<&str> = sub.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
    let c = &sub.tasks[2];
    assert_eq!(
        c.resources,
        Resources {
            gpus: 1,
            gpu_memory_mb: 40000
        }
    );
    assert_eq!(
        (c.max_attempts, c.priority, c.timeout_s),
        (5, 7, DEFAULT_TIMEOUT_S)
    );
    assert_eq!(sub.tasks[0].max_attempts, DEFAULT_MAX_ATTEMPTS);
}

/// A 100,000-task submission keeps every task's list until its run is stored: a list grown by
/// pushes would hold room for four ids where two are listed (4 MB more at the scheduler's peak).
#[test]
fn a_validated_task_holds_its_dependencies_without_spare_room() {
    let sub = submit(base(json!([
        {"id": "a", "type": "debug.noop"},
        {"id": "b", "type": "debug.noop"},
        {"id": "c", "type": "debug.noop", "depends_on": ["a", "b"]}
    ])))
    .unwrap();
    let c = &sub.tasks[2].depends_on;
    assert_eq!((c.len(), c.capacity()), (2, 2));
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let errors = rejected(json!({
        "request_id": "r1", "workspace": "w s", "project": 3, "name": "n",
        "tags": ["ok", 5], "extra": true,
        "tasks": [
            {"id": "a", "type": "debug.nope"},
            {"id": "b", "type": "debug.noop", "depends_on": ["x", "b"]},
            {"id": "a", "type": "debug.sleep", "params": {"ms": "soon"}},
            {"id": "c", "type": "debug.noop", "resources": {"gpus": -1, "vram": 1},
             "max_attempts": 0, "timeout_s": "1h"}
        ]
    }));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for expected in [
        "extra",
        "workspace",
        "project",
        "created_by",
        "tags[1]",
        "tasks[0].type",
        "tasks[1].depends_on[0]",
        "tasks[1].depends_on[1]",
        "tasks[2].id",
        "tasks[2].params.ms",
        "tasks[3].resources.vram",
        "tasks[3].resources.gpus",
        "tasks[3].max_attempts",
        "tasks[3].timeout_s",
    ] {
        assert!(
            paths.contains(&expected),
            "missing {expected} in {errors:#?}"
        );
    }
    let unknown = errors
        .iter()
        .find(|e| e.path == "tasks[1].depends_on[0]")
        .unwrap();
    assert_eq!(unknown.message, "unknown task id 'x'");
}

#[test]
fn cycles_are_named() {
    let errors = rejected(base(json!([
        {"id": "a", "type": "debug.noop", "depends_on": ["c"]},
        {"id": "b", "type": "debug.noop", "depends_on": ["a"]},
        {"id": "c", "type": "debug.noop", "depends_on": ["b"]},
        {"id": "z", "type": "debug.noop"}
    ])));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].path.ends_with(".depends_on"), "{errors:?}");
    assert!(
        errors[0].message.contains("a -> b -> c -> a")
            || errors[0].message.contains("dependency cycle"),
        "{errors:?}"
    );
    let ids: Vec<&str> = errors[0]
        .message
        .trim_start_matches("dependency cycle: ")
        .split(" -> ")
        .collect();
    assert_eq!(ids.first(), ids.last());
    assert_eq!(ids.len(), 4, "{errors:?}");
}

#[test]
fn broken_payloads_without_a_request_id_are_anonymous() {
    for raw in [
        &b"not json"[..],
        b"[1,2]",
        b"{\"tasks\": []}",
        b"{\"request_id\": \"a b\"}",
    ] {
        match parse(raw, 1024) {
            Err(Refusal::Anonymous(errors)) => assert!(!errors.is_empty()),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }
}

#[test]
fn oversized_payloads_are_refused_before_parsing() {
    let mut raw = br#"{"request_id": "big-1", "tasks": ["#.to_vec();
    raw.extend(std::iter::repeat_n(b'x', 5000)); // not even valid JSON: never parsed
    match parse(&raw, 4096) {
        Err(Refusal::Rejected { request_id, errors }) => {
            assert_eq!(request_id, "big-1");
            assert!(errors[0].message.contains("limit is 4096"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gpu_memory_needs_a_gpu() {
    let errors = rejected(base(json!([
        {"id": "a", "type": "debug.noop", "resources": {"gpu_memory_mb": 100}}
    ])));
    assert_eq!(errors[0].path, "tasks[0].resources.gpu_memory_mb");
}

/// Every input of the fuzz corpus (`fuzz/seeds/submission`, kept by `scripts/fuzz`) and the
/// hand-written examples beside it still parse without a panic, with the invariants the fuzzer
/// checked.
#[test]
fn the_fuzz_corpus_parses_without_panicking() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut seen = 0;
    for dir in [seeds.join("examples"), seeds.join("submission")] {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let raw = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| assert_parse_invariants(&raw, 1 << 20));
            assert!(outcome.is_ok(), "{} broke the parser", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 7, "the corpus is there ({seen} inputs)");
}

/// `tasks` is read as it streams past (see `stream.rs`); anything but one array of tasks is
/// refused with the field named and what it was instead.
#[test]
fn the_tasks_field_must_be_one_non_empty_array() {
    let message = |tasks: &str| {
        let raw = format!(
            r#"{{"request_id": "r1", "workspace": "w", "project": "p", "name": "n", "created_by": "me"{tasks}}}"#
        );
        match parse(raw.as_bytes(), 1 << 20) {
            Err(Refusal::Rejected { errors, .. }) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert_eq!(errors[0].path, "tasks");
                errors[0].message.clone()
            }
            other => panic!("{tasks}: {other:?}"),
        }
    };
    assert_eq!(message(""), "is required");
    assert_eq!(message(r#", "tasks": null"#), "is required");
    assert_eq!(
        message(r#", "tasks": "a""#),
        "expected an array, got a string"
    );
    assert_eq!(
        message(r#", "tasks": {"id": "a"}"#),
        "expected an array, got an object"
    );
    assert_eq!(
        message(r#", "tasks": 7"#),
        "expected an array, got a number"
    );
    assert_eq!(
        message(r#", "tasks": []"#),
        "must contain at least one task"
    );
    let twice = r#", "tasks": [{"id": "a", "type": "debug.noop"}], "tasks": []"#;
    assert_eq!(message(twice), "appears more than once");
}

#[test]
fn a_payload_that_is_not_an_object_names_what_it_is() {
    for (raw, kind) in [
        (&b"[1, 2]"[..], "an array"),
        (b"\"x\"", "a string"),
        (b"null", "null"),
    ] {
        match parse(raw, 1024) {
            Err(Refusal::Anonymous(errors)) => {
                assert_eq!(
                    errors[0].message,
                    format!("expected a JSON object, got {kind}")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Over the limit, only the limit is reported (not one problem per item), and the items read
/// before it was reached are let go.
#[test]
fn more_than_max_tasks_is_one_error() {
    let items = vec!["1"; MAX_TASKS + 1].join(",");
    let raw = format!(
        r#"{{"request_id": "r1", "workspace": "w", "project": "p", "name": "n", "created_by": "me", "tasks": [{items}]}}"#
    );
    match parse(raw.as_bytes(), 1 << 30) {
        Err(Refusal::Rejected { errors, .. }) => {
            assert_eq!(errors.len(), 1, "{:?}", &errors[..errors.len().min(3)]);
            assert_eq!(
                errors[0].message,
                format!("at most {MAX_TASKS} tasks per run")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn permuting_in_place_puts_each_item_where_the_order_says() {
    let order = [3, 0, 4, 1, 2, 6, 5, 7];
    let mut items: Vec<usize> = (0..order.len()).map(|i| i * 10).collect();
    super::permute(&mut items, &order);
    let expected: Vec<usize> = order.iter().map(|&i| i * 10).collect();
    assert_eq!(items, expected);
}
