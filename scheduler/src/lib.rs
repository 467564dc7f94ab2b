//! `harmonia-scheduler`: turns submissions into runs and tasks in MongoDB and promotes ready tasks
//! into Redis streams. The binary is a thin clap front over this library.

pub mod admit; // workspace and project must exist and be active
pub mod cli; // one file per subcommand
pub mod context; // what the loops share
pub mod control; // cancel and retry
pub mod create; // submission -> tasks, then the run document (commit marker); idempotent
pub mod events;
pub mod gateway; // the HTTP API: axum + utoipa, tokens, problem+json
pub mod ingest; // the submissions stream: validate, create, reply exactly once
pub mod listing; // run listing filters shared by the gateway and `list`
pub mod models; // which model each task works on (model affinity)
pub mod ops; // operator actions, each written to the audit log // task events -> promote or skip downstream
pub mod publish; // MongoDB `publish_due` -> Redis task streams
pub mod reader; // reading a stream through the scheduler replicas' group
pub mod reconcile; // the safety net: lost leases, lost Redis data, lost events, wait reasons
