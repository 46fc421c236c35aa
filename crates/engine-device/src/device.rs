//! What this machine is: backend, device, memory, CPU, BLAS, OS and MLX version.

use engine_mlx::{Backend, Device};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The device report behind `mlxengine doctor`.
///
/// RAM comes from `sysinfo` (`/proc/meminfo` on Linux); GPU memory from MLX's device info
/// where the backend reports it (Metal, CUDA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// `metal`, `cuda` or `cpu`: where MLX computes by default.
    pub backend: String,
    /// The GPU's name, or the CPU's brand string on the CPU backend.
    pub device_name: String,
    /// Installed RAM in bytes (`MemTotal`).
    pub memory_total_bytes: u64,
    /// RAM the OS can give without swapping, in bytes (`MemAvailable`).
    pub memory_available_bytes: u64,
    /// The cgroup memory limit of this process (containers), when one is set and lower than RAM.
    pub memory_limit_bytes: Option<u64>,
    /// GPU memory in bytes as MLX reports it (Metal: unified RAM; CUDA: device memory).
    pub gpu_memory_total_bytes: Option<u64>,
    /// Free GPU memory in bytes (CUDA only).
    pub gpu_memory_available_bytes: Option<u64>,
    /// Metal's recommended working set, the most a model should take on Apple GPUs.
    pub gpu_recommended_working_set_bytes: Option<u64>,
    /// Whether CPU and GPU share memory (Apple Silicon, or the CPU backend itself).
    pub unified_memory: bool,
    /// Whether MLX can use a GPU.
    pub gpu_available: bool,
    /// Logical CPUs this process may run on (what `nproc` prints).
    pub cpu_cores: usize,
    /// Physical CPU cores, when the OS tells.
    pub cpu_physical_cores: Option<usize>,
    /// The CPU's brand string.
    pub cpu_brand: String,
    /// SIMD extensions the CPU offers (`avx2`, `fma`, `avx512f`, `neon`, ...).
    pub cpu_features: Vec<String>,
    /// `openblas` or `bundled-reference`: the BLAS that MLX's CPU matmuls run on.
    pub blas: String,
    /// The kernel OpenBLAS runs for this CPU (`Cooperlake`, `Haswell`, ...; empty otherwise).
    #[serde(default)]
    pub blas_core: String,
    /// The file of the BLAS library serving MLX's matmuls, when known.
    #[serde(default)]
    pub blas_library: String,
    /// Operating system (`linux`, `macos`, ...).
    pub os: String,
    /// OS version / distribution, when known.
    pub os_version: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// MLX's version.
    pub mlx_version: String,
    /// Whether this binary was built against MLX's CUDA build.
    pub cuda_build: bool,
    /// Whether an NVIDIA driver is present on this machine (`/proc/driver/nvidia`, `/dev/nvidia0`).
    pub nvidia_driver_present: bool,
    /// MLX's raw device info of the default device.
    pub mlx_device_info: BTreeMap<String, String>,
}

/// How serious a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Works, but slower or smaller than it could.
    Warning,
    /// Something will not work.
    Error,
}

/// Something wrong with the machine's setup, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// How serious it is.
    pub severity: Severity,
    /// A stable identifier (`no_openblas`, `low_memory`, `cuda_unavailable`, ...).
    pub code: String,
    /// What is wrong, in one line.
    pub message: String,
    /// How to fix it, in one line.
    pub fix: String,
}

/// Below this much free memory even the smallest chat models are a squeeze.
const LOW_MEMORY_WARN: u64 = 2_000_000_000;
/// Below this nothing but the tiniest models loads.
const LOW_MEMORY_ERROR: u64 = 500_000_000;

