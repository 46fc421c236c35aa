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
pub const SUPPORTED: &str = "bert (BERT, MiniLM, BGE, E5), roberta/xlm-roberta (multilingual-e5, bge-m3), modernbert";

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
            Activation::Gelu => x.gelu()?,
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
    /// RoBERTa and XLM-RoBERTa (multilingual-e5, bge-m3): `model_type`
    /// `roberta`, `xlm-roberta` or `camembert`.
    Roberta,
    /// ModernBERT: `model_type: "modernbert"`.
    ModernBert,
}

impl Architecture {
    /// The `model_type` of config.json.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Roberta => "roberta",
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
    /// Hidden states (B, L, H) of `rows` of token ids, L the longest row;
    /// `valid` (B, L) marks each row's tokens. Positions past a row's end hold
    /// unspecified values.
    pub(crate) fn forward(&self, rows: &[&[u32]], valid: &Array) -> Result<Array> {
        let b = rows.len();
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let l = lengths.iter().copied().max().unwrap_or(0).max(1);
        match self {
            Encoder::Bert(m) => {
                let flat: Vec<i32> = rows.iter().flat_map(|r| r.iter().map(|&id| id as i32)).collect();
                let packed = m.forward_packed(&flat, &lengths)?;
                let h = m.hidden_size() as i32;
                if lengths.iter().all(|&n| n == l) {
                    return Ok(packed.reshape(&[b as i32, l as i32, h])?);
                }
                // Back to (B, L, H); pad positions repeat row 0 (pooling masks them).
                let mut index = vec![0i32; b * l];
                let mut off = 0;
                for (r, &n) in lengths.iter().enumerate() {
                    for c in 0..n {
                        index[r * l + c] = (off + c) as i32;
                    }
                    off += n;
                }
                Ok(packed
                    .take(&Array::from_slice(&index, &[b * l])?, 0)?
                    .reshape(&[b as i32, l as i32, h])?)
            }
            Encoder::ModernBert(m) => {
                let mut flat = vec![0i32; b * l];
                for (r, row) in rows.iter().enumerate() {
                    for (c, &id) in row.iter().enumerate() {
                        flat[r * l + c] = id as i32;
                    }
                }
                let ids = Array::from_slice(&flat, &[b, l])?;
                let mask = if lengths.iter().any(|&n| n < l) {
                    Some(valid.reshape(&[b as i32, 1, 1, l as i32])?)
                } else {
                    None
                };
                m.forward(&ids, mask.as_ref())
            }
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
            Encoder::Bert(m) => m.architecture(),
            Encoder::ModernBert(_) => Architecture::ModernBert,
        }
    }
}

/// The hidden size must split evenly into the attention heads.
pub(crate) fn check_heads(hidden_size: usize, heads: usize, config_path: &Path) -> Result<()> {
    if heads == 0 || !hidden_size.is_multiple_of(heads) {
        return Err(EmbedError::BadConfig {
            path: config_path.to_path_buf(),
            reason: format!("hidden_size {hidden_size} is not a multiple of num_attention_heads {heads}"),
        });
    }
    Ok(())
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
        "roberta" | "xlm-roberta" | "camembert" => return Ok(Architecture::Roberta),
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
        "nomic_bert",
        "distilbert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "new",
        "jina_bert",
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
        Architecture::Bert | Architecture::Roberta => Encoder::Bert(Bert::load(
            serde_json::from_value::<BertConfig>(cfg).map_err(bad)?,
            &weights,
            &config_path,
            arch == Architecture::Roberta,
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
