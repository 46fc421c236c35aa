//! The CPU quantized kernels (`quantized_matmul` on float32 activations with
//! 4/5/8-bit weights and float32 scales) against the dequantized-f32 product
//! computed in f64, at every instruction-set level this CPU has.
//!
//! Tolerance: the kernels round x to int8 per block of 32 (x ≈ d·q, d =
//! max|x|/127), so an element moves by at most d/2 and an output by at most
//! Σ_blocks d_b/2 · Σ_{i∈b} |w_i|; on top of that, float32 summation adds up
//! to 1e-5 · Σ |x_i w_i|. Each output is checked against that bound.

use engine_mlx::quant::{self, QuantSpec};
use engine_mlx::{random, Array, Dtype};

fn normal(shape: &[usize], seed: u64) -> Array {
    let key = random::key(seed).unwrap();
    random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap()
}

/// Checks x (m, k) · Wᵀ for a random W (n, k) quantized with `spec`.
fn check(m: usize, n: usize, k: usize, spec: QuantSpec, seed: u64) {
    let w = normal(&[n, k], seed);
    let q = quant::quantize(&w, spec).unwrap().for_cpu_kernels().unwrap();
    let wd = quant::dequantize(&q).unwrap().to_vec::<f32>().unwrap();
    let mut xv = normal(&[m, k], seed + 1).to_vec::<f32>().unwrap();
    // One all-zero block and one large outlier: the edge cases of the scaling.
    xv[..32].fill(0.0);
    xv[k - 1] = 40.0;
    let x = Array::from_slice(&xv, &[1, m, k]).unwrap();
    let y = quant::quantized_matmul(&x, &q, true).unwrap();
    assert_eq!(y.shape(), vec![1, m, n]);
    let y = y.to_vec::<f32>().unwrap();
    for r in 0..m {
        let xr = &xv[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &wd[c * k..(c + 1) * k];
            let exact: f64 = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let magnitude: f64 = xr.iter().zip(wr).map(|(&a, &b)| f64::from(a * b).abs()).sum();
            let rounding: f64 = xr
                .chunks(32)
                .zip(wr.chunks(32))
                .map(|(xb, wb)| {
                    let d = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                    d / 2.0 * wb.iter().map(|v| f64::from(v.abs())).sum::<f64>()
                })
                .sum();
            let got = f64::from(y[r * n + c]);
            let bound = rounding + 1e-5 * magnitude + 1e-6;
            assert!(
                (got - exact).abs() <= bound,
                "{spec:?} m={m} row {r} col {c}: {got} vs {exact} (bound {bound})"
            );
        }
    }
}

/// The kernel level is process-wide: tests that force it or compare bits
/// across calls take this lock, so they do not run in each other's middle.
static LEVEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn quantized_kernels_match_the_dequantized_product_at_every_level() {
    let _level = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let top = quant::cpu_kernel_level();
    for level in 0..=top {
        assert_eq!(quant::force_cpu_kernel_level(Some(level)), level);
        for (bits, group) in [(4, 32), (4, 64), (5, 32), (5, 64), (8, 32), (8, 128)] {
            let spec = QuantSpec {
                group_size: group,
                bits,
            };
            // 1 row (decode), 6 rows (a tile of 4 and a tail of 2), N not a
            // multiple of the task split or of the weight rows a tile takes.
            for m in [1, 3, 6, 90] {
                check(m, 37, 256, spec, (level * 100 + bits * 10 + m as i32) as u64);
            }
            // An odd number of blocks (the kernels may take them in pairs).
            if group == 32 {
                check(5, 7, 160, spec, (level * 100 + bits * 10) as u64);
            }
        }
    }
    quant::force_cpu_kernel_level(None);
}

#[test]
fn f16_scales_take_mlx_kernels_and_agree() {
    // Not the kernels' form: MLX's own quantized matmul answers.
    let spec = QuantSpec {
        group_size: 32,
        bits: 4,
    };
    let q = quant::quantize(&normal(&[8, 64], 7).astype(Dtype::Float16).unwrap(), spec).unwrap();
    let x = normal(&[2, 64], 8);
    let ours = quant::quantized_matmul(&x, &q.for_cpu_kernels().unwrap(), true).unwrap();
    let mlx = quant::quantized_matmul(&x.astype(Dtype::Float16).unwrap(), &q, true).unwrap();
    let mlx = mlx.astype(Dtype::Float32).unwrap();
    let (a, b) = (ours.to_vec::<f32>().unwrap(), mlx.to_vec::<f32>().unwrap());
    // The int8 bound of the module doc is ≈ 0.6 for 64 inputs of N(0, 1).
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() <= 1.0, "{u} vs {v}");
    }
}

