// Implementation of the engine-mlx bridge; see shim.h.
#include "engine-mlx/src/shim/shim.h"
#include "engine-mlx/src/ffi.rs.h"
#include "engine-mlx/src/shim/blas.h"
#include "engine-mlx/src/shim/cpu_kernels.h"
#ifdef MLXE_CUDA
#include "engine-mlx/src/shim/cuda_kernels.h"
#endif

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
// MLX's CPU allocator is plain malloc without a buffer cache, and glibc serves
// blocks over 128 KiB with a fresh mmap that the kernel page-faults and zeroes
// on first touch and unmaps on free: every activation of every layer paid that
// (15% of the CPU thread's time in an encoder). Serving up to 32 MiB from the
// heap and keeping 128 MiB of freed heap before trimming makes those buffers
// reusable. A process that sets MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
// itself keeps its own values.
static const bool mlxe_malloc_tuned = [] {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 32 << 20);
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") == nullptr) mallopt(M_TRIM_THRESHOLD, 128 << 20);
  return true;
}();
#ifdef MLXE_CUDA
// MLX's CUDA backend records kernels into CUDA graphs of up to
// MLX_MAX_OPS_PER_BUFFER nodes (100 on an H100) and launches each when full.
// Smaller graphs start the GPU sooner on a decode step, while the host still
// records the rest: 40 gave an 8B 4-bit decode +6% (H100, two rounds,
// xtask/bench/gpu/run_env.sh). A value set by the user wins.
static const bool mlxe_cuda_graphs_tuned = [] { return setenv("MLX_MAX_OPS_PER_BUFFER", "40", 0) == 0; }();
#endif

#endif

namespace mx = mlx::core;

namespace mlxe {
namespace {

// Dtype codes shared with the Rust `Dtype` enum (keep in sync).
mx::Dtype to_dtype(uint8_t code) {
  switch (code) {
    case 0: return mx::bool_;
    case 1: return mx::uint8;
    case 2: return mx::uint16;
    case 3: return mx::uint32;
    case 4: return mx::uint64;
    case 5: return mx::int8;
    case 6: return mx::int16;
    case 7: return mx::int32;
    case 8: return mx::int64;
    case 9: return mx::float16;
    case 10: return mx::float32;
    case 11: return mx::float64;
    case 12: return mx::bfloat16;
    case 13: return mx::complex64;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code));
}

uint8_t from_dtype(mx::Dtype d) {
  return static_cast<uint8_t>(d.val());
}

mx::Shape to_shape(rust::Slice<const int32_t> s) {
  return mx::Shape(s.begin(), s.end());
}

std::vector<int> to_ints(rust::Slice<const int32_t> s) {
  return std::vector<int>(s.begin(), s.end());
}

std::unique_ptr<Array> own(Array a) {
  return std::make_unique<Array>(std::move(a));
}

std::optional<Array> opt(const ArrayList& l) {
  if (l.items.empty()) return std::nullopt;
  return l.items[0];
}

std::unique_ptr<ArrayList> own_list(std::vector<Array> v) {
  auto l = std::make_unique<ArrayList>();
  l->items = std::move(v);
  return l;
}

template <typename T>
Array typed(const uint8_t* p, mx::Shape shape, mx::Dtype d) {
  return Array(reinterpret_cast<const T*>(p), std::move(shape), d);
}

}  // namespace

std::unique_ptr<ArrayList> list_new() { return std::make_unique<ArrayList>(); }
void list_push(ArrayList& l, const Array& a) { l.items.push_back(a); }
size_t list_len(const ArrayList& l) { return l.items.size(); }
std::unique_ptr<Array> list_get(const ArrayList& l, size_t i) {
  if (i >= l.items.size()) throw std::out_of_range("array list index out of range");
  return own(l.items[i]);
}

std::unique_ptr<Array> alloc_uninit(rust::Slice<const int32_t> shape, uint8_t code) {
  auto d = to_dtype(code);
  auto s = to_shape(shape);
  size_t n = 1;
  for (auto x : s) {
    if (x < 0) throw std::invalid_argument("negative dimension in shape");
    n *= static_cast<size_t>(x);
  }
  return own(Array(mx::allocator::malloc(n * d.size()), std::move(s), d));
}

// The buffer is fresh from alloc_uninit and not shared: writing it is safe.
uint8_t* array_data_mut(const Array& a) { return const_cast<uint8_t*>(a.data<uint8_t>()); }

// MLX's slices and copies share their input's buffer, so a small slice of a
// large weight keeps all of it alive; this evaluates `a` and copies its
// elements into a buffer of their own.
std::unique_ptr<Array> detached(const Array& a) {
  auto c = mx::contiguous(a);
  c.eval();
  Array out(mx::allocator::malloc(c.nbytes()), c.shape(), c.dtype());
  if (c.nbytes() > 0) std::memcpy(out.data<uint8_t>(), c.data<uint8_t>(), c.nbytes());
  return own(std::move(out));
}

std::unique_ptr<Array> from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape, uint8_t code) {
  auto d = to_dtype(code);
  auto s = to_shape(shape);
  size_t n = 1;
  for (auto x : s) {
    if (x < 0) throw std::invalid_argument("negative dimension in shape");
    n *= static_cast<size_t>(x);
  }
  if (n * d.size() != data.size()) {
    throw std::invalid_argument("data has " + std::to_string(data.size()) + " bytes but shape needs " +
                                std::to_string(n * d.size()));
  }
  const uint8_t* p = data.data();
  switch (d.val()) {
    case mx::Dtype::Val::bool_: return own(typed<bool>(p, s, d));
    case mx::Dtype::Val::uint8: return own(typed<uint8_t>(p, s, d));
    case mx::Dtype::Val::uint16: return own(typed<uint16_t>(p, s, d));
    case mx::Dtype::Val::uint32: return own(typed<uint32_t>(p, s, d));
    case mx::Dtype::Val::uint64: return own(typed<uint64_t>(p, s, d));
    case mx::Dtype::Val::int8: return own(typed<int8_t>(p, s, d));
    case mx::Dtype::Val::int16: return own(typed<int16_t>(p, s, d));
    case mx::Dtype::Val::int32: return own(typed<int32_t>(p, s, d));
    case mx::Dtype::Val::int64: return own(typed<int64_t>(p, s, d));
    case mx::Dtype::Val::float16: return own(typed<mx::float16_t>(p, s, d));
    case mx::Dtype::Val::float32: return own(typed<float>(p, s, d));
    case mx::Dtype::Val::float64: return own(typed<double>(p, s, d));
    case mx::Dtype::Val::bfloat16: return own(typed<mx::bfloat16_t>(p, s, d));
    case mx::Dtype::Val::complex64: return own(typed<mx::complex64_t>(p, s, d));
  }
  throw std::invalid_argument("unsupported dtype");
}

