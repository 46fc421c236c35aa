//! MLX's fused kernels: attention, normalisation and rotary embeddings.

use crate::array::{list, opt_list, wrap};
use crate::error::{Context, Result};
use crate::{ffi, Array};

/// The mask of [`scaled_dot_product_attention`].
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every query sees every key.
    None,
    /// Query `i` sees keys `0..=i + (keys - queries)`.
    Causal,
    /// An additive (float) or boolean mask broadcastable to (B, H, Lq, Lk).
    Array(&'a Array),
}

/// `softmax(q kᵀ · scale + mask) v` with q (B, H, Lq, D), k/v (B, Hkv, Lk, D);
/// grouped-query attention when H is a multiple of Hkv.
pub fn scaled_dot_product_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: AttentionMask<'_>,
) -> Result<Array> {
    let (mode, arr) = match mask {
        AttentionMask::None => ("", None),
        AttentionMask::Causal => ("causal", None),
        AttentionMask::Array(a) => ("array", Some(a)),
    };
    wrap(
        ffi::sdpa(&q.inner, &k.inner, &v.inner, scale, mode, &opt_list(arr)),
        "scaled_dot_product_attention",
    )
}

/// `x · wᵀ` for x (…, K) and a weight w (N, K) as a linear layer stores it.
/// Decode-sized float32 products on the CPU (at most 8 rows) take one pass
/// over the weights in our kernel; larger ones are split over the cores by
/// us, one single-threaded sgemm each; everything else is MLX's matmul.
pub fn linear(x: &Array, w: &Array) -> Result<Array> {
    wrap(ffi::linear(&x.inner, &w.inner), "linear")
}

/// `x · wᵀ + bias` as [`linear`]; where our threaded sgemm runs, the bias is
/// its starting value instead of a second pass over the output.
pub fn linear_bias(x: &Array, w: &Array, bias: &Array) -> Result<Array> {
    wrap(ffi::linear_bias(&x.inner, &w.inner, &bias.inner), "linear")
}

/// `x · wᵀ (+ bias)` as [`linear_bias`] for activations of many rows (image
/// tokens): from 192 rows on, CPUs with AVX-512 or AVX2 take [`conv2d`]'s direct
/// kernel (register tiles, x read in place, the weight repacked per call)
/// instead of sgemm. Results then depend on whether a call has 192 rows, so
/// [`linear`] keeps sgemm for callers that need a row's result to be the
/// same in any batch (chunked LLM prefill).
pub fn linear_rows(x: &Array, w: &Array, bias: Option<&Array>) -> Result<Array> {
    wrap(ffi::linear_rows(&x.inner, &w.inner, &opt_list(bias)), "linear")
}

/// RMS normalisation over the last axis, scaled by `weight` when given.
pub fn rms_norm(x: &Array, weight: Option<&Array>, eps: f32) -> Result<Array> {
    wrap(ffi::rms_norm(&x.inner, &opt_list(weight), eps), "rms_norm")
}

/// Layer normalisation over the last axis.
pub fn layer_norm(x: &Array, weight: Option<&Array>, bias: Option<&Array>, eps: f32) -> Result<Array> {
    wrap(
        ffi::layer_norm(&x.inner, &opt_list(None), &opt_list(weight), &opt_list(bias), eps),
        "layer_norm",
    )
}

/// `layer_norm(x + residual)`: on the CPU in float32 one fused pass, no
/// intermediate sum in memory (post-norm encoders do this twice per layer).
pub fn layer_norm_residual(
    x: &Array,
    residual: &Array,
    weight: Option<&Array>,
    bias: Option<&Array>,
    eps: f32,
) -> Result<Array> {
    wrap(
        ffi::layer_norm(
            &x.inner,
            &opt_list(Some(residual)),
            &opt_list(weight),
            &opt_list(bias),
            eps,
        ),
        "layer_norm_residual",
    )
}

/// Bidirectional attention over packed sequences, for encoders.
///
/// `qkv` (T, 3·heads·D) holds the queries, keys and values (in that order,
/// heads contiguous in each) of sequences of `lengths` tokens laid end to
/// end, Σ lengths = T; each token attends to its own sequence only. Returns
/// (T, heads·D). On the CPU in float32 this is one kernel that never touches
/// padding; elsewhere the sequences are padded for MLX's fused attention.
pub fn packed_attention(qkv: &Array, lengths: &[i32], heads: i32, scale: f32) -> Result<Array> {
    wrap(
        ffi::packed_attention(&qkv.inner, lengths, heads, scale),
        "packed_attention",
    )
}

