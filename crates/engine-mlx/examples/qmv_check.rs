//! Parity and speed of the engine's CUDA quantized matvec against MLX's own
//! `quantized_matmul`, on the GPU (build with `--features cuda`):
//!
//! `qmv_check [--quick | --bandwidth | --dense]`
//!
//! For every linear layer shape of Llama-3.2-1B, Llama-3.1-8B and Qwen2.5-7B
//! (q/o, k/v, gate/up, down, LM head) and batch 1, 4, 32: random weights
//! quantized by MLX, random x; both kernels against a float32 reference (MLX's
//! kernel on float32 copies of x, scales and biases, rounded to the dtype of
//! the output). Prints one JSON line a case (relative L2 errors, microseconds
//! per call of each kernel and of both layouts of ours) and a summary line;
//! exits 1 if our kernel is off by more than 1e-3 relative. First, the fused
//! kernels of one decoder layer (see `fused_case`) on the three families. Batch 8 and 16,
//! other group sizes, 8-bit and float16/float32 (batch 1 and 4) run on the 8B shapes unless
//! `--quick` (bfloat16 4-bit group 64 alone). `--dense`: the dense bfloat16 matvec behind
//! `fast::linear` (on unless `MLXENGINE_CUDA_DMV=0`) on the 8B shapes, errors and bandwidth against MLX's gemv, then
//! the fused dense kernels (on unless `MLXENGINE_CUDA_QMV_DENSE=0`) on one layer of each family.
//! `--bandwidth` under `MLXENGINE_CUDA_QMV_PROBE=nox` or `=stream` times probes of our matvec with wrong
//! results (x's side left out; the loads alone), to tell what bounds it.

use engine_mlx::quant::{
    cuda_quantized_matmul, fused_matvec, quantize, quantized_matmul, set_cuda_kernels, FusedEpilogue, FusedWeight,
    QuantSpec, Quantized,
};
use engine_mlx::{eval, fast, random, Array, Dtype, Result};
use std::time::Instant;

mod support;
use support::rel_err;

/// One decoder layer's shape a family: hidden size, q, k/v and feed-forward widths.
const DENSE_FAMILIES: [(&str, usize, usize, usize, usize); 3] = [
    ("llama-3.2-1b", 2048, 2048, 512, 8192),
    ("llama-3.1-8b", 4096, 4096, 1024, 14336),
    ("qwen2.5-7b", 3584, 3584, 512, 18944),
];

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
    let ours = cuda_quantized_matmul(&x, &q)?.to_f32_vec()?;
    let reps = (500_000_000 / (n * k * spec.bits as usize / 8)).clamp(5, 50);
    let mlx_us = time_us(reps, &|| quantized_matmul(&x, &q, true))?;
    let ours_us = time_us(reps, &|| cuda_quantized_matmul(&x, &q))?;
    set_cuda_kernels(true);
    let err = rel_err(&ours, &reference);
    let bytes = (n * k * spec.bits as usize / 8 + n * k / spec.group_size as usize * 2 * dtype.size()) as f64;
    println!(
        "{}",
        serde_json::json!({
            "family": family, "layer": layer, "k": k, "n": n, "m": m, "dtype": dtype.name(),
            "bits": spec.bits, "group": spec.group_size,
            "ours_rel_err": err,
            "mlx_rel_err": rel_err(&mlx, &reference), "ours_vs_mlx": rel_err(&ours, &mlx),
            "ours_vs_f32": rel_err(&ours, &exact), "mlx_vs_f32": rel_err(&mlx, &exact),
            "ours_us": ours_us, "mlx_us": mlx_us, "speedup": mlx_us / ours_us,
            "ours_gbps": bytes / ours_us / 1e3, "mlx_gbps": bytes / mlx_us / 1e3,
        })
    );
    Ok(err)
}

/// A random bfloat16 4-bit (group 64) matrix (n, k).
fn random_quantized(n: usize, k: usize, seed: u64) -> Result<Quantized> {
    let w = random::normal(&[n, k], Dtype::Float32, 0.0, 0.02, Some(&random::key(seed)?))?.astype(Dtype::Bfloat16)?;
    quantize(
        &w,
        QuantSpec {
            group_size: 64,
            bits: 4,
        },
    )
}

