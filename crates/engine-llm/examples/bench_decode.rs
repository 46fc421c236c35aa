//! Decode benchmark used by `cargo xtask bench llm`.
//!
//! `bench_decode MODEL --dtype native|auto --tokens N --prompt-ids FILE` prints
//! `{"tok_s":…,"ttft_ms":…,"generated":…,"first_tokens":[…16 ids],"peak_memory_bytes":…,"estimate_bytes":…,
//! "estimate_ratio":…,"wait_ms_per_token":…}` (the ratio: engine-device's estimate for this model, prompt and
//! length ÷ MLX's peak since the process began, load included; the wait: the host's on the device per decode
//! step, near zero when the host bounds decode); `--write-prompt-ids FILE TEXT`
//! writes the chat-templated prompt's ids, `--write-eos-ids FILE` the stop
//! ids; `--export-mlx OUT` converts a GGUF.
use engine_core::{ChatMessage, GenerateParams, Prompt, StreamEvent};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use std::path::Path;

// `arch_of`, shared with the memory-estimate tests.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = Path::new(args.get(1).ok_or("usage: bench_decode MODEL ...")?);
    if let Some(out) = arg(&args, "--export-mlx") {
        engine_llm::export::gguf_to_mlx(model_path, Path::new(&out))?;
        return Ok(());
    }
    let dtype = match arg(&args, "--dtype").as_deref() {
        Some("native") => DtypePolicy::Native,
        Some("cpu-kernels") => DtypePolicy::CpuKernels,
        Some("f32") => DtypePolicy::Dense(engine_mlx::Dtype::Float32),
        _ => DtypePolicy::Auto,
    };
    let model = LlmModel::load(
        model_path,
        &LoadOptions {
            dtype,
            ..Default::default()
        },
        &mut |_| {},
    )?;
    if let Some(file) = arg(&args, "--write-eos-ids") {
        std::fs::write(file, serde_json::to_string(model.tokenizer().eos_token_ids())?)?;
        return Ok(());
    }
    if let Some(file) = arg(&args, "--write-prompt-ids") {
        let text = args.last().ok_or("prompt text")?;
        let ids = model.encode_prompt(&Prompt::Chat(vec![ChatMessage::new("user", text.as_str())]))?;
        std::fs::write(file, serde_json::to_string(&ids)?)?;
        return Ok(());
    }
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(
        arg(&args, "--prompt-ids").ok_or("--prompt-ids")?,
    )?)?;
    let n: usize = arg(&args, "--tokens").map(|s| s.parse()).transpose()?.unwrap_or(128);
    // Warm-up: first-call costs (allocations, kernel set-up) are not decode speed.
    for _ in model.generate_from_tokens(&ids, &GenerateParams::greedy(8), None)? {}
    let (mut result, mut tokens) = (None, Vec::new());
    for ev in model.generate_from_tokens(&ids, &GenerateParams::greedy(n), None)? {
        match ev? {
            StreamEvent::Done { stats, .. } => result = Some(stats),
            StreamEvent::Text { token, .. } if tokens.len() < 16 => tokens.push(token),
            _ => {}
        }
    }
    let s = result.ok_or("no stats")?;
    // The estimate a user's `recommend` would give for this run: activations and cache at
    // the embedding's width (bfloat16/float16 weights run in 16 bits, float32 in 32).
    let t = model.transformer();
    let width = t.embed_dtype().size() as u64;
    let ctx = (ids.len() + s.generated_tokens) as u64;
    let opts = engine_device::EstimateOptions {
        prompt_len: Some(ids.len() as u64),
        kv_dtype_bytes: width,
        activation_dtype_bytes: width,
        ..engine_device::EstimateOptions::new(ctx)
    };
    let estimate = engine_device::estimate_for_arch(&common::arch_of(t), t.weight_bytes() as u64, &opts).total_bytes;
    println!(
        "{}",
        serde_json::json!({"tok_s": s.decode_tok_per_s, "ttft_ms": s.ttft_ms, "generated": s.generated_tokens,
            "first_tokens": tokens, "peak_memory_bytes": s.peak_memory_bytes, "estimate_bytes": estimate,
            "estimate_ratio": estimate as f64 / s.peak_memory_bytes.max(1) as f64,
            "wait_ms_per_token": s.decode_wait_ms / s.generated_tokens.saturating_sub(1).max(1) as f64})
    );
    Ok(())
}
