//! CPU kernels for the worker's BERT encoder (`harmonia_worker::models::encoder`), where candle's general-purpose ops
//! spent the embedding benchmark's time: GELU, whose libm `erf` is scalar (9.5 % of the samples),
//! attention, which candle runs as transposed copies, one small matmul per sentence and head,
//! and a softmax in five passes, and the passes around the matmuls (a bias add, a residual add
//! and a layer norm, each reading and writing the whole activation). Each kernel takes the bias
//! of the matmul before it, so the matmuls run without one. All run here on f32 CPU tensors,
//! compiled for the widest vectors the CPU has (AVX-512, AVX2; chosen at run time by pulp, as
//! gemm does); other devices and dtypes take candle's ops, which give the same results.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

/// GELU as BERT defines it, `x/2 · (1 + erf(x/√2))`, of `xs + bias` (`bias` along the last
/// dimension).
pub fn bias_gelu_erf(xs: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if is_cpu_f32(xs) {
        xs.apply_op2_no_bwd(bias, &BiasGeluErf)
    } else {
        xs.broadcast_add(bias)?.gelu_erf()
    }
}

/// `LayerNorm(xs + bias + residual)` over the last dimension, in one pass over each row:
/// the end of a transformer sub-layer. `params` is `(3, hidden)`: the bias of the matmul that
/// gave `xs`, then the norm's weight and bias.
pub fn add_norm(
    xs: &Tensor,
    residual: &Tensor,
    params: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    if is_cpu_f32(xs) {
        xs.apply_op3_no_bwd(residual, params, &AddNorm { eps })
    } else {
        add_norm_ops(xs, residual, params, eps)
    }
}

/// [`add_norm`] in candle's ops, on any device.
fn add_norm_ops(
    xs: &Tensor,
    residual: &Tensor,
    params: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let x = (xs.broadcast_add(&params.get(0)?)? + residual)?;
    candle_nn::ops::layer_norm(&x, &params.get(1)?, &params.get(2)?, eps)
}

fn is_cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Self-attention of one layer from its fused projection, over sentences packed one after
/// another. `qkv + bias` is `(tokens, 3·hidden)`: each token's queries (already scaled by 1/√d),
/// keys and values side by side, each `heads` blocks of `d`; `lens[b]` counts the tokens of
/// sentence `b`. Returns `(tokens, hidden)`: per sentence and head, `softmax(q·kᵀ)·v`.
pub fn attention(
    qkv: &Tensor,
    bias: &Tensor,
    lens: &[usize],
    heads: usize,
) -> candle_core::Result<Tensor> {
    if is_cpu_f32(qkv) {
        qkv.apply_op2_no_bwd(
            bias,
            &Attention {
                lens: lens.to_vec(),
                heads,
            },
        )
    } else {
        attention_ops(&qkv.broadcast_add(bias)?, lens, heads)
    }
}