/// The same matrix with float32 scales and biases (the exact reference).
fn as_f32(q: &Quantized) -> Result<Quantized> {
    Ok(Quantized {
        weight: q.weight.clone(),
        scales: q.scales.astype(Dtype::Float32)?,
        biases: q.biases.astype(Dtype::Float32)?,
        spec: q.spec,
        int8_kernels: false,
    })
}

fn normal(shape: &[usize], seed: u64) -> Result<Array> {
    random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&random::key(seed)?))?.astype(Dtype::Bfloat16)
}

/// One decoder layer's fused kernels (norm + q/k/v, o + residual, norm +
/// gate/up + SwiGLU, down + residual; bfloat16, 4-bit group 64, `m` rows)
/// against MLX's ops in float32 rounded to bfloat16, and the microseconds of
/// the four fused calls against the eleven composed ones MLX runs for them.
fn fused_case(family: &str, hidden: usize, q: usize, kv: usize, ff: usize, m: usize) -> Result<f64> {
    let (wq, wk, wv, wo) = (
        random_quantized(q, hidden, 1)?,
        random_quantized(kv, hidden, 2)?,
        random_quantized(kv, hidden, 3)?,
        random_quantized(hidden, q, 4)?,
    );
    let (wg, wu, wd) = (
        random_quantized(ff, hidden, 5)?,
        random_quantized(ff, hidden, 6)?,
        random_quantized(hidden, ff, 7)?,
    );
    let x = normal(&[m, hidden], 8)?;
    let g = random::uniform(&[hidden], Dtype::Float32, 0.5, 1.5, Some(&random::key(9)?))?.astype(Dtype::Bfloat16)?;
    let res = normal(&[m, hidden], 10)?;
    let att = normal(&[m, q], 11)?;
    let hff = normal(&[m, ff], 12)?.mul_scalar(0.1)?;
    let eps = 1e-5;
    eval([&x, &g, &res, &att, &hff])?;
    let f32 = |a: &Array| a.astype(Dtype::Float32);
    set_cuda_kernels(false);
    let qm = |a: &Array, w: &Quantized| quantized_matmul(a, &as_f32(w)?, true);
    let xn = fast::rms_norm(&f32(&x)?, Some(&f32(&g)?), eps)?;
    let reference = [
        qm(&xn, &wq)?,
        qm(&xn, &wk)?,
        qm(&xn, &wv)?,
        qm(&f32(&att)?, &wo)?.add(&f32(&res)?)?,
        qm(&xn, &wg)?.silu()?.multiply(&qm(&xn, &wu)?)?,
        qm(&f32(&hff)?, &wd)?.add(&f32(&res)?)?,
    ];
    let reference: Vec<Vec<f32>> = reference
        .iter()
        .map(|r| r.astype(Dtype::Bfloat16)?.to_f32_vec())
        .collect::<Result<_>>()?;
    let composed = || -> Result<Array> {
        let xn = fast::rms_norm(&x, Some(&g), eps)?;
        let (a, b, c) = (
            quantized_matmul(&xn, &wq, true)?,
            quantized_matmul(&xn, &wk, true)?,
            quantized_matmul(&xn, &wv, true)?,
        );
        let o = quantized_matmul(&att, &wo, true)?.add(&res)?;
        let xn2 = fast::rms_norm(&o, Some(&g), eps)?;
        let mlp = quantized_matmul(&xn2, &wg, true)?
            .silu()?
            .multiply(&quantized_matmul(&xn2, &wu, true)?)?;
        let d = quantized_matmul(&hff, &wd, true)?.add(&res)?;
        // One output that depends on all of them.
        a.sum(&[], false)?
            .add(&b.sum(&[], false)?)?
            .add(&c.sum(&[], false)?)?
            .add(&mlp.sum(&[], false)?)?
            .add(&d.sum(&[], false)?)
    };
    let composed_us = time_us(20, &composed)?;
    set_cuda_kernels(true);
    let split = FusedEpilogue::Split;
    let none = |v: Option<Vec<Array>>| v.ok_or_else(|| engine_mlx::Error::Invalid("fused_matvec declined".into()));
    let fused = || -> Result<Vec<Array>> {
        let mut out = none(fused_matvec(
            &x,
            &[
                (FusedWeight::Quantized(&wq), None),
                (FusedWeight::Quantized(&wk), None),
                (FusedWeight::Quantized(&wv), None),
            ],
            Some((&g, eps)),
            None,
            split,
            &[],
        )?)?;
        out.extend(none(fused_matvec(
            &att,
            &[(FusedWeight::Quantized(&wo), None)],
            None,
            Some(&res),
            split,
            &[],
        )?)?);
        out.extend(none(fused_matvec(
            &x,
            &[(FusedWeight::Quantized(&wg), None), (FusedWeight::Quantized(&wu), None)],
            Some((&g, eps)),
            None,
            FusedEpilogue::SwiGlu,
            &[],
        )?)?);
        out.extend(none(fused_matvec(
            &hff,
            &[(FusedWeight::Quantized(&wd), None)],
            None,
            Some(&res),
            split,
            &[],
        )?)?);
        Ok(out)
    };
    let ours = fused()?;
    let names = ["q", "k", "v", "o_residual", "swiglu", "down_residual"];
    let mut worst: f64 = 0.0;
    let mut errs = serde_json::Map::new();
    for ((name, o), r) in names.iter().zip(&ours).zip(&reference) {
        let e = rel_err(&o.to_f32_vec()?, r);
        worst = worst.max(e);
        errs.insert(name.to_string(), e.into());
    }
    if m == 1 {
        // A decode step's shapes: q/k/v out as (1, heads, 1, 128), the
        // attention output in as (1, heads, 1, 128); the same values.
        let (h, kvh) = ((q / 128) as i32, (kv / 128) as i32);
        let heads = none(fused_matvec(
            &x,
            &[
                (FusedWeight::Quantized(&wq), None),
                (FusedWeight::Quantized(&wk), None),
                (FusedWeight::Quantized(&wv), None),
            ],
            Some((&g, eps)),
            None,
            split,
            &[&[1, h, 1, 128], &[1, kvh, 1, 128], &[1, kvh, 1, 128]],
        )?)?;
        let o = none(fused_matvec(
            &att.reshape(&[1, h, 1, 128])?,
            &[(FusedWeight::Quantized(&wo), None)],
            None,
            Some(&res),
            split,
            &[&[1, 1, hidden as i32]],
        )?)?;
        for (a, b) in heads.iter().chain(&o).zip(ours[..3].iter().chain(&ours[3..4])) {
            let d = rel_err(&a.to_f32_vec()?, &b.to_f32_vec()?);
            if d != 0.0 {
                eprintln!("head-shaped fused outputs differ from the flat ones: {d}");
                worst = worst.max(1.0);
            }
        }
    }
    let fused_us = time_us(20, &|| {
        let o = fused()?;
        let mut t = o[0].sum(&[], false)?;
        for a in &o[1..] {
            t = t.add(&a.sum(&[], false)?)?;
        }
        Ok(t)
    })?;
    println!(
        "{}",
        serde_json::json!({"fused": family, "m": m, "rel_err": errs, "worst": worst,
            "fused_us": fused_us, "composed_us": composed_us})
    );
    Ok(worst)
}

