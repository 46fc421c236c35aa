//! Build script shared by every crate that links engine-mlx into binaries
//! (tests, examples, the CLI): `build = "../engine-mlx/dependent_build.rs"`.
//! engine-mlx exports its library folder as `DEP_MLX_LIBDIR`; link args do
//! not propagate to dependents, so each one adds the rpath itself (and, for
//! CUDA builds, accepts libmlx's CUDA symbols that only the GPU machine has).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        // `cargo xtask dist` lays binaries out as bin/ beside lib/ (libmlx and
        // the BLAS it needs): those come first, so a packaged copy never reaches
        // back into the build machine's cache; then the cache, for builds in place.
        // An old-style RPATH (not RUNPATH) also serves the libraries' own
        // dependencies (OpenBLAS's libgfortran), which RUNPATH would not.
        if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
            println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
            println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/mlx/lib:$ORIGIN/../lib");
        }
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var("DEP_MLX_CUDA").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
