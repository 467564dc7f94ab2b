//! `harmonia-scheduler`: turns submissions into runs and tasks in MongoDB and promotes ready tasks
//! into Redis streams. The binary is a thin clap front over this library.

pub mod cli; // one file per subcommand
pub mod create; // submission -> run + tasks, one transaction, idempotent on request_id
pub mod ingest; // the submissions stream: validate, create, reply exactly once