impl DeviceReport {
    /// Inspects this machine.
    pub fn detect() -> DeviceReport {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_memory(MemoryRefreshKind::nothing().with_ram())
                .with_cpu(CpuRefreshKind::nothing()),
        );
        let memory_total_bytes = sys.total_memory();
        let memory_available_bytes = sys.available_memory();
        let memory_limit_bytes = sys
            .cgroup_limits()
            .map(|c| c.total_memory)
            .filter(|&l| l > 0 && l < memory_total_bytes);
        let cpu_brand = sys
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());

        let backend = engine_mlx::backend();
        let gpu_available = engine_mlx::gpu_available();
        let device = if gpu_available { Device::Gpu } else { Device::Cpu };
        let mlx_device_info = engine_mlx::device_info(device).unwrap_or_else(|e| {
            tracing::warn!("MLX device_info failed: {e}");
            BTreeMap::new()
        });
        let num = |k: &str| mlx_device_info.get(k).and_then(|v| v.parse::<u64>().ok());
        let (gpu_total, gpu_free, working_set) = if gpu_available {
            (
                num("total_memory").or_else(|| num("memory_size")),
                num("free_memory"),
                num("max_recommended_working_set_size"),
            )
        } else {
            (None, None, None)
        };
        let device_name = if gpu_available {
            mlx_device_info
                .get("device_name")
                .or_else(|| mlx_device_info.get("architecture"))
                .cloned()
                .unwrap_or_else(|| format!("{} GPU", backend.as_str()))
        } else {
            cpu_brand.clone()
        };

        DeviceReport {
            backend: backend.as_str().to_string(),
            device_name,
            memory_total_bytes,
            memory_available_bytes,
            memory_limit_bytes,
            gpu_memory_total_bytes: gpu_total,
            gpu_memory_available_bytes: gpu_free,
            gpu_recommended_working_set_bytes: working_set,
            unified_memory: backend != Backend::Cuda,
            gpu_available,
            cpu_cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_physical_cores: System::physical_core_count(),
            cpu_brand,
            cpu_features: cpu_features(),
            blas: engine_mlx::blas().to_string(),
            blas_core: engine_mlx::blas_core(),
            blas_library: engine_mlx::blas_library(),
            os: std::env::consts::OS.to_string(),
            os_version: System::long_os_version(),
            arch: std::env::consts::ARCH.to_string(),
            mlx_version: engine_mlx::mlx_version(),
            cuda_build: cfg!(feature = "cuda"),
            nvidia_driver_present: nvidia_driver_present(),
            mlx_device_info,
        }
    }

    /// The backend as MLX's enum.
    pub fn backend_kind(&self) -> Backend {
        match self.backend.as_str() {
            "metal" => Backend::Metal,
            "cuda" => Backend::Cuda,
            _ => Backend::Cpu,
        }
    }

    /// Memory a model can live in, in bytes, before applying the budget fraction.
    ///
    /// CUDA: free GPU memory (else total). Metal: free RAM capped by the recommended working
    /// set. CPU: free RAM. Always capped by a container's memory limit.
    pub fn usable_memory_bytes(&self) -> u64 {
        let ram = match self.memory_limit_bytes {
            Some(limit) => self.memory_available_bytes.min(limit),
            None => self.memory_available_bytes,
        };
        match self.backend_kind() {
            Backend::Cuda => self
                .gpu_memory_available_bytes
                .or(self.gpu_memory_total_bytes)
                .unwrap_or(ram),
            Backend::Metal => match self.gpu_recommended_working_set_bytes {
                Some(ws) => ram.min(ws),
                None => ram,
            },
            Backend::Cpu => ram,
        }
    }

    /// What is wrong with this setup and how to fix it; empty when all is well.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut push = |severity, code: &str, message: String, fix: &str| {
            out.push(Problem {
                severity,
                code: code.to_string(),
                message,
                fix: fix.to_string(),
            })
        };
        if self.blas != "openblas" && self.os == "linux" {
            push(
                Severity::Warning,
                "no_openblas",
                "MLX's CPU matmuls use the bundled reference BLAS, 20-30x slower than OpenBLAS".into(),
                "install OpenBLAS (`apt install libopenblas0-pthread` on Debian/Ubuntu) and unset MLXENGINE_BLAS; a build made with MLXENGINE_BLAS=bundled also needs `cargo clean -p engine-mlx && cargo build --release`",
            );
        }
        if self.nvidia_driver_present && !self.gpu_available {
            if self.cuda_build {
                push(
                    Severity::Error,
                    "cuda_unavailable",
                    "an NVIDIA driver is installed but MLX's CUDA backend cannot use the GPU".into(),
                    "install the CUDA 13 runtime libraries (cuBLAS, cuDNN, NVRTC; e.g. `pip install nvidia-cublas nvidia-cudnn-cu13 nvidia-cuda-nvrtc`) and check `nvidia-smi` works",
                );
            } else {
                push(
                    Severity::Warning,
                    "cuda_not_built",
                    "an NVIDIA GPU is present but this binary uses MLX's CPU build".into(),
                    "rebuild with the CUDA backend: `cargo build --release --features cuda`",
                );
            }
        } else if self.cuda_build && !self.gpu_available {
            push(
                Severity::Error,
                "cuda_unavailable",
                "built for CUDA but no NVIDIA GPU or driver was found; running on the CPU".into(),
                "install the NVIDIA driver and check `nvidia-smi`, or build without `--features cuda`",
            );
        }
        if self.os == "macos" && !self.gpu_available {
            push(
                Severity::Error,
                "metal_unavailable",
                "MLX cannot use the Metal GPU; everything runs on the CPU".into(),
                "run on Apple Silicon with macOS 14 or newer, outside a VM without GPU passthrough",
            );
        }
        let usable = self.usable_memory_bytes();
        let mem = crate::budget::format_size(usable);
        if usable < LOW_MEMORY_ERROR {
            push(
                Severity::Error,
                "low_memory",
                format!("only {mem} of memory is free; even small models may not load"),
                "close other programs or raise the container's memory limit; use `mlxengine recommend` for what fits",
            );
        } else if usable < LOW_MEMORY_WARN {
            push(
                Severity::Warning,
                "low_memory",
                format!("only {mem} of memory is free; only small or 4-bit models will fit"),
                "close other programs, or run `mlxengine recommend` to pick a model that fits",
            );
        }
        out
    }

    /// The report as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        // A struct of plain fields always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The report plus its problems, as `mlxengine doctor --json` prints it.
    pub fn doctor_json(&self) -> serde_json::Value {
        let mut v = self.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("usable_memory_bytes".into(), self.usable_memory_bytes().into());
            obj.insert(
                "problems".into(),
                serde_json::to_value(self.problems()).unwrap_or_default(),
            );
        }
        v
    }
}

fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists() || std::path::Path::new("/dev/nvidia0").exists()
}

/// SIMD extensions relevant to MLX's CPU kernels and BLAS.
fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut f: Vec<&str> = Vec::new();
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        macro_rules! probe {
            ($($feat:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($feat) { f.push($feat); }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16",
            "avx512vnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($feat:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($feat) { f.push($feat); }
            )*};
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2");
    }
    f.into_iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(backend: &str, blas: &str, available: u64) -> DeviceReport {
        let mut r = DeviceReport::detect();
        r.backend = backend.into();
        r.blas = blas.into();
        r.memory_available_bytes = available;
        r.memory_limit_bytes = None;
        r.gpu_available = backend != "cpu";
        r.nvidia_driver_present = false;
        r.cuda_build = false;
        r.os = "linux".into();
        r
    }

    #[test]
    fn problems_name_the_fix() {
        let r = report("cpu", "bundled-reference", 300_000_000);
        let p = r.problems();
        let codes: Vec<_> = p.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["no_openblas", "low_memory"]);
        assert!(p[0].fix.contains("openblas"));
        assert_eq!(p[1].severity, Severity::Error);

        let ok = report("cpu", "openblas", 16_000_000_000);
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());

        let mut gpu_unused = report("cpu", "openblas", 16_000_000_000);
        gpu_unused.nvidia_driver_present = true;
        assert_eq!(gpu_unused.problems()[0].code, "cuda_not_built");
        gpu_unused.cuda_build = true;
        assert_eq!(gpu_unused.problems()[0].code, "cuda_unavailable");
    }

    #[test]
    fn usable_memory_follows_the_backend() {
        let mut r = report("cuda", "openblas", 16_000_000_000);
        r.gpu_memory_total_bytes = Some(80_000_000_000);
        r.gpu_memory_available_bytes = Some(79_000_000_000);
        assert_eq!(r.usable_memory_bytes(), 79_000_000_000);
        r.backend = "metal".into();
        r.gpu_recommended_working_set_bytes = Some(5_000_000_000);
        assert_eq!(r.usable_memory_bytes(), 5_000_000_000);
        r.backend = "cpu".into();
        r.memory_limit_bytes = Some(4_000_000_000);
        assert_eq!(r.usable_memory_bytes(), 4_000_000_000);
    }
}
