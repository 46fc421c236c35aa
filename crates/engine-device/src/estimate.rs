//! Memory estimates: weights + KV cache for the requested context + activations.
//!
//! The model mirrors how MLX engines run these models: the KV cache grows in steps of
//! [`KV_STEP`] tokens (as mlx-lm's `KVCache`), sliding-window layers keep at most their window,
//! prompts are prefilled in chunks of [`PREFILL_CHUNK`] tokens, and only the last position's
//! logits are computed while generating.

use crate::registry::{ArchConfig, ModelEntry, Variant, WeightFormat};
use engine_core::ModelType;
use serde::{Deserialize, Serialize};

/// The KV cache grows in steps of this many tokens.
pub const KV_STEP: u64 = 256;
/// Prompt tokens processed per forward pass during prefill.
pub const PREFILL_CHUNK: u64 = 512;

/// Estimated peak memory of a model, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// Weights as they sit in memory.
    pub weights_bytes: u64,
    /// KV cache for the requested context.
    pub kv_cache_bytes: u64,
    /// Peak intermediate tensors of one forward pass.
    pub activations_bytes: u64,
    /// Peak while loading: on the f32 path the stored weights, their f32 copy and the
    /// dequantization temporaries of the largest matrix coexist; otherwise the weights.
    #[serde(default)]
    pub load_bytes: u64,
    /// The peak: the larger of weights + KV cache + activations and the load peak.
    pub total_bytes: u64,
}

impl MemoryEstimate {
    fn new(weights: u64, kv: u64, act: u64) -> Self {
        Self::with_load(weights, kv, act, weights)
    }

    fn with_load(weights: u64, kv: u64, act: u64, load: u64) -> Self {
        MemoryEstimate {
            weights_bytes: weights,
            kv_cache_bytes: kv,
            activations_bytes: act,
            load_bytes: load,
            total_bytes: (weights + kv + act).max(load),
        }
    }

    /// `weights 1.2 GB + KV 0.1 GB + activations 0.05 GB`.
    pub fn breakdown(&self) -> String {
        use crate::budget::format_size as f;
        let run = format!(
            "weights {} + KV cache {} + activations {}",
            f(self.weights_bytes),
            f(self.kv_cache_bytes),
            f(self.activations_bytes)
        );
        if self.load_bytes > self.weights_bytes + self.kv_cache_bytes + self.activations_bytes {
            format!("{run}; loading peaks at {}", f(self.load_bytes))
        } else {
            run
        }
    }
}

/// Knobs of an estimate; [`EstimateOptions::new`] gives the GPU/quantized defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateOptions {
    /// Tokens of context (prompt + generated) the KV cache must hold; sequence length for
    /// encoders. Ignored for diffusion.
    pub context_len: u64,
    /// Bytes per KV-cache element (2 for bf16/f16, 4 for f32).
    pub kv_dtype_bytes: u64,
    /// Bytes per activation element.
    pub activation_dtype_bytes: u64,
    /// Weights are dequantized/upcast to f32 at load (the CPU + OpenBLAS path): they take
    /// 4 bytes per parameter whatever the file holds.
    pub f32_weights: bool,
    /// Prompt tokens prefilled before generating; `None` plans for a prompt that fills the
    /// context (the worst case).
    #[serde(default)]
    pub prompt_len: Option<u64>,
    /// Size of the weights as stored, when `f32_weights` converts them at load: both copies
    /// exist until the conversion finishes.
    #[serde(default)]
    pub stored_weights_bytes: Option<u64>,
    /// The model is split across the ranks of a distributed group: the estimate is one
    /// rank's share (see [`RankSplit`]).
    #[serde(default)]
    pub split: Option<RankSplit>,
    /// The CPU default (engine-llm's `DtypePolicy::Auto` on the CPU): 4-, 5- and 8-bit
    /// quantized weights stay quantized for the int8 CPU kernels, with f32 scales and
    /// biases; other weights and the embedding table become dense f32, and a tied output
    /// projection keeps a quantized copy of the table. Overrides `f32_weights`.
    #[serde(default)]
    pub cpu_kernels: bool,
}

/// How a model is split across processes (`mlxengine launch`), for per-rank estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankSplit {
    /// Processes the model is split across.
    pub ranks: u64,
    /// By heads or by layers.
    pub mode: SplitKind,
}

