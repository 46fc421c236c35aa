//! The GGUF reader against gguf-py's view of the real SmolLM2 file, and its
//! errors on real truncated copies.

mod common;

use engine_core::gguf::{GgufError, GgufMetadata};

#[test]
fn smollm2_header_matches_gguf_py() {
    let fx = common::fixtures();
    let want = &fx["smollm2"]["gguf"];
    let m = GgufMetadata::read(common::smollm2_gguf()).expect("real file reads");
    assert_eq!(m.version() as u64, want["version"].as_u64().unwrap());
    assert_eq!(m.tensors().len() as u64, want["tensor_count"].as_u64().unwrap());
    assert_eq!(m.metadata().len() as u64, want["kv_count"].as_u64().unwrap());
    assert_eq!(m.architecture().unwrap(), want["architecture"].as_str().unwrap());
    assert_eq!(m.context_length().unwrap(), want["context_length"].as_u64());
    assert_eq!(m.file_len(), want["file_len"].as_u64().unwrap());
    let tokens = m.get_str_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(tokens.len() as u64, want["n_tokens"].as_u64().unwrap());
    let t0 = &m.tensors()[0];
    let w0 = &want["first_tensor"];
    assert_eq!(t0.name, w0["name"].as_str().unwrap());
    // gguf-py lists shapes in GGUF order too.
    assert_eq!(
        t0.shape,
        common::ids(&w0["shape"]).into_iter().map(u64::from).collect::<Vec<_>>()
    );
    assert_eq!(t0.ggml_type.0 as u64, w0["ggml_type"].as_u64().unwrap());
    assert_eq!(t0.file_offset, w0["file_offset"].as_u64().unwrap());
    assert_eq!(t0.n_bytes, w0["n_bytes"].as_u64());
    assert_eq!(
        m.tensors().last().unwrap().name,
        want["last_tensor_name"].as_str().unwrap()
    );
    // Every tensor lies inside the file and tensors do not overlap.
    let mut spans: Vec<(u64, u64)> = m
        .tensors()
        .iter()
        .map(|t| (t.file_offset, t.file_offset + t.n_bytes.expect("known type")))
        .collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    assert!(spans.last().unwrap().1 <= m.file_len());
    assert!(m.chat_template().unwrap().unwrap().contains("<|im_start|>"));
}

#[test]
fn truncated_real_file_names_the_file_and_the_fix() {
    let path = common::smollm2_gguf();
    let bytes = std::fs::read(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("engine-core-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Cut inside the metadata, inside the tensor infos and inside the data.
    for cut in [100usize, 1_000_000, 1_785_000, bytes.len() - 1] {
        let p = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = GgufMetadata::read(&p).expect_err("truncated file must not parse");
        let msg = err.to_string();
        assert!(matches!(err, GgufError::Truncated { .. }), "cut {cut}: {msg}");
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("pull again"), "{msg}");
    }
    let missing = GgufMetadata::read(dir.join("nope.gguf")).unwrap_err();
    assert!(matches!(missing, GgufError::Io { .. }));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tiny_spm_fixture_reads() {
    let m = GgufMetadata::read(common::fixture_path("tiny_spm.gguf")).unwrap();
    assert_eq!(m.architecture().unwrap(), "llama");
    assert_eq!(m.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    assert_eq!(m.tensors().len(), 1);
    assert_eq!(m.tensors()[0].shape, vec![8]);
}
