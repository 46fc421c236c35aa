//! The curated model catalogue, embedded from `registry.toml` at build time, and its search.

use crate::error::{DeviceError, Result};
use engine_core::{FeatureFlag, ModelType};
use serde::{Deserialize, Serialize};

/// The registry file compiled into the binary.
pub const BUILTIN_REGISTRY_TOML: &str = include_str!("../registry.toml");

/// The catalogue: models, each in one or more downloadable variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// All entries, in file order.
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

/// One model of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Stable id used on the command line (`qwen2.5-0.5b-instruct`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// What kind of model it is.
    #[serde(rename = "type")]
    pub model_type: ModelType,
    /// Model family (`qwen2.5`, `llama3.2`, `bge`).
    pub family: String,
    /// Architecture as in config.json's `model_type` (`llama`, `qwen2`, `bert`).
    pub architecture: String,
    /// Parameter count (all components).
    pub params: u64,
    /// Longest context in tokens (text tokens for diffusion's prompt encoder).
    pub context_length: u64,
    /// License identifier.
    pub license: String,
    /// Whether the Hub requires accepting the license (and a token) before download.
    pub gated: bool,
    /// Whether the architecture numbers were checked against a real local copy by a test.
    pub verified: bool,
    /// One-line description.
    pub description: String,
    /// What the model can do.
    pub capabilities: Vec<FeatureFlag>,
    /// Transformer shape (LLM, VLM text model, embedding encoders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ArchConfig>,
    /// Vision encoder of a VLM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionConfig>,
    /// Shape facts of a diffusion pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionConfig>,
    /// Default generation parameters.
    pub generation: GenerationDefaults,
    /// Downloadable variants (precision / format).
    pub variants: Vec<Variant>,
}

/// The numbers of a transformer that memory estimates need (from its config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// Transformer blocks.
    pub layers: u64,
    /// Model width.
    pub hidden_size: u64,
    /// Query heads.
    pub attention_heads: u64,
    /// Key/value heads (GQA); 0 for encoders, which keep no KV cache.
    pub kv_heads: u64,
    /// Size of one head.
    pub head_dim: u64,
    /// MLP width.
    pub intermediate_size: u64,
    /// Vocabulary size.
    pub vocab_size: u64,
    /// Window of the sliding-window layers, when the model has them (Gemma 2/3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<u64>,
    /// Every n-th layer attends globally, the others use the sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<u64>,
}

/// The vision encoder of a VLM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Parameters of the vision tower and projector.
    pub params: u64,
    /// Patches per image at the default resolution.
    pub tokens: u64,
    /// Vision encoder width.
    pub hidden_size: u64,
    /// Vision encoder heads.
    pub attention_heads: u64,
}

/// Shape facts of a latent-diffusion pipeline that drive its activation memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    /// Default output side in pixels.
    pub image_size: u64,
    /// Latent channels.
    pub latent_channels: u64,
    /// Sequence length of the UNet's largest self-attention.
    pub attention_tokens: u64,
    /// Heads of that attention.
    pub attention_heads: u64,
    /// Batch the UNet runs at: 2 with classifier-free guidance, 1 without.
    pub cfg_batch: u64,
}

/// Default generation parameters; which fields apply depends on the model type.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationDefaults {
    /// Sampling temperature (LLM/VLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling (LLM/VLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling (LLM/VLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    /// Default response length (LLM/VLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Repetition penalty (LLM/VLM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Pooling of token vectors: `mean` or `cls` (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling: Option<String>,
    /// Whether vectors are L2-normalised (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// Prefix for queries (embeddings, e.g. `query: `).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_prefix: Option<String>,
    /// Prefix for documents (embeddings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_prefix: Option<String>,
    /// Denoising steps (diffusion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (diffusion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    /// Image width (diffusion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height (diffusion).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// File layout of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// The original Hugging Face safetensors checkpoint.
    Safetensors,
    /// An MLX-converted checkpoint (quantized with MLX's affine scheme).
    Mlx,
    /// A single GGUF file.
    Gguf,
    /// A diffusers pipeline folder.
    Diffusers,
}

