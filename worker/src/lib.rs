//! `harmonia-worker`: claims tasks it can run from Redis streams, executes them, and records
//! results in MongoDB and S3. The binary is a thin clap front over this library.

pub mod cli;
