//! Measures the CPU image kernels at the shapes of `cargo xtask bench diffusion`'s
//! UNet (batch 2: CFG): each 3×3 conv, `linear_rows` product and attention, one JSON line each
//! with the best wall time and its GFLOP/s, and the mean CPU time of all threads
//! (steadier than wall time on a shared machine). `CONV_RUNS=N` fixes the runs
//! per shape, for `perf stat` comparisons of two builds.
use engine_mlx::{fast, random, Array, Dtype};
use std::time::Instant;

/// CPU seconds of this process's threads (the first field of each task's schedstat, in ns).
fn cpu_s() -> f64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    ns as f64 * 1e-9
}

/// (best wall seconds, mean CPU seconds) of a call.
fn best(f: impl Fn() -> engine_mlx::Result<Array>) -> engine_mlx::Result<(f64, f64)> {
    f()?.eval()?;
    let (mut b, start, c0) = (f64::MAX, Instant::now(), cpu_s());
    let fixed: Option<usize> = std::env::var("CONV_RUNS").ok().and_then(|v| v.parse().ok());
    let mut runs = 0;
    while fixed.map_or(runs < 5 || (start.elapsed().as_secs_f64() < 1.0 && runs < 200), |n| {
        runs < n
    }) {
        let t = Instant::now();
        f()?.eval()?;
        b = b.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    Ok((b, (cpu_s() - c0) / runs as f64))
}

fn rnd(shape: &[usize], seed: u64) -> engine_mlx::Result<Array> {
    let a = random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&random::key(seed)?))?;
    a.eval()?;
    Ok(a)
}

fn main() -> engine_mlx::Result<()> {
    let convs: &[(usize, usize, usize, usize)] = &[
        (32, 128, 128, 1),
        (32, 384, 128, 1),
        (16, 256, 256, 1),
        (16, 512, 256, 1),
        (8, 256, 256, 1),
        (8, 512, 256, 1),
        (32, 256, 256, 1),
        (32, 128, 128, 2),
    ];
    let mut total = 0.0;
    for &(hw, cin, cout, stride) in convs {
        let x = rnd(&[2, hw, hw, cin], 1)?;
        let w = rnd(&[cout, 3, 3, cin], 2)?;
        let b = rnd(&[cout], 3)?;
        let (s, cpu) = best(|| fast::conv2d(&x, &w, Some(&b), (stride as i32, stride as i32), (1, 1)))?;
        let o = hw / stride;
        let gflops = 2.0 * (2 * o * o * cout * 9 * cin) as f64 / s / 1e9;
        total += cpu;
        println!(
            "{{\"conv\":\"2x{hw}x{hw}x{cin}->{cout}/{stride}\",\"ms\":{:.3},\"gflops\":{gflops:.1},\"cpu_ms\":{:.3}}}",
            s * 1e3,
            cpu * 1e3
        );
    }
    let lins: &[(usize, usize, usize)] = &[
        (2048, 128, 1024),
        (2048, 512, 128),
        (2048, 128, 128),
        (512, 256, 2048),
        (512, 1024, 256),
        (512, 256, 256),
    ];
    for &(m, k, n) in lins {
        let x = rnd(&[m, k], 4)?;
        let w = rnd(&[n, k], 5)?;
        let b = rnd(&[n], 6)?;
        let (s, cpu) = best(|| fast::linear_rows(&x, &w, Some(&b)))?;
        total += cpu;
        println!(
            "{{\"linear\":\"{m}x{k}->{n}\",\"ms\":{:.3},\"gflops\":{:.1},\"cpu_ms\":{:.3}}}",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9,
            cpu * 1e3
        );
    }
    // Self-attention at the 32×32 and 16×16 levels (8 heads), cross-attention on 77 tokens.
    let attns: &[(usize, usize, usize)] = &[(1024, 1024, 128), (256, 256, 256), (1024, 77, 128)];
    for &(l, sl, c) in attns {
        let q = rnd(&[2, l, c], 7)?;
        let k = rnd(&[2, sl, c], 8)?;
        let v = rnd(&[2, sl, c], 9)?;
        let scale = ((c / 8) as f32).powf(-0.5);
        let (s, cpu) = best(|| fast::attention(&q, &k, &v, 8, scale))?;
        total += cpu;
        println!(
            "{{\"attention\":\"2x{l}x{sl}x{c}/8\",\"ms\":{:.3},\"gflops\":{:.1},\"cpu_ms\":{:.3}}}",
            s * 1e3,
            4.0 * (2 * l * sl * c) as f64 / s / 1e9,
            cpu * 1e3
        );
    }
    println!("{{\"total_cpu_ms\":{:.3}}}", total * 1e3);
    Ok(())
}
