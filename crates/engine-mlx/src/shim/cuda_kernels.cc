// Our CUDA kernels as an MLX primitive; see cuda_kernels.h.
#include "engine-mlx/src/shim/cuda_kernels.h"

#include <dlfcn.h>

#include "mlx/allocator.h"
#include "mlx/primitives.h"

#include <array>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <unordered_set>

// The entry points of MLX's CUDA backend we use, declared here because
// the wheel's backend headers need fmt, which the wheel does not ship. They are
// exported from libmlx (`nm -DC libmlx.so`); dim3 and CUfunc_st only need
// their names and layout to match CUDA's.
struct dim3 {
  unsigned int x, y, z;
};
struct CUfunc_st;
struct CUgraph_st;
struct CUgraphNode_st;
namespace mlx::core::cu {
class CommandEncoder {
 public:
  void set_input_array(const array& arr);
  void set_output_array(const array& arr);
  void add_kernel_node_raw(CUfunc_st* func, dim3 grid, dim3 block, dim3 cluster, uint32_t smem, void** params);
  void add_graph_node(CUgraph_st* child);
};
CommandEncoder& get_command_encoder(Stream s);
// The head of MLX's CUDA buffer (mlx/backend/cuda/allocator.h): its device pointer.
struct CudaBuffer {
  void* data;
};
}  // namespace mlx::core::cu

namespace mlxe::cuda {
namespace {

// Kernel arguments, laid out alike on the host and in the device code below.
struct Params {
  const void* x;
  const void* norm;
  const void* residual;
  const void* w[3];
  const void* scales[3];
  const void* biases[3];
  const void* bias[3];
  void* y[3];
  int n_end[3];  // cumulative rows of the matrices (Split), or N (SwiGlu)
  int M, K, ldx, ldr;
  float eps;
};

// Device code. No headers: half and bfloat16 travel as 16-bit words and
// convert with PTX, so NVRTC needs no include path on the GPU machine.
constexpr const char* kSource = R"(
namespace mlxe {
typedef unsigned int u32;
typedef unsigned short u16;

// Programmatic dependent launch (sm_90 on): in a chain of kernels (`Chain`,
// host side) a kernel may start while the one before it finishes, so its
// blocks must wait here before they read anything that one wrote or write
// anything at all; and each kernel lets the next one launch as soon as all its
// own blocks run. Both are no-ops for a kernel launched otherwise.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
struct Params {
  const void* x; const void* norm; const void* residual;
  const void* w[3]; const void* scales[3]; const void* biases[3]; const void* bias[3];
  void* y[3];
  int n_end[3];
  int M, K, ldx, ldr;
  float eps;
};

template <int KIND> struct Elem;
template <> struct Elem<0> {  // float32
  typedef float S;
  static constexpr int N = 1;
  __device__ static float get(S v) { return v; }
  __device__ static S put(float v) { return v; }
  __device__ static void unpack(u32 v, float* o) { o[0] = __uint_as_float(v); }
};
template <> struct Elem<1> {  // float16
  typedef u16 S;
  static constexpr int N = 2;
  __device__ static float get(S v) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f; }
  __device__ static S put(float v) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h; }
  __device__ static void unpack(u32 v, float* o) { o[0] = get(u16(v & 0xffffu)); o[1] = get(u16(v >> 16)); }
};
template <> struct Elem<2> {  // bfloat16: widening is a shift
  typedef u16 S;
  static constexpr int N = 2;
  __device__ static float get(S v) { return __uint_as_float(u32(v) << 16); }
  __device__ static S put(float v) { u16 h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h; }
  __device__ static void unpack(u32 v, float* o) { o[0] = __uint_as_float(v << 16); o[1] = __uint_as_float(v & 0xffff0000u); }
};

// Packed elements as exact floats without int-to-float conversions: element
// j, masked in place and OR-ed into the mantissa of 2^23, minus 2^23, is
// q · 2^(BITS·pos); the matching x is scaled by 2^(-BITS·pos) (exact).
template <int BITS> struct Packed {
  static constexpr int SPLIT = 23 / BITS;
  static constexpr u32 MASK = (1u << BITS) - 1;
  __device__ static constexpr int pos(int j) { return j < SPLIT ? j : j - SPLIT; }
  __device__ static constexpr float x_scale(int j) { return 1.0f / float(1u << (BITS * pos(j))); }
  __device__ static __forceinline__ float scaled_q(u32 word, u32 high, int j) {
    const u32 src = j < SPLIT ? word : high;
    return __uint_as_float(0x4B000000u | (src & (MASK << (BITS * pos(j))))) - 8388608.0f;
  }
  // The same from lo, hi: the word and the word shifted right by BITS·SPLIT,
  // each with 2^23's bits OR-ed in by or_opaque (they miss the elements read
  // from each): (w | m) & (mask | m) = (w & mask) | m, one AND with one
  // immediate a weight. Written as mask-then-OR, the compiler keeps 2^23 as
  // the immediate and rematerialises a register for each mask before most
  // ANDs: at one row of x this form takes 12-14% fewer instructions in the
  // matvec's loop (SASS for sm_90) and fewer registers; at 4 rows, where a
  // dequantized weight serves 4 FMAs, 5% more, so qmv picks by MT.
  __device__ static __forceinline__ float scaled_q_or(u32 lo, u32 hi, int j) {
    const u32 src = j < SPLIT ? lo : hi;
    return __uint_as_float(src & ((MASK << (BITS * pos(j))) | 0x4B000000u)) - 8388608.0f;
  }
  // Without the subtraction (qmv's DEQ 1): element j masked in place, read as
  // is, is a denormal float, q · 2^(BITS·pos) · 2^-149, exact (NVIDIA GPUs
  // multiply-add denormals at full rate, and NVRTC keeps them unless told
  // --use_fast_math); x scaled by 2^(149 - 64 - BITS·pos) makes each product
  // q·x·2^-64 (normal for |x| ≳ 1e-19, finite for |x| ≲ 1e12), and the chunk's
  // scale, times 2^64, undoes it once. One AND and one FMA a weight.
  __device__ static __forceinline__ float denorm_q(u32 word, u32 high, int j) {
    const u32 src = j < SPLIT ? word : high;
    return __uint_as_float(src & (MASK << (BITS * pos(j))));
  }
  // 2^(85 - BITS·pos) built from its exponent bits: a constant once j is unrolled.
  __device__ static __forceinline__ float x_scale_denorm(int j) {
    return __uint_as_float(u32(127 + 85 - BITS * pos(j)) << 23);
  }
};
constexpr float DENORM_UNDO = 18446744073709551616.0f;  // 2^64

// w | M, opaque to the compiler, so it cannot fold an AND of the result with
// (mask | M) back into (w & mask) | M, which costs a register for the mask
// (rematerialised before most uses) where this AND takes one immediate.
template <u32 M> __device__ __forceinline__ u32 or_opaque(u32 w) {
#ifdef MLXE_EMULATED
  return w | M;
#else
  u32 r;
  asm("or.b32 %0, %1, %2;" : "=r"(r) : "r"(w), "n"(M));
  return r;
#endif
}

// Loads the XW words of x-like data (x or the norm weight) under one word of w.
template <int XW> __device__ __forceinline__ void load_words(const void* p, u32* o) {
  if constexpr (XW % 4 == 0) {
#pragma unroll
    for (int v = 0; v < XW / 4; ++v) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + v);
      o[4 * v] = u.x; o[4 * v + 1] = u.y; o[4 * v + 2] = u.z; o[4 * v + 3] = u.w;
    }
  } else {
#pragma unroll
    for (int v = 0; v < XW / 2; ++v) {
      const uint2 u = __ldg(reinterpret_cast<const uint2*>(p) + v);
      o[2 * v] = u.x; o[2 * v + 1] = u.y;
    }
  }
}

// The E floats of a 16-byte chunk of x-like data.
template <typename EL, int E> __device__ __forceinline__ void unpack_chunk(const uint4 u, float* o) {
  EL::unpack(u.x, o);
  EL::unpack(u.y, o + E / 4);
  EL::unpack(u.z, o + E / 2);
  EL::unpack(u.w, o + 3 * E / 4);
}

// The inverse: E floats rounded into a 16-byte chunk of x's dtype.
template <typename EL, int E> __device__ __forceinline__ uint4 pack_chunk(const float* f) {
  u32 w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (EL::N == 1) {
      w[i] = __float_as_uint(f[i]);
    } else {
      w[i] = u32(EL::put(f[2 * i])) | (u32(EL::put(f[2 * i + 1])) << 16);
    }
  }
  uint4 u;
  u.x = w[0];
  u.y = w[1];
  u.z = w[2];
  u.w = w[3];
  return u;
}

// Row r of the ROWS rows that group `base` of a kernel owns in the stacked
// matrices (SwiGlu: ROWS/2 gate rows, then the same rows of up): its matrix
// (returned), its row in it, and whether it exists (one past the end points
// at row 0, so its loads stay in bounds).
template <int ROWS, int MODE>
__device__ __forceinline__ int stacked_row(const Params& p, int base, int r, int& row, bool& live) {
  if constexpr (MODE == 1) {
    const int v = base * (ROWS / 2) + r % (ROWS / 2);
    live = v < p.n_end[0];
    row = live ? v : 0;
    return r / (ROWS / 2);
  } else {
    int v = base * ROWS + r;
    live = v < p.n_end[2];
    if (!live) v = 0;
    const int i = v < p.n_end[0] ? 0 : v < p.n_end[1] ? 1 : 2;
    row = v - (i == 0 ? 0 : p.n_end[i - 1]);
    return i;
  }
}

// The Split epilogue: matrix a's row n for row m of x, its bias and the
// residual added, rounded once.
template <typename EL> __device__ __forceinline__ void put_split(const Params& p, int a, int n, int m, float v) {
  typedef typename EL::S S;
  if (p.bias[a] != nullptr) v += EL::get(static_cast<const S*>(p.bias[a])[n]);
  if (p.residual != nullptr) v += EL::get(static_cast<const S*>(p.residual)[size_t(m) * p.ldr + n]);
  const int rows_a = p.n_end[a] - (a == 0 ? 0 : p.n_end[a - 1]);
  static_cast<S*>(p.y[a])[size_t(m) * rows_a + n] = EL::put(v);
}

// The SwiGlu epilogue: silu(gate)·up for row n of the gate and up matrices and row m of x.
template <typename EL> __device__ __forceinline__ void put_swiglu(const Params& p, int n, int m, float a, float b) {
  static_cast<typename EL::S*>(p.y[0])[size_t(m) * p.n_end[0] + n] = EL::put(a / (1.0f + __expf(-a)) * b);
}

// A 16-byte chunk of packed weights; LD 1 loads it evict-first (`ld.global.cs`:
// each weight is read once a step, so x and the norm weight keep the caches).
template <int LD> __device__ __forceinline__ uint4 load_w(const uint4* p) {
  if constexpr (LD == 1) {
    return __ldcs(p);
  } else {
    return __ldg(p);
  }
}

