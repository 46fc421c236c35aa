//! The sliding-window ring cache against two references on tiny random
//! models whose window (8) every run wraps many times: the whole sequence in
//! one forward pass (full attention under an explicit window mask), and the
//! concatenating cache the ring replaced ([`KvCache::sliding_concat`]), fed
//! the same chunks. Mistral slides on every layer (MLX's attention kernel);
//! Gemma 2 on every other one (soft-capped attention).

use engine_llm::cache::KvCache;
use engine_llm::config::LlmConfig;
use engine_llm::transformer::{MaskSpec, Transformer};
use engine_mlx::{random, Array, Dtype, WeightMap};

const WINDOW: usize = 8;
const VOCAB: usize = 256;

/// A tiny model of `model_type` with random weights and a window of 8.
fn tiny(model_type: &str) -> Transformer {
    let raw = serde_json::json!({
        "model_type": model_type,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": VOCAB,
        "sliding_window": WINDOW,
        "tie_word_embeddings": true,
        "query_pre_attn_scalar": 16,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    });
    let mut cfg = LlmConfig::from_hf(&raw).unwrap();
    let (d, hd, f) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![q, d]),
            ("self_attn.k_proj", vec![kv, d]),
            ("self_attn.v_proj", vec![kv, d]),
            ("self_attn.o_proj", vec![d, q]),
            ("mlp.gate_proj", vec![f, d]),
            ("mlp.up_proj", vec![f, d]),
            ("mlp.down_proj", vec![d, f]),
            ("input_layernorm", vec![d]),
            ("post_attention_layernorm", vec![d]),
            ("pre_feedforward_layernorm", vec![d]),
            ("post_feedforward_layernorm", vec![d]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), shape));
        }
    }
    let key = random::key(17).unwrap();
    let keys = random::split(&key, shapes.len() as i32).unwrap();
    let tensors = shapes.into_iter().zip(&keys).map(|((name, shape), k)| {
        let a = random::normal(&shape, Dtype::Float32, 0.0, 0.3, Some(k)).unwrap();
        (name, a)
    });
    let (features, w) = engine_llm::models::prepare(&mut cfg, WeightMap::from_arrays(tensors, "random")).unwrap();
    assert!(features.layer_windows.contains(&Some(WINDOW)));
    let t = Transformer::load(cfg, features, &w).unwrap();
    t.eval_weights().unwrap();
    t
}

fn ids(n: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % VOCAB as u64) as u32
        })
        .collect()
}

/// The model's caches with every sliding layer's cache replaced by the old
/// concatenating one.
fn concat_cache(m: &Transformer) -> Vec<KvCache> {
    m.new_cache()
        .into_iter()
        .map(|c| c.window().map_or(c, KvCache::sliding_concat))
        .collect()
}

/// Logits (rows × L × vocab, flattened) of `tokens` (rows of equal length)
/// fed in chunks of `chunks` sizes.
fn run(
    m: &Transformer,
    cache: &mut [KvCache],
    tokens: &[Vec<u32>],
    from: usize,
    chunks: &[usize],
    mask: &MaskSpec,
) -> Vec<Vec<f32>> {
    let rows = tokens.len();
    let mut out = vec![Vec::new(); rows];
    let mut start = from;
    for &l in chunks {
        let flat: Vec<u32> = tokens
            .iter()
            .flat_map(|r| r[start..start + l].iter().copied())
            .collect();
        let logits = m
            .forward(&Array::from_slice(&flat, &[rows, l]).unwrap(), cache, mask, false)
            .unwrap();
        let host = logits.to_f32_vec().unwrap();
        for (r, o) in out.iter_mut().enumerate() {
            o.extend_from_slice(&host[r * l * VOCAB..(r + 1) * l * VOCAB]);
        }
        start += l;
    }
    out
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}: position {}, logit {}: {a} vs {b}",
            i / VOCAB,
            i % VOCAB
        );
    }
}

const SCHEDULES: &[&[usize]] = &[
    &[3, 1, 1, 7, 1, 1, 13, 1, 1, 1, 5, 8, 1, 2, 1, 9, 1, 1, 1, 1],
    &[
        11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1,
    ],
    &[20, 1, 1, 30, 1, 5, 1, 1, 1, 1, 1],
    &[8, 8, 1, 16, 1, 7, 1, 8, 1, 1, 1],
];

