//! `fast::linear` (one pass over the weights for decode-sized batches, our
//! threaded sgemm beyond) against MLX's matmul with the transposed weight
//! (OpenBLAS's threads), float32 on the CPU, at SmolLM2's MLP shape:
//! `cargo bench -p engine-mlx --bench linear`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine_mlx::{fast, random, Array, Dtype};

fn normal(shape: &[usize], seed: u64) -> Array {
    let key = random::key(seed).unwrap();
    let a = random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    a.eval().unwrap();
    a
}

fn linear(c: &mut Criterion) {
    let w = normal(&[1536, 576], 1);
    let mut g = c.benchmark_group("linear_1536x576");
    for rows in [1usize, 4, 8, 16, 64, 512] {
        let x = normal(&[rows, 576], 2);
        g.bench_with_input(BenchmarkId::new("skinny", rows), &x, |b, x| {
            b.iter(|| fast::linear(x, &w).unwrap().eval().unwrap())
        });
        g.bench_with_input(BenchmarkId::new("matmul", rows), &x, |b, x| {
            b.iter(|| x.matmul(&w.t().unwrap()).unwrap().eval().unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, linear);
criterion_main!(benches);
