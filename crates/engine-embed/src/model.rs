//! Reading a model folder: which encoder, its weights, and the
//! sentence-transformers pipeline around it.

use std::path::{Path, PathBuf};

use engine_mlx::{Array, WeightMap};
use serde_json::Value;

use crate::bert::{Bert, BertConfig};
use crate::error::{EmbedError, Result};
use crate::modernbert::{ModernBert, ModernBertConfig};
use crate::pooling::Pooling;

/// The encoder families this crate runs.
pub const SUPPORTED: &str = "bert (BERT, MiniLM, BGE, E5), modernbert";

/// Feed-forward activations named in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Gelu,
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub(crate) fn parse(name: &str, path: &Path) -> Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(EmbedError::UnsupportedPipeline {
                    path: path.to_path_buf(),
                    what: format!("activation `{other}`"),
                })
            }
        })
    }

    pub(crate) fn apply(self, x: &Array) -> Result<Array> {
        Ok(match self {
            Activation::Gelu => gelu(x)?,
            Activation::GeluTanh => x.gelu_approx()?,
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
        })
    }
}

/// The encoder family of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT and its derivatives (MiniLM, BGE, E5): `model_type: "bert"`.
    Bert,
    /// ModernBERT: `model_type: "modernbert"`.
    ModernBert,
}

impl Architecture {
    /// The `model_type` of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::ModernBert => "modernbert",
        }
    }
}

/// A loaded encoder network.
pub(crate) enum Encoder {
    Bert(Bert),
    ModernBert(ModernBert),
}

impl Encoder {
    pub(crate) fn forward(&self, ids: &Array, mask: Option<&Array>) -> Result<Array> {
        match self {
            Encoder::Bert(m) => m.forward(ids, mask),
            Encoder::ModernBert(m) => m.forward(ids, mask),
        }
    }

    pub(crate) fn hidden_size(&self) -> usize {
        match self {
            Encoder::Bert(m) => m.hidden_size(),
            Encoder::ModernBert(m) => m.hidden_size(),
        }
    }

    pub(crate) fn max_positions(&self) -> usize {
        match self {
            Encoder::Bert(m) => m.max_positions(),
            Encoder::ModernBert(m) => m.max_positions(),
        }
    }

    pub(crate) fn architecture(&self) -> Architecture {
        match self {
            Encoder::Bert(_) => Architecture::Bert,
            Encoder::ModernBert(_) => Architecture::ModernBert,
        }
    }
}

/// Numerator and denominator of the rational erf approximation Eigen and XLA
/// use for f32: `erf(z) ≈ z·P(z²)/Q(z²)` on [-4, 4] (|error| < 5e-7 against libm).
const ERF_NUM: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
const ERF_DEN: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329e-3,
    -1.426_474e-2,
];

/// Exact (erf) GELU of one value, `0.5·x·(1 + erf(x/√2))`.
#[inline]
fn gelu_scalar(x: f32) -> f32 {
    // Beyond ±4, erf is ±1 in f32.
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).clamp(-4.0, 4.0);
    let z2 = z * z;
    let mut p = ERF_NUM[0];
    for c in &ERF_NUM[1..] {
        p = p * z2 + c;
    }
    let mut q = ERF_DEN[0];
    for c in &ERF_DEN[1..] {
        q = q * z2 + c;
    }
    // At the clamp the approximation is 1.2e-7 short of ±1, which times a
    // large |x| would leak into the far tails; there erf is exactly ±1 in f32.
    let erf = if z >= 4.0 {
        1.0
    } else if z <= -4.0 {
        -1.0
    } else {
        z * p / q
    };
    0.5 * x * (1.0 + erf)
}