/// The two ways engine-llm splits a transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Tensor parallelism: every rank holds its share of each layer's attention heads,
    /// key/value heads and MLP features; embeddings, norms and the LM head are replicated.
    Tensor,
    /// Pipeline parallelism: each rank holds a contiguous range of layers (the first ranks
    /// one more when they do not divide), plus the replicated embeddings and LM head.
    Pipeline,
}

impl EstimateOptions {
    /// 16-bit KV cache and activations, weights as stored.
    pub fn new(context_len: u64) -> Self {
        EstimateOptions {
            context_len,
            kv_dtype_bytes: 2,
            activation_dtype_bytes: 2,
            f32_weights: false,
            prompt_len: None,
            stored_weights_bytes: None,
            split: None,
            cpu_kernels: false,
        }
    }

    /// Everything in f32: the CPU path that dequantizes at load to use OpenBLAS.
    pub fn f32(context_len: u64) -> Self {
        EstimateOptions {
            context_len,
            kv_dtype_bytes: 4,
            activation_dtype_bytes: 4,
            f32_weights: true,
            prompt_len: None,
            stored_weights_bytes: None,
            split: None,
            cpu_kernels: false,
        }
    }

    /// The CPU default: f32 cache and activations, 4-, 5- and 8-bit weights kept for the
    /// int8 CPU kernels, the rest dense f32 (see [`EstimateOptions::cpu_kernels`]).
    pub fn cpu(context_len: u64) -> Self {
        EstimateOptions {
            f32_weights: false,
            cpu_kernels: true,
            ..Self::f32(context_len)
        }
    }
}

fn round_up(n: u64, step: u64) -> u64 {
    n.div_ceil(step) * step
}

impl ArchConfig {
    /// The model one rank of `split` runs: a tensor-parallel rank has its share of the
    /// heads, key/value heads and MLP features (at least one key/value head: fewer heads
    /// than ranks are replicated), a pipeline rank the largest range of layers.
    pub fn rank_view(&self, split: RankSplit) -> ArchConfig {
        let n = split.ranks.max(1);
        match split.mode {
            SplitKind::Tensor => ArchConfig {
                attention_heads: (self.attention_heads / n).max(1),
                kv_heads: if self.kv_heads == 0 {
                    0
                } else {
                    (self.kv_heads / n).max(1)
                },
                intermediate_size: self.intermediate_size / n,
                ..*self
            },
            SplitKind::Pipeline => ArchConfig {
                layers: self.layers.div_ceil(n),
                ..*self
            },
        }
    }

    /// Parameters of the attention and MLP projections of all layers: what a split divides
    /// (embeddings, norms and the LM head stay whole on every rank).
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size;
        let attn = 2 * h * self.attention_heads * self.head_dim + 2 * h * self.kv_heads * self.head_dim;
        self.layers * (attn + 3 * h * self.intermediate_size)
    }

    /// The fraction of a model of `total_params` one rank of `split` holds.
    pub fn rank_share(&self, total_params: u64, split: RankSplit) -> f64 {
        let layers = self.layer_params().min(total_params);
        if total_params == 0 {
            return 1.0;
        }
        let kept = self.rank_view(split).layer_params().min(layers);
        (total_params - layers + kept) as f64 / total_params as f64
    }

    /// KV-cache bytes for `context` tokens: 2 (K and V) × layers × KV heads × head dim × tokens ×
    /// dtype, with sliding-window layers capped at their window.
    pub fn kv_cache_bytes(&self, context: u64, dtype_bytes: u64) -> u64 {
        if self.kv_heads == 0 || context == 0 {
            return 0;
        }
        let full = round_up(context, KV_STEP);
        let per_token_layer = 2 * self.kv_heads * self.head_dim * dtype_bytes;
        let (global, local, window) = match (self.sliding_window, self.sliding_window_pattern) {
            (Some(w), Some(p)) if p > 0 => {
                let global = self.layers / p;
                (global, self.layers - global, w.min(full))
            }
            _ => (self.layers, 0, 0),
        };
        per_token_layer * (global * full + local * window)
    }

    /// Peak activations of a forward pass over `tokens` positions attending to `context`
    /// positions: the residual stream, the MLP's intermediates, Q/K/V, materialised attention
    /// scores and one row of logits (f32).
    pub fn activation_bytes(&self, tokens: u64, context: u64, dtype_bytes: u64) -> u64 {
        let h = self.hidden_size;
        // Encoders (no KV cache) have as many K/V heads as query heads.
        let kv = if self.kv_heads == 0 {
            self.attention_heads
        } else {
            self.kv_heads
        };
        let qkv = (self.attention_heads + 2 * kv) * self.head_dim;
        let per_token = 2 * h + 3 * self.intermediate_size + qkv;
        let scores = 2 * self.attention_heads * tokens * context.max(tokens);
        let logits = if self.kv_heads > 0 {
            self.vocab_size * (4 + dtype_bytes)
        } else {
            0
        };
        (tokens * per_token + scores) * dtype_bytes + logits
    }
}

