//! Devices, streams, memory accounting and build information.

use crate::error::{Context, Result};
use crate::ffi;
use cxx::UniquePtr;
use std::collections::BTreeMap;

/// Where computation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU backend.
    Cpu,
    /// The GPU backend (Metal on macOS, CUDA on Linux builds with the `cuda` feature).
    Gpu,
}

/// The GPU API this build of MLX targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Apple Metal.
    Metal,
    /// NVIDIA CUDA.
    Cuda,
    /// CPU only.
    Cpu,
}

impl Backend {
    /// Lowercase name (`metal`, `cuda`, `cpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
            Backend::Cpu => "cpu",
        }
    }
}

/// The backend computation runs on by default: the GPU API when a GPU is
/// usable, else the CPU.
pub fn backend() -> Backend {
    if !gpu_available() {
        Backend::Cpu
    } else if cfg!(target_os = "macos") {
        Backend::Metal
    } else {
        Backend::Cuda
    }
}

/// Whether MLX can use a GPU here.
pub fn gpu_available() -> bool {
    ffi::gpu_available()
}

/// Makes `d` the default device of subsequent ops.
pub fn set_default_device(d: Device) -> Result<()> {
    ffi::set_default_device(d == Device::Gpu).op("set_default_device")
}

/// The current default device.
pub fn default_device() -> Device {
    if ffi::default_device_is_gpu() {
        Device::Gpu
    } else {
        Device::Cpu
    }
}

/// What MLX reports about a device (`device_name`, `total_memory`, ...).
pub fn device_info(d: Device) -> Result<BTreeMap<String, String>> {
    let pairs = ffi::device_info(d == Device::Gpu).op("device_info")?;
    Ok(pairs
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect())
}

/// MLX's version string (e.g. `0.32.4`).
pub fn mlx_version() -> String {
    ffi::mlx_version()
}

/// Which BLAS serves MLX's CPU matmuls in this binary.
pub fn blas() -> &'static str {
    if ffi::openblas_linked() {
        "openblas"
    } else {
        "bundled-reference"
    }
}

/// The kernel OpenBLAS picked for this CPU (`Cooperlake`, `SkylakeX`,
/// `Haswell`, `Zen`, ...), or an empty string when OpenBLAS is not in use.
/// On x86-64 Linux the engine chooses it from cpuid unless
/// `OPENBLAS_CORETYPE` is set.
pub fn blas_core() -> String {
    ffi::blas_core()
}

/// The file of the BLAS library serving MLX's CPU matmuls (empty when unknown).
pub fn blas_library() -> String {
    ffi::blas_library()
}

/// Sets the OpenBLAS thread count (when linked) and returns the count in effect.
pub fn set_blas_threads(n: usize) -> usize {
    ffi::blas_threads(n.min(i32::MAX as usize) as i32).max(1) as usize
}

/// A queue of work on one device.
pub struct Stream {
    inner: UniquePtr<ffi::StreamHandle>,
}

// SAFETY: a stream is an index into MLX's scheduler; it carries no thread-bound state.
unsafe impl Send for Stream {}

impl Stream {
    /// A new stream on `d`.
    pub fn new(d: Device) -> Result<Stream> {
        Ok(Stream {
            inner: ffi::new_stream(d == Device::Gpu).op("new_stream")?,
        })
    }

    /// The default stream of `d`.
    pub fn default_for(d: Device) -> Result<Stream> {
        Ok(Stream {
            inner: ffi::default_stream(d == Device::Gpu).op("default_stream")?,
        })
    }

    /// Makes this the default stream of its device.
    pub fn set_default(&self) -> Result<()> {
        ffi::set_default_stream(&self.inner).op("set_default_stream")
    }

    /// Waits until all work queued on this stream is done.
    pub fn synchronize(&self) -> Result<()> {
        ffi::synchronize(&self.inner).op("synchronize")
    }
}

/// Waits for all queued work on the default stream.
pub fn synchronize() -> Result<()> {
    ffi::synchronize_all().op("synchronize")
}

/// MLX's allocator counters and limits.
pub mod memory {
    use crate::ffi;

    /// Bytes held by live arrays.
    pub fn active() -> usize {
        ffi::active_memory()
    }
    /// Highest `active()` since start or the last reset.
    pub fn peak() -> usize {
        ffi::peak_memory()
    }
    /// Resets the peak counter.
    pub fn reset_peak() {
        ffi::reset_peak_memory()
    }
    /// Bytes kept in MLX's buffer cache for reuse.
    pub fn cache() -> usize {
        ffi::cache_memory()
    }
    /// Sets the memory limit; returns the previous one.
    pub fn set_limit(bytes: usize) -> usize {
        ffi::set_memory_limit(bytes)
    }
    /// Sets the buffer-cache limit; returns the previous one.
    pub fn set_cache_limit(bytes: usize) -> usize {
        ffi::set_cache_limit(bytes)
    }
    /// Frees the buffer cache.
    pub fn clear_cache() {
        ffi::clear_cache()
    }
}
