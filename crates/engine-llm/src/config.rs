//! The hyper-parameters every decoder-only transformer here shares, read from
//! a Hugging Face `config.json` or from GGUF metadata.

use engine_core::{EngineError, GgufMetadata, Result};
use engine_mlx::nn::RopeScaling;
use serde_json::Value;

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// `model_type` of the checkpoint (`llama`, `qwen2`, ...).
    pub model_type: String,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Leading features of a head that RoPE rotates (`head_dim` unless the
    /// config sets `partial_rotary_factor`, e.g. Phi-4-mini's 0.75).
    pub rope_dims: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f32,
    /// RoPE base (theta).
    pub rope_theta: f32,
    /// RoPE scaling scheme.
    pub rope_scaling: RopeScaling,
    /// Rotate adjacent pairs rather than halves (GGUF llama layout).
    pub rope_traditional: bool,
    /// Output projection shares the embedding table.
    pub tie_word_embeddings: bool,
    /// Maximum context in tokens.
    pub max_position_embeddings: usize,
    /// Sliding attention window, for the layers that use one.
    pub sliding_window: Option<usize>,
    /// Multimodal RoPE (Qwen2-VL): how many of a head's rotary frequencies
    /// follow the temporal, height and width position (sums to rope_dims / 2).
    pub mrope_section: Option<Vec<usize>>,
    /// The raw config, for architecture-specific fields.
    pub raw: Value,
}

fn field<'a>(v: &'a Value, key: &str) -> Result<&'a Value> {
    v.get(key).filter(|x| !x.is_null()).ok_or_else(|| {
        EngineError::Config(format!(
            "config.json has no `{key}`; the file is incomplete or not a text model's config"
        ))
    })
}

/// Reads a required unsigned field.
pub fn req_usize(v: &Value, key: &str) -> Result<usize> {
    field(v, key)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| EngineError::Config(format!("`{key}` in config.json must be a non-negative integer")))
}

/// Reads an optional unsigned field.
pub fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|x| x as usize)
}

/// Reads an optional float field.
pub fn opt_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

impl LlmConfig {
    /// Parses the fields common to all supported architectures.
    pub fn from_hf(raw: &Value) -> Result<LlmConfig> {
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        let hidden_size = req_usize(raw, "hidden_size")?;
        let num_heads = req_usize(raw, "num_attention_heads")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(EngineError::Config(
                "hidden_size and num_attention_heads must be positive".into(),
            ));
        }
        let num_kv_heads = opt_usize(raw, "num_key_value_heads").unwrap_or(num_heads);
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(EngineError::Config(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = opt_usize(raw, "head_dim").unwrap_or(hidden_size / num_heads);
        let partial = opt_f32(raw, "partial_rotary_factor").unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(EngineError::Config(format!(
                "partial_rotary_factor {partial} in config.json must be in (0, 1]"
            )));
        }
        let rope_dims = (head_dim as f32 * partial) as usize;
        let max_position_embeddings = opt_usize(raw, "max_position_embeddings").unwrap_or(4096);
        let rope_scaling = parse_rope_scaling(raw, max_position_embeddings)?;
        Ok(LlmConfig {
            model_type,
            hidden_size,
            num_layers: req_usize(raw, "num_hidden_layers")?,
            intermediate_size: req_usize(raw, "intermediate_size")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dims,
            vocab_size: req_usize(raw, "vocab_size")?,
            rms_norm_eps: opt_f32(raw, "rms_norm_eps").unwrap_or(1e-6),
            // transformers 5 writes RoPE settings under `rope_parameters`.
            rope_theta: opt_f32(raw, "rope_theta")
                .or_else(|| rope_settings(raw).and_then(|p| opt_f32(p, "rope_theta")))
                .unwrap_or(10000.0),
            rope_scaling,
            rope_traditional: raw.get("rope_traditional").and_then(Value::as_bool).unwrap_or(false),
            tie_word_embeddings: raw.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            max_position_embeddings,
            sliding_window: opt_usize(raw, "sliding_window"),
            mrope_section: mrope_section(raw, rope_dims)?,
            raw: raw.clone(),
        })
    }