/// Estimate for a local model known only by its config: `layers × kv_heads × head_dim` decide the
/// KV cache for `context` tokens at `dtype_bytes` per element; activations are approximated as
/// 3% of the weights plus the attention scores of one prefill chunk (the exact form needs the
/// hidden and MLP sizes: use [`estimate_for_arch`] when they are known).
pub fn estimate_for_config(
    layers: u64,
    kv_heads: u64,
    head_dim: u64,
    weights_bytes: u64,
    context: u64,
    dtype_bytes: u64,
) -> MemoryEstimate {
    let kv = ArchConfig {
        layers,
        hidden_size: kv_heads * head_dim,
        attention_heads: kv_heads,
        kv_heads,
        head_dim,
        intermediate_size: 0,
        vocab_size: 0,
        sliding_window: None,
        sliding_window_pattern: None,
    }
    .kv_cache_bytes(context, dtype_bytes);
    let chunk = context.min(PREFILL_CHUNK);
    let act = weights_bytes * 3 / 100 + 2 * kv_heads * chunk * context * dtype_bytes;
    MemoryEstimate::new(weights_bytes, kv, act)
}

/// Estimate for a transformer with a full config, whose weights take `weights_bytes` in memory.
///
/// With `opts.split`, the estimate is one rank's: `weights_bytes` is then that rank's share
/// (engine-llm's `Transformer::weight_bytes` after the split, or [`ArchConfig::rank_share`] of
/// the whole), and its KV cache and activations follow [`ArchConfig::rank_view`].
pub fn estimate_for_arch(arch: &ArchConfig, weights_bytes: u64, opts: &EstimateOptions) -> MemoryEstimate {
    let view;
    let arch = match opts.split {
        Some(split) => {
            view = arch.rank_view(split);
            &view
        }
        None => arch,
    };
    let ctx = opts.context_len;
    let kv = arch.kv_cache_bytes(ctx, opts.kv_dtype_bytes);
    let tokens = if arch.kv_heads == 0 {
        ctx
    } else {
        opts.prompt_len.unwrap_or(ctx).min(ctx).min(PREFILL_CHUNK)
    };
    // Prefill's last chunk attends to the prompt so far; a decode step to the whole context.
    let prefill_ctx = opts.prompt_len.unwrap_or(ctx).min(ctx).max(tokens);
    let dt = opts.activation_dtype_bytes;
    let act = if arch.kv_heads == 0 {
        arch.activation_bytes(tokens, ctx, dt)
    } else {
        arch.activation_bytes(tokens, prefill_ctx, dt)
            .max(arch.activation_bytes(1, ctx, dt))
    };
    // Converting to f32 at load through MLX: the stored weights, the f32 copy, and the
    // temporaries of dequantizing the largest matrix (the embedding table) peak together.
    // (GGUF files decode tensor by tensor and peak at their final weights.)
    let load = match opts.stored_weights_bytes {
        Some(stored) if opts.f32_weights => stored + weights_bytes + arch.vocab_size * arch.hidden_size * 4,
        _ => weights_bytes,
    };
    MemoryEstimate::with_load(weights_bytes, kv, act, load)
}

/// Bytes the weights of `variant` take in memory under `opts`.
pub fn weights_in_memory(entry: &ModelEntry, variant: &Variant, opts: &EstimateOptions) -> u64 {
    if opts.cpu_kernels {
        cpu_kernel_weights(entry, variant)
    } else if opts.f32_weights {
        entry.params * 4
    } else if variant.format == WeightFormat::Gguf {
        (variant.file_size_bytes as f64 * gguf_resident_factor(&variant.quantization)) as u64
    } else {
        variant.file_size_bytes
    }
}