// One block owns ROWS rows of the stacked matrices (SwiGlu: ROWS/2 gate rows
// and the same up rows) and MT rows of x; its threads stride over K in
// 16-byte chunks of w (one 128-bit load per row, inside one group), adding
// scale · Σ q·x + bias · Σ x per chunk in float32; shared memory sums the warps.
// (Dense weights take fdmv, in kAttnSource.)
template <int KIND, int BITS, int GS, int MT, int ROWS, int MODE, int NORM, int DEQ = 0, int PF = 0, int LD = 0>
__device__ __forceinline__ void qmv(const Params& p) {
  static_assert(BITS == 4 || BITS == 8, "dense weights take fdmv");
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  constexpr int E = 128 / BITS, PW = 32 / BITS, XPW = EL::N, XWORDS = PW / XPW;
  const int M = p.M, K = p.K, chunks = K / E, groups = K / GS, row_words = K / PW;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int m0 = blockIdx.y * MT;
  const S* x = static_cast<const S*>(p.x);
  const S* g = static_cast<const S*>(p.norm);

  const uint4* wr[ROWS];
  const S* sr[ROWS];
  const S* br[ROWS];
  int mat[ROWS], row[ROWS];
  bool live[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int i = mat[r] = stacked_row<ROWS, MODE>(p, blockIdx.x, r, row[r], live[r]);
    wr[r] = reinterpret_cast<const uint4*>(static_cast<const u32*>(p.w[i]) + size_t(row[r]) * row_words);
    sr[r] = static_cast<const S*>(p.scales[i]) + size_t(row[r]) * groups;
    br[r] = static_cast<const S*>(p.biases[i]) + size_t(row[r]) * groups;
  }
  // In a chain: the row pointers above never depend on the kernel before.
  pdl_launch_dependents();
  pdl_wait();

  // part: each warp's row sums, then (NORM) its sums of squares of x. The
  // norm's 1/RMS scales the sums at the end, so the squares can be summed in
  // the main loop from the x it reads anyway (NORM 1: no pass over x before
  // the weights stream, ~5% more instructions in the loop) or in a pass of
  // 16-byte loads first (NORM 2).
  __shared__ float part[8][ROWS * MT + MT];
  __shared__ float res[ROWS * MT];
  float ss[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) ss[m] = 0.f;
  if constexpr (NORM == 2) {
    constexpr int EX = 16 / sizeof(S);
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m0 + m < M)
        for (int c = threadIdx.x; c < K / EX; c += blockDim.x) {
          float f[EX];
          unpack_chunk<EL, EX>(__ldg(reinterpret_cast<const uint4*>(x + size_t(m0 + m) * p.ldx) + c), f);
#pragma unroll
          for (int e = 0; e < EX; ++e) ss[m] = fmaf(f[e], f[e], ss[m]);
        }
  }

  float acc[ROWS][MT];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

  // PF 1: each thread loads its next chunk (weights, scales, biases) while it
  // computes this one, twice the bytes in flight a thread.
  uint4 nw[ROWS];
  S nsc[ROWS], nbi[ROWS];
  auto fetch = [&](int c) {
    const int grp = c * E / GS;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      nw[r] = load_w<LD>(wr[r] + c);
      nsc[r] = sr[r][grp];
      nbi[r] = br[r][grp];
    }
  };
  if constexpr (PF == 1) {
    if (int(threadIdx.x) < chunks) fetch(threadIdx.x);
  }
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    uint4 wv[ROWS];
    float sc[ROWS], bi[ROWS];
    if constexpr (PF == 1) {
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        wv[r] = nw[r];
        sc[r] = EL::get(nsc[r]);
        bi[r] = EL::get(nbi[r]);
      }
      if (c + int(blockDim.x) < chunks) fetch(c + blockDim.x);
    } else {
      const int grp = c * E / GS;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        wv[r] = load_w<LD>(wr[r] + c);
        sc[r] = EL::get(sr[r][grp]);
        bi[r] = EL::get(br[r][grp]);
      }
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
      if constexpr (DEQ == 3) {  // probe: the loads alone (wrong results)
#pragma unroll
        for (int r = 0; r < ROWS; ++r) qx[r][0] += __uint_as_float(reinterpret_cast<const u32*>(&wv[r])[i] & 0x007FFFFFu);
        continue;
      }
      float q[ROWS][PW];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const u32 word = reinterpret_cast<const u32*>(&wv[r])[i];
        const u32 high = word >> (BITS * Packed<BITS>::SPLIT);
        if constexpr (DEQ == 1 || DEQ == 2) {
#pragma unroll
          for (int j = 0; j < PW; ++j) q[r][j] = Packed<BITS>::denorm_q(word, high, j);
        } else if constexpr (MT == 1) {
          const u32 lo = or_opaque<0x4B000000u>(word), hi = or_opaque<0x4B000000u>(high);
#pragma unroll
          for (int j = 0; j < PW; ++j) q[r][j] = Packed<BITS>::scaled_q_or(lo, hi, j);
        } else {
#pragma unroll
          for (int j = 0; j < PW; ++j) q[r][j] = Packed<BITS>::scaled_q(word, high, j);
        }
      }
      if constexpr (DEQ == 2) {  // probe: the weights' side alone, x a constant (wrong results)
#pragma unroll
        for (int j = 0; j < PW; ++j)
#pragma unroll
          for (int r = 0; r < ROWS; ++r) qx[r][0] = fmaf(q[r][j], Packed<BITS>::x_scale_denorm(j), qx[r][0]);
        continue;
      }
      const int col = c * E + i * PW;
      float gf[PW];
      if constexpr (NORM) {
        u32 gw[XWORDS];
        load_words<XWORDS>(g + col, gw);
#pragma unroll
        for (int v = 0; v < XWORDS; ++v) EL::unpack(gw[v], gf + v * XPW);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m0 + m < M) {
          u32 xw[XWORDS];
          load_words<XWORDS>(x + size_t(m0 + m) * p.ldx + col, xw);
#pragma unroll
          for (int v = 0; v < XWORDS; ++v) {
            float xf[XPW];
            EL::unpack(xw[v], xf);
#pragma unroll
            for (int t = 0; t < XPW; ++t) {
              const int j = v * XPW + t;
              if constexpr (NORM == 1) ss[m] = fmaf(xf[t], xf[t], ss[m]);
              const float xv = NORM ? xf[t] * gf[j] : xf[t];
              xs[m] += xv;
              const float xj = xv * (DEQ == 1 ? Packed<BITS>::x_scale_denorm(j) : Packed<BITS>::x_scale(j));
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
      for (int m = 0; m < MT; ++m) acc[r][m] += (DEQ == 1 ? sc[r] * DENORM_UNDO : sc[r]) * qx[r][m] + bi[r] * xs[m];
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int o = 16; o > 0; o /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
    }
  if constexpr (NORM) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int o = 16; o > 0; o /= 2) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m) part[warp][r * MT + m] = acc[r][m];
    if constexpr (NORM) {
#pragma unroll
      for (int m = 0; m < MT; ++m) part[warp][ROWS * MT + m] = ss[m];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < ROWS * MT; i += blockDim.x) {
    float v = 0.f;
    for (int k = 0; k < nwarps; ++k) v += part[k][i];
    if constexpr (NORM) {
      float sq = 0.f;
      for (int k = 0; k < nwarps; ++k) sq += part[k][ROWS * MT + i % MT];
      v *= rsqrtf(sq / float(K) + p.eps);
    }
    res[i] = v;
  }
  __syncthreads();

  if constexpr (MODE == 1) {
    for (int i = threadIdx.x; i < (ROWS / 2) * MT; i += blockDim.x) {
      const int r = i / MT, m = i % MT;
      const int n = blockIdx.x * (ROWS / 2) + r;
      if (n < p.n_end[0] && m0 + m < M) put_swiglu<EL>(p, n, m0 + m, res[r * MT + m], res[(r + ROWS / 2) * MT + m]);
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * MT; i += blockDim.x) {
      const int r = i / MT, m = i % MT;
      if (live[r] && m0 + m < M) put_split<EL>(p, mat[r], row[r], m0 + m, res[i]);
    }
  }
}
}  // namespace mlxe
)";

// Arguments of the decode attention kernels, laid out alike on the host and
// in the device code below.
struct AttnParams {
  const void* q;  // (B, H, 1, D): this step's queries, before RoPE
  const void* k;  // (B, KV, 1, D): this step's key, before RoPE
  const void* v;  // (B, KV, 1, D)
  void* kc;  // (B, KV, cap, D): the caches, written at `slot` in place
  void* vc;
  void* out;  // (B, H, 1, D)
  float* part;  // (B, KV, splits, G, D + 2) float32: each split's sums, max and total
  const float* inv_freq;  // (dims / 2,): RoPE's angular frequencies
  const int* rows;  // (B, 2) int32 [rotary position, first valid slot] or null
  int H, KV, cap, slot, n_keys, pos, dims, traditional;
  float rope_scale, scale;
  // Elements from one batch row's q to the next, and k's (and v's): H·D and
  // KV·D, or (H + 2·KV)·D for a packed q/k/v projection's rows.
  int ldq, ldk;
  // Zeroed counters, B·KV of them from counter_base, that find the last split
  // to finish (it merges the splits; it leaves its counter at zero again).
  int* counters;
  int counter_base;
};

// One decode step's attention after the q/k/v projections: RoPE of the
// queries and of the new key, the new key and value written into the caches
// in place, softmax(q·kᵀ·scale)·v over the cached slots plus the new one.
// One block a (KV head, batch row, split of the slots), for the G query heads
// sharing that KV head (each key and value row is read once for all of them);
// the splits spread a long cache over the GPU. Each block rotates the new key
// itself and uses it from shared memory for its own slot, so blocks never wait
// on each other's writes (split 0 writes it; no block reads that slot from
// memory). A block's threads take the cached rows D/8 threads a row (16-byte
// loads), 4 rows a group of them in registers, the first 4 loaded before the
// set-up so their latency hides behind it; each group runs its own online
// softmax, and the groups merge once at the end (no block-wide step per tile).
// One split writes the output; several write float32 partials, and the last
// split to finish (a counter) merges them: one kernel node in all.
constexpr const char* kAttnSource = R"(
namespace mlxe {
struct AttnParams {
  const void* q; const void* k; const void* v;
  void* kc; void* vc; void* out; float* part;
  const float* inv_freq; const int* rows;
  int H, KV, cap, slot, n_keys, pos, dims, traditional;
  float rope_scale, scale;
  int ldq, ldk;
  int* counters; int counter_base;
};

// The most splits of the slots a call takes (attn_splits, host side, caps at
// the same number): the last split's merge keeps their weights in shared memory.
constexpr int MAX_SPLITS = 32;

template <typename EL> __device__ __forceinline__ void unpack16(const uint4 u, float* f) {
  constexpr int E = 16 / sizeof(typename EL::S);
  EL::unpack(u.x, f);
  EL::unpack(u.y, f + E / 4);
  EL::unpack(u.z, f + E / 2);
  EL::unpack(u.w, f + 3 * E / 4);
}

template <int KIND, int D, int G>
__device__ __forceinline__ void attend(const AttnParams& p) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  constexpr int E = 16 / sizeof(S);  // elements a 16-byte load
  constexpr int RW = D / E;          // loads a row
  // Threads a row: RW rounded up to a power of two (≤ 32), so a row's lanes
  // are one aligned segment of a warp and reduce with shuffles.
  constexpr int RWP = RW <= 1 ? 1 : RW <= 2 ? 2 : RW <= 4 ? 4 : RW <= 8 ? 8 : RW <= 16 ? 16 : 32;
  constexpr int GROUPS = 256 / RWP;  // rows at a time
  constexpr int NP = 4;              // rows a group holds in registers: a tile is GROUPS·NP rows
  constexpr int TILE = GROUPS * NP;
  const int kvh = blockIdx.x, b = blockIdx.y, split = blockIdx.z, splits = gridDim.z, tid = threadIdx.x;
  const int pos = p.rows ? p.rows[2 * b] : p.pos;
  const int first = p.rows ? p.rows[2 * b + 1] : 0;
  const int per = (p.n_keys - first + splits - 1) / splits;
  const int k0 = first + split * per, k1 = k0 + per < p.n_keys ? k0 + per : p.n_keys;
  const int grp = tid / RWP, col = (tid % RWP) * E;
  const bool active = tid % RWP < RW && grp < GROUPS;
  const size_t row0 = (size_t(b) * p.KV + kvh) * p.cap;
  S* kc = static_cast<S*>(p.kc) + row0 * D;
  S* vc = static_cast<S*>(p.vc) + row0 * D;

  // The first tile's cached rows go out before anything else: their latency
  // overlaps the set-up (q, RoPE) and, in a chain, the q/k/v kernel's end —
  // the cache's earlier slots do not depend on it; q, k and v are read after
  // the wait. The new slot is never read from memory (split 0 writes it;
  // every block takes the rotated key from shared memory).
  pdl_launch_dependents();
  uint4 kw[NP], vw[NP];
  auto load_tile = [&](int base) {
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int t = base + grp + j * GROUPS;
      if (active && t < k1 && t != p.slot) {
        kw[j] = *reinterpret_cast<const uint4*>(kc + size_t(t) * D + col);
        vw[j] = *reinterpret_cast<const uint4*>(vc + size_t(t) * D + col);
      }
    }
  };
  load_tile(k0);
  pdl_wait();

  __shared__ float qs[G][D], ks[D], vs[D];
  __shared__ float gm[GROUPS][G], gl[GROUPS][G];
  const S* q = static_cast<const S*>(p.q) + size_t(b) * p.ldq + size_t(kvh) * G * D;
  const S* kn = static_cast<const S*>(p.k) + size_t(b) * p.ldk + size_t(kvh) * D;
  const S* vn = static_cast<const S*>(p.v) + size_t(b) * p.ldk + size_t(kvh) * D;
  for (int i = tid; i < G * D; i += blockDim.x) qs[i / D][i % D] = EL::get(q[i]);
  for (int d = tid; d < D; d += blockDim.x) {
    ks[d] = EL::get(kn[d]);
    vs[d] = EL::get(vn[d]);
  }
  // This thread's RoPE angle (one a thread: dims / 2 ≤ 128 < the block's
  // 256 threads), worked out while q, k and v are on their way.
  const int half = p.dims / 2, j = tid;
  float sn = 0.f, cs = 1.f;
  if (j < half) sincosf(float(pos) * p.rope_scale * p.inv_freq[j], &sn, &cs);
  __syncthreads();
  // RoPE, rounded to the cache's dtype as a separate rope op would.
  if (j < half) {
    const int i1 = p.traditional ? 2 * j : j, i2 = p.traditional ? 2 * j + 1 : j + half;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float a = qs[g][i1], c = qs[g][i2];
      qs[g][i1] = EL::get(EL::put(a * cs - c * sn));
      qs[g][i2] = EL::get(EL::put(a * sn + c * cs));
    }
    const float x = ks[i1], y = ks[i2];
    ks[i1] = EL::get(EL::put(x * cs - y * sn));
    ks[i2] = EL::get(EL::put(x * sn + y * cs));
  }
  __syncthreads();
  if (split == 0)
    for (int d = tid; d < D; d += blockDim.x) {
      kc[size_t(p.slot) * D + d] = EL::put(ks[d]);
      vc[size_t(p.slot) * D + d] = EL::put(vs[d]);
    }

  // Each group of RWP threads runs its own online softmax over its rows (no
  // block-wide step per tile); the groups merge at the end.
  float qr[G][E], acc[G][E], m[G], l[G];
  const float neg_inf = __int_as_float(0xff800000);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = neg_inf;
    l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      qr[g][e] = active ? qs[g][col + e] * p.scale : 0.f;
      acc[g][e] = 0.f;
    }
  }
  // A thread's part of one cached row as floats: zeros past the block's rows
  // (or on an idle lane), the new slot's from shared memory, else its load.
  auto row_of = [&](bool live, bool own, const float* shared, const uint4 packed, float* f) {
    if (!live) {
#pragma unroll
      for (int e = 0; e < E; ++e) f[e] = 0.f;
    } else if (own) {
#pragma unroll
      for (int e = 0; e < E; ++e) f[e] = shared[col + e];
    } else {
      unpack16<EL>(packed, f);
    }
  };
  for (int base = k0; base < k1; base += TILE) {
    if (base != k0) load_tile(base);
    float s[NP][G];
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int t = base + grp + j * GROUPS;
      float kf[E];
      row_of(active && t < k1, t == p.slot, ks, kw[j], kf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) d = fmaf(qr[g][e], kf[e], d);
        s[j][g] = d;
      }
    }
    // A row's lanes sum their parts of each score.
#pragma unroll
    for (int o = RWP / 2; o > 0; o /= 2)
#pragma unroll
      for (int j = 0; j < NP; ++j)
#pragma unroll
        for (int g = 0; g < G; ++g) s[j][g] += __shfl_xor_sync(0xffffffffu, s[j][g], o);
    // Online softmax: the new max per query head rescales what came before
    // (a group with no row yet keeps -inf and nothing to rescale).
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float mn = m[g];
#pragma unroll
      for (int j = 0; j < NP; ++j)
        if (base + grp + j * GROUPS < k1) mn = fmaxf(mn, s[j][g]);
      const float corr = mn == neg_inf ? 1.f : __expf(m[g] - mn);
      m[g] = mn;
      l[g] *= corr;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] *= corr;
    }
    // Each value row unpacked once, for all the query heads.
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int t = base + grp + j * GROUPS;
      if (t >= k1) continue;
      float vf[E];
      row_of(active, t == p.slot, vs, vw[j], vf);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float w = __expf(s[j][g] - m[g]);
        l[g] += w;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] = fmaf(w, vf[e], acc[g][e]);
      }
    }
  }

  // The groups' (max, total) per query head, then their sums rescaled to the
  // block's max: the output, or this split's partials. One warp a query head
  // reduces the groups' pairs (its lanes over the groups) into shared memory:
  // every thread doing all G·GROUPS pairs itself was a third of the kernel.
  constexpr int WARPS = 256 / 32;
  const int warp = tid / 32, lane = tid % 32;
  __shared__ float hmax[G], hsum[G];
  if (tid % RWP == 0 && grp < GROUPS)
