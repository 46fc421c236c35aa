// Quantized matrix products on the CPU, straight from MLX's affine layout
// (4-, 5- or 8-bit unsigned values packed in uint32 words, one f32 scale and
// bias per group of 32, 64 or 128), which is also what GGUF Q4_0/Q4_1/Q8_0/
// Q4_K (4/8-bit) and Q5_0/Q5_1/Q5_K (5-bit) blocks load as. See
// quantized_linear in cpu_kernels.h.
//
// y[m][n] = Σ_g s[n][g] · Σ_{i∈g} q[n][i]·x[m][i] + b[n][g] · Σ_{i∈g} x[m][i].
// The activations are quantized per block of 32 to int8 (x ≈ d·xq, |xq| ≤ 127),
// so each block's Σ q·xq is an integer dot product: AVX-512 VNNI `vpdpbusd`
// (with VBMI for the 5-bit unpacking), or AVX2 `vpmaddubsw` + `vpmaddwd`, or plain C; the bias term uses the exact
// float sums of x. Each block's integer sum is scaled by s·d in float, as
// llama.cpp does for its Q8 activations; the int8 rounding of x is the only
// approximation (tests/quant_kernels.rs bounds it).
//
// Layout: a 4-bit block of 32 is 16 bytes, element 2j in the low nibble of
// byte j and 2j+1 in the high nibble, so one 16-byte load split into low and
// high nibbles gives [even elements | odd elements]; the quantized activations
// of each block are stored in that same order. A 5-bit block is 20 bytes, a
// little-endian bit stream (element i at bits 5i..5i+4); it unpacks as
// [0..7 | 16..23 | 8..15 | 24..31] (see unpack5), the order its activations
// are stored in. An 8-bit block is 32 bytes in element order.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "kernel_common.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace mlxe::kernels {
namespace {

constexpr int64_t kBlock = 32;

// What one product needs, with the activations already quantized.
struct Args {
  const int8_t* xq;  // (M, K), each block in its weights' unpacked order
  const float* dx;   // (M, K/32) activation scale per block
  const float* sxg;  // (M, K/group) Σ x per weight group
  const uint8_t* w;  // (N, K·bits/8)
  const float* s;    // (N, K/group)
  const float* b;    // (N, K/group)
  float* y;          // (M, N)
  int64_t m, n, k, group, bits;
};

// Where element i of a block of 32 sits once its weights are unpacked: 4-bit
// blocks as [evens | odds], 5-bit ones with the middle eighths swapped, 8-bit
// ones in order.
inline int64_t unpacked_position(int64_t i, int64_t bits) {
  if (bits == 4) return (i & 1) * 16 + i / 2;
  if (bits == 5 && i >= 8 && i < 24) return i < 16 ? i + 8 : i - 8;
  return i;
}

void quantize_activations(const float* x, int64_t m, int64_t k, int64_t group, int64_t bits, int8_t* xq,
                          float* dx, float* sxg) {
  const int64_t nb = k / kBlock, ng = k / group;
  for (int64_t r = 0; r < m; r++) {
    for (int64_t g = 0; g < ng; g++) sxg[r * ng + g] = 0.0f;
    for (int64_t blk = 0; blk < nb; blk++) {
      const float* v = x + r * k + blk * kBlock;
      float amax = 0.0f, sum = 0.0f;
      for (int64_t i = 0; i < kBlock; i++) {
        amax = std::max(amax, std::fabs(v[i]));
        sum += v[i];
      }
      const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
      int8_t* out = xq + r * k + blk * kBlock;
      for (int64_t i = 0; i < kBlock; i++) {
        // Round half away from zero without a libm call, so the loop vectorises.
        const float t = v[i] * inv;
        const int8_t q = static_cast<int8_t>(static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f)));
        out[unpacked_position(i, bits)] = q;
      }
      dx[r * nb + blk] = d;
      sxg[r * ng + blk * kBlock / group] += sum;
    }
  }
}

// The bias term of one output: Σ_g b[g] · Σ_{i∈g} x[i]. One out-of-line
// copy, so every tile computes it in the same order and a row gets the same
// bits alone or in a batch.
__attribute__((noinline)) float bias_term(const float* b, const float* sxg, int64_t ng) {
  float t = 0.0f;
  for (int64_t g = 0; g < ng; g++) t += b[g] * sxg[g];
  return t;
}

