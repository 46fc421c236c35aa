//! Writes a checkpoint as an MLX model folder that mlx-lm loads (`mlxengine
//! convert`): config.json with its `quantization` block, sharded safetensors
//! with Hugging Face names, and the tokenizer and chat-template files.
//!
//! The weights are written by their checkpoint names, before any
//! architecture-specific rewriting, so mlx-lm's own `sanitize` sees what it
//! expects from a Hugging Face folder.

use crate::config::LlmConfig;
use crate::gguf;
use engine_core::{ChatTemplate, EngineError, GgufMetadata, Result, Tokenizer};
use engine_mlx::quant::{quantize_checked, QuantSpec};
use engine_mlx::{save_safetensors, Array, Dtype, WeightMap};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// What [`convert`] does to the weights.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// LoRA adapter folders fused into the weights, in order, before any
    /// `dtype` or `quantize`.
    pub adapters: Vec<std::path::PathBuf>,
    /// Dense weights become this dtype (`None`: as stored; a GGUF's quantized
    /// blocks stay quantized where MLX's layout holds them).
    pub dtype: Option<Dtype>,
    /// Quantize the linear layers and the embedding (as `mlx_lm.convert -q`).
    pub quantize: Option<QuantSpec>,
}

/// The largest safetensors shard written (mlx-lm's default, 5 GB).
const SHARD_BYTES: usize = 5 << 30;

/// Files copied from a source folder besides the weights and config.json.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

fn io(context: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Io { context, source }
}

fn be(e: engine_mlx::Error) -> EngineError {
    EngineError::Backend(e.to_string())
}

