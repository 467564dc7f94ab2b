//! Proves each service is real: the protocol features Harmonia relies on work against the
//! servers the harness started, and the binaries talk to them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harmonia_shared::queue::Queue;
use harmonia_shared::storage::{MULTIPART_PART_BYTES, Storage};
use harmonia_shared::store::Store;
use harmonia_tests::{Scope, wait_for};
use mongodb::bson::{Document, doc};
use redis::AsyncCommands;
use redis::streams::{StreamReadOptions, StreamReadReply};

#[tokio::test]
async fn redis_stream_round_trip_through_a_consumer_group() {
    let scope = Scope::new("redis-stream");
    let queue = Queue::connect(&scope.config.redis).await.unwrap();
    let mut conn = queue.conn().await.unwrap();
    let stream = queue.keys().submissions();

    let () = conn
        .xgroup_create_mkstream(&stream, "g", "$")
        .await
        .unwrap();
    let id: String = conn
        .xadd(&stream, "*", &[("payload", "{\"hello\":1}")])
        .await
        .unwrap();

    let opts = StreamReadOptions::default().group("g", "c1").count(10);
    let reply: StreamReadReply = conn.xread_options(&[&stream], &[">"], &opts).await.unwrap();
    let entries = &reply.keys[0].ids;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, id);
    let payload: String = entries[0].get("payload").unwrap();
    assert_eq!(payload, "{\"hello\":1}");

    // Delivered but unacked: exactly one pending entry owned by c1.
    let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, "g").await.unwrap();
    assert_eq!(pending.count(), 1);

    let acked: i64 = conn.xack(&stream, "g", &[&id]).await.unwrap();
    assert_eq!(acked, 1);
    let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, "g").await.unwrap();
    assert_eq!(pending.count(), 0);
}

/// `read_group` parses the reply itself (redis-rs's `StreamReadReply` clones it whole): new
/// entries come back with their fields, and an entry deleted while pending reads back from the
/// backlog with none rather than failing the read.
#[tokio::test]
async fn read_group_returns_fields_and_survives_an_entry_deleted_while_pending() {
    let scope = Scope::new("read-group");
    let queue = Queue::connect(&scope.config.redis).await.unwrap();
    let stream = queue.keys().submissions();
    queue.ensure_group(&stream, "g").await.unwrap();
    let mut conn = queue.conn().await.unwrap();
    let mut ids = Vec::new();
    for n in 0..2 {
        let id: String = conn
            .xadd(
                &stream,
                "*",
                &[("payload", format!("p{n}")), ("n", n.to_string())],
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let new = queue
        .read_group(&stream, "g", "c1", false, 10)
        .await
        .unwrap();
    assert_eq!(new.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(new[1].get::<String>("payload").as_deref(), Some("p1"));
    assert_eq!(new[1].get::<String>("n").as_deref(), Some("1"));

    let deleted: i64 = conn.xdel(&stream, &[&ids[0]]).await.unwrap();
    assert_eq!(deleted, 1);
    let backlog = queue
        .read_group(&stream, "g", "c1", true, 10)
        .await
        .unwrap();
    assert_eq!(backlog.len(), 2, "{backlog:?}");
    assert!(backlog[0].map.is_empty(), "{backlog:?}");
    assert_eq!(backlog[1].get::<String>("payload").as_deref(), Some("p1"));
}

#[tokio::test]
async fn mongo_transactions_commit_and_abort() {
    let scope = Scope::new("mongo-txn");
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let coll = store.db().collection::<Document>("smoke");
    // Collections must exist before a transaction writes to them on Mongo 6.0.
    coll.insert_one(doc! { "_id": "seed" }).await.unwrap();

    let mut session = store.client().start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "committed" })
        .session(&mut session)
        .await
        .unwrap();
    // Not visible outside the transaction before commit.
    assert!(
        coll.find_one(doc! { "_id": "committed" })
            .await
            .unwrap()
            .is_none()
    );
    session.commit_transaction().await.unwrap();
    assert!(
        coll.find_one(doc! { "_id": "committed" })
            .await
            .unwrap()
            .is_some()
    );

    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "aborted" })
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    assert!(
        coll.find_one(doc! { "_id": "aborted" })
            .await
            .unwrap()
            .is_none()
    );
}

