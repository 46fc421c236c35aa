//! The decoder-only transformer every architecture here is a variant of:
//! attention with GQA + RoPE + KV cache, a gated MLP, RMS norms. Each
//! architecture file sets the [`ArchFeatures`] that make it itself.

use crate::cache::{KeyOrder, KvCache, KvView, NewKv};
use crate::config::LlmConfig;
use engine_mlx::distributed::Group;
use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask, DecodePositions, DecodeSlot};
use engine_mlx::nn::{join, Embedding, Linear, RmsNorm, Rope, RopeScaling, ShardDim};
use engine_mlx::quant::{fused_matvec, FusedEpilogue};
use engine_mlx::{where_, Array, Dtype, Result, WeightMap};
use std::sync::Arc;

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (Llama, Qwen, Mistral, Phi-3).
    Silu,
    /// GELU, tanh approximation (Gemma).
    GeluApprox,
}

/// What distinguishes one architecture from the plain Llama layout.
#[derive(Debug, Clone)]
pub struct ArchFeatures {
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// RMS norm on queries and keys per head (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norm weights are stored as `scale - 1` (Gemma).
    pub norm_offset: bool,
    /// Extra norms after attention and around the MLP (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Embeddings are multiplied by √hidden (Gemma).
    pub embed_scale: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Softmax scale of attention.
    pub attn_scale: f32,
    /// `tanh` soft-capping of attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `tanh` soft-capping of the final logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Per layer: sliding window size, or `None` for full attention.
    pub layer_windows: Vec<Option<usize>>,
    /// Per layer: RoPE base (Gemma 3 uses a smaller one on local layers).
    pub layer_rope_base: Vec<f32>,
}

