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

/// A browser's dashboard session over plain HTTP: the session cookie and the CSRF token its
/// pages carry, got by signing in as a browser does (the sign-in form's own CSRF cookie first).
#[derive(Debug, Clone)]
pub struct DashboardSession {
    /// `hm_session=<secret>`, ready for a `Cookie` header.
    pub cookie: String,
    /// The `Set-Cookie` the sign-in answered, with its attributes.
    pub set_cookie: String,
    pub csrf: String,
}

fn cookie_named(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The value of the first hidden `csrf` field of a page.
pub fn hidden_csrf(html: &str) -> Option<String> {
    const FIELD: &str = r#"name="csrf" value=""#;
    let at = html.find(FIELD)? + FIELD.len();
    html[at..].split('"').next().map(str::to_owned)
}

impl DashboardSession {
    pub async fn sign_in(gw: &Gateway, token: &Token) -> anyhow::Result<Self> {
        let page = gw.http.get(gw.url("/login")).send().await?;
        let login = cookie_named(&page, "hm_login_csrf").context("no sign-in CSRF cookie")?;
        let pair = login.split(';').next().unwrap_or_default().to_owned();
        let csrf = hidden_csrf(&page.text().await?).context("no csrf field on /login")?;
        let r = gw
            .http
            .post(gw.url("/login"))
            .header("cookie", &pair)
            .form(&[
                ("token", token.secret.as_str()),
                ("csrf", &csrf),
                ("next", "/runs"),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == reqwest::StatusCode::SEE_OTHER,
            "sign-in answered {}",
            r.status()
        );
        let set_cookie = cookie_named(&r, "hm_session").context("no session cookie")?;
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
        let html = gw
            .http
            .get(gw.url("/runs"))
            .header("cookie", &cookie)
            .send()
            .await?
            .text()
            .await?;
        Ok(Self {
            csrf: hidden_csrf(&html).context("no csrf field on /runs")?,
            cookie,
            set_cookie,
        })
    }
}
