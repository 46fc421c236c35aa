// Binaries and tests of this crate find libmlx through an rpath (see engine-mlx's build.rs).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
