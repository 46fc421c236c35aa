//! Engine side of `cargo xtask bench vlm` (and of the GPU VLM bench): one
//! greedy answer about one image, timed. Prints {"ttft_ms", "e2e_ttft_ms",
//! "decode_tok_s", "prompt_tokens", "generated"}: `ttft_ms` is the engine's
//! own (text prefill, after the image was encoded), `e2e_ttft_ms` the wall
//! time from the `stream` call — image read, preprocessing, vision tower and
//! prefill — to the first token, as mlx-vlm's TTFT is measured.
//! Usage: bench_vlm MODEL_DIR IMAGE PROMPT N [--dtype auto|native|f32|bf16]

use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, StreamEvent, TextGenerator};
use engine_llm::{DtypePolicy, LoadOptions};
use engine_vlm::VlmModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, prompt, n, rest @ ..] = args.as_slice() else {
        return Err("usage: bench_vlm MODEL_DIR IMAGE PROMPT N [--dtype D]".into());
    };
    let dtype = match rest {
        [flag, d] if flag == "--dtype" => match d.as_str() {
            "auto" => DtypePolicy::Auto,
            "native" => DtypePolicy::Native,
            other => DtypePolicy::Dense(engine_mlx::Dtype::from_name(other).ok_or("unknown dtype")?),
        },
        _ => DtypePolicy::Auto,
    };
    let options = LoadOptions {
        dtype,
        ..Default::default()
    };
    let mut m = VlmModel::load(model.as_ref(), &options, &mut |_| {})?;
    let msg = ChatMessage::new("user", prompt.as_str()).with_image(ImageSource::Path(image.into()));
    let params = GenerateParams::greedy(n.parse()?);
    // A short warm-up (allocations, kernels), then forget its image features
    // so the timed run encodes the image again.
    for ev in m.stream(&Prompt::Chat(vec![msg.clone()]), &GenerateParams::greedy(2))? {
        ev?;
    }
    m.clear_image_cache();
    let start = std::time::Instant::now();
    let mut first = None;
    for ev in m.stream(&Prompt::Chat(vec![msg]), &params)? {
        match ev? {
            StreamEvent::Text { .. } if first.is_none() => first = Some(start.elapsed()),
            StreamEvent::Done { stats, .. } => println!(
                "{}",
                serde_json::json!({
                    "ttft_ms": stats.ttft_ms,
                    "e2e_ttft_ms": first.map(|d| d.as_secs_f64() * 1e3),
                    "decode_tok_s": stats.decode_tok_per_s,
                    "prompt_tokens": stats.prompt_tokens,
                    "generated": stats.generated_tokens,
                })
            ),
            _ => {}
        }
    }
    Ok(())
}
