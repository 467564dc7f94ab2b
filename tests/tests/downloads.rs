//! Verified downloads against real servers and the local Hub mirror: tampering, one fetch for
//! two workers, cancel mid-transfer and resume, and where the Hub token may go.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_shared::resources::ResourceClass;
use harmonia_tests::cluster::{SCHEDULER, WORKER, cluster_in};
use harmonia_tests::models::{self, RUN, outputs};
use harmonia_tests::{Scope, submission, wait_for};
use mongodb::bson::{DateTime, Document};
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

/// Worker flags for the affinity tests: one slot, its own model cache, `extra` on top.
fn affinity_worker<'a>(cache: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = WORKER.to_vec();
    args[2] = "1"; // --cpu-slots
    args.extend(["--gpus", "none", "--model-cache-dir", cache]);
    args.extend(extra);
    args
}

const AFFINE: &str = "org/affine";

fn download(id: &str) -> serde_json::Value {
    json!({ "id": id, "type": "model.download", "params": { "repo": AFFINE } })
}

/// A scheduler and one worker (`holder_extra` on top of [`affinity_worker`]) that holds
/// [`AFFINE`] and reads its hint stream; returns the cluster and the holder's worker id.
async fn holder(name: &str, holder_extra: &[&str]) -> (harmonia_tests::cluster::Cluster, String) {
    let mut scope = Scope::new(name);
    let root = scope.dir.join("mirror");
    models::synthetic_repo(&root, AFFINE, 2_000_000).unwrap();
    let mirror = models::serve_mirror(&root).await.unwrap();
    scope.config.models.hub_endpoint = mirror.url.clone();
    let cache = scope.dir.join("cache-a").to_string_lossy().into_owned();
    let args = affinity_worker(&cache, holder_extra);
    let c = cluster_in(scope, SCHEDULER, &[args]).await.unwrap();
    let warm = json!([download("warm")]);
    let warm = c.client.start(&submission(name, warm)).await.unwrap();
    assert_eq!(
        c.client.finished(warm, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let holder = c
        .client
        .task(warm, "warm")
        .await
        .unwrap()
        .worker_id
        .unwrap();
    wait_for("the holder reads the model's hint stream", RUN, || {
        looking(&c, true)
    })
    .await
    .unwrap();
    (c, holder)
}

/// `Some` once whether a holder of [`AFFINE`] is looking for work is `want`.
async fn looking(c: &harmonia_tests::cluster::Cluster, want: bool) -> anyhow::Result<Option<()>> {
    let now = c
        .client
        .queue
        .holder_looking(ResourceClass::CPU, AFFINE)
        .await?;
    Ok((now == want).then_some(()))
}

/// Starts the tasks and waits for their run to succeed; returns the run's tasks.
async fn run_all(
    c: &harmonia_tests::cluster::Cluster,
    request_id: &str,
    tasks: serde_json::Value,
) -> Vec<harmonia_shared::model::RunTask> {
    let run_id = c
        .client
        .start(&submission(request_id, tasks))
        .await
        .unwrap();
    let run = c
        .client
        .finished(run_id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    c.client.tasks(run_id).await.unwrap()
}

/// Model affinity. A worker holds a model; a second worker, with an empty cache, reads the
/// class stream too. Tasks for the model all run on the holder while it is free (the
/// newcomer leaves them a head start, here longer than the test), so the model crosses the
/// wire once; once the holder stops looking for work (SIGSTOP), the newcomer takes them at
/// once rather than waiting out the head start.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_for_a_model_go_to_the_free_worker_holding_it_and_elsewhere_when_it_is_busy() {
    let (mut c, holder) = holder("affinity", &[]).await;
    let cache_b = c.scope.dir.join("cache-b").to_string_lossy().into_owned();
    let newcomer = affinity_worker(&cache_b, &["--affinity-wait-ms", "120000"]);
    c.workers.push(
        c.scope
            .spawn("worker-b", "harmonia-worker", &newcomer)
            .unwrap(),
    );
    // Its heartbeat loop starts with its claim loop: once it has beaten, it reads.
    let store = c.client.store.clone();
    let newcomer_id = wait_for("the newcomer runs", RUN, || {
        let (store, holder) = (store.clone(), holder.clone());
        async move {
            let workers = store.workers().seen_within(Duration::from_secs(60)).await?;
            Ok(workers
                .into_iter()
                .find(|w| w.id != holder && w.heartbeat_at > w.started_at)
                .map(|w| w.id))
        }
    })
    .await
    .unwrap();

    let tasks: Vec<_> = (0..8).map(|i| download(&format!("d{i}"))).collect();
    for task in run_all(&c, "affinity-held", json!(tasks)).await {
        assert_eq!(
            task.worker_id.as_deref(),
            Some(holder.as_str()),
            "{}",
            task.node_id
        );
        assert_eq!(outputs(&task).get_i64("bytes_downloaded").unwrap(), 0);
    }
    let fetched_by_b = std::path::Path::new(&cache_b).join("models--org--affine");
    assert!(!fetched_by_b.exists(), "the newcomer fetched the model");
    // ... though it was handed class copies of them (Redis makes a consumer on its first read
    // that returns entries): it let the holder have them.
    let queue = &c.client.queue;
    let mut conn = queue.conn().await.unwrap();
    let class_stream = queue.keys().task_stream(ResourceClass::CPU);
    let consumers: redis::streams::StreamInfoConsumersReply =
        redis::AsyncCommands::xinfo_consumers(&mut conn, &class_stream, "workers")
            .await
            .unwrap();
    drop(conn);
    assert!(
        consumers.consumers.iter().any(|w| w.name == newcomer_id),
        "the newcomer read no entry: {consumers:?}"
    );

    // The holder stops looking for work: the newcomer does not wait out its head start.
    harmonia_tests::process::signal(c.workers[0].pid(), libc::SIGSTOP);
    wait_for("the holder is seen idle", RUN, || looking(&c, false))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..2).map(|i| download(&format!("e{i}"))).collect();
    for task in run_all(&c, "affinity-busy", json!(tasks)).await {
        assert_eq!(
            task.worker_id,
            Some(newcomer_id.clone()),
            "{}",
            task.node_id
        );
    }
    harmonia_tests::process::signal(c.workers[0].pid(), libc::SIGCONT);
}

/// No starvation: a holder alone and busy, a task naming no model queued, then model tasks
/// queued more than the patience (300 ms) after it: the holder takes the older task right after
/// the first model task, not after all of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_is_not_passed_over_for_model_tasks_that_came_a_patience_after_it() {
    let (c, _) = holder("patience", &["--affinity-patience-ms", "300"]).await;
    let sleep = json!([{ "id": "s", "type": "debug.sleep", "params": { "ms": 3000 } }]);
    let sleep_run = c
        .client
        .start(&submission("patience-sleep", sleep))
        .await
        .unwrap();
    c.client
        .task_reaches(sleep_run, "s", TaskStatus::Running)
        .await
        .unwrap();
    let noop = json!([{ "id": "n", "type": "debug.noop" }]);
    let older = c
        .client
        .start(&submission("patience-older", noop))
        .await
        .unwrap();
    wait_for(
        "the older task waits longer than the patience",
        RUN,
        || async {
            let task = c.client.task(older, "n").await?;
            let waited = task
                .queued_at
                .is_some_and(|q| DateTime::now().timestamp_millis() - q.timestamp_millis() > 600);
            Ok(waited.then_some(()))
        },
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..6).map(|i| download(&format!("f{i}"))).collect();
    let later = c
        .client
        .start(&submission("patience-later", json!(tasks)))
        .await
        .unwrap();
    let busy = c.client.task(sleep_run, "s").await.unwrap();
    assert_eq!(
        busy.status,
        TaskStatus::Running,
        "the holder was busy when they came"
    );
    for run in [older, later] {
        let run = c.client.finished(run, RUN).await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
    }
    let older_started = c.client.task(older, "n").await.unwrap().started_at.unwrap();
    let later = c.client.tasks(later).await.unwrap();
    let mut starts: Vec<_> = later.iter().map(|t| t.started_at.unwrap()).collect();
    starts.sort();
    assert!(
        older_started <= starts[1],
        "the older task started at {older_started}, after model tasks that came later: {starts:?}"
    );
}
