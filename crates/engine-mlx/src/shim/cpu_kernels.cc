// See cpu_kernels.h. Built at -O3 with -fopenmp-simd (build.rs); on x86-64
// Linux each loop is compiled for AVX-512, AVX2 and baseline and picked at
// load time, so one binary runs everywhere and uses what the CPU has.
#include "cpu_kernels.h"
#include "kernel_common.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <variant>
#include <stdexcept>
#include <thread>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"


namespace mlxe::kernels {
namespace {

MLXE_CLONES void gelu_range(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + erf_approx(v * 0.70710678118654752f));
  }
}

MLXE_CLONES void silu_range(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) {
    const float v = x[i];
    y[i] = v / (1.0f + exp_approx(-v));
  }
}

MLXE_CLONES void softmax_rows(const float* x, float* y, int64_t rows, int64_t len) {
  for (int64_t r = 0; r < rows; r++) {
    const float* in = x + r * len;
    float* out = y + r * len;
    const float m = row_max(in, len);
    if (m == -std::numeric_limits<float>::infinity()) {
      std::fill(out, out + len, 0.0f);
      continue;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < len; i++) {
      const float e = exp_approx(in[i] - m);
      out[i] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int64_t i = 0; i < len; i++) out[i] *= inv;
  }
}

// One row: out = (x + r - mean) / sqrt(var + eps) · w + b; r, w, b optional.
MLXE_CLONES void layer_norm_rows(const float* x, const float* r, const float* w, const float* b, float* y, int64_t rows,
                                 int64_t len, float eps) {
  for (int64_t row = 0; row < rows; row++) {
    const float* in = x + row * len;
    float* out = y + row * len;
    if (r != nullptr) {
      const float* res = r + row * len;
#pragma omp simd
      for (int64_t i = 0; i < len; i++) out[i] = in[i] + res[i];
      in = out;
    }
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < len; i++) sum += in[i];
    const float mean = sum / static_cast<float>(len);
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < len; i++) {
      const float d = in[i] - mean;
      sq += d * d;
    }
    const float inv = 1.0f / std::sqrt(sq / static_cast<float>(len) + eps);
    if (w != nullptr && b != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < len; i++) out[i] = (in[i] - mean) * inv * w[i] + b[i];
    } else if (w != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < len; i++) out[i] = (in[i] - mean) * inv * w[i];
    } else if (b != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < len; i++) out[i] = (in[i] - mean) * inv + b[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; i++) out[i] = (in[i] - mean) * inv;
    }
  }
}

// Attention of one head of one packed sequence of n tokens starting at row
// `off`, as two small matrix products with a softmax between. Blocks of
// QB queries × LANES keys (and QB queries × LANES features for P·V) are
// accumulated in registers; `kt` holds the keys transposed (d × npad,
// zero-padded to a multiple of LANES) so both products read contiguous rows.
constexpr int64_t LANES = 16, QB = 4;

