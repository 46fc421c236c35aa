//! The image-model CPU kernels (convolution, group norm + SiLU, multi-head
//! attention over (B, L, H·D)) against MLX's own ops run in float64, which
//! the kernels do not take, so the reference is MLX's implementation. (MLX's
//! CPU conv computes float64 inputs in float32 — its results are exactly
//! float32 values — so for the convolution the reference is in effect MLX's
//! float32 im2col + GEMM.)
//!
//! Tolerances, |ours − reference| ≤ tol·(1 + |reference|): 2e-5 for the
//! convolution (sums of up to 9·48 float32 products of unit-normal values in
//! another order than MLX's GEMM; worst seen 8.7e-6, where a sum cancels),
//! 2e-5 for the group norm (statistics in double, output in float32; worst
//! seen 3.7e-7), 1e-5 for attention (our exp has a relative error under
//! 2e-7; worst seen 4.1e-7) and for GEGLU (our erf's error times
//! |value·gate|/2).

use engine_mlx::fast::{self, AttentionMask};
use engine_mlx::{conv2d, random, Array, Dtype};

type R = engine_mlx::Result<()>;

fn normal(shape: &[usize], seed: u64, scale: f32) -> Array {
    let key = random::key(seed).unwrap();
    random::normal(shape, Dtype::Float32, 0.0, scale, Some(&key)).unwrap()
}

fn f64_of(a: &Array) -> Array {
    a.astype(Dtype::Float64).unwrap()
}

fn close(ours: &Array, reference: &Array, tol: f64) {
    assert_eq!(ours.shape(), reference.shape(), "shapes differ");
    let a = ours.astype(Dtype::Float64).unwrap().to_vec::<f64>().unwrap();
    let b = reference.astype(Dtype::Float64).unwrap().to_vec::<f64>().unwrap();
    let mut worst = 0.0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let err = (x - y).abs() / (1.0 + y.abs());
        worst = worst.max(err);
        assert!(err <= tol, "element {i}: {x} vs {y}");
    }
    eprintln!("worst relative error {worst:.2e} (tolerance {tol:.0e})");
}

/// Every instruction-set level of the image kernels this CPU has, highest
/// first (2 AVX-512, 1 AVX2, 0 portable). The cap is process-wide; every test
/// here passes at any level.
fn levels() -> Vec<i32> {
    (0..=fast::force_image_kernel_level(None)).rev().collect()
}

/// (kernel, stride, padding, input (N, H, W, C), output channels, bias).
type ConvCase = (usize, i32, i32, [usize; 4], usize, bool);

#[test]
fn conv2d_matches_mlx_conv() -> R {
    let cases: [ConvCase; 11] = [
        (3, 1, 1, [2, 13, 11, 16], 24, true), // the UNet's/VAE's 3×3 "same" conv
        (3, 1, 1, [1, 40, 37, 48], 32, true), // several tiles over both threads
        (3, 2, 1, [2, 16, 15, 8], 12, true),  // a downsampler (odd width)
        (3, 2, 0, [1, 17, 17, 8], 8, false),  // the VAE encoder's, after its own pad
        (1, 1, 0, [2, 9, 7, 20], 36, true),   // 1×1 projections and shortcuts
        (3, 1, 0, [1, 6, 5, 3], 5, false),    // "valid", odd channel counts
        (5, 1, 2, [1, 12, 10, 4], 6, true),   // another kernel size
        (3, 1, 1, [2, 5, 9, 8], 100, true),   // output blocks of 64 and 36 (the direct kernel's 3-vector tail)
        (3, 1, 2, [1, 3, 4, 2], 17, false),   // padding wider than the kernel's reach, a 1-channel tail
        (1, 1, 0, [2, 10, 11, 24], 70, true), // a 1×1 conv of 220 positions: the direct linear kernel
        (3, 1, 1, [2, 7, 6, 150], 70, true),  // k = 1350, output blocks of 64 and 6
    ];
    for level in levels() {
        eprintln!("image kernel level {level}");
        fast::force_image_kernel_level(Some(level));
        for (i, &(k, stride, pad, shape, cout, with_bias)) in cases.iter().enumerate() {
            let x = normal(&shape, 10 + i as u64, 1.0);
            let w = normal(&[cout, k, k, shape[3]], 20 + i as u64, 0.5);
            let b = normal(&[cout], 30 + i as u64, 1.0);
            let bias = with_bias.then_some(&b);
            let ours = fast::conv2d(&x, &w, bias, (stride, stride), (pad, pad))?;
            let mut reference = conv2d(&f64_of(&x), &f64_of(&w), (stride, stride), (pad, pad), (1, 1), 1)?;
            if let Some(b) = bias {
                reference = reference.add(&f64_of(b))?;
            }
            close(&ours, &reference, 2e-5);
        }
    }
    fast::force_image_kernel_level(None);
    Ok(())
}

