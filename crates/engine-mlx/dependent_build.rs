//! Build script shared by every crate that links engine-mlx into binaries
//! (tests, examples, the CLI): `build = "../engine-mlx/dependent_build.rs"`.
//! engine-mlx exports its library folder as `DEP_MLX_LIBDIR`; link args do
//! not propagate to dependents, so each one adds the rpath itself (and, for
//! CUDA builds, accepts libmlx's CUDA symbols that only the GPU machine has).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var("DEP_MLX_CUDA").is_ok_and(|v| v == "1") {
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