std::unique_ptr<Array> full(rust::Slice<const int32_t> shape, double value, uint8_t code) {
  auto d = to_dtype(code);
  return own(mx::full(to_shape(shape), mx::astype(Array(value, mx::float64), d, mx::Device::cpu), d));
}

std::unique_ptr<Array> arange(double start, double stop, double step, uint8_t code) {
  return own(mx::arange(start, stop, step, to_dtype(code)));
}

std::unique_ptr<Array> clone_array(const Array& a) { return own(a); }
rust::Vec<int32_t> shape(const Array& a) {
  rust::Vec<int32_t> v;
  for (auto x : a.shape()) v.push_back(x);
  return v;
}
uint8_t dtype(const Array& a) { return from_dtype(a.dtype()); }
size_t size(const Array& a) { return a.size(); }
size_t nbytes(const Array& a) { return a.nbytes(); }

// One memcpy into a buffer Rust allocated: rust::Vec::push_back costs several
// FFI calls per byte (~10 ms per MB), too slow for activations.
// Reading back must not add ops: a new op (contiguous, astype) would be queued
// behind work already scheduled with async_eval, so the read would wait for
// that later work and the decode loop would lose its host/device overlap.
// Evaluate the array itself and convert on the host instead.
void copy_bytes(const Array& a, rust::Slice<uint8_t> out) {
  Array c = a;
  c.eval();
  if (!c.flags().row_contiguous) {
    c = mx::contiguous(c);
    c.eval();
  }
  if (c.nbytes() != out.size()) {
    throw std::invalid_argument("copy_bytes: array has " + std::to_string(c.nbytes()) + " bytes, buffer " +
                                std::to_string(out.size()));
  }
  if (c.nbytes() > 0) std::memcpy(out.data(), c.data<uint8_t>(), c.nbytes());
}

namespace {
template <typename R>
R read_scalar(const Array& a) {
  if (a.size() != 1) throw std::invalid_argument("item() needs an array of exactly one element, got " + std::to_string(a.size()));
  Array c = a;
  c.eval();
  switch (c.dtype().val()) {
    case mx::Dtype::Val::bool_: return static_cast<R>(c.item<bool>());
    case mx::Dtype::Val::uint8: return static_cast<R>(c.item<uint8_t>());
    case mx::Dtype::Val::uint16: return static_cast<R>(c.item<uint16_t>());
    case mx::Dtype::Val::uint32: return static_cast<R>(c.item<uint32_t>());
    case mx::Dtype::Val::uint64: return static_cast<R>(c.item<uint64_t>());
    case mx::Dtype::Val::int8: return static_cast<R>(c.item<int8_t>());
    case mx::Dtype::Val::int16: return static_cast<R>(c.item<int16_t>());
    case mx::Dtype::Val::int32: return static_cast<R>(c.item<int32_t>());
    case mx::Dtype::Val::int64: return static_cast<R>(c.item<int64_t>());
    case mx::Dtype::Val::float16: return static_cast<R>(static_cast<float>(c.item<mx::float16_t>()));
    case mx::Dtype::Val::float32: return static_cast<R>(c.item<float>());
    case mx::Dtype::Val::float64: return static_cast<R>(c.item<double>());
    case mx::Dtype::Val::bfloat16: return static_cast<R>(static_cast<float>(c.item<mx::bfloat16_t>()));
    case mx::Dtype::Val::complex64: throw std::invalid_argument("item() of a complex array");
  }
  throw std::invalid_argument("unsupported dtype");
}
}  // namespace

double item_f64(const Array& a) { return read_scalar<double>(a); }
int64_t item_i64(const Array& a) { return read_scalar<int64_t>(a); }

void eval(const ArrayList& l) { mx::eval(l.items); }
// Work scheduled with async_eval may still run in MLX's stream thread when the
// process exits; tearing MLX and BLAS down under it hangs or crashes. After the
// first async_eval (so after MLX's scheduler exists, and its destructor was
// registered before ours), an exit handler waits for that work: handlers run in
// reverse order, so ours runs while the scheduler is still alive.
void async_eval(const ArrayList& l) {
  mx::async_eval(l.items);
  static std::once_flag registered;
  std::call_once(registered, [] {
    std::atexit([] {
      try {
        mx::synchronize();
      } catch (...) {
      }
    });
  });
}
std::unique_ptr<Array> astype(const Array& a, uint8_t code) { return own(mx::astype(a, to_dtype(code))); }

// Unary op codes shared with Rust `UnaryOp`.
std::unique_ptr<Array> unary(const Array& a, uint8_t op) {
  switch (op) {
    case 0: return own(mx::negative(a));
    case 1: return own(mx::abs(a));
    case 2: return own(mx::exp(a));
    case 3: return own(mx::log(a));
    case 4: return own(mx::sqrt(a));
    case 5: return own(mx::rsqrt(a));
    case 6: return own(mx::square(a));
    case 7: return own(mx::sin(a));
    case 8: return own(mx::cos(a));
    case 9: return own(mx::tanh(a));
    case 10: return own(mx::sigmoid(a));
    case 11: return own(mx::erf(a));
    case 12: return own(mx::log1p(a));
    case 13: return own(mx::floor(a));
    case 14: return own(mx::ceil(a));
    case 15: return own(mx::logical_not(a));
    case 16: return own(mx::reciprocal(a));
    case 17: return own(mx::sign(a));
    case 18: return own(mx::stop_gradient(a));
    case 19: return own(mx::round(a));
  }
  throw std::invalid_argument("unknown unary op");
}

// Binary op codes shared with Rust `BinaryOp`.
std::unique_ptr<Array> binary(const Array& a, const Array& b, uint8_t op) {
  switch (op) {
    case 0: return own(mx::add(a, b));
    case 1: return own(mx::subtract(a, b));
    case 2: return own(mx::multiply(a, b));
    case 3: return own(mx::divide(a, b));
    case 4: return own(mx::power(a, b));
    case 5: return own(mx::maximum(a, b));
    case 6: return own(mx::minimum(a, b));
    case 7: return own(mx::equal(a, b));
    case 8: return own(mx::not_equal(a, b));
    case 9: return own(mx::less(a, b));
    case 10: return own(mx::less_equal(a, b));
    case 11: return own(mx::greater(a, b));
    case 12: return own(mx::greater_equal(a, b));
    case 13: return own(mx::logical_and(a, b));
    case 14: return own(mx::logical_or(a, b));
    case 15: return own(mx::remainder(a, b));
    case 16: return own(mx::floor_divide(a, b));
  }
  throw std::invalid_argument("unknown binary op");
}

