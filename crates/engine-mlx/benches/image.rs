//! The image-model CPU kernels against MLX's ops, float32, at the shapes of
//! `cargo xtask bench diffusion` (UNet level 1 with CFG's batch of 2, the
//! VAE's last level at 256²): `cargo bench -p engine-mlx --bench image`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine_mlx::fast::{self, AttentionMask};
use engine_mlx::{conv2d, random, Array, Dtype};

fn normal(shape: &[usize], seed: u64) -> Array {
    let key = random::key(seed).unwrap();
    let a = random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    a.eval().unwrap();
    a
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10);
    for (name, x, cout, k) in [
        ("unet_2x32x32x128_3x3", [2, 32, 32, 128], 128, 3),
        ("unet_2x16x16x256_3x3", [2, 16, 16, 256], 256, 3),
        ("vae_1x256x256x32_3x3", [1, 256, 256, 32], 32, 3),
        ("vae_1x128x128x64_3x3", [1, 128, 128, 64], 64, 3),
        ("unet_2x32x32x128_1x1", [2, 32, 32, 128], 128, 1),
    ] {
        let xa = normal(&x, 1);
        let w = normal(&[cout, k, k, x[3]], 2);
        let b = normal(&[cout], 3);
        let p = (k / 2) as i32;
        for (label, level) in [("ours", None), ("avx2", Some(1)), ("packed", Some(0))] {
            fast::force_image_kernel_level(level);
            g.bench_function(BenchmarkId::new(label, name), |bch| {
                bch.iter(|| fast::conv2d(&xa, &w, Some(&b), (1, 1), (p, p)).unwrap().eval().unwrap())
            });
        }
        fast::force_image_kernel_level(None);
        g.bench_function(BenchmarkId::new("mlx", name), |bch| {
            bch.iter(|| {
                conv2d(&xa, &w, (1, 1), (p, p), (1, 1), 1)
                    .unwrap()
                    .add(&b)
                    .unwrap()
                    .eval()
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// 3×3 stride-1 convs with packed weights: the direct kernel against Winograd
/// F(4×4, 3×3), at the bench pipeline's shapes (UNet levels with CFG's batch of
/// 2, the VAE decoder's levels, the few-channel convs in and out).
fn winograd(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv3x3_packed");
    g.sample_size(10);
    for (name, x, cout) in [
        ("unet_2x32x32x128", [2, 32, 32, 128], 128),
        ("unet_2x16x16x256", [2, 16, 16, 256], 256),
        ("unet_2x8x8x256", [2, 8, 8, 256], 256),
        ("unet_in_2x32x32x4", [2, 32, 32, 4], 128),
        ("unet_out_2x32x32x128", [2, 32, 32, 128], 4),
        ("vae_1x32x32x128", [1, 32, 32, 128], 128),
        ("vae_1x64x64x128", [1, 64, 64, 128], 128),
        ("vae_1x128x128x64", [1, 128, 128, 64], 64),
        ("vae_1x256x256x32", [1, 256, 256, 32], 32),
        ("vae_out_1x256x256x32", [1, 256, 256, 32], 3),
    ] {
        let xa = normal(&x, 1);
        let w = normal(&[cout, 3, 3, x[3]], 2);
        let b = normal(&[cout], 3);
        for (label, tile) in [("direct", 0), ("winograd2", 2), ("winograd4", 4)] {
            fast::force_conv_winograd(Some(tile));
            // None without the direct kernel; the direct layout where Winograd does not pay.
            let Some(packed) = fast::pack_conv_weight(&w, (1, 1)).unwrap() else {
                continue;
            };
            if packed.is_winograd() != (tile != 0) {
                continue;
            }
            g.bench_function(BenchmarkId::new(label, name), |bch| {
                bch.iter(|| {
                    fast::conv2d_packed(&xa, &packed, Some(&b), (1, 1), (1, 1))
                        .unwrap()
                        .eval()
                        .unwrap()
                })
            });
        }
        fast::force_conv_winograd(None);
    }
    g.finish();
}

/// `fast::linear_rows` (the UNet's attention projections and feed-forward, 2
/// images × 32² positions): the direct kernel's register tiles against one
/// sgemm a core (OpenBLAS, level 0).
fn linear_rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear_rows");
    g.sample_size(10);
    for (name, m, k, n) in [
        ("2048x128_to_128", 2048, 128, 128),
        ("2048x128_to_1024", 2048, 128, 1024),
        ("2048x512_to_128", 2048, 512, 128),
        ("512x256_to_2048", 512, 256, 2048),
    ] {
        let x = normal(&[m, k], 1);
        let w = normal(&[n, k], 2);
        let b = normal(&[n], 3);
        for (label, level) in [("ours", None), ("sgemm", Some(0))] {
            fast::force_image_kernel_level(level);
            g.bench_function(BenchmarkId::new(label, name), |bch| {
                bch.iter(|| fast::linear_rows(&x, &w, Some(&b)).unwrap().eval().unwrap())
            });
        }
        fast::force_image_kernel_level(None);
    }
    g.finish();
}

fn group_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_norm_silu");
    g.sample_size(10);
    for (name, shape) in [("2x32x32x128", [2, 32, 32, 128]), ("1x256x256x32", [1, 256, 256, 32])] {
        let x = normal(&shape, 1);
        let w = normal(&[shape[3]], 2);
        let b = normal(&[shape[3]], 3);
        g.bench_function(BenchmarkId::new("ours", name), |bch| {
            bch.iter(|| fast::group_norm(&x, 32, &w, &b, 1e-6, true).unwrap().eval().unwrap())
        });
        g.bench_function(BenchmarkId::new("mlx", name), |bch| {
            bch.iter(|| {
                let s = x.shape_i32();
                let gx = x.reshape(&[s[0], -1, 32, s[3] / 32]).unwrap();
                let mean = gx.mean(&[1, 3], true).unwrap();
                let var = gx.var(&[1, 3], true).unwrap();
                let y = gx
                    .subtract(&mean)
                    .unwrap()
                    .multiply(&var.add_scalar(1e-6).unwrap().rsqrt().unwrap())
                    .unwrap()
                    .reshape(&s)
                    .unwrap()
                    .multiply(&w)
                    .unwrap()
                    .add(&b)
                    .unwrap();
                y.silu().unwrap().eval().unwrap()
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    for (name, b, l, s, heads, d) in [
        ("self_2x1024_8x16", 2usize, 1024usize, 1024usize, 8usize, 16usize),
        ("cross_2x1024x77_8x16", 2, 1024, 77, 8, 16),
        ("vae_1x1024_1x128", 1, 1024, 1024, 1, 128),
    ] {
        let q = normal(&[b, l, heads * d], 1);
        let k = normal(&[b, s, heads * d], 2);
        let v = normal(&[b, s, heads * d], 3);
        let scale = (d as f32).powf(-0.5);
        for (label, level) in [("ours", None), ("portable", Some(0))] {
            fast::force_image_kernel_level(level);
            g.bench_function(BenchmarkId::new(label, name), |bch| {
                bch.iter(|| {
                    fast::attention(&q, &k, &v, heads as i32, scale)
                        .unwrap()
                        .eval()
                        .unwrap()
                })
            });
        }
        fast::force_image_kernel_level(None);
        g.bench_function(BenchmarkId::new("sdpa", name), |bch| {
            bch.iter(|| {
                let split = |t: &Array, len: usize| {
                    t.reshape(&[b as i32, len as i32, heads as i32, d as i32])
                        .unwrap()
                        .transpose(&[0, 2, 1, 3])
                        .unwrap()
                };
                fast::scaled_dot_product_attention(
                    &split(&q, l),
                    &split(&k, s),
                    &split(&v, s),
                    scale,
                    AttentionMask::None,
                )
                .unwrap()
                .transpose(&[0, 2, 1, 3])
                .unwrap()
                .reshape(&[b as i32, l as i32, (heads * d) as i32])
                .unwrap()
                .eval()
                .unwrap()
            })
        });
    }
    g.finish();
}

fn geglu_and_bias(c: &mut Criterion) {
    // The UNet's level-1 feed-forward: (2·1024, 128) → 1024 → GEGLU → 128.
    let mut g = c.benchmark_group("feed_forward");
    g.sample_size(10);
    let x = normal(&[2048, 128], 1);
    let w_in = normal(&[1024, 128], 2);
    let b_in = normal(&[1024], 3);
    for (label, level) in [("ours", None), ("avx2", Some(1)), ("portable", Some(0))] {
        fast::force_image_kernel_level(level);
        g.bench_function(label, |bch| {
            bch.iter(|| {
                fast::geglu(&fast::linear_bias(&x, &w_in, &b_in).unwrap())
                    .unwrap()
                    .eval()
                    .unwrap()
            })
        });
    }
    fast::force_image_kernel_level(None);
    g.bench_function("mlx", |bch| {
        bch.iter(|| {
            let ff = x.matmul(&w_in.t().unwrap()).unwrap().add(&b_in).unwrap();
            let parts = ff.split(2, -1).unwrap();
            let gate = parts[1].contiguous().unwrap().gelu().unwrap();
            parts[0].multiply(&gate).unwrap().eval().unwrap()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    conv,
    winograd,
    linear_rows,
    group_norm,
    attention,
    geglu_and_bias
);
criterion_main!(benches);
