//! Qwen3: Llama with a per-head RMS norm on queries and keys, no biases.

use crate::config::LlmConfig;
use crate::transformer::ArchFeatures;

/// Llama plus q/k norms.
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    ArchFeatures {
        qk_norm: true,
        ..ArchFeatures::llama(cfg)
    }
}
