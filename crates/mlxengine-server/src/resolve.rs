//! Model names → files on disk, and what kind of model a path holds.
//!
//! Names resolve as the facade's `InferenceEngine::resolve` resolves them,
//! with one difference: a name a *client* sends is looked up in the local
//! Hugging Face cache only, unless the server runs with `--allow-pull`.

use engine_core::ModelType;
use engine_hub::{HubClient, HubConfig};
use mlxengine::InferenceEngine;
use std::path::{Path, PathBuf};

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Text generation.
    Text,
    /// Text generation with images.
    Vision,
    /// Embeddings.
    Embedding,
    /// Text-to-image (a diffusers pipeline folder).
    Image,
}

impl ModelKind {
    /// Whether it answers chats and completions.
    pub fn generates(self) -> bool {
        matches!(self, ModelKind::Text | ModelKind::Vision)
    }
}

/// Encoder `model_type`s that engine-embed runs.
const ENCODER_TYPES: &[&str] = &["bert", "roberta", "xlm-roberta", "camembert", "modernbert"];

/// What the model at `path` is: a `.gguf` file generates text; a folder whose
/// engine-vlm runs with images is a vision model (a multimodal checkpoint of
/// another architecture runs text-only); a sentence-transformers folder or an
/// encoder config is an embedding model; anything else generates text.
pub fn kind_of(path: &Path) -> ModelKind {
    if path.is_file() {
        return ModelKind::Text;
    }
    if path.join("model_index.json").is_file() {
        return ModelKind::Image;
    }
    if path.join("modules.json").is_file() || path.join("config_sentence_transformers.json").is_file() {
        return ModelKind::Embedding;
    }
    let cfg: serde_json::Value = std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let model_type = cfg["model_type"].as_str().unwrap_or_default();
    if engine_vlm::runs_with_images(path) {
        ModelKind::Vision
    } else if ENCODER_TYPES.contains(&model_type) {
        ModelKind::Embedding
    } else {
        ModelKind::Text
    }
}

/// The id a model is served under: the file or folder name for a path, the
/// name as given otherwise.
pub fn served_id(name: &str) -> String {
    let path = Path::new(name);
    if path.exists() {
        if let Some(n) = path.file_name() {
            return n.to_string_lossy().into_owned();
        }
    }
    name.to_string()
}

/// Finds models by name: paths, registry ids and Hugging Face repos, as the
/// facade's [`InferenceEngine::resolve`] does.
pub struct Resolver {
    /// Honours `HF_HUB_OFFLINE`; may download.
    online: Option<InferenceEngine>,
    /// Never touches the network: answers from the cache.
    offline: Option<InferenceEngine>,
    allow_pull: bool,
}

impl Resolver {
    /// A resolver configured from the environment (`HF_HOME`, `HF_ENDPOINT`, ...).
    pub fn from_env(allow_pull: bool) -> Resolver {
        let config = HubConfig::from_env().ok();
        let offline = config.clone().map(|mut c| {
            c.offline = true;
            InferenceEngine::with_hub(HubClient::new(c))
        });
        Resolver {
            online: config.map(|c| InferenceEngine::with_hub(HubClient::new(c))),
            offline,
            allow_pull,
        }
    }

    /// Registry ids pick the variant that fits one rank of `split` (a model
    /// served under `mlxengine launch`).
    pub fn for_split(mut self, split: Option<&engine_llm::Split>) -> Resolver {
        let plan = split.map(mlxengine::rank_split);
        for engine in [&mut self.online, &mut self.offline].into_iter().flatten() {
            engine.split = plan;
        }
        self
    }

    /// Resolves a `--model` given on the command line (downloads allowed, as
    /// `mlxengine run` does); a registry id is fetched as its own type.
    pub fn resolve_preload(&self, name: &str) -> Result<PathBuf, String> {
        let wanted = engine_device::Registry::builtin()
            .get(name)
            .map_or(ModelType::Llm, |e| e.model_type);
        self.resolve(name, wanted, self.online.as_ref())
    }

    /// Resolves a name a client sent: a local path, or the local cache (the
    /// hub too with `--allow-pull`).
    pub fn resolve_request(&self, name: &str, wanted: ModelType) -> Result<PathBuf, String> {
        let engine = if self.allow_pull {
            self.online.as_ref()
        } else {
            self.offline.as_ref()
        };
        self.resolve(name, wanted, engine)
    }

    fn resolve(&self, name: &str, wanted: ModelType, engine: Option<&InferenceEngine>) -> Result<PathBuf, String> {
        let path = Path::new(name);
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        let engine = engine.ok_or_else(|| "the Hugging Face cache is not configured".to_string())?;
        engine.resolve(name, wanted, &mut |_| {}).map_err(|e| {
            let cached_only = !self.allow_pull && matches!(e, mlxengine::Error::Hub(_));
            let hint = if cached_only {
                " (downloads need `mlxengine serve --allow-pull`, or `mlxengine pull` first)"
            } else {
                ""
            };
            format!("{e}{hint}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        assert_eq!(kind_of(d), ModelKind::Text);
        std::fs::write(d.join("config.json"), r#"{"model_type": "llava", "vision_config": {}}"#).unwrap();
        assert_eq!(kind_of(d), ModelKind::Vision);
        std::fs::write(
            d.join("config.json"),
            r#"{"model_type": "gemma3", "vision_config": {}}"#,
        )
        .unwrap();
        assert_eq!(kind_of(d), ModelKind::Vision);
        // A multimodal architecture whose tower is not implemented serves text-only.
        std::fs::write(
            d.join("config.json"),
            r#"{"model_type": "mllama", "vision_config": {}}"#,
        )
        .unwrap();
        assert_eq!(kind_of(d), ModelKind::Text);
        std::fs::write(d.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
        assert_eq!(kind_of(d), ModelKind::Embedding);
        let f = d.join("m.gguf");
        std::fs::write(&f, b"GGUF").unwrap();
        assert_eq!(kind_of(&f), ModelKind::Text);
        assert_eq!(served_id(&f.to_string_lossy()), "m.gguf");
        assert_eq!(served_id("org/name"), "org/name");
    }

    #[test]
    fn missing_paths_never_reach_the_hub() {
        let cache = tempfile::tempdir().unwrap();
        let mut config = HubConfig::from_env().unwrap();
        config.cache_dir = cache.path().to_path_buf();
        // An endpoint nothing listens on: a lookup that reached it would fail differently.
        config.endpoint = "http://127.0.0.1:9".into();
        config.offline = true;
        let r = Resolver {
            online: None,
            offline: Some(InferenceEngine::with_hub(HubClient::new(config))),
            allow_pull: false,
        };
        let e = r.resolve_request("./nope.gguf", ModelType::Llm).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        let e = r.resolve_request("org/not-cached", ModelType::Llm).unwrap_err();
        assert!(e.contains("--allow-pull"), "{e}");
        let e = r.resolve_request("all-minilm-l6-v2", ModelType::Llm).unwrap_err();
        assert!(
            e.contains("embedding"),
            "a registry embedding model is not a text model: {e}"
        );
    }
}
