// The decode attention kernels (attend, combine) on float32 data under the
// CPU emulation (emu.h) against a float64 reference: RoPE of the queries and
// of the new key (full and partial, rotate-half and adjacent pairs), the new
// key and value written at `slot`, softmax attention over the slots, slot
// splits merged by combine, a full ring, left-padded rows, several query heads
// a KV head, q/k/v read from one packed projection's rows; and swiglu (a
// packed gate/up's silu(gate)·up). src.cc is the kernels' source, cut out of
// cuda_kernels.cc by the test.
#include <cstdio>
#include <random>
#include "src.cc"
using mlxe::AttnParams;

struct Case {
  const char* name;
  int B, KV, cap, n_keys, slot, pos, dims, traditional, splits;
  std::vector<int> rows;  // [pos, first valid slot] a batch row, or empty
  bool packed = false;    // q, k, v as one projection's rows [q | k | v]
};

// Relative L2 error of the output and of the written cache rows.
template <int D, int G>
double run_case(const Case& c, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> U(-1, 1);
  const int H = c.KV * G;
  std::vector<float> q(size_t(c.B) * H * D), k(size_t(c.B) * c.KV * D), v(k.size());
  std::vector<float> kc(size_t(c.B) * c.KV * c.cap * D), vc(kc.size()), inv(c.dims / 2);
  for (auto* a : {&q, &k, &v, &kc, &vc})
    for (auto& x : *a) x = U(rng);
  for (int j = 0; j < c.dims / 2; ++j) inv[j] = std::pow(10000.0f, -2.0f * j / c.dims);
  const std::vector<float> kc0 = kc, vc0 = vc;
  std::vector<float> out(size_t(c.B) * H * D, NAN), part(size_t(c.B) * c.KV * c.splits * G * (D + 2));
  AttnParams p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.ldq = H * D;
  p.ldk = c.KV * D;
  std::vector<float> qkv;
  if (c.packed) {
    const int ld = (H + 2 * c.KV) * D;
    for (int b = 0; b < c.B; ++b) {
      qkv.insert(qkv.end(), q.begin() + size_t(b) * H * D, q.begin() + size_t(b + 1) * H * D);
      qkv.insert(qkv.end(), k.begin() + size_t(b) * c.KV * D, k.begin() + size_t(b + 1) * c.KV * D);
      qkv.insert(qkv.end(), v.begin() + size_t(b) * c.KV * D, v.begin() + size_t(b + 1) * c.KV * D);
    }
    p.q = qkv.data();
    p.k = qkv.data() + size_t(H) * D;
    p.v = qkv.data() + size_t(H + c.KV) * D;
    p.ldq = p.ldk = ld;
  }
  p.kc = kc.data();
  p.vc = vc.data();
  p.out = out.data();
  p.part = c.splits > 1 ? part.data() : nullptr;
  p.inv_freq = inv.data();
  p.rows = c.rows.empty() ? nullptr : c.rows.data();
  p.H = H;
  p.KV = c.KV;
  p.cap = c.cap;
  p.slot = c.slot;
  p.n_keys = c.n_keys;
  p.pos = c.pos;
  p.dims = c.dims;
  p.traditional = c.traditional;
  p.rope_scale = 0.5f;
  p.scale = 1.0f / std::sqrt(float(D));
  launch({unsigned(c.KV), unsigned(c.B), unsigned(c.splits)}, 256, [&] { mlxe::attend<0, D, G, 256>(p); });
  if (c.splits > 1)
    launch({unsigned(H), unsigned(c.B), 1}, 128, [&] { mlxe::combine<0, D, G>(p, c.splits); });

  double num = 0, den = 0;
  bool finite = true;
  auto add = [&](double got, double want) {
    finite = finite && std::isfinite(got);
    num += (got - want) * (got - want);
    den += want * want;
  };
  for (int b = 0; b < c.B; ++b) {
    const int pos = c.rows.empty() ? c.pos : c.rows[2 * b], first = c.rows.empty() ? 0 : c.rows[2 * b + 1];
    auto rope = [&](const float* x, double* y) {
      for (int d = 0; d < D; ++d) y[d] = x[d];
      const int half = c.dims / 2;
      for (int j = 0; j < half; ++j) {
        const double a = float(pos) * p.rope_scale * inv[j];  // the angle as the kernel rounds it
        const int i1 = c.traditional ? 2 * j : j, i2 = c.traditional ? 2 * j + 1 : j + half;
        y[i1] = x[i1] * std::cos(a) - x[i2] * std::sin(a);
        y[i2] = x[i1] * std::sin(a) + x[i2] * std::cos(a);
      }
    };
    for (int kvh = 0; kvh < c.KV; ++kvh) {
      double kr[D];
      rope(&k[(size_t(b) * c.KV + kvh) * D], kr);
      const size_t row0 = (size_t(b) * c.KV + kvh) * c.cap;
      for (int d = 0; d < D; ++d) {
        add(kc[(row0 + c.slot) * D + d], kr[d]);
        add(vc[(row0 + c.slot) * D + d], v[(size_t(b) * c.KV + kvh) * D + d]);
      }
      for (int g = 0; g < G; ++g) {
        const int h = kvh * G + g;
        double qr[D];
        rope(&q[(size_t(b) * H + h) * D], qr);
        std::vector<double> s;
        double mx = -INFINITY;
        for (int t = first; t < c.n_keys; ++t) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qr[d] * (t == c.slot ? kr[d] : kc0[(row0 + t) * D + d]);
          s.push_back(dot * p.scale);
          mx = std::max(mx, s.back());
        }
        double l = 0;
        for (auto& x : s) l += (x = std::exp(x - mx));
        for (int d = 0; d < D; ++d) {
          double o = 0;
          for (int t = first; t < c.n_keys; ++t)
            o += s[t - first] * (t == c.slot ? v[(size_t(b) * c.KV + kvh) * D + d] : vc0[(row0 + t) * D + d]);
          add(out[(size_t(b) * H + h) * D + d], o / l);
        }
      }
    }
  }
  return finite ? std::sqrt(num / den) : INFINITY;
}

