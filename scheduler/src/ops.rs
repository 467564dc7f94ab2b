//! Operator actions, each recorded in the audit log with who did it: what the CLI and the HTTP
//! gateway both call, so neither can act without leaving an entry.

use harmonia_shared::model::token::{self, NewToken};
use harmonia_shared::model::{AuditEntry, Lifecycle, Project, TokenScope, WorkflowRun, Workspace};
use harmonia_shared::queue::Queue;
use harmonia_shared::queue::dead::DeadLetter;
use harmonia_shared::store::Store;
use mongodb::bson::DateTime;
use mongodb::bson::oid::ObjectId;
use serde_json::json;

use crate::control::{self, ControlError};

type Result<T> = std::result::Result<T, ControlError>;

/// Who acts, and the connections to act with.
#[derive(Debug, Clone)]
pub struct Operator {
    pub queue: Queue,
    pub store: Store,
    /// `cli:<user>` or `token:<id>`.
    pub actor: String,
}

/// The user running the CLI, as the audit log names them.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", std::process::id()));
    format!("cli:{user}")
}

fn run_entry(actor: &str, action: &str, run: &WorkflowRun) -> AuditEntry {
    AuditEntry::new(actor, action, &run.workspace, ("run", run.id.to_hex()))
        .project(&run.project)
        .before(json!({ "status": run.status.as_str() }))
}

impl Operator {
    async fn audit(&self, entry: AuditEntry) -> Result<()> {
        self.store.audit().append(&entry).await?;
        Ok(())
    }

    /// Records a run accepted from a submission this operator sent.
    pub async fn submitted(&self, run_id: ObjectId, request_id: &str) -> Result<()> {
        let run = control::load_run(&self.store, &run_id.to_hex()).await?;
        let entry = AuditEntry::new(
            &self.actor,
            "run.submit",
            &run.workspace,
            ("run", run_id.to_hex()),
        )
        .project(&run.project)
        .after(json!({ "request_id": request_id, "name": run.name, "tasks": run.task_count }));
        self.audit(entry).await
    }

    pub async fn cancel_run(&self, id: &str) -> Result<(u64, usize)> {
        let run = control::load_run(&self.store, id).await?;
        let (now, running) = control::cancel_run(&self.queue, &self.store, id).await?;
        let after = json!({ "cancelled": now, "signalled": running });
        self.audit(run_entry(&self.actor, "run.cancel", &run).after(after))
            .await?;
        Ok((now, running))
    }

    pub async fn cancel_task(&self, id: &str, node: &str) -> Result<(u64, usize)> {
        let run = control::load_run(&self.store, id).await?;
        let (now, running) = control::cancel_task(&self.queue, &self.store, id, node).await?;
        let after = json!({ "node": node, "cancelled": now, "signalled": running });
        self.audit(run_entry(&self.actor, "task.cancel", &run).after(after))
            .await?;
        Ok((now, running))
    }

    pub async fn retry_run(&self, id: &str) -> Result<ObjectId> {
        let run = control::load_run(&self.store, id).await?;
        let new = control::retry_run(&self.store, id).await?;
        let after = json!({ "run_id": new.to_hex() });
        self.audit(run_entry(&self.actor, "run.retry", &run).after(after))
            .await?;
        Ok(new)
    }

    pub async fn retry_task(&self, id: &str, node: &str) -> Result<Vec<String>> {
        let run = control::load_run(&self.store, id).await?;
        let reset = control::retry_task(&self.store, id, node).await?;
        let after = json!({ "node": node, "reset": reset });
        self.audit(run_entry(&self.actor, "task.retry", &run).after(after))
            .await?;
        Ok(reset)
    }

