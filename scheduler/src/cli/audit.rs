//! `harmonia-scheduler audit`: the audit log, newest first.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::store::{AuditQuery, Store};
use mongodb::bson::oid::ObjectId;

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only this workspace's entries.
    #[arg(long, env = "HARMONIA_WORKSPACE")]
    pub workspace: Option<String>,
    /// Only this actor's (`token:<id>`, `cli:<user>`).
    #[arg(long, env = "HARMONIA_AUDIT_ACTOR")]
    pub actor: Option<String>,
    /// Only this action (`run.cancel`, `token.create`, ...).
    #[arg(long, env = "HARMONIA_AUDIT_ACTION")]
    pub action: Option<String>,
    /// Entries older than this entry id (the last one of the previous page).
    #[arg(long, env = "HARMONIA_AUDIT_BEFORE")]
    pub before: Option<String>,
    #[arg(long, env = "HARMONIA_AUDIT_LIMIT", default_value_t = 50)]
    pub limit: i64,
    #[arg(long, env = "HARMONIA_JSON")]
    pub json: bool,
}

pub async fn run(config: &Config, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let before = args
        .before
        .as_deref()
        .map(|b| {
            ObjectId::parse_str(b)
                .map_err(|_| anyhow::anyhow!("--before: '{b}' is not an entry id"))
        })
        .transpose()?;
    let store = Store::connect(&config.mongo).await?;
    let entries = store
        .audit()
        .find(&AuditQuery {
            workspace: args.workspace.clone(),
            actor: args.actor.clone(),
            action: args.action.clone(),
            before,
            limit: args.limit,
        })
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let plain: Vec<_> = entries.iter().map(crate::gateway::views::plain).collect();
        serde_json::to_writer_pretty(&mut out, &plain)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        let at = e.created_at.try_to_rfc3339_string().unwrap_or_default();
        let after = e
            .after
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        writeln!(
            out,
            "{}  {at}  {:<12} {:<20} {:<16} {}:{} {after}",
            e.id, e.workspace, e.actor, e.action, e.resource_type, e.resource_id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