/// Whether mlx-lm quantizes the module holding `name` (its linear layers and
/// embeddings; norms and biases stay dense).
fn quantizable(name: &str, a: &Array) -> bool {
    a.ndim() == 2
        && (name.ends_with("_proj.weight") || name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight"))
}

/// Converts the model at `src` (a Hugging Face / MLX folder or a `.gguf`
/// file) into an MLX folder at `out`, which must not exist yet or be empty.
/// The folder is written under a temporary name and renamed when complete,
/// so an interrupted conversion never leaves a folder that looks whole.
pub fn convert(src: &Path, out: &Path, opts: &ConvertOptions, progress: &mut dyn FnMut(&str, f32)) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).map_or(true, |mut d| d.next().is_some()) {
        return Err(EngineError::InvalidParameter(format!(
            "{} already exists; pick a new output folder or remove it first",
            out.display()
        )));
    }
    if !src.exists() {
        return Err(EngineError::ModelLoad {
            path: src.to_path_buf(),
            reason: "no such file or folder; check the path, or pull the model first".into(),
        });
    }
    let is_gguf = src.is_file() && src.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    progress("reading the weights", 0.0);
    // The dense dtype a quantized GGUF is decoded to before re-quantizing.
    let decode = opts.dtype.or(opts.quantize.map(|_| Dtype::Float16));
    let (mut config, weights, tokenizer) = if is_gguf {
        let meta = GgufMetadata::read(src)?;
        let raw = LlmConfig::hf_json_from_gguf(&meta)?;
        let cfg = LlmConfig::from_hf(&raw)?;
        let w = gguf::load_weights(src, &meta, decode, &mut |f| progress("reading the weights", 0.5 * f))?;
        let w = gguf::to_hf(w, &meta, cfg.num_heads, cfg.num_kv_heads)?;
        let tok = Tokenizer::from_gguf(&meta)?;
        let tpl = ChatTemplate::from_gguf(&meta)?;
        (raw, w, Some((tok, tpl)))
    } else if src.is_dir() {
        let text = std::fs::read_to_string(src.join("config.json")).map_err(io(format!(
            "reading {}/config.json (is this a model folder?)",
            src.display()
        )))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| EngineError::ModelLoad {
            path: src.join("config.json"),
            reason: format!("not valid JSON ({e})"),
        })?;
        let w = WeightMap::load_safetensors_dir(src).map_err(be)?;
        if opts.quantize.is_some() && w.names().iter().any(|n| n.ends_with(".scales")) {
            return Err(EngineError::InvalidParameter(format!(
                "{} is already quantized; convert from the unquantized model to quantize it",
                src.display()
            )));
        }
        (raw, w, None)
    } else {
        return Err(EngineError::ModelLoad {
            path: src.to_path_buf(),
            reason: "expected a model folder or a .gguf file".into(),
        });
    };

    let mut weights = weights;
    if !opts.adapters.is_empty() {
        // Each quantized module's setting: a GGUF's blocks load as groups of 32
        // (the packed width gives the bits); a folder's come from its config.
        let mut specs = BTreeMap::new();
        for name in weights.names() {
            let Some(module) = name.strip_suffix(".scales") else {
                continue;
            };
            let spec = if is_gguf {
                let packed = weights.get(&format!("{module}.weight")).map_err(be)?;
                let scales = weights.get(name).map_err(be)?;
                Some(QuantSpec {
                    group_size: 32,
                    bits: (packed.dim(-1) / scales.dim(-1)) as i32,
                })
            } else {
                config.get("quantization").and_then(|q| {
                    let q = q.get(module).filter(|v| v.is_object()).unwrap_or(q);
                    Some(QuantSpec {
                        group_size: q["group_size"].as_i64()? as i32,
                        bits: q["bits"].as_i64()? as i32,
                    })
                })
            };
            if let Some(spec) = spec {
                specs.insert(module.to_string(), spec);
            }
        }
        for dir in &opts.adapters {
            progress("fusing the adapter", 0.45);
            let adapter = crate::adapter::Adapter::load(dir)?;
            adapter.fuse_into(&mut weights, &|m| specs.get(m).copied())?;
        }
    }

    // Dense dtype, then quantization, tensor by tensor.
    progress("converting", 0.5);
    let mut tensors: Vec<(String, Array)> = Vec::new();
    let mut layers: BTreeMap<String, QuantSpec> = BTreeMap::new();
    let names: Vec<String> = weights.names().into_iter().map(str::to_string).collect();
    for name in &names {
        let a = weights.get(name).map_err(be)?;
        if name.ends_with(".scales") || (name.ends_with(".biases") && weights.contains(&sibling(name, "scales"))) {
            continue; // written with their weight below
        }
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if let Some(scales) = weights.try_get(&format!("{module}.scales")) {
            // Quantized as stored: keep. A GGUF's blocks load as groups of 32,
            // which gives the bits; a quantized folder's config keeps its block.
            let biases = weights.get(&format!("{module}.biases")).map_err(be)?;
            if is_gguf {
                let spec = QuantSpec {
                    group_size: 32,
                    bits: (a.dim(-1) / scales.dim(-1)) as i32,
                };
                layers.insert(module.to_string(), spec);
            }
            let cast = |x: &Array| match opts.dtype {
                Some(d) if x.dtype() != d => x.astype(d).map_err(be),
                _ => Ok(x.clone()),
            };
            tensors.push((name.clone(), a.clone()));
            tensors.push((format!("{module}.scales"), cast(scales)?));
            tensors.push((format!("{module}.biases"), cast(biases)?));
            continue;
        }
        let a = match opts.dtype {
            Some(d) if a.dtype().is_float() && a.dtype() != d => a.astype(d).map_err(be)?,
            _ => a.clone(),
        };
        match opts.quantize {
            Some(spec) if quantizable(name, &a) => {
                let q = quantize_checked(&a, spec, module).map_err(|e| EngineError::InvalidParameter(e.to_string()))?;
                engine_mlx::eval([&q.weight, &q.scales, &q.biases]).map_err(be)?;
                layers.insert(module.to_string(), spec);
                tensors.push((name.clone(), q.weight));
                tensors.push((format!("{module}.scales"), q.scales));
                tensors.push((format!("{module}.biases"), q.biases));
            }
            _ => tensors.push((name.clone(), a)),
        }
    }
    drop(weights);

    // The quantization block: the most common setting, and per-layer entries
    // (mlx-lm's format) for layers that differ, as mixed GGUF files have. A
    // quantized folder converted without --quantize keeps its own block.
    if let Some(default) = most_common(layers.values().copied()) {
        let mut q = json!({"group_size": default.group_size, "bits": default.bits});
        for (module, spec) in &layers {
            if *spec != default {
                q[module] = json!({"group_size": spec.group_size, "bits": spec.bits});
            }
        }
        config["quantization"] = q.clone();
        config["quantization_config"] = q;
    } else if is_gguf {
        if let Some(o) = config.as_object_mut() {
            o.remove("quantization");
            o.remove("quantization_config");
        }
    }
    if let Some(d) = opts.dtype {
        config["torch_dtype"] = json!(dtype_name(d));
    }

    let tmp = out.with_file_name(format!(
        ".{}.partial",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(format!("removing the leftover {}", tmp.display())))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    progress("writing", 0.7);
    write_shards(&tmp, &tensors)?;
    drop(tensors);
    let write = |name: &str, v: &Value| {
        std::fs::write(tmp.join(name), serde_json::to_string_pretty(v).expect("json"))
            .map_err(io(format!("writing {name}")))
    };
    write("config.json", &config)?;
    match tokenizer {
        Some((tok, tpl)) => {
            tok.save_json(tmp.join("tokenizer.json"))?;
            let mut tc = json!({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": tok.adds_bos()});
            if let Some(b) = tok.bos_token() {
                tc["bos_token"] = json!(b);
            }
            if let Some(e) = tok.eos_token() {
                tc["eos_token"] = json!(e);
            }
            if let Some(t) = tpl {
                tc["chat_template"] = json!(t.source());
            }
            write("tokenizer_config.json", &tc)?;
            write("generation_config.json", &json!({"eos_token_id": tok.eos_token_ids()}))?;
        }
        None => {
            for f in TOKENIZER_FILES {
                let from = src.join(f);
                if from.is_file() {
                    std::fs::copy(&from, tmp.join(f)).map_err(io(format!("copying {}", from.display())))?;
                }
            }
        }
    }
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(format!("replacing the empty {}", out.display())))?;
    }
    std::fs::rename(&tmp, out).map_err(io(format!("moving {} to {}", tmp.display(), out.display())))?;
    progress("done", 1.0);
    Ok(())
}

