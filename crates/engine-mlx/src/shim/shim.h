// C++ side of the engine-mlx bridge. Every function takes and returns owned
// `mlx::core::array` values behind std::unique_ptr; cxx turns any exception
// thrown here into a Rust `Err` carrying `what()`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mlx/mlx.h"
#include "rust/cxx.h"

namespace mlxe {

using Array = mlx::core::array;

/// A list of arrays (op results with several outputs, op inputs of any arity).
struct ArrayList {
  std::vector<Array> items;
};

/// The result of loading a safetensors or GGUF file: named arrays + metadata.
struct WeightFile {
  std::vector<std::string> names;
  std::vector<Array> arrays;
  std::vector<std::string> meta_keys;
  // Metadata value kinds: 0 none, 1 string, 2 string list, 3 array.
  std::vector<uint8_t> meta_kinds;
  std::vector<std::string> meta_strings;
  std::vector<std::vector<std::string>> meta_lists;
  std::vector<std::unique_ptr<Array>> meta_arrays;
};

/// A group of processes that communicate (MLX distributed).
struct Group {
  explicit Group(mlx::core::distributed::Group g) : group(std::move(g)) {}
  mlx::core::distributed::Group group;
};

/// A stream of work on a device.
struct StreamHandle {
  mlx::core::Stream stream;
};

/// A compiled pure function (see engine_mlx::compile).
struct CompiledFn {
  std::function<std::vector<Array>(const std::vector<Array>&)> fun;
};

// ---- array lists
std::unique_ptr<ArrayList> list_new();
void list_push(ArrayList& l, const Array& a);
size_t list_len(const ArrayList& l);
std::unique_ptr<Array> list_get(const ArrayList& l, size_t i);

// ---- creation and inspection
std::unique_ptr<Array> from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape, uint8_t dtype);
std::unique_ptr<Array> alloc_uninit(rust::Slice<const int32_t> shape, uint8_t dtype);
uint8_t* array_data_mut(const Array& a);
std::unique_ptr<Array> detached(const Array& a);
std::unique_ptr<Array> full(rust::Slice<const int32_t> shape, double value, uint8_t dtype);
std::unique_ptr<Array> arange(double start, double stop, double step, uint8_t dtype);
std::unique_ptr<Array> clone_array(const Array& a);
rust::Vec<int32_t> shape(const Array& a);
uint8_t dtype(const Array& a);
size_t size(const Array& a);
size_t nbytes(const Array& a);
void copy_bytes(const Array& a, rust::Slice<uint8_t> out);
double item_f64(const Array& a);
int64_t item_i64(const Array& a);
void eval(const ArrayList& l);
void async_eval(const ArrayList& l);
std::unique_ptr<Array> astype(const Array& a, uint8_t dtype);

// ---- element-wise
std::unique_ptr<Array> unary(const Array& a, uint8_t op);
std::unique_ptr<Array> binary(const Array& a, const Array& b, uint8_t op);
std::unique_ptr<Array> where_(const Array& c, const Array& x, const Array& y);
std::unique_ptr<Array> clip(const Array& a, double lo, double hi);

// ---- linear algebra
std::unique_ptr<Array> matmul(const Array& a, const Array& b);
std::unique_ptr<Array> addmm(const Array& c, const Array& a, const Array& b, float alpha, float beta);

// ---- shape manipulation
std::unique_ptr<Array> reshape(const Array& a, rust::Slice<const int32_t> shape);
std::unique_ptr<Array> transpose(const Array& a, rust::Slice<const int32_t> axes);
std::unique_ptr<Array> swapaxes(const Array& a, int32_t a1, int32_t a2);
std::unique_ptr<Array> expand_dims(const Array& a, int32_t axis);
std::unique_ptr<Array> squeeze(const Array& a, int32_t axis);
std::unique_ptr<Array> concatenate(const ArrayList& l, int32_t axis);
std::unique_ptr<Array> stack(const ArrayList& l, int32_t axis);
std::unique_ptr<ArrayList> split_sections(const Array& a, int32_t n, int32_t axis);
std::unique_ptr<ArrayList> split_at(const Array& a, rust::Slice<const int32_t> indices, int32_t axis);
std::unique_ptr<Array> slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides);
std::unique_ptr<Array> slice_update(const Array& src, const Array& update, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides);
std::unique_ptr<Array> take(const Array& a, const Array& indices, int32_t axis);
std::unique_ptr<Array> take_along_axis(const Array& a, const Array& indices, int32_t axis);
std::unique_ptr<Array> put_along_axis(const Array& a, const Array& indices, const Array& values, int32_t axis);
std::unique_ptr<Array> pad(const Array& a, rust::Slice<const int32_t> axes, rust::Slice<const int32_t> low, rust::Slice<const int32_t> high, double value);
std::unique_ptr<Array> repeat(const Array& a, int32_t repeats, int32_t axis);
std::unique_ptr<Array> tile(const Array& a, rust::Slice<const int32_t> reps);
std::unique_ptr<Array> broadcast_to(const Array& a, rust::Slice<const int32_t> shape);
std::unique_ptr<Array> contiguous(const Array& a);

