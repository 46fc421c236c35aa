//! Shared by the tests over the parity fixtures (`cargo xtask parity-fixtures`).

use std::path::{Path, PathBuf};

/// What to load for a parity fixture folder: its `model.gguf` when it holds a
/// llama.cpp-style file (phi3-longrope-gguf), else the folder itself.
pub fn checkpoint(dir: &Path) -> PathBuf {
    let gguf = dir.join("model.gguf");
    if gguf.is_file() {
        gguf
    } else {
        dir.to_path_buf()
    }
}

/// engine-device's view of a loaded transformer (its sizes and sliding
/// windows), for the memory-estimate checks.
#[allow(dead_code)] // not every test binary that shares this module checks memory
pub fn arch_of(t: &engine_llm::transformer::Transformer) -> engine_device::ArchConfig {
    let c = t.config();
    let windows: Vec<u64> = t.features().layer_windows.iter().flatten().map(|&w| w as u64).collect();
    let global = (c.num_layers - windows.len()) as u64;
    engine_device::ArchConfig {
        layers: c.num_layers as u64,
        hidden_size: c.hidden_size as u64,
        attention_heads: c.num_heads as u64,
        kv_heads: c.num_kv_heads as u64,
        head_dim: c.head_dim as u64,
        intermediate_size: c.intermediate_size as u64,
        vocab_size: c.vocab_size as u64,
        sliding_window: windows.first().copied(),
        sliding_window_pattern: (!windows.is_empty() && global > 0).then(|| c.num_layers as u64 / global),
    }
}
