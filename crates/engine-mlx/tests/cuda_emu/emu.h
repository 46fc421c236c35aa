// Runs the device code of shim/cuda_kernels.cc on the CPU, for tests on
// machines without a GPU: each CUDA thread of a block is a std::thread,
// __syncthreads a barrier, __shfl_xor_sync an exchange through memory between
// two barriers (so it must be reached by every thread of the block, as it is
// in our kernels), __shared__ a function-local static (one block runs at a
// time). Inline PTX is dropped, so only float32 data (Elem<0>, which needs
// none) gives meaningful results.
#define MLXE_EMULATED  // the kernels skip their inline PTX where it matters
#include <barrier>
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
inline float g_slots[1024];
template <class T>
T __ldg(const T* p) {
  return *p;
}
inline void __syncthreads() { g_bar->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  const int t = threadIdx.x;
  g_slots[t] = v;
  g_bar->arrive_and_wait();
  const float r = g_slots[(t & ~31) | ((t & 31) ^ o)];
  g_bar->arrive_and_wait();
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
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
using std::max;
using std::min;

// f16 conversions (GCC's _Float16) and a warp's mma.sync m16n8k16, for the tensor-core matvec.
inline unsigned emu_pack_half2(float lo, float hi) {
  _Float16 a = (_Float16)lo, b = (_Float16)hi;
  unsigned short ua, ub;
  std::memcpy(&ua, &a, 2);
  std::memcpy(&ub, &b, 2);
  return unsigned(ua) | (unsigned(ub) << 16);
}
inline float emu_half_to_float(unsigned h) {
  unsigned short u = h & 0xffffu;
  _Float16 f;
  std::memcpy(&f, &u, 2);
  return float(f);
}
inline unsigned g_mma_a[1024][4], g_mma_b[1024][2];
// D = A·B + C of mma.sync.m16n8k16.row.col.f32.f16.f16.f32 over the calling
// thread's warp (every thread of the block must call it, as for shuffles).
inline void emu_mma16816(float* c, const unsigned* a, const unsigned* b) {
  const int t = threadIdx.x, w0 = t & ~31, lane = t & 31;
  for (int i = 0; i < 4; ++i) g_mma_a[t][i] = a[i];
  for (int i = 0; i < 2; ++i) g_mma_b[t][i] = b[i];
  g_bar->arrive_and_wait();
  double A[16][16], B[16][8];
  auto lo = [](unsigned v) { return (double)emu_half_to_float(v & 0xffffu); };
  auto hi = [](unsigned v) { return (double)emu_half_to_float(v >> 16); };
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, q = l % 4;
    const unsigned* la = g_mma_a[w0 + l];
    const unsigned* lb = g_mma_b[w0 + l];
    A[g][2 * q] = lo(la[0]); A[g][2 * q + 1] = hi(la[0]);
    A[g + 8][2 * q] = lo(la[1]); A[g + 8][2 * q + 1] = hi(la[1]);
    A[g][2 * q + 8] = lo(la[2]); A[g][2 * q + 9] = hi(la[2]);
    A[g + 8][2 * q + 8] = lo(la[3]); A[g + 8][2 * q + 9] = hi(la[3]);
    B[2 * q][g] = lo(lb[0]); B[2 * q + 1][g] = hi(lb[0]);
    B[2 * q + 8][g] = lo(lb[1]); B[2 * q + 9][g] = hi(lb[1]);
  }
  const int g = lane / 4, q = lane % 4;
  double d[4] = {c[0], c[1], c[2], c[3]};
  for (int k = 0; k < 16; ++k) {
    d[0] += A[g][k] * B[k][2 * q];
    d[1] += A[g][k] * B[k][2 * q + 1];
    d[2] += A[g + 8][k] * B[k][2 * q];
    d[3] += A[g + 8][k] * B[k][2 * q + 1];
  }
  for (int i = 0; i < 4; ++i) c[i] = (float)d[i];
  g_bar->arrive_and_wait();
}

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
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; ++t) ts.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            f();
          });
        for (auto& th : ts) th.join();
      }
}
