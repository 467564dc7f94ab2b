//! Model benchmarks (run by `scripts/bench-models`, which adds curl and PyTorch for comparison).
//! Prints figures as `name: value unit`; asserts nothing.
//!
//! Env: HARMONIA_HUB_ENDPOINT (a Hub mirror serving the models), HARMONIA_HUB_ROOT (the
//! mirror's directory, for direct loads), BENCH_SENTENCES (a JSONL of `{"text"}`),
//! BENCH_SECONDS (time per embedding measurement, default 10), BENCH_ONLY (a comma-separated
//! list of sections to run: sha256, downloads, embeddings, conversions, generation; default all).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark binary: panics and prints are its output

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use harmonia_worker::models::bert::Embedder;
use harmonia_worker::models::convert::{self, Conversion};
use harmonia_worker::models::verify::{Expected, Hasher};
use harmonia_worker::models::{Hub, Stage};
use tokio_util::sync::CancellationToken;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const SMOLLM: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";

fn env_path(key: &str) -> PathBuf {
    PathBuf::from(std::env::var(key).unwrap_or_else(|_| panic!("set {key}")))
}

fn sha256_gbps() {
    let buf: Vec<u8> = (0..256u32 << 20).map(|i| (i ^ (i >> 7)) as u8).collect();
    let started = Instant::now();
    let mut h = Hasher::new(buf.len() as u64, &Expected::Sha256(String::new()));
    h.update(&buf);
    let _ = h.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sha256: {:.2} GB/s (256 MiB in memory)",
        buf.len() as f64 / secs / 1e9
    );
}

async fn downloads(endpoint: &str) {
    for (repo, file) in [
        (MINILM, "model.safetensors"),
        (SMOLLM, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ] {
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..3 {
            let cache = tempfile::tempdir().unwrap();
            let mut config = harmonia_shared::Config::default().models;
            config.cache_dir = cache.path().to_owned();
            config.hub_endpoint = endpoint.to_owned();
            let hub = Hub::new(&config).unwrap();
            let listing = hub.listing(repo, "main").await.unwrap();
            let remote = listing
                .siblings
                .iter()
                .find(|s| s.rfilename == file)
                .unwrap();
            let expected = remote.hub_expected().unwrap();
            let started = Instant::now();
            let fetched = hub
                .fetch(
                    repo,
                    "main",
                    &listing.sha,
                    file,
                    remote.size_bytes(),
                    &expected,
                    &CancellationToken::new(),
                    &|_: Stage| {},
                )
                .await
                .unwrap();
            best = best.min(started.elapsed().as_secs_f64());
            bytes = fetched.transferred;
        }
        println!(
            "download {file}: {:.0} MB/s (best of 3, {bytes} bytes, sha256 verified while streaming)",
            bytes as f64 / best / 1e6
        );
    }
}

fn embeddings(dir: &Path, sentences: &[String], budget: Duration) {
    let model = Embedder::load(dir, &dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for batch in [32usize, 1] {
        // Warm-up, then as many passes over the sentences as fit the budget.
        model
            .embed(&sentences[..32], batch, true, &|| false, &|_| {})
            .unwrap();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < budget {
            model
                .embed(sentences, batch, true, &|| false, &|_| {})
                .unwrap();
            n += sentences.len();
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "embeddings batch {batch}: {rate:.1} sentences/s (candle, {} threads)",
            rayon_threads()
        );
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn conversions(dir: &Path) {
    let out = tempfile::tempdir().unwrap();
    for c in [
        Conversion::F16,
        Conversion::Bf16,
        Conversion::Q8_0,
        Conversion::Q4_0,
    ] {
        let dst = out.path().join(c.file_name());
        let started = Instant::now();
        convert::convert(&dir.join("model.safetensors"), c, &dst, &[]).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let size = std::fs::metadata(&dst).unwrap().len();
        println!(
            "convert {}: {:.2} s, {:.1} MB",
            c.name(),
            secs,
            size as f64 / 1e6
        );
    }
}

fn generation(root: &Path) {
    let path = root.join(SMOLLM).join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let started = Instant::now();
    let g = harmonia_worker::models::llama::Generator::load(&path, &Device::Cpu).unwrap();
    println!(
        "load SmolLM2-135M Q4_1 GGUF: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let out = g
        .generate("Write a haiku about job queues.", true, 64, 0.0, 0, &|| {
            false
        })
        .unwrap()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "generate (greedy, prompt {} tokens): {:.1} tokens/s ({} tokens in {secs:.2} s)",
        out.prompt_tokens,
        out.completion_tokens as f64 / secs,
        out.completion_tokens
    );
}

#[allow(unsafe_code)]
fn main() {
    // SAFETY: no other thread exists yet. As the worker does (see the function).
    unsafe { harmonia_worker::models::fix_cpu_threads() };
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let root = env_path("HARMONIA_HUB_ROOT");
    let minilm = root.join(MINILM);
    let sentences: Vec<String> = std::fs::read_to_string(env_path("BENCH_SENTENCES"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    if wanted("sha256") {
        sha256_gbps();
    }
    if wanted("downloads") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(downloads(&std::env::var("HARMONIA_HUB_ENDPOINT").unwrap()));
    }
    if wanted("embeddings") {
        embeddings(&minilm, &sentences, Duration::from_secs(secs));
    }
    if wanted("conversions") {
        conversions(&minilm);
    }
    if wanted("generation") {
        generation(&root);
    }
}

/// Whether BENCH_ONLY (when set) names `section`.
fn wanted(section: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|s| s.trim() == section))
}