    /// The run a dead letter names, if it still exists.
    pub async fn letter_run(&self, letter: &DeadLetter) -> Result<Option<WorkflowRun>> {
        let Some(id) = letter.payload["run_id"].as_str() else {
            return Ok(None);
        };
        match control::load_run(&self.store, id).await {
            Ok(run) => Ok(Some(run)),
            Err(ControlError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn letter(&self, id: &str) -> Result<DeadLetter> {
        self.queue
            .dead_letter_by_id(id)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("no dead letter {id}")))
    }

    /// Retries a dead letter's task (and its downstream) in place, then removes the letter.
    pub async fn replay(&self, letter: &DeadLetter) -> Result<(String, Vec<String>)> {
        let (Some(run_id), Some(node)) = (
            letter.payload["run_id"].as_str(),
            letter.payload["node_id"].as_str(),
        ) else {
            return Err(ControlError::Conflict(format!(
                "dead letter {} names no run and node: {}",
                letter.id, letter.payload
            )));
        };
        let run = control::load_run(&self.store, run_id).await?;
        let reset = control::retry_task(&self.store, run_id, node).await?;
        self.queue
            .remove_dead_letters(std::slice::from_ref(&letter.id))
            .await?;
        let after = json!({ "letter": letter.id, "node": node, "reset": reset });
        self.audit(run_entry(&self.actor, "dlq.replay", &run).after(after))
            .await?;
        Ok((run_id.to_owned(), reset))
    }

    /// Removes the given dead letters (`None`: all of them). `workspace` is the one the
    /// letters were checked to belong to, or `*` for a fleet-wide purge.
    pub async fn purge(&self, ids: Option<&[String]>, workspace: &str) -> Result<u64> {
        let removed = match ids {
            Some(ids) => self.queue.remove_dead_letters(ids).await?,
            None => self.queue.purge_dead_letters().await?,
        };
        let entry = AuditEntry::new(
            &self.actor,
            "dlq.purge",
            workspace,
            ("dead_letters", ids.map_or("*".into(), |ids| ids.join(","))),
        )
        .after(json!({ "removed": removed }));
        self.audit(entry).await?;
        Ok(removed)
    }

    pub async fn create_token(
        &self,
        name: &str,
        workspace: &str,
        scopes: Vec<TokenScope>,
    ) -> Result<NewToken> {
        self.active_workspace(workspace).await?;
        let new = token::mint(name, workspace, scopes, &self.actor);
        self.store.tokens().insert(&new.token).await?;
        let scopes: Vec<&str> = new.token.scopes.iter().map(|s| s.as_str()).collect();
        let entry = AuditEntry::new(
            &self.actor,
            "token.create",
            workspace,
            ("token", new.token.id.clone()),
        )
        .after(json!({ "name": name, "scopes": scopes }));
        self.audit(entry).await?;
        Ok(new)
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let token = self.store.tokens().get(id).await?;
        let Some(token) = token.filter(|t| t.revoked_at.is_none()) else {
            return Err(ControlError::NotFound(format!("no active token {id}")));
        };
        self.store.tokens().revoke(id).await?;
        let entry = AuditEntry::new(
            &self.actor,
            "token.revoke",
            &token.workspace,
            ("token", id.to_owned()),
        )
        .before(json!({ "name": token.name }));
        self.audit(entry).await
    }

    async fn active_workspace(&self, slug: &str) -> Result<Workspace> {
        match self.store.workspaces().get(slug).await? {
            Some(w) if w.status == Lifecycle::Active => Ok(w),
            Some(_) => Err(ControlError::Conflict(format!(
                "workspace '{slug}' is archived"
            ))),
            None => Err(ControlError::NotFound(format!("no workspace '{slug}'"))),
        }
    }

    /// Creates a workspace; false (and no entry) when it exists already.
    pub async fn create_workspace(&self, slug: &str, name: &str) -> Result<bool> {
        harmonia_shared::model::workspace::check_slug(slug).map_err(ControlError::Conflict)?;
        let now = DateTime::now();
        let ws = Workspace {
            id: ObjectId::new(),
            slug: slug.to_owned(),
            name: name.to_owned(),
            status: Lifecycle::Active,
            created_by: self.actor.clone(),
            created_at: now,
            updated_at: now,
        };
        let created = self.store.workspaces().create(&ws).await?;
        if created {
            let entry = AuditEntry::new(
                &self.actor,
                "workspace.create",
                slug,
                ("workspace", slug.to_owned()),
            )
            .after(json!({ "name": name }));
            self.audit(entry).await?;
        }
        Ok(created)
    }

    /// Creates a project in an active workspace; false (and no entry) when it exists already.
    pub async fn create_project(&self, workspace: &str, slug: &str, name: &str) -> Result<bool> {
        harmonia_shared::model::workspace::check_slug(slug).map_err(ControlError::Conflict)?;
        self.active_workspace(workspace).await?;
        let now = DateTime::now();
        let project = Project {
            id: ObjectId::new(),
            workspace: workspace.to_owned(),
            slug: slug.to_owned(),
            name: name.to_owned(),
            description: String::new(),
            status: Lifecycle::Active,
            created_by: self.actor.clone(),
            created_at: now,
            updated_at: now,
        };
        let created = self.store.projects().create(&project).await?;
        if created {
            let entry = AuditEntry::new(
                &self.actor,
                "project.create",
                workspace,
                ("project", format!("{workspace}/{slug}")),
            )
            .project(slug)
            .after(json!({ "name": name }));
            self.audit(entry).await?;
        }
        Ok(created)
    }

    /// Archives or reactivates a workspace (`project: None`) or one of its projects.
    pub async fn set_lifecycle(
        &self,
        workspace: &str,
        project: Option<&str>,
        status: Lifecycle,
    ) -> Result<()> {
        let found = match project {
            None => {
                self.store
                    .workspaces()
                    .set_status(workspace, status)
                    .await?
            }
            Some(p) => {
                self.store
                    .projects()
                    .set_status(workspace, p, status)
                    .await?
            }
        };
        let (kind, id) = match project {
            None => ("workspace", workspace.to_owned()),
            Some(p) => ("project", format!("{workspace}/{p}")),
        };
        if !found {
            return Err(ControlError::NotFound(format!("no {kind} '{id}'")));
        }
        let action = format!(
            "{kind}.{}",
            if status == Lifecycle::Archived {
                "archive"
            } else {
                "activate"
            }
        );
        self.audit(AuditEntry::new(&self.actor, &action, workspace, (kind, id)))
            .await
    }
}
