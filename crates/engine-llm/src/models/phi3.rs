//! Phi-3 / Phi-3.5 / Phi-4-mini: Llama with fused `qkv_proj` and
//! `gate_up_proj`, split here into the usual projections.

use crate::config::LlmConfig;
use crate::transformer::ArchFeatures;
use engine_mlx::{Array, Result, WeightMap};

/// Llama features (the difference is only in the weight layout).
pub fn features(cfg: &LlmConfig) -> ArchFeatures {
    ArchFeatures::llama(cfg)
}

/// Splits the fused projections by output rows. Works for quantized weights
/// too: rows of the packed weight, scales and biases split alike.
pub fn sanitize(cfg: &LlmConfig, w: WeightMap) -> Result<WeightMap> {
    let q_rows = (cfg.num_heads * cfg.head_dim) as i32;
    let kv_rows = (cfg.num_kv_heads * cfg.head_dim) as i32;
    let ff = cfg.intermediate_size as i32;
    let mut out = crate::models::llama::sanitize(cfg, w);
    for name in out.names().into_iter().map(str::to_string).collect::<Vec<_>>() {
        let Some(t) = out.try_get(&name).cloned() else { continue };
        let split = |parts: &[(&str, i32)], fused: &str| -> Result<Vec<(String, Array)>> {
            let bounds: Vec<i32> = parts
                .iter()
                .scan(0, |acc, (_, n)| {
                    *acc += n;
                    Some(*acc)
                })
                .collect();
            let pieces = t.split_at(&bounds[..bounds.len() - 1], 0)?;
            Ok(parts
                .iter()
                .zip(pieces)
                .map(|((p, _), a)| (name.replace(fused, p), a))
                .collect())
        };
        let pieces = if name.contains("self_attn.qkv_proj.") {
            split(
                &[
                    ("self_attn.q_proj.", q_rows),
                    ("self_attn.k_proj.", kv_rows),
                    ("self_attn.v_proj.", kv_rows),
                ],
                "self_attn.qkv_proj.",
            )?
        } else if name.contains("mlp.gate_up_proj.") {
            split(&[("mlp.gate_proj.", ff), ("mlp.up_proj.", ff)], "mlp.gate_up_proj.")?
        } else {
            continue;
        };
        out.remove(&name);
        for (n, a) in pieces {
            out.insert(n, a);
        }
    }
    Ok(out)
}
