//! `cargo xtask bench embed`: sentences per second of all-MiniLM-L6-v2 on this
//! CPU through engine-embed and through sentence-transformers (PyTorch, CPU,
//! f32: the model's reference implementation) on the same 256 inputs, in the
//! same run. Prints one JSON line; `ratio` = engine / oracle.
//!
//! The oracle Python is `MLXENGINE_EMBED_ORACLE_PYTHON`, else the first of
//! `target/oracle/bin/python` and `/opt/st/bin/python` that imports
//! sentence_transformers. Both sides warm up, then report their best of 3 passes
//! at batch size 32 (sentence-transformers' default); the two run alternately,
//! twice each, and the best run of each counts, so a burst of load elsewhere
//! on the machine hurts neither side alone.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const ORACLE: &str = r#"
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
lines = open(sys.argv[2], encoding="utf-8").read().splitlines()
model.encode(lines[:32], batch_size=32)
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    out = model.encode(lines, batch_size=32)
    best = min(best, time.perf_counter() - t)
assert len(out) == len(lines)
print(json.dumps({"per_s": len(lines) / best, "torch": torch.__version__, "threads": torch.get_num_threads()}))
"#;

/// 256 sentences of 3 to ~60 words from a fixed vocabulary, deterministic.
fn inputs() -> Vec<String> {
    let words: Vec<&str> = "the a an of to in on for with by from at as is was are were be been has have had \
        model models text vector vectors search query document sentence sentences embedding embeddings fast \
        slow small large cat kitten dog mat rug market markets stock stocks fell rose sharply today yesterday \
        people city river mountain computer language learning machine network data science research paper \
        result results method methods show shows using used new first two three many most more some other \
        time year years day days world system systems based between during after before under over into"
        .split_whitespace()
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..256)
        .map(|_| {
            let n = 3 + (next() % 58) as usize;
            let mut s = (0..n)
                .map(|_| words[(next() % words.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            s.push('.');
            s
        })
        .collect()
}

fn oracle_python(root: &Path) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("MLXENGINE_EMBED_ORACLE_PYTHON") {
        Some(p) => vec![p.into()],
        None => vec![root.join("target/oracle/bin/python"), "/opt/st/bin/python".into()],
    };
    for c in &candidates {
        let ok = Command::new(c)
            .args(["-c", "import sentence_transformers"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(c.clone());
        }
    }
    bail!(
        "no Python with sentence-transformers found (tried {candidates:?}); create one with \
         `python3 -m venv target/oracle && target/oracle/bin/pip install sentence-transformers`, \
         or point MLXENGINE_EMBED_ORACLE_PYTHON at one"
    )
}

fn per_s(out: std::process::Output, what: &str) -> Result<f64> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().context("no output")?;
    let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{what} printed {line:?}"))?;
    v["per_s"].as_f64().context("no per_s")
}

pub fn run() -> Result<()> {
    let root = crate::root();
    let model = crate::models_dir().join("all-MiniLM-L6-v2");
    if !model.join("model.safetensors").is_file() {
        bail!("{} is missing; run `cargo xtask fetch-models` first", model.display());
    }
    let exe = crate::build_example("engine-embed", "embed_throughput")?;
    let target = exe.ancestors().nth(3).context("target folder")?.to_path_buf();
    let python = oracle_python(&root)?;

    let file = target.join("bench_embed_inputs.txt");
    std::fs::write(&file, inputs().join("\n") + "\n")?;
    let (mut engine, mut oracle) = (0f64, 0f64);
    for _ in 0..2 {
        engine = engine.max(per_s(Command::new(&exe).arg(&model).arg(&file).output()?, "engine")?);
        oracle = oracle.max(per_s(
            Command::new(&python)
                .arg("-c")
                .arg(ORACLE)
                .arg(&model)
                .arg(&file)
                .output()?,
            "sentence-transformers",
        )?);
    }
    println!(
        "{}",
        serde_json::json!({"bench": "embed", "engine_per_s": engine, "oracle_per_s": oracle, "ratio": engine / oracle})
    );
    Ok(())
}
