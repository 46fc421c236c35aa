//! Llama 2/3 (and SmolLM, Mistral): the reference layout. Mistral v0.1's
//! sliding window applies to every layer.

use crate::config::LlmConfig;
use crate::transformer::ArchFeatures;
use engine_mlx::WeightMap;

/// Plain Llama; Mistral's `sliding_window`, when set, on every layer.
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    let mut f = ArchFeatures::llama(cfg);
    if cfg.model_type == "mistral" {
        f.layer_windows = vec![cfg.sliding_window; cfg.num_layers];
    }
    f
}

/// Drops precomputed RoPE tables and a tied `lm_head` (shared by the
/// architectures that need nothing more).
pub fn sanitize(cfg: &LlmConfig, w: WeightMap) -> WeightMap {
    let tied = cfg.tie_word_embeddings;
    w.rename(|n| {
        if n.contains("rotary_emb.inv_freq") || (tied && n.starts_with("lm_head.")) {
            None
        } else {
            Some(n.to_string())
        }
    })
}