#[test]
fn packed_conv_weight_gives_the_same_convolution() -> R {
    // A 3×3 conv of 150 input channels, a 1×1 one (the direct linear
    // kernel), a downsampler; packing applies where the direct kernel runs.
    let cases = [
        (3, 1, 1, [2, 7, 6, 150], 70),
        (1, 1, 0, [2, 10, 11, 24], 70),
        (3, 2, 1, [2, 16, 15, 8], 12),
    ];
    let mut packs = 0;
    for level in levels() {
        fast::force_image_kernel_level(Some(level));
        for (i, &(k, stride, pad, shape, cout)) in cases.iter().enumerate() {
            let x = normal(&shape, 40 + i as u64, 1.0);
            let w = normal(&[cout, k, k, shape[3]], 50 + i as u64, 0.5);
            let b = normal(&[cout], 60 + i as u64, 1.0);
            // None at level 0 (this test's or, the cap being process-wide, another's).
            let Some(packed) = fast::pack_conv_weight(&w, (stride, stride))? else {
                continue;
            };
            packs += 1;
            assert_eq!(packed.shape(), [cout as i32, k as i32, k as i32, shape[3] as i32]);
            // Against MLX's conv, as conv2d_matches_mlx_conv (another test may change the
            // level meanwhile, so not against fast::conv2d's path of the moment); 5e-5:
            // sums of 9·150 products here (worst seen 2.5e-5).
            let reference = conv2d(&f64_of(&x), &f64_of(&w), (stride, stride), (pad, pad), (1, 1), 1)?;
            close(
                &fast::conv2d_packed(&x, &packed, Some(&b), (stride, stride), (pad, pad))?,
                &reference.add(&f64_of(&b))?,
                5e-5,
            );
            close(
                &fast::conv2d_packed(&x, &packed, None, (stride, stride), (pad, pad))?,
                &reference,
                5e-5,
            );
            // An input whose channels do not match the packed weight is an error, not a read past it.
            let bad = normal(&[1, 8, 8, shape[3] + 1], 1, 1.0);
            assert!(fast::conv2d_packed(&bad, &packed, None, (1, 1), (pad, pad)).is_err());
        }
    }
    if fast::force_image_kernel_level(None) >= 1 {
        assert!(packs > 0, "the direct kernel runs here: weights should pack");
    }
    Ok(())
}

/// (input (N, H, W, C), output channels, padding) of a 3×3 stride-1 conv.
type WinogradCase = ([usize; 4], usize, i32);

/// Winograd F(2×2, 3×3) and F(4×4, 3×3) (the layouts `pack_conv_weight` makes
/// for 3×3 stride-1 convs) against MLX's conv and our direct kernel. F(2×2)'s
/// transforms only add and subtract: its errors stay at the direct conv's level
/// (worst seen 2.6e-5 over 130 channels, 1.9e-5 over 64-72; the direct kernel's
/// tolerance here is 2e-5 up to 48 channels, 5e-5 at 150). F(4×4)'s have
/// coefficients up to 8 and cancel more (worst seen 3.1e-4 over 130 channels,
/// 2e-4 over 64-72): ~10× the direct conv's.
#[test]
fn winograd_conv_matches_direct_and_mlx() -> R {
    let tol = |tile: i32| if tile == 2 { 5e-5 } else { 5e-4 };
    // Winograd applies from 64 channels in and out (below them the direct kernel is faster).
    let cases: [WinogradCase; 8] = [
        ([2, 13, 11, 70], 72, 1),  // edge tiles of 1 and 3 outputs, channel tails of 6 and 8
        ([2, 7, 9, 65], 130, 1),   // output blocks of 64 + 64 + 2, an input tail of 1
        ([2, 18, 17, 64], 80, 1),  // 50 tiles of 4×4: a block of 48 and one of 2
        ([1, 30, 29, 67], 64, 1),  // 225 tiles of 2×2 (5 blocks)
        ([1, 6, 7, 64], 64, 0),    // "valid"
        ([1, 4, 5, 64], 66, 2),    // padding wider than the kernel's reach
        ([2, 3, 3, 100], 100, 1),  // one tile an image, mostly padding
        ([2, 9, 10, 130], 150, 1), // sums over 130 channels, 3 output blocks
    ];
    let mut packs = 0;
    for level in levels() {
        fast::force_image_kernel_level(Some(level));
        for tile in [2, 4] {
            for (i, &(shape, cout, pad)) in cases.iter().enumerate() {
                let x = normal(&shape, 70 + i as u64, 1.0);
                let w = normal(&[cout, 3, 3, shape[3]], 80 + i as u64, 0.5);
                let b = normal(&[cout], 90 + i as u64, 1.0);
                fast::force_conv_winograd(Some(tile));
                // None at level 0 (this test's or another's: the cap is process-wide).
                let Some(packed) = fast::pack_conv_weight(&w, (1, 1))? else {
                    continue;
                };
                if !packed.is_winograd() {
                    continue; // another test lowered the level between the checks
                }
                packs += 1;
                let reference = conv2d(&f64_of(&x), &f64_of(&w), (1, 1), (pad, pad), (1, 1), 1)?.add(&f64_of(&b))?;
                let ours = fast::conv2d_packed(&x, &packed, Some(&b), (1, 1), (pad, pad))?;
                eprintln!("F({tile}x{tile}, 3x3), case {i}");
                close(&ours, &reference, tol(tile));
                fast::force_conv_winograd(Some(0));
                let direct = fast::pack_conv_weight(&w, (1, 1))?;
                if let Some(direct) = direct.filter(|d| !d.is_winograd()) {
                    close(
                        &ours,
                        &fast::conv2d_packed(&x, &direct, Some(&b), (1, 1), (pad, pad))?,
                        tol(tile),
                    );
                }
                // The Winograd layout serves stride 1 only.
                assert!(fast::conv2d_packed(&x, &packed, None, (2, 2), (pad, pad)).is_err());
            }
        }
    }
    fast::force_conv_winograd(None);
    if fast::force_image_kernel_level(None) >= 1 {
        assert!(
            packs > 0,
            "the direct kernel runs here: 3×3 stride-1 weights should pack for Winograd"
        );
    }
    Ok(())
}