/// Microseconds per call of `f(i)` for i in 0..n evaluated together (each
/// on its own copy of the weights), best of three.
fn cycled_us(n: usize, f: &dyn Fn(usize) -> Result<Array>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let ys = (0..n).map(f).collect::<Result<Vec<_>>>()?;
        eval(&ys)?;
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    Ok(best)
}

/// Streaming bandwidth at one row of x, as decode sees it: calls cycle
/// through copies of the weights totalling ≥ 1 GB, so none is served from
/// the GPU's L2 cache (50 MB on an H100), which a repeated call on one copy is.
fn bandwidth(family: &str, layer: &str, k: usize, n: usize) -> Result<()> {
    let q = random_quantized(n, k, 3)?;
    let bytes = n * k / 2 + n * k / 64 * 4;
    let copies = (1_000_000_000 / bytes).clamp(2, 64);
    let qs: Vec<Quantized> = (0..copies)
        .map(|_| {
            Ok(Quantized {
                weight: q.weight.detached()?,
                scales: q.scales.detached()?,
                biases: q.biases.detached()?,
                ..q.clone()
            })
        })
        .collect::<Result<_>>()?;
    let x = normal(&[1, k], 4)?;
    eval([&x])?;
    set_cuda_kernels(false);
    let mlx_us = cycled_us(copies, &|i| quantized_matmul(&x, &qs[i], true))?;
    set_cuda_kernels(true);
    let ours_us = cycled_us(copies, &|i| cuda_quantized_matmul(&x, &qs[i]))?;
    println!(
        "{}",
        serde_json::json!({"bandwidth": family, "layer": layer, "k": k, "n": n, "copies": copies,
            "ours_us": ours_us, "mlx_us": mlx_us, "ours_gbps": bytes as f64 / ours_us / 1e3,
            "mlx_gbps": bytes as f64 / mlx_us / 1e3,
            "rows_env": std::env::var("MLXENGINE_CUDA_QMV_ROWS").ok(),
            "threads_env": std::env::var("MLXENGINE_CUDA_QMV_THREADS").ok(),
            "probe_env": std::env::var("MLXENGINE_CUDA_QMV_PROBE").ok(),
            "ldcs_env": std::env::var("MLXENGINE_CUDA_QMV_LDCS").ok()})
    );
    Ok(())
}

