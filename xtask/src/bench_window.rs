//! `cargo xtask bench window`: decode speed of sliding-window layers with the
//! ring cache the models use versus the concatenating cache it replaced, on a
//! Gemma-2-shaped model with random weights (4 layers, all sliding, window
//! 4096; see `crates/engine-llm/examples/bench_window.rs`) after a 4500-token
//! prompt that fills the window, both in the same process. `ratio` = ring ÷
//! concat. Extra arguments go to the example (`--real-prefill` runs the
//! prompt through the model instead of writing random keys; minutes here).

use anyhow::{bail, Context, Result};
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    let exe = crate::build_example("engine-llm", "bench_window")?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("bench_window failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let v: serde_json::Value = serde_json::from_str(text.lines().last().context("no output")?)?;
    let (ring, concat) = (
        v["ring_tok_s"].as_f64().context("no ring_tok_s")?,
        v["concat_tok_s"].as_f64().context("no concat_tok_s")?,
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "window",
            "ring_tok_s": ring,
            "concat_tok_s": concat,
            "ratio": ring / concat,
            "ring_update_us": v["ring_update_us"],
            "concat_update_us": v["concat_update_us"],
            "ring_kv_bytes": v["ring_kv_bytes"],
            "concat_kv_bytes": v["concat_kv_bytes"],
            "window": v["window"],
            "prompt_tokens": v["prompt_tokens"],
            "decode_tokens": v["decode_tokens"],
        })
    );
    Ok(())
}