#pragma unroll
    for (int g = 0; g < G; ++g) {
      gm[grp][g] = m[g];
      gl[grp][g] = l[g];
    }
  __syncthreads();
  for (int g = warp; g < G; g += WARPS) {
    float mx = neg_inf, t = 0.f;
    for (int r = lane; r < GROUPS; r += 32) mx = fmaxf(mx, gm[r][g]);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    for (int r = lane; r < GROUPS; r += 32)
      if (gl[r][g] > 0.f) t = fmaf(gl[r][g], __expf(gm[r][g] - mx), t);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (lane == 0) {
      hmax[g] = mx;
      hsum[g] = t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const float w = l[g] > 0.f ? __expf(m[g] - hmax[g]) : 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[g][e] *= w;
  }
  // The groups of a warp sum by shuffles, the warps through shared memory,
  // CH query heads at a time (CH·D ≤ 512 floats a warp: 16 KB in all): one
  // pair of barriers a chunk, where it was a pair a head.
  constexpr int CH = G * D <= 512 ? G : (512 / D > 0 ? 512 / D : 1);
  __shared__ float part[WARPS][CH * D];
#pragma unroll
  for (int g = 0; g < G; ++g)
#pragma unroll
    for (int o = RWP; o < 32; o *= 2)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  // A split's partials: sums (D), max, total for each query head.
  float* mine = splits > 1 ? p.part + ((size_t(b) * p.KV + kvh) * splits + split) * (G * (D + 2)) : nullptr;
#pragma unroll
  for (int g0 = 0; g0 < G; g0 += CH) {
    if (lane < RWP && active)
#pragma unroll
      for (int g = g0; g < g0 + CH && g < G; ++g)
#pragma unroll
        for (int e = 0; e < E; ++e) part[warp][(g - g0) * D + col + e] = acc[g][e];
    __syncthreads();
    for (int i = tid; i < CH * D && g0 + i / D < G; i += blockDim.x) {
      const int g = g0 + i / D, d = i % D;
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) v += part[w][i];
      const float hm = hmax[g], hl = hsum[g];
      if (splits == 1) {
        static_cast<S*>(p.out)[(size_t(b) * p.H + kvh * G + g) * D + d] = EL::put(v / hl);
      } else {
        float* o = mine + g * (D + 2);
        o[d] = v;
        if (d == 0) {
          o[D] = hm;
          o[D + 1] = hl;
        }
      }
    }
    __syncthreads();
  }
  if (splits == 1) return;

  // The last split of this (batch row, KV head) to finish merges them all
  // (the counter's classic pattern: partials fenced before the count).
  // The barrier orders the block's partials before thread 0's fence, which
  // publishes them all (as cooperative groups' grid sync does).
  __shared__ int last;
  __syncthreads();
  if (tid == 0) {
    __threadfence();
    int* ctr = p.counters + p.counter_base + b * p.KV + kvh;
    last = atomicAdd(ctr, 1) == splits - 1;
    if (last) *ctr = 0;  // every split has counted: ready for a later call
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  // The merge's loads go out at once: a thread's PER output elements from up
  // to MS splits, beside every split's (max, total) — one trip to L2 where
  // reading split after split cost ~0.4 µs a split on the H200. The weights
  // come from shared memory once the loads are back.
  constexpr int PER = (G * D + 255) / 256, MS = 32 / PER < 16 ? 32 / PER : 16;  // ≤ 32 registers of values
  const size_t stride = size_t(G) * (D + 2);
  const float* base = p.part + (size_t(b) * p.KV + kvh) * splits * stride;
  __shared__ float wsp[MAX_SPLITS][G], tsp[MAX_SPLITS][G], den[G];
  float v[PER][MS];
  auto load_values = [&](int s0) {
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int i = tid + k * 256;
#pragma unroll
      for (int j = 0; j < MS; ++j)
        v[k][j] = i < G * D && s0 + j < splits ? __ldcg(base + size_t(s0 + j) * stride + (i / D) * (D + 2) + i % D)
                                               : 0.f;
    }
  };
  load_values(0);
  for (int i = tid; i < splits * G; i += blockDim.x) {
    const float* o = base + size_t(i / G) * stride + (i % G) * (D + 2);
    wsp[i / G][i % G] = __ldcg(o + D);
    tsp[i / G][i % G] = __ldcg(o + D + 1);
  }
  __syncthreads();
  // One warp a query head, a lane a split (≤ MAX_SPLITS = 32): each split's
  // weight, and their total.
  for (int g = warp; g < G; g += WARPS) {
    const bool live = lane < splits && tsp[lane][g] > 0.f;  // an empty split has no max
    float mx = live ? wsp[lane][g] : neg_inf;
#pragma unroll
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    const float w = live ? __expf(wsp[lane][g] - mx) : 0.f;
    float d = w * (live ? tsp[lane][g] : 0.f);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) d += __shfl_xor_sync(0xffffffffu, d, o);
    if (lane < splits) wsp[lane][g] = w;
    if (lane == 0) den[g] = d;
  }
  __syncthreads();
  float num[PER];
#pragma unroll
  for (int k = 0; k < PER; ++k) num[k] = 0.f;
  for (int s0 = 0; s0 < splits; s0 += MS) {
    if (s0 > 0) load_values(s0);
#pragma unroll
    for (int k = 0; k < PER; ++k) {
      const int g = (tid + k * 256) / D;
#pragma unroll
      for (int j = 0; j < MS; ++j)
        if (g < G && s0 + j < splits) num[k] = fmaf(wsp[s0 + j][g], v[k][j], num[k]);
    }
  }
#pragma unroll
  for (int k = 0; k < PER; ++k) {
    const int i = tid + k * 256;
    if (i < G * D)
      static_cast<S*>(p.out)[(size_t(b) * p.H + kvh * G + i / D) * D + i % D] = EL::put(num[k] / den[i / D]);
  }
}

// A gated linear unit over rows of [a (I) | b (I)] in, rows of I out; one
// thread an element, float32 math, one rounding. ACT 0: silu(a)·b (a packed
// gate/up projection's SwiGLU); ACT 1: a·gelu(b), the exact (erf) GELU
// (diffusers' GEGLU: the first half the value, the second the gate).
template <int KIND, int ACT>
__device__ __forceinline__ void glu(const void* gu, void* out, int rows, int I) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  const size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= size_t(rows) * I) return;
  const S* g = static_cast<const S*>(gu) + (i / I) * 2 * size_t(I) + i % I;
  const float a = EL::get(g[0]), u = EL::get(g[I]);
  const float y = ACT == 0 ? a / (1.0f + __expf(-a)) * u : a * (0.5f * u * (1.0f + erff(u * 0.70710678118654752f)));
  static_cast<S*>(out)[i] = EL::put(y);
}

// The dense matvecs' loop: acc[r][m] = Σ_k w_r[k]·x_m[k] (NORM: ·g[k], and
// ss[m] = Σ_k x_m[k]²) over K in 16-byte chunks, SK consecutive warps of a
// block a row (lane i of the SK·32 taking chunks i, i + SK·32, …), U chunks a
// row in flight a lane (every load of a step issued before its math). Decode
// streams each weight once, so the bytes in flight bound the speed; and its
// matvecs run one after another, so a grid's last wave is lost time: SK > 1
// splits the rows of the narrow matrices (q/k/v, o, down) into more, shorter
// warp tasks. The SK warps' sums meet in shared memory; the first warp of a row
// group ends with the totals in every lane. x and g are read through the L1
// cache (every warp of a block reads them).
template <typename EL, int MT, int RPW, int U, bool NORM, int SK>
__device__ __forceinline__ void dmv_loop(const typename EL::S* x, int ldx, const typename EL::S* g,
                                         const uint4* const (&w)[RPW], int M, int chunks, float (&acc)[RPW][MT],
                                         float (&ss)[MT]) {
  typedef typename EL::S S;
  constexpr int E = 16 / sizeof(S), L = 32 * SK;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    ss[m] = 0.f;
#pragma unroll
    for (int r = 0; r < RPW; ++r) acc[r][m] = 0.f;
  }
  // A step of `n` chunks a row from chunk c (n ≤ U): every load first.
  auto step = [&](int c, int n) {
    uint4 wv[RPW][U];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < RPW; ++r)
        if (u < n) wv[r][u] = __ldg(w[r] + c + L * u);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (u >= n) break;
      float gf[E];
      if constexpr (NORM) unpack_chunk<EL, E>(__ldg(reinterpret_cast<const uint4*>(g) + c + L * u), gf);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= M) break;
        float xf[E];
        unpack_chunk<EL, E>(__ldg(reinterpret_cast<const uint4*>(x + size_t(m) * ldx) + c + L * u), xf);
        if constexpr (NORM) {
#pragma unroll
          for (int e = 0; e < E; ++e) {
            ss[m] = fmaf(xf[e], xf[e], ss[m]);
            xf[e] *= gf[e];
          }
        }
#pragma unroll
        for (int r = 0; r < RPW; ++r) {
          float wf[E];
          unpack_chunk<EL, E>(wv[r][u], wf);
#pragma unroll
          for (int e = 0; e < E; ++e) acc[r][m] = fmaf(wf[e], xf[e], acc[r][m]);
        }
      }
    }
  };
  int c = threadIdx.x % L;
  for (; c + L * (U - 1) < chunks; c += L * U) step(c, U);
  // The last chunks of a row, fewer than U a lane.
  if (c < chunks) step(c, (chunks - c + L - 1) / L);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int o = 16; o > 0; o /= 2) acc[r][m] += __shfl_xor_sync(0xffffffffu, acc[r][m], o);
    if constexpr (NORM) {
#pragma unroll
      for (int o = 16; o > 0; o /= 2) ss[m] += __shfl_xor_sync(0xffffffffu, ss[m], o);
    }
  }
  if constexpr (SK > 1) {
    // Every thread reaches the barriers (no early return before this loop).
    constexpr int V = RPW * MT + MT;
    __shared__ float red[8][V];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int r = 0; r < RPW; ++r) red[warp][r * MT + m] = acc[r][m];
        red[warp][RPW * MT + m] = ss[m];
      }
    }
    __syncthreads();
    if (warp % SK == 0)
#pragma unroll
      for (int k = 1; k < SK; ++k)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
#pragma unroll
          for (int r = 0; r < RPW; ++r) acc[r][m] += red[warp + k][r * MT + m];
          ss[m] += red[warp + k][RPW * MT + m];
        }
  }
}

// y (M, N) = x (M, K) · wᵀ for dense w (N, K) in x's dtype, M ≤ MT rows (a
// decode step): SK warps RPW rows of w (dmv_loop), float32 sums, one rounding.
template <int KIND, int MT, int RPW, int U, int SK>
__device__ __forceinline__ void dmv(const void* xp, const void* wp, void* yp, int M, int N, int K, int ldx) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  // A warp past the last row reads the last one again and writes nothing
  // (no early return: the emulation's shuffles need every thread).
  const int n0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) / SK * RPW;
  const uint4* w[RPW];
#pragma unroll
  for (int r = 0; r < RPW; ++r)
    w[r] = reinterpret_cast<const uint4*>(static_cast<const S*>(wp) + size_t(n0 + r < N ? n0 + r : N - 1) * K);
  float acc[RPW][MT], ss[MT];
  dmv_loop<EL, MT, RPW, U, false, SK>(static_cast<const S*>(xp), ldx, nullptr, w, M, K / (16 / int(sizeof(S))), acc,
                                      ss);
  if (threadIdx.x % (32 * SK) == 0)
#pragma unroll
    for (int r = 0; r < RPW; ++r)
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < M && n0 + r < N) static_cast<S*>(yp)[size_t(m) * N + n0 + r] = EL::put(acc[r][m]);
}

// The fused matvec (qmv's Params, epilogues and norm) on dense weights with
// dmv's loop: SK warps RPW rows of the stacked matrices (MODE 1, SwiGLU: RPW
// 2, a gate row and its up row) and MT rows of x from blockIdx.y·MT. NORM:
// the RMS norm's squares summed in the loop, its 1/RMS applied to the sums.
template <int KIND, int MT, int RPW, int U, int MODE, int NORM, int SK>
__device__ __forceinline__ void fdmv(const Params& p) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  static_assert(MODE == 0 || RPW == 2, "SwiGLU pairs a gate row and an up row");
  const int K = p.K, m0 = blockIdx.y * MT, M = min(p.M - m0, MT);
  const int slot = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) / SK;
  const uint4* w[RPW];
  int mat[RPW], row[RPW];
  bool live[RPW];
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    mat[r] = stacked_row<RPW, MODE>(p, slot, r, row[r], live[r]);
    w[r] = reinterpret_cast<const uint4*>(static_cast<const S*>(p.w[mat[r]]) + size_t(row[r]) * K);
  }
  pdl_launch_dependents();
  pdl_wait();
  float acc[RPW][MT], ss[MT];
  dmv_loop<EL, MT, RPW, U, NORM != 0, SK>(static_cast<const S*>(p.x) + size_t(m0) * p.ldx, p.ldx,
                                          static_cast<const S*>(p.norm), w, M, K / (16 / int(sizeof(S))), acc, ss);
  // The first warp of a row group writes, lane i the i-th (row, row of x).
  const int lane = threadIdx.x % 32;
  if ((threadIdx.x / 32) % SK != 0) return;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    const float inv = NORM ? rsqrtf(ss[m] / float(K) + p.eps) : 1.0f;
    if constexpr (MODE == 1) {
      if (lane == m && live[0]) put_swiglu<EL>(p, row[0], m0 + m, acc[0][m] * inv, acc[1][m] * inv);
    } else {
#pragma unroll
      for (int r = 0; r < RPW; ++r)
        if (lane == (r * MT + m) % 32 && live[r]) put_split<EL>(p, mat[r], row[r], m0 + m, acc[r][m] * inv);
    }
  }
}

// h = a + b, rounded to the dtype as MLX's add would, and y = rms_norm(h)·w
// as MLX's rms_norm rounds it (the normalised value, then times the weight):
// a residual add and the next RMS norm in one kernel node where MLX's ops
// take two. One block a row of K; each thread keeps its up to CPT 16-byte
// chunks in registers between the sum of squares and the output, and loads
// the weight's before the reduction so its latency hides behind it.
template <int KIND>
__device__ __forceinline__ void add_rms(const void* a, const void* b, const void* w, void* h, void* y, int K,
                                        float eps) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  constexpr int E = 16 / sizeof(S), CPT = 4;
  const int chunks = K / E, tid = threadIdx.x, nt = blockDim.x;
  const size_t off = size_t(blockIdx.x) * K;
  const uint4* ar = reinterpret_cast<const uint4*>(static_cast<const S*>(a) + off);
  const uint4* br = reinterpret_cast<const uint4*>(static_cast<const S*>(b) + off);
  const uint4* wr = reinterpret_cast<const uint4*>(w);
  uint4* hr = reinterpret_cast<uint4*>(static_cast<S*>(h) + off);
  uint4* yr = reinterpret_cast<uint4*>(static_cast<S*>(y) + off);
  uint4 av[CPT], bv[CPT], wv[CPT];
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int c = tid + k * nt;
    if (c < chunks) {
      av[k] = ar[c];
      bv[k] = br[c];
      wv[k] = __ldg(wr + c);
    }
  }
  float v[CPT][E], ss = 0.f;
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int c = tid + k * nt;
    if (c < chunks) {
      float fa[E], fb[E];
      unpack_chunk<EL, E>(av[k], fa);
      unpack_chunk<EL, E>(bv[k], fb);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        v[k][e] = EL::get(EL::put(fa[e] + fb[e]));
        ss = fmaf(v[k][e], v[k][e], ss);
      }
      hr[c] = pack_chunk<EL, E>(v[k]);
    }
  }
  __shared__ float red[32];
