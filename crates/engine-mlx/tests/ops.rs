//! engine-mlx against hand-derived values (element-wise ops, shapes,
//! reductions) and MLX Python as an oracle (fast kernels, quantization,
//! convolutions, random; fixtures made by tests/fixtures/make_fixtures.py).

use engine_mlx::fast::{self, AttentionMask, RopeFreqs};
use engine_mlx::quant::{self, QuantSpec};
use engine_mlx::{random, Array, Dtype, Error};
use half::{bf16, f16};

type R = engine_mlx::Result<()>;

fn arr(v: &[f32], shape: &[usize]) -> Array {
    Array::from_slice(v, shape).unwrap()
}

fn ramp(shape: &[usize], phase: f32) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (0.37f64 * i as f64 + phase as f64).sin() as f32)
        .collect();
    arr(&v, shape)
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "length differs");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

fn reference(name: &str) -> Vec<f32> {
    let text = include_str!("fixtures/mlx_reference.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v[name]
        .as_array()
        .unwrap_or_else(|| panic!("fixture {name} missing"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn creation_dtypes_and_readback() -> R {
    let a = Array::from_slice(&[1i32, 2, 3, 4, 5, 6], &[2, 3])?;
    assert_eq!(a.shape(), vec![2, 3]);
    assert_eq!(a.dtype(), Dtype::Int32);
    assert_eq!(a.size(), 6);
    assert_eq!(a.nbytes(), 24);
    assert_eq!(a.to_vec::<i32>()?, vec![1, 2, 3, 4, 5, 6]);
    let h = Array::from_slice(&[f16::from_f32(1.5), f16::from_f32(-2.0)], &[2])?;
    assert_eq!(h.dtype(), Dtype::Float16);
    assert_eq!(h.to_f32_vec()?, vec![1.5, -2.0]);
    let b = Array::from_slice(&[bf16::from_f32(0.5), bf16::from_f32(3.0)], &[2])?;
    assert_eq!(b.to_vec::<bf16>()?, vec![bf16::from_f32(0.5), bf16::from_f32(3.0)]);
    assert_eq!(
        Array::full(&[2, 2], 7.0, Dtype::Float32)?.to_vec::<f32>()?,
        vec![7.0; 4]
    );
    assert_eq!(
        Array::arange(0.0, 5.0, 2.0, Dtype::Int32)?.to_vec::<i32>()?,
        vec![0, 2, 4]
    );
    assert_eq!(Array::scalar(2.5, Dtype::Float32)?.item_f64()?, 2.5);
    assert_eq!(Array::scalar(9.0, Dtype::Int64)?.item_i64()?, 9);
    // to_vec with the wrong type is refused, not reinterpreted.
    assert!(matches!(a.to_vec::<f32>(), Err(Error::Invalid(_))));
    // Data that does not fill the shape is an error from the shim.
    assert!(Array::from_slice(&[1.0f32, 2.0], &[3]).is_err());
    Ok(())
}

#[test]
fn arithmetic_comparison_and_activations() -> R {
    let a = arr(&[1.0, -2.0, 3.0, 4.0], &[2, 2]);
    let b = arr(&[0.5, 2.0, -1.0, 2.0], &[2, 2]);
    assert_eq!(a.add(&b)?.to_vec::<f32>()?, vec![1.5, 0.0, 2.0, 6.0]);
    assert_eq!(a.subtract(&b)?.to_vec::<f32>()?, vec![0.5, -4.0, 4.0, 2.0]);
    assert_eq!(a.multiply(&b)?.to_vec::<f32>()?, vec![0.5, -4.0, -3.0, 8.0]);
    assert_eq!(a.divide(&b)?.to_vec::<f32>()?, vec![2.0, -1.0, -3.0, 2.0]);
    assert_eq!(a.maximum(&b)?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.abs()?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.greater(&b)?.astype(Dtype::Int32)?.to_vec::<i32>()?, vec![1, 0, 1, 1]);
    assert_eq!(a.equal(&a)?.all(&[], false)?.item_i64()?, 1);
    assert_eq!(arr(&[4.0, 9.0], &[2]).sqrt()?.to_vec::<f32>()?, vec![2.0, 3.0]);
    // Broadcasting a row over a matrix.
    assert_eq!(
        a.add(&arr(&[10.0, 20.0], &[2]))?.to_vec::<f32>()?,
        vec![11.0, 18.0, 13.0, 24.0]
    );
    // Activations against their closed forms.
    let x = [-2.0f32, -0.5, 0.0, 0.7, 3.0];
    let xa = arr(&x, &[5]);
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    close(&xa.sigmoid()?.to_vec()?, &x.map(sig), 1e-6);
    close(&xa.silu()?.to_vec()?, &x.map(|v| v * sig(v)), 1e-6);
    close(&xa.tanh()?.to_vec()?, &x.map(f32::tanh), 1e-6);
    // erf(0.5/sqrt2)=0.38292492, erf(-2/sqrt2)=-0.95449974: exact GELU values.
    close(
        &arr(&[0.5, -2.0], &[2]).gelu()?.to_vec()?,
        &[0.5 * 0.5 * 1.382_924_9, -2.0 * 0.5 * (1.0 - 0.954_499_7)],
        1e-5,
    );
    let approx = |v: f32| 0.5 * v * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
    close(&xa.gelu_approx()?.to_vec()?, &x.map(approx), 1e-5);
    // A shape mismatch is an MLX error, not an abort.
    let err = a.add(&arr(&[1.0, 2.0, 3.0], &[3])).unwrap_err();
    assert!(matches!(err, Error::Mlx { .. }), "{err}");
    assert!(err.to_string().contains("broadcast"), "{err}");
    Ok(())
}

#[test]
fn matmul_and_addmm() -> R {
    let a = arr(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let b = arr(&[7.0, 8.0, 9.0, 10.0, 11.0, 12.0], &[3, 2]);
    assert_eq!(a.matmul(&b)?.to_vec::<f32>()?, vec![58.0, 64.0, 139.0, 154.0]);
    let c = arr(&[1.0, 1.0, 1.0, 1.0], &[2, 2]);
    assert_eq!(
        c.addmm(&a, &b, 2.0, 3.0)?.to_vec::<f32>()?,
        vec![119.0, 131.0, 281.0, 311.0]
    );
    let err = a.matmul(&a).unwrap_err();
    assert!(err.to_string().contains("matmul"), "{err}");
    Ok(())
}

#[test]
fn shape_manipulation() -> R {
    let a = Array::arange(0.0, 6.0, 1.0, Dtype::Float32)?;
    let m = a.reshape(&[2, 3])?;
    assert_eq!(m.t()?.to_vec::<f32>()?, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(m.transpose(&[1, 0])?.shape(), vec![3, 2]);
    assert_eq!(m.expand_dims(0)?.shape(), vec![1, 2, 3]);
    assert_eq!(m.expand_dims(0)?.squeeze(0)?.shape(), vec![2, 3]);
    assert_eq!(engine_mlx::concatenate(&[&m, &m], 0)?.shape(), vec![4, 3]);
    assert_eq!(engine_mlx::stack(&[&m, &m], 0)?.shape(), vec![2, 2, 3]);
    let parts = m.split(3, 1)?;
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2].to_vec::<f32>()?, vec![2.0, 5.0]);
    let parts = a.split_at(&[1, 4], 0)?;
    assert_eq!(parts.iter().map(|p| p.size()).collect::<Vec<_>>(), vec![1, 3, 2]);
    assert_eq!(
        m.slice(&[0, 1], &[2, 3], &[1, 1])?.to_vec::<f32>()?,
        vec![1.0, 2.0, 4.0, 5.0]
    );
    assert_eq!(a.slice(&[0], &[6], &[2])?.to_vec::<f32>()?, vec![0.0, 2.0, 4.0]);
    assert_eq!(m.slice_axis(-1, 2, 3)?.to_vec::<f32>()?, vec![2.0, 5.0]);
    let upd = m.slice_update(&arr(&[9.0, 9.0], &[2, 1]), &[0, 0], &[2, 1], &[1, 1])?;
    assert_eq!(upd.to_vec::<f32>()?, vec![9.0, 1.0, 2.0, 9.0, 4.0, 5.0]);
    let idx = Array::from_slice(&[2i32, 0], &[2])?;
    assert_eq!(m.take(&idx, 1)?.to_vec::<f32>()?, vec![2.0, 0.0, 5.0, 3.0]);
    let along = Array::from_slice(&[1i32, 2], &[2, 1])?;
    assert_eq!(m.take_along_axis(&along, 1)?.to_vec::<f32>()?, vec![1.0, 5.0]);
    let put = m.put_along_axis(&along, &arr(&[-1.0, -2.0], &[2, 1]), 1)?;
    assert_eq!(put.to_vec::<f32>()?, vec![0.0, -1.0, 2.0, 3.0, 4.0, -2.0]);
    let cond = Array::from_slice(&[1u8, 0, 1], &[3])?.astype(Dtype::Bool)?;
    let w = engine_mlx::where_(&cond, &arr(&[1.0, 2.0, 3.0], &[3]), &arr(&[-1.0, -2.0, -3.0], &[3]))?;
    assert_eq!(w.to_vec::<f32>()?, vec![1.0, -2.0, 3.0]);
    assert_eq!(
        arr(&[1.0, 2.0], &[2]).pad(&[0], &[1], &[2], 5.0)?.to_vec::<f32>()?,
        vec![5.0, 1.0, 2.0, 5.0, 5.0]
    );
    assert_eq!(
        arr(&[1.0, 2.0], &[2]).repeat(2, 0)?.to_vec::<f32>()?,
        vec![1.0, 1.0, 2.0, 2.0]
    );
    assert_eq!(
        arr(&[1.0, 2.0], &[2]).tile(&[2])?.to_vec::<f32>()?,
        vec![1.0, 2.0, 1.0, 2.0]
    );
    assert_eq!(
        arr(&[1.0, 2.0], &[2]).broadcast_to(&[2, 2])?.to_vec::<f32>()?,
        vec![1.0, 2.0, 1.0, 2.0]
    );
    assert!(m.reshape(&[4, 2]).is_err(), "6 elements do not fit 4x2");
    Ok(())
}

#[test]
fn reductions_sorting_and_scans() -> R {
    let m = arr(&[3.0, 1.0, 2.0, -1.0, 5.0, 0.0], &[2, 3]);
    assert_eq!(m.sum(&[1], false)?.to_vec::<f32>()?, vec![6.0, 4.0]);
    assert_eq!(m.mean(&[0], false)?.to_vec::<f32>()?, vec![1.0, 3.0, 1.0]);
    assert_eq!(m.max(&[], false)?.item_f64()?, 5.0);
    assert_eq!(m.min(&[1], true)?.shape(), vec![2, 1]);
    assert_eq!(m.prod(&[1], false)?.to_vec::<f32>()?, vec![6.0, -0.0]);
    assert_eq!(m.argmax(1, false)?.to_vec::<u32>()?, vec![0, 1]);
    assert_eq!(m.argmin(1, false)?.to_vec::<u32>()?, vec![1, 0]);
    assert_eq!(m.sort(1)?.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, -1.0, 0.0, 5.0]);
    assert_eq!(m.argsort(1)?.to_vec::<u32>()?, vec![1, 2, 0, 0, 2, 1]);
    let p = arr(&[5.0, 1.0, 4.0, 2.0, 3.0], &[5])
        .argpartition(2, 0)?
        .to_vec::<u32>()?;
    let vals = [5.0, 1.0, 4.0, 2.0, 3.0];
    assert_eq!(vals[p[2] as usize], 3.0, "kth element in place");
    assert!(p[..2].iter().all(|&i| vals[i as usize] <= 3.0));
    assert_eq!(
        arr(&[1.0, 2.0, 3.0], &[3]).cumsum(0, false, true)?.to_vec::<f32>()?,
        vec![1.0, 3.0, 6.0]
    );
    assert_eq!(
        arr(&[1.0, 2.0, 3.0], &[3]).cumsum(0, true, false)?.to_vec::<f32>()?,
        vec![5.0, 3.0, 0.0]
    );
    let s = arr(&[1.0, 2.0, 3.0], &[3]).softmax(&[0], true)?.to_vec::<f32>()?;
    let z: f32 = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
    close(&s, &[1.0f32.exp() / z, 2.0f32.exp() / z, 3.0f32.exp() / z], 1e-6);
    close(
        &[arr(&[1.0, 2.0, 3.0], &[3]).logsumexp(&[0], false)?.item_f64()? as f32],
        &[z.ln()],
        1e-6,
    );
    Ok(())
}

#[test]
fn fast_kernels_match_mlx_python() -> R {
    let (q, k, v) = (
        ramp(&[1, 4, 5, 8], 0.0),
        ramp(&[1, 2, 5, 8], 1.0),
        ramp(&[1, 2, 5, 8], 2.0),
    );
    let causal = fast::scaled_dot_product_attention(&q, &k, &v, 0.35, AttentionMask::Causal)?;
    close(&causal.to_vec()?, &reference("sdpa_causal"), 1e-5);
    let mask = ramp(&[1, 1, 5, 5], 3.0);
    let add = fast::scaled_dot_product_attention(&q, &k, &v, 0.35, AttentionMask::Array(&mask))?;
    close(&add.to_vec()?, &reference("sdpa_additive"), 1e-5);
    let (x, w, b) = (ramp(&[2, 3, 16], 0.5), ramp(&[16], 1.5), ramp(&[16], 2.5));
    close(
        &fast::rms_norm(&x, Some(&w), 1e-5)?.to_vec()?,
        &reference("rms_norm"),
        1e-5,
    );
    close(
        &fast::layer_norm(&x, Some(&w), Some(&b), 1e-5)?.to_vec()?,
        &reference("layer_norm"),
        1e-5,
    );
    let r = ramp(&[1, 2, 3, 16], 0.2);
    close(
        &fast::rope(&r, 16, false, RopeFreqs::Base(10000.0), 1.0, 3)?.to_vec()?,
        &reference("rope_halves"),
        1e-5,
    );
    close(
        &fast::rope(&r, 16, true, RopeFreqs::Base(10000.0), 1.0, 3)?.to_vec()?,
        &reference("rope_traditional"),
        1e-5,
    );
    let freqs = arr(&(1..=8).map(|i| i as f32).collect::<Vec<_>>(), &[8]);
    close(
        &fast::rope(&r, 16, false, RopeFreqs::Custom(&freqs), 1.0, 2)?.to_vec()?,
        &reference("rope_freqs"),
        1e-5,
    );
    // Mismatched head dims are an error, not a crash.
    assert!(fast::scaled_dot_product_attention(&q, &ramp(&[1, 2, 5, 4], 0.0), &v, 1.0, AttentionMask::None).is_err());
    Ok(())
}

#[test]
fn quantization_matches_mlx_python() -> R {
    let w = ramp(&[8, 64], 0.7);
    let x = ramp(&[3, 64], 0.9);
    for bits in [2, 3, 4, 6, 8] {
        for group_size in [32, 64] {
            let q = quant::quantize(&w, QuantSpec { group_size, bits })?;
            close(
                &quant::dequantize(&q)?.to_vec()?,
                &reference(&format!("dequant_b{bits}_g{group_size}")),
                1e-5,
            );
            close(
                &quant::quantized_matmul(&x, &q, true)?.to_vec()?,
                &reference(&format!("qmm_b{bits}_g{group_size}")),
                1e-4,
            );
        }
    }
    // Group 128 round-trips within the 8-bit step.
    let w128 = ramp(&[4, 128], 0.1);
    let q = quant::quantize(
        &w128,
        QuantSpec {
            group_size: 128,
            bits: 8,
        },
    )?;
    close(&quant::dequantize(&q)?.to_vec()?, &w128.to_vec()?, 1e-2);
    assert!(quant::quantize(
        &w,
        QuantSpec {
            group_size: 48,
            bits: 4
        }
    )
    .is_err());
    assert!(quant::quantize(
        &w,
        QuantSpec {
            group_size: 64,
            bits: 7
        }
    )
    .is_err());
    // 64 columns cannot be grouped by 128: MLX's own error surfaces.
    assert!(quant::quantize(
        &w,
        QuantSpec {
            group_size: 128,
            bits: 4
        }
    )
    .is_err());
    // Without the `cuda` feature the CUDA matvec is absent: switching it is a no-op and
    // calling it directly is an error, not a crash.
    if !cfg!(feature = "cuda") {
        let q = quant::quantize(
            &w,
            QuantSpec {
                group_size: 64,
                bits: 4,
            },
        )?;
        assert!(!quant::set_cuda_kernels(true));
        let x = ramp(&[1, 64], 0.2);
        assert!(quant::cuda_quantized_matmul(&x, &q).is_err());
        // The fused decode kernels decline: callers fall back to MLX's ops.
        let fused = quant::fused_matvec(
            &x,
            &[(quant::FusedWeight::Quantized(&q), None)],
            None,
            None,
            quant::FusedEpilogue::Split,
            &[],
        )?;
        assert!(fused.is_none());
    }
    Ok(())
}

#[test]
fn convolutions_and_upsampling() -> R {
    let img = ramp(&[1, 5, 5, 3], 0.1);
    let w = ramp(&[4, 3, 3, 3], 0.4);
    close(
        &engine_mlx::conv2d(&img, &w, (2, 2), (1, 1), (1, 1), 1)?.to_vec()?,
        &reference("conv2d"),
        1e-5,
    );
    let seq = ramp(&[1, 7, 3], 0.3);
    let w1 = ramp(&[2, 3, 3], 0.6);
    close(
        &engine_mlx::conv1d(&seq, &w1, 1, 1, 1, 1)?.to_vec()?,
        &reference("conv1d"),
        1e-5,
    );
    let small = arr(&[1.0, 2.0, 3.0, 4.0], &[1, 2, 2, 1]);
    let up = engine_mlx::upsample_nearest(&small, 2, 2)?;
    assert_eq!(up.shape(), vec![1, 4, 4, 1]);
    assert_eq!(up.to_vec::<f32>()?[..8], [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    // Several images and channels, unequal factors: as repeating rows, then columns.
    let x = ramp(&[2, 3, 2, 2], 0.1);
    assert_eq!(
        engine_mlx::upsample_nearest(&x, 2, 3)?.to_vec::<f32>()?,
        x.repeat(2, 1)?.repeat(3, 2)?.to_vec::<f32>()?
    );
    // Channel mismatch between input and weight.
    assert!(engine_mlx::conv2d(&img, &ramp(&[4, 3, 3, 2], 0.0), (1, 1), (0, 0), (1, 1), 1).is_err());
    Ok(())
}

#[test]
fn random_is_keyed_and_matches_mlx_python() -> R {
    let k = random::key(42)?;
    close(
        &random::normal(&[6], Dtype::Float32, 0.0, 1.0, Some(&k))?.to_vec()?,
        &reference("normal_key42"),
        1e-5,
    );
    close(
        &random::uniform(&[6], Dtype::Float32, 0.0, 1.0, Some(&k))?.to_vec()?,
        &reference("uniform_key42"),
        1e-6,
    );
    let logits = ramp(&[4, 10], 0.0).mul_scalar(3.0)?;
    let c = random::categorical(&logits, -1, Some(&random::key(7)?))?.to_vec::<u32>()?;
    let expected: Vec<u32> = reference("categorical_key7").iter().map(|&x| x as u32).collect();
    assert_eq!(c, expected);
    let keys = random::split(&k, 2)?;
    let a = random::uniform(&[4], Dtype::Float32, 0.0, 1.0, Some(&keys[0]))?.to_vec::<f32>()?;
    let b = random::uniform(&[4], Dtype::Float32, 0.0, 1.0, Some(&keys[1]))?.to_vec::<f32>()?;
    assert_ne!(a, b);
    let scaled = random::normal(&[4000], Dtype::Float32, 5.0, 2.0, Some(&random::key(3)?))?;
    let mean = scaled.mean(&[], false)?.item_f64()?;
    assert!((mean - 5.0).abs() < 0.15, "mean {mean}");
    Ok(())
}

#[test]
fn compile_fuses_a_pure_function() -> R {
    let f = engine_mlx::compile(|xs| Ok(vec![xs[0].multiply(&xs[1])?.add(&xs[0])?.exp()?]), false)?;
    let (a, b) = (arr(&[0.0, 1.0], &[2]), arr(&[2.0, -1.0], &[2]));
    let out = f.call(&[&a, &b])?;
    close(&out[0].to_vec()?, &[1.0, 1.0], 1e-6);
    // A second shape retraces.
    let out = f.call(&[&arr(&[1.0], &[1]), &arr(&[1.0], &[1])])?;
    close(&out[0].to_vec()?, &[2.0f32.exp()], 1e-6);
    // An error inside the traced closure comes back as an error.
    let bad = engine_mlx::compile(|xs| Ok(vec![xs[0].matmul(&xs[0])?]), false)?;
    assert!(bad.call(&[&arr(&[1.0, 2.0, 3.0], &[3, 1])]).is_err());
    Ok(())
}
