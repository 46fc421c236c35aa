//! One module per architecture, holding only what is particular to it: the
//! [`ArchFeatures`] it sets and its checkpoint-name fix-ups (`sanitize`).

mod gemma2;
mod gemma3;
mod llama;
mod phi3;
mod qwen2;
mod qwen3;

use crate::config::LlmConfig;
use crate::transformer::ArchFeatures;
use engine_core::{EngineError, Result};
use engine_mlx::WeightMap;

/// The architectures this crate implements (HF `model_type` values).
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen2_vl_text",
    "qwen2_vl",
    "qwen2_5_vl_text",
    "qwen2_5_vl",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3_text",
    "gemma3",
];

/// Features and sanitized weights for `cfg.model_type`.
pub fn prepare(cfg: &mut LlmConfig, weights: WeightMap) -> Result<(ArchFeatures, WeightMap)> {
    let be = |e: engine_mlx::Error| EngineError::Backend(e.to_string());
    if cfg.model_type.starts_with("gemma") {
        // Gemma ties the output projection unless a checkpoint carries its own.
        cfg.tie_word_embeddings = !weights.contains("lm_head.weight");
    }
    let cfg = &*cfg;
    match cfg.model_type.as_str() {
        "llama" | "mistral" => Ok((llama::features(cfg), llama::sanitize(cfg, weights))),
        // Qwen2-VL's decoder is Qwen2's; its M-RoPE comes from the config.
        "qwen2" | "qwen2_vl_text" | "qwen2_vl" | "qwen2_5_vl_text" | "qwen2_5_vl" => {
            Ok((qwen2::features(cfg), llama::sanitize(cfg, weights)))
        }
        "qwen3" => Ok((qwen3::features(cfg), llama::sanitize(cfg, weights))),
        "phi3" => Ok((phi3::features(cfg), phi3::sanitize(cfg, weights).map_err(be)?)),
        "gemma2" => Ok((gemma2::features(cfg), llama::sanitize(cfg, weights))),
        "gemma3_text" | "gemma3" => Ok((gemma3::features(cfg), gemma3::sanitize(cfg, weights))),
        other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
    }
}