impl ArchFeatures {
    /// The plain Llama layout for a config.
    pub fn llama(cfg: &LlmConfig) -> ArchFeatures {
        ArchFeatures {
            qkv_bias: false,
            qk_norm: false,
            norm_offset: false,
            sandwich_norms: false,
            embed_scale: false,
            activation: Activation::Silu,
            attn_scale: (cfg.head_dim as f32).powf(-0.5),
            attn_softcap: None,
            final_softcap: None,
            layer_windows: vec![None; cfg.num_layers],
            layer_rope_base: vec![cfg.rope_theta; cfg.num_layers],
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    rope: Rope,
    window: Option<usize>,
    /// Query and key/value heads this rank computes (all of them unless
    /// the model is split across ranks).
    heads: usize,
    kv_heads: usize,
    /// Under the int8 CPU kernels: q, k and v fused into one layer (they are
    /// views of it), so each step rounds x once and makes one kernel call.
    /// Dropped whenever q, k or v change.
    qkv: Option<Linear>,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    /// gate and up fused, as [`Attention::qkv`].
    gate_up: Option<Linear>,
}

struct Layer {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    /// Gemma's pre/post feed-forward norms (with `sandwich_norms`).
    ff_norms: Option<(RmsNorm, RmsNorm)>,
}

impl Layer {
    /// The seven linear layers, in checkpoint order, with their names under
    /// `model.layers.N.`.
    fn linears_mut(&mut self) -> [(&mut Linear, &'static str); 7] {
        // Whoever changes a layer invalidates the fused forms built from it.
        self.attn.qkv = None;
        self.mlp.gate_up = None;
        [
            (&mut self.attn.q, "self_attn.q_proj"),
            (&mut self.attn.k, "self_attn.k_proj"),
            (&mut self.attn.v, "self_attn.v_proj"),
            (&mut self.attn.o, "self_attn.o_proj"),
            (&mut self.mlp.gate, "mlp.gate_proj"),
            (&mut self.mlp.up, "mlp.up_proj"),
            (&mut self.mlp.down, "mlp.down_proj"),
        ]
    }

    /// Every weight array of the layer.
    fn arrays(&self) -> Vec<&Array> {
        let mut v = Vec::new();
        for lin in [
            &self.attn.q,
            &self.attn.k,
            &self.attn.v,
            &self.attn.o,
            &self.mlp.gate,
            &self.mlp.up,
            &self.mlp.down,
        ] {
            v.extend(lin.arrays());
        }
        v.push(&self.input_norm.weight);
        v.push(&self.post_attn_norm.weight);
        if let Some((a, b)) = &self.ff_norms {
            v.extend([&a.weight, &b.weight]);
        }
        v.extend(
            self.attn
                .q_norm
                .iter()
                .chain(self.attn.k_norm.iter())
                .map(|n| &n.weight),
        );
        v
    }
}

/// A loaded decoder-only transformer.
pub struct Transformer {
    cfg: LlmConfig,
    features: ArchFeatures,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    /// With tied embeddings under `DtypePolicy::CpuKernels`: the table kept
    /// quantized as the output projection (the int8 kernels read it as
    /// stored), beside the dense copy the lookups use.
    tied_head: Option<Linear>,
    /// The ranks this model is split across (tensor parallelism): each holds
    /// a share of every layer's heads and MLP features, and the attention
    /// output and MLP down projections are summed over the group.
    group: Option<Arc<Group>>,
    /// The ranks this model's layers are split across (pipeline
    /// parallelism): `layers` holds only this rank's contiguous range.
    stages: Option<Arc<Group>>,
    /// Under the int8 CPU kernels (set by [`Transformer::convert_for_cpu`]):
    /// attention through `cache_attention`, whose bits do not depend on how
    /// a prompt is chunked or batched — the int8 rounding of activations
    /// would turn a last-bit difference into a different token. Exact
    /// policies keep MLX's attention, and with it the parity tolerance
    /// against mlx-lm (1e-4 on logits).
    invariant_attention: bool,
}

/// How a model is split across the ranks of a distributed group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    /// Every rank holds a share of every layer (see [`Transformer::shard`]).
    Tensor,
    /// Every rank holds a contiguous range of layers (see
    /// [`Transformer::pipeline`]).
    Pipeline,
}

/// A model split across ranks: the group and how.
#[derive(Debug, Clone)]
pub struct Split {
    /// The ranks.
    pub group: Arc<Group>,
    /// How the model is divided among them.
    pub mode: SplitMode,
}

/// Per-call masking and positions: causal, plus optional left padding per
/// row, and the rotary positions when they are not the cache offset.
#[derive(Debug, Clone, Default)]
pub struct MaskSpec {
    /// Padding positions at the start of each batch row's full sequence.
    pub left_padding: Option<Vec<usize>>,
    /// Rotary positions (temporal, height, width) of each of this call's
    /// tokens: M-RoPE (Qwen2-VL) over a prompt with images.
    pub mrope_positions: Option<Vec<[i32; 3]>>,
    /// Added to the cache offset to give the rotary position otherwise
    /// (M-RoPE: text after an image continues from the image's largest
    /// position, which is less than its length).
    pub position_delta: i64,
    /// Spans of absolute positions `[start, end)` whose positions also see
    /// each other's later positions (Gemma 3's image tokens); sliding windows
    /// still apply. A call's queries must not end inside a span.
    pub bidirectional: Vec<(usize, usize)>,
}

impl Transformer {
    /// Loads from HF-named weights (after the architecture's sanitize step).
    pub fn load(cfg: LlmConfig, features: ArchFeatures, w: &WeightMap) -> Result<Transformer> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let norm = |p: &str, dim: usize| {
            if features.norm_offset {
                RmsNorm::load_offset(w, p, dim, cfg.rms_norm_eps)
            } else {
                RmsNorm::load(w, p, dim, cfg.rms_norm_eps)
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let a = join(&p, "self_attn");
            let m = join(&p, "mlp");
            let scaling = if features.layer_rope_base[i] == cfg.rope_theta {
                cfg.rope_scaling.clone()
            } else {
                RopeScaling::None
            };
            let attn = Attention {
                q: Linear::load(w, &join(&a, "q_proj"), d, nh * hd, features.qkv_bias)?,
                k: Linear::load(w, &join(&a, "k_proj"), d, nkv * hd, features.qkv_bias)?,
                v: Linear::load(w, &join(&a, "v_proj"), d, nkv * hd, features.qkv_bias)?,
                o: Linear::load(w, &join(&a, "o_proj"), nh * hd, d, false)?,
                q_norm: features.qk_norm.then(|| norm(&join(&a, "q_norm"), hd)).transpose()?,
                k_norm: features.qk_norm.then(|| norm(&join(&a, "k_norm"), hd)).transpose()?,
                rope: Rope::new(
                    cfg.rope_dims as i32,
                    cfg.rope_traditional,
                    features.layer_rope_base[i],
                    &scaling,
                )?,
                window: features.layer_windows[i],
                heads: nh,
                kv_heads: nkv,
                qkv: None,
            };
            let mlp = Mlp {
                gate: Linear::load(w, &join(&m, "gate_proj"), d, cfg.intermediate_size, false)?,
                up: Linear::load(w, &join(&m, "up_proj"), d, cfg.intermediate_size, false)?,
                down: Linear::load(w, &join(&m, "down_proj"), cfg.intermediate_size, d, false)?,
                gate_up: None,
            };
            let ff_norms = if features.sandwich_norms {
                Some((
                    norm(&join(&p, "pre_feedforward_layernorm"), d)?,
                    norm(&join(&p, "post_feedforward_layernorm"), d)?,
                ))
            } else {
                None
            };
            layers.push(Layer {
                attn,
                mlp,
                input_norm: norm(&join(&p, "input_layernorm"), d)?,
                post_attn_norm: norm(&join(&p, "post_attention_layernorm"), d)?,
                ff_norms,
            });
        }
        let embed = Embedding::load(w, "model.embed_tokens", cfg.vocab_size, d)?;
        let lm_head = if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            None
        } else {
            Some(Linear::load(w, "lm_head", d, cfg.vocab_size, false)?)
        };
        let norm = norm("model.norm", d)?;
        Ok(Transformer {
            cfg,
            features,
            embed,
            layers,
            norm,
            lm_head,
            tied_head: None,
            group: None,
            stages: None,
            invariant_attention: false,
        })
    }

    /// Splits the model as `split` says (a group of one leaves it whole).
    pub fn split(&mut self, split: &Split) -> Result<()> {
        if self.group.is_some() || self.stages.is_some() {
            return Err(engine_mlx::Error::Invalid("the model is already split".into()));
        }
        match split.mode {
            SplitMode::Tensor => self.shard(split.group.clone()),
            SplitMode::Pipeline => self.pipeline(split.group.clone()),
        }
    }

    /// Splits the layers across the ranks of `group` (pipeline parallelism):
    /// rank r keeps the r-th of `size` contiguous, near-equal ranges of
    /// layers (the first ranks take one more when they do not divide). Each
    /// rank receives the hidden states from the rank before it, runs its
    /// layers and sends them on; the last rank's output is gathered so that
    /// every rank computes the same logits (the embeddings, final norm and
    /// LM head stay on every rank).
    pub fn pipeline(&mut self, group: Arc<Group>) -> Result<()> {
        let (rank, n) = (group.rank(), group.size());
        if n == 1 {
            return Ok(());
        }
        let total = self.layers.len();
        if total < n {
            return Err(engine_mlx::Error::Invalid(format!(
                "this {} model cannot be split across {n} ranks by layers: it has only {total}",
                self.cfg.model_type
            )));
        }
        let (base, extra) = (total / n, total % n);
        let start = rank * base + rank.min(extra);
        let count = base + usize::from(rank < extra);
        self.layers = self.layers.drain(start..start + count).collect();
        self.stages = Some(group);
        Ok(())
    }

    /// Splits the model across the ranks of `group` (Megatron-style tensor
    /// parallelism): this rank keeps its share of the query and key/value
    /// heads (q, k, v split by outputs, o by inputs) and of the MLP features
    /// (gate and up by outputs, down by inputs); the embeddings, norms and
    /// LM head stay whole. Every rank then computes the same logits, summing
    /// two partial results per layer over the group. With fewer key/value
    /// heads than ranks (GQA, MQA), each rank keeps the one key/value head its
    /// query heads attend with, replicated across the ranks that share it.
    pub fn shard(&mut self, group: Arc<Group>) -> Result<()> {
        if self.stages.is_some() {
            return Err(engine_mlx::Error::Invalid(
                "the model is already split by layers".into(),
            ));
        }
        let (rank, n) = (group.rank(), group.size());
        if n == 1 {
            return Ok(());
        }
        let cfg = &self.cfg;
        for (what, count) in [
            ("attention heads", cfg.num_heads),
            ("MLP features (intermediate_size)", cfg.intermediate_size),
        ] {
            if !count.is_multiple_of(n) {
                return Err(engine_mlx::Error::Invalid(format!(
                    "this {} model cannot be split across {n} ranks: its {count} {what} do not divide by {n}",
                    cfg.model_type
                )));
            }
        }
        let kv = cfg.num_kv_heads;
        // Key/value heads split evenly, or (fewer than ranks) one kept per rank:
        // rank r's query heads all attend with head r·kv/n.
        let (kv_part, kv_parts) = if kv.is_multiple_of(n) {
            (rank, n)
        } else if n.is_multiple_of(kv) {
            (rank * kv / n, kv)
        } else {
            return Err(engine_mlx::Error::Invalid(format!(
                "this {} model cannot be split across {n} ranks: its {kv} key/value heads neither divide by {n} \
                 nor divide {n}",
                cfg.model_type
            )));
        };
        let dense = self.embed_dtype();
        for layer in &mut self.layers {
            (layer.attn.qkv, layer.mlp.gate_up) = (None, None);
            let a = &mut layer.attn;
            a.q = a.q.shard(ShardDim::Outputs, rank, n, dense)?;
            for l in [&mut a.k, &mut a.v] {
                *l = l.shard(ShardDim::Outputs, kv_part, kv_parts, dense)?;
            }
            a.o = a.o.shard(ShardDim::Inputs, rank, n, dense)?;
            a.heads = self.cfg.num_heads / n;
            a.kv_heads = kv / kv_parts;
            let m = &mut layer.mlp;
            m.gate = m.gate.shard(ShardDim::Outputs, rank, n, dense)?;
            m.up = m.up.shard(ShardDim::Outputs, rank, n, dense)?;
            m.down = m.down.shard(ShardDim::Inputs, rank, n, dense)?;
        }
        self.group = Some(group);
        self.eval_weights()
    }

    /// Sums a row-parallel layer's partial output over the ranks.
    fn reduce(&self, partial: Array) -> Result<Array> {
        match &self.group {
            Some(g) => g.all_sum(&partial),
            None => Ok(partial),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// The dtype activations run in (the final norm's weight dtype).
    pub fn embed_dtype(&self) -> Dtype {
        self.norm.weight.dtype()
    }

    /// The architecture features.
    pub fn features(&self) -> &ArchFeatures {
        &self.features
    }

    /// Fresh caches, one per layer (sliding where the layer has a window).
    pub fn new_cache(&self) -> Vec<KvCache> {
        self.layers
            .iter()
            .map(|l| l.attn.window.map_or_else(KvCache::new, KvCache::sliding))
            .collect()
    }

    /// Fresh caches that keep every position, window layers included (their
    /// window is applied by the mask): what batching needs, since rows are
    /// merged, split and trimmed by slot.
    pub fn new_growing_cache(&self) -> Vec<KvCache> {
        self.layers.iter().map(|_| KvCache::new()).collect()
    }

    /// Whether any weight is quantized.
    pub fn is_quantized(&self) -> bool {
        self.layers.iter().any(|l| l.attn.q.is_quantized()) || matches!(self.embed, Embedding::Quantized(_))
    }

    /// The quantization of the attention projections, if quantized.
    pub fn quantization(&self) -> Option<engine_mlx::quant::QuantSpec> {
        self.layers.first()?.attn.q.quant_spec()
    }

    /// Converts every weight to dense `dtype` (the CPU policy: f32 + BLAS),
    /// lazily: [`Transformer::eval_weights`] materialises the result.
    pub fn convert(&mut self, dtype: Dtype) -> Result<()> {
        self.convert_with(dtype, false, false)
    }

    /// [`crate::DtypePolicy::CpuKernels`]: 4-, 5- and 8-bit quantized linear
    /// layers stay as stored (with float32 scales) for engine-mlx's quantized
    /// CPU kernels; everything else, the embedding table included, becomes
    /// dense float32 (matmuls through OpenBLAS). With `eager`, each layer is
    /// materialised as soon as it is converted, so the stored form of only
    /// one layer at a time coexists with the converted weights (the load
    /// peaks near the final size); otherwise lazy, as [`Transformer::convert`].
    pub fn convert_for_cpu(&mut self, eager: bool) -> Result<()> {
        self.convert_with(Dtype::Float32, true, eager)
    }

    fn convert_with(&mut self, dtype: Dtype, keep_quantized: bool, eager: bool) -> Result<()> {
        self.invariant_attention = keep_quantized;
        let lin = |l: &mut Linear| -> Result<()> {
            *l = if keep_quantized {
                l.for_cpu_kernels(dtype)?
            } else {
                l.dequantized(dtype)?
            };
            Ok(())
        };
        for layer in &mut self.layers {
            for (l, _) in layer.linears_mut() {
                lin(l)?;
            }
            for n in [&mut layer.input_norm, &mut layer.post_attn_norm] {
                *n = n.cast(dtype)?;
            }
            if let Some((a, b)) = &mut layer.ff_norms {
                *a = a.cast(dtype)?;
                *b = b.cast(dtype)?;
            }
            for n in [&mut layer.attn.q_norm, &mut layer.attn.k_norm].into_iter().flatten() {
                *n = n.cast(dtype)?;
            }
            if eager {
                engine_mlx::eval(layer.arrays())?;
                if keep_quantized {
                    let (a, m) = (&mut layer.attn, &mut layer.mlp);
                    a.qkv = Linear::fuse_outputs(&mut [&mut a.q, &mut a.k, &mut a.v])?;
                    m.gate_up = Linear::fuse_outputs(&mut [&mut m.gate, &mut m.up])?;
                }
            }
        }
        // The lookups read a dense f32 table also under the quantized CPU
        // kernels (kept quantized, MLX's dequantize of the gathered rows gave
        // wrong rows past the first of a batch); a tied output projection
        // keeps the quantized table for the kernels (1/6 the bytes per token).
        self.tied_head = None;
        if let (true, None, Embedding::Quantized(q)) = (keep_quantized, &self.lm_head, &self.embed) {
            let head = Linear::Quantized {
                q: q.clone(),
                bias: None,
            };
            if head.is_quantized() && engine_mlx::quant::cpu_kernel_supports(q.spec) {
                self.tied_head = Some(head.for_cpu_kernels(dtype)?);
            }
        }
        self.embed = if eager {
            self.embed.dequantized_now(dtype)?
        } else {
            self.embed.dequantized(dtype)?
        };
        self.norm = self.norm.cast(dtype)?;
        if let Some(h) = &mut self.lm_head {
            lin(h)?;
        }
        Ok(())
    }

    /// Quantizes every dense linear layer, the embedding table and the LM head
    /// with MLX's affine `spec`, as `mlx_lm.convert -q` does (norms stay dense);
    /// layers already quantized stay as they are. Lazy, as [`Transformer::convert`].
    pub fn quantize(&mut self, spec: engine_mlx::quant::QuantSpec) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            for (l, n) in layer.linears_mut() {
                *l = l.quantized(spec, &format!("{p}.{n}"))?;
            }
        }
        self.embed = self.embed.quantized(spec, "model.embed_tokens")?;
        if let Some(h) = &mut self.lm_head {
            *h = h.quantized(spec, "lm_head")?;
        }
        Ok(())
    }

    /// Applies a LoRA adapter unfused (each adapted layer computes its
    /// low-rank update beside the base weight). Every module it names must
    /// exist with matching dimensions, else the error names the module and
    /// both shapes.
    pub fn apply_adapter(&mut self, adapter: &crate::adapter::Adapter) -> std::result::Result<(), String> {
        for (module, l) in &adapter.layers {
            let target = module
                .strip_prefix("model.layers.")
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(i, part)| Some((i.parse::<usize>().ok()?, part)));
            let linear = match target {
                Some((i, part)) if i < self.layers.len() => self.layers[i]
                    .linears_mut()
                    .into_iter()
                    .find(|(_, n)| *n == part)
                    .map(|(l, _)| l),
                _ if module == "lm_head" => self.lm_head.as_mut(),
                _ => None,
            };
            let Some(linear) = linear else {
                return Err(format!(
                    "{}: the adapter targets `{module}`, which this {}-layer {} model has no adaptable linear layer for; is it for another base model?",
                    adapter.path.display(),
                    self.layers.len(),
                    self.config().model_type
                ));
            };
            let (inp, out) = linear.dims();
            let (a, b) = (l.a.shape(), l.b.shape());
            if a.len() != 2 || b.len() != 2 || a[0] != inp || b[1] != out || a[1] != b[0] {
                return Err(format!(
                    "{}: `{module}` is ({inp} in, {out} out), so its LoRA needs A of shape ({inp}, r) and B of (r, {out}); the adapter has A {a:?} and B {b:?} — it was trained for another base model",
                    adapter.path.display()
                ));
            }
            *linear = match &l.magnitude {
                Some(m) => linear
                    .clone()
                    .with_dora(l.a.clone(), l.b.clone(), l.scale, m)
                    .map_err(|e| format!("{}: `{module}`: {e}", adapter.path.display()))?,
                None => linear.clone().with_lora(l.a.clone(), l.b.clone(), l.scale),
            };
        }
        Ok(())
    }