#[test]
fn conv2d_takes_strided_inputs_and_rejects_bad_bias() -> R {
    // A transposed view is made contiguous before the kernel reads it.
    let x = normal(&[1, 8, 6, 5], 1, 1.0).transpose(&[0, 2, 1, 3])?;
    let w = normal(&[7, 3, 3, 5], 2, 0.5);
    let ours = fast::conv2d(&x, &w, None, (1, 1), (1, 1))?;
    close(
        &ours,
        &conv2d(&f64_of(&x), &f64_of(&w), (1, 1), (1, 1), (1, 1), 1)?,
        2e-5,
    );
    let bad = normal(&[6], 3, 1.0);
    assert!(fast::conv2d(&x, &w, Some(&bad), (1, 1), (1, 1))
        .and_then(|y| y.eval())
        .is_err());
    Ok(())
}

/// Group norm in MLX ops, the layer's definition, in whatever dtype x has.
fn group_norm_reference(x: &Array, groups: i32, w: &Array, b: &Array, eps: f32, silu: bool) -> Array {
    let s = x.shape_i32();
    let c = *s.last().unwrap();
    let g = x.reshape(&[s[0], -1, groups, c / groups]).unwrap();
    let mean = g.mean(&[1, 3], true).unwrap();
    let var = g.var(&[1, 3], true).unwrap();
    let normed = g
        .subtract(&mean)
        .unwrap()
        .multiply(&var.add_scalar(eps as f64).unwrap().rsqrt().unwrap())
        .unwrap();
    let y = normed.reshape(&s).unwrap().multiply(w).unwrap().add(b).unwrap();
    if silu {
        y.multiply(&y.sigmoid().unwrap()).unwrap()
    } else {
        y
    }
}

#[test]
fn group_norm_and_silu_match_mlx() -> R {
    // An offset mean (variance by E[x²] − mean² must not cancel), images of
    // different statistics, rows over several blocks, and a 3-D input.
    for (shape, groups, offset) in [
        (vec![2, 33, 17, 64], 32, 3.0f32),
        (vec![1, 8, 8, 32], 8, 0.0),
        (vec![2, 300, 24], 4, -1.5),
    ] {
        let c = *shape.last().unwrap();
        let x = normal(&shape, 7, 2.0).add_scalar(offset as f64)?;
        let w = normal(&[c], 8, 1.0);
        let b = normal(&[c], 9, 1.0);
        for silu in [false, true] {
            let ours = fast::group_norm(&x, groups, &w, &b, 1e-6, silu)?;
            let reference = group_norm_reference(&f64_of(&x), groups, &f64_of(&w), &f64_of(&b), 1e-6, silu);
            close(&ours, &reference, 2e-5);
        }
    }
    Ok(())
}

