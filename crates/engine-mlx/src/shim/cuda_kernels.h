// CUDA kernels of our own, run as MLX custom kernels (`mx::fast::cuda_kernel`,
// compiled by NVRTC on first use). Built only with the `cuda` feature; each
// entry point declines (returns nullopt) where it does not apply, and the
// caller falls back to MLX's own op.
#pragma once

#include "mlx/mlx.h"

#include <optional>

namespace mlxe::cuda {

namespace mx = mlx::core;

// Rows of x (batch × tokens) up to which `quantized_matmul` uses our kernel
// unless MLXENGINE_CUDA_QMV_MAX_ROWS says otherwise. Below 8 rows MLX runs its
// matvec once per row of x (H100, 8B gate/up at 4 rows: 142 us, ours 67); from
// 8 rows its tensor-core qmm wins (8 rows: 37 us, ours 78).
constexpr int QMV_MAX_ROWS = 7;

// Rows of x one block of our kernel covers (more rows: more blocks).
constexpr int QMV_ROW_TILE = 8;

// Weight sizes (rows × columns) from which our kernel takes over, for one
// row of x and for more: below, the per-call cost on the CPU dominates and
// MLX's built-in op is cheaper.
constexpr size_t QMV_MIN_SIZE_ONE_ROW = size_t(8) << 20;
constexpr size_t QMV_MIN_SIZE = size_t(4) << 20;

// How the kernel spreads rows of w: each block owns a few (shared memory sums
// its warps; the default: more blocks, faster decode on an H100) or each warp
// owns a few (a shuffle sums its lanes; MLXENGINE_CUDA_QMV_LAYOUT=warp).
enum class QmvLayout { WarpRows, BlockRows };

// Turns our kernels on or off for this process (on by default unless
// MLXENGINE_CUDA_QMV=0); for A/B checks against MLX's own kernels.
void set_enabled(bool on);

// x · dequantize(w)ᵀ for MLX affine 4- or 8-bit weights (packed uint32
// (N, K·bits/32), scales and biases (N, K/group)) and x (…, K) in float32,
// float16 or bfloat16 with at most the row limit above, on the GPU:
// one pass over the weights with 128-bit loads and dequantization in
// registers. nullopt where it does not apply (another device, dtype, bits,
// transposition, no biases, more rows, our kernels off).
std::optional<mx::array> quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                          const std::optional<mx::array>& biases, bool transpose, int group_size,
                                          int bits, mx::StreamOrDevice s = {});

// The same kernel without the row and size limits or the on/off switch (the
// parity check at 32 rows); throws where the kernel cannot run.
mx::array qmv(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
              int group_size, int bits, QmvLayout layout = QmvLayout::BlockRows, mx::StreamOrDevice s = {});

}  // namespace mlxe::cuda