void rows_scalar(const Args& a, int64_t n0, int64_t n1) {
  const int64_t nb = a.k / kBlock, ng = a.k / a.group, row_bytes = a.k * a.bits / 8;
  for (int64_t n = n0; n < n1; n++) {
    const uint8_t* wr = a.w + n * row_bytes;
    for (int64_t r = 0; r < a.m; r++) {
      const int8_t* xr = a.xq + r * a.k;
      float acc = 0.0f;
      for (int64_t blk = 0; blk < nb; blk++) {
        int32_t dot = 0;
        if (a.bits == 4) {
          const uint8_t* wb = wr + blk * 16;
          const int8_t* xb = xr + blk * kBlock;
          for (int j = 0; j < 16; j++) dot += (wb[j] & 15) * xb[j] + (wb[j] >> 4) * xb[16 + j];
        } else if (a.bits == 5) {
          const uint8_t* wb = wr + blk * 20;
          const int8_t* xb = xr + blk * kBlock;
          for (int j = 0; j < kBlock; j++) {
            const int bit = 5 * j;
            // The high byte only where the value crosses a byte boundary (never
            // past the block's 20 bytes).
            const int word = wb[bit / 8] | ((bit % 8) > 3 ? wb[bit / 8 + 1] << 8 : 0);
            dot += ((word >> (bit % 8)) & 31) * xb[unpacked_position(j, 5)];
          }
        } else {
          const uint8_t* wb = wr + blk * kBlock;
          const int8_t* xb = xr + blk * kBlock;
          for (int j = 0; j < kBlock; j++) dot += wb[j] * xb[j];
        }
        acc += static_cast<float>(dot) * (a.s[n * ng + blk / (a.group / kBlock)] * a.dx[r * nb + blk]);
      }
      a.y[r * a.n + n] = acc + bias_term(a.b + n * ng, a.sxg + r * ng, ng);
    }
  }
}

// The AVX2 (+FMA) kernels (the AVX-512 ones are in namespace vnni below).
// DOT(acc, w, x) adds the 8 partial sums of one block's Σ w·x.
#define MLXE_QUANT_BODY(NS, DOT4, DOT8)                                                                        \
  namespace NS {                                                                                               \
  inline float hsum(__m256 v) {                                                                                \
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));                            \
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                                                    \
    s = _mm_add_ss(s, _mm_movehdup_ps(s));                                                                     \
    return _mm_cvtss_f32(s);                                                                                   \
  }                                                                                                            \
  /* The bias term Σ_g b[g]·sxg[g], eight groups per step; out of line so     \
     every tile sums it in the same order (a row gets the same bits alone or  \
     in a batch). */                                                                                           \
  __attribute__((noinline)) float bias_dot(const float* b, const float* sxg, int64_t ng) {                    \
    __m256 acc = _mm256_setzero_ps();                                                                          \
    int64_t g = 0;                                                                                             \
    for (; g + 8 <= ng; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(b + g), _mm256_loadu_ps(sxg + g), acc); \
    float t = hsum(acc);                                                                                       \
    for (; g < ng; g++) t = std::fma(b[g], sxg[g], t);                                                         \
    return t;                                                                                                  \
  }                                                                                                            \
  /* MT rows of x against one weight row: each weight block is unpacked once;   \
     two accumulators per row (even and odd blocks) hide the FMA latency. */    \
  /* A 5-bit block's 32 values as bytes in the order                          \
     [0..7 | 16..23 | 8..15 | 24..31]: each value's two bytes gathered into a  \
     16-bit lane (within its 5-byte group of 8 values, value j starts at bit   \
     s = 5j mod 8 of byte 5j/8), shifted up to bits 7..11 by a multiply by     \
     2^(7-s) (AVX2 has no per-lane 16-bit shift), then down by 7. The loads    \
     (bytes 0..15 and 4..19) stay inside the block. */                         \
  inline __m256i unpack5(const uint8_t* wb) {                                   \
    const __m256i lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb))); \
    const __m256i hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wb + 4))); \
    /* Byte pairs of values 0..7 (bytes 0..4) | 8..15 (5..9) from lo, values  \
       16..23 (bytes 10..14) | 24..31 (15..19) from hi; the last value of     \
       each group lies in one byte (its high byte is zeroed). */              \
    const __m256i ia = _mm256_setr_epi8(0, 1, 0, 1, 1, 2, 1, 2, 2, 3, 3, 4, 3, 4, 4, -128, \
                                        5, 6, 5, 6, 6, 7, 6, 7, 7, 8, 8, 9, 8, 9, 9, -128); \
    const __m256i ib = _mm256_setr_epi8(6, 7, 6, 7, 7, 8, 7, 8, 8, 9, 9, 10, 9, 10, 10, -128, \
                                        11, 12, 11, 12, 12, 13, 12, 13, 13, 14, 14, 15, 14, 15, 15, -128); \
    const __m256i mul = _mm256_setr_epi16(128, 4, 32, 1, 8, 64, 2, 16, 128, 4, 32, 1, 8, 64, 2, 16); \
    const __m256i five = _mm256_set1_epi16(31);                                \
    const __m256i a = _mm256_and_si256(                                         \
        _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(lo, ia), mul), 7), five); \
    const __m256i b = _mm256_and_si256(                                         \
        _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(hi, ib), mul), 7), five); \
    return _mm256_packus_epi16(a, b);                                           \
  }                                                                             \
  template <int MT, int BITS>                                                   \
  inline void block(const Args& a, const uint8_t* wr, const float* sr, int64_t blk, int64_t r0, int gshift, \
                    __m256 (&acc)[MT]) {                                        \
    const int64_t nb = a.k / kBlock;                                            \
    const __m256i low = _mm256_set1_epi8(15);                                   \
    const __m256 ws = _mm256_set1_ps(sr[blk >> gshift]);                        \
    __m256i w0;                                                                 \
    if constexpr (BITS == 4) {                                                  \
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + blk * 16)); \
      w0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low); \
    } else if constexpr (BITS == 5) {                                           \
      w0 = unpack5(wr + blk * 20);                                              \
    } else {                                                                    \
      w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + blk * kBlock)); \
    }                                                                           \
    for (int r = 0; r < MT; r++) {                                              \
      const __m256i xv =                                                        \
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.xq + (r0 + r) * a.k + blk * kBlock)); \
      __m256i p;                                                                \
      if constexpr (BITS == 4 || BITS == 5) { /* values ≤ 31: no saturation */  \
        p = DOT4(w0, xv);                                                       \
      } else {                                                                  \
        p = DOT8(w0, xv, low);                                                  \
      }                                                                         \
      const __m256 d = _mm256_mul_ps(ws, _mm256_broadcast_ss(a.dx + (r0 + r) * nb + blk)); \
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[r]);               \
    }                                                                           \
  }                                                                             \
  template <int MT, int BITS>                                                   \
  inline void tile(const Args& a, int64_t n, int64_t r0, int gshift) {          \
    const int64_t nb = a.k / kBlock, ng = a.k / a.group, row_bytes = a.k * BITS / 8; \
    const uint8_t* wr = a.w + n * row_bytes;                                    \
    const float* sr = a.s + n * ng;                                             \
    __m256 even[MT], odd[MT];                                                   \
    for (int r = 0; r < MT; r++) even[r] = odd[r] = _mm256_setzero_ps();        \
    int64_t blk = 0;                                                            \
    for (; blk + 2 <= nb; blk += 2) {                                           \
      block<MT, BITS>(a, wr, sr, blk, r0, gshift, even);                        \
      block<MT, BITS>(a, wr, sr, blk + 1, r0, gshift, odd);                     \
    }                                                                           \
    if (blk < nb) block<MT, BITS>(a, wr, sr, blk, r0, gshift, even);            \
    for (int r = 0; r < MT; r++) {                                              \
      a.y[(r0 + r) * a.n + n] =                                                 \
          hsum(_mm256_add_ps(even[r], odd[r])) + bias_dot(a.b + n * ng, a.sxg + (r0 + r) * ng, ng); \
    }                                                                           \
  }                                                                             \
  template <int BITS>                                                                                          \
  void rows_bits(const Args& a, int64_t n0, int64_t n1) {                                                      \
    const int gshift = a.group == 32 ? 0 : (a.group == 64 ? 1 : 2);                                            \
    for (int64_t n = n0; n < n1; n++) {                                                                        \
      int64_t r = 0;                                                                                           \
      for (; r + 4 <= a.m; r += 4) tile<4, BITS>(a, n, r, gshift);                                             \
      switch (a.m - r) {                                                                                       \
        case 3: tile<3, BITS>(a, n, r, gshift); break;                                                         \
        case 2: tile<2, BITS>(a, n, r, gshift); break;                                                         \
        case 1: tile<1, BITS>(a, n, r, gshift); break;                                                         \
        default: break;                                                                                        \
      }                                                                                                        \
    }                                                                                                          \
  }                                                                                                            \
  void rows(const Args& a, int64_t n0, int64_t n1) {                                                           \
    if (a.bits == 4) {                                                                                         \
      rows_bits<4>(a, n0, n1);                                                                                 \
    } else if (a.bits == 5) {                                                                                  \
      rows_bits<5>(a, n0, n1);                                                                                 \
    } else {                                                                                                   \
      rows_bits<8>(a, n0, n1);                                                                                 \
    }                                                                                                          \
  }                                                                                                            \
  }