#[test]
fn ring_matches_one_pass_and_the_concatenating_cache() {
    for arch in ["mistral", "gemma2"] {
        let m = tiny(arch);
        for (s, chunks) in SCHEDULES.iter().enumerate() {
            let n: usize = chunks.iter().sum();
            let tokens = vec![ids(n, s as u64)];
            let spec = MaskSpec::default();
            let whole = run(&m, &mut m.new_cache(), &tokens, 0, &[n], &spec);
            let mut ring = m.new_cache();
            for c in &mut ring {
                c.reserve(n);
            }
            let got = run(&m, &mut ring, &tokens, 0, chunks, &spec);
            let old = run(&m, &mut concat_cache(&m), &tokens, 0, chunks, &spec);
            assert_close(&got[0], &whole[0], &format!("{arch} {chunks:?} vs one pass"));
            assert_close(&got[0], &old[0], &format!("{arch} {chunks:?} vs concatenating"));
        }
    }
}

#[test]
fn ring_trimmed_before_it_overwrote_resumes_exactly() {
    for arch in ["mistral", "gemma2"] {
        let m = tiny(arch);
        let n = 30;
        let tokens = vec![ids(n, 9)];
        let spec = MaskSpec::default();
        let whole = run(&m, &mut m.new_cache(), &tokens, 0, &[n], &spec);
        for (filled, keep) in [(6, 3), (WINDOW, 5), (WINDOW, 1)] {
            let mut cache = m.new_cache();
            // A different continuation fills the cache, then is trimmed away.
            let other = vec![[&tokens[0][..keep], &ids(filled - keep, 99)[..]].concat()];
            run(&m, &mut cache, &other, 0, &[filled - 1, 1], &spec);
            assert!(
                cache.iter_mut().all(|c| c.trim_to(keep)),
                "{arch}: trim {filled} → {keep}"
            );
            let got = run(&m, &mut cache, &tokens, keep, &[n - keep - 4, 1, 1, 1, 1], &spec);
            assert_close(
                &got[0],
                &whole[0][keep * VOCAB..],
                &format!("{arch}: resumed at {keep}"),
            );
        }
        let mut cache = m.new_cache();
        run(&m, &mut cache, &tokens, 0, &[WINDOW, 1], &spec);
        let sliding = cache.iter_mut().find(|c| c.window().is_some()).unwrap();
        assert!(
            !sliding.trim_to(2),
            "{arch}: position 0 was overwritten, so the caller must start over"
        );
    }
}

#[test]
fn padded_batch_over_a_wrapped_ring_matches_the_concatenating_cache() {
    for arch in ["mistral", "gemma2"] {
        let m = tiny(arch);
        let n = 30;
        // Row 1's padding (positions 0..5) is still inside the ring of the
        // first full-ring decode steps, so its mask must find the slots.
        let pads = vec![0, 5];
        let mut rows = vec![ids(n, 1), ids(n, 2)];
        rows[1][..5].fill(0);
        let spec = MaskSpec {
            left_padding: Some(pads),
            ..Default::default()
        };
        for first in [7, 10] {
            let chunks: Vec<usize> = std::iter::once(first)
                .chain(std::iter::repeat_n(1, n - first))
                .collect();
            let got = run(&m, &mut m.new_cache(), &rows, 0, &chunks, &spec);
            let old = run(&m, &mut concat_cache(&m), &rows, 0, &chunks, &spec);
            for r in 0..2 {
                assert_close(&got[r], &old[r], &format!("{arch}: prompt chunk {first}, row {r}"));
            }
        }
    }
}

/// Batching keeps every position in growing caches and applies the window by
/// mask alone (rows are merged and trimmed by slot): the same logits as the
/// ring, with left padding and per-row positions.
#[test]
fn growing_caches_with_a_window_mask_match_the_ring() {
    for arch in ["mistral", "gemma2"] {
        let m = tiny(arch);
        let n = 30;
        let pads = vec![0, 5];
        let mut rows = vec![ids(n, 3), ids(n, 4)];
        rows[1][..5].fill(0);
        let spec = MaskSpec {
            left_padding: Some(pads),
            ..Default::default()
        };
        let chunks: Vec<usize> = std::iter::once(9).chain(std::iter::repeat_n(1, n - 9)).collect();
        let ring = run(&m, &mut m.new_cache(), &rows, 0, &chunks, &spec);
        let growing = run(&m, &mut m.new_growing_cache(), &rows, 0, &chunks, &spec);
        for r in 0..2 {
            assert_close(&growing[r], &ring[r], &format!("{arch}: row {r}"));
        }
    }
}
