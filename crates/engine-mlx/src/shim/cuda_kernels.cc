// Our CUDA kernels as MLX custom kernels; see cuda_kernels.h.
#include "engine-mlx/src/shim/cuda_kernels.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace mlxe::cuda {
namespace {

// Device code shared by the kernels (NVRTC prepends MLX's device utilities,
// which bring the half and bfloat16 types).
constexpr const char* kHeader = R"(
namespace mlxe {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// The values of x in one 32-bit word, as floats (bfloat16 widens by a shift).
template <typename T> struct Unpack;
template <> struct Unpack<float> {
  static constexpr int N = 1;
  __device__ static void run(uint32_t v, float* o) { o[0] = __uint_as_float(v); }
};
template <> struct Unpack<__nv_bfloat16> {
  static constexpr int N = 2;
  __device__ static void run(uint32_t v, float* o) {
    o[0] = __uint_as_float(v << 16);
    o[1] = __uint_as_float(v & 0xffff0000u);
  }
};
template <> struct Unpack<__half> {
  static constexpr int N = 2;
  __device__ static void run(uint32_t v, float* o) {
    float2 f = __half22float2(*reinterpret_cast<__half2*>(&v));
    o[0] = f.x;
    o[1] = f.y;
  }
};

// Packed elements as exact floats without int-to-float conversions (a
// quarter of the rate): element j, masked in place and OR-ed into the
// mantissa of 2^23, minus 2^23, is q · 2^(BITS·pos) with pos = j for the
// first SPLIT elements of a word, whose bits lie inside the mantissa; the
// rest come from one shift of the word. The matching x is scaled by
// 2^(-BITS·pos) (exact), once for all rows.
template <int BITS>
struct Packed {
  static constexpr int SPLIT = 23 / BITS;
  static constexpr uint32_t MASK = (1u << BITS) - 1;
  __device__ static constexpr int pos(int j) { return j < SPLIT ? j : j - SPLIT; }
  __device__ static constexpr float x_scale(int j) { return 1.0f / float(1u << (BITS * pos(j))); }
  __device__ static __forceinline__ float scaled_q(uint32_t word, uint32_t high, int j) {
    const uint32_t src = j < SPLIT ? word : high;
    return __uint_as_float(0x4B000000u | (src & (MASK << (BITS * pos(j))))) - 8388608.0f;
  }
};

// y (M, N) = x (M, K) · dequantize(w)ᵀ, each weight byte read once per MT
// rows of x. Threads stride over K in 16-byte chunks of w (one 128-bit load
// per row, inside one quantization group); per chunk a row adds
// scale · Σ q·x + bias · Σ x, in float32. WARP_ROWS: each warp owns ROWS rows
// (its lanes split K; a shuffle sums them), so a block's warps share x
// through L1. Otherwise the block owns ROWS rows, all its threads split K,
// and shared memory sums the warps.
template <typename T, int BITS, int GS, int MT, int ROWS, bool WARP_ROWS>
__device__ __forceinline__ void qmv(const T* x, const uint32_t* w, const T* scales, const T* biases, T* y,
                                    int M, int N, int K) {
  constexpr int E = 128 / BITS;               // elements in a chunk
  constexpr int PW = 32 / BITS;               // elements in a word of w
  constexpr int XPW = Unpack<T>::N;           // elements in a word of x
  constexpr int XWORDS = PW / XPW;            // words of x under a word of w
  static_assert(GS % E == 0, "a chunk must lie inside one group");
  const int chunks = K / E, groups = K / GS, row_words = K / PW;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int row0 = WARP_ROWS ? (blockIdx.x * int(blockDim.x / 32) + warp) * ROWS : blockIdx.x * ROWS;
  const int m0 = blockIdx.y * MT;
  if (WARP_ROWS && row0 >= N) return;

  float acc[ROWS][MT];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

  for (int c = WARP_ROWS ? lane : threadIdx.x; c < chunks; c += WARP_ROWS ? 32 : blockDim.x) {
    uint4 wv[ROWS];
    float sc[ROWS], bi[ROWS];
    const int g = c * E / GS;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      // Rows past N read row N-1 and are never written.
      const size_t n = min(row0 + r, N - 1);
      wv[r] = __ldg(reinterpret_cast<const uint4*>(w + n * row_words) + c);
      sc[r] = to_float(scales[n * groups + g]);
      bi[r] = to_float(biases[n * groups + g]);
    }
    float qx[ROWS][MT], xs[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      xs[m] = 0.f;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) qx[r][m] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float q[ROWS][PW];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const uint32_t word = reinterpret_cast<const uint32_t*>(&wv[r])[i];
        const uint32_t high = word >> (BITS * Packed<BITS>::SPLIT);
#pragma unroll
        for (int j = 0; j < PW; ++j) q[r][j] = Packed<BITS>::scaled_q(word, high, j);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m0 + m < M) {
          const uint32_t* xp = reinterpret_cast<const uint32_t*>(x + size_t(m0 + m) * K + c * E + i * PW);
          uint32_t xw[XWORDS];
          if constexpr (XWORDS % 4 == 0) {
#pragma unroll
            for (int v = 0; v < XWORDS / 4; ++v) {
              const uint4 u = __ldg(reinterpret_cast<const uint4*>(xp) + v);
              xw[4 * v] = u.x; xw[4 * v + 1] = u.y; xw[4 * v + 2] = u.z; xw[4 * v + 3] = u.w;
            }
          } else {
#pragma unroll
            for (int v = 0; v < XWORDS / 2; ++v) {
              const uint2 u = __ldg(reinterpret_cast<const uint2*>(xp) + v);
              xw[2 * v] = u.x; xw[2 * v + 1] = u.y;
            }
          }
#pragma unroll
          for (int v = 0; v < XWORDS; ++v) {
            float xf[XPW];
            Unpack<T>::run(xw[v], xf);
#pragma unroll
            for (int t = 0; t < XPW; ++t) {
              const int j = v * XPW + t;
              xs[m] += xf[t];
              const float xj = xf[t] * Packed<BITS>::x_scale(j);
#pragma unroll
              for (int r = 0; r < ROWS; ++r) qx[r][m] = fmaf(q[r][j], xj, qx[r][m]);
            }
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[r][m] += sc[r] * qx[r][m] + bi[r] * xs[m];
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int o = 16; o > 0; o /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
  if constexpr (WARP_ROWS) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (lane == r * MT + m && row0 + r < N && m0 + m < M) y[size_t(m0 + m) * N + row0 + r] = from_float<T>(acc[r][m]);
  } else {
    __shared__ float part[4][ROWS * MT];
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) part[warp][r * MT + m] = acc[r][m];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < ROWS * MT; i += blockDim.x) {
      const int n = row0 + i / MT, m = m0 + i % MT;
      if (n < N && m < M) {
        float v = 0.f;
        for (int k = 0; k < int(blockDim.x / 32); ++k) v += part[k][i];
        y[size_t(m) * N + n] = from_float<T>(v);
      }
    }
  }
}

}  // namespace mlxe
)";