#pragma unroll
  for (int o = 16; o > 0; o /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (tid % 32 == 0) red[tid / 32] = ss;
  __syncthreads();
  ss = 0.f;
  for (int i = 0; i < nt / 32; ++i) ss += red[i];
  const float r = rsqrtf(ss / float(K) + eps);
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int c = tid + k * nt;
    if (c < chunks) {
      float fw[E];
      unpack_chunk<EL, E>(wv[k], fw);
#pragma unroll
      for (int e = 0; e < E; ++e) v[k][e] = fw[e] * EL::get(EL::put(v[k][e] * r));
      yr[c] = pack_chunk<EL, E>(v[k]);
    }
  }
}

// Group norm over channels-last x (N, L positions, C), G groups of C/G
// channels, in two kernels. Statistics: one block a (group, slice of the
// positions, image) sums its elements, then their squared deviations from
// its own mean (a second read, from cache: no cancellation of a large mean),
// and writes (count, mean, M2). Apply: each block merges the slices of its
// image's groups (Chan's formula) and normalises its elements, times the
// weight, plus the bias, optionally SiLU, one rounding.
struct GnParams {
  const void* x; const void* w; const void* b; void* y; float* part;
  int L, C, G, slices;
  float eps;
  int silu;
};

__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < nw; ++w) t += red[w];
  return t;
}

template <int KIND>
__device__ __forceinline__ void gn_stats(const GnParams& p) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  const int g = blockIdx.x, sl = blockIdx.y, n = blockIdx.z, cg = p.C / p.G;
  const int per = (p.L + p.slices - 1) / p.slices, l0 = sl * per, l1 = l0 + per < p.L ? l0 + per : p.L;
  const int count = l1 > l0 ? (l1 - l0) * cg : 0;
  const S* x = static_cast<const S*>(p.x) + (size_t(n) * p.L) * p.C + size_t(g) * cg;
  __shared__ float red[32];
  float s = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) s += EL::get(x[size_t(l0 + i / cg) * p.C + i % cg]);
  const float mean = count > 0 ? block_sum(s, red) / float(count) : 0.f;
  float q = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const float d = EL::get(x[size_t(l0 + i / cg) * p.C + i % cg]) - mean;
    q = fmaf(d, d, q);
  }
  const float m2 = block_sum(q, red);
  if (threadIdx.x == 0) {
    float* o = p.part + ((size_t(n) * p.G + g) * p.slices + sl) * 3;
    o[0] = float(count);
    o[1] = mean;
    o[2] = m2;
  }
}

template <int KIND>
__device__ __forceinline__ void gn_apply(const GnParams& p) {
  typedef Elem<KIND> EL;
  typedef typename EL::S S;
  const int n = blockIdx.y, cg = p.C / p.G;
  __shared__ float mean[128], rstd[128];
  for (int g = threadIdx.x; g < p.G; g += blockDim.x) {
    const float* o = p.part + (size_t(n) * p.G + g) * p.slices * 3;
    float cnt = 0.f, mu = 0.f, m2 = 0.f;
    // Unrolled so that several slices' loads are in flight at once (each block
    // merges them before its first element).
#pragma unroll 8
    for (int s = 0; s < p.slices; ++s) {
      const float nb = o[3 * s];
      if (nb == 0.f) continue;
      const float d = o[3 * s + 1] - mu, tot = cnt + nb;
      mu += d * nb / tot;
      m2 += o[3 * s + 2] + d * d * cnt * nb / tot;
      cnt = tot;
    }
    mean[g] = mu;
    rstd[g] = rsqrtf(m2 / cnt + p.eps);
  }
  __syncthreads();
  const size_t per_image = size_t(p.L) * p.C;
  const S* x = static_cast<const S*>(p.x) + n * per_image;
  S* y = static_cast<S*>(p.y) + n * per_image;
  const S* w = static_cast<const S*>(p.w);
  const S* b = static_cast<const S*>(p.b);
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < per_image; i += size_t(gridDim.x) * blockDim.x) {
    const int c = int(i % p.C), g = c / cg;
    float v = (EL::get(x[i]) - mean[g]) * rstd[g] * EL::get(w[c]) + EL::get(b[c]);
    if (p.silu) v = v / (1.0f + __expf(-v));
    y[i] = EL::put(v);
  }
}
}  // namespace mlxe
)";

// The driver and NVRTC functions we call, found in the libraries libmlx
// already loaded (it links both).
struct Api {
  using Prog = void*;
  int (*nvrtcCreateProgram)(Prog*, const char*, const char*, int, const char* const*, const char* const*);
  int (*nvrtcCompileProgram)(Prog, int, const char* const*);
  int (*nvrtcGetProgramLogSize)(Prog, size_t*);
  int (*nvrtcGetProgramLog)(Prog, char*);
  int (*nvrtcGetCUBINSize)(Prog, size_t*);
  int (*nvrtcGetCUBIN)(Prog, char*);
  int (*nvrtcDestroyProgram)(Prog*);
  int (*cuCtxGetDevice)(int*);
  int (*cuDeviceGetAttribute)(int*, int, int);
  int (*cuModuleLoadData)(void**, const void*);
  int (*cuModuleGetFunction)(CUfunc_st**, void*, const char*);
};

void* open_lib(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (void* h = dlopen(n, RTLD_NOW | RTLD_GLOBAL)) return h;
  throw std::runtime_error(std::string("mlxe CUDA kernels: cannot open ") + *names.begin() +
                           " (libmlx's CUDA backend needs it too: is LD_LIBRARY_PATH set up as for MLX?)");
}

template <typename F>
void sym(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (f == nullptr) throw std::runtime_error(std::string("mlxe CUDA kernels: missing symbol ") + name);
}

const Api& api() {
  static const Api a = [] {
    Api a{};
    void* nv = open_lib({"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"});
    void* cu = open_lib({"libcuda.so.1", "libcuda.so"});
    sym(nv, "nvrtcCreateProgram", a.nvrtcCreateProgram);
    sym(nv, "nvrtcCompileProgram", a.nvrtcCompileProgram);
    sym(nv, "nvrtcGetProgramLogSize", a.nvrtcGetProgramLogSize);
    sym(nv, "nvrtcGetProgramLog", a.nvrtcGetProgramLog);
    sym(nv, "nvrtcGetCUBINSize", a.nvrtcGetCUBINSize);
    sym(nv, "nvrtcGetCUBIN", a.nvrtcGetCUBIN);
    sym(nv, "nvrtcDestroyProgram", a.nvrtcDestroyProgram);
    sym(cu, "cuCtxGetDevice", a.cuCtxGetDevice);
    sym(cu, "cuDeviceGetAttribute", a.cuDeviceGetAttribute);
    sym(cu, "cuModuleLoadData", a.cuModuleLoadData);
    sym(cu, "cuModuleGetFunction", a.cuModuleGetFunction);
    return a;
  }();
  return a;
}

// What picks a compiled kernel.
struct Config {
  int kind, bits, group, mt, rows, mode;
  int norm;  // 0 none; 1 x's squares summed in the main loop, 2 in a pass first
  int deq;   // 0: packed elements OR-ed into 2^23, minus 2^23; 1: read as denormals
  int pf;    // 1: each thread loads its next chunk while it computes one (packed weights)
  int u;     // dense weights (fdmv): 16-byte chunks a row in flight a lane; `rows` is then rows a warp group
  int sk;    // dense weights (fdmv): warps a row group
  int ld;    // packed weights: 0 loaded through the read-only path (__ldg), 1 evict-first (__ldcs)
  int threads;  // most threads a block of qmv (a multiple of 32, at most 256); not part of the compiled code
  std::string key() const {
    return std::to_string(kind) + "_" + std::to_string(bits) + "_" + std::to_string(group) + "_" + std::to_string(mt) +
           "_" + std::to_string(rows) + "_" + std::to_string(mode) + "_" + std::to_string(norm) + "_" +
           std::to_string(deq) + "_" + std::to_string(pf) + "_" + std::to_string(u) + "_" + std::to_string(sk) + "_" + std::to_string(ld);
  }
  bool dense() const { return bits > 8; }
};

// The driver's graph functions a chain (below) builds its graph with, found
// on first use; chains decline where the driver lacks them (before CUDA 12.3).
struct GraphApi {
  // CUDA_KERNEL_NODE_PARAMS (v2) and CUgraphEdgeData, as cuda.h lays them out.
  struct KernelNode {
    CUfunc_st* func;
    unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, smem;
    void** params;
    void** extra;
    void* kern;
    void* ctx;
  };
  struct Edge {
    unsigned char from_port, to_port, type, reserved[5];
  };
  int (*create)(CUgraph_st**, unsigned);
  int (*destroy)(CUgraph_st*);
  int (*add_kernel)(CUgraphNode_st**, CUgraph_st*, CUgraphNode_st* const*, size_t, const KernelNode*);
  int (*add_deps)(CUgraph_st*, CUgraphNode_st* const*, CUgraphNode_st* const*, const Edge*, size_t);
  bool ok;
};

const GraphApi& graph_api() {
  static const GraphApi g = [] {
    GraphApi g{};
    void* cu = open_lib({"libcuda.so.1", "libcuda.so"});
    g.create = reinterpret_cast<decltype(g.create)>(dlsym(cu, "cuGraphCreate"));
    g.destroy = reinterpret_cast<decltype(g.destroy)>(dlsym(cu, "cuGraphDestroy"));
    g.add_kernel = reinterpret_cast<decltype(g.add_kernel)>(dlsym(cu, "cuGraphAddKernelNode_v2"));
    g.add_deps = reinterpret_cast<decltype(g.add_deps)>(dlsym(cu, "cuGraphAddDependencies_v2"));
    g.ok = g.create && g.destroy && g.add_kernel && g.add_deps;
    return g;
  }();
  return g;
}

// A chain's graph while its stages add their kernels (see `Chain`): each kernel
// node follows the one before it through a programmatic edge.
struct ChainGraph {
  CUgraph_st* graph = nullptr;
  CUgraphNode_st* last = nullptr;
  size_t edges = 0;
};
thread_local ChainGraph* t_chain = nullptr;

// Adds a kernel to MLX's CUDA graph, or to the chain being built on this
// thread. Every kernel a chain may hold waits (`pdl_wait`) before it reads
// what the kernel before it wrote.
void launch(mx::cu::CommandEncoder& enc, CUfunc_st* f, dim3 grid, dim3 block, void** args) {
  ChainGraph* c = t_chain;
  if (c == nullptr) {
    enc.add_kernel_node_raw(f, grid, block, dim3{1, 1, 1}, 0, args);
    return;
  }
  const GraphApi& g = graph_api();
  GraphApi::KernelNode k{f, grid.x, grid.y, grid.z, block.x, block.y, block.z, 0, args, nullptr, nullptr, nullptr};
  CUgraphNode_st* node = nullptr;
  if (g.add_kernel(&node, c->graph, nullptr, 0, &k) != 0) throw std::runtime_error("mlxe chain: cuGraphAddKernelNode failed");
  if (c->last != nullptr) {
    // CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC, CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC
    // for edge i of the chain unless MLXENGINE_CUDA_PDL_EDGES (a string of 0s
    // and 1s, edge i by character i; "plain": all 0) makes it an ordinary
    // edge, after which the kernel's wait is a no-op. Plain edges isolate a
    // chain's host cost from its effect on the GPU, and a mask which edges pay.
    static const std::string mask = [] {
      const char* v = std::getenv("MLXENGINE_CUDA_PDL_EDGES");
      const std::string m = v != nullptr ? v : "";
      return m == "plain" ? std::string(16, '0') : m;
    }();
    const unsigned char kind = c->edges < mask.size() && mask[c->edges] == '0' ? 0 : 1;
    const GraphApi::Edge e{kind, 0, kind, {0, 0, 0, 0, 0}};
    if (g.add_deps(c->graph, &c->last, &node, &e, 1) != 0)
      throw std::runtime_error("mlxe chain: cuGraphAddDependencies failed");
    ++c->edges;
  }
  c->last = node;
}

// The kernel `name` of the source `make_src()` returns, compiled by NVRTC for
// this GPU on first use (each `key` once per process; a few hundred
// milliseconds). A hit costs one map lookup: the source is built on a miss only.
template <typename MakeSrc>
CUfunc_st* compiled(const std::string& key, const char* name, MakeSrc make_src) {
  static std::mutex mu;
  static std::unordered_map<std::string, void*> modules;
  static std::unordered_map<std::string, CUfunc_st*> funcs;
  std::lock_guard<std::mutex> lock(mu);
  std::string fkey = key + "/" + name;
  if (auto it = funcs.find(fkey); it != funcs.end()) return it->second;
  const Api& a = api();
  void* module = nullptr;
  if (auto it = modules.find(key); it != modules.end()) {
    module = it->second;
  } else {
    int dev = 0, major = 0, minor = 0;
    if (a.cuCtxGetDevice(&dev) != 0 || a.cuDeviceGetAttribute(&major, 75, dev) != 0 ||
        a.cuDeviceGetAttribute(&minor, 76, dev) != 0)
      throw std::runtime_error("mlxe CUDA kernels: no current CUDA device");
    const std::string src = make_src();
    void* prog = nullptr;
    if (a.nvrtcCreateProgram(&prog, src.c_str(), "mlxe_kernels.cu", 0, nullptr, nullptr) != 0)
      throw std::runtime_error("mlxe CUDA kernels: nvrtcCreateProgram failed");
    const std::string arch = "--gpu-architecture=sm_" + std::to_string(major) + std::to_string(minor);
    const char* opts[] = {arch.c_str(), "--std=c++17"};
    const int rc = a.nvrtcCompileProgram(prog, 2, opts);
    std::string binary;
    if (rc == 0) {
      size_t n = 0;
      a.nvrtcGetCUBINSize(prog, &n);
      binary.resize(n);
      a.nvrtcGetCUBIN(prog, binary.data());
    } else {
      size_t n = 0;
      a.nvrtcGetProgramLogSize(prog, &n);
      std::string log(n, '\0');
      a.nvrtcGetProgramLog(prog, log.data());
      a.nvrtcDestroyProgram(&prog);
      throw std::runtime_error("mlxe CUDA kernels: NVRTC failed for " + arch + ": " + log);
    }
    a.nvrtcDestroyProgram(&prog);
    if (a.cuModuleLoadData(&module, binary.data()) != 0)
      throw std::runtime_error("mlxe CUDA kernels: cannot load the compiled module " + key);
    modules.emplace(key, module);
  }
  CUfunc_st* f = nullptr;
  if (a.cuModuleGetFunction(&f, module, name) != 0)
    throw std::runtime_error(std::string("mlxe CUDA kernels: no kernel ") + name + " in " + key);
  funcs.emplace(std::move(fkey), f);
  return f;
}

