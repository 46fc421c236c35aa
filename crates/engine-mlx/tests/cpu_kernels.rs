//! The vectorised float32 CPU kernels (softmax, GELU, SiLU, layer norm,
//! attention, packed attention) against MLX's own ops run in float64, which
//! the kernels do not take, so the reference is MLX's implementation.

use engine_mlx::fast::{self, AttentionMask};
use engine_mlx::{random, Array, Dtype};

type R = engine_mlx::Result<()>;

fn normal(shape: &[usize], seed: u64, scale: f32) -> Array {
    let key = random::key(seed).unwrap();
    random::normal(shape, Dtype::Float32, 0.0, scale, Some(&key)).unwrap()
}

fn f64_of(a: &Array) -> Array {
    a.astype(Dtype::Float64).unwrap()
}

fn values(a: &Array) -> Vec<f64> {
    a.astype(Dtype::Float64).unwrap().to_vec::<f64>().unwrap()
}

/// |a - b| ≤ tol·(1 + |b|) element-wise.
fn close(ours: &Array, reference: &Array, tol: f64) {
    let (a, b) = (values(ours), values(reference));
    assert_eq!(ours.shape(), reference.shape(), "shapes differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()) || (x.is_nan() && y.is_nan()),
            "element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn softmax_matches_mlx_including_masked_rows() -> R {
    // Rows of odd lengths (vector tails), large logits, -inf entries, and one
    // fully masked row, which gives zeros rather than NaN.
    let mut v = normal(&[6, 37], 1, 8.0).to_vec::<f32>()?;
    for j in 0..37 {
        if j % 3 == 0 {
            v[37 + j] = f32::NEG_INFINITY;
        }
        v[2 * 37 + j] = f32::NEG_INFINITY;
    }
    let x = Array::from_slice(&v, &[6, 37])?;
    let ours = x.softmax(&[-1], true)?;
    let got = ours.to_vec::<f32>()?;
    assert!(got[2 * 37..3 * 37].iter().all(|&p| p == 0.0), "fully masked row");
    for row in [0, 1, 3, 4, 5] {
        let s: f32 = got[row * 37..(row + 1) * 37].iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "row {row} sums to {s}");
    }
    // Rows other than the fully masked one against MLX in float64.
    let keep = Array::from_slice(&[0i32, 1, 3, 4, 5], &[5])?;
    let reference = f64_of(&x.take(&keep, 0)?).softmax(&[-1], true)?;
    close(&ours.take(&keep, 0)?, &reference, 1e-6);
    // Another axis goes through MLX's own softmax and still agrees.
    close(
        &x.take(&keep, 0)?.softmax(&[0], true)?,
        &f64_of(&x.take(&keep, 0)?).softmax(&[0], true)?,
        1e-6,
    );
    Ok(())
}

#[test]
fn gelu_and_silu_match_mlx() -> R {
    let n = 70_001; // more than one thread's share, with a vector tail
    let xs: Vec<f32> = (0..n).map(|i| -30.0 + 60.0 * i as f32 / (n - 1) as f32).collect();
    let x = Array::from_slice(&xs, &[n])?;
    close(&x.gelu()?, &f64_of(&x).gelu()?, 2e-6);
    close(&x.silu()?, &f64_of(&x).silu()?, 2e-6);
    // Exact tails and zero.
    let edge = Array::from_slice(&[0.0f32, -40.0, 40.0, -100.0], &[4])?;
    assert_eq!(edge.gelu()?.to_vec::<f32>()?, vec![0.0, 0.0, 40.0, 0.0]);
    let silu = edge.silu()?.to_vec::<f32>()?;
    assert_eq!((silu[0], silu[2]), (0.0, 40.0));
    assert!(
        silu[1] < 0.0 && silu[1] > -1e-15 && silu[3] <= 0.0 && silu[3] > -1e-30,
        "{silu:?}"
    );
    // A transposed (non-contiguous) view is read in logical order.
    let m = normal(&[5, 7], 2, 2.0).transpose(&[1, 0])?;
    close(&m.gelu()?, &f64_of(&m).gelu()?, 2e-6);
    Ok(())
}

