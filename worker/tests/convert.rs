//! Conversions on a small real PyTorch checkpoint (`tests/fixtures/tiny_pytorch_model.bin`,
//! written by `torch.save` of a state dict: 3 float tensors and an int64 one, seed 0).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;

use candle_core::{DType, Device};
use harmonia_worker::models::bert::read_weights;
use harmonia_worker::models::convert::{Conversion, convert, reload};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_pytorch_model.bin")
}

fn sum(t: &candle_core::Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn a_pickle_becomes_safetensors_with_every_tensor_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let report = convert(&fixture(), Conversion::Safetensors, &out, &[]).unwrap();
    assert_eq!(report.tensors, 4);
    let source = read_weights(&fixture(), &Device::Cpu).unwrap();
    let converted = read_weights(&out, &Device::Cpu).unwrap();
    assert_eq!(converted.len(), 4);
    for (name, t) in &source {
        let c = &converted[name];
        assert_eq!((c.dims(), c.dtype()), (t.dims(), t.dtype()), "{name}");
        let diff = (t.to_dtype(DType::F64).unwrap() - c.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert_eq!(sum(&diff), 0.0, "{name}");
    }
    // The values torch.save wrote (sums printed by PyTorch when the fixture was made).
    assert!((sum(&converted["embeddings.weight"]) - 6.590_077_4).abs() < 1e-4);
    assert!((sum(&converted["layer.0.dense.weight"]) - 34.967_628).abs() < 1e-4);
    assert_eq!(converted["position_ids"].dtype(), DType::I64);
    assert_eq!(sum(&converted["position_ids"]), 28.0);
}

#[test]
fn casts_and_quantizations_keep_their_values_within_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let source = read_weights(&fixture(), &Device::Cpu).unwrap();
    let w = source["layer.0.dense.weight"].to_dtype(DType::F64).unwrap();
    let norm = sum(&w.sqr().unwrap()).sqrt();
    for (conversion, dtype, tolerance) in [
        (Conversion::F16, DType::F16, 1e-3),
        (Conversion::Bf16, DType::BF16, 1e-2),
        (Conversion::Q8_0, DType::F32, 1e-2),
        (Conversion::Q4_0, DType::F32, 0.15),
    ] {
        let out = dir.path().join(conversion.file_name());
        let report = convert(
            &fixture(),
            conversion,
            &out,
            &[("general.name", "tiny".into())],
        )
        .unwrap();
        let back = reload(&out).unwrap();
        let c = &back["layer.0.dense.weight"];
        if conversion.format() == "safetensors" {
            let stored = read_weights(&out, &Device::Cpu).unwrap();
            assert_eq!(stored["layer.0.dense.weight"].dtype(), dtype);
            assert_eq!(
                stored["position_ids"].dtype(),
                DType::I64,
                "integers are not cast"
            );
        } else {
            // The 1-D bias and the int ids do not fill quantization blocks: kept as f32.
            assert_eq!(report.kept_f32, 2, "{conversion:?}");
        }
        let err = (c.to_dtype(DType::F64).unwrap() - &w).unwrap();
        let relative = sum(&err.sqr().unwrap()).sqrt() / norm;
        assert!(
            relative < tolerance,
            "{conversion:?}: relative error {relative}"
        );
    }
}
