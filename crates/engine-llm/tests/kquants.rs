//! SmolLM2-135M-Instruct requantized by llama.cpp's own quantizer to Q4_K_M,
//! Q5_K_M, Q6_K and Q8_0 (files that mix K-quants with Q5_0/Q5_1/Q8_0, since
//! its 576-wide rows are not multiples of 256), each beside the same file
//! dequantized to F32 by gguf-py. Made by xtask/parity/make_kquants.py
//! (scripts/setup.sh) into target/models.

use engine_core::{ChatMessage, GenerateParams, Prompt, TextGenerator};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use engine_mlx::Dtype;
use std::path::PathBuf;

const TYPES: [&str; 4] = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"];

fn path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../target/models/SmolLM2-135M-Instruct.{name}.gguf"));
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/setup.sh` (xtask/parity/make_kquants.py)",
        p.display()
    );
    p
}

fn load(name: &str, dtype: DtypePolicy) -> LlmModel {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    LlmModel::load(&path(name), &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn question() -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", "What is the capital of France?")])
}

/// With `--dtype f32` every file gives exactly what gguf-py's F32 copy of it
/// gives: the same logits and the same answer.
#[test]
fn every_k_quant_file_equals_its_gguf_py_f32_copy() {
    let f32 = DtypePolicy::Dense(Dtype::Float32);
    for name in TYPES {
        let mut q = load(name, f32);
        let mut reference = load(&format!("{name}.f32"), f32);
        let ids = q.encode_prompt(&question()).unwrap();
        assert_eq!(ids, reference.encode_prompt(&question()).unwrap(), "{name}: prompt ids");
        let a = q.logits(&ids).unwrap().to_f32_vec().unwrap();
        let b = reference.logits(&ids).unwrap().to_f32_vec().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{name}: logits differ from gguf-py's F32 copy by {worst}"
        );
        let params = GenerateParams::greedy(24);
        let g = q.generate(&question(), &params).unwrap();
        let r = reference.generate(&question(), &params).unwrap();
        assert_eq!(g.tokens, r.tokens, "{name}: {:?} vs {:?}", g.text, r.text);
        // 135M parameters quantized twice (Q4_1, then these types) answer
        // loosely: Q8_0 "The capital of France is Paris.", Q6_K a list of French
        // names (as llama.cpp itself answers, through cyllama's chat).
        assert!(
            g.text.contains("Paris") || g.text.contains("France"),
            "{name}: {:?}",
            g.text
        );
    }
}

/// Kept quantized where MLX's affine layout holds the blocks (Q4_K, Q5_K,
/// Q5_0, Q5_1, Q8_0), the files still answer.
#[test]
fn k_quant_files_answer_natively_quantized() {
    for name in ["Q4_K_M", "Q5_K_M"] {
        let mut m = load(name, DtypePolicy::Native);
        assert!(m.transformer().is_quantized(), "{name}");
        let g = m.generate(&question(), &GenerateParams::greedy(16)).unwrap();
        assert!(
            g.text.contains("Paris") || g.text.contains("France"),
            "{name}: {:?}",
            g.text
        );
    }
}

/// A copy of the tiny Phi-3 GGUF fixture with the type of its first tensor
/// of a multiple of 256 elements set to `ty`, patched in the header.
fn with_tensor_type(ty: u32) -> (tempfile::TempDir, PathBuf, String) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/parity/phi3-longrope-gguf/model.gguf");
    assert!(
        src.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        src.display()
    );
    let meta = engine_core::GgufMetadata::read(&src).unwrap();
    let t = meta
        .tensors()
        .iter()
        .find(|t| t.shape.len() == 2 && t.n_elements() % 256 == 0)
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&src).unwrap();
    // The tensor info: name, rank (u32), dims (u64 each), type (u32).
    let at = bytes
        .windows(t.name.len())
        .position(|w| w == t.name.as_bytes())
        .unwrap()
        + t.name.len();
    let ty_at = at + 4 + 8 * t.shape.len();
    bytes[ty_at..ty_at + 4].copy_from_slice(&ty.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path, t.name)
}

/// A type without a dequantizer (IQ2_XXS) or one no reader knows: the error
/// names the tensor and the type, before any weight is read.
#[test]
fn unsupported_tensor_types_are_named() {
    for (id, shown) in [(16, "IQ2_XXS"), (77, "ggml type 77")] {
        let (_dir, path, tensor) = with_tensor_type(id);
        let e = LlmModel::load(&path, &LoadOptions::default(), &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("{shown}: loaded"))
            .to_string();
        assert!(e.contains(&tensor) && e.contains(shown), "{shown}: {e}");
        assert!(!e.contains("truncated"), "{shown}: {e}");
    }
}
