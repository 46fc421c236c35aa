//! Text embeddings on MLX: BERT-style encoders (BERT, MiniLM, BGE, E5) and
//! ModernBERT, loaded from a Hugging Face / sentence-transformers folder
//! together with their tokenizer and pooling.
//!
//! ```no_run
//! use engine_embed::{cosine_similarity, Embedder};
//! let model = Embedder::load(std::path::Path::new("models/all-MiniLM-L6-v2"))?;
//! let v = model.embed(&["A cat sits on the mat", "A kitten rests on a rug"])?;
//! println!("{}", cosine_similarity(&v[0], &v[1])?);
//! # Ok::<(), engine_embed::EmbedError>(())
//! ```
//!
//! Behaviour at the edges, by design:
//! - an empty list gives an empty list;
//! - an empty string is encoded as the special tokens alone (`[CLS] [SEP]`),
//!   like sentence-transformers, and gives a valid vector;
//! - text longer than [`Embedder::max_length`] tokens is truncated and
//!   reported ([`EmbedOutput::truncated`] and a `tracing` warning), or refused
//!   with [`EmbedError::TooLong`] when [`EmbedOptions::truncate`] is off;
//! - a folder holding a non-encoder (e.g. a causal LM) is refused with
//!   [`EmbedError::NotAnEncoder`].
#![warn(missing_docs)]

pub mod bert;
mod error;
mod model;
pub mod modernbert;
mod pooling;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine_mlx::{Array, Dtype};
use serde_json::Value;
use tokenizers::{PaddingParams, TruncationParams};

pub use error::{EmbedError, Result};
pub use model::{Architecture, SUPPORTED};
pub use pooling::Pooling;

use model::{architecture_of, load_encoder, read_json, read_json_opt, read_pipeline, Encoder};

/// What a text is, for models that embed queries and documents differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InputKind {
    /// No role: the model's default prompt, if it declares one.
    #[default]
    Plain,
    /// A search query (the model's `query` prompt, e.g. E5's `"query: "`).
    Query,
    /// A document/passage to be searched (e.g. E5's `"passage: "`).
    Document,
}

/// Options of [`Embedder::embed_with`].
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// L2-normalise the vectors; `None` follows the model (a `Normalize` module).
    pub normalize: Option<bool>,
    /// The role of the texts; picks the model's prefix.
    pub kind: InputKind,
    /// A prefix to prepend instead of the model's own.
    pub prefix: Option<String>,
    /// Texts encoded per forward pass (similar lengths are grouped together).
    pub batch_size: usize,
    /// Cut texts longer than the maximum length (reported in the output);
    /// when false such a text is an [`EmbedError::TooLong`] error.
    pub truncate: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            normalize: None,
            kind: InputKind::Plain,
            prefix: None,
            batch_size: 32,
            truncate: true,
        }
    }
}

/// The result of [`Embedder::embed_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOutput {
    /// One vector of [`Embedder::dimensions`] floats per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Whether each input was cut at the maximum length.
    pub truncated: Vec<bool>,
    /// Tokens each input was encoded as (after truncation, special tokens included).
    pub token_counts: Vec<usize>,
}

/// A loaded embedding model: encoder, tokenizer and pooling.
///
/// `Send` but not `Sync` (MLX arrays): use it from one thread at a time.
pub struct Embedder {
    name: String,
    path: PathBuf,
    encoder: Encoder,
    /// Truncates at `max_length`; padding is done here, per batch.
    tokenizer: tokenizers::Tokenizer,
    /// Never truncates: counts the full length for [`EmbedError::TooLong`].
    full_tokenizer: engine_core::Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_length: usize,
    prompts: BTreeMap<String, String>,
    default_prompt: Option<String>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("name", &self.name)
            .field("architecture", &self.architecture())
            .field("dimensions", &self.dimensions())
            .field("max_length", &self.max_length)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish()
    }
}

/// Prefixes of well-known model families that do not declare them in
/// `config_sentence_transformers.json`, keyed on the model's name (the last
/// part of its repo id: `e5-small-v2`, `bge-small-en-v1.5`).
fn known_prompts(name: &str) -> BTreeMap<String, String> {
    let n = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let mut m = BTreeMap::new();
    if n.starts_with("e5-") || n.contains("-e5-") || n.starts_with("multilingual-e5") {
        m.insert("query".into(), "query: ".into());
        m.insert("document".into(), "passage: ".into());
    } else if n.starts_with("bge-") && n.contains("-en") {
        m.insert(
            "query".into(),
            "Represent this sentence for searching relevant passages: ".into(),
        );
    }
    m
}

/// The repo id of a folder inside a Hugging Face cache
/// (`…/models--org--name/snapshots/<revision>` → `org/name`).
fn hf_cache_repo_id(path: &Path) -> Option<String> {
    let snapshots = path.parent()?;
    if snapshots.file_name()? != "snapshots" {
        return None;
    }
    let repo = snapshots.parent()?.file_name()?.to_str()?.strip_prefix("models--")?;
    let id = repo.replacen("--", "/", 1);
    (!id.is_empty() && !id.contains("--")).then_some(id)
}