/// One downloadable form of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Variant name used with `--variant` (`bf16`, `8bit`, `4bit`, `q8_0-gguf`).
    pub name: String,
    /// File layout.
    pub format: WeightFormat,
    /// Precise quantization (`bf16`, `affine-4bit-g64`, `q4_1`).
    pub quantization: String,
    /// Nominal bits per weight (32, 16, 8, 4).
    pub bits: u32,
    /// Hugging Face repository (`owner/name`).
    pub repo: String,
    /// Git revision (`main` or a commit).
    pub revision: String,
    /// Whether `revision` is a pinned commit that was checked.
    pub revision_verified: bool,
    /// The file to fetch when the repo holds several alternatives (GGUF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size of the weight files in bytes.
    pub file_size_bytes: u64,
    /// Whether `file_size_bytes` is computed (parameters × bits) rather than measured.
    pub size_estimated: bool,
    /// Provenance or caveats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

impl Variant {
    /// Whether the weights are stored quantized (8 bits or fewer).
    pub fn is_quantized(&self) -> bool {
        self.bits <= 8
    }
}

/// A registry search; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Case-insensitive words that must all appear in the id, name, family, architecture,
    /// description or the original checkpoint's repo.
    pub text: Option<String>,
    /// Only this model type.
    pub model_type: Option<ModelType>,
    /// Smallest variant file size in bytes (at least one variant must be within the range).
    pub min_size_bytes: Option<u64>,
    /// Largest variant file size in bytes.
    pub max_size_bytes: Option<u64>,
    /// Only variants whose name or quantization contains this (`4bit`, `gguf`, `bf16`).
    pub quantization: Option<String>,
    /// Capabilities the model must all have.
    pub capabilities: Vec<FeatureFlag>,
}

/// One search hit: an entry and those of its variants that matched the size and
/// quantization filters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit<'a> {
    /// The entry's id.
    pub id: &'a str,
    /// The entry's display name.
    pub name: &'a str,
    /// The entry's type.
    #[serde(rename = "type")]
    pub model_type: ModelType,
    /// Parameter count.
    pub params: u64,
    /// Context length.
    pub context_length: u64,
    /// License.
    pub license: &'a str,
    /// Capabilities.
    pub capabilities: &'a [FeatureFlag],
    /// Variants that passed the filters.
    pub variants: Vec<&'a Variant>,
}

