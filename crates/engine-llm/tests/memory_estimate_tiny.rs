//! engine-device's estimate for a model known by its config (`estimate_for_arch`)
//! against MLX's measured peak over load + 256 generated tokens, for every tiny
//! parity checkpoint (`cargo xtask parity-fixtures`), dense and 4-bit, with
//! sliding windows where the architecture has them. Its own test binary: MLX's
//! peak counter is global to the process.

mod common;

use engine_core::{GenerateParams, StreamEvent};
use engine_device::{estimate_for_arch, EstimateOptions};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use engine_mlx::memory;
use std::path::PathBuf;

#[test]
fn estimate_is_within_15_percent_for_tiny_checkpoints() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/parity");
    assert!(
        dir.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        dir.display()
    );
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    assert!(dirs.len() >= 14, "expected the parity fixtures of every architecture");
    let prompt = [5u32, 17, 42, 99, 3, 250, 7, 7, 128, 64, 31, 200];
    let mut failures = Vec::new();
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        memory::clear_cache();
        memory::reset_peak();
        let base = memory::active();
        let opts = LoadOptions {
            dtype: DtypePolicy::Native,
            ..Default::default()
        };
        let m = LlmModel::load(&common::checkpoint(&d), &opts, &mut |_| {}).unwrap();
        let load_peak = memory::peak() - base;
        let mut generated = 0u64;
        for ev in m
            .generate_from_tokens(&prompt, &GenerateParams::greedy(256), None)
            .unwrap()
        {
            if let StreamEvent::Text { .. } = ev.unwrap() {
                generated += 1;
            }
        }
        let peak = (memory::peak() - base).max(load_peak) as f64;
        let t = m.transformer();
        let arch = common::arch_of(t);
        // Tiny checkpoints are f32 (dense) or carry f32 scales (4-bit): f32 activations and cache.
        let ctx = prompt.len() as u64 + generated;
        let o = EstimateOptions {
            prompt_len: Some(prompt.len() as u64),
            ..EstimateOptions::f32(ctx)
        };
        let e = estimate_for_arch(&arch, t.weight_bytes() as u64, &o);
        let ratio = e.total_bytes as f64 / peak;
        eprintln!(
            "{name}: context {ctx}, peak {peak} B, estimate {} B ({}), ratio {ratio:.3}",
            e.total_bytes,
            e.breakdown()
        );
        if !(0.85..=1.15).contains(&ratio) {
            failures.push(format!(
                "{name}: estimate {} vs peak {peak} ({ratio:.3})",
                e.total_bytes
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