#[test]
fn layer_norm_with_and_without_residual_and_affine() -> R {
    let x = normal(&[3, 5, 129], 3, 3.0).add_scalar(2.0)?;
    let r = normal(&[3, 5, 129], 4, 1.0);
    let w = normal(&[129], 5, 1.0);
    let b = normal(&[129], 6, 1.0);
    for (wt, bs) in [(Some(&w), Some(&b)), (Some(&w), None), (None, Some(&b)), (None, None)] {
        let (w64, b64) = (wt.map(f64_of), bs.map(f64_of));
        let reference = fast::layer_norm(&f64_of(&x), w64.as_ref(), b64.as_ref(), 1e-5)?;
        close(&fast::layer_norm(&x, wt, bs, 1e-5)?, &reference, 1e-5);
        let reference = fast::layer_norm(&f64_of(&x.add(&r)?), w64.as_ref(), b64.as_ref(), 1e-5)?;
        close(&fast::layer_norm_residual(&x, &r, wt, bs, 1e-5)?, &reference, 1e-5);
    }
    // A residual of another shape is an error, not a crash.
    assert!(fast::layer_norm_residual(&x, &normal(&[3, 5, 128], 7, 1.0), None, None, 1e-5).is_err());
    Ok(())
}

#[test]
fn attention_with_masks_and_grouped_heads_matches_float64() -> R {
    // 6 query heads over 2 key/value heads, 9 queries against 13 keys.
    let q = normal(&[2, 6, 9, 16], 8, 1.0);
    let k = normal(&[2, 2, 13, 16], 9, 1.0);
    let v = normal(&[2, 2, 13, 16], 10, 1.0);
    let (q64, k64, v64) = (f64_of(&q), f64_of(&k), f64_of(&v));
    let keep: Vec<u8> = (0..2 * 13).map(|i| u8::from(i % 5 != 4)).collect();
    let bool_mask = Array::from_bytes(&keep, &[2, 1, 1, 13], Dtype::Bool)?;
    let additive = normal(&[1, 6, 9, 13], 11, 1.0);
    for (mask, mask64) in [
        (AttentionMask::None, AttentionMask::None),
        (AttentionMask::Causal, AttentionMask::Causal),
        (AttentionMask::Array(&bool_mask), AttentionMask::Array(&bool_mask)),
        (
            AttentionMask::Array(&additive),
            AttentionMask::Array(&f64_of(&additive)),
        ),
    ] {
        let ours = fast::scaled_dot_product_attention(&q, &k, &v, 0.25, mask)?;
        let reference = fast::scaled_dot_product_attention(&q64, &k64, &v64, 0.25, mask64)?;
        close(&ours, &reference, 1e-5);
    }
    Ok(())
}

/// Packed attention against attention of each sequence on its own.
fn check_packed(lengths: &[i32], heads: i32, head_dim: i32, seed: u64) -> R {
    let t: i32 = lengths.iter().sum();
    let width = heads * head_dim;
    let qkv = normal(&[t as usize, 3 * width as usize], seed, 1.0);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let ours = fast::packed_attention(&qkv, lengths, heads, scale)?;
    assert_eq!(ours.shape(), vec![t as usize, width as usize]);
    // float64 takes the padded path (MLX's attention with a key mask).
    let padded = fast::packed_attention(&f64_of(&qkv), lengths, heads, scale)?;
    close(&ours, &padded, 1e-5);
    // And each sequence alone through scaled_dot_product_attention.
    let mut off = 0;
    for &n in lengths {
        if n == 0 {
            continue;
        }
        let rows = qkv.slice_axis(0, off, off + n)?.astype(Dtype::Float64)?;
        let split = rows.reshape(&[1, n, 3, heads, head_dim])?.transpose(&[2, 0, 3, 1, 4])?;
        let parts = split.split(3, 0)?;
        let (q, k, v) = (parts[0].squeeze(0)?, parts[1].squeeze(0)?, parts[2].squeeze(0)?);
        let alone = fast::scaled_dot_product_attention(&q, &k, &v, scale, AttentionMask::None)?
            .transpose(&[0, 2, 1, 3])?
            .reshape(&[n, width])?;
        close(&ours.slice_axis(0, off, off + n)?, &alone, 1e-5);
        off += n;
    }
    Ok(())
}

