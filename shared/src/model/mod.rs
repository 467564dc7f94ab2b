//! Domain documents, one file per collection, and the task kinds.

pub mod artifact; // artifacts
pub mod audit; // audit_logs
pub mod checksum; // checksums
pub mod license; // licenses
pub mod model_artifact; // model_artifacts
pub mod rejection; // submission_rejections
pub mod run; // workflow_runs
pub mod session; // dashboard_sessions
pub mod task; // run_tasks
pub mod task_kind; // every task type, with its typed params: the one list to extend
pub mod task_params; // typed params of each task kind and their submit-time checks
pub mod token; // api_tokens
pub mod worker; // workers
pub mod workspace; // workspaces, projects

pub use artifact::{Artifact, StorageRef};
pub use audit::AuditEntry;
pub use checksum::{CheckOf, Checksum, ExpectedSource};
pub use license::License;
pub use model_artifact::{ArtifactFile, Lineage, ModelArtifact};
pub use rejection::{FieldError, SubmissionRejection};
pub use run::{RunStatus, TaskCounts, WorkflowRun};
pub use session::Session;
pub use task::{AttemptRecord, Progress, Resources, RunTask, TaskError, TaskStatus};
pub use task_kind::{KindError, TaskKind};
pub use token::{ApiToken, TokenScope};
pub use worker::{WorkerDoc, WorkerState};
pub use workspace::{Lifecycle, Project, Workspace};

/// Version of the document shapes; `store::migrate` brings a database up to it.
/// 2: model_artifacts, checksums, licenses, artifacts.
/// 4: workspaces, projects, api_tokens, audit_logs; runs record their task types.
/// 5: dashboard_sessions; tasks keep the history of their attempts.
/// 6: run_tasks' per-status indexes hold only the tasks in that status (partial).
pub const SCHEMA_VERSION: i32 = 6;