impl Registry {
    /// The catalogue compiled into this binary.
    ///
    /// The embedded file is checked by this crate's tests, so failure here means a broken build.
    pub fn builtin() -> &'static Registry {
        use std::sync::OnceLock;
        static REG: OnceLock<Registry> = OnceLock::new();
        REG.get_or_init(|| {
            Registry::from_toml(BUILTIN_REGISTRY_TOML).unwrap_or_else(|e| {
                tracing::error!("{e}");
                Registry { models: Vec::new() }
            })
        })
    }

    /// Parses and validates a registry file.
    pub fn from_toml(text: &str) -> Result<Registry> {
        let reg: Registry = toml::from_str(text).map_err(|e| DeviceError::InvalidRegistry(e.to_string()))?;
        let problems = reg.validate();
        if let Some(first) = problems.first() {
            return Err(DeviceError::InvalidRegistry(format!(
                "{first} (and {} more problems)",
                problems.len() - 1
            )));
        }
        Ok(reg)
    }

    /// Every structural problem of the catalogue, one line each; empty when it is sound.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for m in &self.models {
            let id = &m.id;
            if !ids.insert(id.as_str()) {
                p.push(format!("duplicate id `{id}`"));
            }
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
            {
                p.push(format!("id `{id}` must be lowercase letters, digits, `-`, `.`, `_`"));
            }
            for (field, value) in [
                ("name", &m.name),
                ("family", &m.family),
                ("architecture", &m.architecture),
                ("license", &m.license),
                ("description", &m.description),
            ] {
                if value.trim().is_empty() {
                    p.push(format!("`{id}`: empty {field}"));
                }
            }
            if m.params == 0 || m.context_length == 0 {
                p.push(format!("`{id}`: params and context_length must be positive"));
            }
            if m.capabilities.is_empty() {
                p.push(format!("`{id}`: no capabilities"));
            }
            if m.variants.is_empty() {
                p.push(format!("`{id}`: no variants"));
            }
            let g = &m.generation;
            match m.model_type {
                ModelType::Llm | ModelType::Vlm => {
                    match &m.config {
                        Some(c) if c.kv_heads > 0 && c.attention_heads % c.kv_heads == 0 => {}
                        _ => p.push(format!(
                            "`{id}`: a decoder needs [model.config] with kv_heads dividing attention_heads"
                        )),
                    }
                    if g.temperature.is_none() || g.top_p.is_none() || g.max_tokens.is_none() {
                        p.push(format!("`{id}`: generation needs temperature, top_p, max_tokens"));
                    }
                    if m.model_type == ModelType::Vlm && m.vision.is_none() {
                        p.push(format!("`{id}`: a VLM needs [model.vision]"));
                    }
                }
                ModelType::Embedding => {
                    if m.config.is_none() {
                        p.push(format!("`{id}`: an embedding model needs [model.config]"));
                    }
                    if g.pooling.is_none() || g.normalize.is_none() {
                        p.push(format!("`{id}`: generation needs pooling and normalize"));
                    }
                }
                ModelType::Diffusion => {
                    if m.diffusion.is_none() {
                        p.push(format!("`{id}`: a diffusion model needs [model.diffusion]"));
                    }
                    if g.steps.is_none() || g.guidance_scale.is_none() || g.width.is_none() {
                        p.push(format!("`{id}`: generation needs steps, guidance_scale, width, height"));
                    }
                }
            }
            if let Some(c) = &m.config {
                if [c.layers, c.hidden_size, c.attention_heads, c.head_dim, c.vocab_size].contains(&0) {
                    p.push(format!("`{id}`: config has a zero dimension"));
                }
            }
            let mut names = std::collections::HashSet::new();
            for v in &m.variants {
                if !names.insert(v.name.as_str()) {
                    p.push(format!("`{id}`: duplicate variant `{}`", v.name));
                }
                if !is_repo_name(&v.repo) {
                    p.push(format!("`{id}` {}: repo `{}` is not `owner/name`", v.name, v.repo));
                }
                if v.revision.trim().is_empty() {
                    p.push(format!("`{id}` {}: empty revision", v.name));
                }
                if v.format == WeightFormat::Gguf && v.file.as_deref().is_none_or(|f| !f.ends_with(".gguf")) {
                    p.push(format!("`{id}` {}: a GGUF variant needs `file = \"....gguf\"`", v.name));
                }
                if ![4, 8, 16, 32].contains(&v.bits) {
                    p.push(format!("`{id}` {}: bits must be 4, 8, 16 or 32", v.name));
                }
                // Stored bytes per parameter: at least bits/8 for the quantized part, and never
                // more than 16-bit everything plus slack (VLMs keep their vision tower 16-bit).
                let bpw = v.file_size_bytes as f64 * 8.0 / m.params as f64;
                let lo = v.bits as f64 * 0.9;
                let hi = (v.bits as f64 * 1.25 + 1.5).max(if m.vision.is_some() { 16.0 } else { 0.0 });
                if !(lo..=hi).contains(&bpw) {
                    p.push(format!(
                        "`{id}` {}: {} bytes is {bpw:.2} bits per parameter, implausible for {} bits",
                        v.name, v.file_size_bytes, v.bits
                    ));
                }
            }
        }
        p
    }

    /// The entry with this id (case-insensitive).
    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id.eq_ignore_ascii_case(id.trim()))
    }

    /// The entry with this id, or an error naming the closest ids.
    pub fn lookup(&self, id: &str) -> Result<&ModelEntry> {
        self.get(id).ok_or_else(|| {
            let needle = id.trim().to_ascii_lowercase();
            let close: Vec<&str> = self
                .models
                .iter()
                .filter(|m| needle.len() >= 3 && (m.id.contains(&needle) || needle.contains(m.family.as_str())))
                .map(|m| m.id.as_str())
                .take(5)
                .collect();
            DeviceError::UnknownModel {
                id: id.to_string(),
                hint: if close.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {}?)", close.join(", "))
                },
            }
        })
    }

    /// Entries of one type.
    pub fn of_type(&self, t: ModelType) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(move |m| m.model_type == t)
    }

    /// Entries matching `q`, in catalogue order.
    pub fn search<'a>(&'a self, q: &Query) -> Vec<SearchHit<'a>> {
        let words: Vec<String> = q
            .text
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        let quant = q.quantization.as_deref().map(str::to_ascii_lowercase);
        self.models
            .iter()
            .filter(|m| q.model_type.is_none_or(|t| t == m.model_type))
            .filter(|m| q.capabilities.iter().all(|c| m.capabilities.contains(c)))
            .filter(|m| {
                // The first variant's repo is the original checkpoint; the others' names
                // (`-8bit`, `-GGUF`) would make words like `8b` match every model.
                let hay = format!(
                    "{} {} {} {} {} {}",
                    m.id,
                    m.name,
                    m.family,
                    m.architecture,
                    m.description,
                    m.variants.first().map_or("", |v| v.repo.as_str())
                )
                .to_lowercase();
                words.iter().all(|w| hay.contains(w.as_str()))
            })
            .filter_map(|m| {
                let variants: Vec<&Variant> = m
                    .variants
                    .iter()
                    .filter(|v| q.min_size_bytes.is_none_or(|s| v.file_size_bytes >= s))
                    .filter(|v| q.max_size_bytes.is_none_or(|s| v.file_size_bytes <= s))
                    .filter(|v| {
                        quant.as_deref().is_none_or(|qq| {
                            v.name.to_ascii_lowercase().contains(qq)
                                || v.quantization.to_ascii_lowercase().contains(qq)
                                || (qq == "gguf" && v.format == WeightFormat::Gguf)
                        })
                    })
                    .collect();
                (!variants.is_empty()).then(|| SearchHit {
                    id: &m.id,
                    name: &m.name,
                    model_type: m.model_type,
                    params: m.params,
                    context_length: m.context_length,
                    license: &m.license,
                    capabilities: &m.capabilities,
                    variants,
                })
            })
            .collect()
    }
}

