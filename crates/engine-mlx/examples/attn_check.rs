//! Parity and speed of the engine's fused CUDA decode attention
//! (`fast::decode_attention`: RoPE + in-place cache write + attention in one
//! kernel) against the MLX ops it replaces, on the GPU (build with
//! `--features cuda`):
//!
//! `attn_check`
//!
//! Each case fills random caches, runs one decode step both ways — ours, and
//! MLX's RoPE of q and k, two `slice_update`s, two views and its fused
//! attention — and compares the outputs and the caches written in place
//! (relative L2 in f64). Cases: Llama-3.2-1B / 3.1-8B / Qwen2.5-7B head
//! layouts, float32, float16 and bfloat16, empty to multi-chunk caches, Llama 3
//! frequencies, adjacent-pair and partial RoPE, left-padded batches and a full
//! ring, and q/k/v read from one packed projection (unless `MLXENGINE_CUDA_PACK=0`;
//! skipped otherwise). Then
//! microseconds per decode step of 32 chained layers, ours against MLX's ops,
//! at one batch row (512 and 4096 slots) and at 32 (512 slots).
//! One JSON line a case and a summary; exits 1 past the tolerance.

use engine_mlx::fast::{self, AttentionMask, DecodePositions, DecodeSlot};
use engine_mlx::nn::{Rope, RopeScaling};
use engine_mlx::quant::set_cuda_kernels;
use engine_mlx::{eval, random, Array, Dtype, Result};
use std::time::Instant;

mod support;
use support::rel_err;

fn normal(shape: &[usize], dtype: Dtype, seed: u64) -> Result<Array> {
    random::normal(shape, Dtype::Float32, 0.0, 1.0, Some(&random::key(seed)?))?.astype(dtype)
}

/// One decode step's layout.
struct Case {
    name: &'static str,
    b: usize,
    heads: usize,
    kv: usize,
    d: usize,
    dtype: Dtype,
    /// Slots filled before the step (a growing cache) or the ring's window.
    len: usize,
    ring: bool,
    pads: Vec<usize>,
    rope: Rope,
    /// q, k, v as the projections' (B, 1, heads·D) rather than (B, heads, 1, D).
    flat: bool,
    /// q, k, v as one packed projection (B, 1, (heads + 2·kv)·D).
    packed: bool,
}

/// MLX's ops for the step on [q, k, v, key cache, value cache] at (slot,
/// attended slots, position): (output, key cache, value cache).
fn reference(c: &Case, [q, k, v, kc, vc]: [&Array; 5], (slot, n, pos): (usize, usize, usize)) -> Result<[Array; 3]> {
    let (q, k) = if c.pads.is_empty() {
        (c.rope.forward(q, pos)?, c.rope.forward(k, pos)?)
    } else {
        let offs: Vec<i32> = c.pads.iter().map(|&p| (pos - p) as i32).collect();
        let offs = Array::from_slice(&offs, &[c.b])?;
        (c.rope.forward_rows(q, &offs)?, c.rope.forward_rows(k, &offs)?)
    };
    let s = kc.shape_i32();
    let (start, stop) = ([0, 0, slot as i32, 0], [s[0], s[1], slot as i32 + 1, s[3]]);
    let kc = kc.slice_update(&k, &start, &stop, &[1, 1, 1, 1])?;
    let vc = vc.slice_update(v, &start, &stop, &[1, 1, 1, 1])?;
    let (keys, values) = (kc.slice_axis(2, 0, n as i32)?, vc.slice_axis(2, 0, n as i32)?);
    let scale = (c.d as f32).powf(-0.5);
    let out = if c.pads.is_empty() {
        fast::scaled_dot_product_attention(&q, &keys, &values, scale, AttentionMask::None)?
    } else {
        let m: Vec<u8> = c
            .pads
            .iter()
            .flat_map(|&p| (0..n).map(move |j| (j >= p) as u8))
            .collect();
        let mask = Array::from_slice(&m, &[c.b, 1, 1, n])?.astype(Dtype::Bool)?;
        fast::scaled_dot_product_attention(&q, &keys, &values, scale, AttentionMask::Array(&mask))?
    };
    Ok([out, kc, vc])
}