/// Bits per weight resident under the int8 CPU kernels of weights stored as `bits`:
/// 4, 5 and 8 bits stay packed with an f32 scale and bias per group (of 32 for GGUF,
/// 64 for MLX's own files); anything else becomes dense f32.
fn cpu_kernel_bpw(bits: u32, group: f64) -> f64 {
    match bits {
        4 | 5 | 8 => bits as f64 + 64.0 / group,
        _ => 32.0,
    }
}

/// Weight bytes under the CPU kernels (see [`EstimateOptions::cpu_kernels`]): the
/// embedding table dense f32 plus the output projection quantized, and the layers' linear
/// weights at their kernel form. GGUF quantization names map to what the loader makes of
/// each ggml type: Q6_K, Q3_K, Q2_K and IQ4 load as 8-bit, Q5 types as 5-bit. For
/// K-quant files of a model whose hidden size is not a multiple of 256, llama.cpp
/// stores the matrices that read the hidden state (all but the MLP's down projection)
/// as Q5_0 (for Q4_K), Q5_1 (for Q5_K) or Q8_0 (for Q6_K); the output is 8-bit then.
/// (SmolLM2-135M: 228 MB resident for Q4_1, 254 MB for Q4_K_M, measured by
/// engine-llm's memory_estimate test.)
fn cpu_kernel_weights(entry: &ModelEntry, variant: &Variant) -> u64 {
    let Some(arch) = entry.config else {
        return entry.params * 4;
    };
    let table = arch.vocab_size * arch.hidden_size;
    let linear = entry.params.saturating_sub(table) as f64;
    // Share of the linear weights that read the hidden state (all but `down`).
    let down = (arch.layers * arch.intermediate_size * arch.hidden_size) as f64;
    let reads_hidden = if linear > 0.0 {
        (1.0 - down / linear).clamp(0.0, 1.0)
    } else {
        1.0
    };
    let fallback = arch.hidden_size % 256 != 0;
    let gguf = |bits: u32| cpu_kernel_bpw(bits, 32.0);
    let q = variant.quantization.to_ascii_lowercase();
    // (bits per weight of the linear layers, of the output projection)
    let (lin, head) = if variant.format != WeightFormat::Gguf {
        let b = cpu_kernel_bpw(variant.bits, 64.0);
        (b, b)
    } else {
        match q.as_str() {
            "q4_0" | "q4_1" => (gguf(4), gguf(8)),
            "q8_0" | "q6_k" | "q3_k" | "q3_k_s" | "q3_k_m" | "q3_k_l" | "q2_k" | "q2_k_s" | "iq4_nl" | "iq4_xs" => {
                (gguf(8), gguf(8))
            }
            "q5_0" | "q5_1" | "q5_k" | "q5_k_s" => (gguf(5), gguf(8)),
            // The _m mix keeps ~15% (attn_v, half of ffn_down) in Q6_K; the fallback
            // (Q5_1) is 5-bit as well.
            "q5_k_m" => (0.85 * gguf(5) + 0.15 * gguf(8), gguf(8)),
            "q4_k" | "q4_k_s" | "q4_k_m" => {
                let k = if q == "q4_k_m" {
                    0.85 * gguf(4) + 0.15 * gguf(8)
                } else {
                    gguf(4)
                };
                if fallback {
                    // Q5_0 where rows read the hidden state; attn_v's Q8_0 share is a
                    // few percent of those under grouped-query attention.
                    (reads_hidden * gguf(5) + (1.0 - reads_hidden) * k, gguf(8))
                } else {
                    (k, gguf(8))
                }
            }
            _ => (32.0, 32.0),
        }
    };
    (table as f64 * (4.0 + head / 8.0) + linear * lin / 8.0) as u64
}