#if defined(__x86_64__) && defined(__GNUC__)
#define MLXE_QUANT_X86 1

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// u8·s8 pairs summed to i16 (at most 2·31·127 for 4/5-bit values: no saturation),
// then pairs of i16 to i32. An 8-bit value is split into nibbles: 16·hi + lo.
#define MLXE_DOT4_AVX2(w, x) _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
#define MLXE_DOT8_AVX2(w, x, low)                                                                           \
  _mm256_add_epi32(                                                                                        \
      _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w, low), x), _mm256_set1_epi16(1)),          \
      _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w, 4), low), x),           \
                        _mm256_set1_epi16(16)))
MLXE_QUANT_BODY(avx2, MLXE_DOT4_AVX2, MLXE_DOT8_AVX2)
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx512vbmi")
// AVX-512 VNNI: two blocks of 32 per 512-bit vector (lanes 0..7 hold block
// b's partial sums, lanes 8..15 block b+1's) and tiles of up to 4 weight rows
// × 4 rows of x, so each unpacked weight vector serves every row of x and each
// loaded x vector every weight row: per block pair and (weight row, x row),
// one vpdpbusd, one convert, one scale product and one FMA. The bias term
// joins each accumulator before its one horizontal sum. Every output runs
// the same operations in the same order whatever the tile's shape, so a row
// of x gets the same bits alone, in a batch or in a prompt chunk.
namespace vnni {

// Weights of blocks blk and blk+1 (or blk alone, upper half zero, with
// `one`) as bytes in their activations' order.
template <int BITS>
inline __m512i weights(const uint8_t* wr, int64_t blk, bool one) {
  if constexpr (BITS == 4) {
    const __m512i low = _mm512_set1_epi8(15);
    if (one) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + blk * 16));
      return _mm512_and_si512(_mm512_zextsi256_si512(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw)), low);
    }
    // [b | b | b+1 | b+1] in 128-bit lanes, the second copy of each shifted to
    // its high nibbles: [b evens | b odds | b+1 evens | b+1 odds].
    const __m512i raw = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + blk * 16)));
    const __m512i dup = _mm512_shuffle_i64x2(raw, raw, 0x50);
    return _mm512_and_si512(_mm512_mask_srli_epi64(dup, 0xCC, dup, 4), low);
  } else if constexpr (BITS == 5) {
    // Each 64-bit lane gathers the 5 bytes of one group of 8 values (VBMI's
    // vpermb), groups in the activations' order [0, 2, 1, 3] per block;
    // vpmultishiftqb then takes value j from bit 5j of its lane.
    alignas(64) static constexpr uint8_t gather[64] = {
        0, 1, 2, 3, 4, 4, 4, 4, 10, 11, 12, 13, 14, 14, 14, 14,
        5, 6, 7, 8, 9, 9, 9, 9, 15, 16, 17, 18, 19, 19, 19, 19,
        20, 21, 22, 23, 24, 24, 24, 24, 30, 31, 32, 33, 34, 34, 34, 34,
        25, 26, 27, 28, 29, 29, 29, 29, 35, 36, 37, 38, 39, 39, 39, 39};
    alignas(64) static constexpr uint8_t shifts[64] = {
        0, 5, 10, 15, 20, 25, 30, 35, 0, 5, 10, 15, 20, 25, 30, 35,
        0, 5, 10, 15, 20, 25, 30, 35, 0, 5, 10, 15, 20, 25, 30, 35,
        0, 5, 10, 15, 20, 25, 30, 35, 0, 5, 10, 15, 20, 25, 30, 35,
        0, 5, 10, 15, 20, 25, 30, 35, 0, 5, 10, 15, 20, 25, 30, 35};
    const __m512i raw = _mm512_maskz_loadu_epi8(one ? 0xFFFFFull : 0xFFFFFFFFFFull, wr + blk * 20);
    const __m512i v = _mm512_permutexvar_epi8(_mm512_load_si512(gather), raw);
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_load_si512(shifts), v), _mm512_set1_epi8(31));
  } else {
    if (one) return _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + blk * kBlock)));
    return _mm512_loadu_si512(wr + blk * kBlock);
  }
}

