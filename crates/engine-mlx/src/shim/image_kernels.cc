// CPU kernels for the image models' hot ops (see cpu_kernels.h): 2-D
// convolution without im2col, group normalisation (+ SiLU) in one pass over
// the data after the statistics, and multi-head attention that never holds
// the whole score matrix. Built like cpu_kernels.cc (-O3, one clone per
// x86-64 level).
#include <dlfcn.h>

#include <array>
#include <cmath>
#include <limits>
#include <memory>

#include "blas.h"
#include "cpu_kernels.h"
#include "kernel_common.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace mlxe::kernels {
namespace {

// ---- BLAS

// cblas_sgemm of whichever BLAS serves libmlx (the shim's forwarder to
// OpenBLAS on x86-64 Linux), found at run time so no build links one more
// library; null when none is loaded, and then the convolution is MLX's.
using SgemmFn = void (*)(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

SgemmFn sgemm() {
  static const SgemmFn f = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  return f;
}

// OpenBLAS splits each call over its own threads; where we split the work
// ourselves it must run single-threaded in each of ours (two levels of
// threads on two cores only contend). Restores the count on scope exit. The
// count is process-wide: a model on another thread meanwhile gets
// single-threaded BLAS calls (slower, never wrong).
class SerialBlas {
 public:
  explicit SerialBlas(bool on) : prev_(on ? blas::threads(0) : 1) {
    if (prev_ > 1) blas::threads(1);
  }
  ~SerialBlas() {
    if (prev_ > 1) blas::threads(prev_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int prev_;
};

// y (m, n) = a (m, k) · w (n, k)ᵀ (+ bias per column) on the cores, one
// single-threaded sgemm each: blocks of rows when there are many rows, else
// blocks of columns (each thread then reads only its share of the weights).
void threaded_gemm(const float* a, const float* w, const float* bias, float* y, int64_t m, int64_t n, int64_t k) {
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const bool by_rows = m >= 64 * hw || n < 16 * hw;
  const int64_t parts = std::min<int64_t>(hw, std::max<int64_t>(1, m * n * k / (int64_t{1} << 20)));
  SerialBlas serial(parts > 1);
  const int64_t total = by_rows ? m : n, per = (total + parts - 1) / parts;
  parallel(parts, int64_t{1} << 30, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; t++) {
      const int64_t i0 = t * per, i1 = std::min(total, i0 + per);
      if (i0 >= i1) continue;
      const int64_t rows = by_rows ? i1 - i0 : m, cols = by_rows ? n : i1 - i0;
      float* out = by_rows ? y + i0 * n : y + i0;
      if (bias != nullptr) {
        for (int64_t r = 0; r < rows; r++) std::memcpy(out + r * n, bias + (by_rows ? 0 : i0), sizeof(float) * cols);
      }
      sgemm()(kRowMajor, kNoTrans, kTrans, static_cast<int>(rows), static_cast<int>(cols), static_cast<int>(k), 1.0f,
              by_rows ? a + i0 * k : a, static_cast<int>(k), by_rows ? w : w + i0 * k, static_cast<int>(k),
              bias != nullptr ? 1.0f : 0.0f, out, static_cast<int>(n));
    }
  });
}

void linear_rows(const float* a, const float* w, const float* bias, float* y, int64_t m, int64_t n, int64_t k);

class GemmKernel : public mx::UnaryPrimitive {
 public:
  GemmKernel(mx::Stream st, bool bias, bool image_rows)
      : mx::UnaryPrimitive(st), bias_(bias), image_rows_(image_rows) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    std::vector<mx::array> ins;
    for (auto& a : inputs) ins.push_back(mx::array::unsafe_weak_copy(a));
    enc.dispatch([ins = std::move(ins), out = mx::array::unsafe_weak_copy(out), has_bias = bias_,
                  image_rows = image_rows_]() mutable {
      const int64_t k = ins[1].shape(1), n = ins[1].shape(0);
      const int64_t m = k == 0 ? 0 : static_cast<int64_t>(ins[0].size()) / k;
      float* y = out.data<float>();
      if (m == 0 || n == 0) return;
      if (k == 0) {
        std::fill(y, y + out.size(), 0.0f);
        return;
      }
      const float* b = has_bias ? ins[2].data<float>() : nullptr;
      if (image_rows) {
        linear_rows(ins[0].data<float>(), ins[1].data<float>(), b, y, m, n, k);
      } else {
        threaded_gemm(ins[0].data<float>(), ins[1].data<float>(), b, y, m, n, k);
      }
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeGemm is a CPU kernel");
  }
  const char* name() const override { return "MlxeGemm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const GemmKernel*>(&other);
    return o != nullptr && o->bias_ == bias_ && o->image_rows_ == image_rows_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

 private:
  bool bias_;
  bool image_rows_;
};

// ---- convolution

struct ConvShape {
  int64_t n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, oh, ow;
};

// Output positions per tile (about 512), a multiple of `threads` tiles in
// all. Each sgemm call packs the whole weight again, so a tile must be long
// enough to amortise that (at 56 rows for a 256-channel 3×3 conv, the
// packing took a sixth of the time); its patch rows are streamed once. Task
// clock of 3×3 convs (2×32×32×128, 2×16×16×256, 1×256×256×32) was lowest
// near 512 rows with 128-2304-float patch rows alike.
int64_t tile_rows(int64_t positions, int64_t threads) {
  constexpr int64_t want = 512;
  int64_t tiles = (positions + want - 1) / want;
  tiles = (tiles + threads - 1) / threads * threads;
  return (positions + tiles - 1) / tiles;
}

// Copies the receptive fields of output positions [p0, p1) into `a`, one row
// of kh·kw·cin floats each in (kh, kw, cin) order (the weight's), zeros where
// the window hangs over the padding.
void pack_patches(const float* x, const ConvShape& s, int64_t p0, int64_t p1, float* a) {
  const int64_t k = s.kh * s.kw * s.cin, per_image = s.oh * s.ow;
  for (int64_t p = p0; p < p1; p++) {
    const int64_t n = p / per_image, r = p % per_image, oy = r / s.ow, ox = r % s.ow;
    float* row = a + (p - p0) * k;
    const float* img = x + n * s.h * s.w * s.cin;
    for (int64_t ky = 0; ky < s.kh; ky++) {
      const int64_t iy = oy * s.sh - s.ph + ky;
      float* dst = row + ky * s.kw * s.cin;
      if (iy < 0 || iy >= s.h) {
        std::fill(dst, dst + s.kw * s.cin, 0.0f);
        continue;
      }
      const int64_t ix0 = ox * s.sw - s.pw;
      if (s.sw == 1 && ix0 >= 0 && ix0 + s.kw <= s.w) {
        // The whole window row is inside: kw·cin contiguous floats.
        std::memcpy(dst, img + (iy * s.w + ix0) * s.cin, sizeof(float) * s.kw * s.cin);
        continue;
      }
      for (int64_t kx = 0; kx < s.kw; kx++) {
        const int64_t ix = ix0 + kx;
        float* d = dst + kx * s.cin;
        if (ix < 0 || ix >= s.w) {
          std::fill(d, d + s.cin, 0.0f);
        } else {
          std::memcpy(d, img + (iy * s.w + ix) * s.cin, sizeof(float) * s.cin);
        }
      }
    }
  }
}

// The calling thread's patch buffer, at least n floats. The pool's threads
// live as long as the process, so each keeps one buffer (a few MiB at the
// largest conv seen) instead of allocating and page-faulting one per call.
float* patch_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// out rows [p0, p1) = bias (or 0), then += patches · wᵀ by one sgemm.
void conv_tile(const float* x, const float* w, const float* bias, float* out, const ConvShape& s, int64_t p0,
               int64_t p1, float* scratch) {
  const int64_t k = s.kh * s.kw * s.cin, m = p1 - p0;
  float* y = out + p0 * s.cout;
  if (bias != nullptr) {
    for (int64_t i = 0; i < m; i++) std::memcpy(y + i * s.cout, bias, sizeof(float) * s.cout);
  }
  pack_patches(x, s, p0, p1, scratch);
  sgemm()(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(s.cout), static_cast<int>(k), 1.0f, scratch,
          static_cast<int>(k), w, static_cast<int>(k), bias != nullptr ? 1.0f : 0.0f, y, static_cast<int>(s.cout));
}

// ---- direct convolution (AVX-512)
//
// A k×k convolution without patches: the input is copied once into a
// zero-padded (Hp, Wp, C) buffer, and a micro-kernel takes R output
// positions at once from R pointers to their windows' first pixels (one
// broadcast load per position and input channel; GCC keeps the R pointers in
// registers, as it would R offsets of one). The weight is repacked per call
// into blocks of up to 64 output channels, (kh, kw, C, 16·NV) each, so the
// R×NV accumulators take one vector load per 16 channels. OpenBLAS spent a
// third of the convs' time packing (its own copies of both operands, after
// ours of the patches).
#if defined(__x86_64__) && defined(__GNUC__)
#define MLXE_AVX512_KERNELS 1

// 2: AVX-512, 1: AVX2 + FMA, 0: neither (the portable paths).
int detected_level() {
  static const int level = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
  }();
  return level;
}
#else
int detected_level() { return 0; }
#endif

// A cap on the level (-1: none), for tests and benchmarks that compare paths.
std::atomic<int> forced_level{-1};

int level() {
  const int f = forced_level.load(std::memory_order_relaxed);
  return f >= 0 ? std::min(f, detected_level()) : detected_level();
}
bool avx512_on() { return level() >= 2; }

// The output tile of the Winograd kernel that 3×3 stride-1 convs take when
// their weights are packed (F(m×m, 3×3), m = 2 or 4), 0 for the direct
// kernel: MLXENGINE_WINOGRAD=0, 2 or 4 picks (for comparisons), else
// kWinoDefault; a test or benchmark may force one (-1: not forced). F(2×2):
// its float32 errors stay at the direct conv's level where F(4×4)'s are ~10×,
// and on a 2-core Zen 3 (AVX2) F(4×4) was no faster at the bench's shapes
// (its 4×4 tiles waste more at 8×8 and 16×16).
constexpr int kWinoDefault = 2;
std::atomic<int> forced_winograd{-1};

int winograd_tile() {
  static const int env = [] {
    const char* v = std::getenv("MLXENGINE_WINOGRAD");
    const std::string pick = v == nullptr ? "" : v;
    return pick == "0" ? 0 : pick == "2" ? 2 : pick == "4" ? 4 : kWinoDefault;
  }();
  const int f = forced_winograd.load(std::memory_order_relaxed);
  return f >= 0 ? f : env;
}

// Whether Winograd beats the direct kernel for cin → cout channels: its
// transforms cost O(cin + cout) a tile against products of cin·cout, so
// narrow convs lose (measured on AVX2: 32 → 32 at 256² 1.25× slower, 4 → 128
// 2× slower; from 64 → 64 1.7-2.5× faster).
bool winograd_wins(int64_t cin, int64_t cout) { return cin >= 64 && cout >= 64; }

// The direct conv and linear kernels: AVX-512, or AVX2 (16-channel slices).
bool direct_on() { return level() >= 1; }

#ifdef MLXE_AVX512_KERNELS

// Rows of the micro-kernel for NV vectors of output channels: R·NV ≤ 24
// accumulators leave registers for the NV weight vectors and a broadcast.
// The AVX2 kernel takes 6 rows × one 16-channel slice (12 of its 16 registers).
constexpr int rows_for(int nv) { return nv == 1 ? 16 : nv == 2 ? 12 : nv == 3 ? 8 : 6; }
constexpr int kAvx2Rows = 6;
// Output positions (rows) per task: a multiple of every R above.
constexpr int64_t kDirectStep = 48;

// R positions whose windows start at in[r] (pixels `cin` floats apart in
// rows `wp` pixels apart) times one weight block (kh, kw, cin, 16·NV), plus
// the block's padded bias; row r goes to dst[r] (null: dropped), its first
// `cols` channels.
template <int R, int NV>
__attribute__((target("avx512f,fma"))) void conv_micro(const float* const* in, int64_t cin, int64_t wp, int64_t kh,
                                                       int64_t kw, const float* w, const float* bias,
                                                       float* const* dst, int64_t cols) {
  __m512 acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; r++) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_loadu_ps(bias + 16 * v);
  }
  for (int64_t ky = 0; ky < kh; ky++) {
    for (int64_t kx = 0; kx < kw; kx++) {
      const int64_t tap = (ky * wp + kx) * cin;
      const float* x[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; r++) x[r] = in[r] + tap;
      const float* wk = w + (ky * kw + kx) * cin * 16 * NV;
      for (int64_t c = 0; c < cin; c++) {
        __m512 wv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) wv[v] = _mm512_loadu_ps(wk + c * 16 * NV + 16 * v);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
          const __m512 xb = _mm512_set1_ps(x[r][c]);
#pragma GCC unroll 4
          for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; r++) {
    if (dst[r] == nullptr) continue;
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      const int64_t left = cols - 16 * v;
      if (left >= 16) {
        _mm512_storeu_ps(dst[r] + 16 * v, acc[r][v]);
      } else if (left > 0) {
        _mm512_mask_storeu_ps(dst[r] + 16 * v, static_cast<__mmask16>((1u << left) - 1), acc[r][v]);
      }
    }
  }
}

// conv_micro for AVX2: kAvx2Rows positions × the 16 channels at w (k rows
// `wstride` floats apart, as one slice of a packed block).
__attribute__((target("avx2,fma"))) void conv_micro_avx2(const float* const* in, int64_t cin, int64_t wp, int64_t kh,
                                                         int64_t kw, const float* w, int64_t wstride,
                                                         const float* bias, float* const* dst, int64_t cols) {
  constexpr int R = kAvx2Rows;
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    acc[r][0] = _mm256_loadu_ps(bias);
    acc[r][1] = _mm256_loadu_ps(bias + 8);
  }
  for (int64_t ky = 0; ky < kh; ky++) {
    for (int64_t kx = 0; kx < kw; kx++) {
      const int64_t tap = (ky * wp + kx) * cin;
      const float* x[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) x[r] = in[r] + tap;
      const float* wk = w + (ky * kw + kx) * cin * wstride;
      for (int64_t c = 0; c < cin; c++) {
        const __m256 w0 = _mm256_loadu_ps(wk + c * wstride), w1 = _mm256_loadu_ps(wk + c * wstride + 8);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
          const __m256 xb = _mm256_broadcast_ss(x[r] + c);
          acc[r][0] = _mm256_fmadd_ps(xb, w0, acc[r][0]);
          acc[r][1] = _mm256_fmadd_ps(xb, w1, acc[r][1]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    if (dst[r] == nullptr) continue;
    if (cols >= 16) {
      _mm256_storeu_ps(dst[r], acc[r][0]);
      _mm256_storeu_ps(dst[r] + 8, acc[r][1]);
    } else {
      alignas(32) float t[16];
      _mm256_store_ps(t, acc[r][0]);
      _mm256_store_ps(t + 8, acc[r][1]);
      std::memcpy(dst[r], t, sizeof(float) * cols);
    }
  }
}

// Columns [j0, j1) of output channels [c0, c0 + 16·nv) of the (cout, k)
// weight into dst (k, 16·nv), zeros past cout.
__attribute__((target("avx512f"))) void pack_weight_block(const float* w, int64_t k, int64_t cout, int64_t c0,
                                                          int64_t nv, int64_t j0, int64_t j1, float* dst) {
  const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(static_cast<int>(k)));
  for (int64_t v = 0; v < nv; v++) {
    const int64_t first = c0 + 16 * v, left = std::clamp<int64_t>(cout - first, 0, 16);
    const __mmask16 m = static_cast<__mmask16>((1u << left) - 1);
    const float* src = w + std::min(first, cout - 1) * k;
    for (int64_t j = j0; j < j1; j++) {
      _mm512_storeu_ps(dst + j * 16 * nv + 16 * v,
                       _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, rows, src + j, 4));
    }
  }
}

// pack_weight_block with AVX2's 8-lane gathers (a scalar transpose took 8%
// of a diffusion run).
__attribute__((target("avx2"))) void pack_weight_block_avx2(const float* w, int64_t k, int64_t cout, int64_t c0,
                                                            int64_t nv, int64_t j0, int64_t j1, float* dst) {
  const __m256i rows = _mm256_mullo_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm256_set1_epi32(static_cast<int>(k)));
  for (int64_t v = 0; v < 2 * nv; v++) {
    const int64_t first = c0 + 8 * v, left = std::clamp<int64_t>(cout - first, 0, 8);
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    const __m256 m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane));
    const float* src = w + std::min(first, cout - 1) * k;
    for (int64_t j = j0; j < j1; j++) {
      _mm256_storeu_ps(dst + j * 16 * nv + 8 * v, _mm256_mask_i32gather_ps(_mm256_setzero_ps(), src + j, rows, m, 4));
    }
  }
}