/// Resident bytes ÷ file bytes of a GGUF file of `quantization` (`q4_k_m`) kept
/// quantized: MLX's affine groups of 32 carry an f16 scale and bias (1 bit per
/// weight), where ggml's blocks carry 0.5; types MLX cannot express (Q6_K,
/// Q2_K, Q3_K, IQ4) become 8-bit. The `_m`/`_s` mixes keep ~15% of weights
/// (attn_v, ffn_down halves, the output) in Q6_K; the fallbacks llama.cpp takes
/// for rows not divisible by 256 (Q5_0/Q8_0) land close to the same factors.
pub fn gguf_resident_factor(quantization: &str) -> f64 {
    let q = quantization.to_ascii_lowercase();
    let bpw = |resident: f64, stored: f64| resident / stored;
    match q.as_str() {
        "q4_0" => bpw(20.0, 18.0),
        "q5_0" => bpw(24.0, 22.0),
        "q8_0" => bpw(36.0, 34.0),
        "q4_k" | "q4_k_s" => bpw(160.0, 144.0),
        "q5_k" | "q5_k_s" => bpw(192.0, 176.0),
        // 85% Q4_K/Q5_K (5/6 bits resident) and 15% Q6_K (9 resident, 6.56 stored).
        "q4_k_m" => (0.85 * 5.0 + 0.15 * 9.0) / (0.85 * 4.5 + 0.15 * 6.5625),
        "q5_k_m" => (0.85 * 6.0 + 0.15 * 9.0) / (0.85 * 5.5 + 0.15 * 6.5625),
        "q6_k" => bpw(288.0, 210.0),
        "q3_k" | "q3_k_s" | "q3_k_m" | "q3_k_l" => bpw(288.0, 110.0),
        "q2_k" | "q2_k_s" => bpw(288.0, 84.0),
        "iq4_nl" => bpw(36.0, 18.0),
        "iq4_xs" => bpw(288.0, 136.0),
        _ => 1.0,
    }
}

/// Estimated peak memory of running `variant` of `entry` with the defaults of
/// [`EstimateOptions::new`] (16-bit cache and activations, weights as stored).
pub fn estimate_memory(entry: &ModelEntry, variant: &Variant, context_len: u64) -> MemoryEstimate {
    estimate_with(entry, variant, &EstimateOptions::new(context_len))
}

