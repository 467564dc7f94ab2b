//! `harmonia-scheduler dlq list|show|replay|purge`: the tasks that failed for good.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::queue::Queue;
use harmonia_shared::queue::dead::DeadLetter;
use harmonia_shared::store::Store;

use crate::ops::{Operator, cli_actor};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqArgs {
    /// The newest dead letters, newest first.
    List {
        #[arg(long, env = "HARMONIA_DLQ_COUNT", default_value_t = 50)]
        count: usize,
        /// Print them as JSON.
        #[arg(long, env = "HARMONIA_JSON")]
        json: bool,
    },
    /// One dead letter, with its task as MongoDB has it now (JSON).
    Show { id: String },
    /// Retry the dead letter's task (and its downstream) in place, then remove the letter.
    Replay { id: String },
    /// Remove the given dead letters, or all of them with --all.
    Purge {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

pub async fn run(config: &Config, args: &DlqArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::connect(&config.redis).await?;
    let op = || async {
        anyhow::Ok(Operator {
            queue: queue.clone(),
            store: Store::connect(&config.mongo).await?,
            actor: cli_actor(),
        })
    };
    let mut out = std::io::stdout().lock();
    match args {
        DlqArgs::List { count, json } => {
            let letters = queue.dead_letters(*count).await?;
            if *json {
                serde_json::to_writer_pretty(&mut out, &letters)?;
                writeln!(out)?;
            } else {
                for l in &letters {
                    writeln!(out, "{}", line(l))?;
                }
            }
        }
        DlqArgs::Show { id } => {
            let letter = find(&queue, id).await?;
            let store = Store::connect(&config.mongo).await?;
            let task = match letter.payload["task_id"].as_str() {
                Some(t) => {
                    store
                        .tasks()
                        .get(mongodb::bson::oid::ObjectId::parse_str(t)?)
                        .await?
                }
                None => None,
            };
            let doc = serde_json::json!({ "letter": letter, "task": task });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
        DlqArgs::Replay { id } => {
            let op = op().await?;
            let letter = op.letter(id).await?;
            let (run_id, reset) = op.replay(&letter).await?;
            let doc = serde_json::json!({ "replayed": id, "run_id": run_id, "reset": reset });
            writeln!(out, "{doc}")?;
        }
        DlqArgs::Purge { ids, all } => {
            anyhow::ensure!(
                *all || !ids.is_empty(),
                "name the dead letters to remove, or pass --all"
            );
            let ids = (!*all).then_some(ids.as_slice());
            let removed = op().await?.purge(ids, "*").await?;
            writeln!(out, "{}", serde_json::json!({ "removed": removed }))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn find(queue: &Queue, id: &str) -> anyhow::Result<DeadLetter> {
    queue
        .dead_letter_by_id(id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter {id} (list them with `dlq list`)"))
}

fn line(l: &DeadLetter) -> String {
    let p = &l.payload;
    let field = |k: &str| {
        p[k].as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| p[k].to_string())
    };
    format!(
        "{}  run {} node {} ({}) attempt {}: {}",
        l.id,
        field("run_id"),
        field("node_id"),
        field("type"),
        field("attempt"),
        field("error")
    )
}