/// The tolerance of a dtype: both sides round RoPE's output and the result
/// to it; the sums differ only in order.
fn tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Float32 => 1e-5,
        Dtype::Float16 => 2e-3,
        _ => 8e-3,
    }
}

fn run_case(c: &Case, seed: u64) -> Result<bool> {
    let cap = if c.ring { c.len } else { (c.len + 1).div_ceil(256) * 256 };
    let (slot, n, pos) = if c.ring {
        (c.len * 2 / 3, c.len, c.len * 5 + 7)
    } else {
        (c.len, c.len + 1, c.len)
    };
    let q = normal(&[c.b, c.heads, 1, c.d], c.dtype, seed)?;
    let k = normal(&[c.b, c.kv, 1, c.d], c.dtype, seed + 1)?;
    let v = normal(&[c.b, c.kv, 1, c.d], c.dtype, seed + 2)?;
    let kc = normal(&[c.b, c.kv, cap, c.d], c.dtype, seed + 3)?;
    let vc = normal(&[c.b, c.kv, cap, c.d], c.dtype, seed + 4)?;
    eval([&q, &k, &v, &kc, &vc])?;
    let [ro, rk, rv] = reference(c, [&q, &k, &v, &kc, &vc], (slot, n, pos))?;
    let (ro, rk, rv) = (ro.to_f32_vec()?, rk.to_f32_vec()?, rv.to_f32_vec()?);
    let before = kc.to_f32_vec()?;
    let rows = if c.pads.is_empty() {
        None
    } else {
        let r: Vec<i32> = c.pads.iter().flat_map(|&p| [(pos - p) as i32, p as i32]).collect();
        Some(Array::from_slice(&r, &[c.b, 2])?)
    };
    let positions = match &rows {
        Some(r) => DecodePositions::Rows(r),
        None => DecodePositions::Same(pos),
    };
    let spec = c.rope.decode_spec().expect("plain RoPE");
    let at = DecodeSlot {
        slot,
        n_keys: n,
        positions,
    };
    let scale = (c.d as f32).powf(-0.5);
    // Copies of the caches that only the kernel writes (in place).
    let (kc2, vc2) = (kc.add_scalar(0.0)?, vc.add_scalar(0.0)?);
    eval([&kc2, &vc2])?;
    let flat = |t: &Array| {
        if c.flat {
            t.reshape(&[c.b as i32, 1, -1])
        } else {
            Ok(t.clone())
        }
    };
    if c.packed && !fast::cuda_pack_enabled() {
        println!(
            "{}",
            serde_json::json!({"case": c.name, "skipped": "MLXENGINE_CUDA_PACK=0"})
        );
        return Ok(true);
    }
    let o = if c.packed {
        let row = |t: &Array| t.reshape(&[c.b as i32, 1, -1]);
        let qkv = engine_mlx::concatenate(&[&row(&q)?, &row(&k)?, &row(&v)?], 2)?;
        eval([&qkv])?;
        fast::decode_attention_packed_in_place(&qkv, c.heads, &kc2, &vc2, spec, at, scale)?
    } else {
        fast::decode_attention_in_place(&flat(&q)?, &flat(&k)?, &flat(&v)?, &kc2, &vc2, spec, at, scale)?
    };
    let Some(o) = o else {
        println!("{}", serde_json::json!({"case": c.name, "declined": true}));
        return Ok(false);
    };
    eval([&o])?;
    let (eo, ek, ev) = (
        rel_err(&o.to_f32_vec()?, &ro),
        rel_err(&kc2.to_f32_vec()?, &rk),
        rel_err(&vc2.to_f32_vec()?, &rv),
    );
    // The originals stay as they were.
    let intact = kc.to_f32_vec()? == before;
    let tol = tolerance(c.dtype);
    let pass = eo <= tol && ek <= tol && ev == 0.0 && intact;
    println!(
        "{}",
        serde_json::json!({
            "case": c.name, "dtype": c.dtype.name(), "b": c.b, "heads": c.heads, "kv": c.kv, "d": c.d,
            "len": c.len, "ring": c.ring, "pads": c.pads,
            "out_rel_err": eo, "k_cache_rel_err": ek, "v_cache_rel_err": ev,
            "original_intact": intact, "tolerance": tol, "pass": pass,
        })
    );
    Ok(pass)
}