std::unique_ptr<Array> where_(const Array& c, const Array& x, const Array& y) { return own(mx::where(c, x, y)); }
std::unique_ptr<Array> clip(const Array& a, double lo, double hi) {
  return own(mx::clip(a, Array(static_cast<float>(lo)), Array(static_cast<float>(hi))));
}

std::unique_ptr<Array> matmul(const Array& a, const Array& b) { return own(mx::matmul(a, b)); }
std::unique_ptr<Array> addmm(const Array& c, const Array& a, const Array& b, float alpha, float beta) {
  return own(mx::addmm(c, a, b, alpha, beta));
}

std::unique_ptr<Array> reshape(const Array& a, rust::Slice<const int32_t> s) { return own(mx::reshape(a, to_shape(s))); }
std::unique_ptr<Array> transpose(const Array& a, rust::Slice<const int32_t> axes) {
  if (axes.empty()) return own(mx::transpose(a));
  return own(mx::transpose(a, to_ints(axes)));
}
std::unique_ptr<Array> swapaxes(const Array& a, int32_t a1, int32_t a2) { return own(mx::swapaxes(a, a1, a2)); }
std::unique_ptr<Array> expand_dims(const Array& a, int32_t axis) { return own(mx::expand_dims(a, axis)); }
std::unique_ptr<Array> squeeze(const Array& a, int32_t axis) { return own(mx::squeeze(a, axis)); }
std::unique_ptr<Array> concatenate(const ArrayList& l, int32_t axis) { return own(mx::concatenate(l.items, axis)); }
std::unique_ptr<Array> stack(const ArrayList& l, int32_t axis) { return own(mx::stack(l.items, axis)); }
std::unique_ptr<ArrayList> split_sections(const Array& a, int32_t n, int32_t axis) { return own_list(mx::split(a, n, axis)); }
std::unique_ptr<ArrayList> split_at(const Array& a, rust::Slice<const int32_t> idx, int32_t axis) {
  return own_list(mx::split(a, to_shape(idx), axis));
}
std::unique_ptr<Array> slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides) {
  return own(mx::slice(a, to_shape(start), to_shape(stop), to_shape(strides)));
}
std::unique_ptr<Array> slice_update(const Array& src, const Array& update, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides) {
  return own(mx::slice_update(src, update, to_shape(start), to_shape(stop), to_shape(strides)));
}
std::unique_ptr<Array> take(const Array& a, const Array& indices, int32_t axis) { return own(mx::take(a, indices, axis)); }
std::unique_ptr<Array> take_along_axis(const Array& a, const Array& indices, int32_t axis) {
  return own(mx::take_along_axis(a, indices, axis));
}
std::unique_ptr<Array> put_along_axis(const Array& a, const Array& indices, const Array& values, int32_t axis) {
  return own(mx::put_along_axis(a, indices, values, axis));
}
std::unique_ptr<Array> pad(const Array& a, rust::Slice<const int32_t> axes, rust::Slice<const int32_t> low, rust::Slice<const int32_t> high, double value) {
  return own(mx::pad(a, to_ints(axes), to_shape(low), to_shape(high), mx::astype(Array(value, mx::float64), a.dtype(), mx::Device::cpu)));
}
std::unique_ptr<Array> repeat(const Array& a, int32_t repeats, int32_t axis) { return own(mx::repeat(a, repeats, axis)); }
std::unique_ptr<Array> tile(const Array& a, rust::Slice<const int32_t> reps) { return own(mx::tile(a, to_ints(reps))); }
std::unique_ptr<Array> broadcast_to(const Array& a, rust::Slice<const int32_t> s) { return own(mx::broadcast_to(a, to_shape(s))); }
std::unique_ptr<Array> contiguous(const Array& a) { return own(mx::contiguous(a)); }

// Reduction op codes shared with Rust `ReduceOp`.
std::unique_ptr<Array> reduce(const Array& a, rust::Slice<const int32_t> axes_s, bool keepdims, uint8_t op) {
  auto axes = to_ints(axes_s);
  if (axes.empty()) {
    for (int i = 0; i < static_cast<int>(a.ndim()); ++i) axes.push_back(i);
  }
  switch (op) {
    case 0: return own(mx::sum(a, axes, keepdims));
    case 1: return own(mx::mean(a, axes, keepdims));
    case 2: return own(mx::max(a, axes, keepdims));
    case 3: return own(mx::min(a, axes, keepdims));
    case 4: return own(mx::prod(a, axes, keepdims));
    case 5: return own(mx::all(a, axes, keepdims));
    case 6: return own(mx::any(a, axes, keepdims));
    case 7: return own(mx::var(a, axes, keepdims));
  }
  throw std::invalid_argument("unknown reduction");
}

std::unique_ptr<Array> softmax(const Array& a, rust::Slice<const int32_t> axes, bool precise) {
  if (axes.size() == 1 && a.ndim() > 0 && (axes[0] == -1 || axes[0] == static_cast<int32_t>(a.ndim()) - 1) &&
      kernels::applies(a)) {
    return own(kernels::softmax_last(a));
  }
  return own(mx::softmax(a, to_ints(axes), precise));
}
std::unique_ptr<Array> gelu(const Array& a) {
  if (kernels::applies(a)) return own(kernels::gelu(a));
  return own(mx::multiply(mx::multiply(a, Array(0.5f, a.dtype())),
                          mx::add(Array(1.0f, a.dtype()), mx::erf(mx::multiply(a, Array(float(M_SQRT1_2), a.dtype()))))));
}
std::unique_ptr<Array> silu(const Array& a) {
  if (kernels::applies(a)) return own(kernels::silu(a));
  return own(mx::multiply(a, mx::sigmoid(a)));
}
std::unique_ptr<Array> logsumexp(const Array& a, rust::Slice<const int32_t> axes, bool keepdims) {
  return own(mx::logsumexp(a, to_ints(axes), keepdims));
}
std::unique_ptr<Array> argmax(const Array& a, int32_t axis, bool keepdims) { return own(mx::argmax(a, axis, keepdims)); }
std::unique_ptr<Array> argmin(const Array& a, int32_t axis, bool keepdims) { return own(mx::argmin(a, axis, keepdims)); }
std::unique_ptr<Array> sort(const Array& a, int32_t axis) { return own(mx::sort(a, axis)); }
std::unique_ptr<Array> argsort(const Array& a, int32_t axis) { return own(mx::argsort(a, axis)); }
std::unique_ptr<Array> argpartition(const Array& a, int32_t kth, int32_t axis) { return own(mx::argpartition(a, kth, axis)); }
std::unique_ptr<Array> cumsum(const Array& a, int32_t axis, bool reverse, bool inclusive) {
  return own(mx::cumsum(a, axis, reverse, inclusive));
}

