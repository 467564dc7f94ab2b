//! A test client of the Redis-fronted API: submit, await the reply, await the run's end.

use std::time::Duration;

use anyhow::Context;
use harmonia_shared::model::{RunTask, WorkflowRun};
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use mongodb::bson::oid::ObjectId;

use crate::wait::wait_for;

#[derive(Debug, Clone)]
pub struct Client {
    pub queue: Queue,
    pub store: Store,
}

impl Client {
    pub async fn connect(scope: &crate::Scope) -> anyhow::Result<Self> {
        Self::for_config(&scope.config).await
    }

    /// Connects, and registers the workspaces and projects the tests and examples submit to
    /// (`ml/tests`, `ml/demo`, `demo/harmonia`): the scheduler takes runs for registered ones
    /// only.
    pub async fn for_config(config: &harmonia_shared::Config) -> anyhow::Result<Self> {
        let client = Self {
            queue: Queue::connect(&config.redis).await?,
            store: Store::connect(&config.mongo).await?,
        };
        harmonia_shared::store::migrate::migrate(&client.store).await?;
        for (workspace, project) in [("ml", "tests"), ("ml", "demo"), ("demo", "harmonia")] {
            client.open_project(workspace, project).await?;
        }
        Ok(client)
    }

    /// Registers an active workspace and project (no-op for those that exist).
    pub async fn open_project(&self, workspace: &str, project: &str) -> anyhow::Result<()> {
        use harmonia_shared::model::{Lifecycle, Project, Workspace};
        let now = mongodb::bson::DateTime::now();
        self.store
            .workspaces()
            .create(&Workspace {
                id: ObjectId::new(),
                slug: workspace.into(),
                name: workspace.into(),
                status: Lifecycle::Active,
                created_by: "tests".into(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        self.store
            .projects()
            .create(&Project {
                id: ObjectId::new(),
                workspace: workspace.into(),
                slug: project.into(),
                name: project.into(),
                description: String::new(),
                status: Lifecycle::Active,
                created_by: "tests".into(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        Ok(())
    }

    /// Submits as the protocol says (resending if Redis loses it) and returns the scheduler's
    /// reply (`{"status": ...}`).
    pub async fn submit(
        &self,
        submission: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.submit_waiting(submission, Duration::from_secs(30))
            .await
    }

    /// [`Self::submit`], waiting up to `timeout` for the reply (huge submissions take a while).
    pub async fn submit_waiting(
        &self,
        submission: &serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let request_id = submission["request_id"]
            .as_str()
            .context("submission without request_id")?;
        let payload = self
            .queue
            .submit_and_wait(request_id, &submission.to_string(), timeout)
            .await?;
        Ok(serde_json::from_str(&payload)?)
    }

    /// Submits and returns the new run's id; an error carries a rejection's errors.
    pub async fn start(&self, submission: &serde_json::Value) -> anyhow::Result<ObjectId> {
        let reply = self
            .submit_waiting(submission, Duration::from_secs(600))
            .await?;
        anyhow::ensure!(
            reply["status"] == "accepted",
            "submission rejected: {reply}"
        );
        Ok(ObjectId::parse_str(
            reply["run_id"].as_str().unwrap_or_default(),
        )?)
    }

    /// Waits until the run has finished (any terminal status).
    pub async fn finished(
        &self,
        run_id: ObjectId,
        timeout: Duration,
    ) -> anyhow::Result<WorkflowRun> {
        let last = std::sync::Mutex::new(None);
        let result = wait_for("the run to finish", timeout, || async {
            let run = self
                .store
                .runs()
                .get(run_id)
                .await?
                .context("run vanished")?;
            *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(run.status);
            Ok(run.status.is_terminal().then_some(run))
        })
        .await;
        result.with_context(|| {
            format!(
                "run {run_id} last seen {:?}",
                last.lock().unwrap_or_else(|e| e.into_inner())
            )
        })
    }

    /// Waits until task `node` of the run has `status`.
    pub async fn task_reaches(
        &self,
        run_id: ObjectId,
        node: &str,
        status: harmonia_shared::model::TaskStatus,
    ) -> anyhow::Result<RunTask> {
        wait_for(
            &format!("task {node} to be {}", status.as_str()),
            Duration::from_secs(60),
            || async {
                let task = self.task(run_id, node).await?;
                Ok((task.status == status).then_some(task))
            },
        )
        .await
    }

    pub async fn tasks(&self, run_id: ObjectId) -> anyhow::Result<Vec<RunTask>> {
        Ok(self.store.tasks().for_run(run_id).await?)
    }

    pub async fn task(&self, run_id: ObjectId, node: &str) -> anyhow::Result<RunTask> {
        self.store
            .tasks()
            .by_node(run_id, node)
            .await?
            .with_context(|| format!("no task {node}"))
    }
}

/// A submission with the given tasks (JSON values) and default metadata.
pub fn submission(request_id: &str, tasks: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "request_id": request_id, "workspace": "ml", "project": "tests", "name": request_id,
        "created_by": "tests", "tasks": tasks,
    })
}

/// The tasks of a run that exercises promotion and fan-out at once: a chain `c0 → c1 → …` of
/// `chain` `debug.sleep` tasks of `chain_ms` (each promoted when the one before succeeds) beside
/// `fan` independent ones `i0, i1, …` of `fan_ms`.
pub fn chain_and_fan(chain: usize, chain_ms: u64, fan: usize, fan_ms: u64) -> serde_json::Value {
    use serde_json::json;
    let chained = (0..chain).map(|i| {
        let after = if i == 0 {
            json!([])
        } else {
            json!([format!("c{}", i - 1)])
        };
        json!({"id": format!("c{i}"), "type": "debug.sleep", "params": {"ms": chain_ms},
               "depends_on": after})
    });
    let fanned = (0..fan)
        .map(|i| json!({"id": format!("i{i}"), "type": "debug.sleep", "params": {"ms": fan_ms}}));
    serde_json::Value::Array(chained.chain(fanned).collect())
}

/// The `path` of every error of a rejection reply.
pub fn error_paths(reply: &serde_json::Value) -> Vec<&str> {
    reply["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["path"].as_str()).collect())
        .unwrap_or_default()
}