/// Microseconds per decode step of `layers` chained attention layers (each
/// query the previous layer's output) over `b` batch rows, ours or MLX's ops,
/// over `steps` steps.
#[allow(clippy::too_many_arguments)]
fn chain_us(
    ours: bool,
    b: usize,
    layers: usize,
    heads: usize,
    kv: usize,
    d: usize,
    len: usize,
    steps: usize,
) -> Result<f64> {
    let dtype = Dtype::Bfloat16;
    let rope = Rope::new(d as i32, false, 500_000.0, &RopeScaling::None)?;
    let cap = (len + steps + 1).div_ceil(256) * 256;
    let mut caches = (0..layers)
        .map(|i| {
            Ok((
                normal(&[b, kv, cap, d], dtype, 100 + i as u64)?,
                normal(&[b, kv, cap, d], dtype, 200 + i as u64)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    for (k, v) in &caches {
        eval([k, v])?;
    }
    let k = normal(&[b, kv, 1, d], dtype, 5)?;
    let v = normal(&[b, kv, 1, d], dtype, 6)?;
    let mut x = normal(&[b, heads, 1, d], dtype, 7)?;
    eval([&k, &v, &x])?;
    let scale = (d as f32).powf(-0.5);
    let mut best = f64::MAX;
    for round in 0..3 {
        let t = Instant::now();
        for s in 0..steps {
            let slot = len + round * steps + s;
            for (kc, vc) in caches.iter_mut() {
                if ours {
                    let at = DecodeSlot {
                        slot,
                        n_keys: slot + 1,
                        positions: DecodePositions::Same(slot),
                    };
                    let spec = rope.decode_spec().expect("plain");
                    x = fast::decode_attention_in_place(&x, &k, &v, kc, vc, spec, at, scale)?
                        .expect("the kernel applies");
                } else {
                    let (q, k) = (rope.forward(&x, slot)?, rope.forward(&k, slot)?);
                    let (start, stop) = ([0, 0, slot as i32, 0], [b as i32, kv as i32, slot as i32 + 1, d as i32]);
                    *kc = kc.slice_update(&k, &start, &stop, &[1, 1, 1, 1])?;
                    *vc = vc.slice_update(&v, &start, &stop, &[1, 1, 1, 1])?;
                    let (keys, values) = (
                        kc.slice_axis(2, 0, slot as i32 + 1)?,
                        vc.slice_axis(2, 0, slot as i32 + 1)?,
                    );
                    x = fast::scaled_dot_product_attention(&q, &keys, &values, scale, AttentionMask::None)?;
                }
            }
            eval([&x])?;
        }
        if round > 0 {
            best = best.min(t.elapsed().as_secs_f64() * 1e6 / steps as f64);
        }
    }
    Ok(best)
}

fn main() -> Result<()> {
    if !set_cuda_kernels(true) {
        eprintln!("attn_check: built without the `cuda` feature");
        std::process::exit(2);
    }
    let plain = |d: usize| Rope::new(d as i32, false, 500_000.0, &RopeScaling::None);
    let llama3 = RopeScaling::Llama3 {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let case = |name, b, heads, kv, d, dtype, len, rope| Case {
        name,
        b,
        heads,
        kv,
        d,
        dtype,
        len,
        ring: false,
        pads: vec![],
        rope,
        flat: false,
        packed: false,
    };
    let mut cases = vec![];
    for dtype in [Dtype::Bfloat16, Dtype::Float16, Dtype::Float32] {
        for len in [0, 1, 100, 640, 2100] {
            cases.push(case(
                "llama-3.1-8b",
                1,
                32,
                8,
                128,
                dtype,
                len,
                Rope::new(128, false, 500_000.0, &llama3)?,
            ));
        }
        cases.push(case(
            "llama-3.2-1b",
            1,
            32,
            8,
            64,
            dtype,
            300,
            Rope::new(64, false, 500_000.0, &llama3)?,
        ));
        cases.push(case(
            "qwen2.5-7b",
            1,
            28,
            4,
            128,
            dtype,
            513,
            Rope::new(128, false, 1e6, &RopeScaling::None)?,
        ));
    }
    cases.push(case(
        "traditional",
        1,
        8,
        8,
        128,
        Dtype::Bfloat16,
        77,
        Rope::new(128, true, 10_000.0, &RopeScaling::None)?,
    ));
    cases.push(case(
        "partial-rope",
        1,
        16,
        4,
        128,
        Dtype::Bfloat16,
        77,
        Rope::new(64, false, 10_000.0, &RopeScaling::None)?,
    ));
    cases.push(case(
        "linear-scaling",
        1,
        16,
        4,
        64,
        Dtype::Float16,
        50,
        Rope::new(64, false, 10_000.0, &RopeScaling::Linear { factor: 4.0 })?,
    ));
    cases.push(case("head-256", 2, 8, 4, 256, Dtype::Bfloat16, 40, plain(256)?));
    cases.push(case("head-80", 1, 32, 32, 80, Dtype::Float16, 40, plain(80)?));
    cases.push(case("group-8", 2, 32, 4, 128, Dtype::Bfloat16, 3000, plain(128)?));
    cases.push(Case {
        pads: vec![0, 3, 30, 0],
        ..case("padded-batch", 4, 32, 8, 128, Dtype::Bfloat16, 40, plain(128)?)
    });
    cases.push(Case {
        flat: true,
        ..case("flat-projections", 2, 32, 8, 64, Dtype::Bfloat16, 200, plain(64)?)
    });
    cases.push(Case {
        ring: true,
        ..case("full-ring", 1, 16, 8, 128, Dtype::Bfloat16, 512, plain(128)?)
    });
    cases.push(Case {
        packed: true,
        ..case(
            "packed-8b",
            1,
            32,
            8,
            128,
            Dtype::Bfloat16,
            300,
            Rope::new(128, false, 500_000.0, &llama3)?,
        )
    });
    cases.push(Case {
        packed: true,
        pads: vec![0, 7, 20],
        ..case("packed-padded-batch", 3, 32, 8, 64, Dtype::Bfloat16, 40, plain(64)?)
    });
    cases.push(Case {
        packed: true,
        ..case("packed-f16", 2, 28, 4, 128, Dtype::Float16, 513, plain(128)?)
    });
    let mut pass = true;
    for (i, c) in cases.iter().enumerate() {
        pass &= run_case(c, 1000 + 10 * i as u64)?;
    }
    for (family, heads, kv, d) in [("llama-3.2-1b", 32, 8, 64), ("llama-3.1-8b", 32, 8, 128)] {
        for (b, len) in [(1, 512), (1, 4096), (32, 512)] {
            let mlx = chain_us(false, b, 32, heads, kv, d, len, 32)?;
            let ours = chain_us(true, b, 32, heads, kv, d, len, 32)?;
            println!(
                "{}",
                serde_json::json!({"chain": family, "batch": b, "layers": 32, "len": len, "ours_us": ours, "mlx_us": mlx, "speedup": mlx / ours})
            );
        }
    }
    println!("{}", serde_json::json!({"summary": "attn_check", "pass": pass}));
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}