/// Whether [`cache_attention`] runs for these arrays: float32 on the CPU,
/// q (B, H, L, D) and k, v (B, Hkv, T, D) with L ≤ T, D ≤ 256 and H a
/// multiple of Hkv.
pub fn cache_attention_applies(q: &Array, k: &Array, v: &Array) -> bool {
    ffi::cache_attention_applies(&q.inner, &k.inner, &v.inner)
}

/// Causal attention of L new queries over a KV cache that ends with their
/// own keys, in one CPU kernel: query `i` (slot T − L + i) sees slots
/// `pads[b]..=slot` of its batch row (`pads` empty: no padding; a padding
/// query sees only itself). Returns (B, H, L, D) as
/// [`scaled_dot_product_attention`] does.
///
/// Each query runs the same float operations in the same order however the
/// sequence is split into chunks or batched with others, so chunked prefill,
/// single-token decode and left-padded batches give it the same bits. Keys
/// and values are read in place through their strides (no copy of the
/// cache). Only where [`cache_attention_applies`].
pub fn cache_attention(q: &Array, k: &Array, v: &Array, scale: f32, pads: &[i32]) -> Result<Array> {
    wrap(
        ffi::cache_attention(&q.inner, &k.inner, &v.inner, scale, pads),
        "cache_attention",
    )
}

/// RoPE as [`decode_attention_in_place`] applies it (see [`crate::nn::Rope::decode_spec`]):
/// the first `dims` features rotate at angles `position · scale · inv_freq[j]`.
#[derive(Debug, Clone, Copy)]
pub struct DecodeRope<'a> {
    /// Angular frequencies (dims/2,) float32.
    pub inv_freq: &'a Array,
    /// Rotated features.
    pub dims: i32,
    /// Adjacent pairs (GGUF/Meta layout) rather than halves (HF layout).
    pub traditional: bool,
    /// Multiplies the positions (linear scaling).
    pub scale: f32,
}

/// Where a decode step sits in its cache, for [`decode_attention_in_place`].
#[derive(Debug, Clone, Copy)]
pub struct DecodeSlot<'a> {
    /// The slot the new key and value go to.
    pub slot: usize,
    /// The query attends to slots `0..n_keys` (which include `slot`).
    pub n_keys: usize,
    /// The rotary position of every row, or per batch row `rows` (B, 2)
    /// int32: [position, first slot the row attends to (its left padding)].
    pub positions: DecodePositions<'a>,
}

/// Rotary positions of a decode step's rows.
#[derive(Debug, Clone, Copy)]
pub enum DecodePositions<'a> {
    /// One position for all rows, no padding.
    Same(usize),
    /// (B, 2) int32: per row [position, first slot attended].
    Rows(&'a Array),
}

/// A decode step's attention in one CUDA kernel (the `cuda` feature, on the
/// GPU, our kernels on; `None` elsewhere, and the caller composes MLX's ops):
/// RoPE of the query q (B, H, 1, D) and of the new key k (B, KV, 1, D), k and
/// v written into the caches (B, KV, capacity, D) at `at.slot`, then
/// `softmax(q·kᵀ·scale)·v` over the slots `0..at.n_keys`. q, k and v may also
/// come as the projections' (B, 1, heads·D) (the same elements in the same
/// order); the output takes q's shape. One graph node where MLX's ops take eight (two RoPEs, two
/// cache writes, two views, attention), and on a fast GPU the host's cost per
/// op bounds decode.
///
/// **The caches are written in place** when the output is evaluated, behind
/// MLX's back (as an output, the written caches would stay alive as the
/// step's temporaries and the next step could not take them over, so it would
/// copy them): the caller must own those buffers alone — no clone, view or
/// earlier copy of them may be read after this call, except through later
/// steps of the same cache. A KV cache's buffers, which only its own steps
/// read, are the use (see `engine_llm`'s `KvCache::update_fused`).
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_in_place(
    q: &Array,
    k: &Array,
    v: &Array,
    k_cache: &Array,
    v_cache: &Array,
    rope: DecodeRope<'_>,
    at: DecodeSlot<'_>,
    scale: f32,
) -> Result<Option<Array>> {
    decode_attention_impl(q, k, v, k_cache, v_cache, rope, at, scale, 0)
}

