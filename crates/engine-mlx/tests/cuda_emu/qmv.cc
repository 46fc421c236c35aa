// The fused matvec kernel (qmv) on float32 data under the CPU
// emulation (emu.h) against a float64 reference: every epilogue (split
// rows over three matrices, SwiGLU), RMS norm (its squares summed in the
// main loop or in a pass first), bias, residual, 4/8 bits,
// groups of 32/64/128, one row of x (the AND form of the dequantization) and
// several (the OR form), packed elements read as denormals (DEQ 1), the next
// chunk prefetched (PF 1), K not a multiple of the block's stride.
// src.cc is the kernels' source, cut out of cuda_kernels.cc by the test.
#include <cstdio>
#include <random>
#include "src.cc"
using mlxe::Params;
typedef unsigned u32;

struct Mat {
  int n;
  std::vector<u32> w;
  std::vector<float> sc, bi, bias;
};

// Relative L2 error of the kernel's output against the float64 product;
// qmv with R rows a block of 64 threads, as the host launches it.
// x_mag scales x (the denormal form's range: products q·x·2^-64 stay normal
// down to |x| ~ 1e-19 and finite up to ~1e12).
template <int BITS, int GS, int MT, int R, int MODE, int NORM, int DEQ = 0, int PF = 0, int LD = 0>
double run_case(int M, int K, std::vector<int> ns, bool residual, bool bias, unsigned seed, float x_mag = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1, 1);
  const int PW = 32 / BITS, groups = K / GS;
  std::vector<Mat> mats;
  for (int n : ns) {
    Mat m{n, {}, {}, {}, {}};
    m.w.resize(size_t(n) * K / PW);
    for (auto& v : m.w) v = rng();
    m.sc.resize(size_t(n) * groups);
    m.bi.resize(size_t(n) * groups);
    for (auto& v : m.sc) v = U(rng) * 0.1f;
    for (auto& v : m.bi) v = U(rng) * 0.5f;
    if (bias) {
      m.bias.resize(n);
      for (auto& v : m.bias) v = U(rng);
    }
    mats.push_back(std::move(m));
  }
  const int ldx = K + 8, ldr = ns[0] + 3;
  std::vector<float> x(size_t(M) * ldx), g(K), res(size_t(M) * ldr);
  for (auto& v : x) v = U(rng) * 3 * x_mag;
  x[7] = 120.f * x_mag;  // an outlier, as LLM activations have
  for (auto& v : g) v = U(rng) + 1.5f;
  for (auto& v : res) v = U(rng);
  std::vector<std::vector<float>> y(3);
  Params p{};
  p.x = x.data();
  p.norm = NORM ? g.data() : nullptr;
  p.residual = residual ? res.data() : nullptr;
  int end = 0, total = 0;
  for (size_t i = 0; i < 3; ++i) {
    if (i < mats.size()) {
      p.w[i] = mats[i].w.data();
      p.scales[i] = mats[i].sc.data();
      p.biases[i] = mats[i].bi.data();
      p.bias[i] = bias ? mats[i].bias.data() : nullptr;
      end = MODE == 1 ? ns[0] : end + ns[i];
      total += ns[i];
      y[i].assign(size_t(M) * ns[i], NAN);
      if (MODE == 0 || i == 0) p.y[i] = y[i].data();
    }
    p.n_end[i] = end;
  }
  p.M = M;
  p.K = K;
  p.ldx = ldx;
  p.ldr = ldr;
  p.eps = 1e-5f;
  const int rows = MODE == 1 ? ns[0] : total;
  const int per_block = MODE == 1 ? R / 2 : R;
  const dim3_ grid{unsigned((rows + per_block - 1) / per_block), unsigned((M + MT - 1) / MT), 1};
  launch(grid, 64, [&] { mlxe::qmv<0, BITS, GS, MT, R, MODE, NORM, DEQ, PF, LD>(p); });
  double num = 0, den = 0;
  bool finite = true;
  auto deq = [&](const Mat& m, int n, int k) {
    const u32 word = m.w[size_t(n) * K / PW + k / PW];
    const int q = (word >> (BITS * (k % PW))) & ((1u << BITS) - 1);
    return double(m.sc[size_t(n) * groups + k / GS]) * q + m.bi[size_t(n) * groups + k / GS];
  };
  auto add = [&](double got, double want) {
    finite = finite && std::isfinite(got);
    num += (got - want) * (got - want);
    den += want * want;
  };
  for (int mm = 0; mm < M; ++mm) {
    const float* xr = &x[size_t(mm) * ldx];
    double inv = 1;
    if (NORM) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += double(xr[k]) * xr[k];
      inv = 1 / std::sqrt(s / K + 1e-5);
    }
    auto dot = [&](const Mat& m, int n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += deq(m, n, k) * xr[k] * (NORM ? g[k] * inv : 1.0);
      return s;
    };
    if (MODE == 1) {
      for (int n = 0; n < ns[0]; ++n) {
        const double a = dot(mats[0], n), b = dot(mats[1], n);
        add(y[0][size_t(mm) * ns[0] + n], a / (1 + std::exp(-a)) * b);
      }
    } else {
      for (size_t i = 0; i < mats.size(); ++i)
        for (int n = 0; n < ns[i]; ++n)
          add(y[i][size_t(mm) * ns[i] + n], dot(mats[i], n) + (bias ? mats[i].bias[n] : 0) +
                                                 (residual ? res[size_t(mm) * ldr + n] : 0));
    }
  }
  return finite ? std::sqrt(num / den) : INFINITY;
}