std::unique_ptr<Array> conv1d(const Array& x, const Array& w, int32_t stride, int32_t padding, int32_t dilation, int32_t groups) {
  return own(mx::conv1d(x, w, stride, padding, dilation, groups));
}
std::unique_ptr<Array> conv2d(const Array& x, const Array& w, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t dh, int32_t dw, int32_t groups) {
  return own(mx::conv2d(x, w, {sh, sw}, {ph, pw}, {dh, dw}, groups));
}

std::unique_ptr<Array> random_key(uint64_t seed) { return own(mx::random::key(seed)); }
void random_seed(uint64_t seed) { mx::random::seed(seed); }
std::unique_ptr<ArrayList> random_split(const Array& key, int32_t num) {
  auto keys = mx::random::split(key, num);
  std::vector<Array> out;
  for (int i = 0; i < num; ++i) out.push_back(mx::take(keys, i, 0));
  return own_list(std::move(out));
}
std::unique_ptr<Array> random_normal(rust::Slice<const int32_t> shape, uint8_t code, float loc, float scale, const ArrayList& key) {
  return own(mx::random::normal(to_shape(shape), to_dtype(code), loc, scale, opt(key)));
}
std::unique_ptr<Array> random_uniform(rust::Slice<const int32_t> shape, uint8_t code, float low, float high, const ArrayList& key) {
  return own(mx::random::uniform(Array(low), Array(high), to_shape(shape), to_dtype(code), opt(key)));
}
std::unique_ptr<Array> random_categorical(const Array& logits, int32_t axis, const ArrayList& key) {
  return own(mx::random::categorical(logits, axis, opt(key)));
}

// MLX computes attention on the CPU from plain ops (there is no fused CPU
// kernel); this does the same with the vectorised softmax, which is where
// MLX's scalar exp made CPU attention slow.
Array sdpa_cpu(Array q, Array k, Array v, float scale, const std::string& mode, std::optional<Array> mask) {
  const int b = q.shape(0), h = q.shape(1), lq = q.shape(2), d = q.shape(3);
  const int hkv = k.shape(1), lk = k.shape(2);
  const int rep = h / hkv;
  q = mx::multiply(q, Array(scale, q.dtype()));
  if (rep > 1) {
    // Grouped queries: (B, Hkv, rep, Lq, D) against (B, Hkv, 1, Lk, D).
    q = mx::reshape(q, {b, hkv, rep, lq, d});
    k = mx::expand_dims(k, 2);
    v = mx::expand_dims(v, 2);
    if (mask && mask->ndim() >= 3) {
      mask = mask->shape(-3) == h ? mx::unflatten(*mask, -3, {hkv, rep}) : mx::expand_dims(*mask, -3);
    }
  }
  auto scores = mx::matmul(q, mx::swapaxes(k, -1, -2));
  const Array neg_inf(-std::numeric_limits<float>::infinity(), scores.dtype());
  if (mode == "causal") {
    auto rows = mx::expand_dims(mx::arange(lk - lq, lk, mx::int32), 1);
    auto cols = mx::expand_dims(mx::arange(0, lk, mx::int32), 0);
    scores = mx::where(mx::greater_equal(rows, cols), scores, neg_inf);
  } else if (mask) {
    scores = mask->dtype() == mx::bool_ ? mx::where(*mask, scores, neg_inf)
                                        : mx::add(scores, mx::astype(*mask, scores.dtype()));
  }
  auto probs = kernels::softmax_last(scores);
  auto out = mx::matmul(probs, v);
  return rep > 1 ? mx::reshape(out, {b, h, lq, d}) : out;
}

std::unique_ptr<Array> sdpa(const Array& q, const Array& k, const Array& v, float scale, rust::Str mask_mode, const ArrayList& mask) {
  std::string mode(mask_mode);
  auto m = opt(mask);
  if (kernels::applies(q) && k.dtype() == mx::float32 && v.dtype() == mx::float32 && q.ndim() == 4 && k.ndim() == 4 &&
      v.ndim() == 4 && k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0 && (!m || m->dtype() == mx::bool_ || m->dtype() == mx::float32)) {
    return own(sdpa_cpu(q, k, v, scale, mode, m));
  }
  return own(mx::fast::scaled_dot_product_attention(q, k, v, scale, mode, m));
}
std::unique_ptr<Array> rms_norm(const Array& x, const ArrayList& weight, float eps) {
  return own(mx::fast::rms_norm(x, opt(weight), eps));
}
std::unique_ptr<Array> layer_norm(const Array& x, const ArrayList& residual, const ArrayList& weight, const ArrayList& bias, float eps) {
  auto r = opt(residual);
  if (kernels::applies(x) && x.ndim() > 0 && (!r || (r->dtype() == mx::float32 && r->shape() == x.shape()))) {
    return own(kernels::layer_norm(x, r, opt(weight), opt(bias), eps));
  }
  return own(mx::fast::layer_norm(r ? mx::add(x, *r) : x, opt(weight), opt(bias), eps));
}

bool cache_attention_applies(const Array& q, const Array& k, const Array& v) {
  return kernels::cache_attention_applies(q, k, v);
}
std::unique_ptr<Array> cache_attention(const Array& q, const Array& k, const Array& v, float scale, rust::Slice<const int32_t> pads) {
  return own(kernels::cache_attention(q, k, v, scale, std::vector<int32_t>(pads.begin(), pads.end())));
}
// Convolution + bias: our CPU kernel for float32 on the CPU, else MLX's conv
// (im2col and a GEMM on the CPU) and an add.
std::unique_ptr<Array> conv2d_bias(const Array& x, const Array& w, const ArrayList& bias, int32_t sh, int32_t sw, int32_t ph,
                                   int32_t pw) {
  auto b = opt(bias);
  if (kernels::conv2d_applies(x, w, sh, sw, ph, pw, 1, 1, 1) && (!b || b->dtype() == mx::float32)) {
    return own(kernels::conv2d(x, w, b, sh, sw, ph, pw));
  }
  auto y = mx::conv2d(x, w, {sh, sw}, {ph, pw}, {1, 1}, 1);
  return own(b ? mx::add(y, *b) : y);
}

