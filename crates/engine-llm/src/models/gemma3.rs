//! Gemma 3 (text): Gemma 2's layout with q/k norms instead of soft-capping,
//! and five sliding-window layers (RoPE base 10k) per global layer (RoPE
//! base 1M, with the checkpoint's scaling).

use crate::config::{layer_rope_settings, opt_f32, opt_usize, LlmConfig};
use crate::transformer::{Activation, ArchFeatures};
use engine_mlx::WeightMap;

/// Gemma 3's features.
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    let pattern = opt_usize(&cfg.raw, "sliding_window_pattern").unwrap_or(6).max(1);
    let is_global = |i: usize| match cfg.raw.get("layer_types").and_then(|v| v.as_array()) {
        Some(types) => types.get(i).and_then(|t| t.as_str()) == Some("full_attention"),
        None => (i + 1).is_multiple_of(pattern),
    };
    let local_base = opt_f32(&cfg.raw, "rope_local_base_freq")
        .or_else(|| layer_rope_settings(&cfg.raw, "sliding_attention").and_then(|p| opt_f32(p, "rope_theta")))
        .unwrap_or(10000.0);
    let scalar = opt_f32(&cfg.raw, "query_pre_attn_scalar").unwrap_or(cfg.head_dim as f32);
    ArchFeatures {
        qk_norm: true,
        norm_offset: true,
        sandwich_norms: true,
        embed_scale: true,
        activation: Activation::GeluApprox,
        attn_scale: scalar.powf(-0.5),
        layer_windows: (0..cfg.num_layers)
            .map(|i| {
                if is_global(i) {
                    None
                } else {
                    cfg.sliding_window.or(Some(512))
                }
            })
            .collect(),
        layer_rope_base: (0..cfg.num_layers)
            .map(|i| if is_global(i) { cfg.rope_theta } else { local_base })
            .collect(),
        ..ArchFeatures::llama(cfg)
    }
}

/// Multimodal Gemma 3 checkpoints nest the text model under `language_model.`.
/// Loaded as a text model, the vision tower is dropped, loudly, and the model
/// runs text-only (it does not claim [`engine_core::FeatureFlag::Vision`]);
/// `engine-vlm` runs it with images.
pub fn sanitize(cfg: &LlmConfig, w: WeightMap) -> WeightMap {
    let mut warned = false;
    let w = w.rename(|n| {
        if n.starts_with("vision_tower.") || n.starts_with("multi_modal_projector.") {
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(
                    "this Gemma 3 checkpoint has a vision tower, unused when it loads as a text model: it runs text-only (load it as a vision model to send images)"
                );
            }
            None
        } else {
            Some(n.strip_prefix("language_model.").unwrap_or(n).to_string())
        }
    });
    crate::models::llama::sanitize(cfg, w)
}
