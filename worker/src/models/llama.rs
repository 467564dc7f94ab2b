//! Text generation with a quantized llama-family GGUF model (SmolLM2 and friends); the
//! tokenizer is rebuilt from the GGUF's own vocabulary.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::Tokenizer;

use super::ModelError;

/// A loaded GGUF model. The weights are shared; each generation needs its own KV cache, so
/// `generate` clones the (cheap, reference-counted) weights.
pub struct Generator {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    device: Device,
    pub file_bytes: u64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// One completion.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: &'static str,
}

impl Generator {
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let file_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let content = gguf_file::Content::read(&mut file)?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let mut eos = Vec::new();
        if let Some(id) = content
            .metadata
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok())
        {
            eos.push(id);
        }
        for name in ["<|im_end|>", "<|endoftext|>", "</s>"] {
            if let Some(id) = tokenizer.token_to_id(name) {
                eos.push(id);
            }
        }
        let weights = ModelWeights::from_gguf(content, &mut file, device)?;
        Ok(Self {
            weights,
            tokenizer,
            eos,
            device: device.clone(),
            file_bytes,
        })
    }

    /// Generates up to `max_tokens` after `prompt` (applied as a chat turn when `chat`).
    /// Deterministic (greedy) when `temperature` is 0; otherwise seeded sampling.
    pub fn generate(
        &self,
        prompt: &str,
        chat: bool,
        max_tokens: usize,
        temperature: f64,
        seed: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Generation>, ModelError> {
        let text = if chat {
            format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
        } else {
            prompt.to_owned()
        };
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Format(format!("tokenizing: {e}")))?;
        let prompt_ids = encoding.get_ids().to_vec();
        let mut model = self.weights.clone();
        let sampling = if temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            Sampling::All { temperature }
        };
        let mut sampler = LogitsProcessor::from_sampling(seed, sampling);
        let mut out: Vec<u32> = Vec::with_capacity(max_tokens);
        let mut finish = "length";
        let mut input = Tensor::new(prompt_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let mut pos = 0;
        for _ in 0..max_tokens {
            if cancelled() {
                return Ok(None);
            }
            let logits = model.forward(&input, pos)?.squeeze(0)?;
            pos += input.dim(1)?;
            let next = sampler.sample(&logits)?;
            if self.eos.contains(&next) {
                finish = "stop";
                break;
            }
            out.push(next);
            input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
        }
        let text = self
            .tokenizer
            .decode(&out, true)
            .map_err(|e| ModelError::Format(format!("decoding: {e}")))?;
        Ok(Some(Generation {
            text,
            prompt_tokens: prompt_ids.len(),
            completion_tokens: out.len(),
            finish_reason: finish,
        }))
    }
}