#[test]
fn fused_layers_give_each_part_the_same_bits() {
    use engine_mlx::nn::Linear;
    let _level = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let spec = QuantSpec {
        bits: 4,
        group_size: 32,
    };
    let layer = |n: usize, seed: u64, kernels: bool| {
        let q = quant::quantize(&normal(&[n, 96], seed), spec).unwrap();
        Linear::Quantized {
            q: if kernels { q.for_cpu_kernels().unwrap() } else { q },
            bias: Some(normal(&[n], seed + 7)),
        }
    };
    let x = normal(&[3, 96], 40);
    let mut parts = [layer(64, 41, true), layer(16, 42, true), layer(24, 43, true)];
    let alone: Vec<Vec<f32>> = parts.iter().map(|l| l.forward(&x).unwrap().to_vec().unwrap()).collect();
    let [a, b, c] = &mut parts;
    let fused = Linear::fuse_outputs(&mut [a, b, c])
        .unwrap()
        .expect("same spec, all opted in");
    let y = fused.forward(&x).unwrap();
    assert_eq!(y.shape(), vec![3, 104]);
    let mut start = 0;
    for (part, want) in parts.iter().zip(&alone) {
        let n = want.len() / 3;
        let cols = y
            .slice_axis(1, start, start + n as i32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(&cols, want, "the fused product's columns");
        // The parts, now views of the fused weights, still give their own product.
        assert_eq!(&part.forward(&x).unwrap().to_vec::<f32>().unwrap(), want);
        start += n as i32;
    }
    // A layer left on MLX's kernels (or another spec) is not fused.
    let (mut d, mut e) = (layer(8, 44, true), layer(8, 45, false));
    assert!(Linear::fuse_outputs(&mut [&mut d, &mut e]).unwrap().is_none());
}

/// The CPU's fused kernel (`fused_matvec` on weights opted in to the int8
/// kernels) against the composed ops (MLX's RMS norm, the int8 product, the
/// residual add or SwiGLU): they round x to int8 from slightly different
/// normed values, so the tolerance is the int8 bound of the module doc (≈ 0.1
/// here for outputs of magnitude ≈ 10), not bits. And a row's bits alone
/// equal its bits in a batch.
#[test]
fn fused_cpu_kernel_matches_the_composed_ops() {
    use engine_mlx::fast;
    use engine_mlx::quant::{FusedEpilogue, FusedWeight};
    let _level = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let (k, m) = (128, 5);
    for (bits, group) in [(4, 32), (5, 32), (8, 64)] {
        let spec = QuantSpec {
            group_size: group,
            bits,
        };
        let mats: Vec<quant::Quantized> = [(48, 1), (16, 2), (48, 3)]
            .iter()
            .map(|&(n, seed)| {
                quant::quantize(&normal(&[n, k], seed), spec)
                    .unwrap()
                    .for_cpu_kernels()
                    .unwrap()
            })
            .collect();
        let x = normal(&[1, m, k], 10);
        let nw = normal(&[k], 11);
        let bias = normal(&[16], 12);
        let residual = normal(&[1, m, 48], 13);
        let xn = fast::rms_norm(&x, Some(&nw), 1e-5).unwrap();
        let close = |got: &Array, want: &Array| {
            assert_eq!(got.shape(), want.shape());
            let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
            for (a, b) in g.iter().zip(&w) {
                assert!((a - b).abs() <= 0.1 + 0.02 * b.abs(), "{spec:?}: {a} vs {b}");
            }
        };
        // Norm + three products (the middle one with a bias), as (B, heads, L, D).
        let ws: Vec<(FusedWeight<'_>, Option<&Array>)> = vec![
            (FusedWeight::Quantized(&mats[0]), None),
            (FusedWeight::Quantized(&mats[1]), Some(&bias)),
            (FusedWeight::Quantized(&mats[2]), None),
        ];
        let shapes: [&[i32]; 3] = [&[1, m as i32, 3, 16], &[1, m as i32, 1, 16], &[1, m as i32, 3, 16]];
        let ys = quant::fused_matvec(&x, &ws, Some((&nw, 1e-5)), None, FusedEpilogue::Split, &shapes)
            .unwrap()
            .expect("the CPU kernel applies");
        for (i, y) in ys.iter().enumerate() {
            let mut want = quant::quantized_matmul(&xn, &mats[i], true).unwrap();
            if i == 1 {
                want = want.add(&bias).unwrap();
            }
            close(&y.reshape(&[1, m as i32, -1]).unwrap(), &want);
        }
        // One product + residual.
        let y = quant::fused_matvec(&x, &ws[..1], None, Some(&residual), FusedEpilogue::Split, &[])
            .unwrap()
            .unwrap();
        close(
            &y[0],
            &quant::quantized_matmul(&x, &mats[0], true)
                .unwrap()
                .add(&residual)
                .unwrap(),
        );
        // Norm + gate/up + SwiGLU.
        let gu = [ws[0], ws[2]];
        let y = quant::fused_matvec(&x, &gu, Some((&nw, 1e-5)), None, FusedEpilogue::SwiGlu, &[])
            .unwrap()
            .unwrap();
        let g = quant::quantized_matmul(&xn, &mats[0], true).unwrap();
        let u = quant::quantized_matmul(&xn, &mats[2], true).unwrap();
        close(&y[0], &g.silu().unwrap().multiply(&u).unwrap());
        // Row 3 alone gives the bits it has in the batch.
        let row = x.slice_axis(1, 3, 4).unwrap();
        let alone = quant::fused_matvec(&row, &gu, Some((&nw, 1e-5)), None, FusedEpilogue::SwiGlu, &[])
            .unwrap()
            .unwrap();
        assert_eq!(
            alone[0].to_vec::<f32>().unwrap(),
            y[0].slice_axis(1, 3, 4).unwrap().to_vec::<f32>().unwrap()
        );
        // x and the residual as strided views (transposes) give the bits of
        // their row-major copies.
        let copy = |a: &Array| Array::from_slice(&a.to_vec::<f32>().unwrap(), &a.shape()).unwrap();
        let xt = normal(&[1, k, m], 14).transpose(&[0, 2, 1]).unwrap();
        let rt = normal(&[1, 48, m], 15).transpose(&[0, 2, 1]).unwrap();
        let (xc, rc) = (copy(&xt), copy(&rt));
        let fused = |x: &Array, r: &Array| {
            quant::fused_matvec(x, &ws[..1], Some((&nw, 1e-5)), Some(r), FusedEpilogue::Split, &[])
                .unwrap()
                .unwrap()
                .remove(0)
                .to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(fused(&xt, &rt), fused(&xc, &rc));
    }
}

/// Matrices of different bits and group sizes in one fused CPU kernel (GGUF
/// Q4_K_M files hold Q5_0 q/k beside a Q8_0 v): x is quantized once per
/// format, so each output has the bits of its matrix's own product, at every
/// level.
#[test]
fn fused_cpu_kernel_takes_mixed_formats() {
    use engine_mlx::quant::{FusedEpilogue, FusedWeight};
    let _level = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let k = 192;
    let specs = [(5, 32, 40), (8, 32, 24), (4, 64, 24), (5, 32, 8)];
    let mats: Vec<quant::Quantized> = specs
        .iter()
        .enumerate()
        .map(|(i, &(bits, group_size, n))| {
            let spec = QuantSpec { group_size, bits };
            quant::quantize(&normal(&[n, k], 60 + i as u64), spec)
                .unwrap()
                .for_cpu_kernels()
                .unwrap()
        })
        .collect();
    let top = quant::cpu_kernel_level();
    for level in 0..=top {
        quant::force_cpu_kernel_level(Some(level));
        for m in [1, 5] {
            let x = normal(&[1, m, k], 70 + m as u64);
            // Three formats in one call, and two matrices sharing one.
            for pick in [[0, 1, 2], [0, 3, 1]] {
                let ws: Vec<(FusedWeight<'_>, Option<&Array>)> =
                    pick.iter().map(|&i| (FusedWeight::Quantized(&mats[i]), None)).collect();
                let ys = quant::fused_matvec(&x, &ws, None, None, FusedEpilogue::Split, &[])
                    .unwrap()
                    .expect("the CPU kernel takes mixed formats");
                assert_eq!(ys.len(), 3);
                for (y, &i) in ys.iter().zip(&pick) {
                    let want = quant::quantized_matmul(&x, &mats[i], true).unwrap();
                    assert_eq!(y.shape(), want.shape());
                    assert_eq!(
                        y.to_vec::<f32>().unwrap(),
                        want.to_vec::<f32>().unwrap(),
                        "level {level}, m {m}, matrix {i} ({:?})",
                        mats[i].spec
                    );
                }
            }
        }
    }
    quant::force_cpu_kernel_level(None);
}
