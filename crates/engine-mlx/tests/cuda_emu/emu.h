// Runs the device code of shim/cuda_kernels.cc on the CPU, for tests on
// machines without a GPU: each CUDA thread of a block is a std::thread,
// __syncthreads a barrier, __shfl_xor_sync an exchange through memory between
// two barriers of the warp (so it must be reached by every thread of the warp,
// as on the GPU: full-mask shuffles in our kernels), __shared__ a function-local static (one block runs at a
// time). Inline PTX is dropped, so only float32 data (Elem<0>, which needs
// none) gives meaningful results.
#define MLXE_EMULATED  // the kernels skip their inline PTX where it matters
#include <algorithm>
#include <barrier>
#include <memory>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(x)
#define __shared__ static
#define asm(...) (void)0
struct uint4 {
  unsigned x, y, z, w;
};
struct uint2 {
  unsigned x, y;
};
struct float4 {
  float x, y, z, w;
};
struct dim3_ {
  unsigned x, y, z;
};
inline thread_local dim3_ threadIdx;
inline dim3_ blockIdx, blockDim, gridDim;
inline std::barrier<>* g_bar;
inline std::vector<std::unique_ptr<std::barrier<>>> g_warp_bars;  // one a warp of the block
inline float g_slots[1024];
template <class T>
T __ldg(const T* p) {
  return *p;
}
inline void __syncthreads() { g_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  const int t = threadIdx.x;
  std::barrier<>& bar = *g_warp_bars[t / 32];
  g_slots[t] = v;
  bar.arrive_and_wait();
  const float r = g_slots[(t & ~31) | ((t & 31) ^ o)];
  bar.arrive_and_wait();
  return r;
}
inline float __int_as_float(int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Blocks run one after another, so a fence has nothing to order and an atomic
// (called by one thread of a block) nothing to race with.
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p += v;
  return old;
}
template <class T>
T __ldcg(const T* p) {
  return *p;
}
template <class T>
T __ldcs(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
using std::max;
using std::min;

// Runs `f` as the kernel of a grid: blocks one after another.
template <class F>
void launch(dim3_ grid, unsigned threads, F f) {
  blockDim = {threads, 1, 1};
  gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = {bx, by, bz};
        std::barrier<> bar(threads);
        g_bar = &bar;
        g_warp_bars.clear();
        for (unsigned w = 0; w * 32 < threads; ++w)
          g_warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - w * 32)));
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            f();
          });
        for (auto& th : ts) th.join();
      }
}
