//! Domain documents, one file per collection, and the task-type catalogue.

pub mod task_types;