// The matvec kernel of `c`: qmv, or fdmv for dense weights.
CUfunc_st* kernel(const Config& c) {
  if (c.dense())
    return compiled("fdmv_" + c.key(), "mlxe_fdmv", [&] {
      return std::string(kSource) + kAttnSource +
             "extern \"C\" __global__ void __launch_bounds__(256) mlxe_fdmv(const mlxe::Params p) {\n"
             "  mlxe::fdmv<" +
             std::to_string(c.kind) + ", " + std::to_string(c.mt) + ", " + std::to_string(c.rows) + ", " +
             std::to_string(c.u) + ", " + std::to_string(c.mode) + ", " + std::to_string(c.norm) + ", " +
             std::to_string(c.sk) + ">(p);\n}\n";
    });
  return compiled("qmv_" + c.key(), "mlxe_qmv", [&] {
    return std::string(kSource) +
           "extern \"C\" __global__ void __launch_bounds__(256) mlxe_qmv(const mlxe::Params p) {\n"
           "  mlxe::qmv<" +
           std::to_string(c.kind) + ", " + std::to_string(c.bits) + ", " + std::to_string(c.group) + ", " +
           std::to_string(c.mt) + ", " + std::to_string(c.rows) + ", " + std::to_string(c.mode) + ", " +
           std::to_string(c.norm) + ", " + std::to_string(c.deq) + ", " +
           std::to_string(c.pf) + ", " + std::to_string(c.ld) + ">(p);\n}\n";
  });
}

// Threads of a decode attention block (its shared buffers are sized for it).
constexpr unsigned ATTN_THREADS = 256;
// Split counters (see AttnParams::counters): each call takes the next B·KV of
// them, round a ring far larger than the calls a graph holds at once.
constexpr int ATTN_COUNTERS = 1 << 20;

// The decode attention kernel for x's dtype, head size and query heads per KV head.
CUfunc_st* attn_kernel(int kind, int head_dim, int group) {
  const std::string cfg = std::to_string(kind) + ", " + std::to_string(head_dim) + ", " + std::to_string(group);
  return compiled("attn_" + cfg, "mlxe_attn", [&] {
    return std::string(kSource) + kAttnSource +
           "extern \"C\" __global__ void __launch_bounds__(256) mlxe_attn(const mlxe::AttnParams p) {\n"
           "  mlxe::attend<" + cfg + ">(p);\n}\n";
  });
}

// An array's device address, as MLX's gpu_ptr (offsets are in bytes).
const void* gptr(const mx::array& a) {
  const auto* b = static_cast<const mx::cu::CudaBuffer*>(a.buffer().ptr());
  return static_cast<const char*>(b->data) + a.offset();
}
void* gptr(mx::array& a) { return const_cast<void*>(gptr(static_cast<const mx::array&>(a))); }

int kind_of(mx::Dtype d) { return d == mx::float32 ? 0 : d == mx::float16 ? 1 : 2; }

// Elements between rows of a (…, K) array whose last axis is contiguous and
// whose leading axes collapse into one stride; -1 otherwise.
int64_t row_stride(const mx::array& a) {
  const auto& sh = a.shape();
  const auto& st = a.strides();
  if (a.ndim() == 0 || (sh.back() > 1 && st.back() != 1)) return -1;
  int64_t stride = -1, expect = -1;
  for (int i = static_cast<int>(a.ndim()) - 2; i >= 0; --i) {
    if (sh[i] == 1) continue;
    if (stride < 0) {
      stride = st[i];
      expect = st[i] * sh[i];
    } else if (st[i] != expect) {
      return -1;
    } else {
      expect *= sh[i];
    }
  }
  return stride < 0 ? sh.back() : stride;
}

// The fused matvec as an MLX primitive. Inputs: x, [norm weight],
// [residual], then per matrix w, scales, biases, [bias].
class FusedQmv : public mx::Primitive {
 public:
  FusedQmv(mx::Stream s, Config c, int k, int nmat, std::array<bool, 3> has_bias, bool residual, float eps)
      : mx::Primitive(s), c_(c), k_(k), nmat_(nmat), has_bias_(has_bias), residual_(residual), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeFusedQmv is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    Params p{};
    size_t i = 0;
    const mx::array& x = in[i++];
    const int K = k_;
    // x is (…, K): build reshapes any other shape of M·K elements to rows of K.
    const int64_t ldx = x.shape(-1) == K ? row_stride(x) : -1;
    if (ldx < 0 || ldx % 8 != 0 || (reinterpret_cast<uintptr_t>(gptr(x)) % 16) != 0)
      throw std::runtime_error("MlxeFusedQmv: x must have a contiguous, 16-byte aligned last axis");
    p.x = gptr(x);
    p.ldx = static_cast<int>(ldx);
    p.M = static_cast<int>(x.size() / K);
    p.K = K;
    p.eps = eps_;
    if (c_.norm) {
      p.norm = gptr(in[i++]);
      if (reinterpret_cast<uintptr_t>(p.norm) % 16 != 0) throw std::runtime_error("MlxeFusedQmv: unaligned norm weight");
    }
    if (residual_) {
      const mx::array& r = in[i++];
      const int64_t ldr = row_stride(r);
      if (ldr < 0) throw std::runtime_error("MlxeFusedQmv: the residual's last axis must be contiguous");
      p.residual = gptr(r);
      p.ldr = static_cast<int>(ldr);
    }
    int rows = 0;
    const bool dense = c_.bits > 8;
    for (int m = 0; m < nmat_; ++m) {
      const int n = in[i].shape(0);
      p.w[m] = gptr(in[i++]);
      if (!dense) {
        p.scales[m] = gptr(in[i++]);
        p.biases[m] = gptr(in[i++]);
      }
      if (has_bias_[m]) p.bias[m] = gptr(in[i++]);
      rows = c_.mode == 1 ? n : rows + n;
      p.n_end[m] = rows;
    }
    for (int m = nmat_; m < 3; ++m) p.n_end[m] = rows;
    for (size_t o = 0; o < outs.size(); ++o) {
      outs[o].set_data(mx::allocator::malloc(outs[o].nbytes()));
      p.y[o] = gptr(outs[o]);
    }
    const int chunks = K / (128 / c_.bits);
    // qmv: a block `rows` rows, its threads over K; fdmv: SK warps `rows` rows.
    const unsigned threads = c_.dense() ? c_.threads : std::min(c_.threads, (chunks + 31) / 32 * 32);
    const int per_block = (c_.mode == 1 ? c_.rows / 2 : c_.rows) * (c_.dense() ? c_.threads / 32 / c_.sk : 1);
    const dim3 grid{static_cast<unsigned>((rows + per_block - 1) / per_block),
                    static_cast<unsigned>((p.M + c_.mt - 1) / c_.mt), 1};
    CUfunc_st* f = kernel(c_);
    for (const auto& a : in) enc.set_input_array(a);
    for (const auto& o : outs) enc.set_output_array(o);
    void* args[] = {&p};
    launch(enc, f, grid, dim3{threads, 1, 1}, args);
  }

  const char* name() const override { return "MlxeFusedQmv"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const FusedQmv*>(&other);
    return o != nullptr && o->c_.key() == c_.key() && o->c_.threads == c_.threads && o->k_ == k_ && o->nmat_ == nmat_ && o->has_bias_ == has_bias_ &&
           o->residual_ == residual_ && o->eps_ == eps_;
  }

 private:
  Config c_;
  int k_;
  int nmat_;
  std::array<bool, 3> has_bias_;
  bool residual_;
  float eps_;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// When decode chains form (`chain`), read once: MLXENGINE_CUDA_PDL=0 never,
// 1 always; unset (or "auto") only for stages that read at least
// MLXENGINE_CUDA_PDL_MIN_MB MiB (256: a decoder layer of an 8B model in
// bfloat16 reads 436 MB). On an H100 chains ran 8B bfloat16 decode 2.4%
// faster (180.0 / 180.4 tok/s against 176.0 / 176.2, two calls) but 8B 4-bit
// (123 MB a layer) 4-13% slower and 1B bfloat16 (121 MB) 3-9% slower: the
// waits lengthen the GPU's work a little, which only long steps repay.
// MLXENGINE_CUDA_PDL_LOG=1 says on stderr, once each, that a chain formed and
// why one declined.
struct PdlSettings {
  bool on;
  size_t min_bytes;
  bool log;
};

const PdlSettings& pdl_settings() {
  static const PdlSettings s = [] {
    const char* v = std::getenv("MLXENGINE_CUDA_PDL");
    const bool automatic = v == nullptr || *v == '\0' || std::string(v) == "auto";
    return PdlSettings{automatic || std::atoi(v) != 0,
                       automatic ? size_t(std::max(0, env_int("MLXENGINE_CUDA_PDL_MIN_MB", 256))) << 20 : 0,
                       env_int("MLXENGINE_CUDA_PDL_LOG", 0) != 0};
  }();
  return s;
}

// The dense matvecs' block shape (dmv, fdmv): MLXENGINE_CUDA_DMV_RPW rows a
// warp (1 or 2), MLXENGINE_CUDA_DMV_U chunks in flight a row (1-8; 2 beat 4
// and 8 in decode on H100s, session 11: fewer registers, more warps an SM),
// MLXENGINE_CUDA_DMV_THREADS a block (64-256).
struct DmvShape {
  int rpw, u, threads;
};
DmvShape dmv_shape() {
  static const DmvShape d{std::clamp(env_int("MLXENGINE_CUDA_DMV_RPW", 1), 1, 2),
                          std::clamp(env_int("MLXENGINE_CUDA_DMV_U", 2), 1, 8),
                          std::clamp(env_int("MLXENGINE_CUDA_DMV_THREADS", 256) / 32 * 32, 64, 256)};
  return d;
}

// Warps a row group (SK of dmv_loop) for `tasks` row groups of `chunks`
// 16-byte chunks: decode's matvecs run one after another, so a grid that
// fills its last wave of resident warps only in part loses the rest of it.
// The fewest of 1, 2, 4, 8 that give at least `waves` (MLXENGINE_CUDA_DMV_WAVES,
// default 3) waves of ~32 warps an SM, keeping U chunks a lane and the
// group inside a block; MLXENGINE_CUDA_DMV_SK forces one.
int dmv_split(int tasks, int chunks, const DmvShape& d) {
  static const int forced = env_int("MLXENGINE_CUDA_DMV_SK", 0);
  static const int waves = std::max(1, env_int("MLXENGINE_CUDA_DMV_WAVES", 3));
  static const int sms = [] {
    int dev = 0, n = 0;
    const Api& a = api();
    return a.cuCtxGetDevice(&dev) == 0 && a.cuDeviceGetAttribute(&n, 16, dev) == 0 && n > 0 ? n : 132;
  }();
  const int most = std::min(8, d.threads / 32);
  if (forced > 0) return std::min({forced & ~(forced - 1), most});  // a power of two
  int sk = 1;
  while (sk < most && static_cast<int64_t>(tasks) * sk < int64_t(waves) * sms * 32 && chunks / (64 * sk) >= d.u)
    sk *= 2;
  return sk;
}

// Splits of the slots for a decode attention: enough blocks (KV heads × batch
// rows × splits) to spread over a large GPU, at least 64 slots a split, at most
// 32 (kAttnSource's MAX_SPLITS: its merge sizes shared memory by it).
int attn_splits(int batch, int kv_heads, int n_keys) {
  constexpr int max_splits = 32;
  // MLXENGINE_CUDA_ATTN_SLOTS: the fewest slots a split (default 64), for measurements.
  static const int min_slots = std::max(8, env_int("MLXENGINE_CUDA_ATTN_SLOTS", 64));
  const int want = (256 + batch * kv_heads - 1) / (batch * kv_heads);
  return std::max(1, std::min({want, (n_keys + min_slots - 1) / min_slots, max_splits}));
}

// A decode step's attention as an MLX primitive (see kAttnSource). Inputs: q,
// k, v, the key and value caches, the inverse frequencies, [rows]; one output,
// the attention. The new key and value go into the cache buffers in place, a
// write MLX does not see as an output (one with several outputs keeps the
// others alive as temporaries of the step, so the next step could not take the
// caches over and would copy them): the caller owns those buffers alone
// (decode_attention's contract). The caches are declared written, so CUDA
// graph nodes reading them later wait for this one.
class DecodeAttention : public mx::Primitive {
 public:
  DecodeAttention(mx::Stream s, int slot, int n_keys, int pos, int dims, bool traditional, float rope_scale,
                  float scale, bool rows, int packed_heads)
      : mx::Primitive(s),
        packed_(packed_heads),
        slot_(slot),
        n_keys_(n_keys),
        pos_(pos),
        dims_(dims),
        traditional_(traditional),
        rope_scale_(rope_scale),
        scale_(scale),
        rows_(rows) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeDecodeAttention is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    // Inputs: q, k, v (or one packed q/k/v), the caches, inv_freq, [rows].
    const int nq = packed_ ? 1 : 3;
    const mx::array &q = in[0], &kc = in[nq], &vc = in[nq + 1];
    for (int i = 0; i < nq + 2; ++i)
      if (!in[i].flags().row_contiguous || (reinterpret_cast<uintptr_t>(gptr(in[i])) % 16) != 0)
        throw std::runtime_error("MlxeDecodeAttention: inputs must be row-contiguous and 16-byte aligned");
    AttnParams p{};
    p.KV = kc.shape(1);
    const int Dh = kc.shape(3);
    p.H = packed_ ? packed_ : static_cast<int>(q.size() / (size_t(kc.shape(0)) * Dh));
    p.q = gptr(q);
    if (packed_) {
      // Each row holds q (H·D), k (KV·D), v (KV·D): 16-byte aligned, as D % 8 == 0.
      const size_t el = q.itemsize();
      p.k = static_cast<const char*>(p.q) + size_t(p.H) * Dh * el;
      p.v = static_cast<const char*>(p.k) + size_t(p.KV) * Dh * el;
      p.ldq = p.ldk = (p.H + 2 * p.KV) * Dh;
    } else {
      p.k = gptr(in[1]);
      p.v = gptr(in[2]);
      p.ldq = p.H * Dh;
      p.ldk = p.KV * Dh;
    }
    p.kc = const_cast<void*>(gptr(kc));
    p.vc = const_cast<void*>(gptr(vc));
    p.inv_freq = static_cast<const float*>(gptr(in[nq + 2]));
    p.rows = rows_ ? static_cast<const int*>(gptr(in[nq + 3])) : nullptr;
    p.cap = kc.shape(2);
    p.slot = slot_;
    p.n_keys = n_keys_;
    p.pos = pos_;
    p.dims = dims_;
    p.traditional = traditional_;
    p.rope_scale = rope_scale_;
    p.scale = scale_;
    const int B = kc.shape(0), D = kc.shape(3), G = p.H / p.KV, kind = kind_of(q.dtype());
    const int splits = attn_splits(B, p.KV, n_keys_);
    // The splits' partials live past the output in its buffer: they last as long as it.
    const size_t out_bytes = (outs[0].nbytes() + 255) / 256 * 256;
    const size_t part_bytes = splits > 1 ? size_t(B) * p.KV * splits * G * (D + 2) * sizeof(float) : 0;
    outs[0].set_data(mx::allocator::malloc(out_bytes + part_bytes));
    p.out = gptr(outs[0]);
    p.part = splits > 1 ? reinterpret_cast<float*>(static_cast<char*>(gptr(outs[0])) + out_bytes) : nullptr;
    // This call's run of the counter ring (the last input).
    static std::atomic<uint64_t> cursor{0};
    const int n_ctr = B * p.KV;
    p.counters = static_cast<int*>(const_cast<void*>(gptr(in.back())));
    p.counter_base = static_cast<int>(cursor.fetch_add(n_ctr) % (ATTN_COUNTERS / n_ctr)) * n_ctr;
    for (const auto& a : in) enc.set_input_array(a);
    enc.set_output_array(outs[0]);
    enc.set_output_array(kc);
    enc.set_output_array(vc);
    void* args[] = {&p};
    const dim3 grid{static_cast<unsigned>(p.KV), static_cast<unsigned>(B), static_cast<unsigned>(splits)};
    launch(enc, attn_kernel(kind, D, G), grid, dim3{ATTN_THREADS, 1, 1}, args);
  }

  const char* name() const override { return "MlxeDecodeAttention"; }

  // Never merged with another node: each writes its own slot.
  bool is_equivalent(const mx::Primitive&) const override { return false; }

 private:
  int packed_;  // query heads of a packed q/k/v input, or 0 for three inputs
  int slot_, n_keys_, pos_, dims_;
  bool traditional_;
  float rope_scale_, scale_;
  bool rows_;
};