// The kernel body; MLX declares the parameters (with x's shape and ndim and
// w's shape, since the body names them) and the template constants before it.
// x keeps its leading axes: a reshape would add graph nodes to every call.
constexpr const char* kSource = R"(
  int M = 1;
  for (int i = 0; i + 1 < x_ndim; ++i) M *= x_shape[i];
  mlxe::qmv<T, BITS, GS, MT, ROWS, WARP_ROWS>(x, w, scales, biases, y, M, w_shape[0], x_shape[x_ndim - 1]);
)";

// The header without its comments and blank lines: MLX hashes the whole
// source on every call, so a shorter one costs less per call.
std::string strip_comments(const char* src) {
  std::string out;
  const std::string s(src);
  for (size_t pos = 0; pos < s.size();) {
    size_t end = s.find('\n', pos);
    if (end == std::string::npos) end = s.size();
    const std::string line = s.substr(pos, end - pos);
    const size_t first = line.find_first_not_of(' ');
    if (first != std::string::npos && line.compare(first, 2, "//") != 0) out += line + '\n';
    pos = end + 1;
  }
  return out;
}

const mx::fast::CustomKernelFunction& qmv_kernel() {
  static const auto k = mx::fast::cuda_kernel("mlxe_qmv", {"x", "w", "scales", "biases"}, {"y"}, kSource,
                                              strip_comments(kHeader), /*ensure_row_contiguous=*/true);
  return k;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{env_int("MLXENGINE_CUDA_QMV", 1) != 0};
  return on;
}

QmvLayout default_layout() {
  static const QmvLayout l = [] {
    const char* v = std::getenv("MLXENGINE_CUDA_QMV_LAYOUT");
    return v != nullptr && std::string(v) == "warp" ? QmvLayout::WarpRows : QmvLayout::BlockRows;
  }();
  return l;
}