/// The fused kernels on dense bfloat16 weights (norm + q/k/v, norm +
/// gate/up + SwiGLU, down + residual; off with `MLXENGINE_CUDA_QMV_DENSE=0`)
/// against MLX's ops in float32 rounded to bfloat16, and their microseconds
/// against MLX's composed ops.
fn dense_case(family: &str, hidden: usize, q: usize, kv: usize, ff: usize, m: usize) -> Result<f64> {
    let w = |n: usize, k: usize, seed: u64| -> Result<Array> { normal(&[n, k], seed)?.mul_scalar(0.02) };
    let (wq, wk, wv, wg, wu, wd) = (
        w(q, hidden, 1)?,
        w(kv, hidden, 2)?,
        w(kv, hidden, 3)?,
        w(ff, hidden, 5)?,
        w(ff, hidden, 6)?,
        w(hidden, ff, 7)?,
    );
    let x = normal(&[m, hidden], 8)?;
    let g = random::uniform(&[hidden], Dtype::Float32, 0.5, 1.5, Some(&random::key(9)?))?.astype(Dtype::Bfloat16)?;
    let res = normal(&[m, hidden], 10)?;
    let hff = normal(&[m, ff], 12)?.mul_scalar(0.1)?;
    let eps = 1e-5;
    eval([&x, &g, &res, &hff, &wq, &wk, &wv, &wg, &wu, &wd])?;
    let f32 = |a: &Array| a.astype(Dtype::Float32);
    // Row by row: MLX's float32 matmul of several rows takes TF32 tensor cores
    // on the GPU (~1e-3 relative), its matvec does not.
    let mm = |a: &Array, w: &Array| -> Result<Array> {
        let wt = f32(w)?.t()?;
        let rows = (0..a.dim(0) as i32)
            .map(|i| a.slice_axis(0, i, i + 1)?.matmul(&wt))
            .collect::<Result<Vec<_>>>()?;
        engine_mlx::concatenate(&rows.iter().collect::<Vec<_>>(), 0)
    };
    let xn = fast::rms_norm(&f32(&x)?, Some(&f32(&g)?), eps)?;
    let reference = [
        mm(&xn, &wq)?,
        mm(&xn, &wk)?,
        mm(&xn, &wv)?,
        mm(&xn, &wg)?.silu()?.multiply(&mm(&xn, &wu)?)?,
        mm(&f32(&hff)?, &wd)?.add(&f32(&res)?)?,
    ];
    let d = FusedWeight::Dense;
    let none = |v: Option<Vec<Array>>| v.ok_or_else(|| engine_mlx::Error::Invalid("fused_matvec declined".into()));
    let split = FusedEpilogue::Split;
    let fused = || -> Result<Vec<Array>> {
        let mut out = none(fused_matvec(
            &x,
            &[(d(&wq), None), (d(&wk), None), (d(&wv), None)],
            Some((&g, eps)),
            None,
            split,
            &[],
        )?)?;
        out.extend(none(fused_matvec(
            &x,
            &[(d(&wg), None), (d(&wu), None)],
            Some((&g, eps)),
            None,
            FusedEpilogue::SwiGlu,
            &[],
        )?)?);
        out.extend(none(fused_matvec(
            &hff,
            &[(d(&wd), None)],
            None,
            Some(&res),
            split,
            &[],
        )?)?);
        Ok(out)
    };
    if fused_matvec(&x, &[(d(&wq), None)], None, None, split, &[])?.is_none() {
        println!(
            "{}",
            serde_json::json!({"dense": family, "skipped": "MLXENGINE_CUDA_QMV_DENSE=0 turned them off"})
        );
        return Ok(0.0);
    }
    let ours = fused()?;
    let mut worst: f64 = 0.0;
    let mut errs = serde_json::Map::new();
    for ((name, o), r) in ["q", "k", "v", "swiglu", "down_residual"]
        .iter()
        .zip(&ours)
        .zip(&reference)
    {
        let e = rel_err(&o.to_f32_vec()?, &r.astype(Dtype::Bfloat16)?.to_f32_vec()?);
        worst = worst.max(e);
        errs.insert(name.to_string(), e.into());
    }
    let sum_all = |o: Vec<Array>| -> Result<Array> {
        let mut t = o[0].sum(&[], false)?;
        for a in &o[1..] {
            t = t.add(&a.sum(&[], false)?)?;
        }
        Ok(t)
    };
    let lin = |a: &Array, w: &Array| a.matmul(&w.t()?);
    let composed_us = time_us(20, &|| {
        let xn = fast::rms_norm(&x, Some(&g), eps)?;
        sum_all(vec![
            lin(&xn, &wq)?,
            lin(&xn, &wk)?,
            lin(&xn, &wv)?,
            lin(&xn, &wg)?.silu()?.multiply(&lin(&xn, &wu)?)?,
            lin(&hff, &wd)?.add(&res)?,
        ])
    })?;
    let fused_us = time_us(20, &|| sum_all(fused()?))?;
    println!(
        "{}",
        serde_json::json!({"dense": family, "m": m, "rel_err": errs, "worst": worst,
            "fused_us": fused_us, "composed_us": composed_us})
    );
    Ok(worst)
}

