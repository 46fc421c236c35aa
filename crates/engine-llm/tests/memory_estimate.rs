//! engine-device's memory estimate against the peak MLX measures while loading the real
//! SmolLM2-135M Q4_1 GGUF (`cargo xtask fetch-models`) and generating 256 tokens, under the
//! CPU's default f32 policy and natively quantized; the same for its Q4_K_M requantization
//! (xtask/parity/make_kquants.py), whose native layout is larger than the file.

use engine_core::{GenerateParams, Prompt, StreamEvent};
use engine_device::{estimate_with, EstimateOptions, Registry};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use engine_mlx::memory;
use std::path::PathBuf;

const GENERATE: usize = 256;

fn gguf_path(ty: &str) -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../target/models/SmolLM2-135M-Instruct.{ty}.gguf"));
    assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
    p
}

/// Peak bytes MLX reports over load + generation, with the prompt length and tokens generated.
fn measure(ty: &str, policy: DtypePolicy, tokens: usize) -> (u64, u64, usize) {
    memory::clear_cache();
    memory::reset_peak();
    let base = memory::active();
    let options = LoadOptions {
        dtype: policy,
        ..Default::default()
    };
    let m = LlmModel::load(&gguf_path(ty), &options, &mut |_| {}).expect("SmolLM2 loads");
    // Generation resets the peak counter itself: take the load's peak first.
    let load_peak = memory::peak() - base;
    let prompt = m
        .encode_prompt(&Prompt::Text(
            "Once upon a time, in a land far away, there lived".into(),
        ))
        .expect("prompt encodes");
    let mut generated = 0;
    for ev in m
        .generate_from_tokens(&prompt, &GenerateParams::greedy(tokens), None)
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
    let q4_1 = entry.variant("q4_1-gguf").expect("the Q4_1 GGUF variant");
    // The same model requantized to Q4_K_M by llama.cpp (xtask/parity/make_kquants.py).
    let q4_k_m = engine_device::Variant {
        name: "q4_k_m-gguf".into(),
        quantization: "q4_k_m".into(),
        file_size_bytes: std::fs::metadata(gguf_path("Q4_K_M")).expect("the Q4_K_M file").len(),
        ..q4_1.clone()
    };
    let cpu = engine_mlx::default_device() == engine_mlx::Device::Cpu;
    // Auto keeps 4/8-bit weights for the int8 kernels on the CPU (the rest f32) and
    // the file's weights on a GPU; Dense(F32) is the f32 + OpenBLAS path.
    // The K-quant file generates less: its peak is the load's (MLX's CPU quantized
    // kernels make the native run slow).
    for (ty, variant, policy, tokens) in [
        ("Q4_1", q4_1, DtypePolicy::Auto, GENERATE),
        ("Q4_1", q4_1, DtypePolicy::Dense(engine_mlx::Dtype::Float32), GENERATE),
        ("Q4_1", q4_1, DtypePolicy::Native, GENERATE),
        ("Q4_K_M", &q4_k_m, DtypePolicy::Auto, GENERATE / 4),
        ("Q4_K_M", &q4_k_m, DtypePolicy::Native, GENERATE / 4),
    ] {
        let (peak, prompt, generated) = measure(ty, policy, tokens);
        assert!(generated >= tokens / 2, "{ty} {policy:?}: only {generated} tokens");
        let ctx = prompt + generated as u64;
        let base = match policy {
            DtypePolicy::Auto if cpu => EstimateOptions::cpu(ctx),
            DtypePolicy::Dense(_) => EstimateOptions::f32(ctx),
            _ => EstimateOptions::new(ctx),
        };
        let opts = EstimateOptions {
            prompt_len: Some(prompt),
            ..base
        };
        let e = estimate_with(entry, variant, &opts);
        let ratio = e.total_bytes as f64 / peak as f64;
        eprintln!(
            "{ty} {policy:?}: measured peak {peak} B, estimate {} B ({}), ratio {ratio:.3}",
            e.total_bytes,
            e.breakdown()
        );
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{ty} {policy:?}: estimate {} vs measured peak {peak} ({ratio:.3})",
            e.total_bytes
        );
    }
}
