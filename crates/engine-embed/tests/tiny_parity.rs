//! Parity on tiny random checkpoints of every supported architecture against
//! sentence-transformers (transformers + torch) as the oracle.
//!
//! `fixtures/make_tiny.py` wrote `fixtures/tiny_fixtures.json`: for each model the
//! small JSON files of its folder, the list of its tensors (each a pure function
//! of a seed, see [`tensor`]) and the oracle's embeddings. This test rebuilds the
//! identical folder in a temporary directory and loads it like any download.

use std::path::Path;

use engine_embed::{EmbedOptions, Embedder, InputKind};
use engine_mlx::{save_safetensors, Array};
use serde_json::Value;

type R = Result<(), Box<dyn std::error::Error>>;

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `offset + scale * (2u - 1)` with u from the top 24 bits of splitmix64, as make_tiny.py.
fn tensor(seed: u64, shape: &[usize], offset: f64, scale: f64) -> Array {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let u = (splitmix64((seed << 32) | i) >> 40) as f64 / (1u64 << 24) as f64;
            (offset + scale * (2.0 * u - 1.0)) as f32
        })
        .collect();
    Array::from_slice(&v, shape).expect("tensor")
}

fn build(model: &Value, dir: &Path) -> R {
    for (rel, content) in model["files"].as_object().ok_or("files")? {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().ok_or("parent")?)?;
        std::fs::write(p, serde_json::to_string_pretty(content)?)?;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::copy(fixtures.join("tiny_tokenizer.json"), dir.join("tokenizer.json"))?;
    let mut tensors = Vec::new();
    for t in model["tensors"].as_array().ok_or("tensors")? {
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())?;
        let a = tensor(
            t["seed"].as_u64().ok_or("seed")?,
            &shape,
            t["offset"].as_f64().ok_or("offset")?,
            t["scale"].as_f64().ok_or("scale")?,
        );
        tensors.push((t["name"].as_str().ok_or("name")?.to_string(), a));
    }
    let refs: Vec<(&str, &Array)> = tensors.iter().map(|(n, a)| (n.as_str(), a)).collect();
    save_safetensors(dir.join("model.safetensors"), &refs, &[("format", "pt")])?;
    Ok(())
}

fn fixtures() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_fixtures.json");
    serde_json::from_str(&std::fs::read_to_string(p).expect("fixture file")).expect("fixture json")
}

fn check(name: &str) -> R {
    let all = fixtures();
    let model = all["models"]
        .as_array()
        .ok_or("models")?
        .iter()
        .find(|m| m["name"] == name)
        .ok_or("no such fixture")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join(name);
    build(model, &dir)?;
    let emb = Embedder::load(&dir)?;
    for case in model["cases"].as_array().ok_or("cases")? {
        let texts: Vec<String> = serde_json::from_value(case["texts"].clone())?;
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let want: Vec<Vec<f32>> = serde_json::from_value(case["embeddings"].clone())?;
        let want_trunc: Vec<bool> = serde_json::from_value(case["truncated"].clone())?;
        let kind = match case["kind"].as_str() {
            Some("query") => InputKind::Query,
            Some("document") => InputKind::Document,
            _ => InputKind::Plain,
        };
        // Batch size 3 like the oracle, so batches mix lengths and padding matters.
        let opts = EmbedOptions {
            kind,
            batch_size: 3,
            ..Default::default()
        };
        let out = emb.embed_with(&texts, &opts)?;
        assert_eq!(out.truncated, want_trunc, "{name} {kind:?}: truncation flags");
        for (i, (g, w)) in out.vectors.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{name}: dimensions");
            let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                diff <= 1e-5,
                "{name} {kind:?} text {i} {:?}: max abs diff {diff}\n got  {:?}\n want {:?}",
                texts[i],
                &g[..4],
                &w[..4]
            );
        }
    }
    Ok(())
}

#[test]
fn bert_mean_pooling_normalized_with_truncation() -> R {
    check("tiny-bert-mean")
}

#[test]
fn bge_style_cls_pooling_with_query_and_document_prompts() -> R {
    check("tiny-bge-cls")
}

#[test]
fn bert_last_token_pooling_unnormalized() -> R {
    check("tiny-bert-lasttoken")
}

#[test]
fn xlm_roberta_positions_after_the_padding_id() -> R {
    check("tiny-xlm-roberta")
}

#[test]
fn modernbert_sliding_window_and_global_layers() -> R {
    check("tiny-modernbert")
}
