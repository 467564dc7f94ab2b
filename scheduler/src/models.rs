//! Which model repository each task of a submission works on, for model affinity: its stream
//! entry is then offered first to workers that hold the model (see `docs/protocol.md`).
//!
//! Known at submission: a `model.download` names its `repo`; a task given `model_artifact_id`
//! works on that artifact's repository (a downloaded snapshot; a conversion is cached by its
//! own id and gets none); a task depending on a `model.download` works on that repository.
//! Anything else gets none and is placed as before.

use std::collections::HashMap;

use harmonia_shared::store::{Store, StoreError};
use harmonia_shared::submission::{Submission, TaskSpec};
use mongodb::bson::oid::ObjectId;

const DOWNLOAD: &str = "model.download";

/// The model of each task of `sub`, in order.
pub async fn models_of(store: &Store, sub: &Submission) -> Result<Vec<Option<String>>, StoreError> {
    let mut artifacts: HashMap<ObjectId, Option<String>> = HashMap::new();
    for spec in &sub.tasks {
        if let Some(id) = artifact_id(spec)
            && !artifacts.contains_key(&id)
        {
            let repo = store
                .model_artifacts()
                .get(id)
                .await?
                .filter(|a| a.lineage.is_none())
                .map(|a| a.name);
            artifacts.insert(id, repo);
        }
    }
    let by_id: HashMap<&str, &TaskSpec> = sub.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    Ok(sub
        .tasks
        .iter()
        .map(|spec| {
            if let Some(id) = artifact_id(spec) {
                return artifacts.get(&id).cloned().flatten();
            }
            repo(spec).or_else(|| {
                spec.depends_on
                    .iter()
                    .filter_map(|d| by_id.get(d.as_str()))
                    .find_map(|up| repo(up))
            })
        })
        .collect())
}

/// The repository a `model.download` fetches.
fn repo(spec: &TaskSpec) -> Option<String> {
    (spec.task_type == DOWNLOAD)
        .then(|| spec.params.get("repo")?.as_str().map(str::to_owned))
        .flatten()
}

fn artifact_id(spec: &TaskSpec) -> Option<ObjectId> {
    let id = spec.params.get("model_artifact_id")?.as_str()?;
    ObjectId::parse_str(id).ok()
}
