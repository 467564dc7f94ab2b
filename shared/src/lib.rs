//! Harmonia's shared library: everything the scheduler and the workers both need.

pub mod config; // one typed config: defaults < TOML file < flags/env; secrets from env/files
pub mod error; // executor errors that carry their retry policy
pub mod health; // connectivity checks behind `harmonia-* check`
pub mod model; // domain documents and the task-type catalogue
pub mod nvidia_smi; // GPU discovery: usable GPUs, free memory, why one is left out
pub mod outage; // one log line per outage of a backing service; how long it has answered
pub mod queue; // Redis, and only here: streams, groups, epochs, replies, cancel signals
pub mod resources; // GPU inventory, resource classes, the fit rule
pub mod signal; // SIGTERM / Ctrl-C
pub mod storage; // S3: buckets, put/get, multipart, presign
pub mod store; // MongoDB, and only here: one repository per collection
pub mod submission; // the submission contract: parse + validate with JSON paths
pub mod telemetry; // tracing set-up

pub use config::Config;