// [v[i] ×8 | v[j] ×8].
inline __m512 pair(const float* v, int64_t i, int64_t j) {
  return _mm512_insertf32x8(_mm512_set1_ps(v[i]), _mm256_set1_ps(v[j]), 1);
}

// Rows [r0, r0+MT) of x against weight rows [n0, n0+NT).
template <int BITS, int MT, int NT>
inline void tile(const Args& a, int64_t n0, int64_t r0, int gshift) {
  const int64_t nb = a.k / kBlock, ng = a.k / a.group, row_bytes = a.k * BITS / 8;
  __m512 acc[MT][NT];
  for (int i = 0; i < MT; i++)
    for (int j = 0; j < NT; j++) acc[i][j] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < nb; blk += 2) {
    const bool one = blk + 1 == nb;
    const int64_t next = one ? blk : blk + 1;
    __m512i w[NT];
    __m512 s[NT];
    for (int j = 0; j < NT; j++) {
      w[j] = weights<BITS>(a.w + (n0 + j) * row_bytes, blk, one);
      s[j] = pair(a.s + (n0 + j) * ng, blk >> gshift, next >> gshift);
    }
    for (int i = 0; i < MT; i++) {
      const int8_t* xr = a.xq + (r0 + i) * a.k + blk * kBlock;
      const __m512i x = one ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr)))
                            : _mm512_loadu_si512(xr);
      const __m512 d = pair(a.dx + (r0 + i) * nb, blk, next);
      for (int j = 0; j < NT; j++) {
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[j], x);
        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(s[j], d), acc[i][j]);
      }
    }
  }
  // The bias term Σ_g b[g]·sxg[g], 16 groups per step.
  for (int64_t g = 0; g < ng; g += 16) {
    const __mmask16 m = ng - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (ng - g)) - 1);
    __m512 b[NT];
    for (int j = 0; j < NT; j++) b[j] = _mm512_maskz_loadu_ps(m, a.b + (n0 + j) * ng + g);
    for (int i = 0; i < MT; i++) {
      const __m512 sx = _mm512_maskz_loadu_ps(m, a.sxg + (r0 + i) * ng + g);
      for (int j = 0; j < NT; j++) acc[i][j] = _mm512_fmadd_ps(b[j], sx, acc[i][j]);
    }
  }
  for (int i = 0; i < MT; i++)
    for (int j = 0; j < NT; j++) a.y[(r0 + i) * a.n + n0 + j] = _mm512_reduce_add_ps(acc[i][j]);
}

