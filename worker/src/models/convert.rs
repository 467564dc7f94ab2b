//! Weight conversions: safetensors dtype casts (f16, bf16), PyTorch pickle to safetensors, and
//! GGUF quantization (q8_0, q4_0). Each writes one file; validation reloads it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::ModelError;
use super::bert::read_weights;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    F16,
    Bf16,
    /// PyTorch `.bin` (pickle) to safetensors, dtypes unchanged.
    Safetensors,
    Q8_0,
    Q4_0,
}

impl Conversion {
    pub const NAMES: &[&str] = &["f16", "bf16", "safetensors", "q8_0", "q4_0"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "f16" => Self::F16,
            "bf16" => Self::Bf16,
            "safetensors" => Self::Safetensors,
            "q8_0" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Safetensors => "safetensors",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }

    /// The output file's name.
    pub fn file_name(self) -> String {
        match self {
            Self::F16 | Self::Bf16 => format!("model.{}.safetensors", self.name()),
            Self::Safetensors => "model.safetensors".to_owned(),
            Self::Q8_0 | Self::Q4_0 => format!("model.{}.gguf", self.name()),
        }
    }

    pub fn format(self) -> &'static str {
        match self {
            Self::Q8_0 | Self::Q4_0 => "gguf",
            _ => "safetensors",
        }
    }

    /// The least cosine similarity the converted model's embeddings must keep with the
    /// source's on the validation sentences.
    pub fn min_cosine(self) -> f32 {
        match self {
            Self::Safetensors => 0.999_99,
            Self::F16 => 0.999_9,
            Self::Bf16 | Self::Q8_0 => 0.999,
            Self::Q4_0 => 0.98,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone)]
pub struct Converted {
    pub tensors: usize,
    /// Tensors left in f32 (GGUF: shapes whose rows are not whole quantization blocks).
    pub kept_f32: usize,
}

/// Converts `src` into `out` (blocking).
pub fn convert(
    src: &Path,
    conversion: Conversion,
    out: &Path,
    metadata: &[(&str, String)],
) -> Result<Converted, ModelError> {
    let tensors = read_weights(src, &Device::Cpu)?;
    let count = tensors.len();
    let tmp = out.with_extension("incomplete");
    let kept_f32 = match conversion {
        Conversion::F16 | Conversion::Bf16 | Conversion::Safetensors => {
            let target = match conversion {
                Conversion::F16 => Some(DType::F16),
                Conversion::Bf16 => Some(DType::BF16),
                _ => None,
            };
            let cast: HashMap<String, Tensor> = tensors
                .into_iter()
                .map(|(name, t)| {
                    let t = match target {
                        Some(d) if t.dtype().is_float() => t.to_dtype(d)?,
                        _ => t,
                    };
                    Ok((name, t))
                })
                .collect::<Result<_, candle_core::Error>>()?;
            candle_core::safetensors::save(&cast, &tmp)?;
            0
        }
        Conversion::Q8_0 | Conversion::Q4_0 => {
            let dtype = if conversion == Conversion::Q8_0 {
                GgmlDType::Q8_0
            } else {
                GgmlDType::Q4_0
            };
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            let mut kept = 0;
            let mut q = Vec::with_capacity(names.len());
            for name in names {
                let t = &tensors[name];
                let quantizable = t.rank() >= 2
                    && t.dims().last().is_some_and(|d| d % dtype.block_size() == 0)
                    && t.dtype().is_float();
                let target = if quantizable { dtype } else { GgmlDType::F32 };
                kept += usize::from(!quantizable);
                q.push((
                    name.as_str(),
                    QTensor::quantize(&t.to_dtype(DType::F32)?, target)?,
                ));
            }
            let values: Vec<(&str, gguf_file::Value)> = metadata
                .iter()
                .map(|(k, v)| (*k, gguf_file::Value::String(v.clone())))
                .collect();
            let meta: Vec<(&str, &gguf_file::Value)> =
                values.iter().map(|(k, v)| (*k, v)).collect();
            let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
            let mut file =
                std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?);
            gguf_file::write(&mut file, &meta, &refs)?;
            use std::io::Write;
            file.flush().map_err(|e| io_err(&tmp, e))?;
            kept
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
    Ok(Converted {
        tensors: count,
        kept_f32,
    })
}

/// Reads converted weights back as f32 tensors (GGUF tensors are dequantized).
pub fn reload(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return read_weights(path, &Device::Cpu);
    }
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut out = HashMap::new();
    for name in content.tensor_infos.keys() {
        let q = content.tensor(&mut file, name, &Device::Cpu)?;
        out.insert(name.clone(), q.dequantize(&Device::Cpu)?);
    }
    Ok(out)
}

fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Format(format!("{}: {e}", path.display()))
}
