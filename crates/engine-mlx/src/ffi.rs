//! The raw cxx bridge to the C++ shim. Everything here is crate-private; the
//! safe API in the other modules wraps it.

#[cxx::bridge(namespace = "mlxe")]
pub(crate) mod bridge {
    extern "Rust" {
        /// Calls the Rust closure registered under `ctx` (see `compile`).
        fn invoke_rust_fn(ctx: usize, inputs: &ArrayList) -> Result<UniquePtr<ArrayList>>;
    }

    unsafe extern "C++" {
        include!("engine-mlx/src/shim/shim.h");

        type Array;
        type ArrayList;
        type WeightFile;
        type StreamHandle;
        type CompiledFn;
        type Group;

        fn list_new() -> UniquePtr<ArrayList>;
        fn list_push(l: Pin<&mut ArrayList>, a: &Array);
        fn list_len(l: &ArrayList) -> usize;
        fn list_get(l: &ArrayList, i: usize) -> Result<UniquePtr<Array>>;

        fn from_bytes(data: &[u8], shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn alloc_uninit(shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn array_data_mut(a: &Array) -> *mut u8;
        fn detached(a: &Array) -> Result<UniquePtr<Array>>;
        fn full(shape: &[i32], value: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn arange(start: f64, stop: f64, step: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn clone_array(a: &Array) -> UniquePtr<Array>;
        fn shape(a: &Array) -> Vec<i32>;
        fn dtype(a: &Array) -> u8;
        fn size(a: &Array) -> usize;
        fn nbytes(a: &Array) -> usize;
        fn copy_bytes(a: &Array, out: &mut [u8]) -> Result<()>;
        fn item_f64(a: &Array) -> Result<f64>;
        fn item_i64(a: &Array) -> Result<i64>;
        fn eval(l: &ArrayList) -> Result<()>;
        fn async_eval(l: &ArrayList) -> Result<()>;
        fn astype(a: &Array, dtype: u8) -> Result<UniquePtr<Array>>;

        fn unary(a: &Array, op: u8) -> Result<UniquePtr<Array>>;
        fn binary(a: &Array, b: &Array, op: u8) -> Result<UniquePtr<Array>>;
        fn where_(c: &Array, x: &Array, y: &Array) -> Result<UniquePtr<Array>>;
        fn clip(a: &Array, lo: f64, hi: f64) -> Result<UniquePtr<Array>>;

        fn matmul(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn addmm(c: &Array, a: &Array, b: &Array, alpha: f32, beta: f32) -> Result<UniquePtr<Array>>;

        fn reshape(a: &Array, shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn transpose(a: &Array, axes: &[i32]) -> Result<UniquePtr<Array>>;
        fn swapaxes(a: &Array, a1: i32, a2: i32) -> Result<UniquePtr<Array>>;
        fn expand_dims(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn squeeze(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn concatenate(l: &ArrayList, axis: i32) -> Result<UniquePtr<Array>>;
        fn stack(l: &ArrayList, axis: i32) -> Result<UniquePtr<Array>>;
        fn split_sections(a: &Array, n: i32, axis: i32) -> Result<UniquePtr<ArrayList>>;
        fn split_at(a: &Array, indices: &[i32], axis: i32) -> Result<UniquePtr<ArrayList>>;
        fn slice(a: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<UniquePtr<Array>>;
        fn slice_update(
            src: &Array,
            update: &Array,
            start: &[i32],
            stop: &[i32],
            strides: &[i32],
        ) -> Result<UniquePtr<Array>>;
        fn take(a: &Array, indices: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn take_along_axis(a: &Array, indices: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn put_along_axis(a: &Array, indices: &Array, values: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn pad(a: &Array, axes: &[i32], low: &[i32], high: &[i32], value: f64) -> Result<UniquePtr<Array>>;
        fn repeat(a: &Array, repeats: i32, axis: i32) -> Result<UniquePtr<Array>>;
        fn tile(a: &Array, reps: &[i32]) -> Result<UniquePtr<Array>>;
        fn broadcast_to(a: &Array, shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn contiguous(a: &Array) -> Result<UniquePtr<Array>>;

        fn reduce(a: &Array, axes: &[i32], keepdims: bool, op: u8) -> Result<UniquePtr<Array>>;
        fn softmax(a: &Array, axes: &[i32], precise: bool) -> Result<UniquePtr<Array>>;
        fn gelu(a: &Array) -> Result<UniquePtr<Array>>;
        fn silu(a: &Array) -> Result<UniquePtr<Array>>;
        fn logsumexp(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn argmax(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn argmin(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn sort(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn argsort(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn argpartition(a: &Array, kth: i32, axis: i32) -> Result<UniquePtr<Array>>;
        fn cumsum(a: &Array, axis: i32, reverse: bool, inclusive: bool) -> Result<UniquePtr<Array>>;

        fn conv1d(
            x: &Array,
            w: &Array,
            stride: i32,
            padding: i32,
            dilation: i32,
            groups: i32,
        ) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn conv2d(
            x: &Array,
            w: &Array,
            sh: i32,
            sw: i32,
            ph: i32,
            pw: i32,
            dh: i32,
            dw: i32,
            groups: i32,
        ) -> Result<UniquePtr<Array>>;

        fn random_key(seed: u64) -> Result<UniquePtr<Array>>;
        fn random_seed(seed: u64);
        fn random_split(key: &Array, num: i32) -> Result<UniquePtr<ArrayList>>;
        fn random_normal(shape: &[i32], dtype: u8, loc: f32, scale: f32, key: &ArrayList) -> Result<UniquePtr<Array>>;
        fn random_uniform(shape: &[i32], dtype: u8, low: f32, high: f32, key: &ArrayList) -> Result<UniquePtr<Array>>;
        fn random_categorical(logits: &Array, axis: i32, key: &ArrayList) -> Result<UniquePtr<Array>>;

        fn sdpa(
            q: &Array,
            k: &Array,
            v: &Array,
            scale: f32,
            mask_mode: &str,
            mask: &ArrayList,
        ) -> Result<UniquePtr<Array>>;
        fn rms_norm(x: &Array, weight: &ArrayList, eps: f32) -> Result<UniquePtr<Array>>;
        fn layer_norm(
            x: &Array,
            residual: &ArrayList,
            weight: &ArrayList,
            bias: &ArrayList,
            eps: f32,
        ) -> Result<UniquePtr<Array>>;
        fn packed_attention(qkv: &Array, lengths: &[i32], heads: i32, scale: f32) -> Result<UniquePtr<Array>>;
        fn cache_attention_applies(q: &Array, k: &Array, v: &Array) -> bool;
        fn cache_attention(q: &Array, k: &Array, v: &Array, scale: f32, pads: &[i32]) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn conv2d_bias(
            x: &Array,
            w: &Array,
            bias: &ArrayList,
            sh: i32,
            sw: i32,
            ph: i32,
            pw: i32,
        ) -> Result<UniquePtr<Array>>;
        fn conv_weight_packs(w: &Array) -> bool;
        fn linear_weight_packs(w: &Array) -> bool;
        fn pack_conv_weight(w: &Array, sh: i32, sw: i32) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn conv2d_packed(
            x: &Array,
            packed: &Array,
            shape: &[i32],
            bias: &ArrayList,
            sh: i32,
            sw: i32,
            ph: i32,
            pw: i32,
        ) -> Result<UniquePtr<Array>>;
        fn group_norm(
            x: &Array,
            groups: i32,
            weight: &Array,
            bias: &Array,
            eps: f32,
            silu: bool,
        ) -> Result<UniquePtr<Array>>;
        fn geglu(x: &Array) -> Result<UniquePtr<Array>>;
        fn attention(q: &Array, k: &Array, v: &Array, heads: i32, scale: f32) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn rope(
            x: &Array,
            dims: i32,
            traditional: bool,
            base: f32,
            has_base: bool,
            scale: f32,
            offset: i32,
            freqs: &ArrayList,
        ) -> Result<UniquePtr<Array>>;
        fn linear(x: &Array, w: &Array) -> Result<UniquePtr<Array>>;
        fn linear_bias(x: &Array, w: &Array, bias: &Array) -> Result<UniquePtr<Array>>;
        fn linear_rows(x: &Array, w: &Array, bias: &ArrayList) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn rope_rows(
            x: &Array,
            dims: i32,
            traditional: bool,
            base: f32,
            has_base: bool,
            scale: f32,
            offsets: &Array,
            freqs: &ArrayList,
        ) -> Result<UniquePtr<Array>>;

        fn quantize(w: &Array, group_size: i32, bits: i32) -> Result<UniquePtr<ArrayList>>;
        fn dequantize(
            w: &Array,
            scales: &Array,
            biases: &ArrayList,
            group_size: i32,
            bits: i32,
        ) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn quantized_matmul(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: &ArrayList,
            transpose: bool,
            group_size: i32,
            bits: i32,
            int8_kernels: bool,
        ) -> Result<UniquePtr<Array>>;
        fn cuda_qmv_set_enabled(on: bool) -> bool;
        fn cuda_qmv(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: &Array,
            group_size: i32,
            bits: i32,
        ) -> Result<UniquePtr<Array>>;
        #[allow(clippy::too_many_arguments)]
        fn fused_qmv(
            x: &Array,
            mats: &ArrayList,
            bias: &ArrayList,
            has_bias: &[bool],
            group_sizes: &[i32],
            bits: &[i32],
            int8_kernels: bool,
            norm: &ArrayList,
            eps: f32,
            residual: &ArrayList,
            swiglu: bool,
            out_shapes: &[i32],
            out_ranks: &[usize],
        ) -> Result<UniquePtr<ArrayList>>;

        #[allow(clippy::too_many_arguments)]
        fn cuda_decode_attention(
            q: &Array,
            k: &Array,
            v: &Array,
            k_cache: &Array,
            v_cache: &Array,
            inv_freq: &Array,
            rows: &ArrayList,
            slot: i32,
            n_keys: i32,
            pos: i32,
            dims: i32,
            traditional: bool,
            rope_scale: f32,
            scale: f32,
            packed_heads: i32,
        ) -> Result<UniquePtr<ArrayList>>;
        fn cuda_swiglu_packed(gu: &Array) -> Result<UniquePtr<ArrayList>>;
        fn cuda_add_rms_norm(a: &Array, b: &Array, weight: &Array, eps: f32) -> Result<UniquePtr<ArrayList>>;
        fn cuda_chain(stages: &ArrayList) -> Result<bool>;
        fn cuda_group_norm(
            x: &Array,
            groups: i32,
            weight: &Array,
            bias: &Array,
            eps: f32,
            silu: bool,
        ) -> Result<UniquePtr<ArrayList>>;

        fn load_safetensors(path: &str) -> Result<UniquePtr<WeightFile>>;
        fn load_gguf(path: &str) -> Result<UniquePtr<WeightFile>>;
        fn save_safetensors(
            path: &str,
            names: &[String],
            arrays: &ArrayList,
            meta_keys: &[String],
            meta_values: &[String],
        ) -> Result<()>;
        fn wf_len(f: &WeightFile) -> usize;
        fn wf_name(f: &WeightFile, i: usize) -> Result<String>;
        fn wf_array(f: &WeightFile, i: usize) -> Result<UniquePtr<Array>>;
        fn wf_meta_len(f: &WeightFile) -> usize;
        fn wf_meta_key(f: &WeightFile, i: usize) -> Result<String>;
        fn wf_meta_kind(f: &WeightFile, i: usize) -> Result<u8>;
        fn wf_meta_string(f: &WeightFile, i: usize) -> Result<String>;
        fn wf_meta_list(f: &WeightFile, i: usize) -> Result<Vec<String>>;
        fn wf_meta_array(f: &WeightFile, i: usize) -> Result<UniquePtr<Array>>;

        fn active_memory() -> usize;
        fn peak_memory() -> usize;
        fn reset_peak_memory();
        fn cache_memory() -> usize;
        fn set_memory_limit(limit: usize) -> usize;
        fn set_cache_limit(limit: usize) -> usize;
        fn clear_cache();

        fn gpu_available() -> bool;

        fn distributed_available(backend: &str) -> bool;
        fn distributed_init(backend: &str) -> Result<UniquePtr<Group>>;
        fn group_rank(g: &Group) -> i32;
        fn group_size(g: &Group) -> i32;
        fn group_split(g: &Group, color: i32, key: i32) -> Result<UniquePtr<Group>>;
        fn dist_all_sum(a: &Array, g: &Group) -> Result<UniquePtr<Array>>;
        fn dist_all_gather(a: &Array, g: &Group) -> Result<UniquePtr<Array>>;
        fn dist_send(a: &Array, dst: i32, g: &Group) -> Result<UniquePtr<Array>>;
        fn dist_recv(shape: &[i32], dtype: u8, src: i32, g: &Group) -> Result<UniquePtr<Array>>;
        fn set_default_device(gpu: bool) -> Result<()>;
        fn default_device_is_gpu() -> bool;
        fn device_info(gpu: bool) -> Result<Vec<String>>;
        fn mlx_version() -> String;
        fn new_stream(gpu: bool) -> Result<UniquePtr<StreamHandle>>;
        fn default_stream(gpu: bool) -> Result<UniquePtr<StreamHandle>>;
        fn set_default_stream(s: &StreamHandle) -> Result<()>;
        fn synchronize(s: &StreamHandle) -> Result<()>;
        fn synchronize_all() -> Result<()>;
        fn blas_threads(n: i32) -> i32;
        fn openblas_linked() -> bool;
        fn quantized_kernel_level(force: i32) -> i32;
        fn image_kernel_level(force: i32) -> i32;
        fn conv_winograd(force: i32) -> i32;
        fn blas_core() -> String;
        fn blas_library() -> String;

        fn compile(ctx: usize, shapeless: bool) -> Result<UniquePtr<CompiledFn>>;
        fn call_compiled(f: &CompiledFn, inputs: &ArrayList) -> Result<UniquePtr<ArrayList>>;
    }
}

pub(crate) use bridge::*;

use crate::compile::invoke_rust_fn;
