//! Whether a valid submission may create a run: its workspace and project must be registered
//! and active. Checked by the scheduler (not the parser), since it needs MongoDB.

use harmonia_shared::model::{FieldError, Lifecycle};
use harmonia_shared::store::{Store, StoreError};
use harmonia_shared::submission::Submission;

/// The submission's errors against the registry: empty when it may proceed.
pub async fn check(store: &Store, sub: &Submission) -> Result<Vec<FieldError>, StoreError> {
    // Both at once: this is on every submission's way to its run.
    let (workspaces, projects) = (store.workspaces(), store.projects());
    let (ws, project) = tokio::try_join!(
        workspaces.get(&sub.workspace),
        projects.get(&sub.workspace, &sub.project)
    )?;
    let error = |path: &str, message: String| {
        vec![FieldError {
            path: path.into(),
            message,
        }]
    };
    match ws.map(|w| w.status) {
        None => {
            return Ok(error(
                "workspace",
                format!(
                    "unknown workspace '{}'; create it with `harmonia-scheduler workspaces create {}`",
                    sub.workspace, sub.workspace
                ),
            ));
        }
        Some(Lifecycle::Archived) => {
            return Ok(error(
                "workspace",
                format!(
                    "workspace '{}' is archived and takes no new runs",
                    sub.workspace
                ),
            ));
        }
        Some(Lifecycle::Active) => {}
    }
    Ok(match project.map(|p| p.status) {
        None => error(
            "project",
            format!(
                "workspace '{}' has no project '{}'; create it with `harmonia-scheduler projects create {} {}`",
                sub.workspace, sub.project, sub.workspace, sub.project
            ),
        ),
        Some(Lifecycle::Archived) => error(
            "project",
            format!(
                "project '{}' is archived and takes no new runs",
                sub.project
            ),
        ),
        Some(Lifecycle::Active) => Vec::new(),
    })
}