MLXE_CLONES void attend_one(const float* qkv, float* out, int64_t off, int64_t n, int64_t head, int64_t heads,
                            int64_t d, float scale, float* kt, float* probs) {
  const int64_t width = heads * d, stride = 3 * width;
  const int64_t npad = (n + LANES - 1) / LANES * LANES;
  const float* base = qkv + off * stride;
  for (int64_t c = 0; c < d; c++) {
    float* row = kt + c * npad;
    for (int64_t j = 0; j < n; j++) row[j] = base[j * stride + width + head * d + c];
    for (int64_t j = n; j < npad; j++) row[j] = 0.0f;
  }
  for (int64_t i0 = 0; i0 < n; i0 += QB) {
    const int64_t qb = std::min(QB, n - i0);
    float q[QB][256];
    for (int64_t qi = 0; qi < QB; qi++) {
      for (int64_t c = 0; c < d; c++) q[qi][c] = qi < qb ? base[(i0 + qi) * stride + head * d + c] * scale : 0.0f;
    }
    // Scores: probs[qi][j] = q_qi · k_j.
    for (int64_t j0 = 0; j0 < npad; j0 += LANES) {
      float acc[QB][LANES] = {};
      for (int64_t c = 0; c < d; c++) {
        const float* kv = kt + c * npad + j0;
        for (int64_t qi = 0; qi < QB; qi++) {
          const float qv = q[qi][c];
#pragma omp simd
          for (int64_t jj = 0; jj < LANES; jj++) acc[qi][jj] += qv * kv[jj];
        }
      }
      for (int64_t qi = 0; qi < QB; qi++) {
        for (int64_t jj = 0; jj < LANES; jj++) probs[qi * npad + j0 + jj] = acc[qi][jj];
      }
    }
    // Softmax over the n real keys (padding columns become 0).
    for (int64_t qi = 0; qi < qb; qi++) {
      float* p = probs + qi * npad;
      const float m = row_max(p, n);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < n; j++) {
        p[j] = exp_approx(p[j] - m);
        sum += p[j];
      }
      const float inv = 1.0f / sum;
#pragma omp simd
      for (int64_t j = 0; j < n; j++) p[j] *= inv;
      for (int64_t j = n; j < npad; j++) p[j] = 0.0f;
    }
    for (int64_t qi = qb; qi < QB; qi++) std::fill(probs + qi * npad, probs + (qi + 1) * npad, 0.0f);
    // Output: o[qi][c] = Σ_j p[qi][j] · v_j[c], LANES features at a time
    // (rows past qb hold zero probabilities, so they add nothing).
    const float* v0 = base + 2 * width + head * d;
    int64_t c0 = 0;
    for (; c0 + LANES <= d; c0 += LANES) {
      float acc[QB][LANES] = {};
      for (int64_t j = 0; j < n; j++) {
        const float* v = v0 + j * stride + c0;
        for (int64_t qi = 0; qi < QB; qi++) {
          const float pv = probs[qi * npad + j];
#pragma omp simd
          for (int64_t cc = 0; cc < LANES; cc++) acc[qi][cc] += pv * v[cc];
        }
      }
      for (int64_t qi = 0; qi < qb; qi++) {
        float* o = out + (off + i0 + qi) * width + head * d + c0;
        for (int64_t cc = 0; cc < LANES; cc++) o[cc] = acc[qi][cc];
      }
    }
    for (; c0 < d; c0++) {
      for (int64_t qi = 0; qi < qb; qi++) {
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) sum += probs[qi * npad + j] * v0[j * stride + c0];
        out[(off + i0 + qi) * width + head * d + c0] = sum;
      }
    }
  }
}

// y (M, N) = x (M, K) · w (N, K)ᵀ for few rows: each weight row is read
// from memory once and used for all M rows while it sits in L1. (BLAS packs
// the weights into panels first for any M > 1, which at decode sizes costs
// as much as the product.) Each output is one dot product whatever M is, so
// a row computes the same bits alone or in a batch.
// Eight floats: one AVX2 register, half an AVX-512 one, two SSE ones;
// `load8` reads them from any float address in one unaligned load.
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));
__attribute__((always_inline)) inline v8 load8(const float* p) { return *reinterpret_cast<const v8u*>(p); }

// Outputs y[i..i+MI, j..j+4]: four weight rows against MI rows of x, so each
// load of x feeds four products and each load of w feeds MI. Every output
// is summed in the same order whatever MI is.
template <int MI>
__attribute__((always_inline)) inline void skinny_tile(const float* x, const float* w, float* y, int64_t i, int64_t j,
                                                        int64_t n, int64_t k) {
  v8 acc[MI][4] = {};
  const float* wr[4] = {w + j * k, w + (j + 1) * k, w + (j + 2) * k, w + (j + 3) * k};
  int64_t t = 0;
  for (; t + 8 <= k; t += 8) {
    const v8 w0 = load8(wr[0] + t), w1 = load8(wr[1] + t), w2 = load8(wr[2] + t), w3 = load8(wr[3] + t);
    for (int r = 0; r < MI; r++) {
      const v8 xv = load8(x + (i + r) * k + t);
      acc[r][0] += xv * w0;
      acc[r][1] += xv * w1;
      acc[r][2] += xv * w2;
      acc[r][3] += xv * w3;
    }
  }
  for (int r = 0; r < MI; r++) {
    for (int c = 0; c < 4; c++) {
      float s = 0.0f;
      for (int l = 0; l < 8; l++) s += acc[r][c][l];
      for (int64_t u = t; u < k; u++) s += x[(i + r) * k + u] * wr[c][u];
      y[(i + r) * n + j + c] = s;
    }
  }
}

