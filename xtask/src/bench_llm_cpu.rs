//! `cargo xtask bench llm-cpu`: the engine's default CPU path against
//! llama.cpp on the same GGUF files (SmolLM2-135M-Instruct Q4_1, and the
//! Q4_K_M / Q8_0 copies in `target/models` when present), the same thread
//! count, the same prompt ids and 128 greedy tokens, in the same run.
//! `ratio` = our decode tok/s ÷ llama.cpp's on the Q4_1 file; both TTFTs and
//! llama.cpp's version are printed with it. The default keeps 4/8-bit weights
//! for the int8 CPU kernels; the dense f32 + OpenBLAS path (`--dtype f32`,
//! the default before them) is measured too, as `f32_ratio`.
//!
//! llama.cpp is `llama-cpp-python` built from source for this CPU (minutes on
//! 2 cores), its wheel cached in `target/llamacpp/wheels` and installed in
//! `target/llamacpp/venv`. On x86-64 it is built with `-march=native` minus
//! AMX: on Xeons that report AMX, the native build dies with SIGILL in its AMX
//! path (../shared/FACTS.md).

use crate::bench_llm::json_of;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The llama-cpp-python release built as the baseline.
const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// The venv's Python with llama_cpp importable, building the wheel first if
/// no cached one exists.
fn llama_cpp_python(target: &Path) -> Result<PathBuf> {
    let dir = target.join("llamacpp");
    let python = dir.join("venv/bin/python");
    let imports = |p: &Path| {
        Command::new(p)
            .args(["-c", "import llama_cpp"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if imports(&python) {
        return Ok(python);
    }
    if !python.exists() {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(dir.join("venv"))
            .status()?
            .success();
        if !ok {
            bail!("`python3 -m venv {}` failed", dir.join("venv").display());
        }
    }
    let wheels = dir.join("wheels");
    let cached = |w: &Path| -> Option<PathBuf> {
        std::fs::read_dir(w)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("llama_cpp_python-") && n.ends_with(".whl"))
            })
    };
    let wheel = match cached(&wheels) {
        Some(w) => w,
        None => {
            eprintln!("building llama-cpp-python {LLAMA_CPP_PYTHON} from source for this CPU (several minutes)");
            let mut cmd = Command::new(&python);
            cmd.args(["-m", "pip", "wheel", "--no-deps", "-w"])
                .arg(&wheels)
                .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON}"))
                .env("CMAKE_BUILD_PARALLEL_LEVEL", crate::threads().to_string());
            if std::env::consts::ARCH == "x86_64" {
                let flags = "-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16";
                cmd.env(
                    "CMAKE_ARGS",
                    format!("-DGGML_NATIVE=OFF -DCMAKE_C_FLAGS='{flags}' -DCMAKE_CXX_FLAGS='{flags}'"),
                );
            }
            if !cmd.status()?.success() {
                bail!("building llama-cpp-python failed (it needs a C++ compiler; pip fetches cmake)");
            }
            cached(&wheels).context("pip wheel wrote no llama_cpp_python wheel")?
        }
    };
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q"])
        .arg(&wheel)
        .status()?
        .success();
    if !ok || !imports(&python) {
        bail!("installing {} failed", wheel.display());
    }
    Ok(python)
}

pub fn run() -> Result<()> {
    let root = crate::root();
    let models = crate::fetch_models()?;
    let exe = crate::build_example("engine-llm", "bench_decode")?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let python = llama_cpp_python(&target)?;
    let threads = crate::threads();
    let work = target.join("bench-llm-cpu");
    std::fs::create_dir_all(&work)?;
    let main = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ids = work.join("prompt_ids.json");
    crate::bench_llm::write_prompt_ids(&exe, &main, &ids)?;
    let n = "128";
    let engine = |gguf: &Path, dtype: &str| -> Result<Value> {
        json_of(
            Command::new(&exe)
                .arg(gguf)
                .args(["--dtype", dtype, "--tokens", n, "--prompt-ids"])
                .arg(&ids),
        )
    };
    let ours = |gguf: &Path| engine(gguf, "auto");
    let theirs = |gguf: &Path| -> Result<Value> {
        json_of(
            Command::new(&python)
                .arg(root.join("xtask/bench/llama_cpp_decode.py"))
                .arg(gguf)
                .arg(&ids)
                .arg(n)
                .arg(threads.to_string()),
        )
    };
    let tok_s = |v: &Value| v["tok_s"].as_f64().unwrap_or(0.0);
    // Alternate and keep each side's best of two, so a noisy moment on this
    // shared machine hurts neither side alone.
    let compare = |gguf: &Path| -> Result<(Value, Value)> {
        let (mut a, mut b) = (ours(gguf)?, theirs(gguf)?);
        let (a2, b2) = (ours(gguf)?, theirs(gguf)?);
        if tok_s(&a2) > tok_s(&a) {
            a = a2;
        }
        if tok_s(&b2) > tok_s(&b) {
            b = b2;
        }
        Ok((a, b))
    };
    let (a, b) = compare(&main)?;
    // The dense f32 + OpenBLAS path, best of two.
    let (f1, f2) = (engine(&main, "f32")?, engine(&main, "f32")?);
    let dense = if tok_s(&f2) > tok_s(&f1) { f2 } else { f1 };
    let mut others = serde_json::Map::new();
    for quant in ["Q4_K_M", "Q8_0"] {
        let file = models.join(format!("SmolLM2-135M-Instruct.{quant}.gguf"));
        if !file.exists() {
            continue;
        }
        let (x, y) = compare(&file)?;
        others.insert(
            quant.into(),
            json!({
                "engine_tok_s": x["tok_s"], "llama_cpp_tok_s": y["tok_s"],
                "engine_ttft_ms": x["ttft_ms"], "llama_cpp_ttft_ms": y["ttft_ms"],
                "ratio": tok_s(&x) / tok_s(&y),
            }),
        );
    }
    println!(
        "{}",
        json!({
            "bench": "llm-cpu",
            "file": main.file_name().map(|f| f.to_string_lossy().into_owned()),
            "threads": threads,
            "generated": a["generated"],
            "engine_tok_s": a["tok_s"],
            "llama_cpp_tok_s": b["tok_s"],
            "engine_ttft_ms": a["ttft_ms"],
            "llama_cpp_ttft_ms": b["ttft_ms"],
            "llama_cpp_python": b["version"],
            "llama_cpp_system_info": b["system_info"],
            "engine_f32_tok_s": dense["tok_s"],
            "engine_f32_ttft_ms": dense["ttft_ms"],
            "f32_ratio": tok_s(&dense) / tok_s(&b),
            "other_files": others,
            "ratio": tok_s(&a) / tok_s(&b),
        })
    );
    Ok(())
}
