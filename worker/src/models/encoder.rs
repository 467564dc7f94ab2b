//! A BERT encoder (all-MiniLM and friends) for sentence embeddings: the weights and arithmetic
//! of candle-transformers' `BertModel` (Hugging Face's `BertModel` with absolute positions),
//! arranged for speed on the CPU. Each layer projects queries, keys and values in one matmul
//! (their weights stacked at load, the queries' pre-scaled by 1/√d), attends in one fused kernel
//! over real tokens only, applies GELU with a vectorised erf, and ends each sub-layer with the
//! bias, the residual and the layer norm in one pass ([`harmonia_kernels`]); the matmuls run
//! without their biases, which those kernels add.

use candle_core::{IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};

use super::ModelError;
use harmonia_kernels as kernels;

pub struct Encoder {
    words: Embedding,
    /// Position embeddings plus the embedding of token type 0 (every token here has type 0).
    positions: Tensor,
    norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
}

struct Layer {
    /// `(3·hidden, hidden)`: the query, key and value projections stacked.
    qkv: Dense,
    attention_out: DenseNorm,
    intermediate: Dense,
    act: HiddenAct,
    out: DenseNorm,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("layers", &self.layers.len())
            .field("heads", &self.heads)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Reads the weights under the names Hugging Face's BERT checkpoints use, with or without
    /// a `bert.` (or `<model_type>.`) prefix.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self, ModelError> {
        let prefix = ["bert", config.model_type.as_deref().unwrap_or("bert")]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}.embeddings.word_embeddings.weight")));
        let vb = match prefix {
            Some(p) => vb.pp(p),
            None => vb,
        };
        let (h, emb) = (config.hidden_size, vb.pp("embeddings"));
        let words = candle_nn::embedding(config.vocab_size, h, emb.pp("word_embeddings"))?;
        let positions = emb
            .get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?
            .broadcast_add(
                &emb.get((config.type_vocab_size, h), "token_type_embeddings.weight")?
                    .i(0)?,
            )?;
        let norm = candle_nn::layer_norm(h, config.layer_norm_eps, emb.pp("LayerNorm"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            words,
            positions,
            norm,
            layers,
            heads: config.num_attention_heads,
        })
    }

    /// `ids` holds the sentences' tokens one after another, no padding, `lens[b]` of sentence
    /// `b`; returns the last layer's states, `(tokens, hidden)`, in the same order. Packed so,
    /// every matmul runs over real tokens only (batches padded to their longest sentence
    /// carried 13 % padding on the benchmark's sentences).
    pub fn forward(&self, ids: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        let (tokens, sum) = (ids.dims1()?, lens.iter().sum::<usize>());
        if sum != tokens {
            candle_core::bail!(
                "encoder: {tokens} tokens, but the sentences' lengths {lens:?} sum to {sum}"
            )
        }
        let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        let positions = Tensor::from_vec(positions, tokens, ids.device())?;
        let x = (self.words.forward(ids)? + self.positions.index_select(&positions, 0)?)?;
        let mut x = self.norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, lens, self.heads)?;
        }
        Ok(x)
    }
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> Result<Self, ModelError> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps;
        let att = vb.pp("attention");
        let scale = 1.0 / ((h / config.num_attention_heads) as f64).sqrt();
        let part = |name: &str, scale: f64| -> candle_core::Result<(Tensor, Tensor)> {
            let vb = att.pp("self").pp(name);
            Ok((
                (vb.get((h, h), "weight")? * scale)?,
                (vb.get(h, "bias")? * scale)?,
            ))
        };
        let (q, k, v) = (
            part("query", scale)?,
            part("key", 1.0)?,
            part("value", 1.0)?,
        );
        let qkv = Dense::new(
            &Tensor::cat(&[&q.0, &k.0, &v.0], 0)?,
            Tensor::cat(&[&q.1, &k.1, &v.1], 0)?,
        )?;
        Ok(Self {
            qkv,
            attention_out: DenseNorm::load(h, h, att.pp("output"), eps)?,
            intermediate: Dense::load(h, i, vb.pp("intermediate.dense"))?,
            act: config.hidden_act,
            out: DenseNorm::load(i, h, vb.pp("output"), eps)?,
        })
    }

    fn forward(&self, x: &Tensor, lens: &[usize], heads: usize) -> candle_core::Result<Tensor> {
        let qkv = self.qkv.matmul(x)?;
        let context = kernels::attention(&qkv, &self.qkv.bias, lens, heads)?;
        let x = self.attention_out.forward(&context, x)?;
        let (inner, bias) = (self.intermediate.matmul(&x)?, &self.intermediate.bias);
        let inner = match self.act {
            HiddenAct::Gelu => kernels::bias_gelu_erf(&inner, bias)?,
            HiddenAct::GeluApproximate => inner.broadcast_add(bias)?.gelu()?,
            HiddenAct::Relu => inner.broadcast_add(bias)?.relu()?,
        };
        self.out.forward(&inner, &x)
    }
}

