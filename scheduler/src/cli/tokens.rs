//! `harmonia-scheduler tokens create|list|revoke`: bearer tokens of the HTTP gateway.

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::model::TokenScope;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;
use serde_json::json;

use crate::ops::{Operator, cli_actor};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokensArgs {
    /// Mint a token bound to one workspace. The token is printed once and never stored.
    Create {
        /// What the token is for (shown by `tokens list`).
        #[arg(long, env = "HARMONIA_TOKEN_NAME")]
        name: String,
        #[arg(long, env = "HARMONIA_WORKSPACE")]
        workspace: String,
        /// Scopes: runs:read, runs:write, artifacts:read, admin (admin implies the others).
        #[arg(long = "scope", env = "HARMONIA_TOKEN_SCOPES", value_delimiter = ',', required = true, value_parser = TokenScope::parse)]
        scopes: Vec<TokenScope>,
        /// Print the token and its id as JSON.
        #[arg(long, env = "HARMONIA_JSON")]
        json: bool,
    },
    /// List tokens (never their secrets), of one workspace or all.
    List {
        #[arg(long, env = "HARMONIA_WORKSPACE")]
        workspace: Option<String>,
        #[arg(long, env = "HARMONIA_JSON")]
        json: bool,
    },
    /// Revoke a token by id (the part after `hm_`): it stops working at once.
    Revoke { id: String },
}

pub async fn run(config: &Config, args: &TokensArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&config.mongo).await?;
    let op = || async {
        anyhow::Ok(Operator {
            queue: Queue::connect(&config.redis).await?,
            store: store.clone(),
            actor: cli_actor(),
        })
    };
    let mut out = std::io::stdout().lock();
    match args {
        TokensArgs::Create {
            name,
            workspace,
            scopes,
            json,
        } => {
            let new = op()
                .await?
                .create_token(name, workspace, scopes.clone())
                .await?;
            if *json {
                let doc = json!({ "id": new.token.id, "token": new.plaintext,
                    "workspace": workspace, "scopes": new.token.scopes });
                writeln!(out, "{doc}")?;
            } else {
                writeln!(out, "{}", new.plaintext)?;
                tracing::info!(
                    "token {} for workspace {workspace}: store it now, it is not shown again",
                    new.token.id
                );
            }
        }
        TokensArgs::List { workspace, json } => {
            let tokens = store.tokens().list(workspace.as_deref()).await?;
            let rows: Vec<serde_json::Value> = tokens
                .iter()
                .map(|t| {
                    let time = |d: Option<mongodb::bson::DateTime>| {
                        d.map(|d| d.try_to_rfc3339_string().unwrap_or_default())
                    };
                    json!({ "id": t.id, "name": t.name, "workspace": t.workspace,
                        "scopes": t.scopes, "created_by": t.created_by,
                        "created_at": time(Some(t.created_at)),
                        "last_used_at": time(t.last_used_at), "revoked_at": time(t.revoked_at) })
                })
                .collect();
            if *json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                for t in &tokens {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    writeln!(
                        out,
                        "{}  {:<12} {:<8} {:<40} {}",
                        t.id,
                        t.workspace,
                        state,
                        scopes.join(","),
                        t.name
                    )?;
                }
            }
        }
        TokensArgs::Revoke { id } => {
            op().await?.revoke_token(id).await?;
            writeln!(out, "revoked token {id}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
