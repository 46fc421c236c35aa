//! engine-device's memory estimate against the peak MLX measures while loading the real
//! SmolLM2-135M Q4_1 GGUF (`cargo xtask fetch-models`) and generating 256 tokens, under the
//! CPU's default f32 policy and natively quantized.

use engine_core::{GenerateParams, Prompt, StreamEvent};
use engine_device::{estimate_with, EstimateOptions, Registry};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use engine_mlx::memory;
use std::path::PathBuf;

const GENERATE: usize = 256;

fn gguf_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
    p
}

/// Peak bytes MLX reports over load + generation, with the prompt length and tokens generated.
fn measure(policy: DtypePolicy) -> (u64, u64, usize) {
    memory::clear_cache();
    memory::reset_peak();
    let base = memory::active();
    let options = LoadOptions {
        dtype: policy,
        ..Default::default()
    };
    let m = LlmModel::load(&gguf_path(), &options, &mut |_| {}).expect("SmolLM2 loads");
    // Generation resets the peak counter itself: take the load's peak first.
    let load_peak = memory::peak() - base;
    let prompt = m
        .encode_prompt(&Prompt::Text(
            "Once upon a time, in a land far away, there lived".into(),
        ))
        .expect("prompt encodes");
    let mut generated = 0;
    for ev in m
        .generate_from_tokens(&prompt, &GenerateParams::greedy(GENERATE), None)
        .expect("generation starts")
    {
        if let StreamEvent::Text { .. } = ev.expect("a token") {
            generated += 1;
        }
    }
    let run_peak = memory::peak() - base;
    (load_peak.max(run_peak) as u64, prompt.len() as u64, generated)
}

// One test: MLX's peak counter is global to the process.
#[test]
fn estimate_is_within_15_percent_of_the_measured_peak() {
    let entry = Registry::builtin()
        .get("smollm2-135m-instruct")
        .expect("SmolLM2 is in the registry");
    let variant = entry.variant("q4_1-gguf").expect("the Q4_1 GGUF variant");
    let cpu = engine_mlx::default_device() == engine_mlx::Device::Cpu;
    // Auto converts to f32 on the CPU and keeps the file's weights on a GPU.
    for (policy, f32_path) in [(DtypePolicy::Auto, cpu), (DtypePolicy::Native, false)] {
        let (peak, prompt, generated) = measure(policy);
        assert!(generated >= GENERATE / 2, "{policy:?}: only {generated} tokens");
        let ctx = prompt + generated as u64;
        let base = if f32_path {
            EstimateOptions::f32(ctx)
        } else {
            EstimateOptions::new(ctx)
        };
        let opts = EstimateOptions {
            prompt_len: Some(prompt),
            ..base
        };
        let e = estimate_with(entry, variant, &opts);
        let ratio = e.total_bytes as f64 / peak as f64;
        eprintln!(
            "{policy:?}: measured peak {peak} B, estimate {} B ({}), ratio {ratio:.3}",
            e.total_bytes,
            e.breakdown()
        );
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{policy:?}: estimate {} vs measured peak {peak} ({ratio:.3})",
            e.total_bytes
        );
    }
}