#[test]
fn packed_attention_matches_per_sequence_attention() -> R {
    // Head dims that are a multiple of the vector width, and one that is not;
    // lengths of 1, an empty sequence, and lengths past a vector width.
    check_packed(&[5, 1, 17, 0, 40], 3, 32, 12)?;
    check_packed(&[7, 33, 2], 2, 20, 13)?;
    check_packed(&[64], 4, 64, 14)?;
    Ok(())
}

#[test]
fn packed_attention_rejects_bad_shapes() {
    let qkv = normal(&[10, 3 * 2 * 8], 15, 1.0);
    let err = fast::packed_attention(&qkv, &[4, 5], 2, 0.3).unwrap_err().to_string();
    assert!(err.contains("add up to 9 tokens, qkv has 10"), "{err}");
    assert!(
        fast::packed_attention(&qkv, &[10], 5, 0.3).is_err(),
        "width not divisible by 3·heads"
    );
    assert!(
        fast::packed_attention(&qkv, &[12, -2], 2, 0.3).is_err(),
        "negative length"
    );
    assert!(fast::packed_attention(&qkv.reshape(&[10, 6, 8]).unwrap(), &[10], 2, 0.3).is_err());
}

#[test]
fn skinny_linear_matches_matmul_and_is_the_same_alone_or_batched() -> R {
    // Odd sizes (vector tails, a partial block of weight rows), 1..8 rows
    // (the kernel) and 9, 17 (MLX's matmul), with leading batch dimensions.
    let w = normal(&[197, 37], 11, 0.5);
    for rows in [1usize, 3, 8, 9, 17] {
        let x = normal(&[rows, 1, 37], 12 + rows as u64, 1.0);
        let ours = fast::linear(&x, &w)?;
        let reference = f64_of(&x).matmul(&f64_of(&w).t()?)?;
        assert_eq!(ours.shape(), [rows, 1, 197]);
        close(&ours, &reference, 1e-5);
        if rows <= 8 {
            // Each row alone gives the very same bits as within the batch.
            let all = ours.to_vec::<f32>()?;
            for r in 0..rows {
                let one = fast::linear(&x.slice_axis(0, r as i32, r as i32 + 1)?, &w)?.to_vec::<f32>()?;
                assert_eq!(one, all[r * 197..(r + 1) * 197], "row {r} of {rows}");
            }
        }
    }
    // Not float32: MLX's matmul.
    let (x16, w16) = (
        normal(&[2, 37], 3, 1.0).astype(Dtype::Float16)?,
        w.astype(Dtype::Float16)?,
    );
    assert_eq!(fast::linear(&x16, &w16)?.shape(), [2, 197]);
    Ok(())
}

/// The float64 reference of `cache_attention`: MLX's attention with the
/// boolean mask the kernel implies (row `b`, query `i` at slot t − l + i
/// sees slots `min(pad, slot)..=slot`).
fn cache_attention_reference(q: &Array, k: &Array, v: &Array, scale: f32, pads: &[i32]) -> Array {
    let (b, l, t) = (q.dim(0), q.dim(2), k.dim(2));
    let mut m = vec![0u8; b * l * t];
    for r in 0..b {
        let pad = pads.get(r).copied().unwrap_or(0) as usize;
        for i in 0..l {
            let slot = t - l + i;
            for j in pad.min(slot)..=slot {
                m[(r * l + i) * t + j] = 1;
            }
        }
    }
    let mask = Array::from_slice(&m, &[b, 1, l, t])
        .unwrap()
        .astype(Dtype::Bool)
        .unwrap();
    fast::scaled_dot_product_attention(&f64_of(q), &f64_of(k), &f64_of(v), scale, AttentionMask::Array(&mask)).unwrap()
}