int main() {
  double worst = 0;
  auto report = [&](const char* name, double e) {
    std::printf("%-44s rel_l2 %.2e\n", name, e);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  };
  // name, B, KV, cap, n_keys, slot, pos, dims, traditional, splits, rows
  report("D64 G1 growing cache", run_case<64, 1>({"", 1, 2, 80, 70, 69, 69, 64, 0, 1, {}}, 1));
  report("D128 G4 full ring, partial adjacent RoPE, 3 splits",
         run_case<128, 4>({"", 2, 2, 300, 300, 17, 1000, 64, 1, 3, {}}, 2));
  report("D64 G8 left-padded rows, 2 splits",
         run_case<64, 8>({"", 2, 1, 64, 51, 50, 0, 64, 0, 2, {50, 0, 40, 10}}, 3));
  report("D128 G2 first token", run_case<128, 2>({"", 1, 2, 16, 1, 0, 0, 128, 0, 1, {}}, 4));
  report("D64 G4 600 slots, 4 splits", run_case<64, 4>({"", 1, 2, 640, 600, 599, 599, 64, 0, 4, {}}, 5));
  report("D64 G4 packed q/k/v, 3 rows, 2 splits",
         run_case<64, 4>({"", 3, 2, 96, 90, 89, 89, 64, 0, 2, {}, true}, 6));
  report("D128 G2 packed q/k/v, left-padded rows",
         run_case<128, 2>({"", 2, 2, 64, 40, 39, 0, 128, 0, 1, {39, 0, 30, 9}, true}, 7));
  {
    // swiglu: 3 rows of [gate (40) | up (40)] against float64.
    const int rows = 3, I = 40;
    std::mt19937 rng(8);
    std::uniform_real_distribution<float> U(-4, 4);
    std::vector<float> gu(size_t(rows) * 2 * I), out(size_t(rows) * I, NAN);
    for (auto& x : gu) x = U(rng);
    launch({unsigned((rows * I + 63) / 64), 1, 1}, 64, [&] { mlxe::swiglu<0>(gu.data(), out.data(), rows, I); });
    double num = 0, den = 0;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < I; ++i) {
        const double g = gu[size_t(r) * 2 * I + i], u = gu[size_t(r) * 2 * I + I + i];
        const double want = g / (1 + std::exp(-g)) * u, got = out[size_t(r) * I + i];
        num += (got - want) * (got - want);
        den += want * want;
      }
    report("swiglu, 3 rows of 2x40", std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
  }
  const bool pass = worst < 1e-5;
  std::printf("worst rel_l2 %.2e: %s\n", worst, pass ? "pass" : "FAIL");
  return pass ? 0 : 1;
}