bool conv_weight_packs(const Array& w) { return kernels::conv_weight_packs(w); }
bool linear_weight_packs(const Array& w) { return kernels::linear_weight_packs(w); }
std::unique_ptr<Array> pack_conv_weight(const Array& w, int32_t sh, int32_t sw) {
  return own(kernels::pack_conv_weight(w, sh, sw));
}
std::unique_ptr<Array> conv2d_packed(const Array& x, const Array& packed, rust::Slice<const int32_t> shape,
                                     const ArrayList& bias, int32_t sh, int32_t sw, int32_t ph, int32_t pw) {
  if (shape.size() != 4) throw std::invalid_argument("conv2d_packed: the weight shape is (O, KH, KW, I)");
  auto b = opt(bias);
  if (b && b->dtype() != mx::float32) throw std::invalid_argument("conv2d_packed: the bias must be float32");
  return own(kernels::conv2d_packed(x, packed, {shape[0], shape[1], shape[2], shape[3]}, b, sh, sw, ph, pw));
}

// Group norm over channels-last x (N, ..., C): the fused CPU kernel for
// float32 on the CPU, else MLX's reductions over (positions, channels of a group).
std::unique_ptr<Array> group_norm(const Array& x, int32_t groups, const Array& weight, const Array& bias, float eps, bool silu) {
  if (kernels::applies(x) && x.ndim() >= 2) return own(kernels::group_norm(x, groups, weight, bias, eps, silu));
  const auto shape = x.shape();
  const int n = shape[0], c = shape.back();
  auto g = mx::reshape(x, {n, -1, groups, c / groups});
  auto mean = mx::mean(g, {1, 3}, true);
  auto var = mx::var(g, {1, 3}, true);
  auto normed = mx::multiply(mx::subtract(g, mean), mx::rsqrt(mx::add(var, Array(eps, var.dtype()))));
  auto y = mx::add(mx::multiply(mx::reshape(normed, shape), weight), bias);
  return own(silu ? mx::multiply(y, mx::sigmoid(y)) : y);
}

// GEGLU (value · GELU(gate), value the first half of the last axis): one CPU
// kernel pass for float32 on the CPU, one CUDA kernel on the GPU, else MLX's ops.
std::unique_ptr<Array> geglu(const Array& x) {
  if (x.ndim() == 0 || x.shape(-1) % 2 != 0) throw std::invalid_argument("geglu: the last axis must be even");
  if (kernels::applies(x)) return own(kernels::geglu(x));
#ifdef MLXE_CUDA
  if (auto y = cuda::geglu(x)) return own(*std::move(y));
#endif
  auto parts = mx::split(x, 2, -1);
  auto& g = parts[1];
  auto gelu = mx::multiply(mx::multiply(g, Array(0.5f, g.dtype())),
                           mx::add(Array(1.0f, g.dtype()), mx::erf(mx::multiply(g, Array(float(M_SQRT1_2), g.dtype())))));
  return own(mx::multiply(parts[0], gelu));
}

// Multi-head attention over (B, L, H·D) queries and (B, S, H·D) keys/values:
// the CPU kernel for float32 on the CPU, else MLX's fused attention.
std::unique_ptr<Array> attention(const Array& q, const Array& k, const Array& v, int32_t heads, float scale) {
  if (q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 || heads <= 0 || q.shape(2) % heads != 0 ||
      k.shape(2) != q.shape(2) || v.shape() != k.shape() || k.shape(0) != q.shape(0)) {
    throw std::invalid_argument("attention: q (B, L, H·D), k and v (B, S, H·D) with H·D divisible by heads");
  }
  if (kernels::applies(q) && k.dtype() == mx::float32 && v.dtype() == mx::float32) {
    return own(kernels::attention(q, k, v, heads, scale));
  }
  const int b = q.shape(0), l = q.shape(1), s = k.shape(1), d = q.shape(2) / heads;
  auto split = [&](const Array& t, int len) { return mx::transpose(mx::reshape(t, {b, len, heads, d}), {0, 2, 1, 3}); };
  auto o = mx::fast::scaled_dot_product_attention(split(q, l), split(k, s), split(v, s), scale, "", std::nullopt);
  return own(mx::reshape(mx::transpose(o, {0, 2, 1, 3}), {b, l, heads * d}));
}