/// [`decode_attention_in_place`] from a packed q/k/v projection `qkv` (B, 1,
/// (heads + 2·kv_heads)·D), each row holding its q, k and v end to end (a fused
/// q/k/v linear's output, read in place: no views or copies join the graph);
/// the output is (B, 1, heads·D). Off with `MLXENGINE_CUDA_PACK=0`. The same
/// in-place contract on the caches.
pub fn decode_attention_packed_in_place(
    qkv: &Array,
    heads: usize,
    k_cache: &Array,
    v_cache: &Array,
    rope: DecodeRope<'_>,
    at: DecodeSlot<'_>,
    scale: f32,
) -> Result<Option<Array>> {
    let heads = i32::try_from(heads).map_err(|_| crate::Error::Invalid(format!("decode attention: {heads} heads")))?;
    if heads == 0 {
        return Ok(None);
    }
    decode_attention_impl(qkv, qkv, qkv, k_cache, v_cache, rope, at, scale, heads)
}

/// Whether the GPU decode path packs dense projections that read the same input
/// (q/k/v, gate/up) into one matrix each and runs the kernels for packed
/// projections ([`decode_attention_packed_in_place`], [`swiglu_packed`]): with
/// the `cuda` feature, unless `MLXENGINE_CUDA_PACK=0`.
pub fn cuda_pack_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "cuda") && *ON.get_or_init(|| std::env::var("MLXENGINE_CUDA_PACK").map_or(true, |v| v != "0"))
}

/// `silu(gate) · up` of a packed gate/up projection (…, 2·I), gate first, in one
/// CUDA kernel: (…, I). `None` off the GPU, without the `cuda` feature or with
/// `MLXENGINE_CUDA_PACK=0`; the caller composes MLX's ops.
pub fn swiglu_packed(gate_up: &Array) -> Result<Option<Array>> {
    if !cfg!(feature = "cuda") {
        return Ok(None);
    }
    let mut out = crate::array::unlist(
        ffi::cuda_swiglu_packed(&gate_up.inner).op("swiglu_packed")?,
        "swiglu_packed",
    )?;
    Ok(out.pop())
}

/// `(a + b, rms_norm(a + b) · weight)` in one CUDA kernel: a residual add and
/// the RMS norm after it, rounded as MLX's `add` and [`rms_norm`] round (the
/// sum to the dtype first). `None` off the GPU, without the `cuda` feature,
/// with `MLXENGINE_CUDA_ADD_NORM=0`, or where it does not apply (`a` and `b`
/// of one shape and dtype, `weight` (K,) in it, rows of whole 16-byte
/// chunks); the caller composes MLX's ops.
pub fn add_rms_norm_cuda(a: &Array, b: &Array, weight: &Array, eps: f32) -> Result<Option<(Array, Array)>> {
    if !cfg!(feature = "cuda") {
        return Ok(None);
    }
    let mut out = crate::array::unlist(
        ffi::cuda_add_rms_norm(&a.inner, &b.inner, &weight.inner, eps).op("add_rms_norm_cuda")?,
        "add_rms_norm_cuda",
    )?;
    Ok(match (out.pop(), out.pop()) {
        (Some(y), Some(h)) => Some((h, y)),
        _ => None,
    })
}

/// A decode step's consecutive CUDA stages — arrays made by the fused matvec
/// (`quant::fused_matvec`) and [`decode_attention_in_place`], in the order they
/// run, none evaluated yet — as one node of MLX's CUDA graph whose kernels
/// launch programmatically, each while the one before it drains (Hopper on;
/// it waits for that one's results on the GPU). The stages' arrays become that
/// node's outputs in place: whatever reads them, reads the chain's. Each stage
/// may read earlier stages' outputs and arrays that do not depend on any
/// stage. Returns whether it chained them; `false`, changing nothing, without
/// the `cuda` feature, where it does not apply (a stage that is not one of
/// those kernels, or an input computed from a stage through other ops), or
/// where it does not pay: by default only stages that read at least 256 MiB
/// (`MLXENGINE_CUDA_PDL_MIN_MB`; a bfloat16 layer of an 8B model) chain —
/// on an H100 chains sped 8B bfloat16 decode up and slowed 8B 4-bit and 1B.
/// `MLXENGINE_CUDA_PDL=0` turns chains off, `=1` on for any size.
pub fn decode_chain(stages: &[&Array]) -> Result<bool> {
    if !cfg!(feature = "cuda") {
        return Ok(false);
    }
    ffi::cuda_chain(&crate::array::list(stages.iter().copied())).op("decode_chain")
}

