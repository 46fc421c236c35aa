//! Finds MLX 0.32.4 (headers + libmlx), builds the C++ shim with cxx, and links.
//!
//! Search order: `MLX_DIR`, then a cached copy under the user's cache folder,
//! then `pip download --no-deps` of the wheel into that cache. Dependents get
//! the library folder as `DEP_MLX_LIBDIR` so their binaries can carry an rpath.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MLX_VERSION: &str = "0.32.4";

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=MLXENGINE_CACHE");
    println!("cargo:rerun-if-env-changed=MLXENGINE_BLAS");
    println!("cargo:rerun-if-changed=src/shim/shim.h");
    println!("cargo:rerun-if-changed=src/shim/shim.cc");
    println!("cargo:rerun-if-changed=src/shim/blas.h");
    println!("cargo:rerun-if-changed=src/shim/blas.cc");
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=src/shim/cuda_kernels.h");
    println!("cargo:rerun-if-changed=src/shim/cuda_kernels.cc");

    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let (include, lib) = match locate(&target_os, cuda) {
        Ok(found) => found,
        Err(why) => {
            eprintln!("\nerror: engine-mlx could not find MLX {MLX_VERSION}: {why}\n");
            eprintln!(
                "fix: either set MLX_DIR to a folder holding include/mlx/mlx.h and lib/libmlx.so \
                 (an unpacked `mlx-cpu=={MLX_VERSION}` wheel's `mlx` folder works), or make \
                 `python3 -m pip download` work so the build can fetch the wheel itself.\n"
            );
            std::process::exit(1);
        }
    };

    let mut build = cxx_build::bridge("src/ffi.rs");
    build
        .file("src/shim/shim.cc")
        .include(&include)
        .std("c++20")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations");

    // On Linux CPU builds MLX's BLAS calls go to OpenBLAS instead of the
    // wheel's reference BLAS (~30x faster f32 matmuls). On x86-64 the shim
    // defines the BLAS/LAPACK symbols libmlx imports and loads OpenBLAS on
    // first use with the right kernel for this CPU (src/shim/blas.cc), so
    // nothing is linked here; elsewhere Debian's OpenBLAS is linked directly.
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let wants_openblas = target_os == "linux" && !cuda && env::var("MLXENGINE_BLAS").as_deref() != Ok("bundled");
    let forward = wants_openblas && target_arch == "x86_64";
    let openblas = if wants_openblas && !forward {
        find_openblas()
    } else {
        None
    };
    build.file("src/shim/blas.cc");
    if forward {
        build.define("MLXE_OPENBLAS", None);
    } else if openblas.is_some() {
        build.define("MLXE_OPENBLAS_LINKED", None);
    }
    if cuda {
        // Our CUDA kernels (NVRTC at run time), only where libmlx has a CUDA backend.
        build.file("src/shim/cuda_kernels.cc").define("MLXE_CUDA", None);
    }
    build.compile("engine_mlx_shim");

    // The vectorised CPU kernels: always optimised (also in debug builds,
    // where the tests run), `#pragma omp simd` without the OpenMP runtime.
    let kernels = |files: &[&str], no_traps: bool, name: &str| {
        let mut b = cc::Build::new();
        b.cpp(true)
            .files(files)
            .include(&include)
            .std("c++20")
            .opt_level(3)
            .flag_if_supported("-fopenmp-simd")
            // Fused multiply-adds in the vector loops (ISO mode turns contraction off).
            .flag_if_supported("-ffp-contract=fast")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            // Vector types cross only inlined helpers, never an ABI boundary.
            .flag_if_supported("-Wno-psabi");
        if no_traps {
            // No FP traps to preserve: GCC may then if-convert exp_approx's
            // clamp, without which the SiLU loops stayed scalar (group norm +
            // SiLU was 7% of the CPU diffusion bench). The LLM kernels keep
            // the default: with it their logits moved (1.03e-4 against mlx-lm's
            // on a 4-bit SmolLM2, past cli_convert's 1e-4, AVX2 machine).
            b.flag_if_supported("-fno-trapping-math");
        }
        b.compile(name);
    };
    // The image kernels first: they call the others' (the linker reads archives in order).
    kernels(&["src/shim/image_kernels.cc"], true, "engine_mlx_image_kernels");
    kernels(
        &["src/shim/cpu_kernels.cc", "src/shim/quant_kernels.cc"],
        false,
        "engine_mlx_kernels",
    );
    println!("cargo:rerun-if-changed=src/shim/cpu_kernels.cc");
    println!("cargo:rerun-if-changed=src/shim/cpu_kernels.h");
    println!("cargo:rerun-if-changed=src/shim/quant_kernels.cc");
    println!("cargo:rerun-if-changed=src/shim/image_kernels.cc");
    println!("cargo:rerun-if-changed=src/shim/kernel_common.h");

    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if let Some(dir) = &openblas {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib:+verbatim=libopenblas.so.0");
    }
    if target_os == "linux" {
        // dlopen/dlsym (part of libc from glibc 2.34, libdl before): the OpenBLAS
        // forwarder, and the image kernels' lookup of cblas_sgemm in every build.
        println!("cargo:rustc-link-lib=dylib=dl");
    }
    if cuda {
        // libmlx's CUDA dependencies exist only on machines with the CUDA runtime.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        println!("cargo:cuda=1");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:libdir={}", lib.display());
    println!("cargo:include={}", include.display());
    let root = lib
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    println!("cargo:root={}", root.display());
    println!("cargo:rustc-env=MLXENGINE_MLX_LIBDIR={}", lib.display());
}