#[test]
fn cache_attention_matches_float64_and_ignores_chunking_and_batching() -> R {
    // Grouped heads (6 over 2), a head dim with a vector tail (20) and one
    // without (64); the cache is a view of a larger buffer (as KvCache's).
    for (d, seed) in [(64usize, 21u64), (20, 22)] {
        let (b, h, hkv, t) = (3usize, 6usize, 2usize, 29usize);
        let scale = 1.0 / (d as f32).sqrt();
        let kbuf = normal(&[b, hkv, 40, d], seed, 1.0);
        let vbuf = normal(&[b, hkv, 40, d], seed + 1, 1.0);
        let (k, v) = (kbuf.slice_axis(2, 0, t as i32)?, vbuf.slice_axis(2, 0, t as i32)?);
        let q = normal(&[b, h, t, d], seed + 2, 1.0);
        let pads = [0, 5, 28];
        assert!(fast::cache_attention_applies(&q, &k, &v));
        let whole = fast::cache_attention(&q, &k, &v, scale, &pads)?;
        close(&whole, &cache_attention_reference(&q, &k, &v, scale, &pads), 1e-5);
        close(
            &fast::cache_attention(&q, &k, &v, scale, &[])?,
            &cache_attention_reference(&q, &k, &v, scale, &[]),
            1e-5,
        );
        let whole = whole.to_f32_vec()?;
        let at = |out: &[f32], shape: [usize; 4], r: usize, hh: usize, i: usize| -> Vec<u32> {
            let base = ((r * shape[1] + hh) * shape[2] + i) * shape[3];
            out[base..base + d].iter().map(|x| x.to_bits()).collect()
        };
        // The last 1 and 7 queries alone over the keys up to theirs, and
        // row 1 alone: the same bits as in the whole call.
        for l in [1usize, 7] {
            let (kk, vv) = (k.slice_axis(2, 0, t as i32)?, v.slice_axis(2, 0, t as i32)?);
            let qq = q.slice_axis(2, (t - l) as i32, t as i32)?;
            let part = fast::cache_attention(&qq, &kk, &vv, scale, &pads)?.to_f32_vec()?;
            for r in 0..b {
                for hh in 0..h {
                    for i in 0..l {
                        assert_eq!(
                            at(&part, [b, h, l, d], r, hh, i),
                            at(&whole, [b, h, t, d], r, hh, t - l + i)
                        );
                    }
                }
            }
        }
        let one = |a: &Array| a.slice_axis(0, 1, 2);
        let alone = fast::cache_attention(&one(&q)?, &one(&k)?, &one(&v)?, scale, &[5])?.to_f32_vec()?;
        for hh in 0..h {
            for i in 0..t {
                assert_eq!(at(&alone, [1, h, t, d], 0, hh, i), at(&whole, [b, h, t, d], 1, hh, i));
            }
        }
    }
    // Not covered: more queries than keys, or heads not a multiple of kv heads.
    let k = normal(&[1, 2, 4, 8], 30, 1.0);
    assert!(!fast::cache_attention_applies(&normal(&[1, 2, 5, 8], 31, 1.0), &k, &k));
    assert!(!fast::cache_attention_applies(&normal(&[1, 3, 4, 8], 32, 1.0), &k, &k));
    assert!(fast::cache_attention(&normal(&[1, 3, 4, 8], 32, 1.0), &k, &k, 1.0, &[]).is_err());
    Ok(())
}