/// Group norm of channels-last `x` (N, …, C), optionally followed by SiLU, in
/// two CUDA kernels (statistics per group, then the scaled, shifted elements).
/// `None` off the GPU, without the `cuda` feature, or where it does not apply
/// (weight and bias must be (C,) in x's dtype); the caller composes MLX's ops.
pub fn group_norm_cuda(
    x: &Array,
    groups: i32,
    weight: &Array,
    bias: &Array,
    eps: f32,
    silu: bool,
) -> Result<Option<Array>> {
    if !cfg!(feature = "cuda") {
        return Ok(None);
    }
    let mut out = crate::array::unlist(
        ffi::cuda_group_norm(&x.inner, groups, &weight.inner, &bias.inner, eps, silu).op("group_norm_cuda")?,
        "group_norm_cuda",
    )?;
    Ok(out.pop())
}

#[allow(clippy::too_many_arguments)]
fn decode_attention_impl(
    q: &Array,
    k: &Array,
    v: &Array,
    k_cache: &Array,
    v_cache: &Array,
    rope: DecodeRope<'_>,
    at: DecodeSlot<'_>,
    scale: f32,
    packed_heads: i32,
) -> Result<Option<Array>> {
    if !cfg!(feature = "cuda") {
        return Ok(None);
    }
    let int =
        |n: usize| i32::try_from(n).map_err(|_| crate::Error::Invalid(format!("decode attention: {n} is too large")));
    let (pos, rows) = match at.positions {
        DecodePositions::Same(p) => (int(p)?, None),
        DecodePositions::Rows(r) => (0, Some(r)),
    };
    let mut out = crate::array::unlist(
        ffi::cuda_decode_attention(
            &q.inner,
            &k.inner,
            &v.inner,
            &k_cache.inner,
            &v_cache.inner,
            &rope.inv_freq.inner,
            &opt_list(rows),
            int(at.slot)?,
            int(at.n_keys)?,
            pos,
            rope.dims,
            rope.traditional,
            rope.scale,
            scale,
            packed_heads,
        )
        .op("decode_attention")?,
        "decode_attention",
    )?;
    Ok(out.pop())
}

/// 2-D convolution of NHWC `x` with an (O, KH, KW, I) weight, plus `bias`
/// (O,) when given; no dilation, one group. On the CPU in float32 our kernels,
/// split over the cores: directly on CPUs with AVX-512 or AVX2 (see
/// [`image_kernel_level`]; 1×1 stride-1 convs as [`linear_rows`]), else by
/// tiles of receptive fields packed in cache and one sgemm each (no im2col
/// of the whole image); elsewhere MLX's conv and an add. The direct kernel packs
/// the weight on every call; [`pack_conv_weight`] does it once.
pub fn conv2d(x: &Array, w: &Array, bias: Option<&Array>, stride: (i32, i32), padding: (i32, i32)) -> Result<Array> {
    wrap(
        ffi::conv2d_bias(
            &x.inner,
            &w.inner,
            &opt_list(bias),
            stride.0,
            stride.1,
            padding.0,
            padding.1,
        ),
        "conv2d",
    )
}

/// A float32 conv weight in a CPU conv kernel's layout, made once by
/// [`pack_conv_weight`] for [`conv2d_packed`]: the direct kernel's blocks, or
/// for wide 3×3 stride-1 convs a Winograd transform.
#[derive(Debug, Clone)]
pub struct PackedConvWeight {
    packed: Array,
    shape: [i32; 4],
    winograd: bool,
}

impl PackedConvWeight {
    /// The weight's shape before packing, (O, KH, KW, I).
    pub fn shape(&self) -> [i32; 4] {
        self.shape
    }

    /// Whether the weight is in the Winograd layout (usable at stride 1 only).
    pub fn is_winograd(&self) -> bool {
        self.winograd
    }
}