template <int BITS, int NT>
inline void column(const Args& a, int64_t n0, int gshift) {
  int64_t r = 0;
  for (; r + 4 <= a.m; r += 4) tile<BITS, 4, NT>(a, n0, r, gshift);
  switch (a.m - r) {
    case 3: tile<BITS, 3, NT>(a, n0, r, gshift); break;
    case 2: tile<BITS, 2, NT>(a, n0, r, gshift); break;
    case 1: tile<BITS, 1, NT>(a, n0, r, gshift); break;
    default: break;
  }
}

template <int BITS>
void rows_bits(const Args& a, int64_t n0, int64_t n1) {
  const int gshift = a.group == 32 ? 0 : (a.group == 64 ? 1 : 2);
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) column<BITS, 4>(a, n, gshift);
  for (; n < n1; n++) column<BITS, 1>(a, n, gshift);
}

void rows(const Args& a, int64_t n0, int64_t n1) {
  if (a.bits == 4) {
    rows_bits<4>(a, n0, n1);
  } else if (a.bits == 5) {
    rows_bits<5>(a, n0, n1);
  } else {
    rows_bits<8>(a, n0, n1);
  }
}

// quantize_activations, 32 values per step: the same scale and rounding per
// value (the block sums add in another order).
void quantize_activations(const float* x, int64_t m, int64_t k, int64_t group, int64_t bits, int8_t* xq, float* dx,
                          float* sxg) {
  // Element of the block at each position of its weights' unpacked order.
  alignas(32) static constexpr uint8_t order4[32] = {
      0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
      1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  alignas(32) static constexpr uint8_t order5[32] = {
      0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
      8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const int64_t nb = k / kBlock, ng = k / group;
  const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(bits == 4 ? order4 : order5));
  const __m512 half = _mm512_set1_ps(0.5f), minus_half = _mm512_set1_ps(-0.5f), zero = _mm512_setzero_ps();
  for (int64_t r = 0; r < m; r++) {
    for (int64_t g = 0; g < ng; g++) sxg[r * ng + g] = 0.0f;
    for (int64_t blk = 0; blk < nb; blk++) {
      const float* v = x + r * k + blk * kBlock;
      const __m512 a = _mm512_loadu_ps(v), b = _mm512_loadu_ps(v + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const float sum = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
      const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
      auto round = [&](__m512 t) {
        t = _mm512_mul_ps(t, _mm512_set1_ps(inv));
        const __m512 h = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, zero, _CMP_GE_OQ), minus_half, half);
        return _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(_mm512_add_ps(t, h)));
      };
      __m256i q = _mm256_set_m128i(round(b), round(a));
      if (bits != 8) q = _mm256_permutexvar_epi8(order, q);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + r * k + blk * kBlock), q);
      dx[r * nb + blk] = d;
      sxg[r * ng + blk * kBlock / group] += sum;
    }
  }
}

}  // namespace vnni
#pragma GCC pop_options
#endif

std::atomic<int> forced_level{-1};

int detected_level() {
#ifdef MLXE_QUANT_X86
  static const int level = [] {
    __builtin_cpu_init();
    // VBMI unpacks the 5-bit blocks (Ice Lake and later, Zen 4 and later);
    // VNNI CPUs without it (Cascade Lake) take the AVX2 kernels.
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
      return 2;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
  }();
  return level;
#else
  return 0;
#endif
}

int active_level() {
  const int f = forced_level.load(std::memory_order_relaxed);
  return f >= 0 ? std::min(f, detected_level()) : detected_level();
}

void run_rows(const Args& a, int level, int64_t n0, int64_t n1) {
#ifdef MLXE_QUANT_X86
  if (level == 2) return vnni::rows(a, n0, n1);
  if (level == 1) return avx2::rows(a, n0, n1);
#endif
  rows_scalar(a, n0, n1);
}

// Buffers of the quantized activations, reused between calls on a thread.
struct Scratch {
  std::vector<int8_t> xq;
  std::vector<float> dx, sxg;
};

// Quantizes x (m, k) into `scratch`; returns the products' Args with no
// weights yet.
Args quantized_x(const float* x, int64_t m, int64_t k, int64_t group, int64_t bits, Scratch& scratch) {
  scratch.xq.resize(static_cast<size_t>(m * k));
  scratch.dx.resize(static_cast<size_t>(m * (k / kBlock)));
  scratch.sxg.resize(static_cast<size_t>(m * (k / group)));
#ifdef MLXE_QUANT_X86
  if (active_level() == 2) {
    vnni::quantize_activations(x, m, k, group, bits, scratch.xq.data(), scratch.dx.data(), scratch.sxg.data());
  } else {
    quantize_activations(x, m, k, group, bits, scratch.xq.data(), scratch.dx.data(), scratch.sxg.data());
  }
#else
  quantize_activations(x, m, k, group, bits, scratch.xq.data(), scratch.dx.data(), scratch.sxg.data());
#endif
  return Args{scratch.xq.data(), scratch.dx.data(), scratch.sxg.data(), nullptr, nullptr, nullptr, nullptr,
              m, 0, k, group, bits};
}

