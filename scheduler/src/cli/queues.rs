//! `harmonia-scheduler queues`: every stream Harmonia uses, with its backlog, from Redis.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::queue::stats::StreamStats;
use harmonia_shared::queue::{Queue, SCHEDULER_GROUP, WORKERS_GROUP};

#[derive(Debug, Clone, clap::Args)]
pub struct QueuesArgs {
    /// Print the streams as JSON.
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

pub async fn run(config: &Config, args: &QueuesArgs) -> anyhow::Result<ExitCode> {
    let queue = Queue::connect(&config.redis).await?;
    let all = collect(&queue).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &all)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stream Harmonia uses: submissions, events, one per task class, dead letters.
pub async fn collect(
    queue: &Queue,
) -> Result<Vec<StreamStats>, harmonia_shared::queue::QueueError> {
    let keys = queue.keys().clone();
    let mut streams: Vec<(String, Option<&str>)> = vec![
        (keys.submissions(), Some(SCHEDULER_GROUP)),
        (keys.events(), Some(SCHEDULER_GROUP)),
    ];
    let mut classes = queue.classes().await?;
    classes.sort_unstable();
    streams.extend(
        classes
            .into_iter()
            .map(|class| (keys.task_stream(class), Some(WORKERS_GROUP))),
    );
    streams.push((keys.dead_letter(), None));
    let mut all = Vec::new();
    for (stream, group) in streams {
        all.push(queue.stream_stats(&stream, group).await?);
    }
    Ok(all)
}

fn print_table(out: &mut impl Write, all: &[StreamStats]) -> std::io::Result<()> {
    let age = |ms: Option<u64>| ms.map_or("-".to_owned(), |ms| format!("{:.1} s", ms as f64 / 1e3));
    writeln!(
        out,
        "{:<32} {:<10} {:>7} {:>8} {:>7} {:>10} {:>15} {:>13}",
        "stream",
        "group",
        "length",
        "pending",
        "lag",
        "consumers",
        "oldest pending",
        "oldest entry"
    )?;
    for s in all {
        let grouped = |v: String| if s.group.is_some() { v } else { "-".to_owned() };
        writeln!(
            out,
            "{:<32} {:<10} {:>7} {:>8} {:>7} {:>10} {:>15} {:>13}",
            s.stream,
            s.group.as_deref().unwrap_or("-"),
            s.length,
            grouped(s.pending.to_string()),
            grouped(s.lag.map_or("?".to_owned(), |l| l.to_string())),
            grouped(s.consumers.to_string()),
            age(s.oldest_pending_age_ms),
            age(s.oldest_entry_age_ms),
        )?;
    }
    Ok(())
}
