// The decode attention kernel (attend) on float32 data under the CPU
// emulation (emu.h) against a float64 reference: RoPE of the queries and of
// the new key (full and partial, rotate-half and adjacent pairs), the new key
// and value written at `slot`, softmax attention over the slots, slot splits
// merged by the last split to finish (its counters left at zero), a full
// ring, left-padded rows, several query heads a KV head, q/k/v read from one
// packed projection's rows; glu (a packed gate/up's silu(gate)·up, GEGLU's
// value·gelu(gate)); the dense matvecs (dmv, fdmv); and group norm. src.cc is the kernels' source, cut out
// of cuda_kernels.cc by the test.
#include <cstdio>
#include <array>
#include <random>
#include <string>
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
  std::vector<int> counters(size_t(c.B) * c.KV + 7, 0);
  p.counters = counters.data();
  p.counter_base = 7;
  launch({unsigned(c.KV), unsigned(c.B), unsigned(c.splits)}, 256, [&] { mlxe::attend<0, D, G>(p); });
  for (int n : counters)
    if (n != 0) return INFINITY;  // a counter not reset would break the next call

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
  report("D80 G2 (rows of 20 lanes), 2 splits", run_case<80, 2>({"", 1, 2, 200, 150, 149, 149, 80, 0, 2, {}}, 9));
  report("D128 G2 first token", run_case<128, 2>({"", 1, 2, 16, 1, 0, 0, 128, 0, 1, {}}, 4));
  report("D64 G4 600 slots, 4 splits", run_case<64, 4>({"", 1, 2, 640, 600, 599, 599, 64, 0, 4, {}}, 5));
  // The merge reads the splits' partials 8 at a time: a count past 8 and not a multiple, and the most.
  report("D128 G4 700 slots, 11 splits", run_case<128, 4>({"", 1, 2, 704, 700, 699, 699, 128, 0, 11, {}}, 10));
  report("D128 G4 2100 slots, 32 splits", run_case<128, 4>({"", 1, 1, 2112, 2100, 2099, 2099, 128, 0, 32, {}}, 11));
  // Eight heads of 128: the block's sums go through shared memory in two chunks of heads, and each thread
  // merges four output elements.
  report("D128 G8 500 slots, 5 splits", run_case<128, 8>({"", 1, 2, 512, 500, 499, 499, 128, 0, 5, {}}, 12));
  report("D128 G8 one split", run_case<128, 8>({"", 1, 1, 64, 60, 59, 59, 128, 0, 1, {}}, 13));
  report("D64 G4 packed q/k/v, 3 rows, 2 splits",
         run_case<64, 4>({"", 3, 2, 96, 90, 89, 89, 64, 0, 2, {}, true}, 6));
  report("D128 G2 packed q/k/v, left-padded rows",
         run_case<128, 2>({"", 2, 2, 64, 40, 39, 0, 128, 0, 1, {39, 0, 30, 9}, true}, 7));
  for (int act = 0; act < 2; ++act) {
    // glu: 3 rows of [a (40) | b (40)] against float64: silu(a)·b, a·gelu(b).
    const int rows = 3, I = 40;
    std::mt19937 rng(8);
    std::uniform_real_distribution<float> U(-4, 4);
    std::vector<float> gu(size_t(rows) * 2 * I), out(size_t(rows) * I, NAN);
    for (auto& x : gu) x = U(rng);
    launch({unsigned((rows * I + 63) / 64), 1, 1}, 64, [&] {
      if (act == 0) mlxe::glu<0, 0>(gu.data(), out.data(), rows, I);
      else mlxe::glu<0, 1>(gu.data(), out.data(), rows, I);
    });
    double num = 0, den = 0;
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < I; ++i) {
        const double a = gu[size_t(r) * 2 * I + i], b = gu[size_t(r) * 2 * I + I + i];
        const double want = act == 0 ? a / (1 + std::exp(-a)) * b : a * 0.5 * b * (1 + std::erf(b / std::sqrt(2.0)));
        const double got = out[size_t(r) * I + i];
        num += (got - want) * (got - want);
        den += want * want;
      }
    report(act == 0 ? "swiglu, 3 rows of 2x40" : "geglu, 3 rows of 2x40", std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
  }
  // add + RMS norm: 3 rows of K, h = a + b and rms_norm(h)·w against float64, at a block of 32 threads
  // (one to two chunks a thread) and of 64 (four).
  for (const auto [K, threads] : {std::pair{200, 32}, std::pair{1000, 64}}) {
    const int rows = 3;
    std::mt19937 rng(12 + K);
    std::uniform_real_distribution<float> U(-2, 2);
    std::vector<float> a(size_t(rows) * K), b(a.size()), w(K), h(a.size(), NAN), y(a.size(), NAN);
    for (auto& v : a) v = U(rng);
    for (auto& v : b) v = U(rng);
    for (auto& v : w) v = 1.0f + 0.5f * U(rng);
    launch({unsigned(rows), 1, 1}, threads, [&] { mlxe::add_rms<0>(a.data(), b.data(), w.data(), h.data(), y.data(), K, 1e-5f); });
    double num = 0, den = 0;
    for (int r = 0; r < rows; ++r) {
      double ss = 0;
      for (int i = 0; i < K; ++i) {
        const double s = double(a[size_t(r) * K + i]) + b[size_t(r) * K + i];
        ss += s * s;
        num += (h[size_t(r) * K + i] - s) * (h[size_t(r) * K + i] - s);
        den += s * s;
      }
      const double rs = 1.0 / std::sqrt(ss / K + 1e-5);
      for (int i = 0; i < K; ++i) {
        const double want = (double(a[size_t(r) * K + i]) + b[size_t(r) * K + i]) * rs * w[i];
        num += (y[size_t(r) * K + i] - want) * (y[size_t(r) * K + i] - want);
        den += want * want;
      }
    }
    report(K == 200 ? "add + rms norm, 3 rows of 200, 32 threads" : "add + rms norm, 3 rows of 1000, 64 threads",
           std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
  }
  // dense matvec: y (M, N) = x (M, K) · wᵀ against float64 — rows of x at a
  // stride, N not a multiple of a block's rows, K with a tail of fewer than
  // U chunks a lane; one and two rows a warp, 1 to 3 rows of x.
  for (const auto [M, N, K, rpw, sk] :
       {std::array{1, 37, 1000, 1, 1}, std::array{3, 70, 2052, 2, 2}, std::array{2, 9, 132, 2, 1}}) {
    const int ldx = K + 12;
    std::mt19937 rng(20 + K);
    std::uniform_real_distribution<float> U(-1, 1);
    std::vector<float> x(size_t(M) * ldx), w(size_t(N) * K), y(size_t(M) * N, NAN);
    for (auto& v : x) v = U(rng);
    for (auto& v : w) v = U(rng);
    const int per_block = 64 / 32 / sk * rpw;
    launch({unsigned((N + per_block - 1) / per_block), 1, 1}, 64, [&] {
      if (rpw == 1) mlxe::dmv<0, 4, 1, 4, 1>(x.data(), w.data(), y.data(), M, N, K, ldx);
      else if (sk == 2) mlxe::dmv<0, 4, 2, 3, 2>(x.data(), w.data(), y.data(), M, N, K, ldx);
      else mlxe::dmv<0, 4, 2, 3, 1>(x.data(), w.data(), y.data(), M, N, K, ldx);
    });
    double num = 0, den = 0;
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double want = 0;
        for (int k = 0; k < K; ++k) want += double(x[size_t(m) * ldx + k]) * w[size_t(n) * K + k];
        num += (y[size_t(m) * N + n] - want) * (y[size_t(m) * N + n] - want);
        den += want * want;
      }
    const std::string name = "dense matvec, " + std::to_string(M) + " rows of " + std::to_string(K) + " by " +
                             std::to_string(N) + ", " + std::to_string(rpw) + " a group of " + std::to_string(sk);
    report(name.c_str(), std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
  }
  // fused dense matvec (fdmv) against float64: RMS norm + three stacked
  // matrices split into three outputs with a bias; a residual; RMS norm +
  // SwiGLU over a gate and an up matrix; rows of x at a stride, from a block's
  // second row tile (blockIdx.y), N not a multiple of a block's rows, K with a
  // tail of fewer than U chunks a lane.
  {
    struct F {
      const char* name;
      int M, K, mode, norm, rpw, mt, sk;
      std::vector<int> ns;
      bool residual, bias;
    };
    for (const F& f :
         {F{"fdmv norm + 3 matrices + bias, 2 rows of 1000, 2 warps a row", 2, 1000, 0, 1, 2, 4, 2, {13, 4, 6}, false, true},
          F{"fdmv residual, 5 rows (tiles of 4) of 2052", 5, 2052, 0, 0, 1, 4, 1, {37}, true, false},
          F{"fdmv norm + swiglu, 3 rows of 132, 2 warps a row", 3, 132, 1, 1, 2, 2, 2, {9, 9}, false, false},
          F{"fdmv norm + swiglu, 1 row of 1000", 1, 1000, 1, 1, 2, 1, 1, {9, 9}, false, false}}) {
      const int ldx = f.K + 4, ldr = f.ns[0] + 3;
      std::mt19937 rng(40 + f.K);
      std::uniform_real_distribution<float> U(-1, 1);
      std::vector<float> x(size_t(f.M) * ldx), g(f.K), res(size_t(f.M) * ldr);
      for (auto& v : x) v = U(rng) * 3;
      for (auto& v : g) v = U(rng) + 1.5f;
      for (auto& v : res) v = U(rng);
      std::vector<std::vector<float>> w, bias, y(3);
      mlxe::Params p{};
      int end = 0, total = 0;
      for (size_t i = 0; i < 3; ++i) {
        if (i < f.ns.size()) {
          w.emplace_back(size_t(f.ns[i]) * f.K);
          for (auto& v : w.back()) v = U(rng) * 0.1f;
          bias.emplace_back(f.ns[i]);
          for (auto& v : bias.back()) v = U(rng);
          p.w[i] = w[i].data();
          p.bias[i] = f.bias ? bias[i].data() : nullptr;
          y[i].assign(size_t(f.M) * f.ns[i], NAN);
          if (f.mode == 0 || i == 0) p.y[i] = y[i].data();
          end = f.mode == 1 ? f.ns[0] : end + f.ns[i];
          total += f.ns[i];
        }
        p.n_end[i] = end;
      }
      p.x = x.data();
      p.norm = f.norm ? g.data() : nullptr;
      p.residual = f.residual ? res.data() : nullptr;
      p.M = f.M;
      p.K = f.K;
      p.ldx = ldx;
      p.ldr = ldr;
      p.eps = 1e-5f;
      const unsigned threads = 64;
      const int slots = f.mode == 1 ? f.ns[0] : (total + f.rpw - 1) / f.rpw, per_block = threads / 32 / f.sk;
      const dim3_ grid{unsigned((slots + per_block - 1) / per_block), unsigned((f.M + f.mt - 1) / f.mt), 1};
      launch(grid, threads, [&] {
        if (f.mode == 1 && f.sk == 2) mlxe::fdmv<0, 2, 2, 4, 1, 1, 2>(p);
        else if (f.mode == 1) mlxe::fdmv<0, 1, 2, 4, 1, 1, 1>(p);
        else if (f.norm) mlxe::fdmv<0, 4, 2, 3, 0, 1, 2>(p);
        else mlxe::fdmv<0, 4, 1, 4, 0, 0, 1>(p);
      });
      double num = 0, den = 0;
      auto add = [&](double got, double want) {
        num += (got - want) * (got - want);
        den += want * want;
      };
      for (int m = 0; m < f.M; ++m) {
        const float* xr = &x[size_t(m) * ldx];
        double inv = 1;
        if (f.norm) {
          double ss = 0;
          for (int k = 0; k < f.K; ++k) ss += double(xr[k]) * xr[k];
          inv = 1 / std::sqrt(ss / f.K + 1e-5);
        }
        auto dot = [&](int i, int n) {
          double s = 0;
          for (int k = 0; k < f.K; ++k) s += double(w[i][size_t(n) * f.K + k]) * xr[k] * (f.norm ? g[k] * inv : 1.0);
          return s;
        };
        if (f.mode == 1) {
          for (int n = 0; n < f.ns[0]; ++n) {
            const double a = dot(0, n), b = dot(1, n);
            add(y[0][size_t(m) * f.ns[0] + n], a / (1 + std::exp(-a)) * b);
          }
        } else {
          for (size_t i = 0; i < f.ns.size(); ++i)
            for (int n = 0; n < f.ns[i]; ++n)
              add(y[i][size_t(m) * f.ns[i] + n],
                  dot(int(i), n) + (f.bias ? bias[i][n] : 0) + (f.residual ? res[size_t(m) * ldr + n] : 0));
        }
      }
      report(f.name, std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
    }
  }
  // group norm (N, L, C) with G groups, its mean far from zero (the second
  // pass around each slice's mean keeps float32 exact), with and without SiLU.
  for (int silu = 0; silu < 2; ++silu) {
    const int N = 2, L = 300, C = 40, G = 4, slices = 3, cg = C / G;
    std::mt19937 rng(10 + silu);
    std::uniform_real_distribution<float> U(-1, 1);
    std::vector<float> x(size_t(N) * L * C), w(C), b(C), y(x.size(), NAN), part(size_t(N) * G * slices * 3);
    for (auto& v : x) v = 50.0f + U(rng);
    for (auto& v : w) v = 1.0f + 0.5f * U(rng);
    for (auto& v : b) v = U(rng);
    mlxe::GnParams p{x.data(), w.data(), b.data(), y.data(), part.data(), L, C, G, slices, 1e-5f, silu};
    launch({unsigned(G), unsigned(slices), unsigned(N)}, 64, [&] { mlxe::gn_stats<0>(p); });
    launch({2, unsigned(N), 1}, 64, [&] { mlxe::gn_apply<0>(p); });
    double num = 0, den = 0;
    for (int n = 0; n < N; ++n)
      for (int g = 0; g < G; ++g) {
        double mu = 0, var = 0;
        for (int l = 0; l < L; ++l)
          for (int j = 0; j < cg; ++j) mu += x[(size_t(n) * L + l) * C + g * cg + j];
        mu /= double(L) * cg;
        for (int l = 0; l < L; ++l)
          for (int j = 0; j < cg; ++j) {
            const double d = x[(size_t(n) * L + l) * C + g * cg + j] - mu;
            var += d * d;
          }
        var /= double(L) * cg;
        for (int l = 0; l < L; ++l)
          for (int j = 0; j < cg; ++j) {
            const size_t i = (size_t(n) * L + l) * C + g * cg + j;
            double want = (x[i] - mu) / std::sqrt(var + 1e-5) * w[g * cg + j] + b[g * cg + j];
            if (silu) want = want / (1 + std::exp(-want));
            num += (y[i] - want) * (y[i] - want);
            den += want * want;
          }
      }
    report(silu ? "group norm + silu, 2x300x40, 4 groups, 3 slices" : "group norm, 2x300x40, 4 groups, 3 slices",
           std::isfinite(num) ? std::sqrt(num / den) : INFINITY);
  }
  const bool pass = worst < 1e-5;
  std::printf("worst rel_l2 %.2e: %s\n", worst, pass ? "pass" : "FAIL");
  return pass ? 0 : 1;
}
