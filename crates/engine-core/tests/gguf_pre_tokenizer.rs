//! A GGUF whose `tokenizer.ggml.pre` this crate does not know is refused (a
//! guess would give token ids that differ from llama.cpp's), unless
//! `MLXENGINE_GGUF_PRE` names a known one. The files are written here.
//!
//! One test in its own binary: it sets an environment variable, which no
//! other test may read at the same time.

use engine_core::gguf::GgufMetadata;
use engine_core::{Tokenizer, TokenizerError};
use std::path::{Path, PathBuf};

const STRING: u32 = 8;
const ARRAY: u32 = 9;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF v3 file with no tensors and a byte-level BPE (`gpt2`) tokenizer:
/// printable ASCII plus `Ġ` (a space in GPT-2's byte alphabet), one merge.
fn write_gguf(dir: &Path, name: &str, pre: &str) -> PathBuf {
    let mut tokens: Vec<String> = (b'!'..=b'~').map(|c| (c as char).to_string()).collect();
    tokens.push("Ġ".into());
    tokens.push("he".into());
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(4u64.to_le_bytes()); // key-value pairs
    put_str(&mut b, "tokenizer.ggml.model");
    b.extend(STRING.to_le_bytes());
    put_str(&mut b, "gpt2");
    put_str(&mut b, "tokenizer.ggml.pre");
    b.extend(STRING.to_le_bytes());
    put_str(&mut b, pre);
    for (key, items) in [
        ("tokenizer.ggml.tokens", tokens.clone()),
        ("tokenizer.ggml.merges", vec!["h e".to_string()]),
    ] {
        put_str(&mut b, key);
        b.extend(ARRAY.to_le_bytes());
        b.extend(STRING.to_le_bytes());
        b.extend((items.len() as u64).to_le_bytes());
        for t in &items {
            put_str(&mut b, t);
        }
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let path = dir.join(name);
    std::fs::write(&path, b).expect("write the GGUF");
    path
}

fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    Tokenizer::from_gguf(&GgufMetadata::read(path).expect("the GGUF reads"))
}

#[test]
fn unknown_pre_tokenizer_is_an_error_unless_overridden() {
    std::env::remove_var("MLXENGINE_GGUF_PRE");
    let dir = std::env::temp_dir().join(format!("engine-core-pre-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unknown = write_gguf(&dir, "unknown.gguf", "brand-new-pre");
    let gpt2 = write_gguf(&dir, "gpt2.gguf", "gpt2");

    let err = load(&unknown).expect_err("an unknown pre-tokenizer must not load");
    let msg = err.to_string();
    assert!(matches!(err, TokenizerError::UnknownGgufPreTokenizer { .. }), "{msg}");
    for needle in [
        "unknown.gguf",
        "`brand-new-pre`",
        "tokenizer.ggml.pre",
        "MLXENGINE_GGUF_PRE=gpt2",
        "tokenizer.json",
        "smollm",
    ] {
        assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    }

    // The reference: the same vocabulary declared as GPT-2 splitting.
    let text = "hello world, he said 123";
    let want = load(&gpt2).expect("gpt2 loads").encode(text, false).unwrap();
    assert!(want.contains(&95), "the `he` merge applies: {want:?}");

    std::env::set_var("MLXENGINE_GGUF_PRE", "gpt2");
    let got = load(&unknown).expect("the override loads it");
    assert_eq!(got.encode(text, false).unwrap(), want);
    assert_eq!(got.decode(&want, false).unwrap(), text);

    // An override that is itself unknown is refused and named.
    std::env::set_var("MLXENGINE_GGUF_PRE", "nope");
    let msg = load(&gpt2).expect_err("an unknown override must not load").to_string();
    assert!(
        msg.contains("`nope`") && msg.contains("from MLXENGINE_GGUF_PRE"),
        "{msg}"
    );
    std::env::remove_var("MLXENGINE_GGUF_PRE");
    std::fs::remove_dir_all(&dir).ok();
}