    /// Folds every applied adapter into the weights (`W + scale · (A B)ᵀ`).
    pub fn fuse_adapters(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for (l, _) in layer.linears_mut() {
                *l = l.fused()?;
            }
        }
        if let Some(h) = &mut self.lm_head {
            *h = h.fused()?;
        }
        self.eval_weights()
    }

    /// Materialises all weights (so loading cost is paid once, up front).
    pub fn eval_weights(&self) -> Result<()> {
        engine_mlx::eval(self.arrays())
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = self.embed.arrays();
        for l in &self.layers {
            v.extend(l.arrays());
        }
        v.push(&self.norm.weight);
        for h in self.lm_head.iter().chain(self.tied_head.iter()) {
            v.extend(h.arrays());
        }
        v
    }

    /// Whether a position's outputs keep their bits however a prompt is
    /// split into chunks (under the int8 CPU kernels, see
    /// [`Transformer::convert_for_cpu`]).
    pub fn chunking_invariant(&self) -> bool {
        self.invariant_attention
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }

    /// Runs token ids (B, L) through the model, updating `cache`, and returns
    /// logits (B, L, vocab) — or only the last position's when `last_only`.
    pub fn forward(&self, ids: &Array, cache: &mut [KvCache], mask: &MaskSpec, last_only: bool) -> Result<Array> {
        self.forward_embeds(self.embed(ids)?, cache, mask, last_only)
    }

    /// The input embeddings (B, L, hidden) of token ids, scaled as the
    /// architecture does before the first layer (Gemma's √hidden). A
    /// vision-language model scatters its image features into these.
    pub fn embed(&self, ids: &Array) -> Result<Array> {
        let h = self.embed.forward(ids)?;
        if !self.features.embed_scale {
            return Ok(h);
        }
        // Gemma rounds √hidden through bf16 before scaling.
        let s = Array::scalar((self.cfg.hidden_size as f64).sqrt(), Dtype::Bfloat16)?.astype(h.dtype())?;
        h.multiply(&s)
    }

    /// [`Self::forward`] from input embeddings (B, L, hidden) instead of ids.
    pub fn forward_embeds(&self, h: Array, cache: &mut [KvCache], mask: &MaskSpec, last_only: bool) -> Result<Array> {
        let mut h = self.hidden(h, cache, mask)?;
        if last_only && h.dim(1) > 1 {
            let l = h.dim(1) as i32;
            h = h.slice_axis(1, l - 1, l)?;
        }
        self.head(&h)
    }

    /// Runs input embeddings (B, L, hidden) through every layer, updating
    /// `cache`; returns the last layer's hidden states (B, L, hidden), before
    /// the final norm (see [`Self::head`]).
    pub fn hidden(&self, h: Array, cache: &mut [KvCache], mask: &MaskSpec) -> Result<Array> {
        let mut h = h;
        let tables = match &mask.mrope_positions {
            Some(p) => Some(self.mrope_tables(p, h.dtype())?),
            None => None,
        };
        // Rows of different lengths (left padding) each rotate from their own
        // position: the slot minus the row's padding.
        let (mut row_offsets, mut decode_rows) = (None, None);
        if let (Some(pads), Some(c)) = (&mask.left_padding, cache.first()) {
            if tables.is_none() {
                let base = c.offset() as i64 + mask.position_delta;
                let offs: Vec<i32> = pads.iter().map(|&p| (base - p as i64) as i32).collect();
                row_offsets = Some(Array::from_slice(&offs, &[offs.len()])?);
                // [position, first slot attended] per row, for the fused decode attention.
                let rows: Vec<i32> = offs.iter().zip(pads).flat_map(|(&o, &p)| [o, p as i32]).collect();
                decode_rows = Some(Array::from_slice(&rows, &[pads.len(), 2])?);
            }
        }
        let mut step = Step {
            spec: mask,
            tables,
            row_offsets,
            decode_rows,
            masks: Vec::new(),
        };
        if let Some(g) = self.stages.as_ref().filter(|g| g.rank() > 0) {
            // The hidden states come from the rank before: same shape and dtype.
            h = g.recv(&h.shape(), h.dtype(), g.rank() - 1)?;
        }
        // A layer's last residual add and the next layer's input norm run as
        // one kernel where they can: `normed` carries the latter across.
        let mut normed = None;
        for (i, (layer, c)) in self.layers.iter().zip(cache.iter_mut()).enumerate() {
            let next = self.layers.get(i + 1).map(|l| &l.input_norm);
            (h, normed) = self.layer_forward(layer, &h, normed.take(), next, c, &mut step)?;
        }
        if let Some(g) = &self.stages {
            let (r, n) = (g.rank(), g.size() as i32);
            if r + 1 < g.size() {
                h = g.send(&h, r + 1)?;
            }
            // Every rank takes the last rank's rows; gathering keeps the
            // sends in each rank's graph.
            let b = h.dim(0) as i32;
            h = g.all_gather(&h)?.slice_axis(0, (n - 1) * b, n * b)?;
        }
        Ok(h)
    }

    /// Logits (…, vocab) of last-layer hidden states: final norm, LM head
    /// and soft-capping.
    pub fn head(&self, h: &Array) -> Result<Array> {
        let h = self.norm.forward(h)?;
        let mut logits = match (&self.lm_head, &self.tied_head) {
            (Some(head), _) | (None, Some(head)) => head.forward(&h)?,
            (None, None) => self.embed.as_linear(&h)?,
        };
        if let Some(cap) = self.features.final_softcap {
            logits = logits.mul_scalar(1.0 / cap as f64)?.tanh()?.mul_scalar(cap as f64)?;
        }
        Ok(logits)
    }

    /// cos/sin tables (L, head_dim) for M-RoPE positions: frequency `j`
    /// follows the temporal, height or width position by `mrope_section`.
    fn mrope_tables(&self, positions: &[[i32; 3]], dtype: Dtype) -> Result<(Array, Array)> {
        let sections = self.cfg.mrope_section.as_deref().unwrap_or(&[]);
        let rd = self.cfg.rope_dims;
        if sections.iter().sum::<usize>() * 2 != rd || rd != self.cfg.head_dim {
            return Err(engine_mlx::Error::Invalid(
                "M-RoPE positions need `mrope_section` covering the whole head".into(),
            ));
        }
        let axis: Vec<usize> = (0..3).flat_map(|s| std::iter::repeat_n(s, sections[s])).collect();
        let theta = self.cfg.rope_theta as f64;
        let inv: Vec<f64> = (0..rd / 2).map(|j| theta.powf(-((2 * j) as f64) / rd as f64)).collect();
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions.len() * rd),
            Vec::with_capacity(positions.len() * rd),
        );
        for p in positions {
            let angles: Vec<f64> = (0..rd / 2).map(|j| p[axis[j]] as f64 * inv[j]).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        let shape = [1, 1, positions.len(), rd];
        Ok((
            Array::from_slice(&cos, &shape)?.astype(dtype)?,
            Array::from_slice(&sin, &shape)?.astype(dtype)?,
        ))
    }

    /// One layer on `x`; `normed`, where the layer before computed it, is
    /// `layer.input_norm(x)`. Returns the layer's output and, where it fused
    /// its last residual add with `next` (the next layer's input norm), that
    /// norm of the output.
    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Array,
        normed: Option<Array>,
        next: Option<&RmsNorm>,
        cache: &mut KvCache,
        step: &mut Step<'_>,
    ) -> Result<(Array, Option<Array>)> {
        if layer.ff_norms.is_none() {
            if let Some(h) = self.fused_layer(layer, x, cache, step)? {
                return Ok((h, None));
            }
        }
        let normed = match normed {
            Some(n) => n,
            None => layer.input_norm.forward(x)?,
        };
        let heads = self.attention_heads(&layer.attn, &normed, cache, step)?;
        match &layer.ff_norms {
            Some((pre, post)) => {
                let r = self.reduce(layer.attn.o.forward(&heads)?)?;
                let h = x.add(&layer.post_attn_norm.forward(&r)?)?;
                let m = self.mlp(&layer.mlp, &pre.forward(&h)?)?;
                Ok((h.add(&post.forward(&m)?)?, None))
            }
            None => {
                // Each residual add with the norm after it: one kernel a pair on
                // the GPU. (MLX's `addmm`, the add in the matmul's epilogue, was
                // slower for a GPU decode step: 1B bfloat16 517–651 vs 723–762
                // tok/s with packed projections, H100, same call.)
                let o = self.reduce(layer.attn.o.forward(&heads)?)?;
                let (h, n) = layer.post_attn_norm.forward_residual(&o, x)?;
                let m = &layer.mlp;
                let d = self.reduce(m.down.forward(&self.mlp_hidden(m, &n)?)?)?;
                match next {
                    Some(norm) => {
                        let (out, n) = norm.forward_residual(&d, &h)?;
                        Ok((out, Some(n)))
                    }
                    None => Ok((h.add(&d)?, None)),
                }
            }
        }
    }

    /// Packs each layer's dense q/k/v and gate/up projections into one matrix
    /// each, the parts becoming views of it (no second copy): a GPU decode step
    /// then runs one matvec where it ran three and two, and the kernels for
    /// packed projections read their outputs in place
    /// (`fast::decode_attention_packed_in_place`, `fast::swiglu_packed`).
    /// Quantized layers and adapters are left as they are
    /// (`Linear::fuse_dense_outputs`).
    pub fn pack_projections(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            let (a, m) = (&mut layer.attn, &mut layer.mlp);
            if a.qkv.is_none() {
                a.qkv = Linear::fuse_dense_outputs(&mut [&mut a.q, &mut a.k, &mut a.v])?;
            }
            if m.gate_up.is_none() {
                m.gate_up = Linear::fuse_dense_outputs(&mut [&mut m.gate, &mut m.up])?;
            }
        }
        Ok(())
    }

    /// A pre-norm layer through the fused matvecs (`fused_matvec`: on the GPU
    /// for decode steps on 4/8-bit or dense weights, on the CPU for any
    /// length under the int8 CPU kernels): norm + q/k/v in one kernel, the
    /// output projection + residual in one, norm + gate/up + SwiGLU in one,
    /// the down projection + residual in one — 4 kernels where MLX's ops take
    /// 13, since the host's cost per op bounds decode on a fast GPU and
    /// shares the cores with the kernels on a CPU. On the CPU every length
    /// takes it, so prefill chunks and decode steps compute a token alike
    /// (the int8 rounding makes bit-identity matter). `None` where the kernels
    /// do not apply (dense weights on the CPU, LoRA, longer inputs on the GPU, matrices
    /// of mixed formats on the GPU): the caller takes the composed path. Under tensor parallelism
    /// the partial outputs are summed before the residual, so those two stay
    /// composed.
    fn fused_layer(&self, layer: &Layer, x: &Array, cache: &mut KvCache, step: &mut Step<'_>) -> Result<Option<Array>> {
        let (a, m) = (&layer.attn, &layer.mlp);
        let (Some(q), Some(k), Some(v)) = (a.q.fused_weight(), a.k.fused_weight(), a.v.fused_weight()) else {
            return Ok(None);
        };
        let norm = Some((&layer.input_norm.weight, layer.input_norm.eps));
        // A decode step's q, k, v come out as (B, heads, 1, head_dim).
        let s = x.shape_i32();
        let heads_first = s.len() == 3 && s[1] == 1;
        let hd = self.cfg.head_dim as i32;
        let shape = |n: usize| [s[0], n as i32, 1, hd];
        let shapes = [shape(a.heads), shape(a.kv_heads), shape(a.kv_heads)];
        let out_shapes: Vec<&[i32]> = if heads_first {
            shapes.iter().map(|s| &s[..]).collect()
        } else {
            vec![]
        };
        let Some(qkv) = fused_matvec(x, &[q, k, v], norm, None, FusedEpilogue::Split, &out_shapes)? else {
            return Ok(None);
        };
        let [q, k, v]: [Array; 3] = qkv
            .try_into()
            .map_err(|_| engine_mlx::Error::Invalid("fused q/k/v: three outputs expected".into()))?;
        let q0 = q.clone();
        let out = self.attend(a, q, k, v, cache, step, heads_first)?;
        let whole = self.group.is_none();
        // `x` may be the attention output (B, heads, 1, head_dim): the fused
        // kernel reads it as rows of K; MLX's ops need it flat.
        let with_residual = |l: &Linear, x: &Array, residual: &Array| -> Result<Array> {
            if let Some(w) = l.fused_weight().filter(|_| whole) {
                let shape = residual.shape_i32();
                if let Some(mut y) = fused_matvec(x, &[w], None, Some(residual), FusedEpilogue::Split, &[&shape])? {
                    return Ok(y.remove(0));
                }
            }
            let x = if x.ndim() == 4 {
                x.transpose(&[0, 2, 1, 3])?.reshape(&[s[0], s[1], -1])?
            } else {
                x.clone()
            };
            residual.add(&self.reduce(l.forward(&x)?)?)
        };
        let h = with_residual(&a.o, &out, x)?;
        let post = &layer.post_attn_norm;
        let gated = match (m.gate.fused_weight(), m.up.fused_weight(), self.features.activation) {
            (Some(g), Some(u), Activation::Silu) if g.1.is_none() && u.1.is_none() => fused_matvec(
                &h,
                &[g, u],
                Some((&post.weight, post.eps)),
                None,
                FusedEpilogue::SwiGlu,
                &[],
            )?,
            _ => None,
        };
        let Some(g) = gated.and_then(|mut g| g.pop()) else {
            return Ok(Some(h.add(&self.mlp(m, &post.forward(&h)?)?)?));
        };
        let y = with_residual(&m.down, &g, &h)?;
        // The layer's kernels as one chain, each launched while the one before
        // it drains (it declines, changing nothing, where a stage is not ours).
        engine_mlx::fast::decode_chain(&[&q0, &out, &h, &g, &y])?;
        Ok(Some(y))
    }

    fn mlp(&self, m: &Mlp, x: &Array) -> Result<Array> {
        self.reduce(m.down.forward(&self.mlp_hidden(m, x)?)?)
    }

    /// The feed-forward's activation before the down projection.
    fn mlp_hidden(&self, m: &Mlp, x: &Array) -> Result<Array> {
        let (g, u) = match &m.gate_up {
            Some(gu) => {
                let y = gu.forward(x)?;
                if let Activation::Silu = self.features.activation {
                    if let Some(h) = engine_mlx::fast::swiglu_packed(&y)? {
                        return Ok(h);
                    }
                }
                let i = (y.dim(-1) / 2) as i32;
                (y.slice_axis(-1, 0, i)?, y.slice_axis(-1, i, 2 * i)?)
            }
            None => (m.gate.forward(x)?, m.up.forward(x)?),
        };
        let g = match self.features.activation {
            Activation::Silu => g.silu()?,
            Activation::GeluApprox => g.gelu_approx()?,
        };
        g.multiply(&u)
    }

    /// Attention before the output projection: (B, L, heads·head_dim).
    fn attention_heads(&self, a: &Attention, x: &Array, cache: &mut KvCache, step: &mut Step<'_>) -> Result<Array> {
        let (q, k, v) = match &a.qkv {
            Some(qkv) => {
                let y = qkv.forward(x)?;
                if y.dim(1) == 1
                    && a.q_norm.is_none()
                    && a.k_norm.is_none()
                    && engine_mlx::default_device() == engine_mlx::Device::Gpu
                {
                    if let Some(out) = self.decode_attention(a, DecodeQkv::Packed(&y), cache, step)? {
                        return Ok(out);
                    }
                }
                let hd = self.cfg.head_dim as i32;
                let (nq, nkv) = ((a.heads as i32) * hd, (a.kv_heads as i32) * hd);
                (
                    y.slice_axis(-1, 0, nq)?,
                    y.slice_axis(-1, nq, nq + nkv)?,
                    y.slice_axis(-1, nq + nkv, nq + 2 * nkv)?,
                )
            }
            None => (a.q.forward(x)?, a.k.forward(x)?, a.v.forward(x)?),
        };
        self.attend(a, q, k, v, cache, step, false)
    }

    /// Attention from the projections q, k, v (B, L, heads·head_dim): head
    /// norms, RoPE, the cache update and the scores; (B, L, heads·head_dim)
    /// before the output projection. With `heads_first`, q, k, v come as
    /// (B, heads, L, head_dim) and the result stays (B, heads, L, head_dim):
    /// for a decode step (L = 1) both hold the flat layout's elements in the
    /// same order, so no reshape or transpose joins the graph.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        a: &Attention,
        q: Array,
        k: Array,
        v: Array,
        cache: &mut KvCache,
        step: &mut Step<'_>,
        heads_first: bool,
    ) -> Result<Array> {
        let s = q.shape_i32();
        let (b, l) = if heads_first { (s[0], s[2]) } else { (s[0], s[1]) };
        let hd = self.cfg.head_dim as i32;
        if !heads_first && l == 1 && engine_mlx::default_device() == engine_mlx::Device::Gpu {
            // A GPU decode step from composed projections (B, 1, heads·head_dim)
            // (dense weights, adapters): for one position that layout holds the
            // heads-first elements in the same order, so the fused decode
            // attention reads it as is, or — with head norms — reshapes replace
            // the transposes.
            if a.q_norm.is_none() && a.k_norm.is_none() && a.qkv.is_none() {
                if let Some(out) = self.decode_attention(a, DecodeQkv::Split(&q, &k, &v), cache, step)? {
                    return Ok(out);
                }
            }
            let split = |t: Array, n: usize| t.reshape(&[b, n as i32, 1, hd]);
            let (q, k, v) = (split(q, a.heads)?, split(k, a.kv_heads)?, split(v, a.kv_heads)?);
            return self.attend(a, q, k, v, cache, step, true)?.reshape(&[b, 1, -1]);
        }
        let heads = |t: Array, n: usize, norm: &Option<RmsNorm>| -> Result<Array> {
            if heads_first {
                return match norm {
                    Some(nm) => nm.forward(&t),
                    None => Ok(t),
                };
            }
            let t = t.reshape(&[b, l, n as i32, hd])?;
            let t = match norm {
                Some(nm) => nm.forward(&t)?,
                None => t,
            };
            t.transpose(&[0, 2, 1, 3])
        };
        let q = heads(q, a.heads, &a.q_norm)?;
        let k = heads(k, a.kv_heads, &a.k_norm)?;
        let v = heads(v, a.kv_heads, &None)?;
        if heads_first && l == 1 {
            if let Some(out) = self.decode_attention(a, DecodeQkv::Split(&q, &k, &v), cache, step)? {
                return Ok(out);
            }
        }
        let offset = cache.offset();
        let (q, k) = match (&step.tables, &step.row_offsets) {
            (Some((cos, sin)), _) => (rotate(&q, cos, sin)?, rotate(&k, cos, sin)?),
            (None, Some(offs)) => (a.rope.forward_rows(&q, offs)?, a.rope.forward_rows(&k, offs)?),
            (None, None) => {
                let pos = (offset as i64 + step.spec.position_delta).max(0) as usize;
                (a.rope.forward(&q, pos)?, a.rope.forward(&k, pos)?)
            }
        };
        let view = cache.update(&k, &v)?;
        let t = view.keys.dim(2);
        if let Some(out) = self.cache_attention(a, &q, &view, offset, l as usize, step.spec)? {
            if heads_first {
                return Ok(out);
            }
            return out.transpose(&[0, 2, 1, 3])?.reshape(&[b, l, -1]);
        }
        // Layers with the same window see the same keys layout: one mask for all.
        let memo_key = (a.window, view.order, t);
        let mask_arr = match step.masks.iter().find(|(k, _)| *k == memo_key) {
            Some((_, m)) => m.clone(),
            None => {
                let m = self.build_mask(l as usize, offset, view.order, t, a.window, step.spec)?;
                step.masks.push((memo_key, m.clone()));
                m
            }
        };
        let (k, v) = (view.keys, view.values);
        let scale = self.features.attn_scale;
        let out = match self.features.attn_softcap {
            Some(cap) => self.softcapped_attention(&q, &k, &v, scale, cap, mask_arr.as_ref(), l as usize)?,
            None => {
                let m = match &mask_arr {
                    Some(MaskKind::Array(arr)) => AttentionMask::Array(arr),
                    Some(MaskKind::Causal) => AttentionMask::Causal,
                    None => AttentionMask::None,
                };
                scaled_dot_product_attention(&q, &k, &v, scale, m)?
            }
        };
        if heads_first {
            return Ok(out);
        }
        out.transpose(&[0, 2, 1, 3])?.reshape(&[b, l, -1])
    }

    /// A decode step's RoPE, cache write and attention in one CUDA kernel
    /// (`fast::decode_attention_in_place`), q/k/v heads-first (B, heads, 1,
    /// head_dim) or flat (B, 1, heads·head_dim), the output in q's shape:
    /// on a fast GPU the host's cost per MLX op bounds decode, and this takes
    /// eight of them off each layer. `None` where it does not apply (M-RoPE,
    /// soft-capping, LongRoPE, a window with left padding, the CPU).
    fn decode_attention(
        &self,
        a: &Attention,
        qkv: DecodeQkv<'_>,
        cache: &mut KvCache,
        step: &Step<'_>,
    ) -> Result<Option<Array>> {
        let Some(rope) = a.rope.decode_spec() else {
            return Ok(None);
        };
        if step.tables.is_some() || self.features.attn_softcap.is_some() || self.invariant_attention {
            return Ok(None);
        }
        let positions = match (&step.spec.left_padding, &step.decode_rows) {
            (None, _) => DecodePositions::Same((cache.offset() as i64 + step.spec.position_delta).max(0) as usize),
            (Some(_), Some(rows)) if cache.window().is_none() => DecodePositions::Rows(rows),
            _ => return Ok(None),
        };
        let scale = self.features.attn_scale;
        let step = |kb: &Array, vb: &Array, slot, n_keys| {
            let at = DecodeSlot {
                slot,
                n_keys,
                positions,
            };
            match qkv {
                DecodeQkv::Split(q, k, v) => {
                    engine_mlx::fast::decode_attention_in_place(q, k, v, kb, vb, rope, at, scale)
                }
                DecodeQkv::Packed(y) => {
                    engine_mlx::fast::decode_attention_packed_in_place(y, a.heads, kb, vb, rope, at, scale)
                }
            }
        };
        match qkv {
            DecodeQkv::Split(_, k, v) => cache.update_fused(k, v, step),
            DecodeQkv::Packed(y) => {
                let (b, d) = (y.dim(0), self.cfg.head_dim);
                if y.dim(-1) != (a.heads + 2 * a.kv_heads) * d {
                    return Ok(None);
                }
                let shape = [b, a.kv_heads, 1, d];
                let kv = NewKv::Shaped {
                    k: shape,
                    v: shape,
                    dtype: y.dtype(),
                };
                cache.update_fused_as(kv, step)
            }
        }
    }

    /// Plain causal attention (left padding allowed) over keys in order, on
    /// the CPU in float32, under the int8 CPU kernels only: one kernel whose every query gives the same bits
    /// however the prompt is chunked or batched. Under the int8 CPU kernels
    /// that matters beyond rounding: the activations are rounded to int8, so
    /// a last-bit difference upstream can move a value across a rounding
    /// step, and chunked prefill (the single-sequence path) and a batch's
    /// whole-prompt prefill drifted apart within a few tokens. `None` where
    /// the case is not covered (windows, soft-capping, bidirectional spans,
    /// ring caches, other devices and dtypes).
    fn cache_attention(
        &self,
        a: &Attention,
        q: &Array,
        view: &KvView,
        q_start: usize,
        l: usize,
        spec: &MaskSpec,
    ) -> Result<Option<Array>> {
        let KeyOrder::InOrder { first } = view.order else {
            return Ok(None);
        };
        if !self.invariant_attention {
            return Ok(None);
        }
        let window_bites = a.window.is_some_and(|w| q_start + l - first > w);
        if window_bites
            || self.features.attn_softcap.is_some()
            || !spec.bidirectional.is_empty()
            || !engine_mlx::fast::cache_attention_applies(q, &view.keys, &view.values)
        {
            return Ok(None);
        }
        // Padding is in positions; the kernel counts slots from the first key.
        let pads: Vec<i32> = spec
            .left_padding
            .iter()
            .flatten()
            .map(|&p| p.saturating_sub(first) as i32)
            .collect();
        engine_mlx::fast::cache_attention(q, &view.keys, &view.values, self.features.attn_scale, &pads).map(Some)
    }

    /// Chooses the cheapest correct mask for `l` queries from position
    /// `q_start` over `t` keys laid out as `order`: none for a lone decode
    /// step (a full ring holds exactly its window, in any order), MLX's
    /// built-in causal mode when possible, an explicit boolean array for
    /// windows and padding.
    fn build_mask(
        &self,
        l: usize,
        q_start: usize,
        order: KeyOrder,
        t: usize,
        window: Option<usize>,
        spec: &MaskSpec,
    ) -> Result<Option<MaskKind>> {
        let window_bites = window.is_some_and(|w| q_start + l - order.first() > w);
        let in_order = matches!(order, KeyOrder::InOrder { .. });
        // Only spans with a query of this call before their end can change a row.
        let spans: Vec<(usize, usize)> = spec
            .bidirectional
            .iter()
            .copied()
            .filter(|&(a, b)| a < q_start + l && b > q_start + 1)
            .collect();
        let span_of = |p: usize| spans.iter().position(|&(a, b)| (a..b).contains(&p));
        if spec.left_padding.is_none() && !window_bites && spans.is_empty() && (l == 1 || in_order) {
            return Ok(if l == 1 { None } else { Some(MaskKind::Causal) });
        }
        let pads = spec.left_padding.clone().unwrap_or_else(|| vec![0]);
        let rows = pads.len();
        let mut m = vec![0u8; rows * l * t];
        for (r, &pad) in pads.iter().enumerate() {
            for i in 0..l {
                let qp = q_start + i;
                for j in 0..t {
                    let kp = order.position(j);
                    // A padding query attends to itself only, so no row is fully
                    // masked (that would give NaN, which 0-weights do not cancel).
                    let seen = kp <= qp || (!spans.is_empty() && span_of(qp).is_some_and(|s| span_of(kp) == Some(s)));
                    let in_window = kp > qp || window.is_none_or(|w| qp - kp < w);
                    let ok = (seen && in_window && kp >= pad) || (qp < pad && kp == qp);
                    m[(r * l + i) * t + j] = ok as u8;
                }
            }
        }
        let arr = Array::from_slice(&m, &[rows, 1, l, t])?.astype(Dtype::Bool)?;
        Ok(Some(MaskKind::Array(arr)))
    }

    #[allow(clippy::too_many_arguments)]
    fn softcapped_attention(
        &self,
        q: &Array,
        k: &Array,
        v: &Array,
        scale: f32,
        cap: f32,
        mask: Option<&MaskKind>,
        l: usize,
    ) -> Result<Array> {
        let (b, hq, hd) = (q.dim(0) as i32, q.dim(1) as i32, q.dim(3) as i32);
        let hkv = k.dim(1) as i32;
        let rep = hq / hkv;
        let t = k.dim(2);
        // (B, Hkv, rep, L, D) against (B, Hkv, 1, T, D): grouped heads without copying keys.
        let q = q.mul_scalar(scale as f64)?.reshape(&[b, hkv, rep, l as i32, hd])?;
        let (k, v) = (k.expand_dims(2)?, v.expand_dims(2)?);
        let scores = q.matmul(&k.swapaxes(-1, -2)?)?;
        let scores = scores.mul_scalar(1.0 / cap as f64)?.tanh()?.mul_scalar(cap as f64)?;
        let allowed = match mask {
            Some(MaskKind::Array(a)) => Some(a.expand_dims(1)?),
            Some(MaskKind::Causal) => {
                let off = (t - l) as f64;
                let qi = Array::arange(off, off + l as f64, 1.0, Dtype::Int32)?.reshape(&[l as i32, 1])?;
                let kj = Array::arange(0.0, t as f64, 1.0, Dtype::Int32)?.reshape(&[1, t as i32])?;
                Some(qi.greater_equal(&kj)?)
            }
            None => None,
        };
        let scores = match allowed {
            Some(m) => where_(&m, &scores, &Array::scalar(f32::MIN as f64, scores.dtype())?)?,
            None => scores,
        };
        let p = scores.softmax(&[-1], true)?;
        p.matmul(&v)?.reshape(&[b, hq, l as i32, hd])
    }
}

