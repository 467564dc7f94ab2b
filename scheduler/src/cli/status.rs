//! `harmonia-scheduler status <run_id>`: a run and every task, from MongoDB.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::store::Store;
use mongodb::bson::oid::ObjectId;

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    pub run_id: String,
    /// Print the run and its tasks as JSON.
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

pub async fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let id = ObjectId::parse_str(&args.run_id)
        .map_err(|_| anyhow::anyhow!("'{}' is not a run id (24 hex digits)", args.run_id))?;
    let store = Store::connect(&config.mongo).await?;
    // Aggregates are saved periodically while a run is active; show them exact (read-only).
    let run = store
        .recount_run(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run with id {}", args.run_id))?;
    let tasks = store.tasks().for_run(id).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        // Outputs in the bucket: the `artifacts` pointers the run's tasks wrote.
        let artifacts = store.artifacts().for_run(id).await?;
        let doc = serde_json::json!({ "run": run, "tasks": tasks, "artifacts": artifacts });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "run {} '{}' {:?}: {} tasks, {} succeeded, {} failed",
            run.id, run.name, run.status, run.task_count, run.counts.succeeded, run.counts.failed
        )?;
        for t in &tasks {
            let error = t.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
            let took = t.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default();
            let gpus = if t.gpu_indices.is_empty() {
                String::new()
            } else {
                format!("gpu {:?}", t.gpu_indices)
            };
            let waiting = t.wait_reason.as_deref().unwrap_or("");
            writeln!(
                out,
                "  {:<16} {:<14} {:<10} #{} {:<28} {:>8} {:<8} {error}{waiting}",
                t.node_id,
                t.task_type,
                t.status.as_str(),
                t.attempt,
                t.worker_id.as_deref().unwrap_or("-"),
                took,
                gpus,
            )?;
            if let Some(outputs) = t.outputs.as_ref().filter(|o| !o.is_empty()) {
                writeln!(out, "      {}", summary(outputs))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A task's outputs on one line: scalars as `key=value`, lists by their length (their first
/// text when they hold text), nested documents left to `--json`.
fn summary(outputs: &mongodb::bson::Document) -> String {
    use mongodb::bson::Bson;
    let mut parts = Vec::new();
    for (k, v) in outputs {
        let shown = match v {
            Bson::String(s) if s.chars().count() > 60 => {
                format!("{}…", s.chars().take(60).collect::<String>())
            }
            Bson::String(s) => s.clone(),
            Bson::Double(f) => format!("{f:.1}"),
            Bson::Array(items) => match items.first() {
                Some(Bson::String(s)) => format!("[{} items] {s:?}", items.len()),
                _ => format!("[{} items]", items.len()),
            },
            Bson::Document(_) | Bson::Null => continue,
            other => other.to_string(),
        };
        parts.push(format!("{k}={shown}"));
    }
    parts.join(" ")
}