/// RoPE of 4-D x runs as one CPU kernel; 3-D x still takes MLX's composed
/// ops. The kernel repeats their roundings on cos/sin tables made by MLX's
/// ops, so both give the same bits, for either layout, partial dims, a
/// scale, explicit frequencies, a strided x, start positions per row, and
/// calls that share their tables (same positions) or not.
#[test]
fn rope_kernel_gives_the_bits_of_mlx_composition() -> R {
    use engine_mlx::fast::RopeFreqs;
    let (b, h, l, d) = (2usize, 3usize, 5usize, 24usize);
    let x = normal(&[b, h, l, d], 90, 2.0);
    let flat = |a: &Array| a.reshape(&[(b * h) as i32, l as i32, d as i32]);
    let freqs = Array::from_slice(&(1..=8).map(|i| 1.5f32.powi(i)).collect::<Vec<_>>(), &[8])?;
    for (dims, traditional, base, scale, offset) in [
        (24, false, 10000.0, 1.0, 0),
        (24, true, 10000.0, 1.0, 7),
        (16, false, 500000.0, 0.5, 1000),
        (16, true, 100000.0, 1.0, 3),
    ] {
        let custom = dims == 16 && !traditional;
        let f = if custom {
            RopeFreqs::Custom(&freqs)
        } else {
            RopeFreqs::Base(base)
        };
        let ours = fast::rope(&x, dims, traditional, f, scale, offset)?;
        let mlx = fast::rope(&flat(&x)?, dims, traditional, f, scale, offset)?;
        assert_eq!(
            ours.to_vec::<f32>()?,
            mlx.to_vec::<f32>()?,
            "dims {dims}, traditional {traditional}, scale {scale}, offset {offset}"
        );
        // Rotated features moved, the rest copied as they are.
        let (a, m) = (ours.to_vec::<f32>()?, x.to_vec::<f32>()?);
        let moved = a.iter().zip(&m).filter(|(p, q)| p != q).count();
        assert!(moved > a.len() / 2, "dims {dims}: only {moved} values rotated");
        if dims < d as i32 {
            for (p, q) in a.chunks(d).zip(m.chunks(d)) {
                assert_eq!(&p[dims as usize..], &q[dims as usize..]);
            }
        }
        // A transposed view is read through its strides.
        let xt = normal(&[b, l, h, d], 91, 2.0).transpose(&[0, 2, 1, 3])?;
        let copy = Array::from_slice(&xt.to_vec::<f32>()?, &[b, h, l, d])?;
        assert_eq!(
            fast::rope(&xt, dims, traditional, f, scale, offset)?.to_vec::<f32>()?,
            fast::rope(&copy, dims, traditional, f, scale, offset)?.to_vec::<f32>()?
        );
    }
    // A start position per row: x (B, 1, L, D) against MLX on (B, L, D).
    let x1 = normal(&[b, 1, l, d], 92, 2.0);
    let starts = Array::from_slice(&[4i32, 250], &[2])?;
    let ours = fast::rope_rows(&x1, 24, false, RopeFreqs::Base(10000.0), 1.0, &starts)?;
    let mlx = fast::rope_rows(
        &x1.reshape(&[b as i32, l as i32, d as i32])?,
        24,
        false,
        RopeFreqs::Base(10000.0),
        1.0,
        &starts,
    )?;
    assert_eq!(ours.shape(), vec![b, 1, l, d]);
    assert_eq!(ours.to_vec::<f32>()?, mlx.to_vec::<f32>()?);
    // The same positions twice (shared tables), then others.
    for offset in [9, 9, 10] {
        let y = fast::rope(&x, 24, false, RopeFreqs::Base(10000.0), 1.0, offset)?;
        let want = fast::rope(&flat(&x)?, 24, false, RopeFreqs::Base(10000.0), 1.0, offset)?;
        assert_eq!(y.to_vec::<f32>()?, want.to_vec::<f32>()?, "offset {offset}");
    }
    Ok(())
}