// The calling thread's buffers: the padded input and the packed weight.
float* direct_buffer(int which, int64_t n) {
  thread_local std::vector<float> bufs[2];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// The weight (cout, k) in blocks of 64 output channels, the last of 16, 32
// or 48 (zero-padded), each (k, 16·nv), and the bias padded alike; in the
// calling thread's buffer (valid until its next pack_weight), or the weight
// in pack_conv_weight's array.
struct PackedWeight {
  struct Block {
    int64_t c0, nv, offset;
  };
  std::vector<Block> blocks;
  const float* w;     // the blocks
  const float* bias;  // per padded output channel
  int64_t k, cout;
  bool avx512;  // the level when packed: a test may change it meanwhile

  // Positions a multiply takes.
  int64_t rows(const Block& b) const { return avx512 ? rows_for(static_cast<int>(b.nv)) : kAvx2Rows; }

  // dst[r] (null: dropped) = the kh×kw windows at in[r] (of `wp`-wide rows
  // of `cin`-float pixels) times block b, plus its bias; the blocks read
  // `shift` floats past w (the Winograd points' weights share one layout).
  void multiply(const Block& b, const float* const* in, int64_t cin, int64_t wp, int64_t kh, int64_t kw,
                float* const* dst, int64_t shift = 0) const {
    const float* wb = w + shift + b.offset;
    const float* bb = bias + b.offset / k;
    const int64_t cols = std::min<int64_t>(16 * b.nv, cout - b.c0);
    if (!avx512) {
      for (int64_t s = 0; s < b.nv && 16 * s < cols; s++) {
        float* part[kAvx2Rows];
        for (int r = 0; r < kAvx2Rows; r++) part[r] = dst[r] ? dst[r] + 16 * s : nullptr;
        conv_micro_avx2(in, cin, wp, kh, kw, wb + 16 * s, 16 * b.nv, bb + 16 * s, part, cols - 16 * s);
      }
      return;
    }
    switch (b.nv) {
      case 1: conv_micro<rows_for(1), 1>(in, cin, wp, kh, kw, wb, bb, dst, cols); break;
      case 2: conv_micro<rows_for(2), 2>(in, cin, wp, kh, kw, wb, bb, dst, cols); break;
      case 3: conv_micro<rows_for(3), 3>(in, cin, wp, kh, kw, wb, bb, dst, cols); break;
      default: conv_micro<rows_for(4), 4>(in, cin, wp, kh, kw, wb, bb, dst, cols); break;
    }
  }
};

// The block layout of a (cout, k) weight, without data (w, bias unset);
// `floats` gets the packed weight's length.
PackedWeight weight_layout(int64_t cout, int64_t k, int64_t* floats) {
  PackedWeight p;
  p.avx512 = avx512_on();
  int64_t packed = 0;
  for (int64_t c0 = 0; c0 < cout; c0 += 64) {
    const int64_t nv = std::min<int64_t>(4, (cout - c0 + 15) / 16);
    p.blocks.push_back({c0, nv, packed});
    packed += k * 16 * nv;
  }
  p.k = k;
  p.cout = cout;
  *floats = packed;
  return p;
}

// The blocks of the (cout, k) weight w into pw, as weight_layout lays them out.
void pack_blocks(const float* w, const PackedWeight& p, float* pw) {
  const int64_t k = p.k, cout = p.cout, padded_cout = (cout + 15) / 16 * 16;
  // Runs of 64 weight columns per task, 16 output channels gathered at a
  // time (the 16 weight rows' lines stay in L1 along the run): a scalar
  // transpose took 8% of a diffusion run.
  parallel((k + 63) / 64, 64 * padded_cout, [&](int64_t lo, int64_t hi) {
    for (const auto& b : p.blocks) {
      const int64_t j0 = lo * 64, j1 = std::min(k, hi * 64);
      if (p.avx512) {
        pack_weight_block(w, k, cout, b.c0, b.nv, j0, j1, pw + b.offset);
        continue;
      }
      pack_weight_block_avx2(w, k, cout, b.c0, b.nv, j0, j1, pw + b.offset);
    }
  });
}

// Sets p.bias: the bias (or zeros) padded to the blocks, in the calling
// thread's buffer `which` after `at` floats.
void pad_bias(PackedWeight& p, const float* bias, int which, int64_t at) {
  const int64_t padded_cout = (p.cout + 15) / 16 * 16;
  float* pb = direct_buffer(which, at + padded_cout) + at;
  for (int64_t o = 0; o < padded_cout; o++) pb[o] = bias != nullptr && o < p.cout ? bias[o] : 0.0f;
  p.bias = pb;
}

// The weight packed per call into the calling thread's buffer.
PackedWeight pack_weight(const float* w, const float* bias, int64_t cout, int64_t k) {
  int64_t floats = 0;
  PackedWeight p = weight_layout(cout, k, &floats);
  pad_bias(p, bias, 1, floats);
  float* pw = direct_buffer(1, 0);
  pack_blocks(w, p, pw);
  p.w = pw;
  return p;
}

// A weight packed beforehand (pack_conv_weight), with its bias.
PackedWeight prepacked_weight(const float* packed, const float* bias, int64_t cout, int64_t k) {
  int64_t floats = 0;
  PackedWeight p = weight_layout(cout, k, &floats);
  pad_bias(p, bias, 1, 0);
  p.w = packed;
  return p;
}

// y (m rows of pw.cout) = the kh×kw windows at src(p) (as
// PackedWeight::multiply reads them) times the packed weight, plus its bias:
// tasks of kDirectStep rows × one block of output channels, handed out one at
// a time (consecutive ones share their input rows: with a few big tasks a
// thread, one thread was often left with a whole extra one, a fifth of a UNet
// conv's time; the 8×8 level had 3 tasks for 2).
template <typename Src>
void direct_tasks(const PackedWeight& pw, int64_t m, float* y, int64_t cin, int64_t wp, int64_t kh, int64_t kw,
                  Src&& src) {
  const int64_t nb = static_cast<int64_t>(pw.blocks.size());
  auto task = [&](int64_t it) {
    const int64_t p0 = it / nb * kDirectStep, p1 = std::min(m, p0 + kDirectStep);
    const PackedWeight::Block& b = pw.blocks[it % nb];
    const int64_t rows = pw.rows(b);
    for (int64_t p = p0; p < p1; p += rows) {
      const float* in[16];
      float* dst[16];
      for (int64_t r = 0; r < rows; r++) {
        const bool live = p + r < p1;
        in[r] = src(live ? p + r : p0);  // past the end: any valid row, dropped
        dst[r] = live ? y + (p + r) * pw.cout + b.c0 : nullptr;
      }
      pw.multiply(b, in, cin, wp, kh, kw, dst);
    }
  };
  const int64_t tasks = (m + kDirectStep - 1) / kDirectStep * nb;
  if (m * pw.k * pw.cout < (int64_t{1} << 20)) {
    for (int64_t it = 0; it < tasks; it++) task(it);
  } else {
    Pool::get().run(tasks, task);
  }
}

// y (m, n) = x (m, k) · w (n, k)ᵀ + bias with the direct kernel's register
// tiles, x read in place: OpenBLAS spent as long packing both operands of
// these small-k products (k = 128-1024) as multiplying.
void direct_linear(const float* x, const PackedWeight& pw, float* y, int64_t m) {
  direct_tasks(pw, m, y, pw.k, 0, 1, 1, [&](int64_t p) { return x + p * pw.k; });
}

// x in the calling thread's buffer 0, zero-padded to (hp, wpad) pixels a
// row and column: s.ph rows and s.pw columns before it, the rest after.
const float* pad_input(const float* x, const ConvShape& s, int64_t hp, int64_t wpad) {
  const int64_t cin = s.cin, image = hp * wpad * cin;
  float* px = direct_buffer(0, s.n * image);
  parallel(s.n * hp, wpad * cin, [&](int64_t lo, int64_t hi) {
    for (int64_t it = lo; it < hi; it++) {
      const int64_t img = it / hp, py = it % hp, iy = py - s.ph;
      float* row = px + img * image + py * wpad * cin;
      if (iy < 0 || iy >= s.h) {
        std::fill(row, row + wpad * cin, 0.0f);
      } else {
        std::fill(row, row + s.pw * cin, 0.0f);
        std::memcpy(row + s.pw * cin, x + ((img * s.h + iy) * s.w) * cin, sizeof(float) * s.w * cin);
        std::fill(row + (s.pw + s.w) * cin, row + wpad * cin, 0.0f);
      }
    }
  });
  return px;
}

// y = conv(x, w) + bias (see above), w packed.
void direct_conv(const float* x, const PackedWeight& pw, float* y, const ConvShape& s) {
  const int64_t hp = s.h + 2 * s.ph, wpad = s.w + 2 * s.pw, cin = s.cin;
  const int64_t image = hp * wpad * cin;
  const float* px = pad_input(x, s, hp, wpad);
  const int64_t per_image = s.oh * s.ow;
  direct_tasks(pw, s.n * per_image, y, cin, wpad, s.kh, s.kw, [&](int64_t p) {
    const int64_t img = p / per_image, oy = p % per_image / s.ow, ox = p % s.ow;
    return px + img * image + (oy * s.sh * wpad + ox * s.sw) * cin;
  });
}

// ---- Winograd convolution, F(m×m, 3×3)
//
// A 3×3 stride-1 conv in m×m output tiles (Lavin & Gray): each tile's α×α
// input window d (α = m + 2) becomes V = Bᵀ·d·B, the weight g of each
// (output, input) channel pair U = G·g·Gᵀ (once, when the model packs it),
// and the tile's outputs are Aᵀ·M·A with M = Σ_c U ⊙ V: per point ξ of the
// α², a product (tiles × cin)·(cin × cout), run on the direct kernel's
// register tiles with U packed in its blocks. Per output and input channel
// α²/m² multiply-adds where the direct conv makes 9 (F(2×2): 4, F(4×4):
// 2.25); the transforms are O(cin + cout) a tile, vectorised over 16
// channels at a time (one clone per x86-64 level). F(4×4)'s transforms have
// coefficients up to 8 (points 0, ±1, ±2) and its sums cancel more: its
// float32 errors are ~10× the direct conv's, F(2×2)'s at its level
// (tests/image_kernels.rs).

constexpr int kWinoLanes = 16;
// Tiles per task: a multiple of every micro-kernel's rows; V and M for 48
// tiles of 256 channels (1.8 MB each at F(4×4)) stream through L2 one point
// at a time.
constexpr int64_t kWinoBlock = 48;

// 16 channels of the transforms: GCC's generic vectors, one AVX-512 register
// or two AVX2 ones in the clones (plain arrays under `omp simd` stayed scalar).
typedef float WinoVec __attribute__((vector_size(4 * kWinoLanes)));
typedef float WinoVecUnaligned __attribute__((vector_size(4 * kWinoLanes), aligned(4)));

// n ≤ 16 floats at p (Full: 16), zeros past them.
template <bool Full>
inline __attribute__((always_inline)) WinoVec wino_load(const float* p, int n) {
  if (Full) return *reinterpret_cast<const WinoVecUnaligned*>(p);
  alignas(64) float b[kWinoLanes] = {};
  std::memcpy(b, p, sizeof(float) * n);
  return *reinterpret_cast<const WinoVec*>(b);
}

// The first n ≤ 16 lanes of v to p (Full: 16).
template <bool Full>
inline __attribute__((always_inline)) void wino_store(float* p, WinoVec v, int n) {
  if (Full) {
    *reinterpret_cast<WinoVecUnaligned*>(p) = v;
    return;
  }
  alignas(64) float b[kWinoLanes];
  *reinterpret_cast<WinoVec*>(b) = v;
  std::memcpy(p, b, sizeof(float) * n);
}

template <int M>
struct Wino;

// F(2×2, 3×3): points 0, ±1, ∞.
template <>
struct Wino<2> {
  static constexpr int A = 4;
  // Bᵀ·d (rows of Bᵀ: 1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1).
  static inline __attribute__((always_inline)) void bt(const WinoVec* d, WinoVec* r) {
    r[0] = d[0] - d[2];
    r[1] = d[1] + d[2];
    r[2] = d[2] - d[1];
    r[3] = d[1] - d[3];
  }
  // Aᵀ·m (rows of Aᵀ: 1 1 1 0; 0 1 −1 −1).
  static inline __attribute__((always_inline)) void at(const WinoVec* m, WinoVec* r) {
    r[0] = m[0] + m[1] + m[2];
    r[1] = m[1] - m[2] - m[3];
  }
  static constexpr double g[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
};

// F(4×4, 3×3): points 0, ±1, ±2, ∞.
template <>
struct Wino<4> {
  static constexpr int A = 6;
  // Rows of Bᵀ: 4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0;
  // 0 2 −1 −2 1 0; 0 4 0 −5 0 1.
  static inline __attribute__((always_inline)) void bt(const WinoVec* d, WinoVec* r) {
    const WinoVec a = d[4] - d[2], b = d[3] - d[1];
    r[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    r[1] = (d[3] + d[4]) - 4.0f * (d[1] + d[2]);
    r[2] = (d[4] - d[3]) + 4.0f * (d[1] - d[2]);
    r[3] = a + 2.0f * b;
    r[4] = a - 2.0f * b;
    r[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }
  // Rows of Aᵀ: 1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1.
  static inline __attribute__((always_inline)) void at(const WinoVec* m, WinoVec* r) {
    const WinoVec p = m[1] + m[2], q = m[1] - m[2], u = m[3] + m[4], v = m[3] - m[4];
    r[0] = m[0] + p + u;
    r[1] = q + 2.0f * v;
    r[2] = p + 4.0f * u;
    r[3] = q + 8.0f * v + m[5];
  }
  static constexpr double g[6][3] = {{0.25, 0, 0},
                                     {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                     {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                     {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                     {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                     {0, 0, 1}};
};

// V of one window (rows `rs` floats apart, pixels `ps`) for n ≤ 16 channels:
// point ξ = α·i + j at v[ξ·vs]. Full: n is 16.
template <int M, bool Full>
inline __attribute__((always_inline)) void wino_input_lanes(const float* in, int64_t rs, int64_t ps, float* v,
                                                            int64_t vs, int n) {
  constexpr int A = Wino<M>::A;
  WinoVec t[A][A];  // Bᵀ·d, transposed
  for (int j = 0; j < A; j++) {
    WinoVec d[A];
    for (int k = 0; k < A; k++) d[k] = wino_load<Full>(in + k * rs + j * ps, n);
    Wino<M>::bt(d, t[j]);
  }
  for (int i = 0; i < A; i++) {
    WinoVec d[A], r[A];
    for (int j = 0; j < A; j++) d[j] = t[j][i];
    Wino<M>::bt(d, r);
    for (int j = 0; j < A; j++) wino_store<Full>(v + (i * A + j) * vs, r[j], n);
  }
}

// Aᵀ·M·A + bias of one tile for n ≤ 16 channels (M's point ξ at m[ξ·ms]):
// its first `rows` × `cols` outputs to y (rows `rs` floats apart, pixels `ps`).
template <int M, bool Full>
inline __attribute__((always_inline)) void wino_output_lanes(const float* m, int64_t ms, const float* bias, float* y,
                                                             int64_t rs, int64_t ps, int rows, int cols, int n) {
  constexpr int A = Wino<M>::A;
  WinoVec t[A][M];  // Aᵀ·M, transposed
  for (int j = 0; j < A; j++) {
    WinoVec d[A];
    for (int k = 0; k < A; k++) d[k] = wino_load<Full>(m + (k * A + j) * ms, n);
    Wino<M>::at(d, t[j]);
  }
  const WinoVec b = wino_load<Full>(bias, n);
  for (int i = 0; i < rows; i++) {
    WinoVec d[A], r[M];
    for (int j = 0; j < A; j++) d[j] = t[j][i];
    Wino<M>::at(d, r);
    for (int j = 0; j < cols; j++) wino_store<Full>(y + i * rs + j * ps, r[j] + b, n);
  }
}

// V of one tile's window at `in` (rows `rs` floats apart) over all cin channels.
template <int M>
MLXE_CLONES void wino_input_tile(const float* in, int64_t rs, int64_t cin, float* v, int64_t vs) {
  int64_t c = 0;
  for (; c + kWinoLanes <= cin; c += kWinoLanes) wino_input_lanes<M, true>(in + c, rs, cin, v + c, vs, kWinoLanes);
  if (c < cin) wino_input_lanes<M, false>(in + c, rs, cin, v + c, vs, static_cast<int>(cin - c));
}

// One tile's outputs from M over `width` channels (see wino_output_lanes).
template <int M>
MLXE_CLONES void wino_output_tile(const float* m, int64_t ms, int64_t width, const float* bias, float* y, int64_t rs,
                                  int64_t ps, int rows, int cols) {
  int64_t c = 0;
  for (; c + kWinoLanes <= width; c += kWinoLanes) {
    wino_output_lanes<M, true>(m + c, ms, bias + c, y + c, rs, ps, rows, cols, kWinoLanes);
  }
  if (c < width) {
    wino_output_lanes<M, false>(m + c, ms, bias + c, y + c, rs, ps, rows, cols, static_cast<int>(width - c));
  }
}

// U = G·g·Gᵀ of the (cout, 3, 3, cin) weight w, in double, as α² (cout, cin)
// matrices (point ξ's at u + ξ·cout·cin).
template <int M>
void winograd_weight(const float* w, int64_t cout, int64_t cin, float* u) {
  constexpr int A = Wino<M>::A;
  const auto& g = Wino<M>::g;
  parallel(cout, 9 * cin * 16, [&](int64_t lo, int64_t hi) {
    for (int64_t o = lo; o < hi; o++) {
      for (int64_t c = 0; c < cin; c++) {
        double k[3][3], t[A][3];
        for (int y = 0; y < 3; y++) {
          for (int x = 0; x < 3; x++) k[y][x] = w[((o * 3 + y) * 3 + x) * cin + c];
        }
        for (int i = 0; i < A; i++) {
          for (int x = 0; x < 3; x++) t[i][x] = g[i][0] * k[0][x] + g[i][1] * k[1][x] + g[i][2] * k[2][x];
        }
        for (int i = 0; i < A; i++) {
          for (int j = 0; j < A; j++) {
            const double v = t[i][0] * g[j][0] + t[i][1] * g[j][1] + t[i][2] * g[j][2];
            u[((i * A + j) * cout + o) * cin + c] = static_cast<float>(v);
          }
        }
      }
    }
  });
}

// The (cout, 3, 3, cin) weight w packed for winograd_conv<M> into out
// (winograd_floats(M, cout, cin) floats).
template <int M>
void pack_winograd(const float* w, int64_t cout, int64_t cin, float* out) {
  constexpr int64_t points = Wino<M>::A * Wino<M>::A;
  std::vector<float> u(points * cout * cin);
  winograd_weight<M>(w, cout, cin, u.data());
  int64_t floats = 0;
  const PackedWeight layout = weight_layout(cout, cin, &floats);
  for (int64_t xi = 0; xi < points; xi++) pack_blocks(u.data() + xi * cout * cin, layout, out + xi * floats);
}

// The calling thread's V (0) and M (1) buffers.
float* wino_buffer(int which, int64_t n) {
  thread_local std::vector<float> bufs[2];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// y = conv3×3(x) + bias, stride 1, by F(M×M, 3×3) with `u`: the α² points'
// (cout, cin) weights, each in the direct kernel's blocks, one after another.
template <int M>
void winograd_conv_tiles(const float* x, const float* u, const float* bias, float* y, const ConvShape& s) {
  constexpr int64_t A = Wino<M>::A, points = A * A;
  const int64_t cin = s.cin, cout = s.cout, padded = (cout + 15) / 16 * 16;
  int64_t point = 0;
  PackedWeight pw = weight_layout(cout, cin, &point);
  std::vector<float> zeros(padded, 0.0f), b(padded, 0.0f);
  if (bias != nullptr) std::copy(bias, bias + cout, b.begin());
  pw.w = u;
  pw.bias = zeros.data();  // the products start at 0; the bias comes with Aᵀ·M·A
  // The input zero-padded to whole tiles: every α×α window lies inside.
  const int64_t ty = (s.oh + M - 1) / M, tx = (s.ow + M - 1) / M, per_image = ty * tx, tiles = s.n * per_image;
  const int64_t hp = M * ty + 2, wpad = M * tx + 2, image = hp * wpad * cin;
  const float* px = pad_input(x, s, hp, wpad);
  // Tasks: a block of tiles × a group of output blocks. Few tiles (the UNet's
  // 8×8 and 16×16 levels) are split by output channels too, each group
  // transforming the same inputs again, so both cores have work.
  const int64_t nb = static_cast<int64_t>(pw.blocks.size());
  const int64_t block = std::min(kWinoBlock, tiles), nt = (tiles + block - 1) / block;
  const int64_t ng = std::min(nb, std::max<int64_t>(1, (4 * Pool::get().size() + nt - 1) / nt));
  auto task = [&](int64_t it) {
    const int64_t t0 = it / ng * block, count = std::min(block, tiles - t0), g = it % ng;
    const int64_t b0 = g * nb / ng, b1 = (g + 1) * nb / ng;
    const int64_t c0 = pw.blocks[b0].c0, c1 = std::min(cout, pw.blocks[b1 - 1].c0 + 64);
    const int64_t mw = (c1 - c0 + 15) / 16 * 16;
    float* v = wino_buffer(0, points * block * cin);
    float* m = wino_buffer(1, points * block * mw);
    auto origin = [&](int64_t t, int64_t* img, int64_t* oy, int64_t* ox) {
      const int64_t tile = t0 + t, r = tile % per_image;
      *img = tile / per_image;
      *oy = r / tx * M;
      *ox = r % tx * M;
    };
    for (int64_t t = 0; t < count; t++) {
      int64_t img, oy, ox;
      origin(t, &img, &oy, &ox);
      wino_input_tile<M>(px + img * image + (oy * wpad + ox) * cin, wpad * cin, cin, v + t * cin, block * cin);
    }
    for (int64_t xi = 0; xi < points; xi++) {
      for (int64_t bi = b0; bi < b1; bi++) {
        const PackedWeight::Block& blk = pw.blocks[bi];
        const int64_t rows = pw.rows(blk);
        for (int64_t t = 0; t < count; t += rows) {
          const float* in[16];
          float* dst[16];
          for (int64_t r = 0; r < rows; r++) {
            const bool live = t + r < count;
            in[r] = v + (xi * block + (live ? t + r : 0)) * cin;  // past the end: any row, dropped
            dst[r] = live ? m + (xi * block + t + r) * mw + (blk.c0 - c0) : nullptr;
          }
          pw.multiply(blk, in, cin, 0, 1, 1, dst, xi * point);
        }
      }
    }
    for (int64_t t = 0; t < count; t++) {
      int64_t img, oy, ox;
      origin(t, &img, &oy, &ox);
      wino_output_tile<M>(m + t * mw, block * mw, c1 - c0, b.data() + c0,
                          y + ((img * s.oh + oy) * s.ow + ox) * cout + c0, s.ow * cout, cout,
                          static_cast<int>(std::min<int64_t>(M, s.oh - oy)),
                          static_cast<int>(std::min<int64_t>(M, s.ow - ox)));
    }
  };
  const int64_t tasks = nt * ng;
  if (tiles * cin * cout < (int64_t{1} << 16)) {
    for (int64_t it = 0; it < tasks; it++) task(it);
  } else {
    Pool::get().run(tasks, task);
  }
}

// winograd_conv_tiles for the tile pack_conv_weight packed `u` for.
void winograd_conv(int tile, const float* x, const float* u, const float* bias, float* y, const ConvShape& s) {
  tile == 2 ? winograd_conv_tiles<2>(x, u, bias, y, s) : winograd_conv_tiles<4>(x, u, bias, y, s);
}
#endif

// Whether the direct kernel beats sgemm on a product to n outputs from k
// inputs (where it runs): with AVX2 only where n ≤ k, as OpenBLAS's Zen
// kernel beat its 6 × 16 tiles on wider outputs (2048 × 128 → 1024: 3.4 vs
// 4.0 ms on a 2-core Zen 3 with the weight packed per call, 2048 × 512 → 128:
// 2.8 vs 2.3 ms the other way).
bool direct_linear_wins(int64_t n, int64_t k) { return avx512_on() || n <= k; }

// y = a · wᵀ (+ bias) over many rows: the direct kernel where it runs, wins
// and there are a few tasks for every core, else one sgemm a core.
void linear_rows(const float* a, const float* w, const float* bias, float* y, int64_t m, int64_t n, int64_t k) {
#ifdef MLXE_AVX512_KERNELS
  if (direct_on() && m >= 4 * kDirectStep && direct_linear_wins(n, k)) {
    direct_linear(a, pack_weight(w, bias, n, k), y, m);
    return;
  }
#endif
  threaded_gemm(a, w, bias, y, m, n, k);
}

class Conv2dKernel : public mx::UnaryPrimitive {
 public:
  // `packed`: the weight input is pack_conv_weight's, not (O, KH, KW, I);
  // `winograd`: in the Winograd layout for m×m tiles (0: not).
  Conv2dKernel(mx::Stream st, ConvShape s, bool bias, bool packed, int winograd)
      : mx::UnaryPrimitive(st), s_(s), bias_(bias), packed_(packed), winograd_(winograd) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    std::vector<mx::array> ins;
    for (auto& a : inputs) ins.push_back(mx::array::unsafe_weak_copy(a));
    enc.dispatch([ins = std::move(ins), out = mx::array::unsafe_weak_copy(out), s = s_, has_bias = bias_,
                  packed = packed_, winograd = winograd_]() mutable {
      const float* x = ins[0].data<float>();
      const float* w = ins[1].data<float>();
      const float* b = has_bias ? ins[2].data<float>() : nullptr;
      float* y = out.data<float>();
      const int64_t positions = s.n * s.oh * s.ow, k = s.kh * s.kw * s.cin;
      if (positions == 0 || s.cout == 0) return;
      if (k == 0) {  // no input channels: the bias alone
        for (int64_t p = 0; p < positions; p++) {
          for (int64_t o = 0; o < s.cout; o++) y[p * s.cout + o] = b != nullptr ? b[o] : 0.0f;
        }
        return;
      }
      const bool one_by_one = s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
#ifdef MLXE_AVX512_KERNELS
#ifdef MLXE_AVX512_KERNELS
      if (winograd != 0) {  // packed for it, which needed the direct kernel's level (as below)
        winograd_conv(winograd, x, w, b, y, s);
        return;
      }
#endif
      if (packed) {  // packing needed the direct kernel, which the CPU keeps even if a test lowers the level
        const PackedWeight pw = prepacked_weight(w, b, s.cout, k);
        one_by_one ? direct_linear(x, pw, y, positions) : direct_conv(x, pw, y, s);
        return;
      }
#endif
      if (one_by_one) {
        // A 1×1 stride-1 convolution is a product with the input in place.
        linear_rows(x, w, b, y, positions, s.cout, s.cin);
        return;
      }
#ifdef MLXE_AVX512_KERNELS
      if (direct_on()) {
        direct_conv(x, pack_weight(w, b, s.cout, k), y, s);
        return;
      }
#endif
      const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
      const int64_t rows = tile_rows(positions, hw), tiles = (positions + rows - 1) / rows;
      SerialBlas serial(tiles > 1 && hw > 1);
      // Contiguous runs of tiles per thread; each thread packs into its own buffer.
      parallel(tiles, rows * std::max<int64_t>(k, s.cout) * 16, [&](int64_t lo, int64_t hi) {
        float* scratch = patch_buffer(rows * k);
        for (int64_t t = lo; t < hi; t++) {
          conv_tile(x, w, b, y, s, t * rows, std::min(positions, (t + 1) * rows), scratch);
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeConv2d is a CPU kernel");
  }
  const char* name() const override { return "MlxeConv2d"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const Conv2dKernel*>(&other);
    return o != nullptr && o->bias_ == bias_ && o->packed_ == packed_ && o->winograd_ == winograd_ &&
           std::memcmp(&o->s_, &s_, sizeof(ConvShape)) == 0;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {{static_cast<int>(s_.n), static_cast<int>(s_.oh), static_cast<int>(s_.ow), static_cast<int>(s_.cout)}};
  }

 private:
  ConvShape s_;
  bool bias_;
  bool packed_;
  int winograd_;
};

// The length of a packed (cout, k) weight: k times cout rounded up to 16.
int64_t packed_floats(int64_t cout, int64_t k) { return k * ((cout + 15) / 16 * 16); }

// The length of a (cout, 3, 3, cin) weight packed for winograd_conv with
// m×m tiles: (m + 2)² (cout, cin) weights (16/9 or 4× the direct kernel's).
int64_t winograd_floats(int tile, int64_t cout, int64_t cin) {
  return (tile + 2) * (tile + 2) * packed_floats(cout, cin);
}

// The weight (cout, k) in the direct kernel's blocks (see PackedWeight), or
// (winograd: the tile) a (cout, 3, 3, k / 9) weight as winograd_conv takes
// it; once.
class PackWeightKernel : public mx::UnaryPrimitive {
 public:
  PackWeightKernel(mx::Stream st, int64_t cout, int64_t k, int winograd)
      : mx::UnaryPrimitive(st), cout_(cout), k_(k), winograd_(winograd) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    check_input(inputs[0], name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(inputs[0]);
    enc.set_output_array(out);
    enc.dispatch([w = mx::array::unsafe_weak_copy(inputs[0]), out = mx::array::unsafe_weak_copy(out), cout = cout_,
                  k = k_, winograd = winograd_]() mutable {
#ifdef MLXE_AVX512_KERNELS
      int64_t floats = 0;
      if (winograd == 2) {
        pack_winograd<2>(w.data<float>(), cout, k / 9, out.data<float>());
      } else if (winograd == 4) {
        pack_winograd<4>(w.data<float>(), cout, k / 9, out.data<float>());
      } else {
        pack_blocks(w.data<float>(), weight_layout(cout, k, &floats), out.data<float>());
      }
#endif
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxePackWeight is a CPU kernel");
  }
  const char* name() const override { return "MlxePackWeight"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const PackWeightKernel*>(&other);
    return o != nullptr && o->cout_ == cout_ && o->k_ == k_ && o->winograd_ == winograd_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override {
    return {{static_cast<int>(winograd_ != 0 ? winograd_floats(winograd_, cout_, k_ / 9) : packed_floats(cout_, k_))}};
  }

 private:
  int64_t cout_, k_;
  int winograd_;
};

// ---- group norm

// Sums and sums of squares per group over rows [r0, r1) of one image's
// (positions, C) block; float partials over short runs of rows, added in double.
MLXE_CLONES void group_sums(const float* x, int64_t r0, int64_t r1, int64_t c, int64_t groups, double* sum,
                            double* sq, float* acc) {
  constexpr int64_t run = 32;
  const int64_t cg = c / groups;
  for (int64_t a = r0; a < r1; a += run) {
    const int64_t b = std::min(r1, a + run);
    std::fill(acc, acc + 2 * c, 0.0f);
    for (int64_t r = a; r < b; r++) {
      const float* row = x + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; i++) {
        acc[i] += row[i];
        acc[c + i] += row[i] * row[i];
      }
    }
    for (int64_t g = 0; g < groups; g++) {
      double s = 0, q = 0;
      for (int64_t i = g * cg; i < (g + 1) * cg; i++) {
        s += acc[i];
        q += acc[c + i];
      }
      sum[g] += s;
      sq[g] += q;
    }
  }
}

// y = (x - mean_c)·scale_c + shift_c, then SiLU when asked, over rows [r0, r1).
MLXE_CLONES void group_apply(const float* x, float* y, int64_t r0, int64_t r1, int64_t c, const float* mean,
                             const float* scale, const float* shift, bool silu) {
  for (int64_t r = r0; r < r1; r++) {
    const float* in = x + r * c;
    float* out = y + r * c;
    if (silu) {
#pragma omp simd
      for (int64_t i = 0; i < c; i++) {
        const float v = (in[i] - mean[i]) * scale[i] + shift[i];
        out[i] = v / (1.0f + exp_approx(-v));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < c; i++) out[i] = (in[i] - mean[i]) * scale[i] + shift[i];
    }
  }
}

class GroupNormKernel : public mx::UnaryPrimitive {
 public:
  GroupNormKernel(mx::Stream st, int groups, float eps, bool silu)
      : mx::UnaryPrimitive(st), groups_(groups), eps_(eps), silu_(silu) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    enc.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                  b = mx::array::unsafe_weak_copy(inputs[2]), out = mx::array::unsafe_weak_copy(out), g = groups_,
                  eps = eps_, silu = silu_]() mutable {
      const int64_t n = x.shape(0), c = x.shape(-1);
      if (x.size() == 0 || c == 0) return;
      const int64_t rows = static_cast<int64_t>(x.size()) / (n * c), cg = c / g;
      const float* xp = x.data<float>();
      float* yp = out.data<float>();
      // Statistics: blocks of rows per thread, partial sums per block.
      constexpr int64_t block = 256;
      const int64_t blocks = (rows + block - 1) / block;
      std::vector<double> part(static_cast<size_t>(n * blocks * g * 2), 0.0);
      parallel(n * blocks, block * c, [&](int64_t lo, int64_t hi) {
        std::vector<float> acc(2 * c);
        for (int64_t it = lo; it < hi; it++) {
          const int64_t img = it / blocks, r0 = (it % blocks) * block;
          double* p = part.data() + it * g * 2;
          group_sums(xp + img * rows * c, r0, std::min(rows, r0 + block), c, g, p, p + g, acc.data());
        }
      });
      // Per image and channel: the group's mean, and weight/√(var+eps) and bias.
      std::vector<float> mean(n * c), scale(n * c), shift(n * c);
      const float* wp = w.data<float>();
      const float* bp = b.data<float>();
      const double count = static_cast<double>(rows * cg);
      for (int64_t img = 0; img < n; img++) {
        for (int64_t gi = 0; gi < g; gi++) {
          double s = 0, q = 0;
          for (int64_t bl = 0; bl < blocks; bl++) {
            const double* p = part.data() + (img * blocks + bl) * g * 2;
            s += p[gi];
            q += p[g + gi];
          }
          const double mu = s / count, var = std::max(0.0, q / count - mu * mu);
          const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
          for (int64_t i = gi * cg; i < (gi + 1) * cg; i++) {
            mean[img * c + i] = static_cast<float>(mu);
            scale[img * c + i] = wp[i] * inv;
            shift[img * c + i] = bp[i];
          }
        }
      }
      parallel(n * blocks, block * c, [&](int64_t lo, int64_t hi) {
        for (int64_t it = lo; it < hi; it++) {
          const int64_t img = it / blocks, r0 = (it % blocks) * block;
          const int64_t off = img * rows * c;
          group_apply(xp + off, yp + off, r0, std::min(rows, r0 + block), c, &mean[img * c], &scale[img * c],
                      &shift[img * c], silu);
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeGroupNorm is a CPU kernel");
  }
  const char* name() const override { return "MlxeGroupNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const GroupNormKernel*>(&other);
    return o && o->groups_ == groups_ && o->eps_ == eps_ && o->silu_ == silu_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  int groups_;
  float eps_;
  bool silu_;
};

// ---- GEGLU

// GEGLU over rows of 2F: y = value · GELU(gate), value the first half.
// Here for -fno-trapping-math (build.rs): with FP traps kept, GCC left the
// loop scalar around erf_approx's clamps (4% of the CPU diffusion bench).
MLXE_CLONES void geglu_rows(const float* x, float* y, int64_t rows, int64_t f) {
  for (int64_t r = 0; r < rows; r++) {
    const float* value = x + r * 2 * f;
    const float* gate = value + f;
    float* out = y + r * f;
#pragma omp simd
    for (int64_t i = 0; i < f; i++) {
      const float g = gate[i];
      out[i] = value[i] * (0.5f * g * (1.0f + erf_approx(g * 0.70710678118654752f)));
    }
  }
}

class GegluKernel : public mx::UnaryPrimitive {
 public:
  explicit GegluKernel(mx::Stream s) : mx::UnaryPrimitive(s) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    check_input(inputs[0], name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(inputs[0]);
    enc.set_output_array(out);
    enc.dispatch([in = mx::array::unsafe_weak_copy(inputs[0]), out = mx::array::unsafe_weak_copy(out)]() mutable {
      const int64_t f = out.shape(-1);
      if (out.size() == 0 || f == 0) return;
      const int64_t rows = static_cast<int64_t>(out.size()) / f;
      const float* x = in.data<float>();
      float* y = out.data<float>();
      parallel(rows, 3 * f, [&](int64_t lo, int64_t hi) { geglu_rows(x + lo * 2 * f, y + lo * f, hi - lo, f); });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeGeglu is a CPU kernel");
  }
  const char* name() const override { return "MlxeGeglu"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return dynamic_cast<const GegluKernel*>(&other) != nullptr;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() /= 2;
    return {shape};
  }
};

// ---- attention

// One (batch, head): softmax(q kᵀ·scale) v for q rows of (L, H·D) and k, v
// rows of (S, H·D). Keys are transposed into `kt` (tiles of 16 keys, each
// D × 16) and values copied into `vh` (S × Dpad) once; then QB queries at a time: their scores
// against all keys (QB × Spad, a few KiB: in L1/L2, never the L × S matrix),
// exp, and P·V, normalised at the end. QB = 8 accumulators per loop hide the
// FMA latency (4 left the units half idle); the row maxima are taken from
// the score registers, and padded keys score -inf so their exp is 0.
constexpr int64_t LANES = 16, QB = 8;

// The keys transposed into kt, the values into vh (S × Dpad), zero-padded:
// the layout every attend_head variant reads. kt holds Spad / 16 tiles, the
// one of keys [j0, j0 + 16) at kt + j0·D, D rows of 16: a step over 16 keys
// reads D·64 contiguous bytes (with kt as D rows of Spad, its D lines were
// Spad·4 bytes apart, at 1024 keys all on one L1 set).
inline void stage_keys_values(const float* k, const float* v, int64_t sl, int64_t kstride, int64_t d, int64_t spad,
                              int64_t dpad, float* kt, float* vh) {
  for (int64_t j0 = 0; j0 < spad; j0 += LANES) {
    float* tile = kt + j0 * d;
    for (int64_t c = 0; c < d; c++) {
      for (int64_t jj = 0; jj < LANES; jj++) tile[c * LANES + jj] = j0 + jj < sl ? k[(j0 + jj) * kstride + c] : 0.0f;
    }
  }
  for (int64_t j = 0; j < sl; j++) {
    std::memcpy(vh + j * dpad, v + j * kstride, sizeof(float) * d);
    for (int64_t c = d; c < dpad; c++) vh[j * dpad + c] = 0.0f;
  }
}

MLXE_CLONES void attend_head(const float* q, const float* k, const float* v, float* out, int64_t l, int64_t sl,
                             int64_t qstride, int64_t kstride, int64_t d, float scale, float* kt, float* vh,
                             float* probs, float* qb_buf) {
  const int64_t spad = (sl + LANES - 1) / LANES * LANES;
  const int64_t dpad = (d + 7) / 8 * 8;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  stage_keys_values(k, v, sl, kstride, d, spad, dpad, kt, vh);
  for (int64_t i0 = 0; i0 < l; i0 += QB) {
    const int64_t qb = std::min(QB, l - i0);
    for (int64_t qi = 0; qi < QB; qi++) {
      for (int64_t c = 0; c < d; c++) qb_buf[qi * d + c] = qi < qb ? q[(i0 + qi) * qstride + c] * scale : 0.0f;
    }
    float mx[QB][LANES];
    for (int64_t qi = 0; qi < QB; qi++) std::fill(mx[qi], mx[qi] + LANES, neg_inf);
    for (int64_t j0 = 0; j0 < spad; j0 += LANES) {
      float acc[QB][LANES] = {};
      for (int64_t c = 0; c < d; c++) {
        const float* kv = kt + j0 * d + c * LANES;
        for (int64_t qi = 0; qi < QB; qi++) {
          const float qv = qb_buf[qi * d + c];
#pragma omp simd
          for (int64_t jj = 0; jj < LANES; jj++) acc[qi][jj] += qv * kv[jj];
        }
      }
      if (j0 + LANES > sl) {
        for (int64_t qi = 0; qi < QB; qi++) {
          for (int64_t jj = sl - j0; jj < LANES; jj++) acc[qi][jj] = neg_inf;
        }
      }
      for (int64_t qi = 0; qi < QB; qi++) {
#pragma omp simd
        for (int64_t jj = 0; jj < LANES; jj++) {
          probs[qi * spad + j0 + jj] = acc[qi][jj];
          mx[qi][jj] = mx[qi][jj] > acc[qi][jj] ? mx[qi][jj] : acc[qi][jj];
        }
      }
    }
    float inv[QB];
    for (int64_t qi = 0; qi < QB; qi++) {
      float m = neg_inf;
      for (int64_t jj = 0; jj < LANES; jj++) m = std::max(m, mx[qi][jj]);
      float* p = probs + qi * spad;
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < spad; j++) {
        p[j] = exp_approx(p[j] - m);
        sum += p[j];
      }
      inv[qi] = 1.0f / sum;
    }
    // P·V in blocks of 16 features, then one of 8 (vh is zero-padded to 8).
    int64_t c0 = 0;
    for (; c0 + LANES <= dpad; c0 += LANES) {
      float acc[QB][LANES] = {};
      for (int64_t j = 0; j < sl; j++) {
        const float* vr = vh + j * dpad + c0;
        for (int64_t qi = 0; qi < QB; qi++) {
          const float pv = probs[qi * spad + j];
#pragma omp simd
          for (int64_t cc = 0; cc < LANES; cc++) acc[qi][cc] += pv * vr[cc];
        }
      }
      for (int64_t qi = 0; qi < qb; qi++) {
        for (int64_t cc = 0; cc < LANES && c0 + cc < d; cc++) out[(i0 + qi) * qstride + c0 + cc] = acc[qi][cc] * inv[qi];
      }
    }
    for (; c0 < dpad; c0 += 8) {
      float acc[QB][8] = {};
      for (int64_t j = 0; j < sl; j++) {
        const float* vr = vh + j * dpad + c0;
        for (int64_t qi = 0; qi < QB; qi++) {
          const float pv = probs[qi * spad + j];
#pragma omp simd
          for (int64_t cc = 0; cc < 8; cc++) acc[qi][cc] += pv * vr[cc];
        }
      }
      for (int64_t qi = 0; qi < qb; qi++) {
        for (int64_t cc = 0; cc < 8 && c0 + cc < d; cc++) out[(i0 + qi) * qstride + c0 + cc] = acc[qi][cc] * inv[qi];
      }
    }
  }
}

#ifdef MLXE_AVX512_KERNELS
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
// GCC 12 warns inside its own headers (an "uninitialised" _mm512_undefined_ps
// in _mm512_max_ps and the reductions) once these are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// exp(x) = 2^n·e^r as exp_approx (same reduction and polynomial, 0 below
// -87 and for -inf) with AVX-512's rounding and scalef: 16 instructions
// where the portable loop needs ~21 (at head size 16, attention spent as long
// in exp as in both products). Lanes below -87 are zeroed rather than left
// to scalef's denormals: each denormal result costs a microcode assist, which
// made 77-key cross-attention (3 padded keys a row) twice as slow.
inline __m512 exp512(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

// Lane sum and lane max (GCC 12's _mm512_reduce_* warn about an
// uninitialised value in its own header).
inline float lane_sum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0.0f;
  for (float x : t) s += x;
  return s;
}
inline float lane_max(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float m = t[0];
  for (float x : t) m = std::max(m, x);
  return m;
}

// attend_head with intrinsics: scores for 32 keys × 8 queries a step (16
// accumulators: two key vectors per 8 query broadcasts), the fast exp, and
// P·V over two keys a step into 16 accumulators (8 chains of FMAs left the
// units waiting on latency at head size 16). Same buffers and layout.
void attend_head_avx512(const float* q, const float* k, const float* v, float* out, int64_t l, int64_t sl,
                        int64_t qstride, int64_t kstride, int64_t d, float scale, float* kt, float* vh, float* probs,
                        float* qb_buf) {
  const int64_t spad = (sl + LANES - 1) / LANES * LANES;
  const int64_t dpad = (d + 7) / 8 * 8;
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  stage_keys_values(k, v, sl, kstride, d, spad, dpad, kt, vh);
  // Lanes of the 16-key block at j0 that hold keys (the rest score -inf).
  auto key_mask = [&](int64_t j0) -> __mmask16 {
    const int64_t n = std::clamp<int64_t>(sl - j0, 0, 16);
    return static_cast<__mmask16>((1u << n) - 1);
  };
  for (int64_t i0 = 0; i0 < l; i0 += QB) {
    const int64_t qb = std::min(QB, l - i0);
    for (int64_t qi = 0; qi < QB; qi++) {
      for (int64_t c = 0; c < d; c++) qb_buf[qi * d + c] = qi < qb ? q[(i0 + qi) * qstride + c] * scale : 0.0f;
    }
    __m512 mx[QB];
#pragma GCC unroll 8
    for (int64_t qi = 0; qi < QB; qi++) mx[qi] = neg_inf;
    int64_t j0 = 0;
    for (; j0 + 2 * LANES <= spad; j0 += 2 * LANES) {
      __m512 a0[QB], a1[QB];
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) a0[qi] = a1[qi] = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; c++) {
        const __m512 k0 = _mm512_loadu_ps(kt + j0 * d + c * LANES);
        const __m512 k1 = _mm512_loadu_ps(kt + (j0 + LANES) * d + c * LANES);
#pragma GCC unroll 8
        for (int64_t qi = 0; qi < QB; qi++) {
          const __m512 qv = _mm512_set1_ps(qb_buf[qi * d + c]);
          a0[qi] = _mm512_fmadd_ps(qv, k0, a0[qi]);
          a1[qi] = _mm512_fmadd_ps(qv, k1, a1[qi]);
        }
      }
      const __mmask16 m0 = key_mask(j0), m1 = key_mask(j0 + LANES);
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) {
        a0[qi] = _mm512_mask_mov_ps(neg_inf, m0, a0[qi]);
        a1[qi] = _mm512_mask_mov_ps(neg_inf, m1, a1[qi]);
        _mm512_storeu_ps(probs + qi * spad + j0, a0[qi]);
        _mm512_storeu_ps(probs + qi * spad + j0 + LANES, a1[qi]);
        mx[qi] = _mm512_max_ps(mx[qi], _mm512_max_ps(a0[qi], a1[qi]));
      }
    }
    if (j0 < spad) {
      __m512 a0[QB];
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) a0[qi] = _mm512_setzero_ps();
      for (int64_t c = 0; c < d; c++) {
        const __m512 k0 = _mm512_loadu_ps(kt + j0 * d + c * LANES);
#pragma GCC unroll 8
        for (int64_t qi = 0; qi < QB; qi++) a0[qi] = _mm512_fmadd_ps(_mm512_set1_ps(qb_buf[qi * d + c]), k0, a0[qi]);
      }
      const __mmask16 m0 = key_mask(j0);
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) {
        a0[qi] = _mm512_mask_mov_ps(neg_inf, m0, a0[qi]);
        _mm512_storeu_ps(probs + qi * spad + j0, a0[qi]);
        mx[qi] = _mm512_max_ps(mx[qi], a0[qi]);
      }
    }
    // exp over all 8 queries a key block: 8 independent chains (one query's
    // few blocks at a time left the units waiting on exp's latency).
    __m512 mv[QB], sum[QB];
#pragma GCC unroll 8
    for (int64_t qi = 0; qi < QB; qi++) {
      mv[qi] = _mm512_set1_ps(lane_max(mx[qi]));
      sum[qi] = _mm512_setzero_ps();
    }
    for (int64_t j = 0; j < spad; j += LANES) {
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) {
        float* p = probs + qi * spad + j;
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p), mv[qi]));
        _mm512_storeu_ps(p, e);
        sum[qi] = _mm512_add_ps(sum[qi], e);
      }
    }
    float inv[QB];
#pragma GCC unroll 8
    for (int64_t qi = 0; qi < QB; qi++) inv[qi] = 1.0f / lane_sum(sum[qi]);
    for (int64_t c0 = 0; c0 < d; c0 += LANES) {
      const __mmask16 cm = static_cast<__mmask16>(d - c0 >= LANES ? 0xffffu : (1u << (d - c0)) - 1);
      __m512 a0[QB], a1[QB];
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) a0[qi] = a1[qi] = _mm512_setzero_ps();
      int64_t j = 0;
      for (; j + 2 <= sl; j += 2) {
        const __m512 v0 = _mm512_maskz_loadu_ps(cm, vh + j * dpad + c0);
        const __m512 v1 = _mm512_maskz_loadu_ps(cm, vh + (j + 1) * dpad + c0);
#pragma GCC unroll 8
        for (int64_t qi = 0; qi < QB; qi++) {
          a0[qi] = _mm512_fmadd_ps(_mm512_set1_ps(probs[qi * spad + j]), v0, a0[qi]);
          a1[qi] = _mm512_fmadd_ps(_mm512_set1_ps(probs[qi * spad + j + 1]), v1, a1[qi]);
        }
      }
      if (j < sl) {
        const __m512 v0 = _mm512_maskz_loadu_ps(cm, vh + j * dpad + c0);
#pragma GCC unroll 8
        for (int64_t qi = 0; qi < QB; qi++) a0[qi] = _mm512_fmadd_ps(_mm512_set1_ps(probs[qi * spad + j]), v0, a0[qi]);
      }
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < qb; qi++) {
        _mm512_mask_storeu_ps(out + (i0 + qi) * qstride + c0, cm,
                              _mm512_mul_ps(_mm512_add_ps(a0[qi], a1[qi]), _mm512_set1_ps(inv[qi])));
      }
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// exp512 for AVX2: the same reduction and polynomial, 2^n built in the
// exponent bits (no scalef), lanes below -87 zeroed.
inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), live);
}

// Lanes [0, n) of 8 set (n clamped to 0..8), as a float mask.
inline __m256 first_lanes(int64_t n) {
  const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(n, 0, 8))), lane));
}

// attend_head with AVX2 intrinsics (the portable loops' clone stayed mostly
// scalar, a third of the CPU diffusion bench on a Zen 3): scores for 16 keys
// × 4 queries a step, exp256, and P·V for 16 features × 4 queries a key (8
// accumulator chains cover the FMA latency; two vectors per 4 broadcasts
// where 8 × 8 took one per 8, which left the loads the bottleneck). Same
// buffers and layout.
void attend_head_avx2(const float* q, const float* k, const float* v, float* out, int64_t l, int64_t sl,
                      int64_t qstride, int64_t kstride, int64_t d, float scale, float* kt, float* vh, float* probs,
                      float* qb_buf) {
  const int64_t spad = (sl + LANES - 1) / LANES * LANES;
  const int64_t dpad = (d + 7) / 8 * 8;
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  stage_keys_values(k, v, sl, kstride, d, spad, dpad, kt, vh);
  for (int64_t i0 = 0; i0 < l; i0 += QB) {
    const int64_t qb = std::min(QB, l - i0);
    for (int64_t qi = 0; qi < QB; qi++) {
      for (int64_t c = 0; c < d; c++) qb_buf[qi * d + c] = qi < qb ? q[(i0 + qi) * qstride + c] * scale : 0.0f;
    }
    constexpr int64_t QH = QB / 2;  // queries per pass
    __m256 mx[QB];
#pragma GCC unroll 8
    for (int64_t qi = 0; qi < QB; qi++) mx[qi] = neg_inf;
    // A key tile (spad is a multiple of 16) for both halves of the queries,
    // so the second reads it from L1.
    for (int64_t j0 = 0; j0 < spad; j0 += 16) {
      const float* tile = kt + j0 * d;
      for (int64_t h0 = 0; h0 < QB; h0 += QH) {
        __m256 a0[QH], a1[QH];
#pragma GCC unroll 4
        for (int64_t qi = 0; qi < QH; qi++) a0[qi] = a1[qi] = _mm256_setzero_ps();
        for (int64_t c = 0; c < d; c++) {
          const __m256 k0 = _mm256_loadu_ps(tile + c * 16), k1 = _mm256_loadu_ps(tile + c * 16 + 8);
#pragma GCC unroll 4
          for (int64_t qi = 0; qi < QH; qi++) {
            const __m256 qv = _mm256_broadcast_ss(qb_buf + (h0 + qi) * d + c);
            a0[qi] = _mm256_fmadd_ps(qv, k0, a0[qi]);
            a1[qi] = _mm256_fmadd_ps(qv, k1, a1[qi]);
          }
        }
        const __m256 keys0 = first_lanes(sl - j0), keys1 = first_lanes(sl - j0 - 8);
#pragma GCC unroll 4
        for (int64_t qi = 0; qi < QH; qi++) {
          a0[qi] = _mm256_blendv_ps(neg_inf, a0[qi], keys0);
          a1[qi] = _mm256_blendv_ps(neg_inf, a1[qi], keys1);
          _mm256_storeu_ps(probs + (h0 + qi) * spad + j0, a0[qi]);
          _mm256_storeu_ps(probs + (h0 + qi) * spad + j0 + 8, a1[qi]);
          mx[h0 + qi] = _mm256_max_ps(mx[h0 + qi], _mm256_max_ps(a0[qi], a1[qi]));
        }
      }
    }
    float inv[QB];
    for (int64_t qi = 0; qi < QB; qi++) {
      alignas(32) float t[8];
      _mm256_store_ps(t, mx[qi]);
      float m = t[0];
      for (float x : t) m = std::max(m, x);
      const __m256 mv = _mm256_set1_ps(m);
      __m256 sum = _mm256_setzero_ps();
      float* p = probs + qi * spad;
      for (int64_t j = 0; j < spad; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p + j), mv));
        _mm256_storeu_ps(p + j, e);
        sum = _mm256_add_ps(sum, e);
      }
      _mm256_store_ps(t, sum);
      float total = 0.0f;
      for (float x : t) total += x;
      inv[qi] = 1.0f / total;
    }
    int64_t c0 = 0;
    for (; c0 + 16 <= dpad; c0 += 16) {
      for (int64_t h0 = 0; h0 < QB; h0 += QH) {
        __m256 a0[QH], a1[QH];
#pragma GCC unroll 4
        for (int64_t qi = 0; qi < QH; qi++) a0[qi] = a1[qi] = _mm256_setzero_ps();
        for (int64_t j = 0; j < sl; j++) {
          const __m256 v0 = _mm256_loadu_ps(vh + j * dpad + c0), v1 = _mm256_loadu_ps(vh + j * dpad + c0 + 8);
#pragma GCC unroll 4
          for (int64_t qi = 0; qi < QH; qi++) {
            const __m256 pv = _mm256_broadcast_ss(probs + (h0 + qi) * spad + j);
            a0[qi] = _mm256_fmadd_ps(pv, v0, a0[qi]);
            a1[qi] = _mm256_fmadd_ps(pv, v1, a1[qi]);
          }
        }
        const __m256i cols0 = _mm256_castps_si256(first_lanes(d - c0));
        const __m256i cols1 = _mm256_castps_si256(first_lanes(d - c0 - 8));
        for (int64_t qi = 0; qi < QH && h0 + qi < qb; qi++) {
          const __m256 s = _mm256_set1_ps(inv[h0 + qi]);
          float* o = out + (i0 + h0 + qi) * qstride + c0;
          _mm256_maskstore_ps(o, cols0, _mm256_mul_ps(a0[qi], s));
          _mm256_maskstore_ps(o + 8, cols1, _mm256_mul_ps(a1[qi], s));
        }
      }
    }
    if (c0 < dpad) {  // the last 8 features (dpad is a multiple of 8)
      __m256 a[QB];
#pragma GCC unroll 8
      for (int64_t qi = 0; qi < QB; qi++) a[qi] = _mm256_setzero_ps();
      for (int64_t j = 0; j < sl; j++) {
        const __m256 v0 = _mm256_loadu_ps(vh + j * dpad + c0);
#pragma GCC unroll 8
        for (int64_t qi = 0; qi < QB; qi++) a[qi] = _mm256_fmadd_ps(_mm256_broadcast_ss(probs + qi * spad + j), v0, a[qi]);
      }
      const __m256i cols = _mm256_castps_si256(first_lanes(d - c0));
      for (int64_t qi = 0; qi < qb; qi++) {
        _mm256_maskstore_ps(out + (i0 + qi) * qstride + c0, cols, _mm256_mul_ps(a[qi], _mm256_set1_ps(inv[qi])));
      }
    }
  }
}

#pragma GCC pop_options
#endif

class AttentionKernel : public mx::UnaryPrimitive {
 public:
  AttentionKernel(mx::Stream st, int heads, float scale) : mx::UnaryPrimitive(st), heads_(heads), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    enc.dispatch([q = mx::array::unsafe_weak_copy(inputs[0]), k = mx::array::unsafe_weak_copy(inputs[1]),
                  v = mx::array::unsafe_weak_copy(inputs[2]), out = mx::array::unsafe_weak_copy(out), heads = heads_,
                  scale = scale_]() mutable {
      const int64_t b = q.shape(0), l = q.shape(1), width = q.shape(2), sl = k.shape(1), d = width / heads;
      if (out.size() == 0) return;
      if (sl == 0) {  // no keys: an empty weighted sum
        std::fill(out.data<float>(), out.data<float>() + out.size(), 0.0f);
        return;
      }
      const float* qp = q.data<float>();
      const float* kp = k.data<float>();
      const float* vp = v.data<float>();
      float* y = out.data<float>();
      const int64_t spad = (sl + LANES - 1) / LANES * LANES, dpad = (d + 7) / 8 * 8;
      // Work items are (batch, head, run of queries): runs only when there are
      // too few heads to go round (the VAE's single head ran on one core);
      // each run transposes its head's keys again.
      const int64_t threads = Pool::get().size();
      const int64_t runs = std::min((l + QB - 1) / QB, (4 * threads + b * heads - 1) / (b * heads));
      const int64_t run_len = ((l + runs - 1) / runs + QB - 1) / QB * QB;
      parallel(b * heads * runs, std::max<int64_t>(1, run_len * sl * d / 8), [&](int64_t lo, int64_t hi) {
        // probs 64-byte aligned: its rows are stored as whole vectors and read back as scalars.
        std::vector<float> kt(d * spad), vh(sl * dpad), probs_buf(QB * spad + 16), qbuf(QB * d);
        float* probs = probs_buf.data() + (16 - reinterpret_cast<uintptr_t>(probs_buf.data()) / 4 % 16) % 16;
        for (int64_t it = lo; it < hi; it++) {
          const int64_t bi = it / (heads * runs), h = it / runs % heads, i0 = it % runs * run_len;
          if (i0 >= l) continue;
          auto* head = &attend_head;
#ifdef MLXE_AVX512_KERNELS
          if (avx512_on()) {
            head = &attend_head_avx512;
          } else if (direct_on()) {
            head = &attend_head_avx2;
          }
#endif
          head(qp + (bi * l + i0) * width + h * d, kp + bi * sl * width + h * d, vp + bi * sl * width + h * d,
               y + (bi * l + i0) * width + h * d, std::min(run_len, l - i0), sl, width, width, d, scale, kt.data(),
               vh.data(), probs, qbuf.data());
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeAttention is a CPU kernel");
  }
  const char* name() const override { return "MlxeAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const AttentionKernel*>(&other);
    return o && o->heads_ == heads_ && o->scale_ == scale_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  int heads_;
  float scale_;
};

}  // namespace

int image_kernel_level(int force) {
  if (force >= -1) forced_level.store(force, std::memory_order_relaxed);
  return level();
}

int conv_winograd(int force) {
  if (force == -1 || force == 0 || force == 2 || force == 4) forced_winograd.store(force, std::memory_order_relaxed);
  return winograd_tile();
}

int conv_weight_winograd(const mx::array& w, int sh, int sw) {
  const bool fits = w.ndim() == 4 && w.shape(1) == 3 && w.shape(2) == 3 && sh == 1 && sw == 1 && direct_on() &&
                    winograd_wins(w.shape(3), w.shape(0));
  return fits ? winograd_tile() : 0;
}

bool gemm_applies(const mx::array& x, const mx::array& w, mx::StreamOrDevice s) {
  return applies(x, s) && w.dtype() == mx::float32 && x.ndim() >= 1 && w.ndim() == 2 && x.shape(-1) == w.shape(1) &&
         sgemm() != nullptr;
}

mx::array gemm(const mx::array& x, const mx::array& w, const std::optional<mx::array>& bias, mx::StreamOrDevice s,
               bool image_rows) {
  if (!gemm_applies(x, w, s)) throw std::invalid_argument("gemm kernel: float32 x (…, K), w (N, K) on a CPU stream");
  auto stream = mx::to_stream(s);
  auto shape = x.shape();
  shape.back() = w.shape(0);
  std::vector<mx::array> inputs{mx::contiguous(x, false, stream), mx::contiguous(w, false, stream)};
  if (bias) {
    if (bias->ndim() != 1 || bias->shape(0) != w.shape(0)) {
      throw std::invalid_argument("gemm: the bias must have shape (" + std::to_string(w.shape(0)) + ",)");
    }
    inputs.push_back(mx::contiguous(mx::astype(*bias, mx::float32, stream), false, stream));
  }
  return mx::array(shape, mx::float32, std::make_shared<GemmKernel>(stream, bias.has_value(), image_rows),
                   std::move(inputs));
}

bool conv2d_applies(const mx::array& x, const mx::array& w, int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                    mx::StreamOrDevice s) {
  return applies(x, s) && w.dtype() == mx::float32 && x.ndim() == 4 && w.ndim() == 4 && x.shape(3) == w.shape(3) &&
         groups == 1 && dh == 1 && dw == 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 &&
         x.shape(1) + 2 * ph >= w.shape(1) && x.shape(2) + 2 * pw >= w.shape(2) && sgemm() != nullptr;
}

namespace {

// The conv primitive over x and w: (O, KH, KW, I) as `ws`, or packed.
mx::array conv2d_of(const mx::array& x, const mx::array& w, std::array<int, 4> ws, bool packed, int winograd,
                    const std::optional<mx::array>& bias, int sh, int sw, int ph, int pw, mx::Stream stream) {
  ConvShape c{x.shape(0), x.shape(1), x.shape(2), x.shape(3), ws[0], ws[1], ws[2], sh, sw, ph, pw, 0, 0};
  c.oh = (c.h + 2 * ph - c.kh) / sh + 1;
  c.ow = (c.w + 2 * pw - c.kw) / sw + 1;
  std::vector<mx::array> inputs{mx::contiguous(x, false, stream), mx::contiguous(w, false, stream)};
  if (bias) {
    if (bias->ndim() != 1 || bias->shape(0) != c.cout) {
      throw std::invalid_argument("conv2d: the bias must have shape (" + std::to_string(c.cout) + ",)");
    }
    inputs.push_back(mx::contiguous(mx::astype(*bias, mx::float32, stream), false, stream));
  }
  return mx::array({x.shape(0), static_cast<int>(c.oh), static_cast<int>(c.ow), ws[0]}, mx::float32,
                   std::make_shared<Conv2dKernel>(stream, c, bias.has_value(), packed, winograd), std::move(inputs));
}

}  // namespace

mx::array conv2d(const mx::array& x, const mx::array& w, const std::optional<mx::array>& bias, int sh, int sw, int ph,
                 int pw, mx::StreamOrDevice s) {
  if (!conv2d_applies(x, w, sh, sw, ph, pw, 1, 1, 1, s)) {
    throw std::invalid_argument("conv2d kernel: float32 NHWC input and (O, KH, KW, I) weight on a CPU stream");
  }
  return conv2d_of(x, w, {w.shape(0), w.shape(1), w.shape(2), w.shape(3)}, false, 0, bias, sh, sw, ph, pw,
                   mx::to_stream(s));
}

bool conv_weight_packs(const mx::array& w, mx::StreamOrDevice s) {
  return applies(w, s) && w.ndim() == 4 && w.size() > 0 && direct_on();
}

bool linear_weight_packs(const mx::array& w, mx::StreamOrDevice s) {
  return applies(w, s) && w.ndim() == 2 && w.size() > 0 && direct_on() && direct_linear_wins(w.shape(0), w.shape(1));
}

mx::array pack_conv_weight(const mx::array& w, int sh, int sw, mx::StreamOrDevice s) {
  if (!conv_weight_packs(w, s)) {
    throw std::invalid_argument(
        "pack_conv_weight: a float32 (O, KH, KW, I) weight on a CPU stream, where the direct conv kernel runs");
  }
  auto stream = mx::to_stream(s);
  const int64_t cout = w.shape(0), k = w.size() / w.shape(0);
  const int winograd = conv_weight_winograd(w, sh, sw);
  return mx::array({static_cast<int>(winograd != 0 ? winograd_floats(winograd, cout, k / 9) : packed_floats(cout, k))},
                   mx::float32,
                   std::make_shared<PackWeightKernel>(stream, cout, k, winograd), {mx::contiguous(w, false, stream)});
}

mx::array conv2d_packed(const mx::array& x, const mx::array& packed, std::array<int, 4> ws,
                        const std::optional<mx::array>& bias, int sh, int sw, int ph, int pw, mx::StreamOrDevice s) {
  // Which layout pack_conv_weight chose shows in the length ((m + 2)² points
  // of cin rows, or kh·kw·cin rows); the Winograd ones serve stride 1 only.
  int winograd = 0;
  for (int tile : {2, 4}) {
    if (ws[1] == 3 && ws[2] == 3 && packed.size() == static_cast<size_t>(winograd_floats(tile, ws[0], ws[3]))) {
      winograd = tile;
    }
  }
  const bool direct = packed.size() == static_cast<size_t>(packed_floats(ws[0], int64_t{ws[1]} * ws[2] * ws[3]));
  const bool ok = applies(x, s) && packed.dtype() == mx::float32 && x.ndim() == 4 && x.shape(3) == ws[3] &&
                  packed.ndim() == 1 && (direct || (winograd != 0 && sh == 1 && sw == 1)) && sh >= 1 && sw >= 1 &&
                  ph >= 0 && pw >= 0 && x.shape(1) + 2 * ph >= ws[1] && x.shape(2) + 2 * pw >= ws[2];
  if (!ok) {
    throw std::invalid_argument("conv2d_packed: float32 NHWC input on a CPU stream and the weight pack_conv_weight made of (" +
                                std::to_string(ws[0]) + ", " + std::to_string(ws[1]) + ", " + std::to_string(ws[2]) +
                                ", " + std::to_string(ws[3]) + ")");
  }
  return conv2d_of(x, packed, ws, true, winograd, bias, sh, sw, ph, pw, mx::to_stream(s));
}

mx::array group_norm(const mx::array& x, int groups, const mx::array& weight, const mx::array& bias, float eps,
                     bool silu, mx::StreamOrDevice s) {
  auto stream = mx::to_stream(s);
  if (!applies(x, s) || x.ndim() < 2) throw std::invalid_argument("group_norm kernel: float32 on a CPU stream");
  const int c = x.shape(-1);
  if (groups <= 0 || c % groups != 0) throw std::invalid_argument("group_norm: channels must split into the groups");
  for (auto* p : {&weight, &bias}) {
    if (p->ndim() != 1 || p->shape(0) != c) {
      throw std::invalid_argument("group_norm: weight and bias must have shape (" + std::to_string(c) + ",)");
    }
  }
  auto f32 = [&](const mx::array& a) { return mx::contiguous(mx::astype(a, mx::float32, stream), false, stream); };
  return mx::array(x.shape(), mx::float32, std::make_shared<GroupNormKernel>(stream, groups, eps, silu),
                   {mx::contiguous(x, false, stream), f32(weight), f32(bias)});
}

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, int heads, float scale,
                    mx::StreamOrDevice s) {
  auto stream = mx::to_stream(s);
  const bool ok = applies(q, s) && k.dtype() == mx::float32 && v.dtype() == mx::float32 && q.ndim() == 3 &&
                  k.ndim() == 3 && k.shape() == v.shape() && heads > 0 && q.shape(2) == k.shape(2) &&
                  q.shape(0) == k.shape(0) && q.shape(2) % heads == 0;
  if (!ok) throw std::invalid_argument("attention kernel: float32 (B, L, H·D) and (B, S, H·D) on a CPU stream");
  return mx::array(q.shape(), mx::float32, std::make_shared<AttentionKernel>(stream, heads, scale),
                   {mx::contiguous(q, false, stream), mx::contiguous(k, false, stream),
                    mx::contiguous(v, false, stream)});
}

mx::array geglu(const mx::array& x, mx::StreamOrDevice s) {
  if (!applies(x, s) || x.ndim() == 0 || x.shape(-1) % 2 != 0) {
    throw std::invalid_argument("geglu kernel: float32 on a CPU stream, an even last axis");
  }
  auto stream = mx::to_stream(s);
  auto shape = x.shape();
  shape.back() /= 2;
  return mx::array(shape, mx::float32, std::make_shared<GegluKernel>(stream), {mx::contiguous(x, false, stream)});
}

}  // namespace mlxe::kernels