std::atomic<bool>& enabled() {
  static std::atomic<bool> on{env_int("MLXENGINE_CUDA_QMV", 1) != 0};
  return on;
}

bool float_type(mx::Dtype d) { return d == mx::float32 || d == mx::float16 || d == mx::bfloat16; }

// A check that holds for lazy arrays too (their layout is known only once evaluated).
bool row_contiguous(const mx::array& a) { return !a.is_available() || a.flags().row_contiguous; }

// Builds the primitive's outputs; throws where the arguments do not fit.
std::vector<mx::array> build(const mx::array& x_in, const std::vector<QuantMatrix>& mats, int group_size, int bits,
                             const std::optional<std::pair<mx::array, float>>& norm,
                             const std::optional<mx::array>& residual, Epilogue epilogue,
                             const std::vector<mx::Shape>& out_shapes, mx::StreamOrDevice s) {
  const bool dense = bits == 0;
  if (!dense && bits != 4 && bits != 8) throw std::invalid_argument("mlxe qmv: only 4- and 8-bit weights");
  if (!dense && group_size != 32 && group_size != 64 && group_size != 128)
    throw std::invalid_argument("mlxe qmv: group size must be 32, 64 or 128");
  if (mats.empty() || mats.size() > 3) throw std::invalid_argument("mlxe qmv: one to three matrices");
  if (x_in.ndim() < 1 || !float_type(x_in.dtype())) throw std::invalid_argument("mlxe qmv: x must be float (…, K)");
  // Dense rows are read 16 bytes at a time, as packed ones: their "bits" is the element size.
  if (dense) {
    bits = 8 * static_cast<int>(x_in.itemsize());
    group_size = 32;
  }
  const int K = mats[0].w.ndim() == 2 ? (dense ? mats[0].w.shape(1) : mats[0].w.shape(1) * 32 / bits) : 0;
  if (K == 0 || K % group_size != 0) throw std::invalid_argument("mlxe qmv: K must be a multiple of the group size");
  if (x_in.size() % K != 0) throw std::invalid_argument("mlxe qmv: x's size must be a multiple of K");
  // Another shape of M·K elements is read as rows of K, reshaped: a view of a
  // row-contiguous input. (MLX's contiguous() copies one whose buffer is over
  // 16 KiB larger than it, as the decode attention's output with its splits'
  // partials behind it: a copy kernel a layer, 2.3 µs on the H200.)
  const mx::array x = x_in.shape(-1) == K ? x_in : mx::reshape(x_in, {static_cast<int>(x_in.size() / K), K}, s);
  const bool swiglu = epilogue == Epilogue::SwiGlu;
  if (swiglu && (mats.size() != 2 || mats[0].w.shape() != mats[1].w.shape()))
    throw std::invalid_argument("mlxe qmv: SwiGLU takes two matrices of one shape");
  if (residual && (mats.size() != 1 || swiglu)) throw std::invalid_argument("mlxe qmv: a residual needs one matrix");
  std::vector<mx::array> inputs{x};
  if (norm) {
    if (norm->first.shape() != mx::Shape{K} || norm->first.dtype() != x.dtype())
      throw std::invalid_argument("mlxe qmv: the norm weight must be (K,) in x's dtype");
    inputs.push_back(norm->first);
  }
  if (residual) inputs.push_back(*residual);
  std::array<bool, 3> has_bias{false, false, false};
  std::vector<mx::Shape> shapes;
  for (size_t m = 0; m < mats.size(); ++m) {
    const auto& q = mats[m];
    const int N = q.w.ndim() == 2 ? q.w.shape(0) : -1;
    if (dense) {
      if (N < 0 || q.w.dtype() != x.dtype() || q.w.shape(1) != K || q.scales || q.biases)
        throw std::invalid_argument("mlxe qmv: dense weights must be (N, K) in x's dtype");
      if (!row_contiguous(q.w)) throw std::invalid_argument("mlxe qmv: weights must be row-contiguous");
      inputs.push_back(q.w);
    } else {
      if (N < 0 || q.w.dtype() != mx::uint32 || q.w.shape(1) != K * bits / 32 || !q.scales || !q.biases ||
          q.scales->shape() != mx::Shape{N, K / group_size} || q.biases->shape() != q.scales->shape())
        throw std::invalid_argument("mlxe qmv: weights, scales and biases do not fit x");
      if (q.scales->dtype() != x.dtype() || q.biases->dtype() != x.dtype())
        throw std::invalid_argument("mlxe qmv: x, scales and biases must share one float dtype");
      if (!row_contiguous(q.w) || !row_contiguous(*q.scales) || !row_contiguous(*q.biases))
        throw std::invalid_argument("mlxe qmv: weights must be row-contiguous");
      inputs.push_back(q.w);
      inputs.push_back(*q.scales);
      inputs.push_back(*q.biases);
    }
    if (q.bias) {
      if (q.bias->shape() != mx::Shape{N} || q.bias->dtype() != x.dtype())
        throw std::invalid_argument("mlxe qmv: a bias must be (N,) in x's dtype");
      inputs.push_back(*q.bias);
      has_bias[m] = true;
    }
    mx::Shape out = x.shape();
    out.back() = N;
    if (x.shape(-1) != K) out = {static_cast<int>(x.size() / K), N};
    if (!swiglu || m == 0) shapes.push_back(out);
  }
  if (!out_shapes.empty()) {
    // The caller's shapes for the same elements (q, k, v as (B, heads, 1, head_dim)).
    if (out_shapes.size() != shapes.size()) throw std::invalid_argument("mlxe qmv: one output shape per output");
    for (size_t o = 0; o < shapes.size(); ++o) {
      size_t a = 1, b = 1;
      for (int d : shapes[o]) a *= d;
      for (int d : out_shapes[o]) b *= d;
      if (a != b) throw std::invalid_argument("mlxe qmv: an output shape does not hold the output's elements");
    }
    shapes = out_shapes;
  }
  if (residual && residual->size() != static_cast<size_t>(x.size() / K) * mats[0].w.shape(0))
    throw std::invalid_argument("mlxe qmv: the residual must hold M·N elements");
  const int M = static_cast<int>(x.size() / K);
  if (M == 0) {
    std::vector<mx::array> zeros;
    for (auto& sh : shapes) zeros.push_back(mx::zeros(sh, x.dtype(), s));
    return zeros;
  }
  int total = 0;
  for (const auto& q : mats) total += q.w.shape(0);
  if (swiglu) total = mats[0].w.shape(0);
  Config c{};
  c.kind = kind_of(x.dtype());
  c.bits = bits;
  c.group = group_size;
  c.mt = std::min(M, QMV_ROW_TILE);
  // Rows per block: more share each load of x, fewer keep ~2 blocks per SM on
  // narrow layers. SwiGLU pairs gate and up rows, so its count is even.
  static const int rows_env = env_int("MLXENGINE_CUDA_QMV_ROWS", 0);
  static const int threads_env = std::clamp(env_int("MLXENGINE_CUDA_QMV_THREADS", 64) / 32 * 32, 32, 256);
  c.rows = rows_env > 0 ? std::min(rows_env, 8) : swiglu ? 4 : (total >= 2048 ? 4 : total >= 512 ? 2 : 1);
  if (swiglu) c.rows = std::max(2, c.rows / 2 * 2);
  c.threads = threads_env;
  c.mode = swiglu ? 1 : 0;
  if (dense) {
    // fdmv: dmv's block shape (SwiGLU: a gate row and its up row a warp group).
    const DmvShape d = dmv_shape();
    c.rows = swiglu ? 2 : d.rpw;
    c.u = d.u;
    c.threads = d.threads;
    c.sk = dmv_split(swiglu ? total : (total + c.rows - 1) / c.rows, K / (16 / static_cast<int>(x.itemsize())), d);
  }
  // Where the norm's squares are summed (qmv's NORM): in the main loop at one
  // row of x, in a pass first for several (in the loop they cost registers:
  // 171 against 128 at 4 rows). MLXENGINE_CUDA_QMV_NORM=loop|pass forces one.
  static const int norm_env = [] {
    const char* v = std::getenv("MLXENGINE_CUDA_QMV_NORM");
    const std::string s = v != nullptr ? v : "";
    return s == "loop" ? 1 : s == "pass" ? 2 : 0;
  }();
  c.norm = !norm ? 0 : dense ? 1 : norm_env != 0 ? norm_env : c.mt == 1 ? 1 : 2;
  // The dequantization (qmv's DEQ; dense rows have none): packed elements read
  // as denormals (no subtraction: the hottest loop 18-22% fewer SASS
  // instructions for sm_90, sass_count.py); MLXENGINE_CUDA_QMV_DEQ=0 for the
  // 2^23 form.
  // MLXENGINE_CUDA_QMV_PROBE=nox|stream: diagnostics for `qmv_check
  // --bandwidth` that give WRONG results — the loop without x's side (x a
  // constant) or with its loads alone — to tell what bounds the matvec.
  static const int deq_env = [] {
    const char* v = std::getenv("MLXENGINE_CUDA_QMV_PROBE");
    const std::string p = v != nullptr ? v : "";
    if (p == "nox" || p == "stream") {
      std::fprintf(stderr, "mlxe: MLXENGINE_CUDA_QMV_PROBE=%s: quantized matvecs give wrong results\n", p.c_str());
      return p == "nox" ? 2 : 3;
    }
    return env_int("MLXENGINE_CUDA_QMV_DEQ", 1);
  }();
  c.deq = bits <= 8 ? deq_env : 0;
  // Prefetching the next chunk: opt-in (MLXENGINE_CUDA_QMV_PREFETCH=1) until timed on a GPU.
  static const int pf_env = env_int("MLXENGINE_CUDA_QMV_PREFETCH", 0) != 0 ? 1 : 0;
  c.pf = bits <= 8 ? pf_env : 0;
  // Evict-first weight loads (__ldcs) where one tile of rows of x covers them all: each packed
  // weight is then read once a step, so keeping it out of L2's retained lines leaves them to x,
  // the caches and the partials (H100: 8B 4-bit 390 / 397 tok/s against 386 / 384 with __ldg).
  // Several tiles (a batch over QMV_ROW_TILE rows) read each weight once a tile, where L2 may
  // serve the later ones. MLXENGINE_CUDA_QMV_LDCS=0 turns it off.
  static const int ld_env = env_int("MLXENGINE_CUDA_QMV_LDCS", 1) != 0 ? 1 : 0;
  c.ld = bits <= 8 && M <= c.mt ? ld_env : 0;
  const float eps = norm ? norm->second : 0.f;
  std::vector<mx::Dtype> dtypes(shapes.size(), x.dtype());
  const auto stream = mx::to_stream(s);
  return mx::array::make_arrays(
      std::move(shapes), dtypes,
      std::make_shared<FusedQmv>(stream, c, K, static_cast<int>(mats.size()), has_bias, residual.has_value(), eps),
      std::move(inputs));
}


// Kernels of our primitives (the fused matvecs, the decode attention) as one
// node of MLX's graph: a child graph whose kernels follow each other through
// programmatic edges, so each kernel's blocks launch while the one before it
// drains its last wave and do what does not depend on it (row pointers, the
// attention's first cached rows) before they wait, in `pdl_wait`. Between separate
// nodes every kernel paid its ramp-up and its predecessor's tail in full: a
// decode step is ~5 dependent kernels a layer. The stages keep their own
// primitives and eval_gpu; `launch` sends their kernels into this chain's
// graph while it is built. Outputs: every stage's outputs in order.
class Chain : public mx::Primitive {
 public:
  // Where a stage input comes from: an input of the chain (`index` ≥ 0), or
  // output -1 - index of an earlier stage, seen with `shape` when it is set
  // (a reshape between two stages: the same buffer, no copy).
  struct Source {
    int index;
    std::optional<mx::Shape> shape;
  };
  struct Stage {
    std::shared_ptr<mx::Primitive> prim;
    std::vector<Source> in;
    int out0, nout;
  };

