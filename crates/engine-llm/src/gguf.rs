//! GGUF checkpoints: llama.cpp tensor names → Hugging Face names, and the
//! Q/K row order llama.cpp's converter permutes for Llama-family models, and
//! the LongRoPE factors 128k-context Phi files carry as tensors.

use engine_core::gguf::{GgmlType, GgufTensorInfo};
use engine_core::gguf_quant::{self, types};
use engine_core::{EngineError, GgufMetadata, Result};
use engine_mlx::nn::RopeScaling;
use engine_mlx::{Array, Dtype, WeightMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Reads every tensor of a GGUF file, one at a time, so the load peak stays
/// near the final weights plus one tensor.
///
/// With `target` set, every tensor becomes dense of that dtype (quantized ones
/// through our own dequantizers, in f32, then cast). Without it the tensors stay
/// as stored where MLX can hold them: F32/F16/BF16 as they are; Q4_0, Q4_1,
/// Q5_0, Q5_1 and Q8_0 exactly in MLX's affine layout (the packed `weight`,
/// f16 `scales` and `biases`, as MLX's own GGUF reader lays out the first
/// three); Q4_K and Q5_K as MLX 4/5-bit with group 32 (each sub-block's scale
/// and minimum rounded to f16); the other types (16-element sub-blocks, or
/// non-linear codebooks, which MLX's affine groups cannot express) are
/// decoded and re-quantized by MLX to 8 bits with group 32 (f16 where a row
/// is not a multiple of 32).
pub fn load_weights(
    path: &Path,
    meta: &GgufMetadata,
    target: Option<Dtype>,
    progress: &mut dyn FnMut(f32),
) -> Result<WeightMap> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let infos = meta.tensors();
    // Check every type before reading anything: an unknown one fails at once.
    for t in infos {
        if !gguf_quant::is_supported(t.ggml_type) {
            // Let the dequantizer word the error.
            gguf_quant::dequantize(&t.name, t.ggml_type, &[], 0).map_err(|e| EngineError::ModelLoad {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
    }
    let total: u64 = infos.iter().filter_map(|t| t.n_bytes).sum::<u64>().max(1);
    let mut done = 0u64;
    let mut out = Vec::with_capacity(infos.len());
    let mut raw = Vec::new();
    for t in infos {
        let n_bytes = t.n_bytes.unwrap_or(0) as usize;
        raw.resize(n_bytes, 0);
        file.seek(SeekFrom::Start(t.file_offset))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(|e| io_err(path, e))?;
        for (name, a) in tensor_arrays(t, &raw, target).map_err(|e| EngineError::ModelLoad {
            path: path.to_path_buf(),
            reason: e,
        })? {
            out.push((name, a));
        }
        done += n_bytes as u64;
        progress(done as f32 / total as f32);
    }
    Ok(WeightMap::from_arrays(out, &path.display().to_string()))
}

fn io_err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::ModelLoad {
        path: path.to_path_buf(),
        reason: format!("cannot read the GGUF file ({e}); it may be truncated: download it again"),
    }
}

/// The arrays one GGUF tensor becomes (one, or `weight`/`scales`/`biases`).
fn tensor_arrays(
    t: &GgufTensorInfo,
    raw: &[u8],
    target: Option<Dtype>,
) -> std::result::Result<Vec<(String, Array)>, String> {
    let err = |e: engine_mlx::Error| format!("tensor `{}`: {e}", t.name);
    // GGUF lists the fastest-varying dimension first.
    let shape: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
    let stored = match t.ggml_type {
        types::F32 => Some(Dtype::Float32),
        types::F16 => Some(Dtype::Float16),
        types::BF16 => Some(Dtype::Bfloat16),
        _ => None,
    };
    let dense = |dtype: Dtype| -> std::result::Result<Array, String> {
        let a = match stored {
            Some(s) => Array::from_bytes(raw, &shape, s).map_err(err)?,
            None => {
                // Decoded straight into the array's buffer: no second f32 copy.
                let mut result = Ok(());
                let a = Array::from_fill::<f32>(&shape, |out| {
                    result = gguf_quant::dequantize_into(&t.name, t.ggml_type, raw, out);
                })
                .map_err(err)?;
                result.map_err(|e| e.to_string())?;
                a
            }
        };
        if a.dtype() == dtype {
            return Ok(a);
        }
        // Cast now, so the f32 copy is freed before the next tensor.
        let c = a.astype(dtype).map_err(err)?;
        c.eval().map_err(err)?;
        Ok(c)
    };
    if let Some(dtype) = target {
        return Ok(vec![(t.name.clone(), dense(dtype)?)]);
    }
    if let Some(s) = stored {
        return Ok(vec![(t.name.clone(), dense(s)?)]);
    }
    let rows = shape.iter().rev().skip(1).product::<usize>();
    let cols = *shape.last().unwrap_or(&0);
    let affine = match t.ggml_type {
        _ if shape.len() >= 2 => affine(t.ggml_type, raw, rows * cols),
        _ => None,
    };
    let Some(Affine {
        bits,
        packed,
        scales,
        biases,
    }) = affine
    else {
        if shape.len() < 2 || !cols.is_multiple_of(32) {
            return Ok(vec![(t.name.clone(), dense(Dtype::Float16)?)]);
        }
        // 16-element sub-blocks and codebooks have no MLX layout: MLX's own
        // 8-bit, group 32 quantization of the decoded values keeps them small
        // (9 bits per weight; each value within 1/510 of its group's range).
        let q = engine_mlx::quant::quantize(
            &dense(Dtype::Float32)?,
            engine_mlx::quant::QuantSpec {
                group_size: 32,
                bits: 8,
            },
        )
        .map_err(err)?;
        let half = |a: &Array| a.astype(Dtype::Float16).map_err(err);
        let (scales, biases) = (half(&q.scales)?, half(&q.biases)?);
        engine_mlx::eval([&q.weight, &scales, &biases]).map_err(err)?;
        let base = t.name.strip_suffix(".weight").unwrap_or(&t.name);
        return Ok(vec![
            (t.name.clone(), q.weight),
            (format!("{base}.scales"), scales),
            (format!("{base}.biases"), biases),
        ]);
    };
    let mut packed_shape = shape.clone();
    *packed_shape.last_mut().unwrap() = cols * bits / 32;
    let mut group_shape = shape.clone();
    *group_shape.last_mut().unwrap() = cols / 32;
    let base = t.name.strip_suffix(".weight").unwrap_or(&t.name);
    Ok(vec![
        (t.name.clone(), Array::from_slice(&packed, &packed_shape).map_err(err)?),
        (
            format!("{base}.scales"),
            Array::from_slice(&scales, &group_shape).map_err(err)?,
        ),
        (
            format!("{base}.biases"),
            Array::from_slice(&biases, &group_shape).map_err(err)?,
        ),
    ])
}

/// A tensor in MLX's affine layout: `value = scale * q + bias` per group of 32,
/// the unsigned `q` of each row packed as a little-endian bit stream in u32
/// words (MLX's layout for every bit width).
struct Affine {
    bits: usize,
    packed: Vec<u32>,
    scales: Vec<half::f16>,
    biases: Vec<half::f16>,
}

/// The bits per element of the types [`affine`] repacks.
fn affine_bits(ty: GgmlType) -> Option<usize> {
    Some(match ty {
        types::Q4_0 | types::Q4_1 | types::Q4_K => 4,
        types::Q5_0 | types::Q5_1 | types::Q5_K => 5,
        types::Q8_0 => 8,
        _ => return None,
    })
}

/// Repacks blocks into MLX's affine layout: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
/// exactly (their scales and biases are f16 values, or exact multiples of
/// one); Q4_K and Q5_K with each 32-element sub-block's scale and minimum
/// (products of f16 and 6-bit integers) rounded to f16. `None` for other
/// types, or where a scale or bias overflows f16.
fn affine(ty: GgmlType, raw: &[u8], elements: usize) -> Option<Affine> {
    use half::f16;
    let bits = affine_bits(ty)?;
    let groups = elements / 32;
    let mut packed = vec![0u32; elements * bits / 32];
    let mut scales = Vec::with_capacity(groups);
    let mut biases = Vec::with_capacity(groups);
    let h = |b: &[u8], at: usize| f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]));
    let mut group = 0usize;
    // Appends one group: its 32 unsigned values, scale and bias.
    let mut push = |q: [u8; 32], scale: f16, bias: f16| {
        let start = group * 32 * bits;
        for (k, &v) in q.iter().enumerate() {
            let bit = start + k * bits;
            let (word, shift) = (bit / 32, bit % 32);
            packed[word] |= u32::from(v) << shift;
            if shift + bits > 32 {
                packed[word + 1] |= u32::from(v) >> (32 - shift);
            }
        }
        scales.push(scale);
        biases.push(bias);
        group += 1;
    };
    let nib = |qs: &[u8], i: usize| (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
    let high = |qh: u32, i: usize| (((qh >> i) & 1) as u8) << 4;
    let word = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    match ty {
        types::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = h(b, 0);
                push(
                    std::array::from_fn(|i| nib(&b[2..], i)),
                    d,
                    f16::from_f32(-8.0 * d.to_f32()),
                );
            }
        }
        types::Q4_1 => {
            for b in raw.chunks_exact(20) {
                push(std::array::from_fn(|i| nib(&b[4..], i)), h(b, 0), h(b, 2));
            }
        }
        types::Q5_0 => {
            for b in raw.chunks_exact(22) {
                let (d, qh) = (h(b, 0), word(b, 2));
                let q = std::array::from_fn(|i| nib(&b[6..], i) | high(qh, i));
                push(q, d, f16::from_f32(-16.0 * d.to_f32()));
            }
        }
        types::Q5_1 => {
            for b in raw.chunks_exact(24) {
                let qh = word(b, 4);
                push(std::array::from_fn(|i| nib(&b[8..], i) | high(qh, i)), h(b, 0), h(b, 2));
            }
        }
        types::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = h(b, 0);
                push(
                    std::array::from_fn(|i| b[2 + i] ^ 0x80),
                    d,
                    f16::from_f32(-128.0 * d.to_f32()),
                );
            }
        }
        types::Q4_K | types::Q5_K => {
            let five = ty == types::Q5_K;
            for b in raw.chunks_exact(if five { 176 } else { 144 }) {
                let (d, dmin) = (h(b, 0).to_f32(), h(b, 2).to_f32());
                let (sc, mn) = gguf_quant::scale_min_k4(&b[4..16]);
                let (qh, qs) = if five {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for j in 0..8 {
                    let q = std::array::from_fn(|l| {
                        let low = gguf_quant::nibble_k(qs, j * 32 + l);
                        if five {
                            low | (((qh[l] >> j) & 1) << 4)
                        } else {
                            low
                        }
                    });
                    push(
                        q,
                        f16::from_f32(d * f32::from(sc[j])),
                        f16::from_f32(-(dmin * f32::from(mn[j]))),
                    );
                }
            }
        }
        _ => return None,
    }
    let finite = |v: &[f16]| v.iter().all(|x| x.is_finite());
    (finite(&scales) && finite(&biases)).then_some(Affine {
        bits,
        packed,
        scales,
        biases,
    })
}

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