#[test]
fn attention_matches_mlx_sdpa() -> R {
    // Self-attention (UNet's 8 heads of 16), cross-attention on 77 text
    // tokens, head dims that are not multiples of 16 (40: SD 1.5's) and a
    // single wide head (the VAE's).
    for (b, l, s, heads, d) in [
        (2usize, 256usize, 256usize, 8usize, 16usize),
        (2, 100, 77, 8, 32),
        (1, 67, 67, 2, 40),
        (1, 64, 64, 1, 128),
        (1, 5, 3, 3, 12),
    ] {
        let q = normal(&[b, l, heads * d], 1, 1.0);
        let k = normal(&[b, s, heads * d], 2, 1.0);
        let v = normal(&[b, s, heads * d], 3, 1.0);
        let scale = (d as f32).powf(-0.5);
        let split = |t: &Array, len: usize| {
            f64_of(t)
                .reshape(&[b as i32, len as i32, heads as i32, d as i32])
                .unwrap()
                .transpose(&[0, 2, 1, 3])
                .unwrap()
        };
        let reference = fast::scaled_dot_product_attention(
            &split(&q, l),
            &split(&k, s),
            &split(&v, s),
            scale,
            AttentionMask::None,
        )?
        .transpose(&[0, 2, 1, 3])?
        .reshape(&[b as i32, l as i32, (heads * d) as i32])?;
        for level in levels() {
            fast::force_image_kernel_level(Some(level));
            let ours = fast::attention(&q, &k, &v, heads as i32, scale)?;
            close(&ours, &reference, 1e-5);
        }
    }
    fast::force_image_kernel_level(None);
    Ok(())
}

#[test]
fn linear_with_bias_matches_matmul_few_and_many_rows() -> R {
    // 3 rows: the skinny kernel and an add; 300: our threaded sgemm by rows;
    // 20 rows of a wide layer: split by weight rows. Tolerance as the conv's.
    for (rows, k, n) in [(3usize, 64usize, 40usize), (300, 96, 72), (20, 64, 1000)] {
        let x = normal(&[rows, k], 1, 1.0);
        let w = normal(&[n, k], 2, 0.5);
        let b = normal(&[n], 3, 1.0);
        let reference = f64_of(&x).matmul(&f64_of(&w).t()?)?;
        close(&fast::linear_bias(&x, &w, &b)?, &reference.add(&f64_of(&b))?, 2e-5);
        close(&fast::linear(&x, &w)?, &reference, 2e-5);
    }
    Ok(())
}

#[test]
fn linear_rows_matches_matmul() -> R {
    let mut packs = 0;
    // 5 rows: the skinny kernel; 100: sgemm; 300 and 2049 (tasks of 48 rows,
    // a last one of 33, micro-tiles of 6, 12 and 16 rows read past the end
    // from a padded copy): the direct kernel where the CPU has AVX-512, with
    // output blocks of 64 + 8 and 64 + 64 + 32 channels.
    for (rows, k, n) in [
        (5usize, 64usize, 40usize),
        (100, 96, 72),
        (300, 96, 72),
        (2049, 40, 160),
        (300, 300, 72), // a longer k
    ] {
        let x = normal(&[rows, k], 1, 1.0);
        let w = normal(&[n, k], 2, 0.5);
        let b = normal(&[n], 3, 1.0);
        let reference = f64_of(&x).matmul(&f64_of(&w).t()?)?;
        for level in levels() {
            fast::force_image_kernel_level(Some(level));
            close(
                &fast::linear_rows(&x, &w, Some(&b))?,
                &reference.add(&f64_of(&b))?,
                2e-5,
            );
            close(&fast::linear_rows(&x, &w, None)?, &reference, 2e-5);
            // Packed once where the direct kernel wins (AVX2: n ≤ k), at any
            // number of rows; rows of (2, rows, k) as image tokens come in.
            if let Some(packed) = fast::pack_linear_weight(&w)? {
                let x3 = x.reshape(&[1, rows as i32, k as i32])?;
                let ours = fast::linear_rows_packed(&x3, &packed, Some(&b))?;
                assert_eq!(ours.shape(), [1, rows, n]);
                close(
                    &ours.reshape(&[rows as i32, n as i32])?,
                    &reference.add(&f64_of(&b))?,
                    2e-5,
                );
                close(&fast::linear_rows_packed(&x, &packed, None)?, &reference, 2e-5);
                packs += 1;
            }
        }
    }
    fast::force_image_kernel_level(None);
    if fast::force_image_kernel_level(None) >= 1 {
        assert!(packs > 0, "the direct kernel runs here: some weights should pack");
    }
    Ok(())
}

#[test]
fn geglu_matches_split_gelu_multiply() -> R {
    let x = normal(&[2, 37, 2 * 40], 4, 2.0);
    let parts = f64_of(&x).split(2, -1)?;
    let reference = parts[0].multiply(&parts[1].gelu()?)?;
    // Our erf is within 5e-7 of the true one; the product scales that by
    // |value·gate|/2 (up to ~20 here).
    close(&fast::geglu(&x)?, &reference, 1e-5);
    Ok(())
}