// The products of several matrices against one quantized x, in one pool run:
// tasks of about 32 KiB of weights (times up to 4 rows of x), a multiple of
// the thread count so the threads finish together; at least 4 weight rows
// each.
void products(const std::vector<Args>& as) {
  const int level = active_level();
  Pool& pool = Pool::get();
  struct Task {
    const Args* a;
    int64_t n0, n1;
  };
  std::vector<Task> tasks;
  int64_t work = 0;
  for (const Args& a : as) work += a.n * (a.k * a.bits / 8) * std::min<int64_t>(a.m, 4);
  int64_t want = std::max<int64_t>(pool.size(), (work + (32 << 10) - 1) / (32 << 10));
  want = (want + pool.size() - 1) / pool.size() * pool.size();
  for (const Args& a : as) {
    // Each matrix gets its share of the tasks by its share of the work.
    const int64_t own = a.n * (a.k * a.bits / 8) * std::min<int64_t>(a.m, 4);
    int64_t t = std::max<int64_t>(1, std::min<int64_t>((want * own + work - 1) / std::max<int64_t>(work, 1), a.n / 4));
    const int64_t per = (a.n + t - 1) / t;
    for (int64_t n0 = 0; n0 < a.n; n0 += per) tasks.push_back({&a, n0, std::min(a.n, n0 + per)});
  }
  pool.run(static_cast<int64_t>(tasks.size()), [&](int64_t t) { run_rows(*tasks[t].a, level, tasks[t].n0, tasks[t].n1); });
}

void compute(const float* x, const uint8_t* w, const float* s, const float* b, float* y, int64_t m, int64_t n,
             int64_t k, int64_t group, int64_t bits) {
  thread_local Scratch scratch;
  Args a = quantized_x(x, m, k, group, bits, scratch);
  a.w = w, a.s = s, a.b = b, a.y = y, a.n = n;
  products({a});
}

class QuantizedLinearKernel : public mx::UnaryPrimitive {
 public:
  QuantizedLinearKernel(mx::Stream s, int group, int bits) : mx::UnaryPrimitive(s), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    enc.set_output_array(out);
    enc.dispatch([x = mx::array::unsafe_weak_copy(inputs[0]), w = mx::array::unsafe_weak_copy(inputs[1]),
                  s = mx::array::unsafe_weak_copy(inputs[2]), b = mx::array::unsafe_weak_copy(inputs[3]),
                  out = mx::array::unsafe_weak_copy(out), group = group_, bits = bits_]() mutable {
      const int64_t n = w.shape(0), k = w.shape(1) * 32 / bits;
      const int64_t m = static_cast<int64_t>(x.size()) / k;
      compute(x.data<float>(), reinterpret_cast<const uint8_t*>(w.data<uint32_t>()), s.data<float>(),
              b.data<float>(), out.data<float>(), m, n, k, group, bits);
    });
  }
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("MlxeQuantizedLinear is a CPU kernel");
  }
  const char* name() const override { return "MlxeQuantizedLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const QuantizedLinearKernel*>(&other);
    return o != nullptr && o->group_ == group_ && o->bits_ == bits_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    auto shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

 private:
  int group_, bits_;
};

// The elements of a float32 array in row-major order: its own data when
// row-contiguous (a decode step's inputs are), else gathered into `buf`
// through its strides. The fused primitive takes x and the residual as they
// come, so a call adds no reshape or `contiguous` op to the graph (the cost
// of an op is paid on both cores).
const float* row_major(const mx::array& a, std::vector<float>& buf) {
  if (a.flags().row_contiguous) return a.data<float>();
  buf.resize(a.size());
  const float* p = a.data<float>();
  const int nd = static_cast<int>(a.ndim());
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  for (size_t i = 0; i < a.size(); i++) {
    int64_t off = 0;
    for (int d = 0; d < nd; d++) off += idx[d] * a.strides(d);
    buf[i] = p[off];
    for (int d = nd - 1; d >= 0; d--) {
      if (++idx[d] < a.shape(d)) break;
      idx[d] = 0;
    }
  }
  return buf.data();
}

// Whether w, scales and biases are in the kernels' form for K inputs.
bool weights_apply(const mx::array& w, const mx::array& scales, const mx::array& biases, int group, int bits,
                   int64_t k) {
  if (w.ndim() != 2 || w.dtype() != mx::uint32) return false;
  if ((bits != 4 && bits != 5 && bits != 8) || (group != 32 && group != 64 && group != 128)) return false;
  if (static_cast<int64_t>(w.shape(1)) * 32 % bits != 0) return false;
  if (static_cast<int64_t>(w.shape(1)) * 32 / bits != k || k % group != 0 || k == 0) return false;
  const mx::Shape groups{w.shape(0), static_cast<int>(k / group)};
  return scales.dtype() == mx::float32 && biases.dtype() == mx::float32 && scales.shape() == groups &&
         biases.shape() == groups;
}

// The products of several matrices (one to three) against one x, with an
// RMS norm of x in front and an epilogue behind, in one primitive. Inputs: x,
// then (w, scales, biases) per matrix, the linear biases of the matrices that
// have one, the norm's weight if any, the residual if any. Each matrix has its
// own group size and bits (GGUF Q4_K_M files mix Q5_0 q/k with Q8_0 v).
struct FusedConfig {
  std::vector<int> groups, bits;
  std::vector<bool> has_bias;
  bool norm;
  float eps;
  bool residual, swiglu;
  std::vector<mx::Shape> shapes;
  bool operator==(const FusedConfig&) const = default;
};

