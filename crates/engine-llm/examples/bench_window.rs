//! Sliding-window decode benchmark used by `cargo xtask bench window`.
//!
//! A Gemma-2-shaped model with random weights at a reduced width (hidden
//! 1024, 8 query / 4 KV heads of 128, MLP 4096, 4 layers, every one sliding
//! with a 4096 window, soft-capped attention) greedy-decodes after a
//! 4500-token prompt, so the window is full and has wrapped — once with the
//! ring cache the models use ([`KvCache::sliding`]) and once with the
//! concatenating cache it replaced ([`KvCache::sliding_concat`]), in the same
//! process. Decode rounds alternate between the two and each keeps its best.
//! Then times one layer cache's single-position update alone, for each kind.
//! Prints `{"ring_tok_s":…,"concat_tok_s":…,"ring_update_us":…,…}`.
//!
//! Decode speed does not depend on what the cached keys hold, so by default
//! the prompt's keys/values are random ones written through the caches in the
//! engine's prefill chunks (a real prefill of 4500 tokens takes minutes on a
//! small CPU); `--real-prefill` runs the prompt through the model instead.
//!
//! `bench_window [--prompt N] [--tokens N] [--rounds N] [--real-prefill]`.
use engine_llm::cache::KvCache;
use engine_llm::config::LlmConfig;
use engine_llm::generate::PREFILL_CHUNK;
use engine_llm::transformer::{MaskSpec, Transformer};
use engine_mlx::{async_eval, random, Array, Dtype, WeightMap};
use std::time::Instant;

const WINDOW: usize = 4096;

fn arg(args: &[String], name: &str, default: usize) -> Result<usize, Box<dyn std::error::Error>> {
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => Ok(v.parse()?),
        None => Ok(default),
    }
}

fn model() -> Result<Transformer, Box<dyn std::error::Error>> {
    let raw = serde_json::json!({
        "model_type": "gemma2",
        "hidden_size": 1024,
        "num_hidden_layers": 4,
        "intermediate_size": 4096,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "vocab_size": 32000,
        "sliding_window": WINDOW,
        "max_position_embeddings": 8192,
        "query_pre_attn_scalar": 128,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    });
    let mut cfg = LlmConfig::from_hf(&raw)?;
    let (d, hd, f, v) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, d]),
        ("model.norm.weight".into(), vec![d]),
    ];
    for i in 0..cfg.num_layers {
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
            shapes.push((format!("model.layers.{i}.{name}.weight"), shape));
        }
    }
    let keys = random::split(&random::key(0)?, shapes.len() as i32)?;
    let mut tensors = Vec::with_capacity(shapes.len());
    for ((name, shape), k) in shapes.into_iter().zip(&keys) {
        tensors.push((name, random::normal(&shape, Dtype::Float32, 0.0, 0.02, Some(k))?));
    }
    let (mut features, w) = engine_llm::models::prepare(&mut cfg, WeightMap::from_arrays(tensors, "random"))?;
    // Gemma 2 slides on every other layer; here every layer does.
    features.layer_windows = vec![Some(WINDOW); cfg.num_layers];
    let m = Transformer::load(cfg, features, &w)?;
    m.eval_weights()?;
    Ok(m)
}

/// Prefills `prompt` in the engine's chunks; returns the first token and the seconds taken.
fn prefill(m: &Transformer, cache: &mut [KvCache], prompt: &[u32]) -> engine_mlx::Result<(Array, f64)> {
    let t0 = Instant::now();
    let spec = MaskSpec::default();
    let mut y = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        let logits = m.forward(&Array::from_slice(chunk, &[1, chunk.len()])?, cache, &spec, true)?;
        let next = logits.squeeze(1)?.argmax(-1, false)?;
        let mut arrays: Vec<&Array> = cache.iter().flat_map(|c| c.arrays()).collect();
        arrays.push(&next);
        engine_mlx::eval(arrays)?;
        y = Some(next);
    }
    Ok((y.expect("a non-empty prompt"), t0.elapsed().as_secs_f64()))
}

/// Writes `len` random keys/values into every layer's cache in the engine's
/// prefill chunks, as a prefill would (the keys are post-RoPE: any values do).
fn fill(m: &Transformer, cache: &mut [KvCache], len: usize) -> engine_mlx::Result<(Array, f64)> {
    let t0 = Instant::now();
    let c = m.config();
    let mut start = 0;
    while start < len {
        let l = PREFILL_CHUNK.min(len - start);
        let shape = [1, c.num_kv_heads, l, c.head_dim];
        for layer in cache.iter_mut() {
            let k = random::normal(&shape, Dtype::Float32, 0.0, 1.0, None)?;
            let v = random::normal(&shape, Dtype::Float32, 0.0, 1.0, None)?;
            layer.update(&k, &v)?;
        }
        engine_mlx::eval(cache.iter().flat_map(|c| c.arrays()))?;
        start += l;
    }
    Ok((Array::from_slice(&[1u32], &[1])?, t0.elapsed().as_secs_f64()))
}