/// Exact (erf) GELU of an array.
///
/// On the CPU, MLX's `erf` is scalar code (~40 ns a value) and GELU runs on
/// the widest activation of every layer, so there the values are computed
/// here, in plain vectorisable loops across all cores (~50× faster, copies
/// included). Elsewhere MLX computes it on the device.
pub(crate) fn gelu(x: &Array) -> Result<Array> {
    if engine_mlx::default_device() != engine_mlx::Device::Cpu {
        return Ok(x.gelu()?);
    }
    let dtype = x.dtype();
    let shape = x.shape();
    let mut v = x.astype(engine_mlx::Dtype::Float32)?.to_vec::<f32>()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Below ~64k values a thread costs more than it saves.
    let chunk = v.len().div_ceil(threads).max(1 << 16);
    std::thread::scope(|s| {
        for part in v.chunks_mut(chunk) {
            s.spawn(move || part.iter_mut().for_each(|x| *x = gelu_scalar(*x)));
        }
    });
    Ok(Array::from_slice(&v, &shape)?.astype(dtype)?)
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            EmbedError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            EmbedError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|e| EmbedError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

pub(crate) fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Classifies config.json: an encoder we run, or a clear error.
pub(crate) fn architecture_of(dir: &Path, cfg: &Value) -> Result<Architecture> {
    let config_path = dir.join("config.json");
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let archs: Vec<&str> = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match model_type {
        "bert" => return Ok(Architecture::Bert),
        "modernbert" => return Ok(Architecture::ModernBert),
        "" => {
            return Err(EmbedError::BadConfig {
                path: config_path,
                reason: "it has no `model_type`".into(),
            })
        }
        _ => {}
    }
    // Decoders (causal LMs, seq2seq generators) are not encoders; other
    // encoder families are recognised by name to say "not yet" instead.
    let generative = archs
        .iter()
        .any(|a| a.ends_with("ForCausalLM") || a.ends_with("ForConditionalGeneration") || a.ends_with("LMHeadModel"));
    let encoder_like = [
        "roberta",
        "xlm-roberta",
        "nomic_bert",
        "distilbert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "new",
        "jina_bert",
        "camembert",
    ];
    if !generative && encoder_like.contains(&model_type) {
        return Err(EmbedError::UnsupportedEncoder {
            path: dir.to_path_buf(),
            model_type: model_type.to_string(),
            supported: SUPPORTED,
        });
    }
    Err(EmbedError::NotAnEncoder {
        path: dir.to_path_buf(),
        model_type: model_type.to_string(),
        architectures: if archs.is_empty() {
            "no architectures listed".into()
        } else {
            archs.join(", ")
        },
        supported: SUPPORTED,
    })
}

pub(crate) fn load_encoder(dir: &Path, cfg: Value, arch: Architecture) -> Result<Encoder> {
    let config_path = dir.join("config.json");
    let bad = |e: serde_json::Error| EmbedError::BadConfig {
        path: config_path.clone(),
        reason: e.to_string(),
    };
    let weights = WeightMap::load_safetensors_dir(dir)?;
    Ok(match arch {
        Architecture::Bert => Encoder::Bert(Bert::load(
            serde_json::from_value::<BertConfig>(cfg).map_err(bad)?,
            &weights,
            &config_path,
        )?),
        Architecture::ModernBert => Encoder::ModernBert(ModernBert::load(
            serde_json::from_value::<ModernBertConfig>(cfg).map_err(bad)?,
            &weights,
            &config_path,
        )?),
    })
}

/// The sentence-transformers pipeline of a folder (`modules.json` and its
/// module folders), or the defaults for a plain Hugging Face encoder.
#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub pooling: Pooling,
    pub normalize: bool,
    /// `max_seq_length` of sentence_bert_config.json.
    pub max_seq_length: Option<usize>,
}

pub(crate) fn read_pipeline(dir: &Path) -> Result<Pipeline> {
    let max_seq_length = read_json_opt(&dir.join("sentence_bert_config.json"))?
        .and_then(|v| v.get("max_seq_length").and_then(Value::as_u64))
        .map(|n| n as usize);
    let modules_path = dir.join("modules.json");
    let Some(modules) = read_json_opt(&modules_path)? else {
        // A bare transformers checkpoint: sentence-transformers would wrap it
        // with mean pooling and no normalisation.
        return Ok(Pipeline {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length,
        });
    };
    let list = modules.as_array().ok_or_else(|| EmbedError::BadConfig {
        path: modules_path.clone(),
        reason: "expected a list of modules".into(),
    })?;
    let mut pooling = None;
    let mut normalize = false;
    for m in list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
        let short = ty.rsplit('.').next().unwrap_or(ty);
        match short {
            "Transformer" => {}
            "Pooling" => {
                let p: PathBuf = dir.join(sub).join("config.json");
                pooling = Some(Pooling::from_config(&p, &read_json(&p)?)?);
            }
            "Normalize" => normalize = true,
            _ => {
                return Err(EmbedError::UnsupportedPipeline {
                    path: modules_path,
                    what: format!("the module `{ty}`"),
                })
            }
        }
    }
    Ok(Pipeline {
        pooling: pooling.unwrap_or(Pooling::Mean),
        normalize,
        max_seq_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_gelu_matches_mlx_exact_gelu() {
        // Wide range, including the ±4·√2 clamp edges and large magnitudes;
        // more than one thread's chunk so the parallel split is exercised.
        let n = 200_001;
        let xs: Vec<f32> = (0..n).map(|i| -12.0 + 24.0 * i as f32 / (n - 1) as f32).collect();
        let x = Array::from_slice(&xs, &[n]).unwrap();
        let ours = gelu(&x).unwrap().to_vec::<f32>().unwrap();
        let mlx = x.gelu().unwrap().to_vec::<f32>().unwrap();
        // Within the documented erf error (5e-7, scaled by x/2) plus a few ulps.
        for ((x, a), b) in xs.iter().zip(&ours).zip(&mlx) {
            let tol = 2.5e-7 * x.abs() + 3e-7 * b.abs() + 1e-7;
            assert!((a - b).abs() <= tol, "x = {x}: {a} vs {b}");
        }
        assert_eq!(gelu_scalar(0.0), 0.0);
        assert_eq!(gelu_scalar(-20.0), 0.0);
        assert_eq!(gelu_scalar(20.0), 20.0);
    }
}