/// Names the model may be known by, most reliable first: its repo id from a
/// Hugging Face cache path, its folder name, and config.json's
/// `_name_or_path` (what transformers saved it from).
fn model_names(path: &Path, cfg: &Value) -> Vec<String> {
    let mut names = Vec::new();
    names.extend(hf_cache_repo_id(path));
    names.extend(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    names.extend(
        cfg.get("_name_or_path")
            .and_then(Value::as_str)
            .map(|n| n.trim_end_matches('/').to_string())
            .filter(|n| !n.is_empty()),
    );
    names
}

fn tok_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Tokenizer(engine_core::TokenizerError::Encode(e.to_string()))
}

impl Embedder {
    /// Loads a model folder as Hugging Face or sentence-transformers lay it
    /// out: `config.json`, `*.safetensors`, `tokenizer.json`, and optionally
    /// `modules.json` + `1_Pooling/config.json` (pooling, normalisation),
    /// `sentence_bert_config.json` (maximum length) and
    /// `config_sentence_transformers.json` (query/document prompts).
    pub fn load(path: &Path) -> Result<Embedder> {
        if !path.is_dir() {
            return Err(EmbedError::NotAFolder {
                path: path.to_path_buf(),
            });
        }
        let cfg = read_json(&path.join("config.json"))?;
        let names = model_names(path, &cfg);
        let arch = architecture_of(path, &cfg)?;
        let pipeline = read_pipeline(path)?;
        if !path.join("tokenizer.json").is_file() {
            return Err(EmbedError::MissingFile {
                path: path.join("tokenizer.json"),
            });
        }
        let full_tokenizer = engine_core::Tokenizer::from_dir(path)?;
        let encoder = load_encoder(path, cfg, arch)?;

        let tok_cfg = read_json_opt(&path.join("tokenizer_config.json"))?;
        let tok_max = tok_cfg
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_u64)
            .filter(|&n| n < 1_000_000) // transformers writes 1e30 for "unset"
            .map(|n| n as usize);
        let max_length = pipeline
            .max_seq_length
            .or(tok_max)
            .unwrap_or(usize::MAX)
            .min(encoder.max_positions());

        let mut tokenizer = full_tokenizer.inner().clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(tok_err)?
            .with_padding(None::<PaddingParams>);

