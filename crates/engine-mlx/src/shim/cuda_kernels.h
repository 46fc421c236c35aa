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
