//! The HTTP gateway as a child process on a free port, and tokens minted with the CLI.

use std::time::Duration;

use anyhow::Context;

use crate::Scope;
use crate::process::{ChildGuard, free_port};

#[derive(Debug)]
pub struct Gateway {
    pub process: ChildGuard,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    /// A client that does not follow redirects (downloads answer 302).
    pub http: reqwest::Client,
}

impl Gateway {
    /// Starts `harmonia-scheduler gateway` with `extra` flags and waits for `/readyz`.
    pub async fn start(scope: &Scope, extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["gateway", "--listen", &listen];
        args.extend_from_slice(extra);
        let process = scope.spawn("gateway", "harmonia-scheduler", &args)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let base = format!("http://{listen}");
        let ready = format!("{base}/readyz");
        crate::wait_for(
            "the gateway to be ready",
            Duration::from_secs(30),
            || async {
                Ok(match http.get(&ready).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                })
            },
        )
        .await?;
        Ok(Self {
            process,
            base,
            http,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` with `token`.
    pub fn get(&self, token: &Token, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.url(path))
            .header("Authorization", token.bearer())
    }

    /// `POST path` with `token` (add a body with `.json(..)`).
    pub fn post(&self, token: &Token, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("Authorization", token.bearer())
    }
}

/// A token minted by `harmonia-scheduler tokens create` (the workspace must exist).
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Token {
    pub fn create(scope: &Scope, workspace: &str, scopes: &str) -> anyhow::Result<Self> {
        let out = scope.scheduler_cli(&[
            "tokens",
            "create",
            "--name",
            "tests",
            "--workspace",
            workspace,
            "--scope",
            scopes,
            "--json",
        ])?;
        anyhow::ensure!(
            out.status.success(),
            "tokens create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(Self {
            id: v["id"].as_str().context("id")?.to_owned(),
            secret: v["token"].as_str().context("token")?.to_owned(),
        })
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}
