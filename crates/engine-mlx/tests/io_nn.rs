//! Weight files (safetensors, GGUF) and the nn layers loaded from them.

use engine_mlx::nn::{Embedding, GroupNorm, Linear, RmsNorm, Rope, RopeScaling};
use engine_mlx::quant::{self, QuantSpec};
use engine_mlx::{save_safetensors, Array, Dtype, Error, MetaValue, WeightMap};
use std::io::Write;

type R = engine_mlx::Result<()>;

fn ramp(shape: &[usize], phase: f32) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (0.37f64 * i as f64 + phase as f64).sin() as f32)
        .collect();
    Array::from_slice(&v, shape).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

fn reference(name: &str) -> Vec<f32> {
    let v: serde_json::Value = serde_json::from_str(include_str!("fixtures/mlx_reference.json")).unwrap();
    v[name]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn safetensors_round_trip_with_metadata() -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let (a, b) = (ramp(&[3, 4], 0.0), Array::from_slice(&[1i32, 2], &[2])?);
    let h = ramp(&[2], 0.0).astype(Dtype::Bfloat16)?;
    save_safetensors(&path, &[("a", &a), ("b", &b), ("h", &h)], &[("format", "mlx")])?;
    let w = WeightMap::load_safetensors(&path)?;
    assert_eq!(w.names(), vec!["a", "b", "h"]);
    assert_eq!(w.get("a")?.to_vec::<f32>()?, a.to_vec::<f32>()?);
    assert_eq!(w.get("b")?.to_vec::<i32>()?, vec![1, 2]);
    assert_eq!(w.get("h")?.dtype(), Dtype::Bfloat16);
    assert_eq!(w.meta_str("format"), Some("mlx"));
    // Shape checks name the tensor.
    let err = w.get_shaped("a", &[4, 3]).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { .. }) && err.to_string().contains("`a`"),
        "{err}"
    );
    let err = w.get("nope").unwrap_err();
    assert!(err.to_string().contains("`nope`"), "{err}");
    Ok(())
}

#[test]
fn bad_weight_files_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = WeightMap::load_safetensors(dir.path().join("absent.safetensors")).unwrap_err();
    assert!(missing.to_string().contains("no such file"), "{missing}");
    // A header length that points past the end of the file.
    let bad = dir.path().join("bad.safetensors");
    let mut f = std::fs::File::create(&bad).unwrap();
    f.write_all(&1000u64.to_le_bytes()).unwrap();
    f.write_all(b"{\"a\": {\"dtype\": \"F32\"").unwrap();
    drop(f);
    let err = WeightMap::load_safetensors(&bad).unwrap_err();
    assert!(err.to_string().contains("download it again"), "{err}");
    // Garbage JSON header.
    let garbage = dir.path().join("garbage.safetensors");
    let mut bytes = 8u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"not json");
    std::fs::write(&garbage, bytes).unwrap();
    assert!(WeightMap::load_safetensors(&garbage).is_err());
    // A GGUF file cut short after its header.
    let gguf = dir.path().join("cut.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes()); // 5 tensors
    bytes.extend_from_slice(&2u64.to_le_bytes()); // 2 metadata entries, then nothing
    std::fs::write(&gguf, bytes).unwrap();
    let err = WeightMap::load_gguf(&gguf).unwrap_err();
    assert!(err.to_string().contains("cut.gguf"), "{err}");
    assert!(WeightMap::load_gguf(dir.path().join("absent.gguf")).is_err());
}

