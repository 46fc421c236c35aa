//! Gives this crate's test and example binaries an rpath to libmlx, which
//! engine-mlx's build script exports as `DEP_MLX_LIBDIR`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