/// Returns (include dir, lib dir) of a usable MLX.
fn locate(target_os: &str, cuda: bool) -> Result<(PathBuf, PathBuf), String> {
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        for base in [dir.clone(), dir.join("mlx")] {
            if let Some(found) = check(&base) {
                return Ok(found);
            }
        }
        return Err(format!(
            "MLX_DIR={} has no include/mlx/mlx.h with lib/libmlx.*",
            dir.display()
        ));
    }
    let wheel = match (target_os, cuda) {
        ("macos", _) => "mlx",
        (_, true) => "mlx-cuda-13",
        _ => "mlx-cpu",
    };
    let cache = cache_dir().join(format!("{wheel}-{MLX_VERSION}"));
    if let Some(found) = check(&cache.join("mlx")) {
        return Ok(found);
    }
    fetch_wheel(wheel, &cache)?;
    check(&cache.join("mlx")).ok_or_else(|| format!("the {wheel} wheel unpacked in {} has no libmlx", cache.display()))
}

fn check(base: &Path) -> Option<(PathBuf, PathBuf)> {
    let include = base.join("include");
    let lib = base.join("lib");
    let has_lib = ["libmlx.so", "libmlx.dylib"].iter().any(|n| lib.join(n).exists());
    (include.join("mlx/mlx.h").exists() && has_lib).then_some((include, lib))
}

fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("MLXENGINE_CACHE") {
        return PathBuf::from(d).join("mlx");
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(env::temp_dir);
    base.join("mlxengine").join("mlx")
}

/// Downloads `wheel==MLX_VERSION` with pip and unpacks it into `dest`
/// atomically (unpack into a sibling temp folder, then rename).
fn fetch_wheel(wheel: &str, dest: &Path) -> Result<(), String> {
    let parent = dest.parent().ok_or("cache path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".tmp-{}-{}", wheel, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(format!("{wheel}=={MLX_VERSION}"))
        .arg("-d")
        .arg(&tmp)
        .status()
        .map_err(|e| format!("cannot run `{python} -m pip`: {e}"))?;
    if !status.success() {
        return Err(format!("`{python} -m pip download {wheel}=={MLX_VERSION}` failed"));
    }
    let whl = std::fs::read_dir(&tmp)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip downloaded no .whl file")?;
    let unpacked = tmp.join("unpacked");
    let status = Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&whl)
        .arg(&unpacked)
        .status()
        .map_err(|e| format!("cannot unpack {}: {e}", whl.display()))?;
    if !status.success() {
        return Err(format!("unpacking {} failed", whl.display()));
    }
    // zipfile drops the executable bit, which shared objects do not need; keep it simple.
    match std::fs::rename(&unpacked, dest) {
        Ok(()) => {}
        // Another build won the race: its copy is as good as ours.
        Err(_) if check(&dest.join("mlx")).is_some() => {}
        Err(e) => return Err(format!("cannot move the unpacked wheel to {}: {e}", dest.display())),
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// The folder holding Debian's `libopenblas.so.0`, if installed.
fn find_openblas() -> Option<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("libopenblas.so.0").exists())
}
