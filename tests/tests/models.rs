//! Model work against real servers, the local Hub mirror and the real models: embeddings
//! checked against sentence-transformers, conversions, generation, the warm pool, S3 inputs and
//! outputs, and parameter checks. Downloads themselves are in `downloads.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use harmonia_shared::model::{RunStatus, TaskStatus};
use harmonia_tests::models::{self, MINILM, RUN, SMOLLM, outputs};
use harmonia_tests::{error_paths, submission, wait_for};
use mongodb::bson::Document;
use serde_json::json;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

struct Reference {
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path =
        harmonia_tests::servers::workspace_root().join("tests/fixtures/minilm-reference.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    Reference {
        sentences: serde_json::from_value(v["sentences"].clone()).unwrap(),
        embeddings: serde_json::from_value(v["embeddings"].clone()).unwrap(),
    }
}

/// Small batches run side by side, one lane per core (the other path of `Embedder::embed`):
/// the vectors are the same as sentence-transformers', in the submitted order.
#[tokio::test(flavor = "multi_thread")]
async fn small_batches_in_parallel_lanes_match_the_reference() {
    let mirror = models::serve_mirror(&models::hub_root().unwrap())
        .await
        .unwrap();
    let c = models::cluster("lanes", &mirror, &["2"]).await.unwrap();
    let reference = reference();
    let texts = &reference.sentences[..24];
    let run_id = c
        .client
        .start(&submission(
            "lanes",
            json!([
                { "id": "download", "type": "model.download", "params": { "repo": MINILM } },
                { "id": "embed", "type": "inference.embed", "depends_on": ["download"],
                  "params": { "texts": texts, "batch_size": 1 } },
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, RUN).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let embed = c.client.task(run_id, "embed").await.unwrap();
    let pointers = c
        .client
        .store
        .artifacts()
        .for_producer(embed.id)
        .await
        .unwrap();
    let storage = harmonia_shared::storage::Storage::new(&c.scope.config.s3);
    let body = storage
        .get_bytes(&pointers[0].storage_ref.key)
        .await
        .unwrap();
    let rows: Vec<serde_json::Value> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), texts.len());
    for (i, row) in rows.iter().enumerate() {
        let v: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        let similarity = cosine(&v, &reference.embeddings[i]);
        assert!(similarity >= 0.9999, "sentence {i}: cosine {similarity}");
    }
}

/// The demo workflow: download MiniLM -> embed 100 sentences -> convert to f16 and q8_0. The
/// embeddings match sentence-transformers' (fixture), and every output has its pointer and
/// checksums.
#[tokio::test(flavor = "multi_thread")]
async fn download_embed_convert_matches_the_reference() {
    let mirror = models::serve_mirror(&models::hub_root().unwrap())
        .await
        .unwrap();
    let c = models::cluster("demo-workflow", &mirror, &["2"])
        .await
        .unwrap();
    let reference = reference();
    let run_id = c
        .client
        .start(&submission(
            "demo",
            json!([
                { "id": "download", "type": "model.download",
                  "params": { "repo": MINILM, "tags": ["demo"] } },
                { "id": "embed", "type": "inference.embed", "depends_on": ["download"],
                  "params": { "texts": reference.sentences, "batch_size": 32 } },
                { "id": "convert", "type": "model.convert", "depends_on": ["download"],
                  "params": { "to": ["f16", "q8_0"] } },
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, RUN).await.unwrap();
    let tasks = c.client.tasks(run_id).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{tasks:#?}");
    let store = &c.client.store;
    let storage = harmonia_shared::storage::Storage::new(&c.scope.config.s3);

    // The download: every file verified against the mirror's sha256, license from the card.
    let download = outputs(&c.client.task(run_id, "download").await.unwrap());
    let source_id = download.get_object_id("model_artifact_id").unwrap();
    let source = store
        .model_artifacts()
        .get(source_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(source.name, MINILM);
    assert_eq!(source.files.len(), 13, "{:?}", source.files);
    for f in &source.files {
        assert_eq!(
            Some(f.sha256.as_str()),
            mirror.mirror.sha256(MINILM, &f.name),
            "{}",
            f.name
        );
    }
    let checks = store.checksums().for_artifact(source_id).await.unwrap();
    assert_eq!(checks.len(), 13);
    assert!(checks.iter().all(|c| c.ok && c.algorithm == "sha256"));
    let license = store
        .licenses()
        .get(source.license_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (license.spdx_id.as_str(), license.commercial_use),
        ("Apache-2.0", Some(true))
    );

    // The embeddings: in the bucket, pointed to, equal to sentence-transformers' vectors.
    let embed_task = c.client.task(run_id, "embed").await.unwrap();
    let embed = outputs(&embed_task);
    let artifact_id = embed.get_object_id("artifact_id").unwrap();
    assert_eq!(embed_task.output_artifact_ids, vec![artifact_id]);
    let pointers = store.artifacts().for_producer(embed_task.id).await.unwrap();
    assert_eq!(pointers.len(), 1);
    // The CLI shows the run's outputs with it.
    let out = c
        .scope
        .scheduler_cli(&["status", &run_id.to_hex(), "--json"])
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = status["artifacts"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "embeddings.jsonl");
    let key = &pointers[0].storage_ref.key;
    assert_eq!(
        key,
        &format!(
            "artifacts/ml/{}/{}/{}/embeddings.jsonl",
            run_id.to_hex(),
            embed_task.id.to_hex(),
            embed_task.attempt
        )
    );
    let body = storage.get_bytes(key).await.unwrap();
    assert_eq!(
        pointers[0].storage_ref.sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
    );
    assert_eq!(
        pointers[0]
            .lineage
            .get_object_id("model_artifact_id")
            .unwrap(),
        source_id
    );
    let rows: Vec<serde_json::Value> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 100);
    let mut least = f32::INFINITY;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["index"], i);
        let v: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert_eq!(v.len(), 384);
        least = least.min(cosine(&v, &reference.embeddings[i]));
    }
    assert!(least >= 0.9999, "least cosine to the reference: {least}");
    eprintln!("least cosine to sentence-transformers over 100 sentences: {least:.7}");

    // The conversions: new versions with lineage, validated, in the bucket with checksums.
    let convert = outputs(&c.client.task(run_id, "convert").await.unwrap());
    let conversions = convert.get_array("conversions").unwrap();
    assert_eq!(conversions.len(), 2);
    for conv in conversions {
        let conv = conv.as_document().unwrap();
        let to = conv.get_str("to").unwrap();
        let id = conv.get_object_id("model_artifact_id").unwrap();
        let a = store.model_artifacts().get(id).await.unwrap().unwrap();
        assert_eq!(a.version, format!("{}-{to}", source.version));
        let lineage = a.lineage.as_ref().unwrap();
        assert_eq!(
            (lineage.source_artifact_id, lineage.conversion.as_str()),
            (source_id, to)
        );
        let min = lineage
            .validation
            .as_ref()
            .unwrap()
            .get_f64("min_cosine")
            .unwrap();
        assert!(min >= 0.999, "{to}: {min}");
        let weights = a
            .files
            .iter()
            .find(|f| f.name.starts_with("model."))
            .unwrap();
        let bytes = storage
            .get_bytes(weights.s3_key.as_ref().unwrap())
            .await
            .unwrap();
        assert_eq!(
            weights.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        );
        assert!(
            a.file("tokenizer.json").is_some(),
            "converted artifacts are self-contained"
        );
        assert_eq!(
            store.checksums().for_artifact(id).await.unwrap().len(),
            a.files.len()
        );
        eprintln!(
            "{to}: {} bytes, {} ms, least cosine {min:.6}",
            weights.size_bytes,
            conv.get_i64("convert_ms").unwrap()
        );
    }
    let f16 = &conversions[0].as_document().unwrap();
    assert!(
        f16.get_i64("size_bytes").unwrap() < 46_000_000,
        "f16 halves the weights"
    );
}

/// The second embedding task on a worker takes the model from the warm pool; inputs can come
/// from a JSONL object in the bucket; a verified snapshot can be copied to the bucket; and a
/// retried task replaces its output pointer instead of adding one.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_embedding_task_does_not_reload_the_model() {
    let mirror = models::serve_mirror(&models::hub_root().unwrap())
        .await
        .unwrap();
    let c = models::cluster("warm-pool", &mirror, &["1"]).await.unwrap();
    let storage = harmonia_shared::storage::Storage::new(&c.scope.config.s3);
    storage.ensure_bucket().await.unwrap();
    let texts = ["a first sentence", "and a second one"];
    let jsonl: String = texts
        .iter()
        .map(|t| format!("{}\n", json!({ "text": t })))
        .collect();
    storage
        .put_bytes("inputs/texts.jsonl", jsonl.into(), "application/x-ndjson")
        .await
        .unwrap();
    let files = ["config.json", "tokenizer.json", "model.safetensors"];
    let run_id = c
        .client
        .start(&submission(
            "warm",
            json!([
                { "id": "download", "type": "model.download",
                  "params": { "repo": MINILM, "files": files, "upload": true } },
                { "id": "first", "type": "inference.embed", "depends_on": ["download"],
                  "params": { "texts": texts } },
                { "id": "second", "type": "inference.embed", "depends_on": ["first"],
                  "params": { "input_key": "inputs/texts.jsonl" } },
            ]),
        ))
        .await
        .unwrap();
    assert_eq!(
        c.client.finished(run_id, RUN).await.unwrap().status,
        RunStatus::Succeeded
    );
    let first = outputs(&c.client.task(run_id, "first").await.unwrap());
    let second = outputs(&c.client.task(run_id, "second").await.unwrap());
    let load = |o: &Document| o.get_i64("model_load_ms").unwrap();
    eprintln!(
        "model load: first task {} ms, second task {} ms",
        load(&first),
        load(&second)
    );
    assert!(!first.get_bool("pool_hit").unwrap());
    assert!(second.get_bool("pool_hit").unwrap());
    assert!(
        load(&second) * 10 <= load(&first).max(10),
        "{first} / {second}"
    );
    // Same model, same texts (inline, then from the bucket): the same bytes.
    let body = |o: &Document| {
        let key = o.get_str("key").unwrap().to_owned();
        let storage = storage.clone();
        async move { storage.get_bytes(&key).await.unwrap() }
    };
    assert_eq!(body(&first).await, body(&second).await);

    // The snapshot was copied to the bucket, file by file.
    let download = outputs(&c.client.task(run_id, "download").await.unwrap());
    let artifact = c
        .client
        .store
        .model_artifacts()
        .get(download.get_object_id("model_artifact_id").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(artifact.path.starts_with("s3://"), "{}", artifact.path);
    for f in &artifact.files {
        let key = f.s3_key.as_ref().unwrap();
        assert!(key.starts_with(&format!("models/{MINILM}/{}/", artifact.version)));
        assert_eq!(storage.head(key).await.unwrap(), Some(f.size_bytes));
    }

    // The worker advertises what it holds.
    let second_task = c.client.task(run_id, "second").await.unwrap();
    let w = c
        .client
        .store
        .workers()
        .get(second_task.worker_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.models_cached, vec![MINILM.to_owned()]);
    assert_eq!(w.models_loaded.len(), 1, "{:?}", w.models_loaded);

    // A retried task overwrites its output and its pointer: still one, from the new attempt.
    let out = c
        .scope
        .scheduler_cli(&["retry", "task", &run_id.to_hex(), "second"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the retried task to succeed", RUN, || async {
        let t = c.client.task(run_id, "second").await?;
        let again = t.status == TaskStatus::Succeeded && t.attempt > second_task.attempt;
        Ok(again.then_some(()))
    })
    .await
    .unwrap();
    let retried = c.client.task(run_id, "second").await.unwrap();
    let pointers = c
        .client
        .store
        .artifacts()
        .for_producer(second_task.id)
        .await
        .unwrap();
    assert_eq!(pointers.len(), 1, "{pointers:#?}");
    assert_eq!(pointers[0].attempt, retried.attempt);
    assert_eq!(retried.output_artifact_ids, vec![pointers[0].id]);
    // The first attempt's object went with its pointer: one object under the task's prefix.
    let storage = harmonia_shared::storage::Storage::new(&c.scope.config.s3);
    let prefix = format!(
        "artifacts/ml/{}/{}/",
        run_id.to_hex(),
        second_task.id.to_hex()
    );
    let keys = storage.list(&prefix).await.unwrap();
    assert_eq!(keys, vec![pointers[0].storage_ref.key.clone()]);
}

/// Greedy generation with the quantized SmolLM2 is deterministic and counts its tokens.
#[tokio::test(flavor = "multi_thread")]
async fn generation_is_deterministic_at_temperature_zero() {
    let mirror = models::serve_mirror(&models::hub_root().unwrap())
        .await
        .unwrap();
    let c = models::cluster("generate", &mirror, &["2"]).await.unwrap();
    let generate = |id: &str| {
        json!({ "id": id, "type": "inference.generate", "depends_on": ["download"],
                "params": { "prompts": ["What is the capital of France?"], "max_tokens": 12 } })
    };
    let run_id = c
        .client
        .start(&submission(
            "generate",
            json!([
                { "id": "download", "type": "model.download", "params": { "repo": SMOLLM } },
                generate("one"),
                generate("two"),
            ]),
        ))
        .await
        .unwrap();
    let run = c.client.finished(run_id, RUN).await.unwrap();
    assert_eq!(
        run.status,
        RunStatus::Succeeded,
        "{:#?}",
        c.client.tasks(run_id).await.unwrap()
    );
    let one = outputs(&c.client.task(run_id, "one").await.unwrap());
    let two = outputs(&c.client.task(run_id, "two").await.unwrap());
    let text = |o: &Document| {
        o.get_array("texts").unwrap()[0]
            .as_str()
            .unwrap()
            .to_owned()
    };
    eprintln!("SmolLM2 says: {:?}", text(&one));
    assert_eq!(text(&one), text(&two));
    assert!(!text(&one).trim().is_empty());
    let tokens = one.get_i64("completion_tokens").unwrap();
    assert!((1..=12).contains(&tokens), "{tokens}");
    assert!(one.get_i64("prompt_tokens").unwrap() > 5);
}

/// Bad model parameters are rejected at submission, each naming its field.
#[tokio::test(flavor = "multi_thread")]
async fn bad_model_params_are_rejected_with_their_fields() {
    let mirror = models::serve_mirror(&models::hub_root().unwrap())
        .await
        .unwrap();
    let c = models::cluster("bad-params", &mirror, &[]).await.unwrap();
    let reply = c
        .client
        .submit(&submission(
            "bad",
            json!([
                { "id": "a", "type": "model.download",
                  "params": { "repo": "no-slash", "files": ["../../etc/passwd"], "sha256": { "x": "12" } } },
                { "id": "b", "type": "model.convert", "params": { "to": ["q5_k"] } },
                { "id": "c", "type": "inference.embed", "params": { "batch_size": 0, "texts": ["x"] } },
                { "id": "d", "type": "inference.generate", "params": { "prompt": "typo" } },
            ]),
        ))
        .await
        .unwrap();
    assert_eq!(reply["status"], "rejected", "{reply}");
    let paths = error_paths(&reply);
    for want in [
        "tasks[0].params.repo",
        "tasks[0].params.files[0]",
        "tasks[0].params.sha256.x",
        "tasks[1].params.to[0]",
        "tasks[2].params.batch_size",
        "tasks[3].params.prompt",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(want)),
            "{want} not in {paths:?}"
        );
    }
}
