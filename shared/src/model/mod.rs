//! Domain documents, one file per collection, and the task-type catalogue.

pub mod rejection; // submission_rejections
pub mod run; // workflow_runs
pub mod task; // run_tasks
pub mod task_types; // known task types and their submit-time parameter checks
pub mod worker; // workers

pub use rejection::SubmissionRejection;
pub use run::{RunStatus, TaskCounts, WorkflowRun};
pub use task::{Progress, RunTask, TaskError, TaskStatus};
pub use worker::{WorkerDoc, WorkerState};

/// Version of the document shapes; `store::migrate` brings a database up to it.
pub const SCHEMA_VERSION: i32 = 1;
