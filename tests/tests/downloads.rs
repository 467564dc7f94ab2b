//! Verified downloads against real servers and the local Hub mirror: tampering, one fetch for
//! two workers, cancel mid-transfer and resume, and where the Hub token may go.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_tests::cluster::{SCHEDULER, WORKER, cluster_in};
use harmonia_tests::models::{self, RUN, outputs};
use harmonia_tests::{Scope, submission, wait_for};
use mongodb::bson::Document;
use serde_json::json;

/// A file changed on the mirror after it was indexed: the download fails for good with both
/// hashes, and nothing of it stays in the cache.
#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_file_fails_with_expected_and_actual_hashes() {
    let scope_dir = Scope::new("tamper-files").dir;
    let root = scope_dir.join("mirror");
    models::synthetic_repo(&root, "org/tampered", 3_000_000).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    let weights = root.join("org/tampered/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[1_234_567] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let advertised = mirror
        .mirror
        .sha256("org/tampered", "model.safetensors")
        .unwrap()
        .to_owned();

    let c = models::cluster("tamper", &mirror, &["1"]).await.unwrap();
    let run_id = c
        .client
        .start(&submission(
            "tamper",
            json!([{ "id": "get", "type": "model.download", "max_attempts": 3,
                     "params": { "repo": "org/tampered" } }]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, RUN).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let task = c.client.task(run_id, "get").await.unwrap();
    let error = task.error.unwrap();
    assert!(
        !error.retryable && task.attempt == 1,
        "a mismatch is permanent: {error:?}"
    );
    assert!(
        error
            .message
            .contains(&format!("expected sha256 {advertised}"))
            && error.message.contains(&format!("got {actual}")),
        "{}",
        error.message
    );
    // Nothing cached under any name, no artifact registered, the failure audited.
    let cache = c
        .scope
        .config
        .models
        .cache_dir
        .join("models--org--tampered");
    let leftovers: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md") && !p.ends_with(".lock"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() >= 3_000_000))
        .collect();
    assert!(leftovers.is_empty(), "cached: {leftovers:?}");
    assert!(
        c.client
            .store
            .model_artifacts()
            .by_name_version("org/tampered", "x")
            .await
            .unwrap()
            .is_none()
    );
    let checks = c.client.store.checksums().for_task(task.id).await.unwrap();
    let bad: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0].value.as_str(), bad[0].expected.as_deref()),
        (actual.as_str(), Some(advertised.as_str()))
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Two workers on one host asked for the same model at once: the bytes cross the wire once.
#[tokio::test(flavor = "multi_thread")]
async fn two_workers_fetch_the_same_model_once() {
    let root = Scope::new("once-files").dir.join("mirror");
    let size = 20_000_000;
    models::synthetic_repo(&root, "org/shared", size).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    // Slow enough that both tasks are surely downloading at the same time.
    mirror
        .mirror
        .throttle_bytes_per_s
        .store(10_000_000, Ordering::Relaxed);
    let c = models::cluster("once", &mirror, &["1", "1"]).await.unwrap();
    let task = |id: &str| json!({ "id": id, "type": "model.download", "params": { "repo": "org/shared" } });
    let run_id = c
        .client
        .start(&submission("once", json!([task("a"), task("b")])))
        .await
        .unwrap();
    let run = c.client.finished(run_id, RUN).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let (a, b) = (
        c.client.task(run_id, "a").await.unwrap(),
        c.client.task(run_id, "b").await.unwrap(),
    );
    assert_ne!(a.worker_id, b.worker_id, "one task per worker");
    let served = mirror.mirror.bytes_served.load(Ordering::Relaxed);
    let card = std::fs::metadata(root.join("org/shared/README.md"))
        .unwrap()
        .len();
    assert_eq!(served, size as u64 + card, "every byte sent once");
    let downloaded =
        |t: &harmonia_shared::model::RunTask| outputs(t).get_i64("bytes_downloaded").unwrap();
    assert_eq!(downloaded(&a) + downloaded(&b), size as i64 + card as i64);
    // Both describe one artifact.
    assert_eq!(
        outputs(&a).get_object_id("model_artifact_id").unwrap(),
        outputs(&b).get_object_id("model_artifact_id").unwrap()
    );
}

/// Cancelling a task in the middle of a slow download stops the transfer within 2 s; a later
/// download resumes from the partial file.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_slow_download_and_a_retry_resumes() {
    let root = Scope::new("cancel-files").dir.join("mirror");
    let size = 30_000_000u64;
    models::synthetic_repo(&root, "org/slow", size as usize).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    mirror
        .mirror
        .throttle_bytes_per_s
        .store(2_000_000, Ordering::Relaxed);
    let c = models::cluster("cancel-download", &mirror, &["1"])
        .await
        .unwrap();
    let run_id = c
        .client
        .start(&submission(
            "slow",
            json!([{ "id": "get", "type": "model.download",
                     "params": { "repo": "org/slow", "files": ["model.safetensors"] } }]),
        ))
        .await
        .unwrap();
    wait_for(
        "the download to be under way",
        Duration::from_secs(60),
        || async {
            let t = c.client.task(run_id, "get").await?;
            let p = t
                .progress
                .filter(|p| p.stage == "downloading" && p.percent > 5.0);
            Ok(p.map(|_| ()))
        },
    )
    .await
    .unwrap();
    let asked = Instant::now();
    let out = c
        .scope
        .scheduler_cli(&["cancel", "task", &run_id.to_hex(), "get"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.client
        .task_reaches(run_id, "get", TaskStatus::Cancelled)
        .await
        .unwrap();
    // The transfer stops: the mirror's count settles within 2 s of the request. "Stopped" can
    // only be observed as no bytes over a window (300 ms; the throttled mirror sends a 64 KiB
    // chunk every ~33 ms while a transfer runs), so this wait samples rather than sleeps.
    let settled = wait_for("the transfer to stop", Duration::from_secs(10), || async {
        let before = mirror.mirror.bytes_served.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = mirror.mirror.bytes_served.load(Ordering::Relaxed);
        Ok((before == after).then_some(after))
    })
    .await
    .unwrap();
    let stopped_in = asked.elapsed().saturating_sub(Duration::from_millis(300));
    assert!(
        stopped_in < Duration::from_secs(2),
        "stopped after {stopped_in:?}"
    );
    assert!(settled < size, "cancelled before the end ({settled} bytes)");
    eprintln!(
        "cancel: transfer stopped {stopped_in:?} after the request, {settled} of {size} bytes sent"
    );

    // A new download picks up where the cancelled one stopped.
    mirror
        .mirror
        .throttle_bytes_per_s
        .store(0, Ordering::Relaxed);
    let run2 = c
        .client
        .start(&submission(
            "slow-again",
            json!([{ "id": "get", "type": "model.download",
                     "params": { "repo": "org/slow", "files": ["model.safetensors"] } }]),
        ))
        .await
        .unwrap();
    assert_eq!(
        c.client.finished(run2, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let out = outputs(&c.client.task(run2, "get").await.unwrap());
    let again = out.get_i64("bytes_downloaded").unwrap() as u64;
    assert!(again < size, "resumed: fetched {again} of {size} bytes");
    let total = mirror.mirror.bytes_served.load(Ordering::Relaxed);
    assert!(
        total <= size + 4 * 1024 * 1024,
        "overall {total} bytes for a {size}-byte file"
    );
}

/// The Hub token goes to the Hub, and nowhere else: not to the logs, not to MongoDB.
#[tokio::test(flavor = "multi_thread")]
async fn the_hub_token_reaches_the_hub_and_nowhere_else() {
    const TOKEN: &str = "hf_test_token_8c1f0e42d7";
    let root = Scope::new("token-files").dir.join("mirror");
    models::synthetic_repo(&root, "org/private", 1000).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    let mut scope = Scope::new("hub-token");
    scope.config.models.hub_endpoint = mirror.url.clone();
    let c = cluster_in(scope, SCHEDULER, &[]).await.unwrap();
    let mut cmd = c.scope.command("harmonia-worker").unwrap();
    cmd.env("HARMONIA_HUB_TOKEN", TOKEN)
        .env("HARMONIA_LOG", "debug")
        .args(WORKER)
        .args(["--gpus", "none"]);
    let log = c.scope.dir.join("token-worker.log");
    let _worker =
        harmonia_tests::process::ChildGuard::spawn("token-worker", &mut cmd, &log).unwrap();
    let run_id = c
        .client
        .start(&submission(
            "token",
            json!([{ "id": "get", "type": "model.download", "params": { "repo": "org/private" } }]),
        ))
        .await
        .unwrap();
    assert_eq!(
        c.client.finished(run_id, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let seen = mirror.mirror.authorizations.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == &format!("Bearer {TOKEN}")),
        "{seen:?}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("task started"),
        "the worker logged at debug level"
    );
    assert!(!logged.contains(TOKEN), "the token is in the worker log");
    let db = c.client.store.db();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<Document> = futures::TryStreamExt::try_collect(
            db.collection::<Document>(&name)
                .find(Document::new())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let text = format!("{docs:?}");
        assert!(!text.contains(TOKEN), "the token is in {name}");
    }
}

/// With the Hub unreachable, a model this host already holds is still served, verified again
/// from the cache; one it does not hold fails retryably.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_model_is_served_when_the_hub_is_down() {
    let root = Scope::new("offline-files").dir.join("mirror");
    models::synthetic_repo(&root, "org/cached", 2_000_000).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    let first = models::cluster("online", &mirror, &["1"]).await.unwrap();
    let get = |repo: &str| {
        json!([{ "id": "get", "type": "model.download", "max_attempts": 1,
                                    "params": { "repo": repo } }])
    };
    let run = first
        .client
        .start(&submission("online", get("org/cached")))
        .await
        .unwrap();
    assert_eq!(
        first.client.finished(run, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let online = outputs(&first.client.task(run, "get").await.unwrap());

    // Same host cache, and a Hub endpoint where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut scope = Scope::new("offline");
    scope.config.models.cache_dir = first.scope.config.models.cache_dir.clone();
    scope.config.models.hub_endpoint = dead_url;
    let mut worker = WORKER.to_vec();
    worker.extend(["--gpus", "none"]);
    let c = cluster_in(scope, SCHEDULER, &[worker]).await.unwrap();
    let run = c
        .client
        .start(&submission("offline", get("org/cached")))
        .await
        .unwrap();
    assert_eq!(
        c.client.finished(run, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let offline = outputs(&c.client.task(run, "get").await.unwrap());
    assert_eq!(offline.get_i64("bytes_downloaded").unwrap(), 0);
    assert_eq!(offline.get_i64("cache_hits").unwrap(), 2, "{offline}");
    assert_eq!(
        offline.get_str("commit").unwrap(),
        online.get_str("commit").unwrap()
    );

    let run = c
        .client
        .start(&submission("never-seen", get("org/absent")))
        .await
        .unwrap();
    assert_eq!(
        c.client.finished(run, RUN).await.unwrap().status,
        RunStatus::Failed
    );
    let error = c.client.task(run, "get").await.unwrap().error.unwrap();
    assert!(error.retryable, "{error:?}");
}
