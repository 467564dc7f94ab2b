//! The HTTP gateway against real servers: tokens and workspaces, submit through Redis, follow a
//! run, download its artifact by presigned URL, isolation between workspaces, the audit log,
//! problem+json for bad input, and an OpenAPI document that lists every route.

use harmonia_tests::cluster::{LONG, cluster};
use harmonia_tests::gateway::{Gateway, Token};
use harmonia_tests::{Scope, submission, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn cli_ok(scope: &Scope, args: &[&str]) -> String {
    scope.scheduler_cli_ok(args).expect("the CLI succeeds")
}

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_submits_follows_and_downloads_its_run_and_no_other_workspace_sees_it() {
    let c = cluster("gateway-flow", &["none"]).await.unwrap();
    let scope = &c.scope;
    cli_ok(scope, &["workspaces", "create", "other"]);
    let writer = Token::create(scope, "ml", "runs:read,runs:write,artifacts:read").unwrap();
    let reader = Token::create(scope, "ml", "runs:read").unwrap();
    let admin = Token::create(scope, "ml", "admin").unwrap();
    let foreign = Token::create(scope, "other", "admin").unwrap();
    let gw = Gateway::start(scope, &[]).await.unwrap();

    // Submit through the gateway (and so through the Redis stream); the key is the request id.
    let body = json!({ "project": "tests", "name": "http", "tasks": [
        { "id": "w", "type": "debug.write", "params": { "bytes": 200000 } },
    ] });
    let post = |token: &Token, key: &str| {
        gw.post(token, "/api/v1/runs")
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let (status, accepted) = json_of(post(&writer, "http-1").await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_owned();
    let (status, again) = json_of(post(&writer, "http-1").await.unwrap()).await;
    assert_eq!(
        (status, &again["run_id"]),
        (StatusCode::CREATED, &json!(run_id)),
        "same key, same run"
    );

    // Follow it over HTTP until it is done.
    let get = |token: &Token, path: String| gw.get(token, &path).send();
    let detail = wait_for("the run to succeed over HTTP", LONG, || async {
        let (_, v) = json_of(get(&reader, format!("/api/v1/runs/{run_id}")).await?).await;
        Ok((v["run"]["status"] == "succeeded").then_some(v))
    })
    .await
    .unwrap();
    assert_eq!(detail["tasks"][0]["status"], "succeeded", "{detail}");
    let artifact = &detail["artifacts"][0];
    let artifact_id = artifact["id"].as_str().expect("artifact id").to_owned();
    let sha = artifact["storage_ref"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    // Download: a 302 to a presigned URL whose bytes match the record.
    let r = get(&writer, format!("/api/v1/artifacts/{artifact_id}/download"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Expires=900"), "{location}");
    let bytes = reqwest::get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len(), 200000);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);

    // Another workspace's token sees nothing of it: 404, as if it did not exist.
    for path in [
        format!("/api/v1/runs/{run_id}"),
        format!("/api/v1/artifacts/{artifact_id}"),
        format!("/api/v1/artifacts/{artifact_id}/download"),
    ] {
        let r = get(&foreign, path.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = gw
        .post(&foreign, &format!("/api/v1/runs/{run_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_, listed) = json_of(get(&foreign, "/api/v1/runs".into()).await.unwrap()).await;
    assert_eq!(listed["runs"], json!([]));
    let (_, listed) = json_of(get(&reader, "/api/v1/runs".into()).await.unwrap()).await;
    assert_eq!(listed["runs"][0]["id"], json!(run_id));

    // No token, a bad token, a revoked token: 401. A read-only token may not write: 403.
    let r = gw.http.get(gw.url("/api/v1/runs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let forged = Token {
        id: writer.id.clone(),
        secret: format!("hm_{}_{}", writer.id, "0".repeat(64)),
    };
    assert_eq!(
        get(&forged, "/api/v1/runs".into()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&reader, "http-2").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = get(&reader, "/api/v1/audit".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A second run, cancelled over HTTP.
    let slow = json!({ "project": "tests", "name": "slow", "tasks": [
        { "id": "s", "type": "debug.sleep", "params": { "ms": 60000 } },
    ] });
    let (status, v) = json_of(
        gw.post(&writer, "/api/v1/runs")
            .json(&slow)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let slow_id = v["run_id"].as_str().unwrap().to_owned();
    let r = gw
        .post(&writer, &format!("/api/v1/runs/{slow_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    c.client
        .finished(
            mongodb::bson::oid::ObjectId::parse_str(&slow_id).unwrap(),
            LONG,
        )
        .await
        .unwrap();
    let r = gw
        .post(&writer, &format!("/api/v1/runs/{slow_id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a finished run cannot be cancelled"
    );

    // An admin token creates projects in its own workspace; submissions may then name them.
    let create = |name: &str| {
        gw.post(&admin, "/api/v1/projects")
            .json(&json!({ "slug": name }))
            .send()
    };
    assert_eq!(create("api").await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(create("api").await.unwrap().status(), StatusCode::OK);
    let (status, bad) = json_of(create("Not A Slug").await.unwrap()).await;
    assert_eq!(
        (status, &bad["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("slug"))
    );
    let in_api =
        json!({ "project": "api", "name": "p", "tasks": [{ "id": "a", "type": "debug.noop" }] });
    let r = gw
        .post(&writer, "/api/v1/runs")
        .json(&in_api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, projects) = json_of(gw.get(&foreign, "/api/v1/projects").send().await.unwrap()).await;
    assert_eq!(
        projects,
        json!([]),
        "another workspace's projects are not listed"
    );

    // Revoking stops the token at once.
    cli_ok(scope, &["tokens", "revoke", &reader.id]);
    assert_eq!(
        get(&reader, "/api/v1/runs".into()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Every action is in the audit log with its actor; the admin token reads it.
    let (status, audit) =
        json_of(get(&admin, "/api/v1/audit?limit=100".into()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let has = |action: &str, actor: &str, resource: &str| {
        audit.as_array().unwrap().iter().any(|e| {
            e["action"] == action
                && e["actor"] == actor
                && e["resource_id"].as_str().unwrap_or("").contains(resource)
        })
    };
    let by_writer = format!("token:{}", writer.id);
    assert!(has("run.submit", &by_writer, &run_id), "{audit:#}");
    assert!(has("run.submit", &by_writer, &slow_id), "{audit:#}");
    assert!(has("run.cancel", &by_writer, &slow_id), "{audit:#}");
    assert!(
        has("project.create", &format!("token:{}", admin.id), "ml/api"),
        "{audit:#}"
    );
    let cli = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"].as_str().unwrap().starts_with("cli:"));
    let cli_actions: Vec<&str> = cli.map(|e| e["action"].as_str().unwrap()).collect();
    assert!(
        cli_actions.contains(&"token.create") && cli_actions.contains(&"token.revoke"),
        "{cli_actions:?}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["workspace"] == "ml"),
        "only this workspace's entries"
    );
    // The token's use is recorded (throttled to once a minute).
    let stored = c
        .client
        .store
        .tokens()
        .get(&writer.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.last_used_at.is_some());
    assert_ne!(stored.hashed_secret, writer.secret, "only a hash is stored");
}

/// Two hundred broken submissions: each is answered 4xx with problem+json naming the field
/// paths, the way rejections on the Redis API do; none is a 5xx.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_http_submissions_get_problem_details_with_field_paths() {
    let c = cluster("gateway-malformed", &[]).await.unwrap();
    let token = Token::create(&c.scope, "ml", "runs:write").unwrap();
    let gw = Gateway::start(&c.scope, &["--rate-per-s", "10000"])
        .await
        .unwrap();
    let good = submission("x", json!([{ "id": "a", "type": "debug.noop" }]));
    let mut bodies: Vec<(String, &str)> = vec![
        ("not json".into(), "$"),
        ("[1, 2]".into(), "$"),
        ("{\"tasks\": 5}".into(), "tasks"),
        (json!({"project": "tests", "name": "n"}).to_string(), "tasks"),
        (json!({"workspace": "elsewhere", "project": "tests", "tasks": []}).to_string(), "workspace"),
        (json!({"workspace": "ml", "project": "nope", "name": "n", "tasks": [{"id": "a", "type": "debug.noop"}]}).to_string(), "project"),
    ];
    let mutations: Vec<(&str, Value, &str)> = vec![
        ("type", json!("no.such.kind"), "tasks[0].type"),
        ("type", json!(7), "tasks[0].type"),
        ("id", json!(""), "tasks[0].id"),
        ("depends_on", json!(["ghost"]), "tasks[0].depends_on[0]"),
        ("depends_on", json!(["a"]), "tasks[0].depends_on[0]"),
        ("max_attempts", json!(-1), "tasks[0].max_attempts"),
        ("timeout_s", json!("soon"), "tasks[0].timeout_s"),
        (
            "resources",
            json!({"gpus": "many"}),
            "tasks[0].resources.gpus",
        ),
        ("params", json!({"ms": "long"}), "tasks[0].params"),
        ("surprise", json!(true), "tasks[0].surprise"),
    ];
    let mut i = 0;
    while bodies.len() < 200 {
        let (field, value, path) = &mutations[i % mutations.len()];
        let mut b = good.clone();
        b["request_id"] = json!(format!("bad-{i}"));
        b["tasks"][0][*field] = value.clone();
        if *field == "params" {
            b["tasks"][0]["type"] = json!("debug.sleep");
        }
        b["name"] = json!(format!("broken {i}"));
        bodies.push((b.to_string(), path));
        i += 1;
    }
    for (body, path) in &bodies {
        let r = gw
            .post(&token, "/api/v1/runs")
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let problem: Value = r.json().await.unwrap();
        assert!(status.is_client_error(), "{status} for {body}: {problem}");
        let errors = problem["errors"].as_array();
        let paths: Vec<&str> = errors
            .unwrap_or_else(|| panic!("{body}: {problem}"))
            .iter()
            .map(|e| e["path"].as_str().unwrap())
            .collect();
        assert!(
            paths.iter().any(|p| p.starts_with(path)),
            "{path} not in {paths:?} for {body}"
        );
        assert_eq!(problem["status"], status.as_u16());
    }
}

/// The OpenAPI document is 3.1, lists every route the gateway serves, and every path it lists
/// is served (none falls through to the "no such route" answer).
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_lists_every_route() {
    let scope = Scope::new("gateway-openapi");
    harmonia_tests::Client::connect(&scope).await.unwrap();
    let admin = Token::create(&scope, "ml", "admin").unwrap();
    let gw = Gateway::start(&scope, &[]).await.unwrap();
    let api: Value = gw
        .http
        .get(gw.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        api["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        api["openapi"]
    );
    let expected = [
        ("post", "/api/v1/runs"),
        ("get", "/api/v1/runs"),
        ("get", "/api/v1/runs/{id}"),
        ("post", "/api/v1/runs/{id}/cancel"),
        ("post", "/api/v1/runs/{id}/retry"),
        ("post", "/api/v1/runs/{id}/tasks/{node}/cancel"),
        ("post", "/api/v1/runs/{id}/tasks/{node}/retry"),
        ("get", "/api/v1/projects"),
        ("post", "/api/v1/projects"),
        ("get", "/api/v1/runs/{id}/events"),
        ("get", "/api/v1/artifacts/{id}"),
        ("get", "/api/v1/artifacts/{id}/download"),
        ("get", "/api/v1/workers"),
        ("get", "/api/v1/queues"),
        ("get", "/api/v1/dead-letters"),
        ("post", "/api/v1/dead-letters/{id}/replay"),
        ("delete", "/api/v1/dead-letters/{id}"),
        ("get", "/api/v1/audit"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ];
    let paths = api["paths"].as_object().unwrap();
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    // And the other way: each documented operation reaches a handler.
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path
                .replace("{id}", "0123456789abcdef01234567")
                .replace("{node}", "a");
            let r = gw
                .http
                .request(method.parse().unwrap(), gw.url(&concrete))
                .header("Authorization", admin.bearer())
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(!body.contains("no such route"), "{method} {path}: {body}");
        }
    }
    let count: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        count,
        expected.len(),
        "undocumented operations or stale ones"
    );
}

/// Each token has its own budget: past it, 429 with Retry-After; other tokens are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_over_its_rate_limit_gets_429_with_retry_after() {
    let scope = Scope::new("gateway-rate");
    harmonia_tests::Client::connect(&scope).await.unwrap();
    let busy = Token::create(&scope, "ml", "runs:read").unwrap();
    let calm = Token::create(&scope, "ml", "runs:read").unwrap();
    let gw = Gateway::start(&scope, &["--rate-per-s", "2"])
        .await
        .unwrap();
    let get = |t: &Token| gw.get(t, "/api/v1/runs").send();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&busy).await.unwrap());
    }
    let limited = statuses
        .iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS);
    let limited = limited.expect("a burst of 8 exceeds 2/s with a burst of 4");
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(statuses[0].status(), StatusCode::OK);
    assert_eq!(get(&calm).await.unwrap().status(), StatusCode::OK);
}

/// Dead letters over HTTP: an admin token lists its workspace's letters (not another's),
/// replays one (the task runs again and succeeds) and deletes another; both actions are audited.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_lists_replays_and_purges_its_dead_letters() {
    let c = cluster("gateway-dlq", &["none"]).await.unwrap();
    cli_ok(&c.scope, &["workspaces", "create", "other"]);
    let admin = Token::create(&c.scope, "ml", "admin").unwrap();
    let foreign = Token::create(&c.scope, "other", "admin").unwrap();
    let gw = Gateway::start(&c.scope, &[]).await.unwrap();
    let failing = |id: &str| {
        submission(
            id,
            json!([{ "id": "f", "type": "debug.fail", "params": { "times": 1 }, "max_attempts": 1 }]),
        )
    };
    let (a, b) = (
        c.client.start(&failing("dlq-a")).await.unwrap(),
        c.client.start(&failing("dlq-b")).await.unwrap(),
    );
    c.client.finished(a, LONG).await.unwrap();
    c.client.finished(b, LONG).await.unwrap();
    let letters = wait_for("two dead letters", LONG, || async {
        let (_, v) = json_of(gw.get(&admin, "/api/v1/dead-letters").send().await?).await;
        Ok(v.as_array().filter(|l| l.len() == 2).cloned())
    })
    .await
    .unwrap();
    let (_, theirs) = json_of(
        gw.get(&foreign, "/api/v1/dead-letters")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(theirs, json!([]), "another workspace sees none");
    let letter_of = |run: mongodb::bson::oid::ObjectId| {
        letters
            .iter()
            .find(|l| l["payload"]["run_id"] == json!(run.to_hex()))
            .map(|l| l["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (la, lb) = (letter_of(a), letter_of(b));
    let r = gw
        .post(&foreign, &format!("/api/v1/dead-letters/{la}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = gw
        .post(&admin, &format!("/api/v1/dead-letters/{la}/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    c.client
        .task_reaches(a, "f", harmonia_shared::model::TaskStatus::Succeeded)
        .await
        .unwrap();
    let r = gw
        .http
        .delete(gw.url(&format!("/api/v1/dead-letters/{lb}")))
        .header("Authorization", admin.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, left) = json_of(gw.get(&admin, "/api/v1/dead-letters").send().await.unwrap()).await;
    assert_eq!(left, json!([]));
    let (_, audit) = json_of(gw.get(&admin, "/api/v1/audit").send().await.unwrap()).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"dlq.replay") && actions.contains(&"dlq.purge"),
        "{actions:?}"
    );
}