// ---- reductions and friends
std::unique_ptr<Array> reduce(const Array& a, rust::Slice<const int32_t> axes, bool keepdims, uint8_t op);
std::unique_ptr<Array> softmax(const Array& a, rust::Slice<const int32_t> axes, bool precise);
std::unique_ptr<Array> gelu(const Array& a);
std::unique_ptr<Array> silu(const Array& a);
std::unique_ptr<Array> logsumexp(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
std::unique_ptr<Array> argmax(const Array& a, int32_t axis, bool keepdims);
std::unique_ptr<Array> argmin(const Array& a, int32_t axis, bool keepdims);
std::unique_ptr<Array> sort(const Array& a, int32_t axis);
std::unique_ptr<Array> argsort(const Array& a, int32_t axis);
std::unique_ptr<Array> argpartition(const Array& a, int32_t kth, int32_t axis);
std::unique_ptr<Array> cumsum(const Array& a, int32_t axis, bool reverse, bool inclusive);

// ---- convolution
std::unique_ptr<Array> conv1d(const Array& x, const Array& w, int32_t stride, int32_t padding, int32_t dilation, int32_t groups);
std::unique_ptr<Array> conv2d(const Array& x, const Array& w, int32_t sh, int32_t sw, int32_t ph, int32_t pw, int32_t dh, int32_t dw, int32_t groups);

// ---- random
std::unique_ptr<Array> random_key(uint64_t seed);
void random_seed(uint64_t seed);
std::unique_ptr<ArrayList> random_split(const Array& key, int32_t num);
std::unique_ptr<Array> random_normal(rust::Slice<const int32_t> shape, uint8_t dtype, float loc, float scale, const ArrayList& key);
std::unique_ptr<Array> random_uniform(rust::Slice<const int32_t> shape, uint8_t dtype, float low, float high, const ArrayList& key);
std::unique_ptr<Array> random_categorical(const Array& logits, int32_t axis, const ArrayList& key);

// ---- fast kernels
std::unique_ptr<Array> sdpa(const Array& q, const Array& k, const Array& v, float scale, rust::Str mask_mode, const ArrayList& mask);
std::unique_ptr<Array> rms_norm(const Array& x, const ArrayList& weight, float eps);
std::unique_ptr<Array> layer_norm(const Array& x, const ArrayList& residual, const ArrayList& weight, const ArrayList& bias, float eps);
std::unique_ptr<Array> packed_attention(const Array& qkv, rust::Slice<const int32_t> lengths, int32_t heads, float scale);
bool cache_attention_applies(const Array& q, const Array& k, const Array& v);
std::unique_ptr<Array> cache_attention(const Array& q, const Array& k, const Array& v, float scale, rust::Slice<const int32_t> pads);
std::unique_ptr<Array> conv2d_bias(const Array& x, const Array& w, const ArrayList& bias, int32_t sh, int32_t sw, int32_t ph, int32_t pw);
bool conv_weight_packs(const Array& w);
bool linear_weight_packs(const Array& w);
std::unique_ptr<Array> pack_conv_weight(const Array& w, int32_t sh, int32_t sw);
std::unique_ptr<Array> conv2d_packed(const Array& x, const Array& packed, rust::Slice<const int32_t> shape,
                                     const ArrayList& bias, int32_t sh, int32_t sw, int32_t ph, int32_t pw);
std::unique_ptr<Array> group_norm(const Array& x, int32_t groups, const Array& weight, const Array& bias, float eps, bool silu);
std::unique_ptr<Array> geglu(const Array& x);
std::unique_ptr<Array> attention(const Array& q, const Array& k, const Array& v, int32_t heads, float scale);
std::unique_ptr<Array> rope(const Array& x, int32_t dims, bool traditional, float base, bool has_base, float scale, int32_t offset, const ArrayList& freqs);
std::unique_ptr<Array> linear(const Array& x, const Array& w);
std::unique_ptr<Array> linear_bias(const Array& x, const Array& w, const Array& bias);
std::unique_ptr<Array> linear_rows(const Array& x, const Array& w, const ArrayList& bias);
std::unique_ptr<Array> rope_rows(const Array& x, int32_t dims, bool traditional, float base, bool has_base, float scale, const Array& offsets, const ArrayList& freqs);

// ---- quantization
std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits);
std::unique_ptr<Array> dequantize(const Array& w, const Array& scales, const ArrayList& biases, int32_t group_size, int32_t bits);
std::unique_ptr<Array> quantized_matmul(const Array& x, const Array& w, const Array& scales, const ArrayList& biases, bool transpose, int32_t group_size, int32_t bits, bool int8_kernels);
// Turns our CUDA quantized matvec on or off; false when built without CUDA.
bool cuda_qmv_set_enabled(bool on);
// Our CUDA quantized matvec itself, any number of rows (throws without CUDA).
std::unique_ptr<Array> cuda_qmv(const Array& x, const Array& w, const Array& scales, const Array& biases, int32_t group_size, int32_t bits);
// Fused decode matvec (cuda_kernels.h): `mats` holds w, scales, biases per
// matrix (w alone for dense ones, `bits` 0); `bias` the linear biases of the matrices whose `has_bias` is set;
// `norm` and `residual` hold zero or one array; `out_shapes` the outputs'
// shapes laid end to end, `out_ranks` their lengths (none: x's). Empty where it
// does not apply.
std::unique_ptr<ArrayList> fused_qmv(const Array& x, const ArrayList& mats, const ArrayList& bias, rust::Slice<const bool> has_bias, rust::Slice<const int32_t> group_sizes, rust::Slice<const int32_t> bits, bool int8_kernels, const ArrayList& norm, float eps, const ArrayList& residual, bool swiglu, rust::Slice<const int32_t> out_shapes, rust::Slice<const size_t> out_ranks);
// Decode attention with RoPE and the in-place cache write (cuda_kernels.h):
// {out}, or empty where it does not apply (or without the `cuda` feature).
// `rows` holds zero or one (B, 2) int32 array.
std::unique_ptr<ArrayList> cuda_decode_attention(const Array& q, const Array& k, const Array& v, const Array& k_cache, const Array& v_cache, const Array& inv_freq, const ArrayList& rows, int32_t slot, int32_t n_keys, int32_t pos, int32_t dims, bool traditional, float rope_scale, float scale, int32_t packed_heads);
std::unique_ptr<ArrayList> cuda_swiglu_packed(const Array& gu);
std::unique_ptr<ArrayList> cuda_add_rms_norm(const Array& a, const Array& b, const Array& weight, float eps);
bool cuda_chain(const ArrayList& stages);
std::unique_ptr<ArrayList> cuda_group_norm(const Array& x, int32_t groups, const Array& weight, const Array& bias, float eps, bool silu);