/// [`bandwidth`] for dense bfloat16 weights: ours against MLX's matmul.
fn dense_bandwidth(family: &str, layer: &str, k: usize, n: usize) -> Result<()> {
    let w = normal(&[n, k], 3)?.mul_scalar(0.02)?;
    let bytes = n * k * 2;
    let copies = (2_000_000_000 / bytes).clamp(2, 64);
    let ws: Vec<Array> = (0..copies).map(|_| w.detached()).collect::<Result<_>>()?;
    let x = normal(&[1, k], 4)?;
    eval([&x])?;
    if fused_matvec(
        &x,
        &[(FusedWeight::Dense(&w), None)],
        None,
        None,
        FusedEpilogue::Split,
        &[],
    )?
    .is_none()
    {
        println!(
            "{}",
            serde_json::json!({"bandwidth_dense": family, "skipped": "MLXENGINE_CUDA_QMV_DENSE=0 turned them off"})
        );
        return Ok(());
    }
    let mlx_us = cycled_us(copies, &|i| x.matmul(&ws[i].t()?))?;
    let ours_us = cycled_us(copies, &|i| {
        fused_matvec(
            &x,
            &[(FusedWeight::Dense(&ws[i]), None)],
            None,
            None,
            FusedEpilogue::Split,
            &[],
        )?
        .map(|mut y| y.remove(0))
        .ok_or_else(|| engine_mlx::Error::Invalid("declined".into()))
    })?;
    println!(
        "{}",
        serde_json::json!({"bandwidth_dense": family, "layer": layer, "k": k, "n": n, "copies": copies,
            "ours_us": ours_us, "mlx_us": mlx_us, "ours_gbps": bytes as f64 / ours_us / 1e3,
            "mlx_gbps": bytes as f64 / mlx_us / 1e3})
    );
    Ok(())
}

/// Microseconds a call of `f(i, x)` for i in 0..n where each call's x waits
/// for the one before (x + 0·y[…, :1]: two tiny kernels a call on either
/// side), so the calls run one after another as a decode step's matvecs do
/// and a grid's part-filled last wave shows, which independent calls hide by
/// overlapping in MLX's CUDA graph. Best of three.
fn chained_us(n: usize, x: &Array, f: &dyn Fn(usize, &Array) -> Result<Array>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut xi = x.clone();
        for i in 0..n {
            let y = f(i, &xi)?;
            xi = xi.add(&y.slice_axis(-1, 0, 1)?.mul_scalar(0.0)?)?;
        }
        eval([&xi])?;
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    Ok(best)
}

