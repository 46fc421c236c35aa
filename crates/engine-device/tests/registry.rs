//! The embedded catalogue: complete, well-formed, and consistent with the real files we have.

use engine_core::{FeatureFlag, GgufMetadata, ModelType};
use engine_device::{Query, Registry, WeightFormat};
use std::path::PathBuf;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models")
}

#[test]
fn builtin_registry_parses_and_validates() {
    let reg = Registry::from_toml(engine_device::BUILTIN_REGISTRY_TOML).expect("registry.toml is valid");
    assert_eq!(reg.validate(), Vec::<String>::new());
    assert_eq!(Registry::builtin(), &reg);
}

#[test]
fn every_required_model_is_present() {
    let reg = Registry::builtin();
    let required: &[(ModelType, &[&str])] = &[
        (
            ModelType::Llm,
            &[
                "smollm2-135m-instruct",
                "smollm2-360m-instruct",
                "smollm2-1.7b-instruct",
                "qwen2.5-0.5b-instruct",
                "qwen2.5-1.5b-instruct",
                "qwen2.5-3b-instruct",
                "qwen2.5-7b-instruct",
                "qwen3-0.6b",
                "qwen3-4b",
                "qwen3-8b",
                "llama-3.2-1b-instruct",
                "llama-3.2-3b-instruct",
                "llama-3.1-8b-instruct",
                "phi-3.5-mini-instruct",
                "phi-4-mini-instruct",
                "mistral-7b-instruct-v0.3",
                "gemma-2-2b-it",
                "gemma-3-1b-it",
                "gemma-3-4b-it",
            ],
        ),
        (
            ModelType::Vlm,
            &[
                "qwen2-vl-2b-instruct",
                "qwen2.5-vl-3b-instruct",
                "qwen2.5-vl-7b-instruct",
                "smolvlm-instruct",
                "llava-1.5-7b",
            ],
        ),
        (
            ModelType::Embedding,
            &[
                "all-minilm-l6-v2",
                "bge-small-en-v1.5",
                "bge-base-en-v1.5",
                "bge-large-en-v1.5",
                "nomic-embed-text-v1.5",
                "e5-small-v2",
                "e5-base-v2",
                "e5-large-v2",
            ],
        ),
        (
            ModelType::Diffusion,
            &["stable-diffusion-2.1-base", "sdxl-turbo", "stable-diffusion-1.5"],
        ),
    ];
    for (t, ids) in required {
        for id in *ids {
            let e = reg.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(e.model_type, *t, "{id}");
        }
    }
}

#[test]
fn llms_come_in_bf16_8bit_4bit_and_gguf() {
    for e in Registry::builtin().of_type(ModelType::Llm) {
        for v in ["bf16", "8bit", "4bit"] {
            assert!(e.variant(v).is_ok(), "{} lacks {v}", e.id);
        }
        assert!(
            e.variants.iter().any(|v| v.format == WeightFormat::Gguf),
            "{} lacks a GGUF variant",
            e.id
        );
        assert!(e.capabilities.contains(&FeatureFlag::Chat), "{}", e.id);
    }
    for e in Registry::builtin().of_type(ModelType::Vlm) {
        assert!(e.capabilities.contains(&FeatureFlag::Vision), "{}", e.id);
        assert!(e.variant("4bit").is_ok(), "{}", e.id);
    }
}

/// Parameters implied by the architecture numbers (tied or untied embeddings), so a mistyped
/// layer count, width or vocabulary shows up as a mismatch with the published parameter count.
fn params_from_config(e: &engine_device::ModelEntry) -> Option<(f64, f64)> {
    let c = e.config?;
    let (h, l) = (c.hidden_size as f64, c.layers as f64);
    let embed = c.vocab_size as f64 * h;
    let (attn, mlp, extra) = if c.kv_heads == 0 {
        // BERT: Q, K, V, O of h×h, two MLP matrices, learned positions.
        (4.0 * h * h, 2.0 * h * c.intermediate_size as f64, 512.0 * h)
    } else {
        let q = (c.attention_heads * c.head_dim) as f64;
        let kv = (c.kv_heads * c.head_dim) as f64;
        (h * (q + 2.0 * kv) + q * h, 3.0 * h * c.intermediate_size as f64, 0.0)
    };
    let body = l * (attn + mlp) + extra;
    let vision = e.vision.map_or(0.0, |v| v.params as f64);
    Some((body + embed + vision, body + 2.0 * embed + vision))
}

#[test]
fn parameter_counts_agree_with_the_architecture() {
    for e in &Registry::builtin().models {
        let Some((tied, untied)) = params_from_config(e) else {
            continue;
        };
        let p = e.params as f64;
        let off = ((p - tied) / p).abs().min(((p - untied) / p).abs());
        // nomic-bert's SwiGLU MLP has three matrices where BERT has two.
        let tol = if e.architecture == "nomic_bert" { 0.2 } else { 0.08 };
        assert!(
            off < tol,
            "{}: {} params listed, config implies {:.0} (tied) / {:.0} (untied)",
            e.id,
            e.params,
            tied,
            untied
        );
    }
}

