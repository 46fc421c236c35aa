//! Gemma 2: GELU MLP, norms stored as `scale - 1` with extra norms around
//! attention and MLP, √hidden embedding scale, soft-capped attention scores
//! and logits, and a sliding window on every other layer.

use crate::config::{opt_f32, LlmConfig};
use crate::transformer::{Activation, ArchFeatures};

/// Gemma 2's features.
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    let scalar = opt_f32(&cfg.raw, "query_pre_attn_scalar").unwrap_or(cfg.head_dim as f32);
    ArchFeatures {
        norm_offset: true,
        sandwich_norms: true,
        embed_scale: true,
        activation: Activation::GeluApprox,
        attn_scale: scalar.powf(-0.5),
        attn_softcap: opt_f32(&cfg.raw, "attn_logit_softcapping"),
        final_softcap: opt_f32(&cfg.raw, "final_logit_softcapping"),
        // Even layers slide (as in the reference implementation).
        layer_windows: (0..cfg.num_layers)
            .map(|i| if i % 2 == 0 { cfg.sliding_window } else { None })
            .collect(),
        ..ArchFeatures::llama(cfg)
    }
}