/// Workers, the scheduler and tests all ensure the bucket at start; when they start together
/// every one of them must succeed, whichever created it.
#[tokio::test(flavor = "multi_thread")]
async fn processes_racing_to_create_the_bucket_all_succeed() {
    let scope = Scope::new("s3-bucket-race");
    for round in 0..5 {
        let mut config = scope.config.s3.clone();
        config.bucket = format!("{}-{round}", config.bucket);
        let racers: Vec<_> = (0..16)
            .map(|_| {
                let storage = Storage::new(&config);
                tokio::spawn(async move { storage.ensure_bucket().await })
            })
            .collect();
        for racer in racers {
            racer
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}

#[tokio::test]
async fn s3_multipart_upload_and_presigned_get() {
    let scope = Scope::new("s3-multipart");
    let storage = Storage::new(&scope.config.s3);
    storage.ensure_bucket().await.unwrap();
    storage.ensure_bucket().await.unwrap(); // idempotent

    // Two full parts and a tail: the multipart path, with bytes that differ per position.
    let len = 2 * MULTIPART_PART_BYTES + 12345;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let file = scope.dir.join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let sent = storage
        .put_file("smoke/big.bin", &file, "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(sent, len as u64);
    assert_eq!(
        storage.head("smoke/big.bin").await.unwrap(),
        Some(len as u64)
    );
    assert_eq!(storage.head("smoke/missing").await.unwrap(), None);

    let url = storage
        .presign_get("smoke/big.bin", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    let body = fetched.bytes().await.unwrap();
    assert!(
        body.as_ref() == data.as_slice(),
        "presigned GET returned other bytes"
    );

    // The signature is what grants access: tampering with it is refused.
    let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &url[at..=at] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
    let refused = reqwest::get(&tampered).await.unwrap();
    let status = refused.status();
    let body = refused.text().await.unwrap();
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn s3_rejects_wrong_credentials() {
    let scope = Scope::new("s3-creds");
    let mut config = scope.config.s3.clone();
    config.secret_access_key = Some("wrong-secret".to_owned().into());
    let err = Storage::new(&config)
        .put_bytes("x", bytes::Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SignatureDoesNotMatch") || err.contains("403"),
        "{err}"
    );
}

#[tokio::test]
async fn binaries_check_all_three_services() {
    let scope = Scope::new("bin-check");
    for binary in ["harmonia-scheduler", "harmonia-worker"] {
        let out = scope
            .command(binary)
            .unwrap()
            .args(["check", "--json"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{binary}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let services = report["services"].as_array().unwrap();
        assert_eq!(services.len(), 3);
        assert!(services.iter().all(|s| s["ok"] == true), "{report}");
    }
}

/// mongod keeps 300 s of snapshot history by default, which Harmonia never reads and which
/// slows large runs: `check` names the setting that drops it, and says nothing once it is 0.
#[tokio::test]
async fn check_advises_dropping_the_snapshot_history_mongod_keeps() {
    let (scope, mongo) = Scope::with_own_mongo("check-history").await.unwrap();
    let admin = mongodb::Client::with_uri_str(&mongo.uri)
        .await
        .unwrap()
        .database("admin");
    for (window, advised) in [(300, true), (0, false)] {
        admin
            .run_command(doc! { "setParameter": 1, "minSnapshotHistoryWindowInSeconds": window })
            .await
            .unwrap();
        let out = scope
            .command("harmonia-scheduler")
            .unwrap()
            .args(["check", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "advice is not a failure");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let detail = report["services"][1]["detail"].as_str().unwrap();
        assert_eq!(
            detail.contains("keeps 300 s of snapshot history")
                && detail.contains("minSnapshotHistoryWindowInSeconds=0"),
            advised,
            "window {window}: {detail}"
        );
    }
}

#[tokio::test]
async fn bad_config_fails_with_the_setting_named() {
    let scope = Scope::new("bad-config");
    let out = scope
        .command("harmonia-scheduler")
        .unwrap()
        .env("HARMONIA_S3_BUCKET", "Not_A_Bucket")
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("s3.bucket"), "{stderr}");

    // An unreachable service is reported, not a crash, and the exit code says so.
    let out = scope
        .command("harmonia-worker")
        .unwrap()
        .env("HARMONIA_REDIS_URL", "redis://127.0.0.1:1")
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["services"][0]["service"], "redis");
    assert_eq!(report["services"][0]["ok"], false);
    assert_eq!(report["services"][1]["ok"], true, "{report}");
}

#[tokio::test]
async fn worker_reports_the_devices_it_would_advertise() {
    let scope = Scope::new("devices");
    let report = devices_report(&scope, &["--gpus", "0:A100:81920,1:L4:24576"]);
    assert_eq!(report["source"], "--gpus");
    assert_eq!(report["gpus"][1]["name"], "L4");
    assert_eq!(report["gpus"][1]["memory_mb"], 24576);

    // A malformed list names the entry and the problem; nothing starts.
    let out = scope
        .command("harmonia-worker")
        .unwrap()
        .args(["devices", "--gpus", "0:A100:81920,1:L4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gpus[1]") && stderr.contains("index:name:memory_mb"),
        "{stderr}"
    );
}

/// A stand-in for `nvidia-smi` in `dir`: prints whatever `dir/nvidia-smi.out` holds (a
/// capture, which the test may change) and exits with `status`. No GPU machine runs the suite.
fn replayed_nvidia_smi(dir: &Path, capture: &str, status: i32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("nvidia-smi.out");
    std::fs::write(&out, capture).unwrap();
    let program = dir.join("nvidia-smi");
    let script = format!("#!/bin/sh\ncat '{}'\nexit {status}\n", out.display());
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    program
}

fn capture(name: &str) -> String {
    let path = format!(
        "{}/../shared/fixtures/nvidia-smi/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `harmonia-worker devices <args>`, which must succeed, as JSON.
fn devices_report(scope: &Scope, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = std::iter::once("devices")
        .chain(args.iter().copied())
        .collect();
    let out = scope.run_ok("harmonia-worker", &args).unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn worker_devices_says_why_there_is_no_gpu_or_why_one_is_left_out() {
    let scope = Scope::new("devices-detected");
    let no_driver = replayed_nvidia_smi(&scope.dir.join("no-driver"), &capture("no-driver.txt"), 9);
    for (program, says) in [
        (
            PathBuf::from("/nonexistent/nvidia-smi"),
            "/nonexistent/nvidia-smi was not found: no GPUs detected",
        ),
        (
            no_driver,
            "nvidia-smi failed (exit status 9): NVIDIA-SMI has failed because it couldn't \
             communicate with the NVIDIA driver",
        ),
    ] {
        let report = devices_report(&scope, &["--nvidia-smi", program.to_str().unwrap()]);
        assert_eq!(report["gpus"], serde_json::json!([]), "{report:#}");
        let status = report["status"].as_str().unwrap();
        assert!(status.contains(says), "{status}");
    }

    let mig = replayed_nvidia_smi(&scope.dir.join("mig"), &capture("a100-mig.csv"), 0);
    let report = devices_report(&scope, &["--nvidia-smi", mig.to_str().unwrap()]);
    assert_eq!(report["gpus"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["gpus"][0]["index"], 1);
    assert_eq!(report["gpus"][0]["memory_free_mb"], 40326);
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        notes[0].starts_with("GPU 0 (NVIDIA A100-SXM4-40GB) is in MIG mode"),
        "{notes:?}"
    );
    // This suite runs the default (CPU-only) build, which says it cannot use the GPU it found.
    assert!(
        notes[1].contains("built without the `cuda` feature"),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_worker_records_its_gpus_free_memory_on_every_heartbeat() {
    let scope = Scope::new("gpu-free-memory");
    let h100 = capture("h100x8.csv").lines().next().unwrap().to_owned();
    let nvidia_smi = replayed_nvidia_smi(&scope.dir.join("smi"), &h100, 0);
    let mut args = harmonia_tests::cluster::WORKER.to_vec();
    let program = nvidia_smi.display().to_string();
    args.extend(["--nvidia-smi", &program]);
    let _worker = scope.spawn("worker", "harmonia-worker", &args).unwrap();
    let client = harmonia_tests::Client::connect(&scope).await.unwrap();
    let free_memory = |want: u64| {
        let client = &client;
        async move {
            let workers = client
                .store
                .workers()
                .seen_within(Duration::from_secs(60))
                .await?;
            let gpu = workers.first().and_then(|w| w.gpus.first().cloned());
            Ok(gpu.filter(|g| g.memory_free_mb == Some(want)))
        }
    };
    let gpu = wait_for(
        "the worker to register its GPU",
        Duration::from_secs(30),
        || free_memory(81008),
    )
    .await
    .unwrap();
    assert_eq!(gpu.name, "NVIDIA H100 80GB HBM3");
    assert_eq!(
        gpu.uuid.as_deref(),
        Some("GPU-5d4f1a0b-3c2e-9f61-7a8e-0b1c2d3e4f50")
    );

    // Something else takes 40 GB of the GPU: the next heartbeats record it.
    let used = h100.replace(", 81008,", ", 40431,");
    let out = scope.dir.join("smi").join("nvidia-smi.out");
    std::fs::write(out.with_extension("new"), used).unwrap();
    std::fs::rename(out.with_extension("new"), &out).unwrap();
    wait_for(
        "the heartbeat to record the new free memory",
        Duration::from_secs(30),
        || free_memory(40431),
    )
    .await
    .unwrap();
    let workers = scope.scheduler_cli_ok(&["workers"]).unwrap();
    assert!(
        workers.contains("0:NVIDIA H100 80GB HBM3 81559 MB (40431 free)"),
        "{workers}"
    );
}

/// Every process migrates at start-up: many at once on a fresh database all succeed (they race
/// to create the same collections and indexes).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_migrations_on_a_fresh_database_all_succeed() {
    for round in 0..3 {
        let scope = Scope::new(&format!("migrate-race-{round}"));
        let store = Store::connect(&scope.config.mongo).await.unwrap();
        let runs = (0..8).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { harmonia_shared::store::migrate::migrate(&store).await })
        });
        for r in futures::future::join_all(runs).await {
            r.unwrap().unwrap();
        }
        let names = store.db().list_collection_names().await.unwrap();
        for c in [
            "run_tasks",
            "model_artifacts",
            "checksums",
            "licenses",
            "artifacts",
        ] {
            assert!(names.iter().any(|n| n == c), "{c} missing from {names:?}");
        }
    }
}

/// Schema 6 replaced run_tasks' full per-status indexes with partial ones under new names: a
/// database migrated by schema 5 loses the old ones and gains the new, and the queries those
/// indexes serve (expired leases) are answered from them.
#[tokio::test(flavor = "multi_thread")]
async fn migrating_from_schema_5_replaces_the_full_status_indexes_with_partial_ones() {
    use futures::TryStreamExt;
    use mongodb::IndexModel;
    let scope = Scope::new("migrate-partial");
    let store = Store::connect(&scope.config.mongo).await.unwrap();
    let tasks = store.db().collection::<Document>("run_tasks");
    // What schema 5 left: the same keys, indexed over every task.
    for keys in [
        doc! { "status": 1, "worker_id": 1 },
        doc! { "status": 1, "class": 1, "wait_reason": 1 },
        doc! { "status": 1, "lease_expires_at": 1 },
    ] {
        tasks
            .create_index(IndexModel::builder().keys(keys).build())
            .await
            .unwrap();
    }
    store
        .db()
        .collection::<Document>("meta")
        .insert_one(doc! { "_id": "schema", "version": 5 })
        .await
        .unwrap();
    let found = harmonia_shared::store::migrate::migrate(&store)
        .await
        .unwrap();
    assert_eq!(found, 5);
    let mut partial = std::collections::BTreeMap::new();
    let mut names = Vec::new();
    for index in tasks
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
    {
        let options = index.options.unwrap_or_default();
        let name = options.name.clone().unwrap_or_default();
        if let Some(filter) = options.partial_filter_expression {
            partial.insert(name.clone(), filter);
        }
        names.push(name);
    }
    for old in [
        "status_1_worker_id_1",
        "status_1_class_1_wait_reason_1",
        "status_1_lease_expires_at_1",
    ] {
        assert!(
            !names.iter().any(|n| n == old),
            "{old} still there: {names:?}"
        );
    }
    assert_eq!(partial["running_by_worker"], doc! { "status": "running" });
    assert_eq!(
        partial["running_by_lease_expiry"],
        doc! { "status": "running" }
    );
    assert_eq!(
        partial["queued_by_class_reason"],
        doc! { "status": "queued" }
    );
    // The expired-lease scan is planned on a partial index, not a collection scan.
    let plan = store
        .db()
        .run_command(doc! {
            "explain": { "find": "run_tasks", "filter": {
                "status": "running", "lease_expires_at": { "$lt": mongodb::bson::DateTime::now() },
            } },
            "verbosity": "queryPlanner",
        })
        .await
        .unwrap();
    let winning = plan
        .get_document("queryPlanner")
        .and_then(|q| q.get_document("winningPlan"))
        .unwrap()
        .to_string();
    // (On an empty collection either running-only index may win the plan race.)
    assert!(
        winning.contains("IXSCAN") && winning.contains("\"isPartial\": true"),
        "{winning}"
    );
    // A second start finds schema 6 and changes nothing.
    let again = harmonia_shared::store::migrate::migrate(&store)
        .await
        .unwrap();
    assert_eq!(again, harmonia_shared::model::SCHEMA_VERSION);
}
