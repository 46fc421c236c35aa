// Helpers shared by the CPU kernel files (cpu_kernels.cc, image_kernels.cc):
// the multi-versioning attribute, a branch-free exp and a fork-join split of
// work over the cores.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mlx/mlx.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MLXE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLXE_CLONES
#endif

namespace mlxe::kernels {

namespace mx = mlx::core;

// exp(x) = 2^n·e^r with n = round(x·log2 e), |r| ≤ ln2/2 and a degree-6
// polynomial for e^r (Cephes' expf coefficients, relative error < 2e-7).
// Written without calls or branches so the loops around it vectorise.
inline float exp_approx(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  // Round to nearest by adding and removing 1.5·2^23.
  float n = xc * 1.44269504088896341f + 12582912.0f;
  n -= 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  // Below -87 the true value is under float's normal range: 0 (also for -inf).
  return x < -87.0f ? 0.0f : p * scale;
}

// Largest of x[0..n) (-inf when n is 0). GCC leaves a `reduction(max:)` loop
// over std::max scalar (a serial vmaxss chain: a third of an attention's
// time); independent lanes vectorise.
inline float row_max(const float* x, int64_t n) {
  constexpr int64_t lanes = 16;
  float m[lanes];
  std::fill(m, m + lanes, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
#pragma omp simd
    for (int64_t l = 0; l < lanes; l++) m[l] = m[l] > x[i + l] ? m[l] : x[i + l];
  }
  float r = -std::numeric_limits<float>::infinity();
  for (int64_t l = 0; l < lanes; l++) r = std::max(r, m[l]);
  for (; i < n; i++) r = std::max(r, x[i]);
  return r;
}

// Splits `items` units of work (each `unit` floats long) over the cores when
// there is enough of it to pay for the threads.
template <typename F>
inline void parallel(int64_t items, int64_t unit, F&& f) {
  constexpr int64_t min_floats_per_thread = 1 << 17;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t threads = std::min(hw, std::max<int64_t>(1, items * unit / min_floats_per_thread));
  if (threads <= 1) {
    f(0, items);
    return;
  }
  const int64_t per = (items + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; t++) {
    const int64_t lo = t * per, hi = std::min(items, lo + per);
    if (lo < hi) pool.emplace_back([&f, lo, hi] { f(lo, hi); });
  }
  f(0, std::min(items, per));
  for (auto& th : pool) th.join();
}

inline void check_input(const mx::array& a, const char* name) {
  if (a.dtype() != mx::float32 || !a.flags().row_contiguous) {
    throw std::runtime_error(std::string(name) + ": expects row-contiguous float32 inputs");
  }
}

}  // namespace mlxe::kernels