// Each case's error is divided by its tolerance.
#define CASE(NAME, TOL, TPL, ...)                                    \
  do {                                                               \
    const double e = run_case<TPL>(__VA_ARGS__);                     \
    std::printf("%-40s rel_l2 %.2e (tolerance %.0e)\n", NAME, e, TOL); \
    worst = std::isnan(e) ? INFINITY : std::max(worst, e / TOL);     \
  } while (0)
#define T(...) __VA_ARGS__

int main() {
  double worst = 0;
  CASE("qmv 4b g64 norm split3", 1e-5, T(4, 64, 1, 4, 0, true), 1, 1024, {12, 4, 4}, false, false, 1);
  CASE("qmv 4b g64 residual K4608", 1e-5, T(4, 64, 1, 4, 0, false), 1, 4608, {37}, true, false, 2);
  CASE("qmv 4b g32 norm bias M3 K896", 1e-5, T(4, 32, 4, 2, 0, true), 3, 896, {20, 8, 8}, false, true, 3);
  CASE("qmv 4b g128 bias residual", 1e-5, T(4, 128, 1, 2, 0, false), 1, 2048, {33}, true, true, 4);
  CASE("qmv 8b g64 norm", 1e-5, T(8, 64, 1, 4, 0, true), 1, 4096, {40}, false, false, 5);
  CASE("qmv 8b g32 bias residual M3", 1e-5, T(8, 32, 4, 2, 0, false), 3, 896, {9}, true, true, 6);
  CASE("qmv 4b g64 norm swiglu", 1e-5, T(4, 64, 1, 4, 1, true), 1, 4096, {36, 36}, false, false, 7);
  CASE("qmv 4b g128 norm swiglu M2", 1e-5, T(4, 128, 2, 4, 1, true), 2, 1024, {10, 10}, false, false, 8);
  // NORM 2: the squares of x summed in a pass before the main loop.
  CASE("qmv 4b g64 norm-pass split3", 1e-5, T(4, 64, 1, 4, 0, 2), 1, 1024, {12, 4, 4}, false, false, 10);
  CASE("qmv 4b g128 norm-pass swiglu M2", 1e-5, T(4, 128, 2, 4, 1, 2), 2, 1024, {10, 10}, false, false, 11);
  // DEQ 1: packed elements read as denormal floats (no subtraction).
  CASE("qmv 4b g64 norm split3 denormal", 1e-5, T(4, 64, 1, 4, 0, 1, 1), 1, 1024, {12, 4, 4}, false, false, 12);
  CASE("qmv 4b g32 norm bias M3 K896 denormal", 1e-5, T(4, 32, 4, 2, 0, 2, 1), 3, 896, {20, 8, 8}, false, true, 13);
  CASE("qmv 8b g32 bias residual M3 denormal", 1e-5, T(8, 32, 4, 2, 0, 0, 1), 3, 896, {9}, true, true, 14);
  CASE("qmv 4b g128 denormal, x 1e-12", 1e-5, T(4, 128, 1, 2, 0, 0, 1), 1, 2048, {33}, false, false, 16, 1e-12f);
  CASE("qmv 8b g64 denormal, x 1e9", 1e-5, T(8, 64, 1, 2, 0, 0, 1), 1, 2048, {33}, false, false, 17, 1e9f);
  CASE("qmv 4b g64 norm swiglu denormal", 1e-5, T(4, 64, 1, 4, 1, 1, 1), 1, 4096, {36, 36}, false, false, 15);
  // PF 1: each thread's next chunk loaded while it computes one (K4608: chunks
  // not a multiple of the block's threads).
  CASE("qmv 4b g64 residual K4608 prefetch", 1e-5, T(4, 64, 1, 4, 0, 0, 1, 1), 1, 4608, {37}, true, false, 18);
  CASE("qmv 4b g64 norm swiglu prefetch", 1e-5, T(4, 64, 1, 4, 1, 1, 1, 1), 1, 4096, {36, 36}, false, false, 19);
  CASE("qmv 8b g32 norm-pass M3 prefetch", 1e-5, T(8, 32, 4, 2, 0, 2, 0, 1), 3, 896, {20, 8, 8}, false, true, 20);
  // LD 1: the packed weights loaded evict-first (the default on the GPU).
  CASE("qmv 4b g64 norm swiglu denormal ldcs", 1e-5, T(4, 64, 1, 4, 1, 1, 1, 0, 1), 1, 4096, {36, 36}, false, false, 21);
  CASE("qmv 8b g32 bias residual M3 ldcs", 1e-5, T(8, 32, 4, 2, 0, 0, 1, 0, 1), 3, 896, {9}, true, true, 22);
  CASE("qmv 8b g128 swiglu", 1e-5, T(8, 128, 1, 2, 1, false), 1, 4608, {17, 17}, false, false, 9);
  const bool pass = worst < 1.0;
  std::printf("worst error / tolerance %.2f: %s\n", worst, pass ? "pass" : "FAIL");
  return pass ? 0 : 1;
}
