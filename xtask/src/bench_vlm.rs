//! `cargo xtask bench vlm`: one image + prompt, prefill (TTFT, vision tower
//! included) and greedy decode, through the engine and through mlx-vlm
//! (Python) on the very same checkpoint — random weights at Qwen2-VL-2B's real
//! shapes — at the same dtype (f32, the engine's CPU policy) in the same run.
//! mlx-vlm gets the same BLAS as the engine (OpenBLAS preloaded), so the ratio
//! compares the engines, not the BLAS builds. `ratio` is the smaller of the
//! prefill and the decode speed-ups (each: mlx-vlm time ÷ engine time).

use crate::bench_llm::json_of;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

pub fn run() -> Result<()> {
    let root = crate::root();
    let python = crate::oracle_python()?;
    // mlx-vlm's runtime needs nothing beyond the oracle's packages (mlx, mlx-lm,
    // transformers, Pillow); its declared extras (audio, servers) are not used.
    if !Command::new(&python).args(["-c", "import mlx_vlm"]).status()?.success() {
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--no-deps", "mlx-vlm==0.7.10"])
            .status()?
            .success();
        if !ok {
            bail!("installing mlx-vlm into the oracle venv failed");
        }
    }
    let exe = crate::build_example("engine-vlm", "bench_vlm")?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let work = target.join("bench-vlm");
    let model = work.join("qwen2-vl-2b");
    let image = work.join("image.png");
    std::fs::create_dir_all(&work)?;
    if !model.join("model.safetensors").exists() {
        eprintln!("writing a random Qwen2-VL-2B-shaped checkpoint (4.4 GB) ...");
        let ok = Command::new(&python)
            .arg(root.join("xtask/bench/make_vlm_bench.py"))
            .arg(&model)
            .arg(root.join("crates/engine-vlm/tests/fixtures/qwen2-vl"))
            .status()?
            .success();
        if !ok {
            bail!("xtask/bench/make_vlm_bench.py failed");
        }
    }
    if !image.exists() {
        let script = "import sys, numpy as np; from PIL import Image; \
             Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(sys.argv[1])";
        if !Command::new(&python)
            .args(["-c", script])
            .arg(&image)
            .status()?
            .success()
        {
            bail!("writing the bench image failed");
        }
    }
    let prompt = "Describe this image.";
    let n = "16";
    let engine = |m: &Path| {
        json_of(
            Command::new(&exe)
                .arg(m)
                .arg(&image)
                .args([prompt, n, "--dtype", "f32"]),
        )
    };
    let blas = Path::new("/usr/lib/x86_64-linux-gnu/libopenblas.so.0");
    let oracle = |m: &Path| -> Result<Value> {
        let mut cmd = Command::new(&python);
        cmd.arg(root.join("xtask/bench/mlx_vlm_generate.py"))
            .arg(m)
            .arg(&image)
            .args([prompt, n, "float32"]);
        if blas.exists() {
            cmd.env("LD_PRELOAD", blas);
        }
        json_of(&mut cmd)
    };
    // Alternate and keep each side's best, so a noisy moment hurts neither alone.
    // TTFT is end to end on both sides: image read, preprocessing, vision tower, prefill.
    let (mut ours, mut theirs) = (engine(&model)?, oracle(&model)?);
    let (a, b) = (engine(&model)?, oracle(&model)?);
    let keep = |best: &mut Value, run: &Value, key: &str, lower: bool| {
        if (f(run, key) < f(best, key)) == lower {
            best[key] = run[key].clone();
        }
    };
    keep(&mut ours, &a, "e2e_ttft_ms", true);
    keep(&mut ours, &a, "decode_tok_s", false);
    keep(&mut theirs, &b, "ttft_ms", true);
    keep(&mut theirs, &b, "decode_tok_s", false);
    let prefill = f(&theirs, "ttft_ms") / f(&ours, "e2e_ttft_ms");
    let decode = f(&ours, "decode_tok_s") / f(&theirs, "decode_tok_s");
    println!(
        "{}",
        serde_json::json!({
            "bench": "vlm",
            "model": "Qwen2-VL-2B shapes, random f16 weights run in f32, one 224x224 image",
            "engine_ttft_ms": ours["e2e_ttft_ms"],
            "oracle_ttft_ms": theirs["ttft_ms"],
            "engine_decode_tok_s": ours["decode_tok_s"],
            "oracle_decode_tok_s": theirs["decode_tok_s"],
            "prompt_tokens": ours["prompt_tokens"],
            "oracle_prompt_tokens": theirs["prompt_tokens"],
            "prefill_speedup": prefill,
            "decode_speedup": decode,
            "ratio": prefill.min(decode),
        })
    );
    Ok(())
}