/// `x·cos + rotate_half(x)·sin` over the last axis (HF's non-interleaved RoPE).
fn rotate(x: &Array, cos: &Array, sin: &Array) -> Result<Array> {
    let d = x.dim(-1) as i32;
    let (lo, hi) = (x.slice_axis(-1, 0, d / 2)?, x.slice_axis(-1, d / 2, d)?);
    let half = engine_mlx::concatenate(&[&hi.negative()?, &lo], -1)?;
    x.multiply(cos)?.add(&half.multiply(sin)?)
}

/// A decode step's projections for the fused decode attention: q, k, v apart,
/// or one packed q/k/v projection's output (B, 1, (heads + 2·kv_heads)·D).
#[derive(Clone, Copy)]
enum DecodeQkv<'a> {
    Split(&'a Array, &'a Array, &'a Array),
    Packed(&'a Array),
}

#[derive(Clone)]
enum MaskKind {
    Causal,
    Array(Array),
}

/// What one forward call shares across its layers.
struct Step<'a> {
    spec: &'a MaskSpec,
    /// M-RoPE cos/sin tables.
    tables: Option<(Array, Array)>,
    /// Per-row rotary start positions (B,), with left padding.
    row_offsets: Option<Array>,
    /// Per-row [rotary position, left padding] (B, 2) int32, with left padding.
    decode_rows: Option<Array>,
    /// Masks built so far.
    masks: Vec<(MaskKey, Option<MaskKind>)>,
}

/// What a layer's mask depends on besides the call: (window, key order, key count).
type MaskKey = (Option<usize>, KeyOrder, usize);
