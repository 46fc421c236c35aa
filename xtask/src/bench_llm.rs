//! `cargo xtask bench llm`: SmolLM2-135M greedy decode of 128 tokens on this
//! CPU, through the engine and through mlx-lm (Python) on the very same
//! weights (the GGUF exported to an MLX folder, Q4_1 → MLX 4-bit exactly) and
//! the same prompt ids, in the same run. `ratio` = engine ÷ mlx-lm at the same
//! precision; `engine_default_tok_s` is the engine's own CPU policy (f32 + BLAS).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Runs a bench side and parses the JSON object on its last stdout line.
pub fn json_of(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// The GGUF exported to an MLX folder by `bench_decode --export-mlx` (Q4_1 →
/// MLX 4-bit exactly), once: the weights both benches give mlx-lm.
pub fn export_mlx(exe: &Path, gguf: &Path, mlx_dir: &Path) -> Result<()> {
    if mlx_dir.join("model.safetensors").exists() {
        return Ok(());
    }
    let ok = Command::new(exe)
        .arg(gguf)
        .arg("--export-mlx")
        .arg(mlx_dir)
        .status()?
        .success();
    if !ok {
        bail!("exporting the GGUF to an MLX folder failed");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let root = crate::root();
    let models = crate::fetch_models()?;
    let gguf = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let exe = crate::build_example("engine-llm", "bench_decode")?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let work = target.join("bench-llm");
    let mlx_dir = work.join("smollm2-mlx");
    let ids = work.join("prompt_ids.json");
    std::fs::create_dir_all(&work)?;
    export_mlx(&exe, &gguf, &mlx_dir)?;
    write_prompt_ids(&exe, &gguf, &ids)?;
    let n = "128";
    let engine = |dtype: &str, model: &Path| -> Result<Value> {
        json_of(
            Command::new(&exe)
                .arg(model)
                .args(["--dtype", dtype, "--tokens", n, "--prompt-ids"])
                .arg(&ids),
        )
    };
    let oracle = || -> Result<Value> {
        json_of(
            Command::new(crate::oracle_python()?)
                .arg(root.join("xtask/bench/mlx_lm_decode.py"))
                .arg(&mlx_dir)
                .arg(&ids)
                .arg(n),
        )
    };
    // Alternate and keep each side's best, so a noisy moment hurts neither alone.
    let (mut ours, mut theirs) = (engine("native", &gguf)?, oracle()?);
    for _ in 0..1 {
        let (a, b) = (engine("native", &gguf)?, oracle()?);
        if a["tok_s"].as_f64() > ours["tok_s"].as_f64() {
            ours = a;
        }
        if b["tok_s"].as_f64() > theirs["tok_s"].as_f64() {
            theirs = b;
        }
    }
    let default = engine("auto", &gguf)?;
    let (e, o) = (
        ours["tok_s"].as_f64().unwrap_or(0.0),
        theirs["tok_s"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "llm",
            "engine_tok_s": e,
            "oracle_tok_s": o,
            "engine_ttft_ms": ours["ttft_ms"],
            "oracle_ttft_ms": theirs["ttft_ms"],
            "engine_default_tok_s": default["tok_s"],
            "engine_default_ttft_ms": default["ttft_ms"],
            "generated": ours["generated"],
            "ratio": e / o,
        })
    );
    Ok(())
}

/// Writes the token ids of the benches' story prompt, tokenized by `exe`
/// (the bench_decode example) from `gguf`, to `ids` (JSON).
pub fn write_prompt_ids(exe: &Path, gguf: &Path, ids: &Path) -> Result<()> {
    let prompt = "Write a long story about a dragon who learns to bake bread.";
    let ok = Command::new(exe)
        .arg(gguf)
        .arg("--write-prompt-ids")
        .arg(ids)
        .arg(prompt)
        .status()?
        .success();
    if !ok {
        bail!("tokenizing the prompt failed");
    }
    Ok(())
}