std::unique_ptr<Array> packed_attention(const Array& qkv, rust::Slice<const int32_t> lengths, int32_t heads, float scale) {
  if (qkv.ndim() != 2 || heads <= 0 || qkv.shape(1) % (3 * heads) != 0) {
    throw std::invalid_argument("packed_attention: qkv must be (tokens, 3·heads·head_dim)");
  }
  int64_t total = 0;
  int32_t longest = 0;
  for (auto n : lengths) {
    if (n < 0) throw std::invalid_argument("packed_attention: negative sequence length");
    total += n;
    longest = std::max(longest, n);
  }
  if (total != qkv.shape(0)) {
    throw std::invalid_argument("packed_attention: the lengths add up to " + std::to_string(total) + " tokens, qkv has " +
                                std::to_string(qkv.shape(0)));
  }
  std::vector<int32_t> lens(lengths.begin(), lengths.end());
  // The kernel keeps a head's queries on the stack: head_dim up to 256.
  if (kernels::applies(qkv) && qkv.shape(1) / (3 * heads) <= 256) {
    return own(kernels::packed_attention(qkv, std::move(lens), heads, scale));
  }
  // Elsewhere: pad to (B, L), attend with a key mask, unpad.
  const int b = static_cast<int>(lens.size()), l = std::max(longest, 1), t = static_cast<int>(total);
  const int width = qkv.shape(1) / 3, d = width / heads;
  std::vector<int32_t> pad_index(static_cast<size_t>(b) * l, t), unpad_index;
  std::vector<uint8_t> valid(static_cast<size_t>(b) * l, 0);
  unpad_index.reserve(t);
  for (int i = 0, off = 0; i < b; off += lens[i], i++) {
    for (int j = 0; j < lens[i]; j++) {
      pad_index[i * l + j] = off + j;
      valid[i * l + j] = 1;
      unpad_index.push_back(i * l + j);
    }
  }
  auto rows = mx::concatenate({qkv, mx::zeros({1, qkv.shape(1)}, qkv.dtype())}, 0);
  auto padded = mx::take(rows, Array(pad_index.data(), {b * l}, mx::int32), 0);
  auto parts = mx::split(mx::transpose(mx::reshape(padded, {b, l, 3, heads, d}), {2, 0, 3, 1, 4}), 3, 0);
  auto mask = mx::reshape(Array(reinterpret_cast<const bool*>(valid.data()), {b * l}, mx::bool_), {b, 1, 1, l});
  auto out = mx::fast::scaled_dot_product_attention(mx::squeeze(parts[0], 0), mx::squeeze(parts[1], 0),
                                                    mx::squeeze(parts[2], 0), scale, "array", mask);
  out = mx::reshape(mx::transpose(out, {0, 2, 1, 3}), {b * l, width});
  return own(mx::take(out, Array(unpad_index.data(), {t}, mx::int32), 0));
}
std::unique_ptr<Array> rope(const Array& x, int32_t dims, bool traditional, float base, bool has_base, float scale, int32_t offset, const ArrayList& freqs) {
  std::optional<float> b = has_base ? std::optional<float>(base) : std::nullopt;
  if (kernels::rope_applies(x, dims)) return own(kernels::rope(x, dims, traditional, b, scale, offset, opt(freqs)));
  return own(mx::fast::rope(x, dims, traditional, b, scale, offset, opt(freqs)));
}
std::unique_ptr<Array> linear(const Array& x, const Array& w) {
#ifdef MLXE_CUDA
  if (auto y = cuda::dense_matvec(x, w)) return own(std::move(*y));
#endif
  return own(kernels::linear(x, w));
}
// x · wᵀ + bias: the bias fused into our threaded sgemm where it runs (more
// rows than the skinny kernel takes, float32 on the CPU), else added after.
std::unique_ptr<Array> linear_bias(const Array& x, const Array& w, const Array& bias) {
  if (kernels::gemm_applies(x, w) && x.ndim() >= 1 && x.size() / std::max(1, w.shape(1)) > kernels::SKINNY_ROWS &&
      bias.dtype() == mx::float32) {
    return own(kernels::gemm(x, w, bias));
  }
  return own(mx::add(kernels::linear(x, w), bias));
}
std::unique_ptr<Array> linear_rows(const Array& x, const Array& w, const ArrayList& bias) {
  auto b = opt(bias);
  if (kernels::gemm_applies(x, w) && x.ndim() >= 1 && x.size() / std::max(1, w.shape(1)) > kernels::SKINNY_ROWS &&
      (!b || b->dtype() == mx::float32)) {
    return own(kernels::gemm(x, w, b, {}, true));
  }
  return b ? linear_bias(x, w, *b) : linear(x, w);
}
std::unique_ptr<Array> rope_rows(const Array& x, int32_t dims, bool traditional, float base, bool has_base, float scale, const Array& offsets, const ArrayList& freqs) {
  std::optional<float> b = has_base ? std::optional<float>(base) : std::nullopt;
  if (kernels::rope_applies(x, dims) && (offsets.size() == 1 || offsets.size() == static_cast<size_t>(x.shape(0))))
    return own(kernels::rope(x, dims, traditional, b, scale, offsets, opt(freqs)));
  return own(mx::fast::rope(x, dims, traditional, b, scale, offsets, opt(freqs)));
}

std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits) {
  return own_list(mx::quantize(w, group_size, bits));
}
std::unique_ptr<Array> dequantize(const Array& w, const Array& scales, const ArrayList& biases, int32_t group_size, int32_t bits) {
  return own(mx::dequantize(w, scales, opt(biases), group_size, bits));
}
std::unique_ptr<Array> quantized_matmul(const Array& x, const Array& w, const Array& scales, const ArrayList& biases, bool transpose, int32_t group_size, int32_t bits, bool int8_kernels) {
#ifdef MLXE_CUDA
  // Decode-sized batches on the GPU: our matvec, one pass over the weights.
  if (auto y = cuda::quantized_matmul(x, w, scales, opt(biases), transpose, group_size, bits)) return own(*std::move(y));
#endif
  auto b = opt(biases);
  // The int8 CPU kernels round x per block: only for weights that opted in.
  if (int8_kernels && transpose && b && kernels::quantized_linear_applies(x, w, scales, *b, group_size, bits)) {
    return own(kernels::quantized_linear(x, w, scales, *b, group_size, bits));
  }
  return own(mx::quantized_matmul(x, w, scales, b, transpose, group_size, bits));
}
int32_t quantized_kernel_level(int32_t force) { return kernels::quantized_kernel_level(force); }
int32_t image_kernel_level(int32_t force) { return kernels::image_kernel_level(force); }
int32_t conv_winograd(int32_t force) { return kernels::conv_winograd(force); }
bool cuda_qmv_set_enabled(bool on) {
#ifdef MLXE_CUDA
  cuda::set_enabled(on);
  return true;
#else
  (void)on;
  return false;
#endif
}
std::unique_ptr<Array> cuda_qmv(const Array& x, const Array& w, const Array& scales, const Array& biases, int32_t group_size, int32_t bits) {
#ifdef MLXE_CUDA
  return own(cuda::qmv(x, w, scales, biases, group_size, bits));
#else
  (void)x, (void)w, (void)scales, (void)biases, (void)group_size, (void)bits;
  throw std::runtime_error("engine-mlx was built without the `cuda` feature: no CUDA kernels");
#endif
}
std::unique_ptr<ArrayList> fused_qmv(const Array& x, const ArrayList& mats, const ArrayList& bias, rust::Slice<const bool> has_bias, rust::Slice<const int32_t> group_sizes, rust::Slice<const int32_t> bits, bool int8_kernels, const ArrayList& norm, float eps, const ArrayList& residual, bool swiglu, rust::Slice<const int32_t> out_shapes, rust::Slice<const size_t> out_ranks) {
  auto out = std::make_unique<ArrayList>();
  // Three arrays a quantized matrix, one a dense one (bits 0).
  if (bits.size() != has_bias.size() || group_sizes.size() != has_bias.size() || bits.empty())
    throw std::invalid_argument("fused_qmv: one group size and bits per matrix");
  const size_t per = bits[0] == 0 ? 1 : 3;
  if (mats.items.size() % per != 0 || mats.items.size() / per != has_bias.size())
    throw std::invalid_argument("fused_qmv: the matrices' arrays and one bias flag per matrix");
  std::vector<std::optional<Array>> lbs;
  size_t b = 0;
  for (size_t m = 0; m < has_bias.size(); ++m) {
    std::optional<Array> lb;
    if (has_bias[m]) {
      if (b >= bias.items.size()) throw std::invalid_argument("fused_qmv: a bias flag without its bias");
      lb = bias.items[b++];
    }
    lbs.push_back(lb);
  }
  std::optional<std::pair<Array, float>> nm;
  if (!norm.items.empty()) nm = std::make_pair(norm.items[0], eps);
  std::vector<mx::Shape> shapes;
  size_t at = 0;
  for (size_t r : out_ranks) {
    if (at + r > out_shapes.size()) throw std::invalid_argument("fused_qmv: out_ranks exceed out_shapes");
    shapes.emplace_back(out_shapes.begin() + at, out_shapes.begin() + at + r);
    at += r;
  }
  // The int8 CPU kernels, for weights that opted in.
  if (int8_kernels && per == 3) {
    std::vector<kernels::FusedMatrix> qs;
    for (size_t m = 0; m < has_bias.size(); ++m)
      qs.push_back({mats.items[3 * m], mats.items[3 * m + 1], mats.items[3 * m + 2], lbs[m], group_sizes[m], bits[m]});
    if (auto ys = kernels::fused_quantized_linear(x, qs, nm, opt(residual), swiglu, shapes)) {
      out->items = std::move(*ys);
      return out;
    }
  }
#ifdef MLXE_CUDA
  // The CUDA kernels take one format for all the matrices.
  for (size_t m = 1; m < bits.size(); ++m) {
    if (bits[m] != bits[0] || group_sizes[m] != group_sizes[0]) return out;
  }
  std::vector<cuda::QuantMatrix> qs;
  for (size_t m = 0; m < has_bias.size(); ++m) {
    if (per == 1)
      qs.push_back({mats.items[m], std::nullopt, std::nullopt, lbs[m]});
    else
      qs.push_back({mats.items[3 * m], mats.items[3 * m + 1], mats.items[3 * m + 2], lbs[m]});
  }
  auto ys = cuda::fused_qmv(x, qs, group_sizes[0], bits[0], nm, opt(residual),
                            swiglu ? cuda::Epilogue::SwiGlu : cuda::Epilogue::Split, shapes);
  if (ys) out->items = std::move(*ys);
#else
  (void)swiglu;
#endif
  return out;
}

