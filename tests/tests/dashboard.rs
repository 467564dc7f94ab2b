//! The web dashboard in a real browser (Debian's headless Chromium through chromedriver) against
//! a real gateway, scheduler and worker: sign in, filter, watch a run live, cancel a node, replay
//! a dead letter, workspaces kept apart. Each browser test saves screenshots under
//! `target/test-output/dashboard/`. Sessions, CSRF and the events stream are also checked over
//! plain HTTP, where every header can be seen.

use fantoccini::Locator;
use harmonia_shared::model::TaskStatus;
use harmonia_tests::browser::Browser;
use harmonia_tests::cluster::{LONG, cluster};
use harmonia_tests::gateway::{DashboardSession, Gateway, Token};
use harmonia_tests::{Client, Scope, submission, wait_for};
use mongodb::bson::oid::ObjectId;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn cli_ok(scope: &Scope, args: &[&str]) -> String {
    scope.scheduler_cli_ok(args).expect("the CLI succeeds")
}

/// A run whose one task, `slow`, sleeps for two minutes: once that task is running.
async fn running_sleeper(client: &Client, request_id: &str) -> ObjectId {
    let tasks = json!([{ "id": "slow", "type": "debug.sleep", "params": { "ms": 120000 } }]);
    let run = client
        .start(&submission(request_id, tasks))
        .await
        .expect("accepted");
    client
        .task_reaches(run, "slow", TaskStatus::Running)
        .await
        .expect("slow runs");
    run
}

