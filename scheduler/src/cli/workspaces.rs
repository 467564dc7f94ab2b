//! `harmonia-scheduler workspaces …` and `projects …`: the registry submissions are checked
//! against (a run needs an active workspace and project).

use std::io::Write;
use std::process::ExitCode;

use harmonia_shared::Config;
use harmonia_shared::model::Lifecycle;
use harmonia_shared::queue::Queue;
use harmonia_shared::store::Store;

use crate::ops::{Operator, cli_actor};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorkspacesArgs {
    /// Register a workspace (succeeds, saying so, if it exists).
    Create {
        slug: String,
        /// Display name; the slug when absent.
        #[arg(long, env = "HARMONIA_WORKSPACE_NAME")]
        name: Option<String>,
    },
    /// List workspaces.
    List {
        #[arg(long, env = "HARMONIA_JSON")]
        json: bool,
    },
    /// Stop a workspace taking new runs (its history stays readable).
    Archive { slug: String },
    /// Let an archived workspace take runs again.
    Activate { slug: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProjectsArgs {
    /// Register a project in an active workspace (succeeds, saying so, if it exists).
    Create {
        workspace: String,
        slug: String,
        #[arg(long, env = "HARMONIA_PROJECT_NAME")]
        name: Option<String>,
    },
    /// List projects, of one workspace or all.
    List {
        workspace: Option<String>,
        #[arg(long, env = "HARMONIA_JSON")]
        json: bool,
    },
    Archive {
        workspace: String,
        slug: String,
    },
    Activate {
        workspace: String,
        slug: String,
    },
}

async fn operator(config: &Config) -> anyhow::Result<Operator> {
    Ok(Operator {
        queue: Queue::connect(&config.redis).await?,
        store: Store::connect(&config.mongo).await?,
        actor: cli_actor(),
    })
}

fn said(created: bool, what: &str) -> String {
    if created {
        format!("created {what}")
    } else {
        format!("{what} exists already")
    }
}

pub async fn workspaces(config: &Config, args: &WorkspacesArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args {
        WorkspacesArgs::Create { slug, name } => {
            let op = operator(config).await?;
            let created = op
                .create_workspace(slug, name.as_deref().unwrap_or(slug))
                .await?;
            writeln!(out, "{}", said(created, &format!("workspace {slug}")))?;
        }
        WorkspacesArgs::List { json } => {
            let store = Store::connect(&config.mongo).await?;
            let all = store.workspaces().list().await?;
            if *json {
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out)?;
            } else {
                for w in &all {
                    writeln!(out, "{:<24} {:<9} {}", w.slug, w.status.as_str(), w.name)?;
                }
            }
        }
        WorkspacesArgs::Archive { slug } | WorkspacesArgs::Activate { slug } => {
            let status = lifecycle(matches!(args, WorkspacesArgs::Archive { .. }));
            operator(config)
                .await?
                .set_lifecycle(slug, None, status)
                .await?;
            writeln!(out, "workspace {slug} is {}", status.as_str())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn lifecycle(archive: bool) -> Lifecycle {
    if archive {
        Lifecycle::Archived
    } else {
        Lifecycle::Active
    }
}

pub async fn projects(config: &Config, args: &ProjectsArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args {
        ProjectsArgs::Create {
            workspace,
            slug,
            name,
        } => {
            let op = operator(config).await?;
            let created = op
                .create_project(workspace, slug, name.as_deref().unwrap_or(slug))
                .await?;
            writeln!(
                out,
                "{}",
                said(created, &format!("project {workspace}/{slug}"))
            )?;
        }
        ProjectsArgs::List { workspace, json } => {
            let store = Store::connect(&config.mongo).await?;
            let all = store.projects().list(workspace.as_deref()).await?;
            if *json {
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out)?;
            } else {
                for p in &all {
                    let id = format!("{}/{}", p.workspace, p.slug);
                    writeln!(out, "{id:<40} {:<9} {}", p.status.as_str(), p.name)?;
                }
            }
        }
        ProjectsArgs::Archive { workspace, slug } | ProjectsArgs::Activate { workspace, slug } => {
            let status = lifecycle(matches!(args, ProjectsArgs::Archive { .. }));
            let op = operator(config).await?;
            op.set_lifecycle(workspace, Some(slug), status).await?;
            writeln!(out, "project {workspace}/{slug} is {}", status.as_str())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
