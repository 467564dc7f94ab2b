//! Sentence embeddings with a BERT-family model (all-MiniLM and friends): candle's BERT, mean
//! pooling over the attention mask, L2 normalisation, as sentence-transformers does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use super::ModelError;

/// A loaded embedding model (weights in f32: candle's BERT gives NaN in f16 on the CPU, since
/// its attention mask uses `f32::MIN`).
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    pub dim: usize,
    pub max_len: usize,
    /// Bytes of weights held, for the pool's budget.
    pub weight_bytes: u64,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.dim)
            .field("max_len", &self.max_len)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Reads a weights file (safetensors, or a PyTorch pickle) into named tensors.
pub fn read_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, ModelError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tensors = match ext {
        "safetensors" => candle_core::safetensors::load(path, device)?,
        "bin" | "pt" | "pth" => candle_core::pickle::read_all(path)?
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_device(device)?)))
            .collect::<Result<_, candle_core::Error>>()?,
        _ => {
            return Err(ModelError::Format(format!(
                "unknown weights file {}",
                path.display()
            )));
        }
    };
    Ok(tensors)
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and the weights from a snapshot directory.
    pub fn load(dir: &Path, weights: &Path, device: &Device) -> Result<Self, ModelError> {
        let config: Config = read_json(&dir.join("config.json"))?;
        let tensors = read_weights(weights, device)?;
        Self::from_tensors(dir, &config, tensors, device)
    }

    /// Builds the model from tensors already in memory (a conversion being validated).
    pub fn from_tensors(
        dir: &Path,
        config: &Config,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let weight_bytes = tensors
            .values()
            .map(|t| (t.elem_count() * DType::F32.size_in_bytes()) as u64)
            .sum();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| ModelError::Format(format!("tokenizer.json: {e}")))?;
        // sentence-transformers' limit, when the repo states one; else the model's.
        let max_len = read_json::<serde_json::Value>(&dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|v| v.get("max_seq_length")?.as_u64())
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Format(format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(None);
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            dim: config.hidden_size,
            max_len,
            weight_bytes,
        })
    }

    /// Embeds `texts` in batches of `batch_size`, in the order given. Texts are grouped by
    /// token length so each batch pads only to its own longest text. `cancelled` is checked
    /// between batches; `progress` gets the number of texts done.
    pub fn embed(
        &self,
        texts: &[String],
        batch_size: usize,
        normalize: bool,
        cancelled: &dyn Fn() -> bool,
        progress: &dyn Fn(usize),
    ) -> Result<Option<Vec<Vec<f32>>>, ModelError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut out = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for batch in order.chunks(batch_size.max(1)) {
            if cancelled() {
                return Ok(None);
            }
            let width = batch
                .iter()
                .map(|&i| encodings[i].get_ids().len())
                .max()
                .unwrap_or(0);
            let (mut ids, mut mask) = (
                Vec::with_capacity(batch.len() * width),
                Vec::with_capacity(batch.len() * width),
            );
            for &i in batch {
                let e = &encodings[i];
                let n = e.get_ids().len();
                ids.extend_from_slice(e.get_ids());
                ids.extend(std::iter::repeat_n(0, width - n));
                mask.extend(std::iter::repeat_n(1u32, n));
                mask.extend(std::iter::repeat_n(0u32, width - n));
            }
            let shape = (batch.len(), width);
            let ids = Tensor::from_vec(ids, shape, &self.device)?;
            let mask = Tensor::from_vec(mask, shape, &self.device)?;
            let types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            let pooled = mean_pool(&hidden, &mask)?;
            let pooled = if normalize {
                l2_normalize(&pooled)?
            } else {
                pooled
            };
            let rows: Vec<Vec<f32>> = pooled.to_dtype(DType::F32)?.to_vec2()?;
            for (&i, row) in batch.iter().zip(rows) {
                out[i] = row;
            }
            done += batch.len();
            progress(done);
        }
        Ok(Some(out))
    }
}

/// Mean of the token vectors that the mask keeps: `(batch, seq, dim) -> (batch, dim)`.
fn mean_pool(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    summed.broadcast_div(&counts)
}

fn l2_normalize(v: &Tensor) -> candle_core::Result<Tensor> {
    let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    v.broadcast_div(&norm)
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::Format(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::Format(format!("parsing {}: {e}", path.display())))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}
