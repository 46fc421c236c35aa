//! Writes a loaded checkpoint as an MLX model folder (config.json +
//! model.safetensors with HF names), e.g. a GGUF for mlx-lm to run on the
//! very same weights.

use crate::config::LlmConfig;
use crate::gguf;
use engine_core::{EngineError, GgufMetadata, Result};
use engine_mlx::save_safetensors;
use std::path::Path;

/// Converts a `.gguf` file to an MLX folder. Quantized tensors keep their
/// exact values (MLX affine, group 32); Q/K rows get the HF order back.
pub fn gguf_to_mlx(gguf_path: &Path, out_dir: &Path) -> Result<()> {
    let meta = GgufMetadata::read(gguf_path)?;
    let mut raw = LlmConfig::hf_json_from_gguf(&meta)?;
    let cfg = LlmConfig::from_hf(&raw)?;
    let be = |e: engine_mlx::Error| EngineError::Backend(e.to_string());
    let w = gguf::load_weights(gguf_path, &meta, None, &mut |_| {})?;
    let w = gguf::to_hf(w, &meta, cfg.num_heads, cfg.num_kv_heads)?;
    if let Some(scales) = w.try_get("model.layers.0.self_attn.q_proj.scales") {
        let packed = w.get("model.layers.0.self_attn.q_proj.weight").map_err(be)?;
        let bits = packed.dim(-1) * 32 / cfg.hidden_size;
        let group = cfg.hidden_size / scales.dim(-1);
        raw["quantization"] = serde_json::json!({"group_size": group, "bits": bits});
    }
    std::fs::create_dir_all(out_dir).map_err(|e| EngineError::Io {
        context: format!("creating {}", out_dir.display()),
        source: e,
    })?;
    let names = w.names();
    let tensors: Vec<(&str, &engine_mlx::Array)> = names.iter().map(|n| (*n, w.get(n).expect("listed"))).collect();
    save_safetensors(out_dir.join("model.safetensors"), &tensors, &[("format", "mlx")]).map_err(be)?;
    std::fs::write(
        out_dir.join("config.json"),
        serde_json::to_string_pretty(&raw).expect("json"),
    )
    .map_err(|e| EngineError::Io {
        context: "writing config.json".into(),
        source: e,
    })?;
    Ok(())
}
