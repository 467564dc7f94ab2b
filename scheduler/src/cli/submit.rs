//! `harmonia-scheduler submit <file>`: XADDs a submission, like any client would, and prints the
//! scheduler's reply.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use harmonia_shared::Config;
use harmonia_shared::queue::{Queue, Reply};
use mongodb::bson::oid::ObjectId;

#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// JSON submission (see docs/protocol.md); `-` reads standard input. A missing
    /// `request_id` is generated.
    pub file: String,
    /// How long to wait for the scheduler's reply, in seconds.
    #[arg(long, env = "HARMONIA_SUBMIT_TIMEOUT_S", default_value_t = 30)]
    pub timeout_s: u64,
    /// After the reply, wait for the run to finish and print its final status (exit 1 unless
    /// it succeeded).
    #[arg(long, env = "HARMONIA_SUBMIT_WAIT")]
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
    let timeout = Duration::from_secs(args.timeout_s);
    let payload = queue
        .submit_and_wait(&request_id, &value.to_string(), timeout)
        .await?;
    writeln!(std::io::stdout().lock(), "{payload}")?;
    let reply: Reply = serde_json::from_str(&payload)?;
    if let Reply::Accepted { run_id } = &reply {
        let op = crate::ops::Operator {
            queue,
            store: harmonia_shared::store::Store::connect(&config.mongo).await?,
            actor: crate::ops::cli_actor(),
        };
        op.submitted(ObjectId::parse_str(run_id)?, &request_id)
            .await?;
    }
    match reply {
        Reply::Rejected { .. } => Ok(ExitCode::FAILURE),
        Reply::Accepted { run_id } if args.wait => wait(config, &run_id).await,
        Reply::Accepted { .. } => Ok(ExitCode::SUCCESS),
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
