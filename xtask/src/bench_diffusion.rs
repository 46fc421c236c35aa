//! `cargo xtask bench diffusion`: seconds per 256×256 image on this CPU for a random
//! SD-1.x-shaped pipeline at reduced widths (UNet 128/256/256, 2 layers a level; VAE
//! 32/64/128/128; a 4-layer CLIP), 4 DDIM steps with classifier-free guidance 7.5, f32,
//! through engine-diffusion (the `bench_image` example) and through diffusers on torch
//! (CPU, f32), from the same weights and initial latents, in the same run. Prints one
//! JSON line: `ratio` = diffusers' seconds ÷ ours (higher is better), each side's best of
//! two runs (they alternate, each with a one-step warm-up), our loop/VAE split, and the
//! max abs difference between the two images.
//!
//! Needs a Python with torch, diffusers 0.42.1 and transformers 5.17 (as the torch fixtures):
//! `MLXENGINE_TORCH_PYTHON`, else `target/torch/bin/python` (e.g. a symlink to a venv made by
//! `python3 -m venv target/torch && target/torch/bin/pip install torch diffusers==0.42.1
//! transformers==5.17.0`). The pipeline is made once into `target/bench-diffusion/` by
//! `xtask/bench/diffusion.py` (not committed).

use crate::bench_llm::json_of;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

const STEPS: &str = "4";
const GUIDANCE: &str = "7.5";
const PROMPT: &str = "a photo of an astronaut riding a horse on mars";
const NEGATIVE: &str = "blurry, low quality";

fn torch_python() -> Result<PathBuf> {
    let python = std::env::var_os("MLXENGINE_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/torch/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import torch, diffusers, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "{} cannot import torch, diffusers and transformers: create the torch venv with `python3 -m venv \
             target/torch && target/torch/bin/pip install torch diffusers==0.42.1 transformers==5.17.0` \
             (a multi-GB download; never done by CI or scripts/setup.sh), or set MLXENGINE_TORCH_PYTHON",
            python.display()
        );
    }
    Ok(python)
}

pub fn run() -> Result<()> {
    let python = torch_python()?;
    let script = crate::root().join("xtask/bench/diffusion.py");
    let exe = crate::build_example("engine-diffusion", "bench_image")?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let work = target.join("bench-diffusion");
    if !work.join("model/model_index.json").is_file() {
        eprintln!("making the bench pipeline in {} ...", work.display());
        let ok = Command::new(&python)
            .arg(&script)
            .arg("make")
            .arg(&work)
            .status()?
            .success();
        if !ok {
            bail!("xtask/bench/diffusion.py make failed");
        }
    }
    let ours = work.join("engine_image.safetensors");
    let (mut engine, mut torch) = (None::<serde_json::Value>, None::<serde_json::Value>);
    let mut runs = (vec![], vec![]);
    let secs = |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v["s_per_image"].as_f64());
    for _ in 0..2 {
        let e = json_of(
            Command::new(&exe)
                .arg(work.join("model"))
                .arg(work.join("latents.safetensors"))
                .arg(&ours)
                .args([STEPS, GUIDANCE, "ddim", PROMPT, NEGATIVE]),
        )?;
        runs.0.push(e["s_per_image"].clone());
        if secs(&engine).is_none_or(|b| e["s_per_image"].as_f64().is_some_and(|s| s < b)) {
            engine = Some(e);
        }
        let t = json_of(
            Command::new(&python)
                .arg(&script)
                .arg("run")
                .arg(&work)
                .args([STEPS, GUIDANCE, PROMPT, NEGATIVE])
                .arg(&ours),
        )?;
        runs.1.push(t["s_per_image"].clone());
        if secs(&torch).is_none_or(|b| t["s_per_image"].as_f64().is_some_and(|s| s < b)) {
            torch = Some(t);
        }
    }
    let (es, ts) = (
        secs(&engine).context("no engine time")?,
        secs(&torch).context("no diffusers time")?,
    );
    let (e, t) = (engine.unwrap_or_default(), torch.unwrap_or_default());
    println!(
        "{}",
        serde_json::json!({
            "bench": "diffusion", "size": "256x256", "steps": STEPS.parse::<u32>()?, "scheduler": "ddim",
            "guidance": GUIDANCE.parse::<f64>()?,
            "engine_s_per_image": es, "diffusers_s_per_image": ts, "ratio": ts / es,
            "engine_runs_s": runs.0, "diffusers_runs_s": runs.1,
            "engine_loop_s": e["loop_s"], "engine_vae_s": e["vae_s"],
            "max_abs_diff": t["max_abs_diff"], "torch": t["torch"], "torch_threads": t["threads"],
        })
    );
    Ok(())
}
