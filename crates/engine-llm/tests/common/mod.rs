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