#[test]
fn real_gguf_loads_with_quantized_tensors_and_metadata() -> R {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask fetch-models`",
        path.display()
    );
    let w = WeightMap::load_gguf(&path)?;
    assert_eq!(w.meta_str("general.architecture"), Some("llama"));
    assert!(matches!(w.metadata().get("tokenizer.ggml.tokens"), Some(MetaValue::Strings(t)) if t.len() == 49152));
    // Q4_1 maps to MLX affine 4-bit with group 32: packed, scales, biases.
    let q = Linear::load(&w, "blk.0.attn_q", 576, 576, false)?;
    assert!(q.is_quantized());
    let x = ramp(&[1, 576], 0.0);
    // GGUF scales are f16, so the quantized product is f16: compare at f16 precision.
    let y_q = q.forward(&x)?.to_f32_vec()?;
    let y_d = q.dequantized(Dtype::Float32)?.forward(&x)?.to_f32_vec()?;
    let scale = y_d.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = y_q.iter().zip(&y_d).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 5e-3 * scale, "max diff {worst} vs output scale {scale}");
    let emb = Embedding::load(&w, "token_embd", 49152, 576)?;
    let ids = Array::from_slice(&[1u32, 500], &[2])?;
    assert_eq!(emb.forward(&ids)?.shape(), vec![2, 576]);
    // A wrong declared size is caught with the tensor's name.
    let err = Linear::load(&w, "blk.0.attn_q", 576, 1000, false).unwrap_err();
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
    Ok(())
}

#[test]
fn linear_dense_quantized_and_tied_embedding() -> R {
    let weight = ramp(&[6, 64], 0.3);
    let bias = ramp(&[6], 0.9);
    let mut w = WeightMap::from_arrays(
        [
            ("l.weight".to_string(), weight.clone()),
            ("l.bias".to_string(), bias.clone()),
        ],
        "test",
    );
    let x = ramp(&[2, 64], 0.1);
    let dense = Linear::load(&w, "l", 64, 6, true)?;
    let expected = x.matmul(&weight.t()?)?.add(&bias)?.to_vec::<f32>()?;
    close(&dense.forward(&x)?.to_vec()?, &expected, 1e-5);
    let q = quant::quantize(
        &weight,
        QuantSpec {
            group_size: 32,
            bits: 8,
        },
    )?;
    w.insert("l.weight", q.weight.clone());
    w.insert("l.scales", q.scales.clone());
    w.insert("l.biases", q.biases.clone());
    let ql = Linear::load(&w, "l", 64, 6, true)?;
    assert!(ql.is_quantized());
    close(&ql.forward(&x)?.to_vec()?, &expected, 2e-2);
    close(
        &ql.dequantized(Dtype::Float32)?.forward(&x)?.to_vec()?,
        &ql.forward(&x)?.to_vec()?,
        1e-4,
    );
    // Embedding rows and its use as the output projection.
    let tw = WeightMap::from_arrays([("e.weight".to_string(), weight.clone())], "test");
    let e = Embedding::load(&tw, "e", 6, 64)?;
    let ids = Array::from_slice(&[4u32], &[1])?;
    close(&e.forward(&ids)?.to_vec()?, &weight.slice_axis(0, 4, 5)?.to_vec()?, 0.0);
    close(&e.as_linear(&x)?.to_vec()?, &x.matmul(&weight.t()?)?.to_vec()?, 1e-5);
    Ok(())
}

#[test]
fn dense_layers_fuse_into_one() -> R {
    let dense = |rows: usize, phase: f32, bias: bool| Linear::Dense {
        weight: ramp(&[rows, 64], phase),
        bias: bias.then(|| ramp(&[rows], phase + 0.5)),
    };
    let x = ramp(&[3, 64], 0.2);
    let (mut q, mut k, mut v) = (dense(8, 0.1, true), dense(4, 0.7, true), dense(4, 1.3, true));
    let want: Vec<Vec<f32>> = [&q, &k, &v]
        .iter()
        .map(|l| l.forward(&x)?.to_vec())
        .collect::<engine_mlx::Result<_>>()?;
    let bytes: usize = [&q, &k, &v].iter().flat_map(|l| l.arrays()).map(|a| a.nbytes()).sum();
    let fused = Linear::fuse_dense_outputs(&mut [&mut q, &mut k, &mut v])?.expect("dense layers fuse");
    // The fused output is the parts' outputs end to end, and each part, now a
    // view of the fused weight, still gives its own.
    let y = fused.forward(&x)?;
    assert_eq!(y.shape(), vec![3, 16]);
    for (i, (l, (a, b))) in [&q, &k, &v].iter().zip([(0, 8), (8, 12), (12, 16)]).enumerate() {
        close(&l.forward(&x)?.to_vec()?, &want[i], 1e-6);
        close(&y.slice_axis(1, a, b)?.to_vec()?, &want[i], 1e-5);
    }
    let after: usize = [&q, &k, &v].iter().flat_map(|l| l.arrays()).map(|a| a.nbytes()).sum();
    assert_eq!(after, bytes);
    // Mixed biases or input widths do not fuse.
    let (mut a, mut b) = (dense(4, 0.1, true), dense(4, 0.2, false));
    assert!(Linear::fuse_dense_outputs(&mut [&mut a, &mut b])?.is_none());
    let mut c = Linear::Dense {
        weight: ramp(&[4, 32], 0.3),
        bias: None,
    };
    let mut d = dense(4, 0.4, false);
    assert!(Linear::fuse_dense_outputs(&mut [&mut c, &mut d])?.is_none());
    // `fuse_outputs` is for the CPU kernels' quantized layers only.
    let (mut e, mut f) = (dense(4, 0.5, false), dense(4, 0.6, false));
    assert!(Linear::fuse_outputs(&mut [&mut e, &mut f])?.is_none());
    Ok(())
}

#[test]
fn norms_and_rope_layers() -> R {
    let x = ramp(&[2, 3, 16], 0.5);
    let w = WeightMap::from_arrays([("n.weight".to_string(), ramp(&[16], 1.5))], "test");
    let n = RmsNorm::load(&w, "n", 16, 1e-5)?;
    close(&n.forward(&x)?.to_vec()?, &reference("rms_norm"), 1e-5);
    let gw = WeightMap::from_arrays(
        [
            ("g.weight".to_string(), ramp(&[8], 0.3)),
            ("g.bias".to_string(), ramp(&[8], 0.8)),
        ],
        "test",
    );
    let g = GroupNorm::load(&gw, "g", 4, 8, 1e-5)?;
    close(
        &g.forward(&ramp(&[2, 3, 3, 8], 0.5))?.to_vec()?,
        &reference("group_norm"),
        1e-4,
    );
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let rope = Rope::new(16, false, 500000.0, &scaling)?;
    close(
        &rope.forward(&ramp(&[1, 2, 3, 16], 0.2), 5)?.to_vec()?,
        &reference("rope_llama3"),
        1e-4,
    );
    Ok(())
}