/// The dense matvec behind `fast::linear` (off with `MLXENGINE_CUDA_DMV=0`) on one
/// 8B bfloat16 shape: its error at 1 and 4 rows against MLX's float32 product
/// rounded to bfloat16, then streaming bandwidth at one row against MLX's
/// gemv, the weights cycled past the L2 cache as in [`bandwidth`], with the
/// calls independent and chained ([`chained_us`]).
fn dmv_case(layer: &str, k: usize, n: usize) -> Result<f64> {
    let w = normal(&[n, k], 3)?.mul_scalar(0.02)?;
    let mut worst: f64 = 0.0;
    let mut errs = serde_json::Map::new();
    for m in [1, 4] {
        let x = normal(&[m, k], 4 + m as u64)?;
        eval([&x, &w])?;
        set_cuda_kernels(false);
        let reference = x
            .astype(Dtype::Float32)?
            .matmul(&w.astype(Dtype::Float32)?.t()?)?
            .astype(Dtype::Bfloat16)?
            .to_f32_vec()?;
        set_cuda_kernels(true);
        let e = rel_err(&fast::linear(&x, &w)?.to_f32_vec()?, &reference);
        worst = worst.max(e);
        errs.insert(format!("m{m}"), e.into());
    }
    let bytes = n * k * 2;
    let copies = (2_000_000_000 / bytes).clamp(2, 64);
    let ws: Vec<Array> = (0..copies).map(|_| w.detached()).collect::<Result<_>>()?;
    let x = normal(&[1, k], 4)?;
    eval([&x])?;
    set_cuda_kernels(false);
    let mlx_us = cycled_us(copies, &|i| fast::linear(&x, &ws[i]))?;
    let mlx_chain_us = chained_us(copies, &x, &|i, x| fast::linear(x, &ws[i]))?;
    set_cuda_kernels(true);
    let ours_us = cycled_us(copies, &|i| fast::linear(&x, &ws[i]))?;
    let ours_chain_us = chained_us(copies, &x, &|i, x| fast::linear(x, &ws[i]))?;
    println!(
        "{}",
        serde_json::json!({"dmv": layer, "k": k, "n": n, "rel_err": errs, "ours_us": ours_us, "mlx_us": mlx_us,
            "ours_gbps": bytes as f64 / ours_us / 1e3, "mlx_gbps": bytes as f64 / mlx_us / 1e3,
            "ours_chain_us": ours_chain_us, "mlx_chain_us": mlx_chain_us,
            "ours_chain_gbps": bytes as f64 / ours_chain_us / 1e3, "mlx_chain_gbps": bytes as f64 / mlx_chain_us / 1e3,
            "sk_env": std::env::var("MLXENGINE_CUDA_DMV_SK").ok(),
            "rpw": std::env::var("MLXENGINE_CUDA_DMV_RPW").ok(), "u": std::env::var("MLXENGINE_CUDA_DMV_U").ok(),
            "threads": std::env::var("MLXENGINE_CUDA_DMV_THREADS").ok()})
    );
    Ok(worst)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--dense") {
        if !set_cuda_kernels(true) {
            eprintln!("qmv_check: built without the `cuda` feature");
            std::process::exit(2);
        }
        // The 8B decode step's dense shapes: packed q/k/v, o, packed gate/up, down, LM head.
        let mut worst: f64 = 0.0;
        for (layer, k, n) in [
            ("qkv", 4096, 6144),
            ("o", 4096, 4096),
            ("gate_up", 4096, 28672),
            ("down", 14336, 4096),
            ("lm_head", 4096, 128256),
        ] {
            worst = worst.max(dmv_case(layer, k, n)?);
        }
        // The fused dense kernels (fdmv) on one layer of each family.
        for (family, hidden, q, kv, ff) in DENSE_FAMILIES {
            for m in [1, 4] {
                worst = worst.max(dense_case(family, hidden, q, kv, ff, m)?);
            }
        }
        println!(
            "{}",
            serde_json::json!({"summary": "dmv", "worst_rel_err": worst, "pass": worst <= 1e-3})
        );
        std::process::exit(if worst <= 1e-3 { 0 } else { 1 });
    }
    if std::env::args().any(|a| a == "--bandwidth") {
        if !set_cuda_kernels(true) {
            eprintln!("qmv_check: built without the `cuda` feature");
            std::process::exit(2);
        }
        let (family, layers) = FAMILIES[1];
        for (layer, k, n) in layers {
            bandwidth(family, layer, k, n)?;
            dense_bandwidth(family, layer, k, n)?;
        }
        return Ok(());
    }
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
    for (family, hidden, q, kv, ff) in DENSE_FAMILIES {
        for m in [1, 4] {
            worst = worst.max(fused_case(family, hidden, q, kv, ff, m)?);
            worst = worst.max(dense_case(family, hidden, q, kv, ff, m)?);
        }
    }
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
