//! Parity with mlx-lm (Python, same MLX kernels) on tiny random checkpoints
//! of every architecture, dense f32 and MLX 4-bit: logits within 1e-4 and the
//! same 32 greedy tokens. Fixtures: `cargo xtask parity-fixtures` (made by
//! xtask/parity/make_tiny_llms.py into target/parity/).

mod common;

use engine_core::{GenerateParams, StreamEvent};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use std::path::PathBuf;

fn fixtures() -> Vec<PathBuf> {
    let dir = std::env::var_os("MLXENGINE_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/parity"));
    assert!(
        dir.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        dir.display()
    );
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn every_architecture_matches_mlx_lm() {
    let dirs = fixtures();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for arch in [
        "llama",
        "llama3-scaled",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "phi3-longrope",
        "gemma2",
        "gemma3",
    ] {
        assert!(
            names.contains(&arch.to_string()) && names.contains(&format!("{arch}-4bit")),
            "no fixture for {arch}"
        );
    }
    assert!(
        names.contains(&"phi3-longrope-gguf".to_string()),
        "no GGUF fixture: rerun `cargo xtask parity-fixtures`"
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        let prompt: Vec<u32> = expected["prompt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let opts = LoadOptions {
            dtype: DtypePolicy::Native,
            ..Default::default()
        };
        let model =
            LlmModel::load(&common::checkpoint(dir), &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.transformer().is_quantized(), name.ends_with("-4bit"), "{name}");
        let logits = model.logits(&prompt).unwrap().to_f32_vec().unwrap();
        let want: Vec<f32> = expected["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        assert_eq!(logits.len(), want.len(), "{name}: logits shape");
        let worst = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        if std::env::var_os("PARITY_DEBUG").is_some() {
            let v = 256;
            let rows: Vec<f32> = (0..logits.len() / v)
                .map(|r| {
                    (0..v)
                        .map(|i| (logits[r * v + i] - want[r * v + i]).abs())
                        .fold(0f32, f32::max)
                })
                .collect();
            eprintln!("{name}: per-position max diff {rows:?}");
        }
        if worst > 1e-4 {
            failures.push(format!("{name}: max logit difference {worst}"));
        }
        // The oracle ignores EOS; ours stops at it (id 1 here).
        let oracle: Vec<u32> = expected["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .take_while(|&t| t != 1)
            .collect();
        let mut stats = None;
        let ours: Vec<u32> = model
            .generate_from_tokens(&prompt, &GenerateParams::greedy(32), None)
            .unwrap()
            .filter_map(|e| match e.unwrap() {
                StreamEvent::Text { token, .. } => Some(token),
                StreamEvent::Done { stats: s, .. } => {
                    stats = Some(s);
                    None
                }
            })
            .filter(|&t| t != 1)
            .collect();
        // The host's wait on the device lies inside the decode time.
        let s = stats.expect("a Done event");
        let decode_ms = s.generated_tokens.saturating_sub(1) as f64 / s.decode_tok_per_s.max(1e-9) * 1e3;
        if s.generated_tokens > 1 && !(s.decode_wait_ms >= 0.0 && s.decode_wait_ms <= decode_ms) {
            failures.push(format!(
                "{name}: decode wait {} ms outside the decode's {decode_ms} ms",
                s.decode_wait_ms
            ));
        }
        if ours != oracle {
            failures.push(format!(
                "{name}: greedy tokens differ\n  ours   {ours:?}\n  oracle {oracle:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