/// Greedy-decodes `n` tokens after `y`, pipelined as the engine's decode loop
/// (step i + 1 is scheduled before token i is read); returns tokens per second.
fn decode(m: &Transformer, cache: &mut [KvCache], y: &mut Array, n: usize) -> engine_mlx::Result<f64> {
    let spec = MaskSpec::default();
    let t0 = Instant::now();
    for _ in 0..n {
        let logits = m.forward(&y.reshape(&[1, 1])?, cache, &spec, true)?;
        let next = logits.squeeze(1)?.argmax(-1, false)?;
        async_eval([&next])?;
        y.item_i64()?;
        *y = next;
    }
    y.item_i64()?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Microseconds per single-position update of one full layer cache (the
/// cache's own cost, without the model), over `steps` updates.
fn update_us(
    mut cache: KvCache,
    kv_heads: usize,
    head_dim: usize,
    prompt: usize,
    steps: usize,
) -> engine_mlx::Result<f64> {
    let big = [1, kv_heads, prompt, head_dim];
    let (k, v) = (
        random::normal(&big, Dtype::Float32, 0.0, 1.0, None)?,
        random::normal(&big, Dtype::Float32, 0.0, 1.0, None)?,
    );
    cache.update(&k, &v)?;
    engine_mlx::eval(cache.arrays())?;
    let one = [1, kv_heads, 1, head_dim];
    let (k, v) = (
        random::normal(&one, Dtype::Float32, 0.0, 1.0, None)?,
        random::normal(&one, Dtype::Float32, 0.0, 1.0, None)?,
    );
    engine_mlx::eval([&k, &v])?;
    let t0 = Instant::now();
    for _ in 0..steps {
        let view = cache.update(&k, &v)?;
        let mut arrays = cache.arrays();
        arrays.extend([&view.keys, &view.values]);
        engine_mlx::eval(arrays)?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / steps as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let prompt_len = arg(&args, "--prompt", 4500)?;
    let n = arg(&args, "--tokens", 64)?;
    let rounds = arg(&args, "--rounds", 2)?.max(1);
    let real_prefill = args.iter().any(|a| a == "--real-prefill");
    let m = model()?;
    let vocab = m.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % vocab)
        .collect();
    let total = prompt_len + rounds * n;
    let make = |sliding: fn(usize) -> KvCache| -> Result<_, Box<dyn std::error::Error>> {
        let mut cache: Vec<KvCache> = (0..m.config().num_layers).map(|_| sliding(WINDOW)).collect();
        for c in &mut cache {
            c.reserve(total);
        }
        let (y, secs) = if real_prefill {
            prefill(&m, &mut cache, &prompt)?
        } else {
            fill(&m, &mut cache, prompt.len())?
        };
        Ok((cache, y, secs))
    };
    let (mut ring, mut ring_y, ring_prefill_s) = make(KvCache::sliding)?;
    let (mut concat, mut concat_y, concat_prefill_s) = make(KvCache::sliding_concat)?;
    let (mut ring_best, mut concat_best) = (0.0f64, 0.0f64);
    for _ in 0..rounds {
        ring_best = ring_best.max(decode(&m, &mut ring, &mut ring_y, n)?);
        concat_best = concat_best.max(decode(&m, &mut concat, &mut concat_y, n)?);
    }
    let (kvh, hd) = (m.config().num_kv_heads, m.config().head_dim);
    let ring_update_us = update_us(KvCache::sliding(WINDOW), kvh, hd, prompt_len, 200)?;
    let concat_update_us = update_us(KvCache::sliding_concat(WINDOW), kvh, hd, prompt_len, 200)?;
    let ring_kv: usize = ring.iter().map(KvCache::nbytes).sum();
    let concat_kv: usize = concat.iter().map(KvCache::nbytes).sum();
    println!(
        "{}",
        serde_json::json!({
            "ring_tok_s": ring_best,
            "concat_tok_s": concat_best,
            "ring_prefill_s": ring_prefill_s,
            "concat_prefill_s": concat_prefill_s,
            "ring_update_us": ring_update_us,
            "concat_update_us": concat_update_us,
            "ring_kv_bytes": ring_kv,
            "concat_kv_bytes": concat_kv,
            "window": WINDOW,
            "prompt_tokens": prompt_len,
            "decode_tokens": n,
            "rounds": rounds,
            "real_prefill": real_prefill,
        })
    );
    Ok(())
}
