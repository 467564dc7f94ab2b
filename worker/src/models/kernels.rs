//! CPU kernels for the BERT encoder ([`super::encoder`]), where candle's general-purpose ops
//! spent the embedding benchmark's time: GELU, whose libm `erf` is scalar (9.5 % of the samples),
//! and attention, which candle runs as transposed copies, one small matmul per sentence and
//! head, and a softmax in five passes. Both run here on f32 CPU tensors, compiled for the widest
//! vectors the CPU has (AVX-512, AVX2; chosen at run time by pulp, as gemm does); other devices
//! and dtypes take candle's ops, which give the same results.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

/// GELU as BERT defines it, `x/2 · (1 + erf(x/√2))`.
pub fn gelu_erf(xs: &Tensor) -> candle_core::Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.apply_op1_no_bwd(&GeluErf)
    } else {
        xs.gelu_erf()
    }
}

/// Self-attention of one layer from its fused projection. `qkv` is `(batch, seq, 3·hidden)`:
/// each token's queries (already scaled by 1/√d), keys and values side by side, each `heads`
/// blocks of `d`. `lens[b]` counts the real tokens of sentence `b`, which come first. Returns
/// `(batch, seq, hidden)`: per head, `softmax(q·kᵀ)·v` over the real tokens. Rows of padding
/// are zero on the CPU (candle's path computes them): nothing downstream reads them, since keys
/// stop at the real tokens and the pooling masks them.
pub fn attention(qkv: &Tensor, lens: &[usize], heads: usize) -> candle_core::Result<Tensor> {
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        qkv.apply_op1_no_bwd(&Attention {
            lens: lens.to_vec(),
            heads,
        })
    } else {
        attention_ops(qkv, lens, heads)
    }
}

/// [`attention`] in candle's ops, on any device: the same arithmetic as candle-transformers'
/// BERT, with the mask built from `lens` (0 for a real key, -∞ for padding).
fn attention_ops(qkv: &Tensor, lens: &[usize], heads: usize) -> candle_core::Result<Tensor> {
    let (batch, seq, three_h) = qkv.dims3()?;
    let (hidden, d) = (three_h / 3, three_h / 3 / heads);
    let qkv = qkv
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
        .reshape((batch, seq, hidden))
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

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf-f32"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        const CHUNK: usize = 16 * 1024;
        let xs = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; xs.len()];
        let arch = pulp::Arch::new();
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(out, xs)| arch.dispatch(|| gelu_slice(xs, out)));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Compiled inside pulp's dispatch with the CPU's widest vectors (AVX-512, AVX2) enabled.
#[inline(always)]
fn gelu_slice(xs: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
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

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "bert-attention-f32"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let (batch, seq, three_h) = layout.shape().dims3()?;
        let hidden = three_h / 3;
        if three_h % 3 != 0 || hidden % self.heads != 0 || self.lens.len() != batch {
            bail!(
                "{}: bad shape {:?} for {} heads",
                self.name(),
                layout.shape(),
                self.heads
            )
        }
        let mut out = vec![0f32; batch * seq * hidden];
        let arch = pulp::Arch::new();
        // One task per sentence: each writes only its own rows.
        out.par_chunks_mut(seq * hidden)
            .zip(qkv.par_chunks(seq * three_h))
            .zip(&self.lens)
            .for_each(|((out, qkv), &n)| {
                arch.dispatch(|| attend(qkv, out, n.min(seq), hidden, self.heads))
            });
        Ok((CpuStorage::F32(out), Shape::from((batch, seq, hidden))))
    }
}

/// One sentence: `qkv` is its `seq × 3·hidden` rows, `out` its `seq × hidden` rows, `n` the
/// real tokens. Softmax as candle's: subtract the row's maximum, exponentiate, divide by the sum.
#[inline(always)]
fn attend(qkv: &[f32], out: &mut [f32], n: usize, hidden: usize, heads: usize) {
    let three_h = 3 * hidden;
    let d = hidden / heads;
    let mut scores = vec![0f32; n];
    for head in 0..heads {
        let (q0, k0, v0) = (head * d, hidden + head * d, 2 * hidden + head * d);
        for i in 0..n {
            let q = &qkv[i * three_h + q0..][..d];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(q, &qkv[j * three_h + k0..][..d]);
                max = max.max(*s);
            }
            let mut sum = 0.0;
            for s in &mut scores {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[i * hidden + q0..][..d];
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
pub(crate) mod tests {
    use candle_core::{Device, IndexOp, Tensor};

    use super::*;

    /// The largest difference between `a` and `b` over the first `n` tokens of `sentence`.
    pub(crate) fn largest_difference(a: &Tensor, b: &Tensor, sentence: usize, n: usize) -> f32 {
        let diff = (a.i((sentence, ..n)).unwrap() - b.i((sentence, ..n)).unwrap()).unwrap();
        diff.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    }

    #[test]
    fn gelu_agrees_with_candles_exact_gelu_over_the_whole_range() {
        let xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 / 1_000.0).collect();
        let xs = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let ours = gelu_erf(&xs).unwrap().to_vec1::<f32>().unwrap();
        let theirs = xs.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let xs = xs.to_vec1::<f32>().unwrap();
        for ((x, a), b) in xs.iter().zip(&ours).zip(&theirs) {
            // Within 1e-6 of the exact value, measured (f64 erf as the truth): as close as
            // PyTorch's own f32 GELU comes over the same range (1.0e-6 off at -3.389).
            let tolerance = 1.5e-6 * x.abs().max(1.0);
            assert!((a - b).abs() <= tolerance, "gelu({x}): {a} against {b}");
        }
    }

    #[test]
    fn fused_attention_agrees_with_candles_ops_on_every_real_token() {
        let (batch, seq, heads, d) = (3, 7, 4, 8);
        let hidden = heads * d;
        let lens = [7, 3, 1];
        let qkv = Tensor::randn(0f32, 1.0, (batch, seq, 3 * hidden), &Device::Cpu).unwrap();
        let fused = attention(&qkv, &lens, heads).unwrap();
        let ops = attention_ops(&qkv, &lens, heads).unwrap();
        assert_eq!(fused.dims(), &[batch, seq, hidden]);
        for (b, &n) in lens.iter().enumerate() {
            let diff = largest_difference(&fused, &ops, b, n);
            assert!(diff < 1e-5, "sentence {b}: differs by {diff}");
            let padding = fused.i((b, n..)).unwrap().abs().unwrap().sum_all().unwrap();
            assert_eq!(padding.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn fused_attention_refuses_a_shape_that_does_not_fit_its_heads() {
        let qkv = Tensor::zeros((2, 5, 3 * 30), DType::F32, &Device::Cpu).unwrap();
        let err = attention(&qkv, &[5, 5], 4).unwrap_err().to_string();
        assert!(err.contains("for 4 heads"), "{err}");
        let err = attention(&qkv, &[5], 3).unwrap_err().to_string();
        assert!(err.contains("bad shape"), "{err}");
    }
}
