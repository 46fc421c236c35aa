//! Parity and speed of the engine's CUDA quantized matvec against MLX's own
//! `quantized_matmul`, on the GPU (build with `--features cuda`):
//!
//! `qmv_check [--quick]`
//!
//! For every linear layer shape of Llama-3.2-1B, Llama-3.1-8B and Qwen2.5-7B
//! (q/o, k/v, gate/up, down, LM head) and batch 1, 4, 32: random weights
//! quantized by MLX, random x; both kernels against a float32 reference (MLX's
//! kernel on float32 copies of x, scales and biases, rounded to the dtype of
//! the output). Prints one JSON line a case (relative L2 errors, microseconds
//! per call of each kernel and of both layouts of ours) and a summary line;
//! exits 1 if our kernel is off by more than 1e-3 relative. Batch 8 and 16,
//! other group sizes, 8-bit and float16/float32 (batch 1 and 4) run on the 8B shapes unless
//! `--quick` (bfloat16 4-bit group 64 alone).

use engine_mlx::quant::{
    cuda_quantized_matmul, quantize, quantized_matmul, set_cuda_kernels, CudaQmvLayout, QuantSpec, Quantized,
};
use engine_mlx::{eval, random, Array, Dtype, Result};
use std::time::Instant;

/// A linear layer: name, input features (K), output features (N).
type Layer = (&'static str, usize, usize);

const FAMILIES: [(&str, [Layer; 5]); 3] = [
    (
        "llama-3.2-1b",
        [
            ("q_o", 2048, 2048),
            ("k_v", 2048, 512),
            ("gate_up", 2048, 8192),
            ("down", 8192, 2048),
            ("lm_head", 2048, 128256),
        ],
    ),
    (
        "llama-3.1-8b",
        [
            ("q_o", 4096, 4096),
            ("k_v", 4096, 1024),
            ("gate_up", 4096, 14336),
            ("down", 14336, 4096),
            ("lm_head", 4096, 128256),
        ],
    ),
    (
        "qwen2.5-7b",
        [
            ("q_o", 3584, 3584),
            ("k_v", 3584, 512),
            ("gate_up", 3584, 18944),
            ("down", 18944, 3584),
            ("lm_head", 3584, 152064),
        ],
    ),
];

/// ‖a − b‖ / ‖b‖ over all elements, in f64.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

/// Microseconds per call: `reps` independent calls evaluated together, best of 2.
fn time_us(reps: usize, f: &dyn Fn() -> Result<Array>) -> Result<f64> {
    eval(&[f()?])?;
    let mut best = f64::MAX;
    for _ in 0..2 {
        let t = Instant::now();
        let ys = (0..reps).map(|_| f()).collect::<Result<Vec<_>>>()?;
        eval(&ys)?;
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
    }
    Ok(best)
}

fn case(family: &str, layer: &str, k: usize, n: usize, m: usize, dtype: Dtype, spec: QuantSpec) -> Result<f64> {
    let key = random::key((k * 31 + n) as u64)?;
    let w = random::normal(&[n, k], Dtype::Float32, 0.0, 0.02, Some(&key))?.astype(dtype)?;
    let q = quantize(&w, spec)?;
    let x = random::normal(&[m, k], Dtype::Float32, 0.0, 1.0, Some(&random::key(7)?))?.astype(dtype)?;
    let q32 = Quantized {
        weight: q.weight.clone(),
        scales: q.scales.astype(Dtype::Float32)?,
        biases: q.biases.astype(Dtype::Float32)?,
        spec,
        int8_kernels: false,
    };
    eval([&q.weight, &q.scales, &q.biases, &x, &q32.scales, &q32.biases])?;
    set_cuda_kernels(false);
    let exact = quantized_matmul(&x.astype(Dtype::Float32)?, &q32, true)?;
    // The float32 result rounded to the output dtype: what an exact kernel returns.
    let reference = exact.astype(dtype)?.to_f32_vec()?;
    let exact = exact.to_f32_vec()?;
    let mlx = quantized_matmul(&x, &q, true)?.to_f32_vec()?;
    let (warp, block) = (CudaQmvLayout::WarpRows, CudaQmvLayout::BlockRows);
    let ours = cuda_quantized_matmul(&x, &q, warp)?.to_f32_vec()?;
    let ours_block = cuda_quantized_matmul(&x, &q, block)?.to_f32_vec()?;
    let reps = (500_000_000 / (n * k * spec.bits as usize / 8)).clamp(5, 50);
    let mlx_us = time_us(reps, &|| quantized_matmul(&x, &q, true))?;
    let ours_us = time_us(reps, &|| cuda_quantized_matmul(&x, &q, warp))?;
    let block_us = time_us(reps, &|| cuda_quantized_matmul(&x, &q, block))?;
    set_cuda_kernels(true);
    let err = rel_err(&ours, &reference).max(rel_err(&ours_block, &reference));
    let bytes = (n * k * spec.bits as usize / 8 + n * k / spec.group_size as usize * 2 * dtype.size()) as f64;
    println!(
        "{}",
        serde_json::json!({
            "family": family, "layer": layer, "k": k, "n": n, "m": m, "dtype": dtype.name(),
            "bits": spec.bits, "group": spec.group_size,
            "ours_rel_err": rel_err(&ours, &reference), "ours_block_rel_err": rel_err(&ours_block, &reference),
            "mlx_rel_err": rel_err(&mlx, &reference), "ours_vs_mlx": rel_err(&ours, &mlx),
            "ours_vs_f32": rel_err(&ours, &exact), "mlx_vs_f32": rel_err(&mlx, &exact),
            "ours_us": ours_us, "ours_block_us": block_us, "mlx_us": mlx_us, "speedup": mlx_us / ours_us,
            "ours_gbps": bytes / ours_us / 1e3, "mlx_gbps": bytes / mlx_us / 1e3,
        })
    );
    Ok(err)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if !set_cuda_kernels(true) {
        eprintln!("qmv_check: built without the `cuda` feature");
        std::process::exit(2);
    }
    let spec = |bits, group_size| QuantSpec { group_size, bits };
    let mut cases = vec![];
    for (family, layers) in FAMILIES {
        for (layer, k, n) in layers {
            for m in [1, 4, 32] {
                cases.push((family, layer, k, n, m, Dtype::Bfloat16, spec(4, 64)));
            }
        }
    }
    if !quick {
        let (family, layers) = FAMILIES[1];
        // Where the row limit for our kernel should sit: 8 and 16 rows on the 8B shapes.
        for (layer, k, n) in layers {
            for m in [8, 16] {
                cases.push((family, layer, k, n, m, Dtype::Bfloat16, spec(4, 64)));
            }
        }
        let others = [
            (Dtype::Bfloat16, spec(4, 32)),
            (Dtype::Bfloat16, spec(4, 128)),
            (Dtype::Bfloat16, spec(8, 64)),
            (Dtype::Float16, spec(4, 64)),
            (Dtype::Float32, spec(4, 64)),
        ];
        for (dtype, s) in others {
            for (layer, k, n) in layers {
                for m in [1, 4] {
                    cases.push((family, layer, k, n, m, dtype, s));
                }
            }
        }
    }
    let mut worst: f64 = 0.0;
    for (family, layer, k, n, m, dtype, s) in cases {
        worst = worst.max(case(family, layer, k, n, m, dtype, s)?);
    }
    println!(
        "{}",
        serde_json::json!({"summary": "qmv_check", "worst_rel_err": worst, "pass": worst <= 1e-3})
    );
    if worst > 1e-3 {
        std::process::exit(1);
    }
    Ok(())
}
