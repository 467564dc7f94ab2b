//! `audit_logs` (EmboFlow seed): an append-only history of operator actions. Entries are
//! inserted and read, never updated or deleted: the repository has no such operation.

use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The workspace the resource belongs to (`*` for fleet-wide actions such as a dead letter
    /// purged without its task).
    pub workspace: String,
    pub project: Option<String>,
    /// `token:<id>` for the gateway, `cli:<user>` for the scheduler CLI.
    pub actor: String,
    /// `run.submit`, `run.cancel`, `run.retry`, `task.cancel`, `task.retry`, `dlq.replay`,
    /// `dlq.purge`, `token.create`, `token.revoke`, `workspace.create`, ...
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub created_at: DateTime,
}

impl AuditEntry {
    pub fn new(actor: &str, action: &str, workspace: &str, resource: (&str, String)) -> Self {
        Self {
            id: ObjectId::new(),
            workspace: workspace.to_owned(),
            project: None,
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource_type: resource.0.to_owned(),
            resource_id: resource.1,
            before: None,
            after: None,
            created_at: DateTime::now(),
        }
    }

    pub fn project(mut self, project: &str) -> Self {
        self.project = Some(project.to_owned());
        self
    }

    pub fn before(mut self, summary: serde_json::Value) -> Self {
        self.before = Some(summary);
        self
    }

    pub fn after(mut self, summary: serde_json::Value) -> Self {
        self.after = Some(summary);
        self
    }
}