std::unique_ptr<ArrayList> cuda_decode_attention(const Array& q, const Array& k, const Array& v, const Array& k_cache, const Array& v_cache, const Array& inv_freq, const ArrayList& rows, int32_t slot, int32_t n_keys, int32_t pos, int32_t dims, bool traditional, float rope_scale, float scale, int32_t packed_heads) {
  auto out = std::make_unique<ArrayList>();
#ifdef MLXE_CUDA
  if (auto ys = cuda::decode_attention(q, k, v, k_cache, v_cache, inv_freq, opt(rows), slot, n_keys, pos, dims, traditional, rope_scale, scale, packed_heads)) out->items.push_back(std::move(*ys));
#else
  (void)q, (void)k, (void)v, (void)k_cache, (void)v_cache, (void)inv_freq, (void)rows, (void)slot, (void)n_keys, (void)pos, (void)dims, (void)traditional, (void)rope_scale, (void)scale, (void)packed_heads;
#endif
  return out;
}

std::unique_ptr<ArrayList> cuda_swiglu_packed(const Array& gu) {
  auto out = std::make_unique<ArrayList>();
#ifdef MLXE_CUDA
  if (auto y = cuda::swiglu_packed(gu)) out->items.push_back(std::move(*y));
#else
  (void)gu;
#endif
  return out;
}

std::unique_ptr<ArrayList> cuda_add_rms_norm(const Array& a, const Array& b, const Array& weight, float eps) {
  auto out = std::make_unique<ArrayList>();
#ifdef MLXE_CUDA
  if (auto hy = cuda::add_rms_norm(a, b, weight, eps)) {
    out->items.push_back(std::move(hy->first));
    out->items.push_back(std::move(hy->second));
  }
#else
  (void)a, (void)b, (void)weight, (void)eps;
#endif
  return out;
}

bool cuda_chain(const ArrayList& stages) {
#ifdef MLXE_CUDA
  return cuda::chain(stages.items);
#else
  (void)stages;
  return false;
#endif
}

std::unique_ptr<ArrayList> cuda_group_norm(const Array& x, int32_t groups, const Array& weight, const Array& bias, float eps, bool silu) {
  auto out = std::make_unique<ArrayList>();
#ifdef MLXE_CUDA
  if (auto y = cuda::group_norm(x, groups, weight, bias, eps, silu)) out->items.push_back(std::move(*y));
#else
  (void)x, (void)groups, (void)weight, (void)bias, (void)eps, (void)silu;
#endif
  return out;
}

namespace {
std::unique_ptr<WeightFile> from_map(std::unordered_map<std::string, Array> arrays) {
  auto f = std::make_unique<WeightFile>();
  for (auto& [k, v] : arrays) {
    f->names.push_back(k);
    f->arrays.push_back(std::move(v));
  }
  return f;
}
}  // namespace

std::unique_ptr<WeightFile> load_safetensors(rust::Str path) {
  auto [arrays, meta] = mx::load_safetensors(std::string(path));
  auto f = from_map(std::move(arrays));
  for (auto& [k, v] : meta) {
    f->meta_keys.push_back(k);
    f->meta_kinds.push_back(1);
    f->meta_strings.push_back(v);
    f->meta_lists.emplace_back();
    f->meta_arrays.push_back(nullptr);
  }
  return f;
}

std::unique_ptr<WeightFile> load_gguf(rust::Str path) {
  auto [arrays, meta] = mx::load_gguf(std::string(path));
  auto f = from_map(std::move(arrays));
  for (auto& [k, v] : meta) {
    f->meta_keys.push_back(k);
    f->meta_strings.emplace_back();
    f->meta_lists.emplace_back();
    f->meta_arrays.push_back(nullptr);
    if (auto s = std::get_if<std::string>(&v)) {
      f->meta_kinds.push_back(1);
      f->meta_strings.back() = *s;
    } else if (auto l = std::get_if<std::vector<std::string>>(&v)) {
      f->meta_kinds.push_back(2);
      f->meta_lists.back() = *l;
    } else if (auto a = std::get_if<Array>(&v)) {
      f->meta_kinds.push_back(3);
      f->meta_arrays.back() = std::make_unique<Array>(*a);
    } else {
      f->meta_kinds.push_back(0);
    }
  }
  return f;
}

