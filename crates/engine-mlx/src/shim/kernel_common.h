// Helpers shared by the CPU kernel files (cpu_kernels.cc, image_kernels.cc,
// quant_kernels.cc): the multi-versioning attribute, a branch-free exp and erf, a
// vectorised row max, and a persistent worker pool to split work over.
#pragma once

#include <algorithm>
#include <atomic>
#include <mutex>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mlx/mlx.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

// erf(z) ≈ z·P(z²)/Q(z²) on [-4, 4], the rational form Eigen and XLA use for
// float32 (|error| < 5e-7); beyond ±4 erf is ±1 in float32.
inline float erf_approx(float z) {
  const float zc = std::min(std::max(z, -4.0f), 4.0f);
  const float z2 = zc * zc;
  float p = -2.72614225801306e-10f;
  p = p * z2 + 2.77068142495902e-08f;
  p = p * z2 + -2.10102402082508e-06f;
  p = p * z2 + -5.69250639462346e-05f;
  p = p * z2 + -7.34990630326855e-04f;
  p = p * z2 + -2.95459980854025e-03f;
  p = p * z2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * z2 + -2.13374055278905e-04f;
  q = q * z2 + -1.68282697438203e-03f;
  q = q * z2 + -7.37332916720468e-03f;
  q = q * z2 + -1.42647390514189e-02f;
  const float e = zc * p / q;
  // At the clamp the fit is 1.2e-7 short of ±1; make the tails exact.
  return z >= 4.0f ? 1.0f : (z <= -4.0f ? -1.0f : e);
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

// A pause hint for spin loops.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// A small persistent pool (first written for quant_kernels.cc): the decode
// step calls these kernels hundreds of times per token, and a diffusion step
// a few hundred, so threads must not be created per call. Workers spin
// briefly for the next call (they usually come microseconds apart), then
// sleep. The caller never waits for a worker that has not joined: on a busy
// machine a descheduled worker would otherwise stall every call; the caller
// takes the tasks itself and only waits for workers already inside.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers outlive static destruction
    return *pool;
  }

  int size() const { return static_cast<int>(workers_) + 1; }

  // Runs task(i) for every i in [0, n) on the caller and the workers. A
  // second caller while the pool is busy runs its tasks alone.
  template <typename F>
  void run(int64_t n, F&& task) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock() || workers_ == 0 || n <= 1) {
      for (int64_t i = 0; i < n; i++) task(i);
      return;
    }
    using T = std::remove_reference_t<F>;
    fn_ = [](void* ctx, int64_t i) { (*static_cast<T*>(ctx))(i); };
    ctx_ = &task;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    closed_.store(false, std::memory_order_seq_cst);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    generation_.notify_all();
    drain();
    // Dekker-style hand-off (all seq_cst): a worker that joins after this
    // store sees `closed_` and leaves without touching the job.
    closed_.store(true, std::memory_order_seq_cst);
    while (inside_.load(std::memory_order_seq_cst) != 0) cpu_relax();
  }

 private:
  Pool() {
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    // More than 8 threads only adds wake-ups for these memory-bound products.
    workers_ = std::min(hw, 8u) - 1;
    for (unsigned i = 0; i < workers_; i++) std::thread([this] { work(); }).detach();
  }

  void drain() {
    for (int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_;) fn_(ctx_, i);
  }

  void work() {
    // The value before any run: a run that starts before this thread does is
    // still seen as new.
    uint64_t seen = 0;
    for (;;) {
      for (int spin = 0; spin < 4000 && generation_.load(std::memory_order_seq_cst) == seen; spin++) cpu_relax();
      generation_.wait(seen, std::memory_order_seq_cst);
      seen = generation_.load(std::memory_order_seq_cst);
      inside_.fetch_add(1, std::memory_order_seq_cst);
      if (!closed_.load(std::memory_order_seq_cst)) drain();
      inside_.fetch_sub(1, std::memory_order_seq_cst);
    }
  }

  unsigned workers_ = 0;
  std::mutex busy_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> inside_{0};
  std::atomic<bool> closed_{true};
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
};

// Splits `items` units of work (each `unit` floats long) over the pool when
// there is enough of it to pay: up to four chunks a thread, taken in turn, so
// a core that another process holds does not leave the rest waiting.
template <typename F>
inline void parallel(int64_t items, int64_t unit, F&& f) {
  constexpr int64_t min_floats_per_thread = 1 << 17;
  Pool& pool = Pool::get();
  const int64_t threads = std::min<int64_t>(pool.size(), std::max<int64_t>(1, items * unit / min_floats_per_thread));
  if (threads <= 1 || items <= 1) {
    f(0, items);
    return;
  }
  const int64_t chunks = std::min(items, threads * 4), per = (items + chunks - 1) / chunks;
  pool.run((items + per - 1) / per, [&](int64_t t) { f(t * per, std::min(items, (t + 1) * per)); });
}

inline void check_input(const mx::array& a, const char* name) {
  if (a.dtype() != mx::float32 || !a.flags().row_contiguous) {
    throw std::runtime_error(std::string(name) + ": expects row-contiguous float32 inputs");
  }
}

}  // namespace mlxe::kernels
