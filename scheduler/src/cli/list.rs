//! `harmonia-scheduler list`: runs matching filters, a page at a time (the gateway's
//! `GET /api/v1/runs` over the CLI).

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::store::Store;

use crate::listing::ListParams;

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this workspace's runs (all workspaces when absent).
    #[arg(long, env = "HARMONIA_WORKSPACE")]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub params: ListParams,
    /// Print the page as JSON: `{"runs": [...], "next": cursor}`.
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

pub async fn run(config: &Config, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let query = args
        .params
        .query(args.workspace.clone())
        .map_err(|errors| {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| format!("--{}: {}", e.path.replace('_', "-"), e.message))
                .collect();
            anyhow::anyhow!("{}", lines.join("; "))
        })?;
    let store = Store::connect(&config.mongo).await?;
    let page = store.runs().list(&query).await??;
    let mut out = std::io::stdout().lock();
    if args.json {
        let runs: Vec<_> = page
            .runs
            .iter()
            .map(crate::gateway::views::RunSummary::from)
            .collect();
        let doc = serde_json::json!({ "runs": runs, "next": page.next });
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for r in &page.runs {
        let created = r.created_at.try_to_rfc3339_string().unwrap_or_default();
        writeln!(
            out,
            "{}  {:<10} {:<20} {:<12} {:>3}/{:<3} {}  {}",
            r.id,
            r.status.as_str(),
            format!("{}/{}", r.workspace, r.project),
            r.created_by,
            r.counts.succeeded,
            r.task_count,
            created,
            r.name
        )?;
    }
    if let Some(next) = &page.next {
        writeln!(out, "more: --cursor {next}")?;
    }
    Ok(ExitCode::SUCCESS)
}