MLXE_CLONES
void skinny_rows(const float* x, const float* w, float* y, int64_t m, int64_t n0, int64_t n1, int64_t n, int64_t k) {
  int64_t j = n0;
  for (; j + 4 <= n1; j += 4) {
    // Two rows of x at a time: 8 accumulators + 4 weight vectors + 1 of x
    // fit AVX2's 16 registers (four rows would spill).
    int64_t i = 0;
    for (; i + 2 <= m; i += 2) skinny_tile<2>(x, w, y, i, j, n, k);
    if (i < m) skinny_tile<1>(x, w, y, i, j, n, k);
  }
  // A last partial group of weight rows (N not a multiple of 4), summed in
  // the same order as the tiles.
  for (; j < n1; j++) {
    const float* wr = w + j * k;
    for (int64_t i = 0; i < m; i++) {
      const float* xr = x + i * k;
      v8 acc = {};
      int64_t t = 0;
      for (; t + 8 <= k; t += 8) {
        acc += load8(xr + t) * load8(wr + t);
      }
      float s = 0.0f;
      for (int l = 0; l < 8; l++) s += acc[l];
      for (int64_t u = t; u < k; u++) s += xr[u] * wr[u];
      y[i * n + j] = s;
    }
  }
}

class SkinnyMatmulKernel : public mx::UnaryPrimitive {
 public:
  explicit SkinnyMatmulKernel(mx::Stream s) : mx::UnaryPrimitive(s) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(inputs[0]);
    enc.set_input_array(inputs[1]);
    enc.set_output_array(out);
    enc.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                  out = mx::array::unsafe_weak_copy(out)]() mutable {
      const int64_t k = w.shape(1), n = w.shape(0);
      const int64_t m = k == 0 ? 0 : static_cast<int64_t>(x.size()) / k;
      const float* xp = x.data<float>();
      const float* wp = w.data<float>();
      float* y = out.data<float>();
      if (k == 0) {
        std::fill(y, y + out.size(), 0.0f);
        return;
      }
      // Blocks of 64 weight rows: enough work per block, many blocks to share.
      constexpr int64_t rows = 64;
      parallel((n + rows - 1) / rows, rows * k, [&](int64_t lo, int64_t hi) {
        skinny_rows(xp, wp, y, m, lo * rows, std::min(n, hi * rows), n, k);
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeSkinnyMatmul is a CPU kernel");
  }
  const char* name() const override { return "MlxeSkinnyMatmul"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return dynamic_cast<const SkinnyMatmulKernel*>(&other) != nullptr;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }
};

enum class Kind { Softmax, Gelu, Silu };

class VectorKernel : public mx::UnaryPrimitive {
 public:
  VectorKernel(mx::Stream s, Kind kind) : mx::UnaryPrimitive(s), kind_(kind) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const auto& in = inputs[0];
    if (in.dtype() != mx::float32 || !in.flags().row_contiguous) {
      throw std::runtime_error(std::string(name()) + ": expects a row-contiguous float32 input");
    }
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(in);
    enc.set_output_array(out);
    enc.dispatch([in = mx::array::unsafe_weak_copy(in), out = mx::array::unsafe_weak_copy(out), kind = kind_]() mutable {
      const float* x = in.data<float>();
      float* y = out.data<float>();
      const int64_t size = static_cast<int64_t>(in.size());
      if (size == 0) return;
      if (kind == Kind::Softmax) {
        const int64_t len = in.ndim() == 0 ? 1 : in.shape(-1);
        parallel(size / len, len, [&](int64_t lo, int64_t hi) { softmax_rows(x + lo * len, y + lo * len, hi - lo, len); });
      } else {
        constexpr int64_t block = 4096;
        parallel((size + block - 1) / block, block, [&](int64_t lo, int64_t hi) {
          const int64_t a = lo * block, b = std::min(size, hi * block);
          kind == Kind::Gelu ? gelu_range(x + a, y + a, b - a) : silu_range(x + a, y + a, b - a);
        });
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string(name()) + " is a CPU kernel");
  }

  const char* name() const override {
    switch (kind_) {
      case Kind::Softmax: return "MlxeSoftmax";
      case Kind::Gelu: return "MlxeGelu";
      case Kind::Silu: return "MlxeSilu";
    }
    return "MlxeKernel";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const VectorKernel*>(&other);
    return o != nullptr && o->kind_ == kind_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  Kind kind_;
};

class LayerNormKernel : public mx::UnaryPrimitive {
 public:
  // Inputs: x, then residual, weight, bias for each flag set.
  LayerNormKernel(mx::Stream s, bool res, bool w, bool b, float eps)
      : mx::UnaryPrimitive(s), res_(res), w_(w), b_(b), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& a : inputs) check_input(a, name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    std::vector<mx::array> ins;
    for (auto& a : inputs) ins.push_back(mx::array::unsafe_weak_copy(a));
    enc.dispatch([ins = std::move(ins), out = mx::array::unsafe_weak_copy(out), res = res_, w = w_, b = b_,
                  eps = eps_]() mutable {
      size_t k = 1;
      const float* x = ins[0].data<float>();
      const float* r = res ? ins[k++].data<float>() : nullptr;
      const float* wp = w ? ins[k++].data<float>() : nullptr;
      const float* bp = b ? ins[k++].data<float>() : nullptr;
      float* y = out.data<float>();
      const int64_t len = ins[0].shape(-1);
      if (len == 0) return;
      const int64_t rows = static_cast<int64_t>(ins[0].size()) / len;
      parallel(rows, len, [&](int64_t lo, int64_t hi) {
        layer_norm_rows(x + lo * len, r ? r + lo * len : nullptr, wp, bp, y + lo * len, hi - lo, len, eps);
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeLayerNorm is a CPU kernel");
  }
  const char* name() const override { return "MlxeLayerNorm"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const LayerNormKernel*>(&other);
    return o && o->res_ == res_ && o->w_ == w_ && o->b_ == b_ && o->eps_ == eps_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  bool res_, w_, b_;
  float eps_;
};

class PackedAttentionKernel : public mx::UnaryPrimitive {
 public:
  PackedAttentionKernel(mx::Stream s, std::vector<int32_t> lengths, int heads, float scale)
      : mx::UnaryPrimitive(s), lengths_(std::move(lengths)), heads_(heads), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    check_input(inputs[0], name());
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    enc.set_input_array(inputs[0]);
    enc.set_output_array(out);
    enc.dispatch([in = mx::array::unsafe_weak_copy(inputs[0]), out = mx::array::unsafe_weak_copy(out),
                  lengths = lengths_, heads = heads_, scale = scale_]() mutable {
      const int64_t width = in.shape(1) / 3, d = width / heads;
      std::vector<int64_t> offsets(lengths.size());
      int64_t total = 0, longest = 0;
      for (size_t i = 0; i < lengths.size(); i++) {
        offsets[i] = total;
        total += lengths[i];
        longest = std::max<int64_t>(longest, lengths[i]);
      }
      const float* x = in.data<float>();
      float* y = out.data<float>();
      const int64_t items = static_cast<int64_t>(lengths.size()) * heads;
      const int64_t avg = items == 0 ? 0 : total * heads * d / items;
      parallel(items, std::max<int64_t>(1, avg * 4), [&](int64_t lo, int64_t hi) {
        const int64_t npad = (longest + LANES - 1) / LANES * LANES;
        std::vector<float> kt(npad * d), p(QB * npad);
        for (int64_t it = lo; it < hi; it++) {
          const int64_t seq = it / heads, head = it % heads;
          attend_one(x, y, offsets[seq], lengths[seq], head, heads, d, scale, kt.data(), p.data());
        }
      });
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxePackedAttention is a CPU kernel");
  }
  const char* name() const override { return "MlxePackedAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const PackedAttentionKernel*>(&other);
    return o && o->lengths_ == lengths_ && o->heads_ == heads_ && o->scale_ == scale_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {{inputs[0].shape(0), inputs[0].shape(1) / 3}};
  }

 private:
  std::vector<int32_t> lengths_;
  int heads_;
  float scale_;
};

// Causal attention of queries at the end of a KV cache, one query at a time:
// query i of a call with L queries over T keys sits at slot T − L + i and
// sees slots [min(pad, slot), slot] of its row (left padding hidden; a
// padding query sees itself only). Every query runs the same float
// operations in the same order whatever L, T or the row's padding are
// (sums start at its first visible key), so a sequence gets the same bits
// when its prompt is split into other chunks or decoded beside others.
struct CacheAttention {
  const float *q, *k, *v;
  float* out;
  int64_t heads, kv_heads, l, t, d;
  int64_t qs[4], ks[4], vs[4];  // element strides (B, H, L/T, D)
  const int32_t* pads;          // (B,) or null
  float scale;
};

MLXE_CLONES void attend_cached(const CacheAttention& a, int64_t b, int64_t h, int64_t i0, int64_t i1, float* scores) {
  const int64_t d = a.d, kh = h / (a.heads / a.kv_heads), d8 = d / 8 * 8;
  const float* kbase = a.k + b * a.ks[0] + kh * a.ks[1];
  const float* vbase = a.v + b * a.vs[0] + kh * a.vs[1];
  const int64_t pad = a.pads != nullptr ? a.pads[b] : 0;
  float q[256];
  v8 acc[32];
  for (int64_t i = i0; i < i1; i++) {
    const float* qr = a.q + b * a.qs[0] + h * a.qs[1] + i * a.qs[2];
    for (int64_t c = 0; c < d; c++) q[c] = qr[c * a.qs[3]] * a.scale;
    const int64_t slot = a.t - a.l + i, lo = std::min(pad, slot), n = slot + 1 - lo;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; j++) {
      const float* kr = kbase + (lo + j) * a.ks[2];
      v8 s8 = {};
      for (int64_t c = 0; c < d8; c += 8) s8 += load8(q + c) * load8(kr + c);
      float s = ((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7]));
      for (int64_t c = d8; c < d; c++) s += q[c] * kr[c];
      scores[j] = s;
      m = std::max(m, s);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
      scores[j] = exp_approx(scores[j] - m);
      sum += scores[j];
    }
    for (int64_t c = 0; c < d8; c += 8) acc[c / 8] = v8{};
    float tail[8] = {};
    for (int64_t j = 0; j < n; j++) {
      const float* vr = vbase + (lo + j) * a.vs[2];
      const float p = scores[j];
      for (int64_t c = 0; c < d8; c += 8) acc[c / 8] += p * load8(vr + c);
      for (int64_t c = d8; c < d; c++) tail[c - d8] += p * vr[c];
    }
    const float inv = 1.0f / sum;
    float* o = a.out + ((b * a.heads + h) * a.l + i) * d;
    for (int64_t c = 0; c < d8; c += 8) {
      const v8 r = acc[c / 8] * inv;
      std::memcpy(o + c, &r, sizeof(r));
    }
    for (int64_t c = d8; c < d; c++) o[c] = tail[c - d8] * inv;
  }
}

// RoPE of x (B, H, L, D) read through its strides, written row-major, from
// cos and sin tables (R, L, dims/2) with R = 1 or B: the rotation of MLX's
// composed fallback (its CPU path, ~20 ops a call) in one op, with its
// roundings (x1·cos − x2·sin and x1·sin + x2·cos, each product and sum
// rounded to float32 on its own: this file has no FMA outside its target
// clones). The tables come from MLX's own ops (see rope below), so the bits
// match its composition.
class RopeKernel : public mx::UnaryPrimitive {
 public:
  RopeKernel(mx::Stream s, int dims, bool traditional)
      : mx::UnaryPrimitive(s), dims_(dims), traditional_(traditional) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    enc.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), cs = mx::array::unsafe_weak_copy(inputs[1]),
                  sn = mx::array::unsafe_weak_copy(inputs[2]), out = mx::array::unsafe_weak_copy(out), dims = dims_,
                  traditional = traditional_]() mutable {
      const int64_t nb = x.shape(0), nh = x.shape(1), nl = x.shape(2), nd = x.shape(3), half = dims / 2;
      const int64_t per_row = cs.size() > static_cast<size_t>(nl * half) ? nl * half : 0;
      const float* xp = x.data<float>();
      float* o = out.data<float>();
      for (int64_t b = 0; b < nb; b++) {
        const float* cb = cs.data<float>() + b * per_row;
        const float* sb = sn.data<float>() + b * per_row;
        for (int64_t h = 0; h < nh; h++) {
          for (int64_t l = 0; l < nl; l++) {
            const float* src = xp + b * x.strides(0) + h * x.strides(1) + l * x.strides(2);
            const int64_t sd = x.strides(3);
            float* dst = o + ((b * nh + h) * nl + l) * nd;
            const float* c = cb + l * half;
            const float* sv = sb + l * half;
            for (int64_t i = 0; i < half; i++) {
              const int64_t i1 = traditional ? 2 * i : i, i2 = traditional ? 2 * i + 1 : i + half;
              const float x1 = src[i1 * sd], x2 = src[i2 * sd];
              const float p = x1 * c[i], q = x2 * sv[i], r = x1 * sv[i], t = x2 * c[i];
              dst[i1] = p - q;
              dst[i2] = r + t;
            }
            for (int64_t j = dims; j < nd; j++) dst[j] = src[j * sd];
          }
        }
      }
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeRope is a CPU kernel");
  }
  const char* name() const override { return "MlxeRope"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const RopeKernel*>(&other);
    return o && o->dims_ == dims_ && o->traditional_ == traditional_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  int dims_;
  bool traditional_;
};

class CacheAttentionKernel : public mx::UnaryPrimitive {
 public:
  CacheAttentionKernel(mx::Stream s, float scale, std::vector<int32_t> pads)
      : mx::UnaryPrimitive(s), scale_(scale), pads_(std::move(pads)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    for (auto& x : inputs) {
      if (x.dtype() != mx::float32) throw std::runtime_error("MlxeCacheAttention: float32 inputs");
    }
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& x : inputs) enc.set_input_array(x);
    enc.set_output_array(out);
    enc.dispatch([q = mx::array::unsafe_weak_copy(inputs[0]), k = mx::array::unsafe_weak_copy(inputs[1]),
                  v = mx::array::unsafe_weak_copy(inputs[2]), out = mx::array::unsafe_weak_copy(out),
                  scale = scale_, pads = pads_]() mutable {
      CacheAttention a{q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(),
                       q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), {}, {}, {},
                       pads.empty() ? nullptr : pads.data(), scale};
      // Keys and values are read in place through their strides (the cache is
      // a view of a larger buffer); only a D axis that is not contiguous (not
      // seen from KvCache) is gathered first.
      std::vector<float> kd, vd;
      auto view = [](const mx::array& x, const float*& p, int64_t* st, std::vector<float>& copy) {
        for (int i = 0; i < 4; i++) st[i] = x.strides(i);
        if (st[3] == 1 || x.shape(3) == 1) return;
        copy.resize(x.size());
        size_t o = 0;
        for (int64_t i0 = 0; i0 < x.shape(0); i0++)
          for (int64_t i1 = 0; i1 < x.shape(1); i1++)
            for (int64_t i2 = 0; i2 < x.shape(2); i2++)
              for (int64_t i3 = 0; i3 < x.shape(3); i3++) copy[o++] = p[i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3]];
        p = copy.data();
        st[3] = 1;
        st[2] = x.shape(3);
        st[1] = st[2] * x.shape(2);
        st[0] = st[1] * x.shape(1);
      };
      for (int i = 0; i < 4; i++) a.qs[i] = q.strides(i);
      view(k, a.k, a.ks, kd);
      view(v, a.v, a.vs, vd);
      const int64_t batch = q.shape(0);
      // Tasks: (row, head, block of queries); prefill splits the queries
      // so both cores share a long chunk, decode has one task per head.
      const int64_t qblock = 16, qblocks = (a.l + qblock - 1) / qblock;
      const int64_t tasks = batch * a.heads * qblocks;
      const int64_t work = tasks * std::min(a.l, qblock) * a.t * a.d;
      auto task = [&](int64_t it) {
        thread_local std::vector<float> scores;
        if (scores.size() < static_cast<size_t>(a.t)) scores.resize(static_cast<size_t>(a.t));
        const int64_t qb = it % qblocks, h = (it / qblocks) % a.heads, b = it / (qblocks * a.heads);
        attend_cached(a, b, h, qb * qblock, std::min(a.l, (qb + 1) * qblock), scores.data());
      };
      // Below ~16K multiply-adds a hand-off to the other core costs more than it saves.
      if (work < (1 << 14)) {
        for (int64_t it = 0; it < tasks; it++) task(it);
      } else {
        Pool::get().run(tasks, task);
      }
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeCacheAttention is a CPU kernel");
  }
  const char* name() const override { return "MlxeCacheAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const CacheAttentionKernel*>(&other);
    return o && o->scale_ == scale_ && o->pads_ == pads_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  float scale_;
  std::vector<int32_t> pads_;
};

mx::array make(const mx::array& x, Kind kind, mx::StreamOrDevice s) {
  if (!applies(x, s)) {
    throw std::invalid_argument("CPU kernels take float32 arrays on a CPU stream");
  }
  auto stream = mx::to_stream(s);
  auto in = mx::contiguous(x, false, stream);
  return mx::array(in.shape(), mx::float32, std::make_shared<VectorKernel>(stream, kind), {in});
}

}  // namespace

bool applies(const mx::array& x, mx::StreamOrDevice s) {
  return x.dtype() == mx::float32 && mx::to_stream(s).device == mx::Device::cpu;
}

mx::array softmax_last(const mx::array& x, mx::StreamOrDevice s) { return make(x, Kind::Softmax, s); }
mx::array gelu(const mx::array& x, mx::StreamOrDevice s) { return make(x, Kind::Gelu, s); }
mx::array silu(const mx::array& x, mx::StreamOrDevice s) { return make(x, Kind::Silu, s); }

mx::array layer_norm(const mx::array& x, const std::optional<mx::array>& residual,
                     const std::optional<mx::array>& weight, const std::optional<mx::array>& bias, float eps,
                     mx::StreamOrDevice s) {
  auto stream = mx::to_stream(s);
  if (!applies(x, s) || x.ndim() == 0) throw std::invalid_argument("layer_norm kernel: float32 on a CPU stream");
  const int dim = x.shape(-1);
  std::vector<mx::array> inputs{mx::contiguous(x, false, stream)};
  if (residual) {
    if (residual->shape() != x.shape() || residual->dtype() != mx::float32) {
      throw std::invalid_argument("layer_norm: the residual must match x's shape and dtype");
    }
    inputs.push_back(mx::contiguous(*residual, false, stream));
  }
  for (auto* p : {&weight, &bias}) {
    if (*p) {
      if ((*p)->ndim() != 1 || (*p)->shape(0) != dim) {
        throw std::invalid_argument("layer_norm: weight and bias must have shape (" + std::to_string(dim) + ",)");
      }
      inputs.push_back(mx::contiguous(mx::astype(**p, mx::float32, stream), false, stream));
    }
  }
  return mx::array(x.shape(), mx::float32,
                   std::make_shared<LayerNormKernel>(stream, residual.has_value(), weight.has_value(),
                                                     bias.has_value(), eps),
                   std::move(inputs));
}

mx::array linear(const mx::array& x, const mx::array& w, mx::StreamOrDevice s) {
  auto stream = mx::to_stream(s);
  const bool fits = applies(x, s) && x.ndim() >= 1 && w.ndim() == 2 && w.dtype() == mx::float32 &&
                    x.shape(-1) == w.shape(1) && x.size() / std::max(1, w.shape(1)) <= SKINNY_ROWS;
  if (!fits) {
    if (gemm_applies(x, w, s) && x.ndim() >= 1 && x.size() / std::max(1, w.shape(1)) > SKINNY_ROWS) {
      return gemm(x, w, std::nullopt, s);
    }
    return mx::matmul(x, mx::transpose(w, stream), stream);
  }
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<SkinnyMatmulKernel>(stream),
                   {mx::contiguous(x, false, stream), mx::contiguous(w, false, stream)});
}

bool cache_attention_applies(const mx::array& q, const mx::array& k, const mx::array& v, mx::StreamOrDevice s) {
  return applies(q, s) && k.dtype() == mx::float32 && v.dtype() == mx::float32 && q.ndim() == 4 && k.ndim() == 4 &&
         v.ndim() == 4 && k.shape() == v.shape() && q.shape(0) == k.shape(0) && q.shape(3) == k.shape(3) &&
         k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0 && q.shape(2) <= k.shape(2) && q.shape(3) <= 256 &&
         q.shape(2) > 0;
}

mx::array cache_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                          std::vector<int32_t> pads, mx::StreamOrDevice s) {
  if (!cache_attention_applies(q, k, v, s)) {
    throw std::invalid_argument(
        "cache_attention kernel: float32 q (B, H, L, D) and k, v (B, Hkv, T, D) on a CPU stream, L ≤ T, D ≤ 256, "
        "H a multiple of Hkv");
  }
  if (!pads.empty() && static_cast<int>(pads.size()) != q.shape(0)) {
    throw std::invalid_argument("cache_attention: one padding per batch row");
  }
  auto stream = mx::to_stream(s);
  return mx::array(q.shape(), mx::float32, std::make_shared<CacheAttentionKernel>(stream, scale, std::move(pads)),
                   {q, k, v});
}

bool rope_applies(const mx::array& x, int dims, mx::StreamOrDevice s) {
  return applies(x, s) && x.ndim() == 4 && dims > 0 && dims % 2 == 0 && dims <= x.shape(3);
}

mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale,
               std::variant<int, mx::array> offset, const std::optional<mx::array>& freqs, mx::StreamOrDevice s) {
  if (!rope_applies(x, dims, s) || base.has_value() == freqs.has_value()) {
    throw std::invalid_argument("rope kernel: float32 x (B, H, L, D) on a CPU stream, even dims ≤ D, a base or freqs");
  }
  auto stream = mx::to_stream(s);
  const int half = dims / 2, l = x.shape(2);
  const auto* starts = std::get_if<mx::array>(&offset);
  // The cos/sin tables of the last call: every layer of a step rotates the
  // same positions, so one set of table ops serves them all. The key holds
  // the offsets and freqs arrays, so their ids stay theirs while it lives.
  struct Tables {
    int dims, l, start;
    float base, scale;
    int stream;
    std::optional<mx::array> starts, freqs;
    mx::array cos, sin;
  };
  // Never destroyed: arrays must not outlive MLX at exit.
  thread_local auto* memo = new std::optional<Tables>();
  auto& last = *memo;
  auto same_array = [](const std::optional<mx::array>& a, const mx::array* b) {
    return a.has_value() == (b != nullptr) && (!a || a->id() == b->id());
  };
  const int start = starts ? 0 : std::get<int>(offset);
  const bool hit = last && last->dims == dims && last->l == l && last->start == start &&
                   last->base == base.value_or(0.0f) && last->scale == scale && last->stream == stream.index &&
                   same_array(last->starts, starts) && same_array(last->freqs, freqs ? &*freqs : nullptr);
  if (!hit) {
    mx::array inv = mx::array(0.0f);
    if (freqs) {
      inv = mx::astype(mx::reciprocal(*freqs, stream), mx::float32, stream);
    } else {
      // MLX's default inverse frequencies, made by its own ops once per
      // (dims, base).
      static std::mutex mu;
      static auto& made = *new std::vector<std::tuple<int, float, mx::array>>();  // never destroyed, as memo
      std::lock_guard<std::mutex> lock(mu);
      auto it = std::find_if(made.begin(), made.end(),
                             [&](const auto& e) { return std::get<0>(e) == dims && std::get<1>(e) == *base; });
      if (it == made.end()) {
        auto f = mx::exp(mx::multiply(mx::arange(0, -half, -1, mx::float32, stream),
                                      mx::array(std::log(*base) / half, mx::float32), stream),
                         stream);
        mx::eval(f);
        made.emplace_back(dims, *base, f);
        it = std::prev(made.end());
      }
      inv = std::get<2>(*it);
    }
    // Positions (l + start)·scale and θ = position · inverse frequency, as
    // MLX's composition computes them: (L, half), or (B, L, half) per row.
    mx::array first = starts ? mx::reshape(mx::astype(*starts, mx::int32, stream), {-1, 1}, stream)
                             : mx::array(start, mx::int32);
    auto positions = mx::multiply(mx::add(mx::arange(l, mx::float32, stream), first, stream),
                                  mx::array(scale, mx::float32), stream);
    auto theta = mx::multiply(mx::expand_dims(positions, -1, stream), inv, stream);
    last = Tables{dims,
                  l,
                  start,
                  base.value_or(0.0f),
                  scale,
                  stream.index,
                  starts ? std::optional<mx::array>(*starts) : std::nullopt,
                  freqs,
                  mx::cos(theta, stream),
                  mx::sin(theta, stream)};
  }
  return mx::array(x.shape(), mx::float32, std::make_shared<RopeKernel>(stream, dims, traditional),
                   {x, last->cos, last->sin});
}

mx::array packed_attention(const mx::array& qkv, std::vector<int32_t> lengths, int heads, float scale,
                           mx::StreamOrDevice s) {
  auto stream = mx::to_stream(s);
  if (!applies(qkv, s)) throw std::invalid_argument("packed_attention kernel: float32 on a CPU stream");
  return mx::array({qkv.shape(0), qkv.shape(1) / 3}, mx::float32,
                   std::make_shared<PackedAttentionKernel>(stream, std::move(lengths), heads, scale),
                   {mx::contiguous(qkv, false, stream)});
}

}  // namespace mlxe::kernels
