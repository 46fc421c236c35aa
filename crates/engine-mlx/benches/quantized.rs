//! The CPU quantized kernels (`quant::quantized_matmul` with float32 scales)
//! against dense float32 (`fast::linear`: the skinny kernel or OpenBLAS) and
//! MLX's own quantized kernel, at SmolLM2's MLP shape (1536 × 576), for decode
//! (1 row) and prefill-sized (16, 64 rows) inputs, at each instruction-set
//! level this CPU has: `cargo bench -p engine-mlx --bench quantized`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine_mlx::quant::{self, QuantSpec};
use engine_mlx::{fast, random, Array, Dtype};

fn normal(shape: &[usize], seed: u64) -> Array {
    let key = random::key(seed).unwrap();
    let a = random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    a.eval().unwrap();
    a
}

fn quantized(c: &mut Criterion) {
    let w = normal(&[1536, 576], 1);
    let levels = ["c", "avx2", "vnni"];
    for bits in [4, 5, 8] {
        let spec = QuantSpec { group_size: 32, bits };
        let q = quant::quantize(&w, spec).unwrap().for_cpu_kernels().unwrap();
        engine_mlx::eval([&q.weight, &q.scales, &q.biases]).unwrap();
        let q16 = quant::quantize(&w.astype(Dtype::Float16).unwrap(), spec).unwrap();
        engine_mlx::eval([&q16.weight, &q16.scales, &q16.biases]).unwrap();
        let mut g = c.benchmark_group(format!("q{bits}_1536x576"));
        for rows in [1usize, 16, 64] {
            let x = normal(&[rows, 576], 2);
            let x16 = x.astype(Dtype::Float16).unwrap();
            x16.eval().unwrap();
            for level in 0..=quant::cpu_kernel_level() {
                g.bench_with_input(BenchmarkId::new(levels[level as usize], rows), &x, |b, x| {
                    quant::force_cpu_kernel_level(Some(level));
                    b.iter(|| quant::quantized_matmul(x, &q, true).unwrap().eval().unwrap());
                    quant::force_cpu_kernel_level(None);
                });
            }
            g.bench_with_input(BenchmarkId::new("dense_f32", rows), &x, |b, x| {
                b.iter(|| fast::linear(x, &w).unwrap().eval().unwrap())
            });
            g.bench_with_input(BenchmarkId::new("mlx_f16", rows), &x16, |b, x| {
                b.iter(|| quant::quantized_matmul(x, &q16, true).unwrap().eval().unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, quantized);
criterion_main!(benches);