    /// Builds the equivalent HF-style config from GGUF metadata (llama, qwen2,
    /// qwen3, gemma2/3, phi3 key prefixes).
    pub fn hf_json_from_gguf(meta: &GgufMetadata) -> Result<Value> {
        let arch = meta.architecture()?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<Option<u64>> { Ok(meta.get_u64(&key(k))?) };
        let req = |k: &str| -> Result<u64> {
            u(k)?.ok_or_else(|| {
                EngineError::Config(format!(
                    "GGUF metadata lacks `{}`; the file is not a complete model",
                    key(k)
                ))
            })
        };
        let hidden = req("embedding_length")?;
        let heads = req("attention.head_count")?;
        let vocab = match u("vocab_size")? {
            Some(v) => v,
            None => meta
                .get_str_array("tokenizer.ggml.tokens")?
                .map(|t| t.len() as u64)
                .unwrap_or(0),
        };
        let has_output = meta.tensors().iter().any(|t| t.name == "output.weight");
        let model_type = match arch.as_str() {
            "gemma3" => "gemma3_text",
            other => other,
        };
        let mut cfg = serde_json::json!({
            "model_type": model_type,
            "hidden_size": hidden,
            "num_hidden_layers": req("block_count")?,
            "intermediate_size": req("feed_forward_length")?,
            "num_attention_heads": heads,
            "num_key_value_heads": u("attention.head_count_kv")?.unwrap_or(heads),
            "vocab_size": vocab,
            "rms_norm_eps": meta.get_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            "rope_theta": meta.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
            "max_position_embeddings": u("context_length")?.unwrap_or(2048),
            "tie_word_embeddings": !has_output,
        });
        if let Some(hd) = u("attention.key_length")? {
            cfg["head_dim"] = hd.into();
        }
        if let Some(w) = u("attention.sliding_window")? {
            cfg["sliding_window"] = w.into();
        }
        // Partial rotary embeddings (Phi-4-mini rotates 3/4 of each head).
        if let Some(rot) = u("rope.dimension_count")? {
            let hd = u("attention.key_length")?.unwrap_or(hidden / heads.max(1));
            if rot > 0 && rot < hd {
                cfg["partial_rotary_factor"] = (rot as f64 / hd as f64).into();
            }
        }
        Ok(cfg)
    }

    /// Queries per key/value head.
    pub fn gqa_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
}

/// The RoPE settings: `rope_scaling`, or transformers 5's `rope_parameters`
/// (for models with sliding layers, keyed by layer type: the global layers'
/// entry here, [`layer_rope_settings`] for the others).
fn rope_settings(raw: &Value) -> Option<&Value> {
    let v = ["rope_scaling", "rope_parameters"]
        .iter()
        .find_map(|k| raw.get(*k).filter(|v| v.is_object()))?;
    Some(v.get("full_attention").filter(|f| f.is_object()).unwrap_or(v))
}

/// transformers 5's `rope_parameters` entry for one layer type
/// (`sliding_attention`), when the config keys them by type.
pub(crate) fn layer_rope_settings<'a>(raw: &'a Value, layer_type: &str) -> Option<&'a Value> {
    raw.get("rope_parameters")?.get(layer_type).filter(|v| v.is_object())
}

fn mrope_section(raw: &Value, rope_dims: usize) -> Result<Option<Vec<usize>>> {
    let Some(sec) = rope_settings(raw).and_then(|v| v.get("mrope_section")) else {
        return Ok(None);
    };
    let sec: Option<Vec<usize>> = sec
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect());
    match sec {
        Some(s) if s.len() == 3 && s.iter().sum::<usize>() * 2 == rope_dims => Ok(Some(s)),
        _ => Err(EngineError::Config(format!(
            "mrope_section must be three numbers summing to half the rotary width ({})",
            rope_dims / 2
        ))),
    }
}

