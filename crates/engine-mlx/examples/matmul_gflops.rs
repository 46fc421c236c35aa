//! Measures f32 1024² matmul throughput on the CPU and prints one JSON line
//! `{"gflops":…,"blas":…,"core":…}` (`MLXENGINE_BLAS=bundled` measures the
//! wheel's reference BLAS). `--libdir` prints where libmlx was linked from.
use engine_mlx::{blas, blas_core, random, Dtype};
use std::time::Instant;

fn main() -> engine_mlx::Result<()> {
    if std::env::args().any(|a| a == "--libdir") {
        println!("{}", env!("MLXENGINE_MLX_LIBDIR"));
        return Ok(());
    }
    let n = 1024usize;
    let a = random::normal(&[n, n], Dtype::Float32, 0.0, 1.0, Some(&random::key(1)?))?;
    let b = random::normal(&[n, n], Dtype::Float32, 0.0, 1.0, Some(&random::key(2)?))?;
    engine_mlx::eval([&a, &b])?;
    a.matmul(&b)?.eval()?; // warm-up
    let (mut best, mut runs) = (f64::MAX, 0);
    let start = Instant::now();
    while runs < 3 || (start.elapsed().as_secs_f64() < 2.0 && runs < 50) {
        let t = Instant::now();
        a.matmul(&b)?.eval()?;
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    let gflops = 2.0 * (n as f64).powi(3) / best / 1e9;
    println!(
        "{{\"gflops\":{gflops:.2},\"blas\":\"{}\",\"core\":\"{}\",\"runs\":{runs}}}",
        blas(),
        blas_core()
    );
    Ok(())
}
