//! Shared helpers for the tokenizer/template/GGUF tests: where the real model
//! files and the oracle fixtures live.
#![allow(dead_code)] // each test binary uses a subset

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model_path(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/models").join(default));
    assert!(
        path.exists(),
        "test model {} is missing: run `cargo xtask fetch-models` to fetch it (or set {env} to its path)",
        path.display()
    );
    path
}

/// SmolLM2-135M-Instruct Q4_1 GGUF (`MLXENGINE_SMOLLM2_GGUF` overrides).
pub fn smollm2_gguf() -> PathBuf {
    model_path("MLXENGINE_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// all-MiniLM-L6-v2 model directory (`MLXENGINE_MINILM_DIR` overrides).
pub fn minilm_dir() -> PathBuf {
    model_path("MLXENGINE_MINILM_DIR", "all-MiniLM-L6-v2")
}

/// A file under tests/fixtures.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The oracle outputs made by tests/fixtures/make_tokenizer_fixtures.py.
pub fn fixtures() -> serde_json::Value {
    let path = fixture_path("tokenizer_fixtures.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("tokenizer_fixtures.json is valid JSON")
}

/// A fixture's list of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}
