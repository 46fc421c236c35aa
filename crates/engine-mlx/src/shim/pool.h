// The persistent worker pool the CPU kernels share (quant_kernels.cc,
// cpu_kernels.cc): the decode step calls them hundreds of times per token,
// so threads must not be created per call.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>

namespace mlxe::kernels {

// Workers spin briefly for the next call (they usually come microseconds
// apart), then sleep. The caller never waits for a worker that has not joined: on a busy
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
    while (inside_.load(std::memory_order_seq_cst) != 0) _mm_pause();
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
      for (int spin = 0; spin < 4000 && generation_.load(std::memory_order_seq_cst) == seen; spin++) _mm_pause();
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

}  // namespace mlxe::kernels