bool float_type(mx::Dtype d) { return d == mx::float32 || d == mx::float16 || d == mx::bfloat16; }

// A check that holds for lazy arrays too (their layout is known only once evaluated).
bool row_contiguous(const mx::array& a) { return !a.is_available() || a.flags().row_contiguous; }

}  // namespace

void set_enabled(bool on) { enabled().store(on); }

mx::array qmv(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
              int group_size, int bits, QmvLayout layout, mx::StreamOrDevice s) {
  if (bits != 4 && bits != 8) throw std::invalid_argument("mlxe qmv: only 4- and 8-bit weights");
  if (group_size != 32 && group_size != 64 && group_size != 128)
    throw std::invalid_argument("mlxe qmv: group size must be 32, 64 or 128");
  if (x.ndim() < 1 || w.ndim() != 2 || w.dtype() != mx::uint32) throw std::invalid_argument("mlxe qmv: bad shapes");
  const int K = x.shape(-1), N = w.shape(0);
  if (K % group_size != 0 || w.shape(1) != K * bits / 32 || scales.shape() != mx::Shape{N, K / group_size} ||
      biases.shape() != scales.shape())
    throw std::invalid_argument("mlxe qmv: weights, scales and biases do not fit x");
  if (!float_type(x.dtype()) || scales.dtype() != x.dtype() || biases.dtype() != x.dtype())
    throw std::invalid_argument("mlxe qmv: x, scales and biases must share one float dtype");
  const int M = K == 0 ? 0 : static_cast<int>(x.size() / K);
  mx::Shape out_shape = x.shape();
  out_shape.back() = N;
  if (M == 0 || N == 0) return mx::zeros(out_shape, x.dtype(), s);

  const int mt = std::min(M, QMV_ROW_TILE);
  const bool warp_rows = layout == QmvLayout::WarpRows;
  // Rows per warp (or block): as many as keep ~2 blocks per SM on the narrow
  // layers (k/v projections), since more rows share each load of x.
  const int rows = warp_rows ? (N >= 4096 ? 4 : N >= 2048 ? 2 : 1) : (N >= 2048 ? 4 : N >= 512 ? 2 : 1);
  const int chunks = K / (128 / bits);
  const int threads = warp_rows ? 128 : std::min(128, (chunks + 31) / 32 * 32);
  const int rows_per_block = warp_rows ? rows * threads / 32 : rows;
  const int blocks = (N + rows_per_block - 1) / rows_per_block;
  return qmv_kernel()({x, w, scales, biases}, {out_shape}, {x.dtype()}, {blocks * threads, (M + mt - 1) / mt, 1},
                      {threads, 1, 1},
                      {{"T", x.dtype()},
                       {"BITS", bits},
                       {"GS", group_size},
                       {"MT", mt},
                       {"ROWS", rows},
                       {"WARP_ROWS", warp_rows}},
                      std::nullopt, false, s)[0];
}

std::optional<mx::array> quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                          const std::optional<mx::array>& biases, bool transpose, int group_size,
                                          int bits, mx::StreamOrDevice s) {
  if (!enabled().load() || !transpose || !biases || (bits != 4 && bits != 8)) return std::nullopt;
  if (mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  static const int max_rows = env_int("MLXENGINE_CUDA_QMV_MAX_ROWS", QMV_MAX_ROWS);
  if (x.ndim() < 1 || w.ndim() != 2 || w.dtype() != mx::uint32 || !float_type(x.dtype())) return std::nullopt;
  const int K = x.shape(-1);
  if (K == 0 || x.size() / K > static_cast<size_t>(max_rows) || w.shape(1) != K * bits / 32) return std::nullopt;
  // Small layers are bound by the per-call cost on the CPU, where MLX's op is
  // cheaper than a custom kernel's (H100: 4 vs 7 us for a 2048x2048 matvec).
  const size_t min_size = x.size() == static_cast<size_t>(K) ? QMV_MIN_SIZE_ONE_ROW : QMV_MIN_SIZE;
  if (static_cast<size_t>(w.shape(0)) * K < min_size) return std::nullopt;
  if (scales.dtype() != x.dtype() || biases->dtype() != x.dtype()) return std::nullopt;
  // A strided view of the weights would be copied on every call: MLX's kernel reads it as is.
  if (!row_contiguous(w) || !row_contiguous(scales) || !row_contiguous(*biases)) return std::nullopt;
  return qmv(x, w, scales, *biases, group_size, bits, default_layout(), s);
}

}  // namespace mlxe::cuda
