//! `harmonia-scheduler submit <file>`: XADDs a submission, like any client would, and prints the
//! scheduler's reply.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::queue::{Queue, Reply};
use mongodb::bson::oid::ObjectId;
use redis::AsyncCommands;

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// JSON submission (see docs/protocol.md); `-` reads standard input. A missing
    /// `request_id` is generated.
    pub file: String,
    /// How long to wait for the scheduler's reply, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout_s: u64,
    /// After the reply, wait for the run to finish and print its final status (exit 1 unless
    /// it succeeded).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(config: &Config, args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.file))?
    };
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", args.file))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("{}: a submission is a JSON object", args.file))?;
    let request_id = match obj.get("request_id").and_then(|v| v.as_str()) {
        Some(id) => id.to_owned(),
        None => {
            let id = format!("req-{}", ObjectId::new().to_hex());
            obj.insert("request_id".into(), id.clone().into());
            id
        }
    };
    let queue = Queue::connect(&config.redis).await?;
    let payload =
        submit_until_answered(&queue, &request_id, &value.to_string(), args.timeout_s).await?;
    writeln!(std::io::stdout().lock(), "{payload}")?;
    let reply: Reply = serde_json::from_str(&payload)?;
    match reply {
        Reply::Rejected { .. } => Ok(ExitCode::FAILURE),
        Reply::Accepted { run_id } if args.wait => wait(config, &run_id).await,
        Reply::Accepted { .. } => Ok(ExitCode::SUCCESS),
    }
}

/// XADDs the submission and waits for its reply. Until the reply is written the submission
/// lives only in Redis; if its entry vanishes unanswered (Redis lost its data), it is sent
/// again with the same request id, which is always safe.
async fn submit_until_answered(
    queue: &Queue,
    request_id: &str,
    payload: &str,
    timeout_s: u64,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_s);
    let replies = queue.keys().replies(request_id);
    let submissions = queue.keys().submissions();
    let mut conn = queue.conn().await?;
    let mut entry: String = conn
        .xadd(&submissions, "*", &[("payload", payload)])
        .await?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let slice = left.min(Duration::from_secs(1));
        if let Some(reply) = queue
            .next_entry(&replies, "0", slice)
            .await?
            .and_then(|e| e.get::<String>("payload"))
        {
            return Ok(reply);
        }
        if left.is_zero() {
            anyhow::bail!(
                "no reply for request {request_id} within {timeout_s} s (is a scheduler running?)"
            );
        }
        // The ack that removes the entry writes the reply in the same script: an entry gone
        // with no reply was lost, not answered.
        let still_there: redis::streams::StreamRangeReply =
            conn.xrange(&submissions, &entry, &entry).await?;
        let answered: usize = conn.xlen(&replies).await?;
        if still_there.ids.is_empty() && answered == 0 {
            tracing::warn!(%request_id, "the submission vanished from Redis unanswered; sending it again");
            entry = conn
                .xadd(&submissions, "*", &[("payload", payload)])
                .await?;
        }
    }
}

/// Polls the run until it finishes, printing progress lines on stderr.
async fn wait(config: &Config, run_id: &str) -> anyhow::Result<ExitCode> {
    let store = harmonia_shared::store::Store::connect(&config.mongo).await?;
    let id = ObjectId::parse_str(run_id)?;
    let mut last = String::new();
    loop {
        let run = store
            .recount_run(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("run {run_id} vanished"))?;
        let c = &run.counts;
        let line = format!(
            "run {run_id}: {:?}, {}/{} succeeded, {} running, {} failed",
            run.status, c.succeeded, run.task_count, c.running, c.failed
        );
        if line != last {
            tracing::info!("{line}");
            last = line;
        }
        if run.status.is_terminal() {
            return Ok(
                if run.status == harmonia_shared::model::RunStatus::Succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
