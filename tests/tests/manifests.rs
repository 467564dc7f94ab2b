//! The Kubernetes manifests under docker/k8s, checked offline: the Kubernetes objects against
//! the Kubernetes schemas in strict mode (scripts/check-k8s, PyPI's kubernetes-validate), the
//! KEDA `ScaledObject`s against KEDA's CRD (as typed by kopium in the crate
//! kube-custom-resources-rs), and the triggers and drain timings against what Harmonia does.

use std::path::{Path, PathBuf};
use std::process::Command;

use harmonia_shared::queue::{Keys, WORKERS_GROUP};
use harmonia_tests::servers::workspace_root;

fn k8s(file: &str) -> PathBuf {
    workspace_root().join("docker/k8s").join(file)
}

fn check_k8s(files: &[&Path]) -> std::process::Output {
    Command::new(workspace_root().join("scripts/check-k8s"))
        .args(files)
        .output()
        .expect("running scripts/check-k8s")
}

/// The values of every `key: value` line of a YAML file (quotes removed).
fn values(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}:");
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
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

/// Every `ScaledObject` in keda.yaml reads as KEDA's type and writes back identical: a field
/// KEDA does not know would be dropped (and the documents differ), a wrong type or a missing
/// required field fails to parse.
#[test]
fn the_keda_scaled_objects_match_kedas_schema() {
    use kube_custom_resources_rs::keda_sh::v1alpha1::scaledobjects::ScaledObject;
    use serde::Deserialize;
    let text = std::fs::read_to_string(k8s("keda.yaml")).unwrap();
    let mut checked = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let yaml = serde_yaml::Value::deserialize(doc).unwrap();
        let json: serde_json::Value = serde_json::to_value(&yaml).unwrap();
        let typed: ScaledObject = serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("not a KEDA ScaledObject: {e}\n{json:#}"));
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            json,
            "fields KEDA does not know"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "a ScaledObject per worker pool");
}

#[test]
fn the_keda_check_catches_a_misspelled_field() {
    use kube_custom_resources_rs::keda_sh::v1alpha1::scaledobjects::ScaledObject;
    let text = std::fs::read_to_string(k8s("keda.yaml")).unwrap();
    let first = text
        .split("\n---\n")
        .next()
        .unwrap()
        .replace("cooldownPeriod", "cooldownPeriods");
    let json: serde_json::Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&first).unwrap()).unwrap();
    let typed: ScaledObject = serde_json::from_value(json.clone()).unwrap();
    assert_ne!(serde_json::to_value(&typed).unwrap(), json);
}

#[test]
fn the_keda_triggers_read_the_workers_group_of_harmonias_task_streams() {
    let keda = std::fs::read_to_string(k8s("keda.yaml")).unwrap();
    let keys = Keys::new("harmonia");
    let streams = values(&keda, "stream");
    assert!(!streams.is_empty());
    for stream in &streams {
        assert!(
            keys.class_of(stream).is_some(),
            "{stream} is not a task stream"
        );
    }
    let groups = values(&keda, "consumerGroup");
    assert_eq!(groups.len(), streams.len());
    assert!(groups.iter().all(|g| g == WORKERS_GROUP), "{groups:?}");
    // Lag, not pending entries: a claimed entry is deleted, so pending stays near zero.
    assert_eq!(values(&keda, "lagCount").len(), streams.len());
    assert!(values(&keda, "pendingEntriesCount").is_empty());
    // Each ScaledObject scales a worker Deployment that exists.
    for target in values(&keda, "name")
        .iter()
        .filter(|n| n.starts_with("harmonia-worker-"))
    {
        let file = format!("{}.yaml", target.trim_start_matches("harmonia-"));
        let deployment = std::fs::read_to_string(k8s(&file)).unwrap();
        assert_eq!(values(&deployment, "name")[0], *target);
    }
}

#[test]
fn worker_pods_get_longer_than_their_drain_before_they_are_killed() {
    for file in ["worker-cpu.yaml", "worker-gpu.yaml"] {
        let text = std::fs::read_to_string(k8s(file)).unwrap();
        let kill_after: u64 = values(&text, "terminationGracePeriodSeconds")[0]
            .parse()
            .unwrap();
        let grace_line = text
            .lines()
            .find(|l| l.contains("name: HARMONIA_GRACE_S"))
            .expect("HARMONIA_GRACE_S is set");
        let grace: u64 = grace_line
            .rsplit("value:")
            .next()
            .unwrap()
            .trim_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap();
        assert!(
            kill_after >= grace + 10,
            "{file}: {kill_after} s vs a {grace} s drain"
        );
    }
}
