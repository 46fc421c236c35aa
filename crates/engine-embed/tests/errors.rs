//! Bad models and bad folders give errors that name the problem and the fix.

use std::path::{Path, PathBuf};

use engine_embed::{EmbedError, Embedder};

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn load_err(dir: &Path) -> EmbedError {
    match Embedder::load(dir) {
        Ok(m) => panic!("{} loaded as {m:?}", dir.display()),
        Err(e) => e,
    }
}

fn minilm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/all-MiniLM-L6-v2")
}

#[test]
fn causal_lm_is_not_an_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "config.json",
        r#"{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64}"#,
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, EmbedError::NotAnEncoder { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("`llama`") && msg.contains("LlamaForCausalLM") && msg.contains("not a text encoder"),
        "{msg}"
    );
    assert!(msg.contains("supported: bert"), "{msg}");
}

#[test]
fn gguf_file_of_an_llm_is_refused() {
    // The real SmolLM2 GGUF that `cargo xtask fetch-models` also fetches.
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.is_file(),
        "run `cargo xtask fetch-models` to fetch {}",
        gguf.display()
    );
    let e = load_err(&gguf);
    assert!(matches!(e, EmbedError::NotAFolder { .. }), "{e:?}");
    assert!(e.to_string().contains("config.json, model.safetensors"), "{e}");
}

#[test]
fn other_encoder_families_say_not_yet() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "config.json",
        r#"{"model_type": "mpnet", "architectures": ["MPNetModel"]}"#,
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, EmbedError::UnsupportedEncoder { .. }), "{e:?}");
}

#[test]
fn missing_and_broken_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // No config.json at all.
    let e = load_err(tmp.path());
    assert!(
        matches!(&e, EmbedError::MissingFile { path } if path.ends_with("config.json")),
        "{e:?}"
    );
    // Broken JSON.
    write(tmp.path(), "config.json", "{ not json");
    assert!(matches!(load_err(tmp.path()), EmbedError::BadConfig { .. }));
    // A real MiniLM config without weights.
    let cfg = std::fs::read_to_string(minilm().join("config.json")).expect("run `cargo xtask fetch-models`");
    write(tmp.path(), "config.json", &cfg);
    std::fs::copy(minilm().join("tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.to_string().contains("no .safetensors files"), "{e}");
    // Weights whose shapes do not match the config.
    let mut small: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    small["hidden_size"] = 768.into();
    write(tmp.path(), "config.json", &small.to_string());
    std::fs::copy(minilm().join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let e = load_err(tmp.path());
    assert!(e.to_string().contains("config.json does not match the weights"), "{e}");
}

#[test]
fn unsupported_pipeline_modules_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(minilm().join(f), tmp.path().join(f)).expect("run `cargo xtask fetch-models`");
    }
    write(
        tmp.path(),
        "modules.json",
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
    );
    write(
        tmp.path(),
        "1_Pooling/config.json",
        r#"{"pooling_mode_mean_tokens": true}"#,
    );
    let e = load_err(tmp.path());
    assert!(matches!(e, EmbedError::UnsupportedPipeline { .. }), "{e:?}");
    assert!(e.to_string().contains("models.Dense"), "{e}");
}