  Chain(mx::Stream s, std::vector<Stage> stages) : mx::Primitive(s), stages_(std::move(stages)) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeChain is a CUDA graph");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    const GraphApi& g = graph_api();
    ChainGraph c;
    if (g.create(&c.graph, 0) != 0) throw std::runtime_error("mlxe chain: cuGraphCreate failed");
    struct Reset {
      ChainGraph& c;
      ~Reset() {
        t_chain = nullptr;
        graph_api().destroy(c.graph);
      }
    } reset{c};
    t_chain = &c;
    for (const Stage& st : stages_) {
      std::vector<mx::array> sin;
      sin.reserve(st.in.size());
      for (const Source& src : st.in) {
        if (src.index >= 0) {
          sin.push_back(in[src.index]);
          continue;
        }
        const mx::array& o = outs[-1 - src.index];
        if (!src.shape) {
          sin.push_back(o);
          continue;
        }
        // An output seen with another shape (stages write row-contiguous outputs).
        if (!o.flags().row_contiguous) throw std::runtime_error("MlxeChain: a reshaped stage output is not row-contiguous");
        mx::array view(*src.shape, o.dtype(), nullptr, {});
        mx::Strides strides(src.shape->size(), 1);
        for (int d = static_cast<int>(strides.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * (*src.shape)[d + 1];
        view.copy_shared_buffer(o, strides, o.flags(), o.data_size());
        sin.push_back(std::move(view));
      }
      std::vector<mx::array> sout(outs.begin() + st.out0, outs.begin() + st.out0 + st.nout);
      st.prim->eval_gpu(sin, sout);
    }
    t_chain = nullptr;
    // MLX clones the child graph into its own; ours goes with `reset`.
    enc.add_graph_node(c.graph);
  }

  const char* name() const override { return "MlxeChain"; }

  // Never merged: its attention stages write their caches in place.
  bool is_equivalent(const mx::Primitive&) const override { return false; }

 private:
  std::vector<Stage> stages_;
};

// Whether `a` is computed from an array of `ids` (the stages' outputs). The
// walk ends at evaluated arrays and at earlier chains: a chain's inputs were
// fixed when it was built, before the stages of any later chain existed.
bool reaches(const mx::array& a, const std::unordered_map<std::uintptr_t, int>& ids,
             std::unordered_set<std::uintptr_t>& seen) {
  if (ids.count(a.id())) return true;
  if (a.is_available() || !a.has_primitive() || !seen.insert(a.id()).second) return false;
  if (dynamic_cast<const Chain*>(&a.primitive()) != nullptr) return false;
  for (const auto& i : a.inputs())
    if (reaches(i, ids, seen)) return true;
  return false;
}
}  // namespace

void set_enabled(bool on) { enabled().store(on); }

bool enabled_now() { return enabled().load(); }

std::optional<std::vector<mx::array>> fused_qmv(const mx::array& x, const std::vector<QuantMatrix>& mats, int group_size,
                                                int bits, const std::optional<std::pair<mx::array, float>>& norm,
                                                const std::optional<mx::array>& residual, Epilogue epilogue,
                                                const std::vector<mx::Shape>& out_shapes, mx::StreamOrDevice s) {
  const bool dense = bits == 0;
  // Dense weights take fdmv unless MLXENGINE_CUDA_QMV_DENSE=0: with rows
  // split over warps (SK) and 2 chunks in flight a lane, an 8B bfloat16
  // decode ran 175–177 tok/s against 170–174 with MLX's ops and gemv, 1B 791
  // vs 747 (H100s, xtask/bench/gpu/run_dmv.sh, session 11).
  static const bool dense_on = env_int("MLXENGINE_CUDA_QMV_DENSE", 1) != 0;
  if (!enabled().load() || (dense && !dense_on) || (!dense && bits != 4 && bits != 8) || mats.empty())
    return std::nullopt;
  if (mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  static const int max_rows = env_int("MLXENGINE_CUDA_QMV_MAX_ROWS", QMV_MAX_ROWS);
  if (x.ndim() < 1 || !float_type(x.dtype()) || mats[0].w.ndim() != 2) return std::nullopt;
  const int K = dense ? mats[0].w.shape(1) : mats[0].w.shape(1) * 32 / bits;
  if (K == 0 || x.size() % K != 0 || x.size() / K > static_cast<size_t>(max_rows)) return std::nullopt;
  // Dense rows go 16 bytes at a time, in groups of 32 elements.
  if (dense && K % 32 != 0) return std::nullopt;
  for (const auto& q : mats) {
    if (q.bias && q.bias->dtype() != x.dtype()) return std::nullopt;
    // A strided view of the weights would need a copy on every call: MLX's kernel reads it as is.
    if (q.w.ndim() != 2 || !row_contiguous(q.w)) return std::nullopt;
    if (dense) {
      if (q.w.dtype() != x.dtype() || q.w.shape(1) != K || q.scales || q.biases) return std::nullopt;
      continue;
    }
    if (q.w.dtype() != mx::uint32 || q.w.shape(1) != K * bits / 32 || !q.scales || !q.biases) return std::nullopt;
    if (q.scales->dtype() != x.dtype() || q.biases->dtype() != x.dtype()) return std::nullopt;
    if (!row_contiguous(*q.scales) || !row_contiguous(*q.biases)) return std::nullopt;
  }
  if (norm && norm->first.dtype() != x.dtype()) return std::nullopt;
  if (residual && residual->dtype() != x.dtype()) return std::nullopt;
  return build(x, mats, group_size, bits, norm, residual, epilogue, out_shapes, s);
}

// The kernels for packed projections (a packed q/k/v's decode attention, a packed
// gate/up's SwiGLU): off with MLXENGINE_CUDA_PACK=0.
bool pack_on() {
  static const bool on = env_int("MLXENGINE_CUDA_PACK", 1) != 0;
  return on;
}

std::optional<mx::array> decode_attention(const mx::array& q, const mx::array& k, const mx::array& v,
                                                       const mx::array& k_cache, const mx::array& v_cache,
                                                       const mx::array& inv_freq, const std::optional<mx::array>& rows,
                                                       int slot, int n_keys, int pos, int dims, bool traditional,
                                                       float rope_scale, float scale, int packed_heads,
                                                       mx::StreamOrDevice s) {
  static const bool on = env_int("MLXENGINE_CUDA_ATTN", 1) != 0;
  if (!on || !enabled().load() || mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  if (packed_heads > 0 && !pack_on()) return std::nullopt;
  if (k_cache.ndim() != 4 || k_cache.shape() != v_cache.shape() || q.ndim() < 1 || q.shape(0) != k_cache.shape(0))
    return std::nullopt;
  const int B = k_cache.shape(0), KV = k_cache.shape(1), cap = k_cache.shape(2), D = k_cache.shape(3);
  const mx::Dtype dt = q.dtype();
  // Head sizes the kernel is built for (16-byte rows in every dtype).
  if (!float_type(dt) || D % 8 != 0 || D > 256 || (dt == mx::float32 && D > 128) || B == 0 || KV == 0) return std::nullopt;
  // q, k and v in any shape holding their heads in order: (B, heads, 1, D) or
  // a projection's (B, 1, heads·D); packed, one (B, 1, (H + 2·KV)·D).
  const int H = packed_heads > 0 ? packed_heads : static_cast<int>(q.size() / (size_t(B) * D));
  if (packed_heads > 0) {
    if (q.size() != size_t(B) * (H + 2 * KV) * D) return std::nullopt;
  } else if (q.size() % (size_t(B) * D) != 0 || k.size() != size_t(B) * KV * D || v.size() != k.size() ||
             k.shape(0) != B || v.shape(0) != B || k.dtype() != dt || v.dtype() != dt) {
    return std::nullopt;
  }
  if (k_cache.dtype() != dt || v_cache.dtype() != dt) return std::nullopt;
  // Up to 8 query heads a KV head (the kernel keeps their sums in registers).
  if (KV == 0 || H % KV != 0 || H / KV > 8 || slot < 0 || slot >= n_keys || n_keys > cap) return std::nullopt;
  if (dims <= 0 || dims > D || dims % 2 != 0 || inv_freq.dtype() != mx::float32 || inv_freq.size() != size_t(dims / 2))
    return std::nullopt;
  if (rows && (rows->dtype() != mx::int32 || rows->shape() != mx::Shape{B, 2})) return std::nullopt;
  std::vector<mx::array> inputs{q};
  if (packed_heads <= 0) inputs.insert(inputs.end(), {k, v});
  inputs.insert(inputs.end(), {k_cache, v_cache});
  for (const auto& a : inputs)
    if (!row_contiguous(a)) return std::nullopt;
  inputs.push_back(inv_freq);
  if (rows) inputs.push_back(*rows);
  // The split counters: zeros made once (never freed: an MLX array must not
  // outlive the library's teardown at exit), kept zero by the kernel.
  if (size_t(B) * KV > size_t(ATTN_COUNTERS) / 4) return std::nullopt;
  static const mx::array* counters = new mx::array(mx::zeros({ATTN_COUNTERS}, mx::int32, s));
  inputs.push_back(*counters);
  const mx::Shape shape = packed_heads > 0 ? mx::Shape{B, 1, H * D} : q.shape();
  return mx::array(shape, dt,
                   std::make_shared<DecodeAttention>(mx::to_stream(s), slot, n_keys, pos, dims, traditional,
                                                     rope_scale, scale, rows.has_value(), std::max(packed_heads, 0)),
                   std::move(inputs));
}

// A gated linear unit over rows of [a | b] (see glu in kAttnSource): ACT 0
// silu(a)·b, ACT 1 a·gelu(b).
class PackedGlu : public mx::Primitive {
 public:
  PackedGlu(mx::Stream s, int act) : mx::Primitive(s), act_(act) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxePackedGlu is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    const mx::array& gu = in[0];
    if (!gu.flags().row_contiguous) throw std::runtime_error("MlxePackedGlu: the input must be row-contiguous");
    outs[0].set_data(mx::allocator::malloc(outs[0].nbytes()));
    int I = outs[0].shape(-1), rows = static_cast<int>(outs[0].size() / I);
    const void* src = gptr(gu);
    void* dst = gptr(outs[0]);
    enc.set_input_array(gu);
    enc.set_output_array(outs[0]);
    void* args[] = {&src, &dst, &rows, &I};
    const std::string cfg = std::to_string(kind_of(gu.dtype())) + ", " + std::to_string(act_);
    CUfunc_st* f = compiled("glu_" + cfg, "mlxe_glu", [&] {
      return std::string(kSource) + kAttnSource +
             "extern \"C\" __global__ void mlxe_glu(const void* gu, void* out, int rows, int I) {\n"
             "  mlxe::glu<" + cfg + ">(gu, out, rows, I);\n}\n";
    });
    const size_t n = outs[0].size();
    enc.add_kernel_node_raw(f, dim3{static_cast<unsigned>((n + 255) / 256), 1, 1}, dim3{256, 1, 1}, dim3{1, 1, 1}, 0,
                            args);
  }

  const char* name() const override { return "MlxePackedGlu"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const PackedGlu*>(&other);
    return o != nullptr && o->act_ == act_;
  }

 private:
  int act_;
};

std::optional<mx::array> packed_glu(const mx::array& gu, int act, mx::StreamOrDevice s) {
  if (!enabled().load() || mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  if (gu.ndim() < 1 || gu.shape(-1) % 2 != 0 || gu.size() == 0 || !float_type(gu.dtype()) || !row_contiguous(gu) ||
      gu.size() / 2 > size_t(INT32_MAX))
    return std::nullopt;
  mx::Shape shape = gu.shape();
  shape.back() /= 2;
  return mx::array(shape, gu.dtype(), std::make_shared<PackedGlu>(mx::to_stream(s), act), {gu});
}

std::optional<mx::array> swiglu_packed(const mx::array& gu, mx::StreamOrDevice s) {
  if (!pack_on()) return std::nullopt;
  return packed_glu(gu, 0, s);
}

namespace {
// MLXENGINE_CUDA_PDL_LOG=1: says on stderr, once each, that a chain was built
// and why one declined (for the GPU bench's checks).
bool chain_declines(const char* why) {
  static std::once_flag once;
  if (pdl_settings().log) std::call_once(once, [&] { std::fprintf(stderr, "mlxe chain: declined (%s)\n", why); });
  return false;
}
}  // namespace

bool chain(const std::vector<mx::array>& stages) {
  const PdlSettings& pdl = pdl_settings();
  if (!enabled().load() || !pdl.on || stages.size() < 2) return false;
  if (!graph_api().ok) return chain_declines("the driver lacks programmatic graph edges");
  // The size test first, so layers that do not chain cost the host next to
  // nothing (an array read twice counts twice: the activations are small).
  if (pdl.min_bytes > 0) {
    size_t bytes = 0;
    for (const auto& a : stages)
      for (const auto& x : a.inputs()) bytes += x.nbytes();
    if (bytes < pdl.min_bytes) return false;
  }
  std::vector<Chain::Stage> plan;
  std::vector<mx::array> inputs, outputs;
  std::unordered_map<std::uintptr_t, int> input_at, output_at;
  std::unordered_set<std::uintptr_t> seen;
  std::optional<mx::Stream> stream;
  for (const auto& a : stages) {
    if (output_at.count(a.id())) continue;  // a sibling of an earlier stage's output
    // Only arrays no eval has scheduled yet can be rewired.
    if (!a.has_primitive() || a.status() != mx::array::Status::unscheduled)
      return chain_declines("a stage is evaluated or scheduled already");
    const auto& prim = a.primitive_ptr();
    if (dynamic_cast<FusedQmv*>(prim.get()) == nullptr && dynamic_cast<DecodeAttention*>(prim.get()) == nullptr)
      return chain_declines("a stage is not one of our kernels");
    if (stream && !(prim->stream() == *stream)) return chain_declines("stages on two streams");
    stream = prim->stream();
    Chain::Stage st{prim, {}, static_cast<int>(outputs.size()), 0};
    for (const auto& x : a.inputs()) {
      if (auto it = output_at.find(x.id()); it != output_at.end()) {
        st.in.push_back({-1 - it->second, std::nullopt});
        continue;
      }
      // A reshape of an earlier stage's output (the fused matvec reads any
      // shape as rows of K): the same buffer, seen with the reshape's shape.
      if (x.has_primitive() && !x.is_available() && std::strcmp(x.primitive().name(), "Reshape") == 0 &&
          x.inputs().size() == 1) {
        if (auto it = output_at.find(x.inputs()[0].id()); it != output_at.end()) {
          st.in.push_back({-1 - it->second, x.shape()});
          continue;
        }
      }
      // Anything else computed from a stage's output would make the chain an
      // input of itself once its stages are rewired: decline.
      if (reaches(x, output_at, seen)) return chain_declines("an input computed from a stage's output");
      auto [it, fresh] = input_at.emplace(x.id(), static_cast<int>(inputs.size()));
      if (fresh) inputs.push_back(x);
      st.in.push_back({it->second, std::nullopt});
    }
    for (const auto& o : a.outputs()) {
      output_at.emplace(o.id(), static_cast<int>(outputs.size()));
      outputs.push_back(o);
    }
    st.nout = static_cast<int>(outputs.size()) - st.out0;
    plan.push_back(std::move(st));
  }
  if (plan.size() < 2) return false;
  static std::once_flag once;
  if (pdl.log) std::call_once(once, [&] { std::fprintf(stderr, "mlxe chain: %zu stages, %zu inputs\n", plan.size(), inputs.size()); });
  // The stages' arrays become the chain's outputs in place (as make_arrays
  // links siblings), so whatever else reads them reads the chain's.
  auto prim = std::make_shared<Chain>(*stream, std::move(plan));
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::vector<mx::array> siblings = outputs;
    siblings.erase(siblings.begin() + i);
    outputs[i].primitive_ptr() = prim;
    outputs[i].inputs() = inputs;
    outputs[i].set_siblings(std::move(siblings), static_cast<uint16_t>(i));
  }
  return true;
}

std::optional<mx::array> geglu(const mx::array& x, mx::StreamOrDevice s) { return packed_glu(x, 1, s); }

// A dense matvec (see dmv in kAttnSource). Inputs x (…, K) and w (N, K); one
// output (…, N).
class DenseMatvec : public mx::Primitive {
 public:
  DenseMatvec(mx::Stream s, int mt, int rpw, int u, int threads, int sk)
      : mx::Primitive(s), mt_(mt), rpw_(rpw), u_(u), threads_(threads), sk_(sk) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeDenseMatvec is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    const mx::array &x = in[0], &w = in[1];
    int K = w.shape(1), N = w.shape(0);
    const int64_t ldx64 = x.shape(-1) == K ? row_stride(x) : -1;
    const size_t esz = x.itemsize();
    if (ldx64 < 0 || (ldx64 * esz) % 16 != 0 || (reinterpret_cast<uintptr_t>(gptr(x)) % 16) != 0 ||
        !w.flags().row_contiguous || (reinterpret_cast<uintptr_t>(gptr(w)) % 16) != 0)
      throw std::runtime_error("MlxeDenseMatvec: x and w need contiguous, 16-byte aligned rows");
    outs[0].set_data(mx::allocator::malloc(outs[0].nbytes()));
    const void *xp = gptr(x), *wp = gptr(w);
    void* yp = gptr(outs[0]);
    int M = static_cast<int>(x.size() / K), ldx = static_cast<int>(ldx64);
    enc.set_input_array(x);
    enc.set_input_array(w);
    enc.set_output_array(outs[0]);
    void* args[] = {&xp, &wp, &yp, &M, &N, &K, &ldx};
    const std::string cfg = std::to_string(kind_of(x.dtype())) + ", " + std::to_string(mt_) + ", " +
                            std::to_string(rpw_) + ", " + std::to_string(u_) + ", " + std::to_string(sk_);
    CUfunc_st* f = compiled("dmv_" + cfg, "mlxe_dmv", [&] {
      return std::string(kSource) + kAttnSource +
             "extern \"C\" __global__ void __launch_bounds__(256) mlxe_dmv(const void* x, const void* w, void* y, "
             "int M, int N, int K, int ldx) {\n  mlxe::dmv<" + cfg + ">(x, w, y, M, N, K, ldx);\n}\n";
    });
    const int rows_a_block = threads_ / 32 / sk_ * rpw_;
    enc.add_kernel_node_raw(f, dim3{static_cast<unsigned>((N + rows_a_block - 1) / rows_a_block), 1, 1},
                            dim3{static_cast<unsigned>(threads_), 1, 1}, dim3{1, 1, 1}, 0, args);
  }

  const char* name() const override { return "MlxeDenseMatvec"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const DenseMatvec*>(&other);
    return o != nullptr && o->mt_ == mt_ && o->rpw_ == rpw_ && o->u_ == u_ && o->threads_ == threads_ &&
           o->sk_ == sk_;
  }

 private:
  int mt_, rpw_, u_, threads_, sk_;
};

