//! Domain documents, one file per collection, and the task kinds.

pub mod artifact; // artifacts
pub mod checksum; // checksums
pub mod license; // licenses
pub mod model_artifact; // model_artifacts
pub mod rejection; // submission_rejections
pub mod run; // workflow_runs
pub mod task; // run_tasks
pub mod task_kind; // every task type, with its typed params: the one list to extend
pub mod task_params; // typed params of each task kind and their submit-time checks
pub mod worker; // workers

pub use artifact::{Artifact, StorageRef};
pub use checksum::{CheckOf, Checksum, ExpectedSource};
pub use license::License;
pub use model_artifact::{ArtifactFile, Lineage, ModelArtifact};
pub use rejection::{FieldError, SubmissionRejection};
pub use run::{RunStatus, TaskCounts, WorkflowRun};
pub use task::{Progress, Resources, RunTask, TaskError, TaskStatus};
pub use task_kind::{KindError, TaskKind};
pub use worker::{WorkerDoc, WorkerState};

/// Version of the document shapes; `store::migrate` brings a database up to it.
/// 2: model_artifacts, checksums, licenses, artifacts.
pub const SCHEMA_VERSION: i32 = 3;