fn parse_rope_scaling(raw: &Value, max_position_embeddings: usize) -> Result<RopeScaling> {
    let Some(v) = rope_settings(raw) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str, d: f32| opt_f32(v, k).unwrap_or(d);
    Ok(match kind {
        // M-RoPE only splits the frequencies by axis; see `mrope_section`.
        "default" | "mrope" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor", 1.0),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor", 8.0),
            low_freq_factor: f("low_freq_factor", 1.0),
            high_freq_factor: f("high_freq_factor", 4.0),
            original_max_position_embeddings: f("original_max_position_embeddings", 8192.0),
        },
        "longrope" | "su" => {
            let factors: Option<Vec<f32>> = v
                .get("long_factor")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect());
            let factors = factors.ok_or_else(|| {
                EngineError::Config("rope_scaling `longrope` needs `long_factor`, a list of numbers".into())
            })?;
            // Phi-3 keeps the trained context at the top level; newer configs inside rope_scaling.
            let original = opt_f32(v, "original_max_position_embeddings")
                .or_else(|| opt_f32(raw, "original_max_position_embeddings"))
                .unwrap_or(4096.0);
            let factor = max_position_embeddings as f32 / original;
            let mscale = opt_f32(v, "long_mscale").unwrap_or(if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            });
            RopeScaling::LongRope { factors, mscale }
        }
        other => {
            return Err(EngineError::Config(format!(
                "rope_scaling type `{other}` is not supported yet (supported: linear, llama3, longrope)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8,
            "num_hidden_layers": 2, "intermediate_size": 8192, "vocab_size": 200064,
            "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        })
    }

    #[test]
    fn phi4_mini_longrope_and_partial_rotary() {
        let mut raw = base();
        raw["partial_rotary_factor"] = 0.75.into();
        raw["rope_scaling"] = serde_json::json!({
            "type": "longrope", "short_factor": vec![1.0; 48], "long_factor": vec![2.0; 48]
        });
        let cfg = LlmConfig::from_hf(&raw).unwrap();
        assert_eq!((cfg.head_dim, cfg.rope_dims), (128, 96));
        let RopeScaling::LongRope { factors, mscale } = &cfg.rope_scaling else {
            panic!("{:?}", cfg.rope_scaling)
        };
        assert_eq!(factors.len(), 48);
        // sqrt(1 + ln(131072 / 4096) / ln(4096)), as mlx-lm and transformers compute it.
        assert!((mscale - 1.190_239).abs() < 1e-5, "{mscale}");
        // An explicit long_mscale wins; no extension means no correction.
        raw["rope_scaling"]["long_mscale"] = 1.5.into();
        assert!(
            matches!(LlmConfig::from_hf(&raw).unwrap().rope_scaling, RopeScaling::LongRope { mscale, .. } if mscale == 1.5)
        );
        raw["max_position_embeddings"] = 4096.into();
        raw["rope_scaling"].as_object_mut().unwrap().remove("long_mscale");
        assert!(
            matches!(LlmConfig::from_hf(&raw).unwrap().rope_scaling, RopeScaling::LongRope { mscale, .. } if mscale == 1.0)
        );
    }

    #[test]
    fn bad_rope_settings_are_clear_errors() {
        let mut raw = base();
        raw["partial_rotary_factor"] = 1.5.into();
        let err = LlmConfig::from_hf(&raw).unwrap_err().to_string();
        assert!(err.contains("partial_rotary_factor 1.5"), "{err}");
        let mut raw = base();
        raw["rope_scaling"] = serde_json::json!({"type": "longrope"});
        let err = LlmConfig::from_hf(&raw).unwrap_err().to_string();
        assert!(err.contains("needs `long_factor`"), "{err}");
        raw["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
        let err = LlmConfig::from_hf(&raw).unwrap_err().to_string();
        assert!(err.contains("`yarn` is not supported yet"), "{err}");
    }
}