/// Packs an (O, KH, KW, I) weight for [`conv2d_packed`] at `stride` where [`conv2d`]
/// would run its direct CPU kernel (float32 on a CPU stream, [`image_kernel_level`]
/// ≥ 1), and evaluates it; `None` elsewhere. [`conv2d`] packs its weight on every
/// call: a model that keeps only the packed copy stops reading and writing all its
/// conv weights again per forward pass. A 3×3 weight at stride 1 with at least 64
/// input and output channels is packed for the Winograd F(2×2, 3×3) kernel (2.25×
/// fewer multiplies, 16/9 of the floats; F(4×4) by choice: see
/// [`force_conv_winograd`]), which then serves that stride only.
pub fn pack_conv_weight(w: &Array, stride: (i32, i32)) -> Result<Option<PackedConvWeight>> {
    if !ffi::conv_weight_packs(&w.inner) {
        return Ok(None);
    }
    let packed = wrap(ffi::pack_conv_weight(&w.inner, stride.0, stride.1), "pack_conv_weight")?;
    packed.eval()?;
    let s = w.shape_i32();
    // The layout the kernel chose shows in the length: (m + 2)² points of I
    // rows (Winograd) or KH·KW·I rows, each of O rounded up to 16 floats.
    let rows = packed.size() / ((s[0] as usize).div_ceil(16) * 16);
    let cin = s[3] as usize;
    Ok(Some(PackedConvWeight {
        packed,
        shape: [s[0], s[1], s[2], s[3]],
        winograd: s[1] == 3 && s[2] == 3 && (rows == 16 * cin || rows == 36 * cin),
    }))
}

/// A float32 dense weight (out, in) in the direct CPU kernel's blocks, made once
/// by [`pack_linear_weight`] for [`linear_rows_packed`].
#[derive(Debug, Clone)]
pub struct PackedLinearWeight(PackedConvWeight);

/// Packs a dense (out, in) weight for [`linear_rows_packed`] where the direct CPU
/// kernel runs (float32 on a CPU stream, [`image_kernel_level`] ≥ 1) and beats
/// sgemm at its shape (with AVX2 only: no more outputs than inputs), and
/// evaluates it; `None` elsewhere. [`linear_rows`] packs its weight on every call.
pub fn pack_linear_weight(w: &Array) -> Result<Option<PackedLinearWeight>> {
    if !ffi::linear_weight_packs(&w.inner) {
        return Ok(None);
    }
    let s = w.shape_i32();
    Ok(pack_conv_weight(&w.reshape(&[s[0], 1, 1, s[1]])?, (1, 1))?.map(PackedLinearWeight))
}

/// `x · wᵀ (+ bias)`, x (…, in) → (…, out), with a weight [`pack_linear_weight`]
/// packed: the direct kernel at any number of rows (a 1×1 [`conv2d_packed`]).
pub fn linear_rows_packed(x: &Array, w: &PackedLinearWeight, bias: Option<&Array>) -> Result<Array> {
    let [out, _, _, inp] = w.0.shape();
    let mut shape = x.shape_i32();
    let rows = shape[..shape.len().saturating_sub(1)].iter().product::<i32>();
    let y = conv2d_packed(&x.reshape(&[1, 1, rows, inp])?, &w.0, bias, (1, 1), (0, 0))?;
    if let Some(last) = shape.last_mut() {
        *last = out;
    }
    y.reshape(&shape)
}

/// The output tile m of the Winograd F(m×m, 3×3) kernel [`pack_conv_weight`]
/// packs 3×3 stride-1 conv weights for, 2 or 4, or 0 for the direct kernel:
/// `MLXENGINE_WINOGRAD=0`, `2` or `4` picks, else the default. `Some(m)` (0, 2
/// or 4) overrides that (process-wide, for tests and benchmarks that compare
/// the kernels), `None` restores it. Returns the setting now in use; weights
/// packed before keep their layout.
pub fn force_conv_winograd(tile: Option<i32>) -> i32 {
    ffi::conv_winograd(tile.unwrap_or(-1))
}

/// [`conv2d`] with a weight [`pack_conv_weight`] packed (same results up to
/// float32 rounding; a Winograd-packed weight only at stride (1, 1)).
pub fn conv2d_packed(
    x: &Array,
    w: &PackedConvWeight,
    bias: Option<&Array>,
    stride: (i32, i32),
    padding: (i32, i32),
) -> Result<Array> {
    wrap(
        ffi::conv2d_packed(
            &x.inner,
            &w.packed.inner,
            &w.shape,
            &opt_list(bias),
            stride.0,
            stride.1,
            padding.0,
            padding.1,
        ),
        "conv2d_packed",
    )
}