/// A dense layer whose weight is held transposed, `(in, out)` and contiguous, so each matmul
/// reads it row by row (a checkpoint stores `(out, in)`; `candle_nn::Linear` multiplies by its
/// transposed view).
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self {
            weight: weight.t()?.contiguous()?,
            bias,
        })
    }

    fn load(inputs: usize, outputs: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::new(
            &vb.get((outputs, inputs), "weight")?,
            vb.get(outputs, "bias")?,
        )
    }

    /// `(tokens, in) -> (tokens, out)`, without the bias: the kernel that reads the result
    /// adds it.
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)
    }
}

/// The end of a sub-layer, `LayerNorm(x·W + b + residual)`: a [`Dense`] whose bias travels with
/// the norm's parameters into [`kernels::add_norm`].
struct DenseNorm {
    /// `(in, out)`, as [`Dense`]'s; its bias is the first row of `params`.
    weight: Tensor,
    /// `(3, out)`: the dense layer's bias, the norm's weight, the norm's bias.
    params: Tensor,
    eps: f32,
}

impl DenseNorm {
    /// `vb` holds `dense.{weight,bias}` and `LayerNorm.{weight,bias}`.
    fn load(inputs: usize, outputs: usize, vb: VarBuilder, eps: f64) -> candle_core::Result<Self> {
        let Dense { weight, bias } = Dense::load(inputs, outputs, vb.pp("dense"))?;
        let norm = vb.pp("LayerNorm");
        let params = Tensor::stack(
            &[
                &bias,
                &norm.get(outputs, "weight")?,
                &norm.get(outputs, "bias")?,
            ],
            0,
        )?;
        Ok(Self {
            weight,
            params,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        kernels::add_norm(&x.matmul(&self.weight)?, residual, &self.params, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, IndexOp, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};

    use super::Encoder;

    /// A small BERT with random weights, under the names of a checkpoint with a `bert.` prefix.
    fn random_bert(config: &Config) -> HashMap<String, Tensor> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![config.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![config.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![config.type_vocab_size, h],
            ),
        ];
        let norm = |p: &str| {
            [
                (format!("{p}.LayerNorm.weight"), vec![h]),
                (format!("{p}.LayerNorm.bias"), vec![h]),
            ]
        };
        shapes.extend(norm("embeddings"));
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{p}.{name}.bias"), vec![out]));
            }
            shapes.extend(norm(&format!("{p}.attention.output")));
            shapes.extend(norm(&format!("{p}.output")));
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap();
                (format!("bert.{name}"), t)
            })
            .collect()
    }

    fn tiny_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "max_position_embeddings": 16, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        }))
        .unwrap()
    }

    #[test]
    fn the_encoder_gives_candles_bert_states_for_every_real_token() {
        let config = tiny_config();
        let tensors = random_bert(&config);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        // Ours finds the `bert.` prefix itself; candle's is given it.
        let ours = Encoder::load(vb.clone(), &config).unwrap();
        let theirs = BertModel::load(vb.pp("bert"), &config).unwrap();

        let lens = [9usize, 4, 2];
        let seq = 9;
        let id = |b: usize, j: usize| (b * 7 + j * 3) as u32 % 50;
        let (mut padded, mut mask, mut packed) = (vec![], vec![], vec![]);
        for (b, &n) in lens.iter().enumerate() {
            padded.extend((0..seq).map(|j| if j < n { id(b, j) } else { 0 }));
            mask.extend((0..seq).map(|j| u32::from(j < n)));
            packed.extend((0..n).map(|j| id(b, j)));
        }
        let padded = Tensor::from_vec(padded, (3, seq), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (3, seq), &Device::Cpu).unwrap();
        let packed = Tensor::new(packed.as_slice(), &Device::Cpu).unwrap();
        let a = ours.forward(&packed, &lens).unwrap();
        let b = theirs
            .forward(&padded, &padded.zeros_like().unwrap(), Some(&mask))
            .unwrap();
        let mut start = 0;
        for (s, &n) in lens.iter().enumerate() {
            let ours = a.narrow(0, start, n).unwrap();
            let diff = (&ours - &b.i((s, ..n)).unwrap()).unwrap().abs().unwrap();
            let diff: f32 = diff.max_all().unwrap().to_scalar().unwrap();
            assert!(diff < 1e-4, "sentence {s}: the states differ by {diff}");
            start += n;
        }
    }

    #[test]
    fn the_encoder_refuses_lengths_that_do_not_cover_its_tokens() {
        let config = tiny_config();
        let vb = VarBuilder::from_tensors(random_bert(&config), DType::F32, &Device::Cpu);
        let ours = Encoder::load(vb, &config).unwrap();
        let ids = Tensor::new(&[1u32, 2, 3, 4], &Device::Cpu).unwrap();
        let err = ours.forward(&ids, &[2, 1]).unwrap_err().to_string();
        assert!(
            err.contains("4 tokens, but the sentences' lengths [2, 1] sum to 3"),
            "{err}"
        );
    }
}