/// `a.b.biases` → `a.b.<suffix>`.
fn sibling(name: &str, suffix: &str) -> String {
    match name.rsplit_once('.') {
        Some((base, _)) => format!("{base}.{suffix}"),
        None => name.to_string(),
    }
}

fn most_common(specs: impl Iterator<Item = QuantSpec>) -> Option<QuantSpec> {
    let mut counts: Vec<(QuantSpec, usize)> = Vec::new();
    for s in specs {
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::Bfloat16 => "bfloat16",
        Dtype::Float16 => "float16",
        _ => "float32",
    }
}

/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards of at
/// most [`SHARD_BYTES`] with `model.safetensors.index.json`.
fn write_shards(dir: &Path, tensors: &[(String, Array)]) -> Result<()> {
    let mut shards: Vec<Vec<&(String, Array)>> = vec![Vec::new()];
    let mut size = 0usize;
    for t in tensors {
        let n = t.1.nbytes();
        if size + n > SHARD_BYTES && !shards.last().expect("one").is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += n;
        shards.last_mut().expect("one").push(t);
    }
    let total: usize = tensors.iter().map(|t| t.1.nbytes()).sum();
    let count = shards.len();
    let mut map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let list: Vec<(&str, &Array)> = shard.iter().map(|(n, a)| (n.as_str(), a)).collect();
        save_safetensors(dir.join(&file), &list, &[("format", "mlx")]).map_err(be)?;
        for (n, _) in shard {
            map.insert(n.clone(), json!(file));
        }
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": map});
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index).expect("json"),
        )
        .map_err(io("writing model.safetensors.index.json".into()))?;
    }
    Ok(())
}

/// Converts a `.gguf` file to an MLX folder with its weights as stored (the
/// benches give mlx-lm the very same weights this way).
pub fn gguf_to_mlx(gguf_path: &Path, out_dir: &Path) -> Result<()> {
    convert(gguf_path, out_dir, &ConvertOptions::default(), &mut |_, _| {})
}