/// [`attention`] in candle's ops, on any device, its bias already added: the sentences padded
/// to the longest (one gather), then the same arithmetic as candle-transformers' BERT with the
/// mask built from `lens` (0 for a real key, -∞ for padding), then the real rows gathered back.
fn attention_ops(qkv: &Tensor, lens: &[usize], heads: usize) -> candle_core::Result<Tensor> {
    let (tokens, three_h) = qkv.dims2()?;
    let (batch, seq) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
    let (hidden, d) = (three_h / 3, three_h / 3 / heads);
    let (mut padded, mut real, mut start) = (Vec::new(), Vec::new(), 0u32);
    for (b, &n) in lens.iter().enumerate() {
        // A padding slot repeats the sentence's first token; the mask hides it.
        padded.extend((0..seq as u32).map(|j| start + if j < n as u32 { j } else { 0 }));
        real.extend((0..n as u32).map(|j| (b * seq) as u32 + j));
        start += n as u32;
    }
    if start as usize != tokens {
        bail!("attention: {tokens} tokens, but the sentences' lengths sum to {start}")
    }
    let padded = Tensor::new(padded.as_slice(), qkv.device())?;
    let qkv = qkv
        .index_select(&padded, 0)?
        .reshape((batch, seq, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?; // (3, batch, heads, seq, d)
    let (q, k, v) = (
        qkv.get(0)?.contiguous()?,
        qkv.get(1)?.contiguous()?,
        qkv.get(2)?.contiguous()?,
    );
    let mask: Vec<f32> = lens
        .iter()
        .flat_map(|&n| (0..seq).map(move |j| if j < n { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::from_vec(mask, (batch, 1, 1, seq), qkv.device())?.to_dtype(qkv.dtype())?;
    let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((batch * seq, hidden))?
        .index_select(&Tensor::new(real.as_slice(), qkv.device())?, 0)
}

/// The f32 slice a contiguous CPU tensor holds.
fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        bail!("{op}: f32 only, got {:?}", storage.dtype())
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: the input must be contiguous")
    };
    Ok(&all[start..end])
}

/// The width of `layout`'s rows (its last dimension), checked against a parameter of `len`
/// values per row.
fn row_width(layout: &Layout, len: usize, op: &str) -> candle_core::Result<usize> {
    match layout.shape().dims().last() {
        Some(&w) if w == len && w > 0 => Ok(w),
        _ => bail!(
            "{op}: bad shape {:?} for {len} values per row",
            layout.shape()
        ),
    }
}

/// Rows per parallel task in the row-wise kernels: enough work to amortise a task.
const ROWS: usize = 16;

/// A new `len`-long output filled by `fill(range, out)` over chunks of [`ROWS`] rows of `width`
/// in parallel (`range`: the chunk's place in the output, and in inputs of the same shape),
/// each compiled with the CPU's widest vectors.
fn by_rows(
    len: usize,
    width: usize,
    fill: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; len];
    let arch = pulp::Arch::new();
    out.par_chunks_mut(ROWS * width)
        .enumerate()
        .for_each(|(i, out)| {
            let start = i * ROWS * width;
            arch.dispatch(|| fill(start..start + out.len(), out));
        });
    out
}

struct BiasGeluErf;

impl CustomOp2 for BiasGeluErf {
    fn name(&self) -> &'static str {
        "bias-gelu-erf-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(s1, l1, self.name())?;
        let bias = contiguous_f32(s2, l2, self.name())?;
        let width = row_width(l1, bias.len(), self.name())?;
        let out = by_rows(xs.len(), width, |rows, out| {
            bias_gelu_rows(&xs[rows], bias, out);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Inlined into [`by_rows`]'s dispatch, compiled there with the CPU's widest vectors.
#[inline(always)]
fn bias_gelu_rows(xs: &[f32], bias: &[f32], out: &mut [f32]) {
    for (out, xs) in out
        .chunks_exact_mut(bias.len())
        .zip(xs.chunks_exact(bias.len()))
    {
        for ((o, &x), &b) in out.iter_mut().zip(xs).zip(bias) {
            let x = x + b;
            *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

struct AddNorm {
    eps: f32,
}

impl CustomOp3 for AddNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(s1, l1, self.name())?;
        let residual = contiguous_f32(s2, l2, self.name())?;
        let params = contiguous_f32(s3, l3, self.name())?;
        let width = row_width(l1, params.len() / 3, self.name())?;
        if l2.shape() != l1.shape() || l3.shape().dims() != [3, width] {
            bail!(
                "{}: bad shapes {:?}, {:?}, {:?}",
                self.name(),
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let out = by_rows(xs.len(), width, |rows, out| {
            add_norm_rows(&xs[rows.clone()], &residual[rows], params, self.eps, out);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `params` holds the bias, the norm's weight and its bias, each a row wide. The variance is
/// taken around the mean (two passes over the row, which stays in cache), as PyTorch's.
#[inline(always)]
fn add_norm_rows(xs: &[f32], residual: &[f32], params: &[f32], eps: f32, out: &mut [f32]) {
    let width = params.len() / 3;
    let (bias, rest) = params.split_at(width);
    let (weight, shift) = rest.split_at(width);
    let rows = out.chunks_exact_mut(width).zip(xs.chunks_exact(width));
    for ((out, xs), residual) in rows.zip(residual.chunks_exact(width)) {
        for (((o, &x), &r), &b) in out.iter_mut().zip(xs).zip(residual).zip(bias) {
            *o = x + r + b;
        }
        let mean = lane_sum(out, |v| v) / width as f32;
        let var = lane_sum(out, |v| (v - mean) * (v - mean)) / width as f32;
        let inv_std = (var + eps).sqrt().recip();
        for ((o, &w), &s) in out.iter_mut().zip(weight).zip(shift) {
            *o = (*o - mean) * inv_std * w + s;
        }
    }
}

/// `Σ f(x)` in sixteen running sums, so that it vectorises (one sum would be a chain).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for k in 0..16 {
            acc[k] += f(c[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// erf in f32 as a rational function, `x·P(x²)/Q(x²)` on [-4, 4] (beyond it erf rounds to ±1
/// in f32): the approximation Eigen and XLA use. Only multiplications, additions and one
/// division, so the loop above vectorises where libm's `erff` is a call per element.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ALPHA[1..].iter().fold(ALPHA[0], |p, &a| p * x2 + a);
    let q = BETA[1..].iter().fold(BETA[0], |q, &b| q * x2 + b);
    x * p / q
}

struct Attention {
    lens: Vec<usize>,
    heads: usize,
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "bert-attention-f32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(s1, l1, self.name())?;
        let bias = contiguous_f32(s2, l2, self.name())?;
        let (tokens, three_h) = l1.shape().dims2()?;
        let hidden = three_h / 3;
        if three_h % 3 != 0
            || hidden % self.heads != 0
            || self.lens.iter().sum::<usize>() != tokens
            || bias.len() != three_h
        {
            bail!(
                "{}: bad shape {:?} for {} heads and sentences of {:?} tokens",
                self.name(),
                l1.shape(),
                self.heads,
                self.lens
            )
        }
        let mut out = vec![0f32; tokens * hidden];
        // One task per sentence, each with its own rows of `qkv` and of `out`.
        let mut sentences = Vec::with_capacity(self.lens.len());
        let (mut qkv, mut rest) = (qkv, out.as_mut_slice());
        for &n in &self.lens {
            let (mine, others) = std::mem::take(&mut rest).split_at_mut(n * hidden);
            let (input, inputs) = qkv.split_at(n * three_h);
            sentences.push((input, mine, n));
            (qkv, rest) = (inputs, others);
        }
        let arch = pulp::Arch::new();
        sentences
            .into_par_iter()
            .for_each(|(qkv, out, n)| arch.dispatch(|| attend(qkv, bias, out, n, self.heads)));
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// One sentence: `qkv` is its `n × 3·hidden` rows, `out` its `n × hidden` rows, `bias` the
/// projection's. Softmax as candle's: subtract the row's maximum, exponentiate, divide by the
/// sum. The bias enters without a pass of its own: the queries' is added to each query as it is
/// read; the keys' adds `q·b` to every score of a row alike, which the softmax cancels, so it is
/// left out; the values' is added once to each output row, since a row's weights sum to one.
#[inline(always)]
fn attend(qkv: &[f32], bias: &[f32], out: &mut [f32], n: usize, heads: usize) {
    let three_h = bias.len();
    let hidden = three_h / 3;
    let d = hidden / heads;
    let mut scores = vec![0f32; n];
    let mut q = vec![0f32; d];
    for head in 0..heads {
        let (q0, k0, v0) = (head * d, hidden + head * d, 2 * hidden + head * d);
        let (q_bias, v_bias) = (&bias[q0..][..d], &bias[v0..][..d]);
        for i in 0..n {
            for ((q, &x), &b) in q.iter_mut().zip(&qkv[i * three_h + q0..][..d]).zip(q_bias) {
                *q = x + b;
            }
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(&q, &qkv[j * three_h + k0..][..d]);
                max = max.max(*s);
            }
            let mut sum = 0.0;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[i * hidden + q0..][..d];
            o.copy_from_slice(v_bias);
            for (j, &p) in scores.iter().enumerate() {
                let p = p / sum;
                for (o, &v) in o.iter_mut().zip(&qkv[j * three_h + v0..][..d]) {
                    *o += p * v;
                }
            }
        }
    }
}

/// A dot product in eight running sums, so that it vectorises (one sum would be a chain).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += a[k] * b[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Tensor};

    use super::*;

    /// The largest difference between two tensors of one shape.
    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap();
        diff.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn gelu_agrees_with_candles_exact_gelu_over_the_whole_range() {
        let width = 20;
        let xs: Vec<f32> = (-20_000..20_000).map(|i| i as f32 / 1_000.0).collect();
        let bias: Vec<f32> = (0..width).map(|i| (i as f32 - 10.0) * 0.01).collect();
        let xs = Tensor::from_vec(xs, (40_000 / width, width), &Device::Cpu).unwrap();
        let bias = Tensor::from_vec(bias, width, &Device::Cpu).unwrap();
        let ours = bias_gelu_erf(&xs, &bias).unwrap().flatten_all().unwrap();
        let biased = xs.broadcast_add(&bias).unwrap().flatten_all().unwrap();
        let theirs = biased.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let ours = ours.to_vec1::<f32>().unwrap();
        for ((x, a), b) in biased
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(&ours)
            .zip(&theirs)
        {
            // Within 1e-6 of the exact value, measured (f64 erf as the truth): as close as
            // PyTorch's own f32 GELU comes over the same range (1.0e-6 off at -3.389).
            let tolerance = 1.5e-6 * x.abs().max(1.0);
            assert!((a - b).abs() <= tolerance, "gelu({x}): {a} against {b}");
        }
    }

    #[test]
    fn fused_attention_agrees_with_candles_ops_on_every_sentence() {
        let (heads, d) = (4, 8);
        let hidden = heads * d;
        let lens = [7, 3, 1, 5];
        let qkv = Tensor::randn(0f32, 1.0, (16, 3 * hidden), &Device::Cpu).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3 * hidden, &Device::Cpu).unwrap();
        let fused = attention(&qkv, &bias, &lens, heads).unwrap();
        let ops = attention_ops(&qkv.broadcast_add(&bias).unwrap(), &lens, heads).unwrap();
        assert_eq!(fused.dims(), &[16, hidden]);
        let diff = largest_difference(&fused, &ops);
        assert!(diff < 1e-5, "the attentions differ by {diff}");
        // Each sentence attends to its own tokens only: a one-token sentence's output is its
        // own value (plus the values' bias), whatever the others hold.
        let value = (qkv.i((10, 2 * hidden..)).unwrap() + bias.i(2 * hidden..).unwrap()).unwrap();
        let alone = fused.i(10..11).unwrap().squeeze(0).unwrap();
        assert!(largest_difference(&alone, &value) < 1e-6);
    }

    #[test]
    fn fused_add_and_norm_agrees_with_candles_ops() {
        // Rows of 40: a width that is not a multiple of the sixteen running sums.
        let shape = (37, 40);
        let xs = Tensor::randn(1f32, 3.0, shape, &Device::Cpu).unwrap();
        let residual = Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap();
        let params = Tensor::randn(0f32, 1.0, (3, 40), &Device::Cpu).unwrap();
        let fused = add_norm(&xs, &residual, &params, 1e-12).unwrap();
        let ops = add_norm_ops(&xs, &residual, &params, 1e-12).unwrap();
        let diff = largest_difference(&fused, &ops);
        assert!(diff < 1e-5, "the norms differ by {diff}");
    }

    #[test]
    fn the_kernels_refuse_shapes_that_do_not_fit() {
        let qkv = Tensor::zeros((10, 3 * 30), DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(3 * 30, DType::F32, &Device::Cpu).unwrap();
        let err = attention(&qkv, &bias, &[5, 5], 4).unwrap_err().to_string();
        assert!(err.contains("for 4 heads"), "{err}");
        let err = attention(&qkv, &bias, &[5, 4], 3).unwrap_err().to_string();
        assert!(err.contains("sentences of [5, 4] tokens"), "{err}");

        let xs = Tensor::zeros((2, 5, 30), DType::F32, &Device::Cpu).unwrap();
        let err = bias_gelu_erf(&xs, &bias).unwrap_err().to_string();
        assert!(err.contains("for 90 values per row"), "{err}");
        let params = Tensor::zeros((3, 30), DType::F32, &Device::Cpu).unwrap();
        let shorter = Tensor::zeros((2, 4, 30), DType::F32, &Device::Cpu).unwrap();
        let err = add_norm(&xs, &shorter, &params, 1e-12);
        assert!(err.unwrap_err().to_string().contains("bad shapes"));
    }
}
