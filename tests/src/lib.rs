//! Harmonia's test harness: real Redis, mongod and S3 servers per test suite, helpers to spawn
//! the scheduler and workers against them, and condition waits with deadlines.
//!
//! Also home of the dev servers the scripts and the demo run (`harmonia-dev`).

pub mod browser; // headless Chromium through chromedriver, for the dashboard
pub mod chaos; // the chaos workload and its verdict
pub mod client; // submit, await replies and runs
pub mod cluster; // a scheduler + workers with test timings
pub mod fleet; // the compose fleet in containers
pub mod gateway; // the HTTP gateway process, tokens
pub mod hub; // Hub-compatible model mirror over a directory
pub mod models; // real models from the local mirror, test repos
pub mod peer; // the apalis-redis peer of scripts/bench
pub mod process; // children that die with the test process
pub mod proxy; // a TCP proxy that holds a server's replies back on demand
pub mod redis_cluster; // a 3-master Redis Cluster with replicas, and a manual failover
pub mod s3; // S3 over a directory (s3s-fs), in-process or as `harmonia-dev s3`
pub mod servers; // redis-server and mongod launchers, replica-set initiation
pub mod services; // per-suite services and per-test scopes
pub mod wait; // wait_for: polling with a deadline

pub use client::{Client, error_paths, submission};
pub use services::{Scope, services};
pub use wait::wait_for;
