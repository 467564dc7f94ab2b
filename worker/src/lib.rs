//! `harmonia-worker`: claims tasks it can run from Redis streams, executes them, and records
//! results in MongoDB and S3. The binary is a thin clap front over this library.

pub mod affinity; // hint streams of held models first, a head start for holders
pub mod claim; // the claim loop: fitting streams -> batched fenced claims in MongoDB
pub mod cli; // one file per subcommand
pub mod devices; // free GPUs and CPU slots
pub mod execute; // one attempt: executor, timeout, fenced outcome
pub mod executor; // the Executor trait and one file per task type
pub mod hold; // where an attempt's claim stands: written, or deferred to its outcome
pub mod lease; // heartbeats, lease renewal, cancel signals
pub mod metrics; // Prometheus: tasks, queue wait, run time, downloads, pool
pub mod models; // hub downloads (verified), cache, warm pool, candle models
pub mod outcomes; // group commit of outcomes: batched fenced writes, then events
pub mod registry; // worker id, advertised resources
pub mod worker; // what the loops share
