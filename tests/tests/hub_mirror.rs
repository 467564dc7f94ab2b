//! The Hub-compatible mirror, exercised by the real `hf-hub` client (the path model downloads
//! will take): listing, ranged downloads, cache hits, and hashes that expose tampering.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::Ordering;

use harmonia_tests::Scope;
use harmonia_tests::hub::Mirror;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// A fake repo `org/model` with a 25 MB weights file (hf-hub fetches in 10 MB ranges).
fn make_repo(scope: &Scope) -> (std::path::PathBuf, Vec<u8>) {
    let root = scope.dir.join("mirror");
    let repo = root.join("org/model");
    std::fs::create_dir_all(repo.join("1_Pooling")).unwrap();
    let weights: Vec<u8> = (0..25_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(repo.join("model.safetensors"), &weights).unwrap();
    std::fs::write(repo.join("config.json"), br#"{"hidden_size": 384}"#).unwrap();
    std::fs::write(
        repo.join("1_Pooling/config.json"),
        br#"{"pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    (root, weights)
}

async fn start(root: &std::path::Path) -> (Arc<Mirror>, String) {
    let mirror = Arc::new(Mirror::index(root).unwrap());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(harmonia_tests::hub::serve(
        mirror.clone(),
        listener,
        std::future::pending(),
    ));
    (mirror, url)
}

fn api(url: &str, cache: &std::path::Path) -> hf_hub::api::tokio::Api {
    hf_hub::api::tokio::ApiBuilder::new()
        .with_endpoint(url.to_owned())
        .with_cache_dir(cache.to_owned())
        .with_progress(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn hf_hub_downloads_through_the_mirror_and_hits_its_cache() {
    let scope = Scope::new("hub");
    let (root, weights) = make_repo(&scope);
    let (mirror, url) = start(&root).await;
    let repo = api(&url, &scope.dir.join("cache")).model("org/model".into());

    let info = repo.info().await.unwrap();
    let mut names: Vec<_> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["1_Pooling/config.json", "config.json", "model.safetensors"]
    );

    let path = repo.get("model.safetensors").await.unwrap();
    let got = std::fs::read(&path).unwrap();
    assert!(got == weights, "downloaded bytes differ");
    assert_eq!(
        mirror.sha256("org/model", "model.safetensors"),
        Some(hex(&Sha256::digest(&got)).as_str())
    );
    // The body bytes once, plus at most the 1-byte probe (hf-hub may drop that response before
    // its byte leaves: the mirror counts bytes as they are sent).
    let served = mirror.bytes_served.load(Ordering::Relaxed);
    let once = weights.len() as u64;
    assert!((once..=once + 1).contains(&served), "{served} bytes served");

    // A second get is a cache hit: no bytes move.
    repo.get("model.safetensors").await.unwrap();
    assert_eq!(mirror.bytes_served.load(Ordering::Relaxed), served);
    let nested = repo.get("1_Pooling/config.json").await.unwrap();
    assert!(
        std::fs::read_to_string(nested)
            .unwrap()
            .contains("pooling_mode")
    );
}

#[tokio::test]
async fn the_mirror_speaks_http_like_the_hub() {
    let scope = Scope::new("hub-http");
    let (root, weights) = make_repo(&scope);
    let (_mirror, url) = start(&root).await;
    let client = reqwest::Client::new();
    let file = format!("{url}/org/model/resolve/main/model.safetensors");
    let size = weights.len();

    // A range past the end is clamped (hf-hub's last chunk asks for one).
    let r = client
        .get(&file)
        .header("Range", "bytes=24000000-29999999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 24000000-{}/{size}", size - 1).as_str()
    );
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["x-linked-etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap().len(), size - 24_000_000);

    let r = client
        .get(&file)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = client
        .get(&file)
        .header("Range", "bytes=30000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    for missing in [
        format!("{url}/org/nope/resolve/main/config.json"),
        format!("{url}/org/model/resolve/main/missing.bin"),
        format!("{url}/org/model/resolve/v9/config.json"),
        format!("{url}/org/model/resolve/main/..%2F..%2Fetc%2Fpasswd"),
    ] {
        assert_eq!(
            client.get(&missing).send().await.unwrap().status(),
            404,
            "{missing}"
        );
    }
}

#[tokio::test]
async fn a_file_tampered_after_indexing_keeps_its_original_hash() {
    let scope = Scope::new("hub-tamper");
    let (root, mut weights) = make_repo(&scope);
    let (mirror, url) = start(&root).await;
    let advertised = mirror
        .sha256("org/model", "model.safetensors")
        .unwrap()
        .to_owned();
    weights[1234] ^= 0xff;
    std::fs::write(root.join("org/model/model.safetensors"), &weights).unwrap();

    // hf-hub verifies nothing: it stores the tampered bytes under the advertised hash. This
    // is the mismatch model.download must detect (expected = ETag, got = sha256 of bytes).
    let path = api(&url, &scope.dir.join("cache"))
        .model("org/model".into())
        .get("model.safetensors")
        .await
        .unwrap();
    let blob = std::fs::canonicalize(&path).unwrap();
    assert!(blob.to_string_lossy().ends_with(&advertised), "{blob:?}");
    assert_ne!(
        hex(&Sha256::digest(std::fs::read(&path).unwrap())),
        advertised
    );
}
