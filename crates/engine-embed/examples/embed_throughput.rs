//! Sentences per second of an embedding model: `embed_throughput MODEL_DIR INPUTS.txt [REPEATS] [BATCH]`
//! (one sentence per line). Prints one JSON line; used by `cargo xtask bench embed`.

use std::time::Instant;

use engine_embed::{EmbedOptions, Embedder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(model), Some(inputs)) = (args.first(), args.get(1)) else {
        return Err("usage: embed_throughput MODEL_DIR INPUTS.txt [REPEATS] [BATCH]".into());
    };
    let repeats: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let text = std::fs::read_to_string(inputs)?;
    let lines: Vec<&str> = text.lines().collect();
    let m = Embedder::load(std::path::Path::new(model))?;
    let mut opts = EmbedOptions::default();
    if let Some(b) = args.get(3) {
        opts.batch_size = b.parse()?;
    }
    m.embed_with(&lines[..lines.len().min(32)], &opts)?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let out = m.embed_with(&lines, &opts)?;
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(out.vectors.len(), lines.len());
    }
    println!(
        "{}",
        serde_json::json!({"sentences": lines.len(), "seconds": best, "per_s": lines.len() as f64 / best, "blas": engine_mlx::blas()})
    );
    Ok(())
}