/// Estimated peak memory of running `variant` of `entry` under `opts`.
///
/// GGUF files run natively keep their scales and norms in f32, so their activations and KV
/// cache are f32 whatever `opts` says; on the f32 path the file's own size is the stored copy.
pub fn estimate_with(entry: &ModelEntry, variant: &Variant, opts: &EstimateOptions) -> MemoryEstimate {
    let mut opts = *opts;
    if variant.format == WeightFormat::Gguf {
        opts.kv_dtype_bytes = opts.kv_dtype_bytes.max(4);
        opts.activation_dtype_bytes = opts.activation_dtype_bytes.max(4);
    }
    // GGUF files are decoded tensor by tensor straight into the final buffers, so only
    // other formats hold both copies while converting.
    if opts.f32_weights && variant.bits < 32 && variant.format != WeightFormat::Gguf {
        opts.stored_weights_bytes.get_or_insert(variant.file_size_bytes);
    }
    let opts = &opts;
    let weights = weights_in_memory(entry, variant, opts);
    let dt = opts.activation_dtype_bytes;
    match entry.model_type {
        ModelType::Diffusion => {
            let Some(d) = entry.diffusion else {
                return MemoryEstimate::new(weights, 0, weights / 10);
            };
            // UNet attention scores + softmax at the largest self-attention, the UNet's conv
            // activations at latent resolution, and the VAE decoder at full resolution in f32
            // (three 128-channel maps plus its mid-block attention over latent pixels).
            let latent = (d.image_size / 8).pow(2);
            let unet_attn = d.cfg_batch * d.attention_heads * d.attention_tokens.pow(2) * dt * 2;
            let unet_conv = d.cfg_batch * latent * 320 * dt * 10;
            let vae = d.image_size.pow(2) * 128 * 4 * 3 + latent.pow(2) * 4;
            MemoryEstimate::new(weights, 0, unet_attn.max(vae) + unet_conv)
        }
        _ => {
            let Some(arch) = entry.config else {
                return MemoryEstimate::new(weights, 0, weights / 10);
            };
            let ctx = opts.context_len.min(entry.context_length);
            let weights = match opts.split {
                Some(split) => (weights as f64 * arch.rank_share(entry.params, split)) as u64,
                None => weights,
            };
            let mut e = estimate_for_arch(
                &arch,
                weights,
                &EstimateOptions {
                    context_len: ctx,
                    ..*opts
                },
            );
            if let Some(v) = entry.vision {
                // The vision encoder runs before the text prefill; its peak only matters when larger.
                let vision = (v.tokens * v.hidden_size * 8 + 2 * v.attention_heads * v.tokens.pow(2)) * dt;
                e = MemoryEstimate::new(e.weights_bytes, e.kv_cache_bytes, e.activations_bytes.max(vision));
            }
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama_8b() -> ArchConfig {
        ArchConfig {
            layers: 32,
            hidden_size: 4096,
            attention_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate_size: 14336,
            vocab_size: 128256,
            sliding_window: None,
            sliding_window_pattern: None,
        }
    }

    #[test]
    fn kv_cache_is_layers_times_heads_times_dim() {
        // Llama 3.1 8B: 128 KiB per token in bf16, the figure usually quoted.
        assert_eq!(llama_8b().kv_cache_bytes(1, 2), 256 * 2 * 32 * 8 * 128 * 2);
        assert_eq!(llama_8b().kv_cache_bytes(8192, 2), 8192 * 131_072);
        // Grows in 256-token steps.
        assert_eq!(llama_8b().kv_cache_bytes(257, 2), llama_8b().kv_cache_bytes(512, 2));
        assert_eq!(llama_8b().kv_cache_bytes(0, 2), 0);
    }

    #[test]
    fn sliding_window_layers_are_capped() {
        let mut g = llama_8b();
        g.layers = 6;
        g.sliding_window = Some(512);
        g.sliding_window_pattern = Some(6);
        // 1 global layer at 4096 + 5 local layers at 512.
        let per = 2 * 8 * 128 * 2;
        assert_eq!(g.kv_cache_bytes(4096, 2), per * (4096 + 5 * 512));
    }

    #[test]
    fn a_rank_holds_its_share() {
        // Llama 3.1 70B: 80 layers, 8 KV heads, 70.6B parameters of which ~2.1B are the
        // (untied) embeddings and LM head.
        let arch = ArchConfig {
            layers: 80,
            hidden_size: 8192,
            attention_heads: 64,
            kv_heads: 8,
            head_dim: 128,
            intermediate_size: 28672,
            vocab_size: 128256,
            sliding_window: None,
            sliding_window_pattern: None,
        };
        let total = 70_553_706_496u64;
        let embed = 2 * arch.vocab_size * arch.hidden_size;
        assert!(arch.layer_params() + embed <= total && total - arch.layer_params() - embed < total / 1000);
        let tp = RankSplit {
            ranks: 2,
            mode: SplitKind::Tensor,
        };
        let pp = RankSplit {
            ranks: 2,
            mode: SplitKind::Pipeline,
        };
        let half = (total - arch.layer_params() / 2) as f64 / total as f64;
        assert!((arch.rank_share(total, tp) - half).abs() < 1e-9);
        assert!((arch.rank_share(total, pp) - half).abs() < 1e-9);
        // KV cache: half the heads on every layer, or every head on half the layers.
        let bf16 = 140_000_000_000;
        let whole = estimate_for_arch(&arch, bf16, &EstimateOptions::new(8192));
        for split in [tp, pp] {
            let o = EstimateOptions {
                split: Some(split),
                ..EstimateOptions::new(8192)
            };
            let e = estimate_for_arch(&arch, (bf16 as f64 * arch.rank_share(total, split)) as u64, &o);
            assert_eq!(e.kv_cache_bytes, whole.kv_cache_bytes / 2, "{split:?}");
            assert!(
                e.total_bytes < whole.total_bytes * 53 / 100,
                "{split:?}: {e:?} vs {whole:?}"
            );
        }
        // Odd layer counts: the first rank takes the extra layer.
        let mut odd = arch;
        odd.layers = 3;
        assert_eq!(odd.rank_view(pp).layers, 2);
        // Fewer KV heads than ranks: each rank keeps one.
        assert_eq!(
            arch.rank_view(RankSplit {
                ranks: 16,
                mode: SplitKind::Tensor
            })
            .kv_heads,
            1
        );
    }

    #[test]
    fn config_estimate_adds_up() {
        let e = estimate_for_config(30, 3, 64, 98_362_432, 512, 2);
        assert_eq!(e.kv_cache_bytes, 2 * 30 * 3 * 64 * 512 * 2);
        assert_eq!(e.total_bytes, e.weights_bytes + e.kv_cache_bytes + e.activations_bytes);
        assert!(e.activations_bytes > 0 && e.activations_bytes < e.weights_bytes / 5);
    }
}