void save_safetensors(rust::Str path, rust::Slice<const rust::String> names, const ArrayList& arrays, rust::Slice<const rust::String> meta_keys, rust::Slice<const rust::String> meta_values) {
  if (names.size() != arrays.items.size()) throw std::invalid_argument("names and arrays differ in length");
  std::unordered_map<std::string, Array> m;
  for (size_t i = 0; i < names.size(); ++i) m.insert({std::string(names[i]), arrays.items[i]});
  std::unordered_map<std::string, std::string> meta;
  for (size_t i = 0; i < meta_keys.size() && i < meta_values.size(); ++i) meta[std::string(meta_keys[i])] = std::string(meta_values[i]);
  mx::save_safetensors(std::string(path), std::move(m), std::move(meta));
}

size_t wf_len(const WeightFile& f) { return f.names.size(); }
rust::String wf_name(const WeightFile& f, size_t i) { return rust::String(f.names.at(i)); }
std::unique_ptr<Array> wf_array(const WeightFile& f, size_t i) { return own(f.arrays.at(i)); }
size_t wf_meta_len(const WeightFile& f) { return f.meta_keys.size(); }
rust::String wf_meta_key(const WeightFile& f, size_t i) { return rust::String(f.meta_keys.at(i)); }
uint8_t wf_meta_kind(const WeightFile& f, size_t i) { return f.meta_kinds.at(i); }
rust::String wf_meta_string(const WeightFile& f, size_t i) {
  // GGUF strings are not guaranteed UTF-8; replace bad bytes rather than throw.
  return rust::String::lossy(f.meta_strings.at(i));
}
rust::Vec<rust::String> wf_meta_list(const WeightFile& f, size_t i) {
  rust::Vec<rust::String> out;
  for (auto& s : f.meta_lists.at(i)) out.push_back(rust::String::lossy(s));
  return out;
}
std::unique_ptr<Array> wf_meta_array(const WeightFile& f, size_t i) {
  if (!f.meta_arrays.at(i)) throw std::invalid_argument("metadata value is not an array");
  return own(*f.meta_arrays.at(i));
}

size_t active_memory() { return mx::get_active_memory(); }
size_t peak_memory() { return mx::get_peak_memory(); }
void reset_peak_memory() { mx::reset_peak_memory(); }
size_t cache_memory() { return mx::get_cache_memory(); }
size_t set_memory_limit(size_t limit) { return mx::set_memory_limit(limit); }
size_t set_cache_limit(size_t limit) { return mx::set_cache_limit(limit); }
void clear_cache() { mx::clear_cache(); }

bool gpu_available() { return mx::is_available(mx::Device::gpu); }

namespace dist = mx::distributed;

bool distributed_available(rust::Str backend) { return dist::is_available(std::string(backend)); }

// Strict: a backend that cannot start (no hostfile, a peer that never
// connects) is an error, never a silent group of one.
std::unique_ptr<Group> distributed_init(rust::Str backend) {
  return std::make_unique<Group>(dist::init(true, std::string(backend)));
}

int32_t group_rank(const Group& g) { return g.group.rank(); }
int32_t group_size(const Group& g) { return g.group.size(); }

std::unique_ptr<Group> group_split(const Group& g, int32_t color, int32_t key) {
  return std::make_unique<Group>(g.group.split(color, key));
}

std::unique_ptr<Array> dist_all_sum(const Array& a, const Group& g) { return own(dist::all_sum(a, g.group)); }
std::unique_ptr<Array> dist_all_gather(const Array& a, const Group& g) { return own(dist::all_gather(a, g.group)); }
std::unique_ptr<Array> dist_send(const Array& a, int32_t dst, const Group& g) {
  return own(dist::send(a, dst, g.group));
}
std::unique_ptr<Array> dist_recv(rust::Slice<const int32_t> shape, uint8_t dtype, int32_t src, const Group& g) {
  return own(dist::recv(to_shape(shape), to_dtype(dtype), src, g.group));
}
void set_default_device(bool gpu) { mx::set_default_device(gpu ? mx::Device::gpu : mx::Device::cpu); }
bool default_device_is_gpu() { return mx::default_device() == mx::Device::gpu; }
rust::Vec<rust::String> device_info(bool gpu) {
  rust::Vec<rust::String> out;
  const auto& info = mx::device_info(gpu ? mx::Device::gpu : mx::Device::cpu);
  for (auto& [k, v] : info) {
    std::string val;
    if (auto s = std::get_if<std::string>(&v)) val = *s;
    else val = std::to_string(std::get<size_t>(v));
    out.push_back(rust::String::lossy(k + "=" + val));
  }
  return out;
}
rust::String mlx_version() { return rust::String(mx::version()); }
std::unique_ptr<StreamHandle> new_stream(bool gpu) {
  return std::make_unique<StreamHandle>(StreamHandle{mx::new_stream(gpu ? mx::Device::gpu : mx::Device::cpu)});
}
std::unique_ptr<StreamHandle> default_stream(bool gpu) {
  return std::make_unique<StreamHandle>(StreamHandle{mx::default_stream(gpu ? mx::Device::gpu : mx::Device::cpu)});
}
void set_default_stream(const StreamHandle& s) { mx::set_default_stream(s.stream); }
void synchronize(const StreamHandle& s) { mx::synchronize(s.stream); }
void synchronize_all() { mx::synchronize(); }

int32_t blas_threads(int32_t n) { return blas::threads(n); }
bool openblas_linked() { return blas::openblas(); }
rust::String blas_core() { return rust::String::lossy(blas::core()); }
rust::String blas_library() { return rust::String::lossy(blas::library()); }

std::unique_ptr<CompiledFn> compile(size_t ctx, bool shapeless) {
  std::function<std::vector<Array>(const std::vector<Array>&)> f = [ctx](const std::vector<Array>& in) {
    ArrayList l;
    l.items = in;
    auto out = invoke_rust_fn(ctx, l);
    return out->items;
  };
  return std::make_unique<CompiledFn>(CompiledFn{mx::compile(std::move(f), shapeless)});
}

std::unique_ptr<ArrayList> call_compiled(const CompiledFn& f, const ArrayList& inputs) {
  return own_list(f.fun(inputs.items));
}

}  // namespace mlxe