/// The instruction set the float32 CPU image kernels use, picked from the
/// CPU at run time: 2 AVX-512 ([`conv2d`] computes convolutions directly —
/// register tiles over a zero-padded copy of the input, no patch buffer, no
/// BLAS —, as [`linear_rows`] does products of many rows, and [`attention`]
/// runs on intrinsics with a scalef exp), 1 AVX2 + FMA (the direct conv and
/// products in 16-channel slices), 0 the portable paths (packed patches and
/// sgemm, compiler-vectorised attention).
pub fn image_kernel_level() -> i32 {
    ffi::image_kernel_level(-2)
}

/// Caps the image kernels' instruction set at `level` (see
/// [`image_kernel_level`]), or restores the automatic choice with `None`;
/// returns the level now in use. Process-wide; for tests and benchmarks that
/// compare paths.
pub fn force_image_kernel_level(level: Option<i32>) -> i32 {
    ffi::image_kernel_level(level.map_or(-1, |l| l.max(0)))
}

/// Group normalisation of channels-last `x` (N, ..., C): statistics per image
/// over all positions and the C/`groups` channels of a group, then
/// `weight`·x̂ + `bias` per channel, and SiLU when `silu` (a UNet's
/// norm → SiLU pairs in one pass). One fused kernel on the CPU in float32.
pub fn group_norm(x: &Array, groups: i32, weight: &Array, bias: &Array, eps: f32, silu: bool) -> Result<Array> {
    wrap(
        ffi::group_norm(&x.inner, groups, &weight.inner, &bias.inner, eps, silu),
        "group_norm",
    )
}

/// GEGLU of `x` (…, 2F) → (…, F): the first half times the exact GELU of
/// the second (diffusers' `GEGLU` after its projection). One pass on the CPU
/// in float32, one kernel on a CUDA GPU; elsewhere MLX's split, GELU and multiply.
pub fn geglu(x: &Array) -> Result<Array> {
    wrap(ffi::geglu(&x.inner), "geglu")
}

/// Multi-head attention `softmax(q kᵀ · scale) v` without a mask, with the
/// heads side by side in the last axis as linear projections give them:
/// q (B, L, H·D), k and v (B, S, H·D) → (B, L, H·D). On the CPU in float32
/// one kernel that keeps a few query rows' scores in cache (never the
/// L × S matrix) and needs no head transposes; elsewhere MLX's fused attention.
pub fn attention(q: &Array, k: &Array, v: &Array, heads: i32, scale: f32) -> Result<Array> {
    wrap(ffi::attention(&q.inner, &k.inner, &v.inner, heads, scale), "attention")
}

/// Frequencies of a rotary embedding: a base, or explicit per-pair frequencies.
#[derive(Debug, Clone, Copy)]
pub enum RopeFreqs<'a> {
    /// `base^(-2i/dims)`, the usual form (e.g. base 10000).
    Base(f32),
    /// Explicit frequencies of shape (dims/2,), e.g. Llama-3 scaled ones.
    Custom(&'a Array),
}

/// Rotary position embedding of the first `dims` features of x (…, L, D),
/// positions starting at `offset`. `traditional` rotates adjacent pairs
/// (GPT-J / GGUF layout) instead of the two halves (GPT-NeoX / HF layout).
pub fn rope(x: &Array, dims: i32, traditional: bool, freqs: RopeFreqs<'_>, scale: f32, offset: i32) -> Result<Array> {
    let (base, has_base, f) = match freqs {
        RopeFreqs::Base(b) => (b, true, list(None)),
        RopeFreqs::Custom(a) => (0.0, false, list(Some(a))),
    };
    wrap(
        ffi::rope(&x.inner, dims, traditional, base, has_base, scale, offset, &f),
        "rope",
    )
}

/// [`rope`] with a start position per batch row: `offsets` (B,) int32 for x
/// (B, …, L, D) — row `b` covers positions `offsets[b]..offsets[b]+L`
/// (sequences of different lengths decoding in one batch).
pub fn rope_rows(
    x: &Array,
    dims: i32,
    traditional: bool,
    freqs: RopeFreqs<'_>,
    scale: f32,
    offsets: &Array,
) -> Result<Array> {
    let (base, has_base, f) = match freqs {
        RopeFreqs::Base(b) => (b, true, list(None)),
        RopeFreqs::Custom(a) => (0.0, false, list(Some(a))),
    };
    wrap(
        ffi::rope_rows(&x.inner, dims, traditional, base, has_base, scale, &offsets.inner, &f),
        "rope",
    )
}
