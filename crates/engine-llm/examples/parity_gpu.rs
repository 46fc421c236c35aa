//! The parity fixtures (`cargo xtask parity-fixtures`, target/parity) on the device this build
//! runs on — the GPU when built with `--features engine-mlx/cuda` — against their expected.json
//! (mlx-lm on the CPU, float32): the largest logit difference relative to the largest logit, and
//! how many of the 32 greedy tokens agree before the first difference. Checks the CUDA decode
//! path (fused kernels, packed projections) on real checkpoint layouts of every architecture,
//! where the random-weight benchmark models only show speed.
//!
//! `parity_gpu DIR [NAME...]` prints one JSON line a fixture folder (all of DIR's, or the NAMEs)
//! and a summary; exits 1 when a fixture's relative difference passes 1e-2 (float32 on a GPU
//! sums in other orders than the CPU; the CPU suite's own bound is 1e-4 absolute).

use engine_core::{GenerateParams, StreamEvent};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use std::path::{Path, PathBuf};

// `checkpoint`, shared with the parity tests.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect())
        .unwrap_or_default()
}

fn check(dir: &Path) -> Result<(f64, usize), Box<dyn std::error::Error>> {
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json"))?)?;
    let prompt = ids(&expected["prompt"]);
    let opts = LoadOptions {
        dtype: DtypePolicy::Native,
        ..Default::default()
    };
    let model = LlmModel::load(&common::checkpoint(dir), &opts, &mut |_| {})?;
    let logits = model.logits(&prompt)?.to_f32_vec()?;
    let want: Vec<f32> = expected["logits"]
        .as_array()
        .ok_or("expected.json: no logits")?
        .iter()
        .flat_map(|row| {
            row.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
        })
        .collect();
    if logits.len() != want.len() {
        return Err(format!("{} logits, expected {}", logits.len(), want.len()).into());
    }
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    let worst = logits
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale;
    // The oracle ignores EOS (id 1 in these fixtures); the engine stops at it.
    let oracle: Vec<u32> = ids(&expected["greedy"]).into_iter().take_while(|&t| t != 1).collect();
    let mut ours = Vec::new();
    for ev in model.generate_from_tokens(&prompt, &GenerateParams::greedy(32), None)? {
        if let StreamEvent::Text { token, .. } = ev? {
            ours.push(token);
        }
    }
    let agree = ours.iter().zip(&oracle).take_while(|(a, b)| a == b).count();
    Ok((f64::from(worst), agree))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first().map(PathBuf::from) else {
        eprintln!("usage: parity_gpu DIR [NAME...]");
        std::process::exit(2);
    };
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(e) => {
            eprintln!("parity_gpu: cannot read {}: {e}", root.display());
            std::process::exit(2);
        }
    };
    if args.len() > 1 {
        dirs.retain(|d| args[1..].iter().any(|n| d.file_name().is_some_and(|f| f == n.as_str())));
    }
    dirs.sort();
    let device = format!("{:?}", engine_mlx::default_device());
    let mut pass = true;
    for d in &dirs {
        let name = d.file_name().unwrap_or_default().to_string_lossy().into_owned();
        match check(d) {
            Ok((rel, agree)) => {
                pass &= rel <= 1e-2;
                println!(
                    "{}",
                    serde_json::json!({"fixture": name, "device": device, "max_rel_logit_diff": rel,
                        "greedy_agree": agree})
                );
            }
            Err(e) => {
                pass = false;
                println!("{}", serde_json::json!({"fixture": name, "error": e.to_string()}));
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({"summary": "parity_gpu", "fixtures": dirs.len(), "pass": pass})
    );
    if !pass {
        std::process::exit(1);
    }
}