class FusedQuantizedKernel : public mx::Primitive {
 public:
  FusedQuantizedKernel(mx::Stream s, FusedConfig cfg) : mx::Primitive(s), cfg_(std::move(cfg)) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& enc = mx::cpu::get_command_encoder(stream());
    for (auto& a : inputs) enc.set_input_array(a);
    for (auto& o : outputs) {
      o.set_data(mx::allocator::malloc(o.nbytes()));
      enc.set_output_array(o);
    }
    std::vector<mx::array> in, out;
    for (auto& a : inputs) in.push_back(mx::array::unsafe_weak_copy(a));
    for (auto& o : outputs) out.push_back(mx::array::unsafe_weak_copy(o));
    enc.dispatch([in = std::move(in), out = std::move(out), cfg = cfg_]() mutable { run(cfg, in, out); });
  }
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("MlxeFusedQuantizedLinear is a CPU kernel");
  }
  const char* name() const override { return "MlxeFusedQuantizedLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const FusedQuantizedKernel*>(&other);
    return o != nullptr && o->cfg_ == cfg_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>&) override { return cfg_.shapes; }

 private:
  static void run(const FusedConfig& cfg, std::vector<mx::array>& in, std::vector<mx::array>& out) {
    const auto& [groups_, bits_, has_bias_, norm_, eps_, residual_, swiglu_, shapes_] = cfg;
    const size_t mats = has_bias_.size();
    const int64_t k = in[1].shape(1) * 32 / bits_[0];
    const int64_t m = static_cast<int64_t>(in[0].size()) / k;
    size_t at = 1 + 3 * mats;
    std::vector<const float*> bias(mats, nullptr);
    for (size_t i = 0; i < mats; i++) {
      if (has_bias_[i]) bias[i] = in[at++].data<float>();
    }
    thread_local std::vector<float> x_rows, residual_rows, normed;
    const float* x = row_major(in[0], x_rows);
    if (norm_) {
      // x · w / RMS(x) per row, one fixed order of operations whatever M.
      const float* w = in[at++].data<float>();
      normed.resize(static_cast<size_t>(m * k));
      for (int64_t r = 0; r < m; r++) {
        const float* xr = x + r * k;
        float ss = 0.0f;
        for (int64_t i = 0; i < k; i++) ss += xr[i] * xr[i];
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(k) + eps_);
        for (int64_t i = 0; i < k; i++) normed[r * k + i] = xr[i] * inv * w[i];
      }
      x = normed.data();
    }
    const float* residual = residual_ ? row_major(in[at++], residual_rows) : nullptr;
    // x quantized once per distinct (group, bits): the int8 values are the
    // same, but their order follows the unpacked weights and the sums of x
    // follow the groups.
    thread_local Scratch scratch[3];
    std::vector<Args> as;
    for (size_t i = 0; i < mats; i++) {
      size_t same = 0;
      while (same < i && (groups_[same] != groups_[i] || bits_[same] != bits_[i])) same++;
      as.push_back(same < i ? as[same] : quantized_x(x, m, k, groups_[i], bits_[i], scratch[i]));
    }
    thread_local std::vector<float> gate_up;
    if (swiglu_) gate_up.resize(static_cast<size_t>(2 * m * in[1].shape(0)));
    for (size_t i = 0; i < mats; i++) {
      Args& a = as[i];
      a.w = reinterpret_cast<const uint8_t*>(in[1 + 3 * i].data<uint32_t>());
      a.s = in[2 + 3 * i].data<float>();
      a.b = in[3 + 3 * i].data<float>();
      a.n = in[1 + 3 * i].shape(0);
      a.y = swiglu_ ? gate_up.data() + i * m * a.n : out[i].data<float>();
    }
    products(as);
    // Epilogues: (y + bias) + residual, or silu(gate + bias) · (up + bias),
    // each as its composed ops would round it.
    if (swiglu_) {
      const int64_t n = as[0].n;
      float* y = out[0].data<float>();
      const float* g = gate_up.data();
      const float* u = g + m * n;
      for (int64_t r = 0; r < m; r++) {
        for (int64_t c = 0; c < n; c++) {
          const float gv = bias[0] ? g[r * n + c] + bias[0][c] : g[r * n + c];
          const float uv = bias[1] ? u[r * n + c] + bias[1][c] : u[r * n + c];
          y[r * n + c] = gv / (1.0f + exp_approx(-gv)) * uv;
        }
      }
      return;
    }
    for (size_t i = 0; i < mats; i++) {
      const int64_t n = as[i].n;
      float* y = out[i].data<float>();
      if (bias[i]) {
        for (int64_t r = 0; r < m; r++)
          for (int64_t c = 0; c < n; c++) y[r * n + c] += bias[i][c];
      }
      if (residual) {
        for (int64_t j = 0; j < m * n; j++) y[j] += residual[j];
      }
    }
  }

  FusedConfig cfg_;
};

