//! A real browser for dashboard tests: Debian's headless Chromium driven through its
//! chromedriver (WebDriver) with fantoccini. Each [`Browser`] has its own chromedriver on a free
//! port and its own profile, and saves screenshots where a person can look at them afterwards.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::Scope;
use crate::process::{ChildGuard, free_port};

/// Where `chromedriver` and `chromium` are: `HARMONIA_CHROMEDRIVER` / `HARMONIA_CHROMIUM`, else
/// Debian's paths (`scripts/test` installs both packages).
fn paths() -> (PathBuf, PathBuf) {
    let var = |name: &str, default: &str| {
        std::env::var_os(name).map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    (
        var("HARMONIA_CHROMEDRIVER", "/usr/bin/chromedriver"),
        var("HARMONIA_CHROMIUM", "/usr/bin/chromium"),
    )
}

/// Screenshots go to `target/test-output/dashboard/`, which outlives the test's scope.
pub fn screenshot_dir() -> PathBuf {
    crate::servers::workspace_root()
        .join("target")
        .join("test-output")
        .join("dashboard")
}

#[derive(Debug)]
pub struct Browser {
    pub client: Client,
    pub base: String,
    _driver: ChildGuard,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session that opens pages under `base`.
    pub async fn start(scope: &Scope, base: &str) -> anyhow::Result<Self> {
        let (driver_path, chromium) = paths();
        anyhow::ensure!(
            driver_path.is_file(),
            "{} not found: install Debian's chromium and chromium-driver (scripts/test does)",
            driver_path.display()
        );
        let port = free_port()?;
        let mut cmd = Command::new(&driver_path);
        cmd.arg(format!("--port={port}"));
        let label = format!("chromedriver-{port}");
        let driver = ChildGuard::spawn(&label, &mut cmd, &scope.dir.join(format!("{label}.log")))?;
        let profile = scope.dir.join(format!("chromium-profile-{port}"));
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps = caps.as_object().context("capabilities")?.clone();
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen; a refused connection is retried.
        let client = crate::wait_for(
            "chromedriver to open a session",
            Duration::from_secs(30),
            || async {
                let connector = HttpConnector::new();
                let mut builder = ClientBuilder::new(connector);
                builder.capabilities(caps.clone());
                Ok(builder.connect(&url).await.ok())
            },
        )
        .await?;
        Ok(Self {
            client,
            base: base.to_owned(),
            _driver: driver,
        })
    }

    pub async fn open(&self, path: &str) -> anyhow::Result<()> {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    /// The path (and query) of the current page.
    pub async fn path(&self) -> anyhow::Result<String> {
        let url = self.client.current_url().await?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// Signs in on the sign-in page with `token`, and waits for the page it leads to.
    pub async fn sign_in(&self, token: &str) -> anyhow::Result<()> {
        let field = self.client.find(Locator::Id("token")).await?;
        field.send_keys(token).await?;
        self.client
            .find(Locator::Css("form button[type=submit]"))
            .await?
            .click()
            .await?;
        self.left(field).await
    }

    /// Waits until `element`'s page has been replaced by the next one (the element is stale).
    pub async fn left(&self, element: fantoccini::elements::Element) -> anyhow::Result<()> {
        crate::wait_for("the next page", Duration::from_secs(30), || async {
            Ok(element.attr("id").await.is_err().then_some(()))
        })
        .await?;
        crate::wait_for("the page to load", Duration::from_secs(30), || async {
            let state = self
                .client
                .execute("return document.readyState;", vec![])
                .await?;
            Ok((state == "complete").then_some(()))
        })
        .await
    }

    /// Clicks the first element matching `css` and waits for the page it leads to.
    pub async fn click_through(&self, css: &str) -> anyhow::Result<()> {
        let target = self.client.find(Locator::Css(css)).await?;
        target.clone().click().await?;
        self.left(target).await
    }

    /// Text of the first element matching `css`, if any.
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => Ok(Some(e.text().await?)),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Texts of every element matching `css`.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.client.find_all(Locator::Css(css)).await? {
            out.push(e.text().await?);
        }
        Ok(out)
    }

    /// An attribute of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => Ok(e.attr(name).await?),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the first element matching `css` has attribute `name` equal to `want`.
    pub async fn await_attr(&self, css: &str, name: &str, want: &str) -> anyhow::Result<()> {
        crate::wait_for(
            &format!("{css} to have {name}={want}"),
            Duration::from_secs(60),
            || async { Ok((self.attr(css, name).await?.as_deref() == Some(want)).then_some(())) },
        )
        .await
    }

    /// Clicks the first element matching `css` and accepts the confirmation it asks for.
    pub async fn click_confirmed(&self, css: &str) -> anyhow::Result<String> {
        self.client.find(Locator::Css(css)).await?.click().await?;
        let question =
            crate::wait_for("a confirmation dialog", Duration::from_secs(10), || async {
                Ok(self.client.get_alert_text().await.ok())
            })
            .await?;
        self.client.accept_alert().await?;
        Ok(question)
    }

    /// Saves a PNG of the page as `<name>.png` under [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) -> anyhow::Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    pub async fn close(self) -> anyhow::Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