impl ModelEntry {
    /// The variant with this name (case-insensitive).
    pub fn variant(&self, name: &str) -> Result<&Variant> {
        self.variants
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| DeviceError::UnknownVariant {
                id: self.id.clone(),
                variant: name.to_string(),
                available: self
                    .variants
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// `owner/name` with Hub-legal characters.
fn is_repo_name(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['-', '.'])
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    };
    matches!(s.split_once('/'), Some((o, n)) if ok(o) && ok(n) && !n.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert!(is_repo_name("Qwen/Qwen2.5-0.5B-Instruct"));
        assert!(is_repo_name("mlx-community/Meta-Llama-3.1-8B-Instruct-4bit"));
        for bad in ["", "noslash", "a/b/c", "/x", "x/", "a b/c", "-a/b"] {
            assert!(!is_repo_name(bad), "{bad}");
        }
    }

    #[test]
    fn malformed_registry_is_rejected_with_the_reason() {
        let e = Registry::from_toml("[[model]]\nid = 3").unwrap_err().to_string();
        assert!(e.starts_with("model registry is invalid"), "{e}");
        let dup = format!("{0}\n{0}", entry_toml());
        let e = Registry::from_toml(&dup).unwrap_err().to_string();
        assert!(e.contains("duplicate id `tiny`"), "{e}");
        let bad_size = entry_toml().replace("file_size_bytes = 2000", "file_size_bytes = 9");
        let e = Registry::from_toml(&bad_size).unwrap_err().to_string();
        assert!(e.contains("implausible"), "{e}");
        assert!(Registry::from_toml(&entry_toml()).is_ok());
    }

    fn entry_toml() -> String {
        r#"[[model]]
id = "tiny"
name = "Tiny"
type = "llm"
family = "t"
architecture = "llama"
params = 1000
context_length = 64
license = "mit"
gated = false
verified = false
description = "d"
capabilities = ["chat"]
config = { layers = 1, hidden_size = 8, attention_heads = 2, kv_heads = 1, head_dim = 4, intermediate_size = 16, vocab_size = 10 }
generation = { temperature = 0.5, top_p = 0.9, max_tokens = 8 }
[[model.variants]]
name = "bf16"
format = "safetensors"
quantization = "bf16"
bits = 16
repo = "a/b"
revision = "main"
revision_verified = false
file_size_bytes = 2000
size_estimated = true
"#
        .to_string()
    }
}
