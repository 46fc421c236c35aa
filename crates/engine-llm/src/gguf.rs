//! GGUF checkpoints: llama.cpp tensor names → Hugging Face names, and the
//! Q/K row order llama.cpp's converter permutes for Llama-family models, and
//! the LongRoPE factors 128k-context Phi files carry as tensors.

use engine_core::{GgufMetadata, Result};
use engine_mlx::nn::RopeScaling;
use engine_mlx::{Array, Dtype, WeightMap};

/// Maps one llama.cpp tensor name prefix to its HF equivalent.
fn hf_name(gguf: &str, arch: &str) -> Option<String> {
    let (base, suffix) = gguf.rsplit_once('.')?;
    let mapped = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let sandwich = arch.starts_with("gemma");
            let part = match part {
                "attn_norm" => "input_layernorm",
                // In Gemma GGUFs `ffn_norm` is the pre-MLP norm of the sandwich.
                "ffn_norm" if sandwich => "pre_feedforward_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "post_attention_norm" => "post_attention_layernorm",
                "post_ffw_norm" => "post_feedforward_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                // Phi-3 keeps its fused projections in GGUF; its sanitize splits them.
                "attn_qkv" => "self_attn.qkv_proj",
                "ffn_up" if arch == "phi3" => "mlp.gate_up_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// Undoes llama.cpp's `permute` of Q/K rows: GGUF stores each head's rows
/// as interleaved pairs (n_head, hd/2, 2); HF as halves (n_head, 2, hd/2).
/// Only axis 0 moves, so packed quantized rows, scales and biases all work.
fn unpermute(a: &Array, n_head: usize) -> engine_mlx::Result<Array> {
    let mut shape = a.shape_i32();
    let rows = shape[0];
    let half = rows / n_head as i32 / 2;
    let mut split = vec![n_head as i32, half, 2];
    split.extend_from_slice(&shape[1..]);
    let mut perm: Vec<i32> = (0..split.len() as i32).collect();
    perm.swap(1, 2);
    let out = a.reshape(&split)?.transpose(&perm)?;
    shape[0] = rows;
    out.reshape(&shape)
}

/// LongRoPE of a 128k-context Phi GGUF: llama.cpp stores the per-pair factors
/// as the tensors `rope_factors_long/short.weight` and the magnitude
/// correction as `<arch>.rope.scaling.attn_factor`. The long factors are used,
/// as for Hugging Face checkpoints (see `RopeScaling::LongRope`).
pub fn longrope(w: &WeightMap, meta: &GgufMetadata, max_positions: usize) -> Result<Option<RopeScaling>> {
    let Some(t) = w.try_get("rope_factors_long.weight") else {
        return Ok(None);
    };
    let factors = t.astype(Dtype::Float32).and_then(|a| a.to_vec::<f32>()).map_err(be)?;
    let arch = meta.architecture()?.to_string();
    let mscale = match meta.get_f64(&format!("{arch}.rope.scaling.attn_factor"))? {
        Some(m) => m as f32,
        None => {
            let original = meta
                .get_u64(&format!("{arch}.rope.scaling.original_context_length"))?
                .unwrap_or(4096) as f32;
            let factor = max_positions as f32 / original;
            if factor <= 1.0 {
                1.0
            } else {
                (1.0 + factor.ln() / original.ln()).sqrt()
            }
        }
    };
    Ok(Some(RopeScaling::LongRope { factors, mscale }))
}

/// Renames a GGUF weight map to HF names (unknown tensors are dropped) and,
/// for Llama-family files, restores the HF Q/K row order so the standard
/// (non-traditional) RoPE applies.
pub fn to_hf(weights: WeightMap, meta: &GgufMetadata, n_heads: usize, n_kv_heads: usize) -> Result<WeightMap> {
    let arch = meta.architecture()?.to_string();
    let mut out = weights.rename(|n| hf_name(n, &arch));
    if arch == "llama" {
        let names: Vec<String> = out.names().into_iter().map(str::to_string).collect();
        for name in names {
            let heads = if name.contains("self_attn.q_proj.") {
                n_heads
            } else if name.contains("self_attn.k_proj.") {
                n_kv_heads
            } else {
                continue;
            };
            let fixed = unpermute(out.get(&name).map_err(be)?, heads).map_err(be)?;
            out.insert(name, fixed);
        }
    }
    Ok(out)
}

fn be(e: engine_mlx::Error) -> engine_core::EngineError {
    engine_core::EngineError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_q.scales", "llama").as_deref(),
            Some("model.layers.3.self_attn.q_proj.scales")
        );
        assert_eq!(
            hf_name("token_embd.weight", "llama").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "llama").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight", "gemma2").as_deref(),
            Some("model.layers.0.pre_feedforward_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight", "llama"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of dim 4: HF rows [a0 a1 | b0 b1] are stored by llama.cpp as [a0 b0 a1 b1].
        let gguf = Array::from_slice(&[0.0f32, 2.0, 1.0, 3.0], &[4, 1]).unwrap();
        let hf = unpermute(&gguf, 1).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(hf, vec![0.0, 1.0, 2.0, 3.0]);
    }
}