fn named(request_id: &str, tags: &[&str], tasks: Value) -> Value {
    let mut s = submission(request_id, tasks);
    s["tags"] = json!(tags);
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn signing_in_filtering_runs_and_watching_a_run_turn_succeeded_without_reloading() {
    let c = cluster("dash-live", &["none"]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:read,runs:write").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let other = c
        .client
        .start(&named(
            "nightly-embed",
            &["nightly"],
            json!([{ "id": "n", "type": "debug.noop" }]),
        ))
        .await
        .unwrap();
    c.client.finished(other, LONG).await.unwrap();

    // The browser starts and signs in first (slow on a loaded machine), so that the run below
    // is still running when its page opens.
    let b = Browser::start(&c.scope, &gw.base).await.unwrap();
    // Any page without a session goes to sign-in, and back to the page after it.
    b.open(&format!("/runs/{other}")).await.unwrap();
    assert_eq!(
        b.path().await.unwrap(),
        format!("/login?next=%2Fruns%2F{other}")
    );
    b.sign_in("hm_not_a_token").await.unwrap();
    let refused = b.text("#login-error").await.unwrap().unwrap_or_default();
    assert!(refused.contains("not a Harmonia token"), "{refused}");
    b.sign_in(&token.secret).await.unwrap();
    assert_eq!(b.path().await.unwrap(), format!("/runs/{other}"));

    let chain = json!([
        { "id": "first", "type": "debug.sleep", "params": { "ms": 4000 } },
        { "id": "second", "type": "debug.sleep", "params": { "ms": 1500 }, "depends_on": ["first"] },
        { "id": "third", "type": "debug.noop", "depends_on": ["first"] },
    ]);
    let run = c
        .client
        .start(&named("live-chain", &["live"], chain))
        .await
        .unwrap();
    c.client
        .task_reaches(run, "first", TaskStatus::Running)
        .await
        .unwrap();
    b.open(&format!("/runs/{run}")).await.unwrap();

    // The page is live: mark this document, then wait for the nodes to change under it.
    b.client
        .execute("window.harmoniaMark = 'same page';", vec![])
        .await
        .unwrap();
    let first = r#"#dag g.node[data-node="first"]"#;
    let class = b.attr(first, "class").await.unwrap().unwrap();
    assert!(class.contains("st-running"), "{class}");
    b.await_attr(r#"#tasks tr[data-node="first"]"#, "data-status", "running")
        .await
        .unwrap();
    b.screenshot("run-live-running").await.unwrap();
    for node in ["first", "second", "third"] {
        b.await_attr(
            &format!(r#"#dag g.node[data-node="{node}"]"#),
            "class",
            "node st-succeeded",
        )
        .await
        .unwrap();
        b.await_attr(
            &format!(r#"#tasks tr[data-node="{node}"]"#),
            "data-status",
            "succeeded",
        )
        .await
        .unwrap();
    }
    wait_for("the run badge to say succeeded", LONG, || async {
        Ok((b.text("#run-status").await?.as_deref() == Some("succeeded")).then_some(()))
    })
    .await
    .unwrap();
    let counts = b.text("#run-counts").await.unwrap().unwrap();
    assert!(counts.starts_with("3 succeeded"), "{counts}");
    // Cells filled in live read as the server writes them.
    let row = r#"#tasks tr[data-node="first"]"#;
    let took = b.text(&format!("{row} .n-duration")).await.unwrap();
    assert!(
        took.as_deref().is_some_and(|d| d.ends_with(" s")),
        "{took:?}"
    );
    let pct = b.text(&format!("{row} .n-pct")).await.unwrap();
    assert_eq!(pct.as_deref(), Some("100%"));
    let mark = b
        .client
        .execute("return window.harmoniaMark || null;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!("same page"), "the page was never reloaded");
    // Status is written beside its colour.
    let label = b
        .text(r#"#dag g.node[data-node="second"] .n-status"#)
        .await
        .unwrap();
    assert_eq!(label.as_deref(), Some("succeeded"));
    b.screenshot("run-live-succeeded").await.unwrap();

    // The runs list: counts by status, and filters that narrow it.
    b.open("/runs").await.unwrap();
    let names = b.texts("#runs tbody td:first-child a").await.unwrap();
    assert_eq!(names, ["live-chain", "nightly-embed"]);
    let search = b.client.find(Locator::Css("input[name=q]")).await.unwrap();
    search.send_keys("night").await.unwrap();
    b.click_through("form.filters button[type=submit]")
        .await
        .unwrap();
    let names = b.texts("#runs tbody td:first-child a").await.unwrap();
    assert_eq!(names, ["nightly-embed"]);
    assert!(b.path().await.unwrap().contains("q=night"));
    b.open("/runs?limit=1").await.unwrap();
    let names = b.texts("#runs tbody td:first-child a").await.unwrap();
    assert_eq!(names, ["live-chain"]);
    b.click_through("a[rel=next]").await.unwrap();
    let names = b.texts("#runs tbody td:first-child a").await.unwrap();
    assert_eq!(names, ["nightly-embed"]);
    assert!(
        b.text("a[rel=next]").await.unwrap().is_none(),
        "the last page"
    );
    b.open("/runs?tag=live").await.unwrap();
    let names = b.texts("#runs tbody td:first-child a").await.unwrap();
    assert_eq!(names, ["live-chain"]);
    b.open("/runs?status=failed").await.unwrap();
    let empty = b.text("#runs tbody td").await.unwrap();
    assert_eq!(empty.as_deref(), Some("No runs match."));
    b.open("/runs?since=yesterday").await.unwrap();
    let error = b.text("ul.error").await.unwrap().unwrap_or_default();
    assert!(
        error.contains("since") && error.contains("RFC 3339"),
        "{error}"
    );
    b.open("/runs").await.unwrap();
    let chips = b.texts(".counts a").await.unwrap();
    assert!(chips.contains(&"succeeded 2".to_owned()), "{chips:?}");
    b.screenshot("runs-list").await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_node_from_the_run_page_shows_it_cancelled_and_audits_it() {
    let c = cluster("dash-cancel", &["none"]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:read,runs:write").unwrap();
    let reader = Token::create(&c.scope, "ml", "runs:read").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let tasks = json!([
        { "id": "slow", "type": "debug.sleep", "params": { "ms": 120000 } },
        { "id": "after", "type": "debug.noop", "depends_on": ["slow"] },
    ]);
    let run = c
        .client
        .start(&submission("to-cancel", tasks))
        .await
        .unwrap();
    c.client
        .task_reaches(run, "slow", TaskStatus::Running)
        .await
        .unwrap();

    // A read-only token sees the run but no action buttons.
    let b = Browser::start(&c.scope, &gw.base).await.unwrap();
    b.open(&format!("/runs/{run}")).await.unwrap();
    b.sign_in(&reader.secret).await.unwrap();
    assert!(b.text(".actions").await.unwrap().is_none());
    assert!(b.text(".row-actions").await.unwrap().is_none());
    b.click_through("form[action='/logout'] button")
        .await
        .unwrap();
    assert!(b.path().await.unwrap().starts_with("/login"));

    b.open(&format!("/runs/{run}")).await.unwrap();
    b.sign_in(&token.secret).await.unwrap();
    let question = b
        .click_confirmed(r#"tr[data-node="slow"] button[aria-label="Cancel slow"]"#)
        .await
        .unwrap();
    assert!(question.contains("Cancel task slow"), "{question}");
    // The action lands on the task's page with what it did.
    assert_eq!(b.path().await.unwrap(), format!("/runs/{run}/tasks/slow"));
    let notice = b.text("#notice").await.unwrap().unwrap_or_default();
    assert_eq!(
        notice,
        "Cancelled 1 task (slow and what depends on it); told 1 task running to stop."
    );
    c.client
        .task_reaches(run, "slow", TaskStatus::Cancelled)
        .await
        .unwrap();
    b.open(&format!("/runs/{run}")).await.unwrap();
    b.await_attr(r#"#tasks tr[data-node="slow"]"#, "data-status", "cancelled")
        .await
        .unwrap();
    let class = b
        .attr(r#"#dag g.node[data-node="after"]"#, "class")
        .await
        .unwrap();
    assert_eq!(class.as_deref(), Some("node st-cancelled"));
    b.screenshot("run-node-cancelled").await.unwrap();
    b.close().await.unwrap();

    let actor = format!("token:{}", token.id);
    let audit = cli_ok(
        &c.scope,
        &[
            "audit",
            "--json",
            "--workspace",
            "ml",
            "--action",
            "task.cancel",
            "--actor",
            &actor,
        ],
    );
    let entries: Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{audit}");
    assert_eq!(entries[0]["after"]["node"], "slow", "{audit}");
}

async fn dead_letter_for(gw: &Gateway, admin: &Token, run: ObjectId) -> String {
    wait_for("the dead letter", LONG, || async {
        let v: Value = gw
            .get(admin, "/api/v1/dead-letters")
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().and_then(|a| {
            a.iter()
                .find(|l| l["payload"]["run_id"] == run.to_hex())
                .and_then(|l| l["id"].as_str().map(str::to_owned))
        }))
    })
    .await
    .expect("a dead letter for the run")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_replayed_from_the_dashboard_and_another_workspace_sees_none_of_it() {
    let c = cluster("dash-dlq", &["none"]).await.unwrap();
    cli_ok(&c.scope, &["workspaces", "create", "other"]);
    let admin = Token::create(&c.scope, "ml", "admin").unwrap();
    let foreign = Token::create(&c.scope, "other", "admin").unwrap();
    let gw = Gateway::start(&c.scope, &["--queue-sample-s", "1"])
        .await
        .unwrap();
    let tasks = json!([{ "id": "flaky", "type": "debug.fail", "params": { "times": 1 }, "max_attempts": 1 }]);
    let run = c
        .client
        .start(&submission("flaky-run", tasks))
        .await
        .unwrap();
    let letter = dead_letter_for(&gw, &admin, run).await;

    let b = Browser::start(&c.scope, &gw.base).await.unwrap();
    b.open("/dead-letters").await.unwrap();
    b.sign_in(&admin.secret).await.unwrap();
    let row = format!(r#"#dead-letters tr[data-letter="{letter}"]"#);
    let error = b.text(&format!("{row} td:nth-child(4)")).await.unwrap();
    assert_eq!(
        error.as_deref(),
        Some("debug.fail: attempt 1 fails on purpose")
    );
    b.screenshot("dead-letters").await.unwrap();
    let question = b
        .click_confirmed(&format!(r#"{row} button[aria-label="Replay {letter}"]"#))
        .await
        .unwrap();
    assert!(question.contains("Replay task flaky"), "{question}");
    let notice = b.text("#notice").await.unwrap().unwrap_or_default();
    assert!(notice.contains("Replayed dead letter"), "{notice}");
    assert!(b.text(&row).await.unwrap().is_none(), "the letter is gone");
    let task = c
        .client
        .task_reaches(run, "flaky", TaskStatus::Succeeded)
        .await
        .unwrap();
    assert_eq!(task.attempts.len(), 2, "{:?}", task.attempts);

    // The task page lists both attempts, newest first, with their worker and outcome.
    b.open(&format!("/runs/{run}/tasks/flaky")).await.unwrap();
    let outcomes = b.texts("#attempts tbody td:nth-child(2)").await.unwrap();
    assert_eq!(outcomes, ["succeeded", "failed"]);
    let workers = b.texts("#attempts tbody td:nth-child(3)").await.unwrap();
    assert!(workers.iter().all(|w| !w.is_empty()), "{workers:?}");
    b.screenshot("task-attempts").await.unwrap();

    // The fleet pages show this worker and the streams with their sampled hour.
    b.open("/workers").await.unwrap();
    assert_eq!(b.texts("section.card[data-worker]").await.unwrap().len(), 1);
    b.screenshot("workers").await.unwrap();
    wait_for("a queue sample", LONG, || async {
        b.open("/queues").await?;
        Ok(b.text("svg.spark").await?.map(|_| ()))
    })
    .await
    .unwrap();
    b.screenshot("queues").await.unwrap();

    // Signed in with another workspace's token: none of it.
    b.click_through("form[action='/logout'] button")
        .await
        .unwrap();
    b.open("/runs").await.unwrap();
    b.sign_in(&foreign.secret).await.unwrap();
    let empty = b.text("#runs tbody td").await.unwrap();
    assert_eq!(empty.as_deref(), Some("No runs match."));
    b.open(&format!("/runs/{run}")).await.unwrap();
    let title = b.text("h1").await.unwrap();
    assert_eq!(title.as_deref(), Some("Not Found"));
    b.open(&format!("/runs/{run}/tasks/flaky")).await.unwrap();
    assert_eq!(b.text("h1").await.unwrap().as_deref(), Some("Not Found"));
    b.open("/dead-letters").await.unwrap();
    let rows = b.texts("#dead-letters tbody td").await.unwrap();
    assert_eq!(rows, ["No dead letters."]);
    b.screenshot("other-workspace-runs").await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_session_every_page_redirects_to_sign_in_and_no_action_runs() {
    let c = cluster("dash-anon", &["none"]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "admin").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let run = running_sleeper(&c.client, "anon").await;
    let pages = [
        "/".to_owned(),
        "/runs".into(),
        "/runs?status=running".into(),
        format!("/runs/{run}"),
        format!("/runs/{run}/tasks/slow"),
        "/workers".into(),
        "/queues".into(),
        "/dead-letters".into(),
        "/dead-letters/1-0".into(),
        "/models".into(),
        "/models/0123456789abcdef01234567".into(),
    ];
    for page in &pages {
        let r = gw.http.get(gw.url(page)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        let to = r.headers()["location"].to_str().unwrap().to_owned();
        if page != "/" {
            let want = format!("/login?next={}", urlencoding_encode(page));
            assert_eq!(to, want, "{page}");
        }
    }
    // A cookie that is no session is no better than none.
    let forged = format!("hm_session={}", "a".repeat(64));
    let r = gw
        .http
        .get(gw.url("/runs"))
        .header("cookie", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let actions = [
        format!("/runs/{run}/cancel"),
        format!("/runs/{run}/tasks/slow/cancel"),
        format!("/runs/{run}/retry"),
        "/dead-letters/1-0/purge".into(),
        "/logout".into(),
    ];
    for action in &actions {
        let r = gw
            .http
            .post(gw.url(action))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{action}");
        assert!(
            r.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("/login")
        );
    }
    assert_eq!(
        c.client.task(run, "slow").await.unwrap().status,
        TaskStatus::Running
    );
    // Signing out ends the session for good.
    let s = DashboardSession::sign_in(&gw, &token).await.unwrap();
    let r = gw
        .http
        .post(gw.url("/logout"))
        .header("cookie", &s.cookie)
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = gw
        .http
        .get(gw.url("/runs"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the old cookie is dead");
    // Revoking the token ends its sessions at once, pages and API reads alike.
    let s = DashboardSession::sign_in(&gw, &token).await.unwrap();
    let page = |path: &str| gw.http.get(gw.url(path)).header("cookie", &s.cookie).send();
    assert_eq!(page("/runs").await.unwrap().status(), StatusCode::OK);
    cli_ok(&c.scope, &["tokens", "revoke", &token.id]);
    assert_eq!(page("/runs").await.unwrap().status(), StatusCode::SEE_OTHER);
    let api = page(&format!("/api/v1/runs/{run}")).await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
}

fn urlencoding_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_without_the_sessions_csrf_token_is_refused() {
    let c = cluster("dash-csrf", &["none"]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "admin").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let run = running_sleeper(&c.client, "csrf").await;
    let s = DashboardSession::sign_in(&gw, &token).await.unwrap();
    assert_eq!(s.csrf.len(), 64);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(s.set_cookie.contains(attr), "{} lacks {attr}", s.set_cookie);
    }
    let actions = [
        format!("/runs/{run}/cancel"),
        format!("/runs/{run}/retry"),
        format!("/runs/{run}/tasks/slow/cancel"),
        format!("/runs/{run}/tasks/slow/retry"),
        "/dead-letters/1-0/replay".into(),
        "/dead-letters/1-0/purge".into(),
        "/logout".into(),
    ];
    let wrong = "0".repeat(64);
    for action in &actions {
        for form in [
            vec![],
            vec![("csrf", ""), ("x", "y")],
            vec![("csrf", wrong.as_str())],
        ] {
            let r = gw
                .http
                .post(gw.url(action))
                .header("cookie", &s.cookie)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{action} {form:?}");
            let body = r.text().await.unwrap();
            assert!(body.contains("CSRF check failed"), "{body}");
        }
    }
    // The API does not take the cookie for writes: those need the bearer token.
    let r = gw
        .http
        .post(gw.url(&format!("/api/v1/runs/{run}/cancel")))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Sign-in itself needs the form's own token.
    let r = gw
        .http
        .post(gw.url("/login"))
        .form(&[("token", token.secret.as_str()), ("csrf", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        c.client.task(run, "slow").await.unwrap().status,
        TaskStatus::Running,
        "nothing was cancelled"
    );
    // With the token, the same form works.
    let r = gw
        .http
        .post(gw.url(&format!("/runs/{run}/cancel")))
        .header("cookie", &s.cookie)
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    c.client.finished(run, LONG).await.unwrap();
}

/// Reads Server-Sent Events from `r` until `done` says the events so far are enough.
async fn read_events(
    mut r: reqwest::Response,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while !done(&events) {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .expect("events in time")
            .expect("reading the stream")
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !kind.is_empty() {
                events.push((kind, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_stream_starts_with_a_snapshot_then_sends_each_change_and_progress() {
    let c = cluster("dash-events", &["none"]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:read").unwrap();
    cli_ok(&c.scope, &["workspaces", "create", "other"]);
    let foreign = Token::create(&c.scope, "other", "runs:read").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let tasks = json!([
        { "id": "a", "type": "debug.sleep", "params": { "ms": 4000 } },
        { "id": "b", "type": "debug.noop", "depends_on": ["a"] },
    ]);
    let run = c.client.start(&submission("events", tasks)).await.unwrap();
    let path = format!("/api/v1/runs/{run}/events");
    let r = gw.get(&foreign, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = gw.get(&token, &path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let finished = |events: &[(String, Value)]| {
        events
            .iter()
            .any(|(k, v)| k == "run" && v["status"] == "succeeded")
    };
    let events = read_events(r, finished).await;
    assert_eq!(events[0].0, "run", "the snapshot starts with the run");
    assert_eq!(events[0].1["task_count"], 2);
    let snapshot: Vec<&str> = events[1..3]
        .iter()
        .map(|(k, v)| {
            assert_eq!(k, "task");
            v["node_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        {
            let mut s = snapshot.clone();
            s.sort();
            s
        },
        ["a", "b"]
    );
    let of = |node: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|(k, v)| k == "task" && v["node_id"] == node)
            .map(|(_, v)| v)
            .collect()
    };
    let progress: Vec<f64> = of("a")
        .iter()
        .filter_map(|v| v["progress"]["percent"].as_f64())
        .collect();
    assert!(
        progress.iter().any(|p| *p > 0.0 && *p < 100.0),
        "progress of the sleeping task was streamed: {progress:?}"
    );
    assert_eq!(of("b").last().unwrap()["status"], "succeeded");
    let last_run = events.iter().rev().find(|(k, _)| k == "run").unwrap();
    assert_eq!(last_run.1["succeeded"], 2);
    // The same stream over the browser's session cookie (EventSource sends no header).
    let s = DashboardSession::sign_in(&gw, &token).await.unwrap();
    let r = gw
        .http
        .get(gw.url(&path))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let again = read_events(r, |e| e.len() >= 3).await;
    assert_eq!(again[0].1["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_too_large_to_draw_shows_its_layers_with_counts_and_every_task_in_the_table() {
    // No worker: every task stays waiting, so the counts are known.
    let c = cluster("dash-large", &[]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:read").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let tasks: Vec<Value> = (0..300)
        .map(|i| {
            let deps: Vec<String> = if i < 100 {
                vec![]
            } else {
                vec![format!("t{:03}", i - 100)]
            };
            json!({ "id": format!("t{i:03}"), "type": "debug.noop", "depends_on": deps })
        })
        .collect();
    let run = c
        .client
        .start(&submission("large", Value::Array(tasks)))
        .await
        .unwrap();
    let b = Browser::start(&c.scope, &gw.base).await.unwrap();
    b.open(&format!("/runs/{run}")).await.unwrap();
    b.sign_in(&token.secret).await.unwrap();
    assert!(
        b.text("#dag").await.unwrap().is_none(),
        "no node-by-node graph"
    );
    let layers = b.texts("#layers g.layer text.n-id").await.unwrap();
    assert_eq!(
        layers,
        [
            "layer 1 · 100 tasks",
            "layer 2 · 100 tasks",
            "layer 3 · 100 tasks"
        ]
    );
    let rows = b.texts("#tasks tbody tr td:first-child").await.unwrap();
    assert_eq!(rows.len(), 300);
    // The status filter hides the other rows without a round trip.
    b.client
        .find(Locator::Id("task-filter"))
        .await
        .unwrap()
        .select_by_label("pending")
        .await
        .unwrap();
    let shown = b
        .client
        .execute(
            "return document.querySelectorAll('#tasks tbody tr:not([hidden])').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!(200), "the second and third layers wait");
    b.screenshot("run-layers").await.unwrap();
    b.close().await.unwrap();
}