// ---- io
std::unique_ptr<WeightFile> load_safetensors(rust::Str path);
std::unique_ptr<WeightFile> load_gguf(rust::Str path);
void save_safetensors(rust::Str path, rust::Slice<const rust::String> names, const ArrayList& arrays, rust::Slice<const rust::String> meta_keys, rust::Slice<const rust::String> meta_values);
size_t wf_len(const WeightFile& f);
rust::String wf_name(const WeightFile& f, size_t i);
std::unique_ptr<Array> wf_array(const WeightFile& f, size_t i);
size_t wf_meta_len(const WeightFile& f);
rust::String wf_meta_key(const WeightFile& f, size_t i);
uint8_t wf_meta_kind(const WeightFile& f, size_t i);
rust::String wf_meta_string(const WeightFile& f, size_t i);
rust::Vec<rust::String> wf_meta_list(const WeightFile& f, size_t i);
std::unique_ptr<Array> wf_meta_array(const WeightFile& f, size_t i);

// ---- memory
size_t active_memory();
size_t peak_memory();
void reset_peak_memory();
size_t cache_memory();
size_t set_memory_limit(size_t limit);
size_t set_cache_limit(size_t limit);
void clear_cache();

// ---- devices, streams, info
bool gpu_available();

bool distributed_available(rust::Str backend);
std::unique_ptr<Group> distributed_init(rust::Str backend);
int32_t group_rank(const Group& g);
int32_t group_size(const Group& g);
std::unique_ptr<Group> group_split(const Group& g, int32_t color, int32_t key);
std::unique_ptr<Array> dist_all_sum(const Array& a, const Group& g);
std::unique_ptr<Array> dist_all_gather(const Array& a, const Group& g);
std::unique_ptr<Array> dist_send(const Array& a, int32_t dst, const Group& g);
std::unique_ptr<Array> dist_recv(rust::Slice<const int32_t> shape, uint8_t dtype, int32_t src, const Group& g);
void set_default_device(bool gpu);
bool default_device_is_gpu();
rust::Vec<rust::String> device_info(bool gpu);
rust::String mlx_version();
std::unique_ptr<StreamHandle> new_stream(bool gpu);
std::unique_ptr<StreamHandle> default_stream(bool gpu);
void set_default_stream(const StreamHandle& s);
void synchronize(const StreamHandle& s);
void synchronize_all();
int32_t blas_threads(int32_t n);
bool openblas_linked();
int32_t quantized_kernel_level(int32_t force);
int32_t image_kernel_level(int32_t force);
int32_t conv_winograd(int32_t force);
rust::String blas_core();
rust::String blas_library();

// ---- compile
std::unique_ptr<CompiledFn> compile(size_t ctx, bool shapeless);
std::unique_ptr<ArrayList> call_compiled(const CompiledFn& f, const ArrayList& inputs);

}  // namespace mlxe
