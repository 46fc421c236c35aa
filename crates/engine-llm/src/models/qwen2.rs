//! Qwen2 / Qwen2.5: Llama with biases on the q/k/v projections.

use crate::config::LlmConfig;
use crate::transformer::ArchFeatures;

/// Llama plus q/k/v biases. (`sliding_window` is only used when
/// `use_sliding_window` is set, which released checkpoints do not.)
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    ArchFeatures {
        qkv_bias: true,
        ..ArchFeatures::llama(cfg)
    }
}
