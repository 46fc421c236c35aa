// CUDA kernels of our own for decode: an MLX primitive whose eval_gpu adds a
// kernel node compiled once per configuration by NVRTC (no per-call source
// building, as MLX's `fast::cuda_kernel` does on every call). Built only with
// the `cuda` feature; each entry point declines (returns nullopt) where it
// does not apply, and the caller falls back to MLX's own ops.
#pragma once

#include "mlx/mlx.h"

#include <optional>
#include <vector>

namespace mlxe::cuda {

namespace mx = mlx::core;

// Rows of x (batch × tokens) up to which `quantized_matmul` uses our kernel
// unless MLXENGINE_CUDA_QMV_MAX_ROWS says otherwise. Below 8 rows MLX runs its
// matvec once per row of x (H100, 8B gate/up at 4 rows: 142 us, ours 67); from
// 8 rows its tensor-core qmm wins (8 rows: 37 us, ours 78).
constexpr int QMV_MAX_ROWS = 7;

// Rows of x one block of our kernel covers (more rows: more blocks).
constexpr int QMV_ROW_TILE = 8;

// Turns our kernels on or off for this process (on by default unless
// MLXENGINE_CUDA_QMV=0); for A/B checks against MLX's own kernels.
void set_enabled(bool on);

// Whether our kernels are on (see set_enabled).
bool enabled_now();

// One matrix (N, K): MLX affine-quantized (packed uint32 (N, K·bits/32),
// scales and biases (N, K/group)) or dense in x's dtype (no scales or
// biases; `bits` 0 in fused_qmv), and an optional per-row bias (N,) added to
// the product (a linear layer's bias).
struct QuantMatrix {
  mx::array w;
  std::optional<mx::array> scales, biases;
  std::optional<mx::array> bias;
};

// What follows the products.
enum class Epilogue {
  // One output per matrix, (…, N_i).
  Split,
  // Two matrices (gate, up) of one shape: one output silu(gate)·up.
  SwiGlu,
};

// y_i = norm(x) · dequantize(w_i)ᵀ (+ bias_i) (+ residual) for x of M rows
// of K (…, K), or any row-contiguous shape of M·K elements) in float32,
// float16 or bfloat16 with M at most the row limit above, on the GPU, in one
// kernel: one pass over the weights with 128-bit loads, dequantized in
// registers, float32 sums, one rounding to x's dtype. `norm` = (weight (K,),
// eps) applies RMS normalisation to x first; `residual` (M·N elements) is
// added to a single matrix's product. All matrices share bits and group size;
// `bits` 0 takes dense matrices in x's dtype. Outputs are (…, N_i) like x, or `out_shapes` when given (the same element
// counts: a decode step's q, k, v as (B, heads, 1, head_dim)). nullopt where
// it does not apply (another device, dtype, bits, more rows, our kernels off).
std::optional<std::vector<mx::array>> fused_qmv(const mx::array& x, const std::vector<QuantMatrix>& mats, int group_size,
                                                int bits, const std::optional<std::pair<mx::array, float>>& norm,
                                                const std::optional<mx::array>& residual, Epilogue epilogue,
                                                const std::vector<mx::Shape>& out_shapes = {}, mx::StreamOrDevice s = {});

// A decode step's attention in one kernel, after the q/k/v projections: RoPE
// of q (B, H, 1, D) and of the new key k (B, KV, 1, D) at rotary position
// `pos` (or rows[b][0] per batch row), k and v written into the caches (B, KV,
// cap, D) at `slot`, then softmax(q·kᵀ·scale)·v over slots 0..n_keys (from
// rows[b][1] per row: left padding), which include `slot`. RoPE: the first
// `dims` features, frequencies `inv_freq` (dims/2,) float32 times
// `rope_scale`, adjacent pairs when `traditional` (else halves), as
// mx::fast::rope. Returns the output (B, H, 1, D). The caches' buffers are
// written IN PLACE when the returned array is evaluated: the caller must own
// them alone (no other array, view or copy of them may be read after this
// call) — a KV cache's buffers, which only its next steps read. q, k, v and
// the caches must be row-contiguous in one float dtype (q, k and v may also
// come as the projections' (B, 1, heads·D); the output takes q's shape). With
// `packed_heads` = H > 0, q is a packed projection (B, 1, (H + 2·KV)·D) holding
// each row's q, k and v (k and v are not read) and the output is (B, 1, H·D).
// nullopt where it does not apply (another device, head size, shapes, our
// kernels off or MLXENGINE_CUDA_ATTN=0; packed, MLXENGINE_CUDA_PACK=0).
std::optional<mx::array> decode_attention(const mx::array& q, const mx::array& k, const mx::array& v,
                                          const mx::array& k_cache, const mx::array& v_cache,
                                          const mx::array& inv_freq, const std::optional<mx::array>& rows, int slot,
                                          int n_keys, int pos, int dims, bool traditional, float rope_scale,
                                          float scale, int packed_heads = 0, mx::StreamOrDevice s = {});

// The kernels of a decode step's consecutive stages — arrays made by
// fused_qmv and decode_attention, in the order they run, none evaluated yet —
// as one node of MLX's CUDA graph, each kernel launched programmatically
// behind the one before it (it starts while that one drains and waits for its
// results on the GPU; sm_90 on, elsewhere it waits as before). The stages'
// arrays (siblings included) become that node's outputs in place, so anything
// reading them reads the chain's. Each stage may read earlier stages' outputs
// (or reshapes of them) and arrays that do not depend on any stage. Returns
// whether it chained them; false, changing nothing, where it does not apply
// (another primitive, a stage evaluated, an input computed from a stage's
// output other than by a reshape, our kernels off, a driver before CUDA 12.3)
// or does not pay: by default only stages reading at least 256 MiB
// (MLXENGINE_CUDA_PDL_MIN_MB) chain, as only long steps gained on an H100
// (pdl_settings); MLXENGINE_CUDA_PDL=0 never, =1 always.
bool chain(const std::vector<mx::array>& stages);

// x (…, K) · wᵀ for a dense w (N, K) in x's dtype and at most 8 rows of x,
// in one kernel that keeps several 16-byte loads a lane in flight (a decode
// step's matvecs stream their weights once: the bytes in flight bound them).
// nullopt where it does not apply (another device or dtype, more rows, K not
// whole 16-byte chunks, our kernels off, or MLXENGINE_CUDA_DMV=0).
std::optional<mx::array> dense_matvec(const mx::array& x, const mx::array& w, mx::StreamOrDevice s = {});

// silu(gate)·up of a packed gate/up projection (…, 2·I) → (…, I) in one kernel
// (MLX's ops take two views and three element-wise kernels); nullopt where it
// does not apply (another device or dtype, our kernels off, MLXENGINE_CUDA_PACK=0).
std::optional<mx::array> swiglu_packed(const mx::array& gu, mx::StreamOrDevice s = {});

// (a + b, rms_norm(a + b)·w) in one kernel: a residual add and the RMS norm
// after it (MLX's ops take two), rounded as MLX's add and rms_norm round;
// nullopt where it does not apply (another device, dtypes or shapes that
// differ, our kernels off or MLXENGINE_CUDA_ADD_NORM=0).
std::optional<std::pair<mx::array, mx::array>> add_rms_norm(const mx::array& a, const mx::array& b,
                                                            const mx::array& w, float eps, mx::StreamOrDevice s = {});

// GEGLU of x (…, 2·F) → (…, F), the first half times the exact GELU of the
// second, in one kernel (MLX's ops take six element-wise kernels); nullopt
// where it does not apply (another device or dtype, our kernels off).
std::optional<mx::array> geglu(const mx::array& x, mx::StreamOrDevice s = {});

// Group norm of channels-last x (N, …, C) with weight and bias (C,) in x's
// dtype, optionally followed by SiLU: two kernels (statistics, then the
// normalised, scaled and shifted elements) where MLX's ops on the GPU take a
// transpose each way, a layer norm and three element-wise kernels; nullopt
// where it does not apply.
std::optional<mx::array> group_norm(const mx::array& x, int groups, const mx::array& weight, const mx::array& bias,
                                    float eps, bool silu, mx::StreamOrDevice s = {});

// x · dequantize(w)ᵀ (MLX's quantized_matmul with transpose) through our
// kernel where it applies (see fused_qmv), else nullopt.
std::optional<mx::array> quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                          const std::optional<mx::array>& biases, bool transpose, int group_size,
                                          int bits, mx::StreamOrDevice s = {});

// The same kernel without the row limit or the on/off switch (the parity
// check at 32 rows); throws where the kernel cannot run.
mx::array qmv(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
              int group_size, int bits, mx::StreamOrDevice s = {});

}  // namespace mlxe::cuda