#[test]
fn search_filters_by_text_type_size_quantization_and_capability() {
    let reg = Registry::builtin();
    let hits = reg.search(&Query {
        text: Some("qwen".into()),
        model_type: Some(ModelType::Llm),
        ..Query::default()
    });
    assert_eq!(hits.len(), 7, "{:?}", hits.iter().map(|h| h.id).collect::<Vec<_>>());
    assert!(hits
        .iter()
        .all(|h| h.model_type == ModelType::Llm && h.id.contains("qwen")));

    let all_qwen = reg.search(&Query {
        text: Some("QWEN".into()),
        ..Query::default()
    });
    assert!(all_qwen.iter().any(|h| h.model_type == ModelType::Vlm));

    let small = reg.search(&Query {
        max_size_bytes: Some(500_000_000),
        ..Query::default()
    });
    assert!(!small.is_empty());
    for h in &small {
        assert!(h.variants.iter().all(|v| v.file_size_bytes <= 500_000_000), "{}", h.id);
    }
    assert!(small.iter().all(|h| h.id != "qwen3-8b"));

    let gguf = reg.search(&Query {
        quantization: Some("gguf".into()),
        ..Query::default()
    });
    assert!(gguf
        .iter()
        .all(|h| h.variants.iter().all(|v| v.format == WeightFormat::Gguf)));
    assert!(gguf.iter().all(|h| h.model_type == ModelType::Llm));

    let tools = reg.search(&Query {
        capabilities: vec![FeatureFlag::ToolUse],
        ..Query::default()
    });
    assert!(tools.iter().any(|h| h.id == "qwen3-8b"));
    assert!(tools.iter().all(|h| h.id != "smollm2-135m-instruct"));

    let two_words = reg.search(&Query {
        text: Some("llama 8b".into()),
        ..Query::default()
    });
    assert_eq!(
        two_words.iter().map(|h| h.id).collect::<Vec<_>>(),
        ["llama-3.1-8b-instruct"]
    );

    assert!(reg
        .search(&Query {
            text: Some("no-such-model".into()),
            ..Query::default()
        })
        .is_empty());
    let json = serde_json::to_value(&hits).unwrap();
    assert_eq!(json[0]["type"], "llm");
}

#[test]
fn unknown_ids_and_variants_name_the_alternatives() {
    let reg = Registry::builtin();
    let e = reg.lookup("qwen3").unwrap_err().to_string();
    assert!(e.contains("unknown model `qwen3`") && e.contains("qwen3-8b"), "{e}");
    let e = reg.lookup("zzz").unwrap_err().to_string();
    assert!(e.contains("mlxengine search"), "{e}");
    let e = reg.lookup("qwen3-8b").unwrap().variant("2bit").unwrap_err().to_string();
    assert!(e.contains("bf16, 8bit, 4bit"), "{e}");
}

/// The SmolLM2 GGUF and MiniLM checkpoint that `cargo xtask fetch-models` puts in target/models
/// are the ground truth for the entries marked measured/verified.
#[test]
fn entries_match_the_local_files() {
    let reg = Registry::builtin();
    let gguf_path = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let minilm = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        gguf_path.exists() && minilm.exists(),
        "{} or {} is missing: run `cargo xtask fetch-models`",
        gguf_path.display(),
        minilm.display()
    );
    let smol = reg.get("smollm2-135m-instruct").unwrap();
    let v = smol.variant("q4_1-gguf").unwrap();
    assert!(!v.size_estimated);
    assert_eq!(v.file_size_bytes, std::fs::metadata(&gguf_path).unwrap().len());
    let g = GgufMetadata::read(&gguf_path).unwrap();
    let c = smol.config.unwrap();
    let u = |k: &str| g.get_u64(k).unwrap().unwrap_or_else(|| panic!("{k}"));
    assert_eq!(u("llama.block_count"), c.layers);
    assert_eq!(u("llama.embedding_length"), c.hidden_size);
    assert_eq!(u("llama.attention.head_count"), c.attention_heads);
    assert_eq!(u("llama.attention.head_count_kv"), c.kv_heads);
    assert_eq!(u("llama.feed_forward_length"), c.intermediate_size);
    assert_eq!(u("llama.context_length"), smol.context_length);
    let params: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    assert_eq!(params, smol.params);
    assert!(smol.verified);

    let mini = reg.get("all-minilm-l6-v2").unwrap();
    let f32v = mini.variant("f32").unwrap();
    assert!(!f32v.size_estimated);
    assert_eq!(
        f32v.file_size_bytes,
        std::fs::metadata(minilm.join("model.safetensors")).unwrap().len()
    );
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(minilm.join("config.json")).unwrap()).unwrap();
    let c = mini.config.unwrap();
    assert_eq!(cfg["num_hidden_layers"], c.layers);
    assert_eq!(cfg["hidden_size"], c.hidden_size);
    assert_eq!(cfg["num_attention_heads"], c.attention_heads);
    assert_eq!(cfg["intermediate_size"], c.intermediate_size);
    assert_eq!(cfg["vocab_size"], c.vocab_size);
    assert_eq!(cfg["max_position_embeddings"], mini.context_length);
    assert!(mini.verified);
}

#[test]
fn minilm_parameter_count_matches_its_safetensors_header() {
    let st = models_dir().join("all-MiniLM-L6-v2/model.safetensors");
    let bytes = std::fs::read(&st).unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask fetch-models`", st.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let params: u64 = header
        .as_object()
        .unwrap()
        .iter()
        // Parameters are the float tensors; BERT also stores its int64 `position_ids` buffer.
        .filter(|(k, t)| *k != "__metadata__" && t["dtype"].as_str().is_some_and(|d| d.starts_with('F')))
        .map(|(_, t)| {
            t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    assert_eq!(params, Registry::builtin().get("all-minilm-l6-v2").unwrap().params);
}