std::optional<mx::array> dense_matvec(const mx::array& x, const mx::array& w, mx::StreamOrDevice s) {
  // On unless MLXENGINE_CUDA_DMV=0. Decode's dense products outside the
  // fused layers (the LM head) stream as fast as MLX's gemv (328.6 vs 328.2
  // µs for the 8B head, H100, session 11); the fused layers' fdmv shares its
  // loop, and the two were timed together.
  static const bool on = env_int("MLXENGINE_CUDA_DMV", 1) != 0;
  const DmvShape d = dmv_shape();
  const auto [rpw, u, threads] = d;
  if (!on || !enabled().load() || mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  if (x.ndim() < 1 || w.ndim() != 2 || !float_type(x.dtype()) || w.dtype() != x.dtype()) return std::nullopt;
  const int K = w.shape(1), N = w.shape(0);
  const int E = static_cast<int>(16 / x.itemsize());
  if (K == 0 || N == 0 || x.shape(-1) != K || K % E != 0 || !row_contiguous(w)) return std::nullopt;
  const size_t rows = x.size() / K;
  if (rows == 0 || rows > 8) return std::nullopt;
  const int mt = rows == 1 ? 1 : rows == 2 ? 2 : rows <= 4 ? 4 : 8;
  const int sk = dmv_split((N + rpw - 1) / rpw, K / E, d);
  mx::Shape shape = x.shape();
  shape.back() = N;
  // The kernel reads x's rows at a stride (a lazy x's layout is known once
  // evaluated: decode's inputs come from kernels that write whole rows).
  const mx::array xc = !x.is_available() || row_stride(x) >= 0 ? x : mx::contiguous(x, false, s);
  return mx::array(shape, x.dtype(), std::make_shared<DenseMatvec>(mx::to_stream(s), mt, rpw, u, threads, sk), {xc, w});
}

// A residual add and the RMS norm after it (see add_rms in kAttnSource).
// Inputs a, b, the weight; outputs the sum and the normalised sum.
class AddRmsNorm : public mx::Primitive {
 public:
  AddRmsNorm(mx::Stream s, float eps) : mx::Primitive(s), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeAddRmsNorm is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    for (const auto& a : in)
      if (!a.flags().row_contiguous || (reinterpret_cast<uintptr_t>(gptr(a)) % 16) != 0)
        throw std::runtime_error("MlxeAddRmsNorm: inputs must be row-contiguous and 16-byte aligned");
    for (auto& o : outs) o.set_data(mx::allocator::malloc(o.nbytes()));
    int K = in[2].shape(0);
    const unsigned rows = static_cast<unsigned>(in[0].size() / K);
    const void *a = gptr(in[0]), *b = gptr(in[1]), *w = gptr(in[2]);
    void *h = gptr(outs[0]), *y = gptr(outs[1]);
    float eps = eps_;
    for (const auto& x : in) enc.set_input_array(x);
    for (const auto& o : outs) enc.set_output_array(o);
    void* args[] = {&a, &b, &w, &h, &y, &K, &eps};
    const std::string cfg = std::to_string(kind_of(in[0].dtype()));
    CUfunc_st* f = compiled("add_rms_" + cfg, "mlxe_add_rms", [&] {
      return std::string(kSource) + kAttnSource +
             "extern \"C\" __global__ void __launch_bounds__(1024) mlxe_add_rms(const void* a, const void* b, "
             "const void* w, void* h, void* y, int K, float eps) {\n"
             "  mlxe::add_rms<" + cfg + ">(a, b, w, h, y, K, eps);\n}\n";
    });
    enc.add_kernel_node_raw(f, dim3{rows, 1, 1}, dim3{add_rms_threads(K, in[0].itemsize()), 1, 1}, dim3{1, 1, 1}, 0,
                            args);
  }

  const char* name() const override { return "MlxeAddRmsNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const AddRmsNorm*>(&other);
    return o != nullptr && o->eps_ == eps_;
  }

  // Threads a row: a warp's multiple, each with up to 4 16-byte chunks (add_rms's CPT).
  static unsigned add_rms_threads(int K, size_t itemsize) {
    const int chunks = static_cast<int>(K * itemsize / 16);
    return static_cast<unsigned>(std::max(32, ((chunks + 3) / 4 + 31) / 32 * 32));
  }

 private:
  float eps_;
};

std::optional<std::pair<mx::array, mx::array>> add_rms_norm(const mx::array& a, const mx::array& b,
                                                            const mx::array& w, float eps, mx::StreamOrDevice s) {
  static const bool on = env_int("MLXENGINE_CUDA_ADD_NORM", 1) != 0;
  if (!on || !enabled().load() || mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  if (a.ndim() < 1 || a.shape() != b.shape() || a.dtype() != b.dtype() || w.dtype() != a.dtype() ||
      !float_type(a.dtype()) || w.ndim() != 1 || w.shape(0) != a.shape(-1) || a.size() == 0 ||
      !row_contiguous(a) || !row_contiguous(b) || !row_contiguous(w))
    return std::nullopt;
  const int K = a.shape(-1);
  // Whole 16-byte chunks, at most 4 a thread of 1024 (bf16: K ≤ 32768).
  if ((K * a.itemsize()) % 16 != 0 || K * a.itemsize() / 16 > 4 * 1024 || a.size() / K > size_t(INT32_MAX))
    return std::nullopt;
  auto outs = mx::array::make_arrays({a.shape(), a.shape()}, {a.dtype(), a.dtype()},
                                     std::make_shared<AddRmsNorm>(mx::to_stream(s), eps), {a, b, w});
  return std::make_pair(std::move(outs[0]), std::move(outs[1]));
}

// Arguments of the group norm kernels, laid out as GnParams in kAttnSource.
struct GnParams {
  const void* x;
  const void* w;
  const void* b;
  void* y;
  float* part;  // (N, G, slices, 3) float32: each slice's count, mean and M2
  int L, C, G, slices;
  float eps;
  int silu;
};

// Group norm of channels-last x (see gn_stats / gn_apply in kAttnSource): two
// kernel nodes, the slices' statistics past the output in its buffer (the
// output, registered again, orders the second after the first).
class GroupNormGpu : public mx::Primitive {
 public:
  GroupNormGpu(mx::Stream s, int groups, float eps, bool silu) : mx::Primitive(s), groups_(groups), eps_(eps), silu_(silu) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeGroupNorm is a CUDA kernel");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    const mx::array& x = in[0];
    if (!x.flags().row_contiguous) throw std::runtime_error("MlxeGroupNorm: x must be row-contiguous");
    GnParams p{};
    const int N = x.shape(0);
    p.C = x.shape(-1);
    p.L = static_cast<int>(x.size() / (size_t(N) * p.C));
    p.G = groups_;
    // Slices: ~4096 elements a statistics block, at most 64 a group.
    const size_t group_elems = size_t(p.L) * (p.C / p.G);
    p.slices = static_cast<int>(std::clamp<size_t>(group_elems / 4096, 1, 64));
    p.eps = eps_;
    p.silu = silu_;
    const size_t out_bytes = (outs[0].nbytes() + 255) / 256 * 256;
    const size_t part_bytes = size_t(N) * p.G * p.slices * 3 * sizeof(float);
    outs[0].set_data(mx::allocator::malloc(out_bytes + part_bytes));
    p.x = gptr(x);
    p.w = gptr(in[1]);
    p.b = gptr(in[2]);
    p.y = gptr(outs[0]);
    p.part = reinterpret_cast<float*>(static_cast<char*>(gptr(outs[0])) + out_bytes);
    const std::string cfg = std::to_string(kind_of(x.dtype()));
    auto src = [&] {
      return std::string(kSource) + kAttnSource +
             "extern \"C\" __global__ void __launch_bounds__(256) mlxe_gn_stats(const mlxe::GnParams p) {\n"
             "  mlxe::gn_stats<" + cfg + ">(p);\n}\n"
             "extern \"C\" __global__ void __launch_bounds__(256) mlxe_gn_apply(const mlxe::GnParams p) {\n"
             "  mlxe::gn_apply<" + cfg + ">(p);\n}\n";
    };
    for (const auto& a : in) enc.set_input_array(a);
    enc.set_output_array(outs[0]);
    void* args[] = {&p};
    enc.add_kernel_node_raw(compiled("gn_" + cfg, "mlxe_gn_stats", src),
                            dim3{static_cast<unsigned>(p.G), static_cast<unsigned>(p.slices), static_cast<unsigned>(N)},
                            dim3{256, 1, 1}, dim3{1, 1, 1}, 0, args);
    enc.set_input_array(outs[0]);
    enc.set_output_array(outs[0]);
    const size_t per_image = size_t(p.L) * p.C;
    const unsigned blocks = static_cast<unsigned>(std::min<size_t>((per_image + 2047) / 2048, 65535));
    enc.add_kernel_node_raw(compiled("gn_" + cfg, "mlxe_gn_apply", src), dim3{blocks, static_cast<unsigned>(N), 1},
                            dim3{256, 1, 1}, dim3{1, 1, 1}, 0, args);
  }

  const char* name() const override { return "MlxeGroupNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const GroupNormGpu*>(&other);
    return o != nullptr && o->groups_ == groups_ && o->eps_ == eps_ && o->silu_ == silu_;
  }

 private:
  int groups_;
  float eps_;
  bool silu_;
};

std::optional<mx::array> group_norm(const mx::array& x, int groups, const mx::array& weight, const mx::array& bias,
                                    float eps, bool silu, mx::StreamOrDevice s) {
  if (!enabled().load() || mx::to_stream(s).device.type != mx::Device::gpu) return std::nullopt;
  if (x.ndim() < 2 || !float_type(x.dtype()) || x.size() == 0 || groups <= 0 || groups > 128) return std::nullopt;
  const int C = x.shape(-1);
  if (C % groups != 0 || weight.shape() != mx::Shape{C} || bias.shape() != mx::Shape{C} ||
      weight.dtype() != x.dtype() || bias.dtype() != x.dtype() || x.size() / x.shape(0) > size_t(INT32_MAX))
    return std::nullopt;
  const mx::array xc = row_contiguous(x) ? x : mx::contiguous(x, false, s);
  return mx::array(x.shape(), x.dtype(), std::make_shared<GroupNormGpu>(mx::to_stream(s), groups, eps, silu),
                   {xc, mx::contiguous(weight, false, s), mx::contiguous(bias, false, s)});
}

std::optional<mx::array> quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                                          const std::optional<mx::array>& biases, bool transpose, int group_size,
                                          int bits, mx::StreamOrDevice s) {
  if (!transpose || !biases) return std::nullopt;
  // MLX's op takes x (…, K) only.
  if (x.ndim() < 1 || w.ndim() != 2 || x.shape(-1) != w.shape(1) * 32 / bits) return std::nullopt;
  auto y = fused_qmv(x, {QuantMatrix{w, scales, *biases, std::nullopt}}, group_size, bits, std::nullopt, std::nullopt,
                     Epilogue::Split, {}, s);
  if (!y) return std::nullopt;
  return (*y)[0];
}

mx::array qmv(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
              int group_size, int bits, mx::StreamOrDevice s) {
  if (x.ndim() < 1 || w.ndim() != 2 || x.shape(-1) != w.shape(1) * 32 / bits)
    throw std::invalid_argument("mlxe qmv: x must be (…, K)");
  return build(x, {QuantMatrix{w, scales, biases, std::nullopt}}, group_size, bits, std::nullopt, std::nullopt,
               Epilogue::Split, {}, s)[0];
}

}  // namespace mlxe::cuda
