// Vectorised CPU kernels for the float32 ops MLX's CPU backend runs as
// scalar code on x86 (its SIMD layer is only specialised for Arm): softmax
// over the last axis, exact GELU and SiLU. Each is an MLX primitive, so it
// stays lazy and runs in MLX's CPU stream like any built-in op.
#pragma once

#include <array>
#include <optional>
#include <utility>
#include <variant>
#include <vector>

#include "mlx/mlx.h"

namespace mlxe::kernels {

namespace mx = mlx::core;

// True when `x` would run on the CPU in float32: the case these kernels cover.
bool applies(const mx::array& x, mx::StreamOrDevice s = {});

// Softmax over the last axis (a row of all -inf gives zeros, not NaN).
mx::array softmax_last(const mx::array& x, mx::StreamOrDevice s = {});

// Exact GELU, 0.5·x·(1 + erf(x/√2)).
mx::array gelu(const mx::array& x, mx::StreamOrDevice s = {});

// SiLU, x·sigmoid(x).
mx::array silu(const mx::array& x, mx::StreamOrDevice s = {});

// GEGLU of x (…, 2F): the first half times the exact GELU of the second, in
// one pass (no split copies, no GELU temporary).
mx::array geglu(const mx::array& x, mx::StreamOrDevice s = {});

// Layer normalisation over the last axis of x (+ residual when given, fused),
// scaled by weight and shifted by bias when given (each of shape (D,)).
mx::array layer_norm(const mx::array& x, const std::optional<mx::array>& residual,
                     const std::optional<mx::array>& weight, const std::optional<mx::array>& bias, float eps,
                     mx::StreamOrDevice s = {});

// Rows of x up to which `linear` uses the skinny kernel (decode batches);
// beyond, BLAS's packed GEMM wins (`cargo bench -p engine-mlx --bench
// linear`: 1.3–1.7× faster at 1–8 rows, 0.65× at 16, on an AVX2 EPYC).
constexpr size_t SKINNY_ROWS = 8;

// x · wᵀ for x (…, K) and a weight w (N, K). In float32 on the CPU with at
// most SKINNY_ROWS rows, one pass over the weights (memory-bound decode
// steps); with more, `gemm` below; otherwise MLX's matmul.
mx::array linear(const mx::array& x, const mx::array& w, mx::StreamOrDevice s = {});

// Bidirectional attention over packed sequences: qkv (T, 3·heads·D) holds the
// queries, keys and values of sequences of `lengths` tokens laid end to end
// (Σ lengths = T); each token attends to the tokens of its own sequence.
// Returns (T, heads·D). No padding, so no wasted work on pad tokens.
mx::array packed_attention(const mx::array& qkv, std::vector<int32_t> lengths, int heads, float scale,
                           mx::StreamOrDevice s = {});

// Whether cache_attention takes these arguments: float32 q (B, H, L, D) and
// k, v (B, Hkv, T, D) on a CPU stream, L ≤ T, D ≤ 256, H a multiple of Hkv.
bool cache_attention_applies(const mx::array& q, const mx::array& k, const mx::array& v, mx::StreamOrDevice s = {});

// Causal attention of L queries that are the last L positions of T cached
// keys: query i (slot T − L + i) sees the slots from its row's left padding
// `pads[b]` (none when empty) up to its own; a padding query sees only
// itself. Returns (B, H, L, D). Keys and values are read through their
// strides, so a cache view costs no copy. Each query's result is the same
// bits however the sequence is chunked or batched.
mx::array cache_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                          std::vector<int32_t> pads, mx::StreamOrDevice s = {});

// Whether rope takes x and dims: float32 x (B, H, L, D) on a CPU stream, dims
// even and at most D.
bool rope_applies(const mx::array& x, int dims, mx::StreamOrDevice s = {});

// mx::fast::rope in one op on the CPU (MLX composes ~20 there) with the bits
// of MLX's composition: `base` or `freqs` (dims/2,), positions from `offset`
// (an int, or an int array (B,) or (1,) of start positions per row). The
// cos/sin tables are MLX ops, shared by consecutive calls at the same
// positions (a step's layers).
mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale,
               std::variant<int, mx::array> offset, const std::optional<mx::array>& freqs, mx::StreamOrDevice s = {});

// Whether quantized_linear takes these arguments: float32 x (…, K) on a CPU
// stream, w (N, K·bits/32) uint32 in MLX's affine layout with 4, 5 or 8 bits,
// float32 scales and biases (N, K/group), group 32, 64 or 128.
bool quantized_linear_applies(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& biases, int group, int bits, mx::StreamOrDevice s = {});

// x · dequantize(w)ᵀ straight from the packed weights: x quantized per block
// of 32 to int8, integer dot products (AVX-512 VNNI, AVX2 or plain C, picked
// at run time), split over the cores (quant_kernels.cc).
mx::array quantized_linear(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group, int bits, mx::StreamOrDevice s = {});

// One matrix for fused_quantized_linear: w, scales, biases, group and bits
// as for quantized_linear, and an optional linear bias (N,).
struct FusedMatrix {
  mx::array w, scales, biases;
  std::optional<mx::array> bias;
  int group, bits;
};