fn be(e: engine_mlx::Error) -> EngineError {
    EngineError::Backend(e.to_string())
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

    /// MLX's own dequantize of our repacked blocks gives what our dequantizer
    /// (bit-exact with llama.cpp) gives: exactly for the exact types, within
    /// the f16 rounding of the scales for the K-quants.
    #[test]
    fn affine_repack_reads_back_through_mlx() {
        use engine_mlx::quant::{dequantize, QuantSpec, Quantized};
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut byte = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        };
        let (rows, cols) = (3usize, 512usize);
        for (ty, block, bytes, tol) in [
            (types::Q4_0, 32, 18, 0.0),
            (types::Q4_1, 32, 20, 0.0),
            (types::Q5_0, 32, 22, 0.0),
            (types::Q5_1, 32, 24, 0.0),
            (types::Q8_0, 32, 34, 0.0),
            (types::Q4_K, 256, 144, 2e-3),
            (types::Q5_K, 256, 176, 2e-3),
        ] {
            let n_blocks = rows * cols / block;
            let mut raw: Vec<u8> = (0..n_blocks * bytes).map(|_| byte()).collect();
            for (i, b) in raw.chunks_exact_mut(bytes).enumerate() {
                // Finite scales (and minimums) of a realistic size.
                let d = half::f16::from_f32(0.001 + (i % 7) as f32 * 0.003);
                b[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
                b[2..4].copy_from_slice(&half::f16::from_f32(-0.002 * (i % 5) as f32).to_bits().to_le_bytes());
            }
            let want = gguf_quant::dequantize("t", ty, &raw, rows * cols).unwrap();
            let a = affine(ty, &raw, rows * cols).unwrap();
            let q = Quantized {
                weight: Array::from_slice(&a.packed, &[rows, cols * a.bits / 32]).unwrap(),
                scales: Array::from_slice(&a.scales, &[rows, cols / 32])
                    .unwrap()
                    .astype(Dtype::Float32)
                    .unwrap(),
                biases: Array::from_slice(&a.biases, &[rows, cols / 32])
                    .unwrap()
                    .astype(Dtype::Float32)
                    .unwrap(),
                spec: QuantSpec {
                    group_size: 32,
                    bits: a.bits as i32,
                },
                int8_kernels: false,
            };
            let got = dequantize(&q).unwrap().to_vec::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(
                worst <= tol * scale + 1e-7,
                "{ty}: worst difference {worst} (values up to {scale})"
            );
        }
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of dim 4: HF rows [a0 a1 | b0 b1] are stored by llama.cpp as [a0 b0 a1 b1].
        let gguf = Array::from_slice(&[0.0f32, 2.0, 1.0, 3.0], &[4, 1]).unwrap();
        let hf = unpermute(&gguf, 1).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(hf, vec![0.0, 1.0, 2.0, 3.0]);
    }
}