// A weight input as the kernels read it (rows one after another). An
// evaluated row range of a fused matrix (Linear::fuse_outputs makes q/k/v and
// gate/up such views) already is: MLX's `contiguous` would copy it on every
// call.
mx::array as_rows(const mx::array& a, mx::Stream s) {
  if (a.is_available() && a.ndim() == 2 && a.strides(1) == 1 && a.strides(0) == a.shape(1)) return a;
  if (a.is_available() && a.ndim() == 1 && a.strides(0) == 1) return a;
  return mx::contiguous(a, false, s);
}

}  // namespace

std::optional<std::vector<mx::array>> fused_quantized_linear(const mx::array& x, const std::vector<FusedMatrix>& mats,
                                                             const std::optional<std::pair<mx::array, float>>& norm,
                                                             const std::optional<mx::array>& residual, bool swiglu,
                                                             const std::vector<mx::Shape>& out_shapes,
                                                             mx::StreamOrDevice s) {
  if (mats.empty() || mats.size() > 3 || (swiglu && mats.size() != 2) || (residual && (swiglu || mats.size() != 1)))
    return std::nullopt;
  if (!applies(x, s) || x.ndim() < 1) return std::nullopt;
  const int64_t k = static_cast<int64_t>(mats[0].w.shape(1)) * 32 / std::max(mats[0].bits, 1);
  if (k == 0 || static_cast<int64_t>(x.size()) % k != 0) return std::nullopt;
  const int64_t m = static_cast<int64_t>(x.size()) / k;
  auto stream = mx::to_stream(s);
  // x read as rows of K, whatever shape the caller gave it.
  std::vector<mx::array> inputs{x};
  std::vector<bool> has_bias;
  std::vector<int> groups, bits;
  std::vector<mx::array> biases;
  std::vector<mx::Shape> shapes;
  for (const auto& q : mats) {
    if (!weights_apply(q.w, q.scales, q.biases, q.group, q.bits, k)) return std::nullopt;
    groups.push_back(q.group);
    bits.push_back(q.bits);
    const int n = q.w.shape(0);
    if (swiglu && n != mats[0].w.shape(0)) return std::nullopt;
    for (const auto* a : {&q.w, &q.scales, &q.biases}) inputs.push_back(as_rows(*a, stream));
    has_bias.push_back(q.bias.has_value());
    if (q.bias) {
      if (q.bias->dtype() != mx::float32 || q.bias->size() != static_cast<size_t>(n)) return std::nullopt;
      biases.push_back(as_rows(*q.bias, stream));
    }
    if (!swiglu || shapes.empty()) {
      auto shape = x.shape();
      if (x.shape(-1) == k) {
        shape.back() = n;
      } else {
        shape = {static_cast<int>(m), n};
      }
      shapes.push_back(shape);
    }
  }
  if (!out_shapes.empty()) {
    if (out_shapes.size() != shapes.size()) return std::nullopt;
    for (size_t i = 0; i < shapes.size(); i++) {
      int64_t a = 1, b = 1;
      for (int d : out_shapes[i]) a *= d;
      for (int d : shapes[i]) b *= d;
      if (a != b) return std::nullopt;
    }
    shapes = out_shapes;
  }
  for (auto& b : biases) inputs.push_back(std::move(b));
  if (norm) {
    if (norm->first.dtype() != mx::float32 || norm->first.size() != static_cast<size_t>(k)) return std::nullopt;
    inputs.push_back(as_rows(norm->first, stream));
  }
  if (residual) {
    if (residual->dtype() != mx::float32 || residual->size() != static_cast<size_t>(m * mats[0].w.shape(0)))
      return std::nullopt;
    inputs.push_back(*residual);
  }
  auto prim = std::make_shared<FusedQuantizedKernel>(
      stream, FusedConfig{std::move(groups), std::move(bits), std::move(has_bias), norm.has_value(), norm ? norm->second : 0.0f,
                          residual.has_value(), swiglu, shapes});
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  return mx::array::make_arrays(std::move(shapes), dtypes, prim, inputs);
}

bool quantized_linear_applies(const mx::array& x, const mx::array& w, const mx::array& scales,
                              const mx::array& biases, int group, int bits, mx::StreamOrDevice s) {
  if (!applies(x, s) || x.ndim() < 1) return false;
  return weights_apply(w, scales, biases, group, bits, x.shape(-1));
}

mx::array quantized_linear(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, int group, int bits, mx::StreamOrDevice s) {
  if (!quantized_linear_applies(x, w, scales, biases, group, bits, s)) {
    throw std::invalid_argument(
        "quantized_linear kernel: float32 x on a CPU stream, 4-, 5- or 8-bit weights in groups of 32, 64 or 128 "
        "with float32 scales and biases");
  }
  auto stream = mx::to_stream(s);
  auto shape = x.shape();
  shape.back() = w.shape(0);
  return mx::array(shape, mx::float32, std::make_shared<QuantizedLinearKernel>(stream, group, bits),
                   {mx::contiguous(x, false, stream), as_rows(w, stream), as_rows(scales, stream),
                    as_rows(biases, stream)});
}

int quantized_kernel_level(int force) {
  if (force >= -1) forced_level.store(force, std::memory_order_relaxed);
  return active_level();
}

}  // namespace mlxe::kernels