        let name = names.first().cloned().unwrap_or_else(|| path.display().to_string());
        let st = read_json_opt(&path.join("config_sentence_transformers.json"))?;
        let mut prompts: BTreeMap<String, String> = st
            .as_ref()
            .and_then(|v| v.get("prompts"))
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        prompts.retain(|_, v| !v.is_empty());
        if prompts.is_empty() {
            // A pulled copy's folder is `snapshots/<commit>`: the family is in its repo id.
            prompts = names
                .iter()
                .map(|n| known_prompts(n))
                .find(|p| !p.is_empty())
                .unwrap_or_default();
        }
        let default_prompt = st
            .as_ref()
            .and_then(|v| v.get("default_prompt_name"))
            .and_then(Value::as_str)
            .and_then(|n| prompts.get(n).cloned());
        tracing::debug!(
            model = %name,
            arch = arch.as_str(),
            dims = encoder.hidden_size(),
            max_length,
            pooling = pipeline.pooling.as_str(),
            normalize = pipeline.normalize,
            "embedding model loaded"
        );
        Ok(Embedder {
            name,
            path: path.to_path_buf(),
            encoder,
            tokenizer,
            full_tokenizer,
            pooling: pipeline.pooling,
            normalize: pipeline.normalize,
            max_length,
            prompts,
            default_prompt,
        })
    }

    /// The model's name: its repo id when loaded from a Hugging Face cache
    /// (`intfloat/e5-small-v2`), else its folder name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The encoder family.
    pub fn architecture(&self) -> Architecture {
        self.encoder.architecture()
    }

    /// Length of each embedding vector.
    pub fn dimensions(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// The longest input in tokens (special tokens included); longer text is truncated.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The pooling the model declares.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are L2-normalised by default.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The model's named prompts (e.g. `query` → `"query: "`).
    pub fn prompts(&self) -> &BTreeMap<String, String> {
        &self.prompts
    }

    /// The prefix [`embed_with`](Self::embed_with) puts before each text for these options.
    pub fn prefix_for<'a>(&'a self, opts: &'a EmbedOptions) -> &'a str {
        if let Some(p) = &opts.prefix {
            return p;
        }
        let named = |keys: &[&str]| keys.iter().find_map(|k| self.prompts.get(*k)).map(String::as_str);
        match opts.kind {
            InputKind::Plain => self.default_prompt.as_deref(),
            InputKind::Query => named(&["query"]),
            InputKind::Document => named(&["document", "passage", "doc", "corpus"]),
        }
        .unwrap_or("")
    }

    /// Tokens `text` encodes to, special tokens included, without truncation.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.full_tokenizer.encode(text, true)?.len())
    }

    /// Embeds `texts` with the model's defaults; one vector per text, in order.
    /// Truncated inputs are logged as a warning; use
    /// [`embed_with`](Self::embed_with) to see which.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_with(texts, &EmbedOptions::default())?.vectors)
    }

    /// Embeds `texts` with explicit options.
    pub fn embed_with(&self, texts: &[&str], opts: &EmbedOptions) -> Result<EmbedOutput> {
        self.embed_with_progress(texts, opts, &mut |_, _| {})
    }

    /// Like [`embed_with`](Self::embed_with), calling `progress(done, total)`
    /// after each batch.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        opts: &EmbedOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<EmbedOutput> {
        if opts.batch_size == 0 {
            return Err(EmbedError::ZeroBatchSize);
        }
        let n = texts.len();
        if n == 0 {
            return Ok(EmbedOutput {
                vectors: Vec::new(),
                truncated: Vec::new(),
                token_counts: Vec::new(),
            });
        }
        let prefix = self.prefix_for(opts);
        let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
        let encodings = self.tokenizer.encode_batch(inputs.clone(), true).map_err(tok_err)?;
        let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        let truncated: Vec<bool> = encodings.iter().map(|e| !e.get_overflowing().is_empty()).collect();
        if let Some(i) = truncated.iter().position(|&t| t) {
            if !opts.truncate {
                return Err(EmbedError::TooLong {
                    index: i,
                    tokens: self.count_tokens(&inputs[i])?,
                    max_length: self.max_length,
                });
            }
            tracing::warn!(
                model = %self.name,
                truncated = truncated.iter().filter(|&&t| t).count(),
                max_length = self.max_length,
                "inputs longer than the model's maximum length were truncated"
            );
        }
        let normalize = opts.normalize.unwrap_or(self.normalize);
        let dims = self.dimensions();

        // Longest first, so each batch holds similar lengths and pads little.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut vectors = vec![Vec::new(); n];
        let mut done = 0;
        for chunk in order.chunks(opts.batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let out = self.encode_batch(&rows, normalize)?;
            for (k, &i) in chunk.iter().enumerate() {
                vectors[i] = out[k * dims..(k + 1) * dims].to_vec();
            }
            done += chunk.len();
            progress(done, n);
        }
        Ok(EmbedOutput {
            vectors,
            truncated,
            token_counts: ids.iter().map(Vec::len).collect(),
        })
    }

    /// Runs one batch through the encoder and pooling; returns B × dims floats.
    fn encode_batch(&self, rows: &[&[u32]], normalize: bool) -> Result<Vec<f32>> {
        let b = rows.len();
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let l = lengths.iter().copied().max().unwrap_or(0).max(1);
        let mut valid = vec![0u8; b * l];
        for (r, &n) in lengths.iter().enumerate() {
            valid[r * l..r * l + n].fill(1);
        }
        let valid = Array::from_bytes(&valid, &[b, l], Dtype::Bool)?;
        let hidden = self.encoder.forward(rows, &valid)?;
        let mut pooled = self.pooling.apply(&hidden, &valid, &lengths)?;
        if normalize {
            pooled = pooling::l2_normalize(&pooled)?;
        }
        Ok(pooled.astype(Dtype::Float32)?.to_vec::<f32>()?)
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(EmbedError::DimensionMismatch {
            left: a.len(),
            right: b.len(),
        });
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return Ok(0.0);
    }
    Ok((dot / (na.sqrt() * nb.sqrt())) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine() {
        assert!((cosine_similarity(&[1.0, 0.0], &[1.0, 0.0]).unwrap() - 1.0).abs() < 1e-7);
        assert!(cosine_similarity(&[1.0, 0.0], &[0.0, 2.0]).unwrap().abs() < 1e-7);
        assert!((cosine_similarity(&[1.0, 1.0], &[-2.0, -2.0]).unwrap() + 1.0).abs() < 1e-7);
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 2.0]).unwrap(), 0.0);
        assert!(matches!(
            cosine_similarity(&[1.0], &[1.0, 2.0]),
            Err(EmbedError::DimensionMismatch { left: 1, right: 2 })
        ));
    }

    #[test]
    fn known_family_prompts() {
        assert_eq!(known_prompts("e5-small-v2")["query"], "query: ");
        assert_eq!(known_prompts("multilingual-e5-base")["document"], "passage: ");
        assert!(known_prompts("bge-small-en-v1.5")["query"].starts_with("Represent"));
        assert!(known_prompts("all-MiniLM-L6-v2").is_empty());
        assert_eq!(known_prompts("intfloat/e5-small-v2")["query"], "query: ");
    }

    #[test]
    fn names_of_a_pulled_copy() {
        let p = Path::new("/c/hub/models--intfloat--e5-small-v2/snapshots/abc");
        assert_eq!(hf_cache_repo_id(p).as_deref(), Some("intfloat/e5-small-v2"));
        assert_eq!(hf_cache_repo_id(Path::new("/m/e5-small-v2")), None);
        assert_eq!(hf_cache_repo_id(Path::new("/c/datasets--a--b/snapshots/abc")), None);
        let cfg = serde_json::json!({"_name_or_path": "BAAI/bge-small-en-v1.5"});
        assert_eq!(
            model_names(Path::new("/m/copy"), &cfg),
            ["copy", "BAAI/bge-small-en-v1.5"]
        );
    }
}