// y_i = norm(x) · dequantize(w_i)ᵀ (+ bias_i) (+ residual) for one to three
// matrices read by quantized_linear's kernels in one primitive (x quantized
// once per distinct group and bits, one pool run): a layer's q/k/v, or gate/up with `swiglu` (one output
// silu(gate)·up), or one matrix with `residual` (M·N elements) added. `norm` =
// (weight (K,), eps) RMS-normalises x first. x is (…, K) or any row-contiguous
// shape of M·K elements; outputs are (…, N_i) like x ((M, N_i) otherwise), or
// `out_shapes` (same element counts). Each row's result is one fixed sequence
// of operations whatever M. nullopt where quantized_linear would not apply.
std::optional<std::vector<mx::array>> fused_quantized_linear(const mx::array& x, const std::vector<FusedMatrix>& mats,
                                                             const std::optional<std::pair<mx::array, float>>& norm,
                                                             const std::optional<mx::array>& residual, bool swiglu,
                                                             const std::vector<mx::Shape>& out_shapes = {},
                                                             mx::StreamOrDevice s = {});

// The instruction set quantized_linear uses: 0 plain C, 1 AVX2, 2 AVX-512
// VNNI. `force` ≥ 0 caps it (tests run every level the CPU has), -1 restores
// the automatic choice, < -1 only reads.
int quantized_kernel_level(int force);

// ---- image models (image_kernels.cc)

// Whether gemm takes these arguments: float32 x (…, K) and w (N, K) on a CPU
// stream, and a BLAS to call.
bool gemm_applies(const mx::array& x, const mx::array& w, mx::StreamOrDevice s = {});

// x · wᵀ (+ bias) split over the cores by us, one single-threaded sgemm each
// (by rows, or by weight rows when x has few): OpenBLAS's own threads spin
// in sched_yield between calls, which on two cores took 15% of a diffusion run.
// `image_rows` (activations of many rows, image tokens): from 192 rows on,
// AVX-512 CPUs take conv2d's direct kernel instead (the weight repacked per
// call; the other callers keep sgemm, whose results do not depend on the
// number of rows, which chunked LLM prefill may rely on).
mx::array gemm(const mx::array& x, const mx::array& w, const std::optional<mx::array>& bias,
               mx::StreamOrDevice s = {}, bool image_rows = false);

// Whether conv2d takes these arguments: float32 NHWC x and (O, KH, KW, I)
// weight on a CPU stream, one group, no dilation, and a BLAS to call.
bool conv2d_applies(const mx::array& x, const mx::array& w, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                    mx::StreamOrDevice s = {});

// 2-D convolution (+ bias) without im2col: the output positions go in tiles
// over the cores; each tile's receptive fields are packed into a buffer that
// stays in cache (1×1 stride-1 convolutions read the input in place) and
// multiplied by the weight with one single-threaded sgemm.
mx::array conv2d(const mx::array& x, const mx::array& w, const std::optional<mx::array>& bias, int sh, int sw, int ph,
                 int pw, mx::StreamOrDevice s = {});

// Whether pack_conv_weight takes w: float32 (O, KH, KW, I) on a CPU stream
// where the direct conv kernel runs (image kernel level ≥ 1).
bool conv_weight_packs(const mx::array& w, mx::StreamOrDevice s = {});

// Whether a dense (N, K) weight w, as a 1×1 conv weight (N, 1, 1, K), is
// worth packing once for gemm's image rows: float32 on a CPU stream where the
// direct kernel runs and beats sgemm at this shape (AVX2: N ≤ K).
bool linear_weight_packs(const mx::array& w, mx::StreamOrDevice s = {});

// The output tile m (2 or 4) of the Winograd F(m×m, 3×3) layout that
// pack_conv_weight(w, sh, sw) makes, or 0 for the direct kernel's: Winograd for
// a 3×3 weight used at stride 1 with channels where it beats the direct
// kernel, unless conv_winograd turned it off.
int conv_weight_winograd(const mx::array& w, int sh, int sw);

// w in the direct conv kernel's blocks (a 1-D array), or for a conv that
// conv_weight_winograd picks its Winograd transform (4× the floats), for
// conv2d_packed: conv2d repacks its weight on every call (a UNet's 90 MB read
// and written again per step).
mx::array pack_conv_weight(const mx::array& w, int sh, int sw, mx::StreamOrDevice s = {});

// conv2d with a weight of shape `ws` (O, KH, KW, I) that pack_conv_weight packed.
mx::array conv2d_packed(const mx::array& x, const mx::array& packed, std::array<int, 4> ws,
                        const std::optional<mx::array>& bias, int sh, int sw, int ph, int pw, mx::StreamOrDevice s = {});

// The instruction set the image kernels use: 2 AVX-512 (conv2d directly, no
// patches or sgemm; attention on intrinsics with a scalef exp), 1 AVX2 + FMA
// (conv2d directly, in 16-channel slices), 0 the portable paths. `force` ≥ 0
// caps it, -1 restores the automatic choice, < -1 only reads.
int image_kernel_level(int force);

// The Winograd tile pack_conv_weight packs 3×3 stride-1 convs for (2 or 4;
// 0: the direct kernel): MLXENGINE_WINOGRAD=0, 2 or 4 picks, else the
// default; `force` 0, 2 or 4 overrides that, -1 restores it, anything else
// only reads. Weights already packed keep their layout.
int conv_winograd(int force);

// Group normalisation of x (N, ..., C) over all positions and the C/groups
// channels of each group, scaled and shifted per channel, then SiLU when
// `silu`: the statistics in one pass (float partials added in double), the
// output in a second, both split over the cores.
mx::array group_norm(const mx::array& x, int groups, const mx::array& weight, const mx::array& bias, float eps,
                     bool silu, mx::StreamOrDevice s = {});

// softmax(q kᵀ·scale) v per head for q (B, L, H·D) and k, v (B, S, H·D),
// heads side by side in the last axis as the projections give them; returns
// (B, L, H·D). Holds a few query rows' scores at a time, never L × S.
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, int heads, float scale,
                    mx::StreamOrDevice s = {});

}  // namespace mlxe::kernels
