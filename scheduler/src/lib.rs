//! `harmonia-scheduler`: turns submissions into runs and tasks in MongoDB and promotes ready tasks
//! into Redis streams. The binary is a thin clap front over this library.

pub mod cli;
