//! The Kubernetes manifests under docker/k8s, checked offline: the Kubernetes objects against
//! the Kubernetes schemas in strict mode (scripts/check-k8s, PyPI's kubernetes-validate), the
//! KEDA `ScaledObject`s against KEDA's CRD (as typed by kopium in the crate
//! kube-custom-resources-rs), and the triggers and drain timings against what Harmonia does.

use std::path::{Path, PathBuf};
use std::process::Command;

use harmonia_shared::queue::{Keys, WORKERS_GROUP};
use harmonia_tests::servers::workspace_root;
use kube_custom_resources_rs::keda_sh::v1alpha1::scaledobjects::ScaledObject;

fn k8s(file: &str) -> PathBuf {
    workspace_root().join("docker/k8s").join(file)
}

fn check_k8s(files: &[&Path]) -> std::process::Output {
    Command::new(workspace_root().join("scripts/check-k8s"))
        .args(files)
        .output()
        .expect("running scripts/check-k8s")
}

#[test]
fn the_kubernetes_manifests_pass_strict_schema_validation() {
    let out = check_k8s(&[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_validator_rejects_a_field_kubernetes_does_not_know() {
    let good = std::fs::read_to_string(k8s("scheduler.yaml")).unwrap();
    let bad = good.replace("terminationGracePeriodSeconds", "terminationGracePeriod");
    assert_ne!(good, bad);
    let dir = std::env::temp_dir().join(format!("harmonia-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("scheduler.yaml");
    std::fs::write(&file, bad).unwrap();
    let out = check_k8s(&[&file]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("'terminationGracePeriod' was unexpected")
    );
}

/// The YAML documents of a manifest file, as JSON values.
fn documents(file: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(k8s(file)).expect("the manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml = serde_yaml::Value::deserialize(doc).expect("valid YAML");
            serde_json::to_value(yaml).expect("YAML as JSON")
        })
        .collect()
}

/// A document as KEDA's `ScaledObject`, and whether it writes back identical (a field KEDA
/// does not know is dropped on the way, so the two differ).
fn as_scaled_object(json: &serde_json::Value) -> (ScaledObject, bool) {
    let typed: ScaledObject = serde_json::from_value(json.clone())
        .unwrap_or_else(|e| panic!("not a KEDA ScaledObject: {e}\n{json:#}"));
    let same = serde_json::to_value(&typed).expect("writes back") == *json;
    (typed, same)
}

/// Every `ScaledObject` in keda.yaml reads as KEDA's type and writes back identical: a field
/// KEDA does not know would be dropped (and the documents differ), a wrong type or a missing
/// required field fails to parse.
#[test]
fn the_keda_scaled_objects_match_kedas_schema() {
    let docs = documents("keda.yaml");
    assert_eq!(docs.len(), 2, "a ScaledObject per worker pool");
    for doc in &docs {
        assert!(
            as_scaled_object(doc).1,
            "fields KEDA does not know:\n{doc:#}"
        );
    }
}

#[test]
fn the_keda_check_catches_a_misspelled_field() {
    let mut doc = documents("keda.yaml").remove(0);
    let spec = doc["spec"].as_object_mut().unwrap();
    let cooldown = spec.remove("cooldownPeriod").unwrap();
    spec.insert("cooldownPeriods".into(), cooldown);
    assert!(!as_scaled_object(&doc).1);
}

#[test]
fn the_keda_triggers_read_the_workers_group_of_harmonias_task_streams() {
    let keys = Keys::new("harmonia");
    for doc in documents("keda.yaml") {
        let (scaled, _) = as_scaled_object(&doc);
        assert!(!scaled.spec.triggers.is_empty());
        for trigger in &scaled.spec.triggers {
            let m = &trigger.metadata;
            assert_eq!(trigger.r#type, "redis-streams");
            assert!(
                keys.class_of(&m["stream"]).is_some(),
                "{m:?}: not a task stream"
            );
            assert_eq!(m["consumerGroup"], WORKERS_GROUP);
            // Lag, not pending entries: a claimed entry is deleted, so pending stays near 0.
            assert!(m.contains_key("lagCount") && !m.contains_key("pendingEntriesCount"));
        }
        // It scales a worker Deployment that exists.
        let target = &scaled.spec.scale_target_ref.name;
        let file = format!("{}.yaml", target.trim_start_matches("harmonia-"));
        let deployment = &documents(&file)[0];
        assert_eq!(deployment["kind"], "Deployment");
        assert_eq!(deployment["metadata"]["name"], *target);
    }
}

#[test]
fn worker_pods_get_longer_than_their_drain_before_they_are_killed() {
    for file in ["worker-cpu.yaml", "worker-gpu.yaml"] {
        let pod = &documents(file)[0]["spec"]["template"]["spec"];
        let kill_after = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let grace: u64 = env
            .iter()
            .find(|v| v["name"] == "HARMONIA_GRACE_S")
            .and_then(|v| v["value"].as_str())
            .expect("HARMONIA_GRACE_S is set")
            .parse()
            .unwrap();
        assert!(
            kill_after >= grace + 10,
            "{file}: {kill_after} s vs a {grace} s drain"
        );
    }
}
