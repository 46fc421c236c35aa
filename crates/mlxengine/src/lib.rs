//! MLXEngine: `load → generate / stream / embed` on MLX, with no ML plumbing.
//!
//! ```no_run
//! use mlxengine::{ChatMessage, GenerateParams, InferenceEngine, Prompt, TextGenerator};
//! let engine = InferenceEngine::new()?;
//! let mut model = engine.load_text("SmolLM2-135M-Instruct.Q4_1.gguf", &mut |_| {})?;
//! let reply = model.generate(&Prompt::Chat(vec![ChatMessage::new("user", "Hi!")]), &GenerateParams::greedy(32))?;
//! println!("{}", reply.text);
//! # Ok::<(), mlxengine::Error>(())
//! ```
//!
//! Cargo features gate whole crates: `llm`, `vlm`, `embed`, `diffusion`, `hub`,
//! `device` (all on by default), `cuda`; [`can_load`] says which model types a
//! build loads. Images come from [`InferenceEngine::load_image_generator`], which
//! runs behind the backend-neutral [`ImageGenerator`] trait.
#![warn(missing_docs)]

pub use engine_core::{
    ChatMessage, EngineError, FeatureFlag, FinishReason, GenerateParams, Generation, GenerationStats, ImageF32,
    ImageGenerator, ImageRequest, ImageSource, Latents, LoadProgress, MockTextGenerator, ModelConfiguration,
    ModelSource, ModelType, Prompt, StepProgress, StreamEvent, TextGenerator,
};
#[cfg(feature = "device")]
pub use engine_device as device;
#[cfg(feature = "diffusion")]
pub use engine_diffusion::{DiffusionError, ImagePipeline, SchedulerConfig, SchedulerKind};
#[cfg(feature = "embed")]
pub use engine_embed::{cosine_similarity, EmbedOptions, Embedder};
#[cfg(feature = "hub")]
pub use engine_hub as hub;
/// Writing MLX model folders that mlx-lm loads (`mlxengine convert`).
#[cfg(feature = "llm")]
pub use engine_llm::export;
#[cfg(feature = "llm")]
pub use engine_llm::{ChatHistory, ChatSession, ChatTurn, DtypePolicy, LlmModel, LoadOptions, Split, SplitMode};
pub use engine_mlx as mlx;

/// What engine-device's per-rank memory estimates need to know of `split`
/// (how many ranks, by heads or by layers).
#[cfg(all(feature = "llm", feature = "device"))]
pub fn rank_split(split: &Split) -> engine_device::RankSplit {
    engine_device::RankSplit {
        ranks: split.group.size() as u64,
        mode: match split.mode {
            SplitMode::Tensor => engine_device::SplitKind::Tensor,
            SplitMode::Pipeline => engine_device::SplitKind::Pipeline,
        },
    }
}
#[cfg(feature = "vlm")]
pub use engine_vlm::{
    image::ImageLimits, models::SUPPORTED as VLM_ARCHITECTURES, multimodal_architecture, runs_with_images,
    VlmChatSession, VlmModel,
};

use std::path::{Path, PathBuf};

/// Errors of the facade: each wraps the failing layer's own message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading or running a model failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Embedding failed.
    #[cfg(feature = "embed")]
    #[error(transparent)]
    Embed(#[from] engine_embed::EmbedError),
    /// Loading an image-generation pipeline failed.
    #[cfg(feature = "diffusion")]
    #[error(transparent)]
    Diffusion(#[from] engine_diffusion::DiffusionError),
    /// A download or cache operation failed.
    #[cfg(feature = "hub")]
    #[error(transparent)]
    Hub(#[from] engine_hub::HubError),
    /// An Ollama-style reference (`org/repo:TAG`) names no single GGUF file
    /// (an unknown tag, a split GGUF, …). Its listing, download and cache
    /// failures are [`Error::Hub`].
    #[cfg(feature = "hub")]
    #[error(transparent)]
    Gguf(engine_hub::GgufError),
    /// Device or registry lookup failed (e.g. the model does not fit).
    #[cfg(feature = "device")]
    #[error(transparent)]
    Device(#[from] engine_device::DeviceError),
    /// The model name is neither a path, a registry id nor a repo id.
    #[error("cannot find model `{0}`: it is not a local file or folder{1}")]
    NotFound(String, &'static str),
    /// The model name looks like a local path (a file extension, a leading
    /// `.`, `/` or `~`, several folders, or a parent folder that exists), but
    /// nothing is there; such a name is never looked up on the hub.
    #[error(
        "no such file or folder: {0} (a name that looks like a path is not looked up on the hub; \
         check the path, or give a registry id or an `org/name` repo id)"
    )]
    NoSuchPath(PathBuf),
    /// A registry id names a model of another type than the command loads
    /// (checked before any download).
    #[error("`{id}` is a registry entry of type `{entry_type}`, but this loads `{wanted}` models; {hint}")]
    WrongModelType {
        /// The registry id.
        id: String,
        /// The entry's type.
        entry_type: ModelType,
        /// The type asked for.
        wanted: ModelType,
        /// What runs the entry's type, or why this build cannot.
        hint: String,
    },
}

/// Facade result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(feature = "hub")]
impl From<engine_hub::GgufError> for Error {
    /// Hub failures stay [`Error::Hub`], so callers match one variant for them.
    fn from(e: engine_hub::GgufError) -> Self {
        match e {
            engine_hub::GgufError::Hub(h) => Error::Hub(h),
            other => Error::Gguf(other),
        }
    }
}

/// The reference when `model` can only mean the hub: `hf.co/org/repo` or
/// `org/repo:TAG` (Ollama's syntax). Such a name is never taken for a
/// mistyped path, even though `hf.co/org/repo` has several `/`.
#[cfg(feature = "hub")]
fn hub_reference(model: &str) -> Option<engine_hub::ModelRef> {
    engine_hub::ModelRef::parse(model).ok().filter(|r| r.is_explicit())
}

/// Whether this build can load models of type `t`: the facade's cargo
/// features (`llm`, `vlm`, `embed`, `diffusion`) gate whole crates.
pub fn can_load(t: ModelType) -> bool {
    match t {
        ModelType::Llm => cfg!(feature = "llm"),
        ModelType::Vlm => cfg!(feature = "vlm"),
        ModelType::Embedding => cfg!(feature = "embed"),
        ModelType::Diffusion => cfg!(feature = "diffusion"),
    }
}

/// The model types this build can load, in display order.
pub fn loadable_types() -> Vec<ModelType> {
    ModelType::ALL.into_iter().filter(|&t| can_load(t)).collect()
}

/// The cargo feature of the facade that loads models of type `t`.
pub fn feature_for(t: ModelType) -> &'static str {
    match t {
        ModelType::Llm => "llm",
        ModelType::Vlm => "vlm",
        ModelType::Embedding => "embed",
        ModelType::Diffusion => "diffusion",
    }
}

/// How to run a model of type `t` named `id`, or why this build cannot.
#[cfg(all(feature = "hub", feature = "device"))]
fn how_to_run(t: ModelType, id: &str) -> String {
    if !can_load(t) {
        return format!(
            "this build cannot run `{t}` models (it was built without the mlxengine crate's `{}` feature)",
            feature_for(t)
        );
    }
    match t {
        ModelType::Llm => format!("run it with `mlxengine run {id}` (InferenceEngine::load_text)"),
        ModelType::Vlm => format!("run it with `mlxengine run {id} --image FILE` (InferenceEngine::load_vision)"),
        ModelType::Embedding => format!("run it with `mlxengine embed {id}` (InferenceEngine::load_embedder)"),
        ModelType::Diffusion => format!("run it with `mlxengine imagine {id}` (InferenceEngine::load_image_generator)"),
    }
}

/// Whether a registry entry of type `entry` serves a load of type `wanted`:
/// the same type, or a vision-language model for text (it answers text-only
/// prompts too).
#[cfg(all(feature = "hub", feature = "device"))]
fn serves(entry: ModelType, wanted: ModelType) -> bool {
    entry == wanted || (wanted == ModelType::Llm && entry == ModelType::Vlm && can_load(ModelType::Vlm))
}

/// Whether a model name that is not on disk was meant as a local path: it has
/// a model file's extension, starts with `.`, `/` or `~`, holds a backslash or
/// more than one `/` (a repo id is exactly `org/name`), or its parent folder
/// exists. Such a name is never sent to the hub.
fn looks_like_path(model: &str) -> bool {
    const EXTENSIONS: &[&str] = &[
        "gguf",
        "safetensors",
        "json",
        "bin",
        "pt",
        "pth",
        "ckpt",
        "onnx",
        "npz",
        "mlx",
        "model",
        "txt",
    ];
    let path = Path::new(model);
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    model.starts_with(['.', '/', '~'])
        || model.contains('\\')
        || model.matches('/').count() > 1
        || EXTENSIONS.contains(&ext.as_str())
        || path.parent().is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir())
}

/// What to report while a model is fetched and loaded.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Download progress (bytes done / total).
    Download {
        /// File being fetched.
        file: String,
        /// Bytes done across all files.
        done: u64,
        /// Bytes in all files.
        total: u64,
    },
    /// Load progress.
    Load(LoadProgress),
}

/// The entry point: resolves model names (path, `.gguf`, registry id,
/// Hugging Face repo) and loads models.
pub struct InferenceEngine {
    #[cfg(feature = "hub")]
    hub: Option<engine_hub::HubClient>,
    /// Variant to use for registry ids (`None`: the best for this device).
    pub variant: Option<String>,
    /// The model will be split across processes (`mlxengine launch`): a registry id's
    /// variant is chosen for one rank's share.
    #[cfg(feature = "device")]
    pub split: Option<engine_device::RankSplit>,
    /// Hub revision for repo ids.
    pub revision: String,
}

impl InferenceEngine {
    /// An engine configured from the environment (`HF_ENDPOINT`, `HF_TOKEN`,
    /// `HF_HUB_OFFLINE`, `HF_HOME`).
    pub fn new() -> Result<InferenceEngine> {
        Ok(InferenceEngine {
            #[cfg(feature = "hub")]
            hub: Some(engine_hub::HubClient::from_env()?),
            variant: None,
            #[cfg(feature = "device")]
            split: None,
            revision: "main".into(),
        })
    }

    /// An engine that downloads with `hub` (its endpoint, cache and offline
    /// setting) instead of one configured from the environment.
    #[cfg(feature = "hub")]
    pub fn with_hub(hub: engine_hub::HubClient) -> InferenceEngine {
        InferenceEngine {
            hub: Some(hub),
            variant: None,
            #[cfg(feature = "device")]
            split: None,
            revision: "main".into(),
        }
    }

    /// A flag that stops a download in progress (a pull on first use): the
    /// download ends at its next read with [`engine_hub::HubError::Cancelled`]
    /// and keeps its partial file, which the next attempt resumes.
    #[cfg(feature = "hub")]
    pub fn cancel_flag(&self) -> Option<engine_hub::CancelFlag> {
        self.hub.as_ref().map(|h| h.cancel_flag())
    }

    /// Finds `model` locally, or pulls it: a path is used as is; a registry
    /// id picks the variant that fits this device; `org/name` is a Hugging
    /// Face repo. `org/name:TAG` and `hf.co/org/name[:TAG]` (Ollama's syntax)
    /// resolve to one `.gguf` file of the repo, the one whose quant the tag
    /// names (`:Q4_K_M`, `:q8_0`, …); a GGUF-only repo named without a tag
    /// gets its default quant (see [`engine_hub::ModelRef`] and
    /// [`engine_hub::select_gguf`]). Only that file is downloaded, and a
    /// cached one resolves offline.
    ///
    /// Fails without touching the network when `model` looks like a path
    /// that does not exist ([`Error::NoSuchPath`]), or is a registry entry of
    /// another type than `model_type` ([`Error::WrongModelType`]).
    // Without the hub, only local paths resolve: the type and progress go unused.
    #[cfg_attr(not(feature = "hub"), allow(unused_variables))]
    pub fn resolve(&self, model: &str, model_type: ModelType, progress: &mut dyn FnMut(Progress)) -> Result<PathBuf> {
        let path = Path::new(model);
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        #[cfg(feature = "hub")]
        if let Some(reference) = hub_reference(model) {
            return self.pull_ref(&reference, model_type, progress);
        }
        if looks_like_path(model) {
            return Err(Error::NoSuchPath(path.to_path_buf()));
        }
        #[cfg(all(feature = "hub", feature = "device"))]
        if let Some(entry) = engine_device::Registry::builtin().get(model) {
            if !serves(entry.model_type, model_type) {
                return Err(Error::WrongModelType {
                    id: entry.id.clone(),
                    entry_type: entry.model_type,
                    wanted: model_type,
                    hint: how_to_run(entry.model_type, &entry.id),
                });
            }
            let device = engine_device::DeviceReport::detect();
            let sel = engine_device::select_variant(
                &entry.id,
                self.variant.as_deref(),
                &device,
                &engine_device::MemoryBudget::default(),
                &engine_device::Purpose {
                    split: self.split,
                    ..Default::default()
                },
            )?;
            tracing::info!(id = %sel.id, variant = %sel.variant, reason = %sel.reason, "selected");
            // The entry's own type picks the files (a VLM run for text still needs its vision tower).
            return self.pull(
                &sel.repo,
                &sel.revision,
                sel.file.as_deref(),
                entry.model_type,
                progress,
            );
        }
        #[cfg(feature = "hub")]
        match engine_hub::ModelRef::parse(model) {
            Ok(reference) => return self.pull_ref(&reference, model_type, progress),
            // A malformed `org/repo:TAG` says what is wrong with it.
            Err(e) if model.contains(':') => return Err(e.into()),
            Err(_) => {}
        }
        Err(Error::NotFound(
            model.into(),
            ", a registry id (`mlxengine search` lists them) or a Hugging Face repo id (`org/name`)",
        ))
    }

    /// Pulls a repo reference: the GGUF file its tag picks, or the files a
    /// model of `model_type` needs.
    #[cfg(feature = "hub")]
    fn pull_ref(
        &self,
        reference: &engine_hub::ModelRef,
        model_type: ModelType,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf> {
        let hub = self
            .hub
            .as_ref()
            .ok_or_else(|| Error::NotFound(reference.to_string(), " and no hub is configured"))?;
        let mut report = |p: &engine_hub::Progress| {
            progress(Progress::Download {
                file: p.file.clone(),
                done: p.total_bytes,
                total: p.total_size,
            })
        };
        let filter = engine_hub::FileFilter::for_model_type(model_type);
        Ok(hub.pull_ref(reference, &self.revision, &filter, &mut report)?)
    }

    /// Pulls a registry variant: its one file, or the files a model of
    /// `model_type` needs.
    #[cfg(all(feature = "hub", feature = "device"))]
    fn pull(
        &self,
        repo: &str,
        revision: &str,
        file: Option<&str>,
        model_type: ModelType,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf> {
        let hub = self
            .hub
            .as_ref()
            .ok_or(Error::NotFound(repo.into(), " and no hub is configured"))?;
        let repo = engine_hub::RepoId::parse(repo)?;
        let mut report = |p: &engine_hub::Progress| {
            progress(Progress::Download {
                file: p.file.clone(),
                done: p.total_bytes,
                total: p.total_size,
            })
        };
        match file {
            Some(f) => Ok(hub.get_file(&repo, revision, f, &mut report)?),
            None => Ok(hub
                .pull(
                    &repo,
                    revision,
                    &engine_hub::FileFilter::for_model_type(model_type),
                    &mut report,
                )?
                .path),
        }
    }

    /// Loads a text-generation model.
    #[cfg(feature = "llm")]
    pub fn load_text(&self, model: &str, progress: &mut dyn FnMut(Progress)) -> Result<LlmModel> {
        self.load_text_with(model, &LoadOptions::default(), progress)
    }

    /// Loads a text-generation model with options.
    #[cfg(feature = "llm")]
    pub fn load_text_with(
        &self,
        model: &str,
        options: &LoadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<LlmModel> {
        let path = self.resolve(model, ModelType::Llm, progress)?;
        Ok(LlmModel::load(&path, options, &mut |p| progress(Progress::Load(p)))?)
    }

    /// Loads a vision-language model (a folder whose config.json has a
    /// `vision_config`); it answers text-only prompts too.
    #[cfg(feature = "vlm")]
    pub fn load_vision(&self, model: &str, progress: &mut dyn FnMut(Progress)) -> Result<VlmModel> {
        self.load_vision_with(model, &LoadOptions::default(), progress)
    }

    /// Loads a vision-language model with options.
    #[cfg(feature = "vlm")]
    pub fn load_vision_with(
        &self,
        model: &str,
        options: &LoadOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<VlmModel> {
        let path = self.resolve(model, ModelType::Vlm, progress)?;
        Ok(VlmModel::load(&path, options, &mut |p| progress(Progress::Load(p)))?)
    }

    /// Loads an embedding model.
    #[cfg(feature = "embed")]
    pub fn load_embedder(&self, model: &str, progress: &mut dyn FnMut(Progress)) -> Result<Embedder> {
        let path = self.resolve(model, ModelType::Embedding, progress)?;
        Ok(Embedder::load(&path)?)
    }

    /// Loads an image-generation pipeline: a diffusers folder (`model_index.json`,
    /// `unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), a registry id
    /// or a repo. The result runs behind [`ImageGenerator`] (or its own
    /// [`ImagePipeline::generate_with`], whose errors keep their detail).
    #[cfg(feature = "diffusion")]
    pub fn load_image_generator(&self, model: &str, progress: &mut dyn FnMut(Progress)) -> Result<ImagePipeline> {
        let path = self.resolve(model, ModelType::Diffusion, progress)?;
        progress(Progress::Load(LoadProgress {
            stage: "loading the diffusion pipeline".into(),
            fraction: 0.0,
        }));
        let pipe = ImagePipeline::load(&path)?;
        progress(Progress::Load(LoadProgress {
            stage: "loading the diffusion pipeline".into(),
            fraction: 1.0,
        }));
        Ok(pipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_repo_ids_do_not_look_like_paths() {
        for id in [
            "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
            "bartowski/SmolLM2-135M-Instruct-GGUF",
            "intfloat/e5-small-v2",
        ] {
            assert!(!looks_like_path(id), "{id}");
        }
        #[cfg(feature = "device")]
        for entry in &engine_device::Registry::builtin().models {
            assert!(!looks_like_path(&entry.id), "{}", entry.id);
            for v in &entry.variants {
                assert!(!looks_like_path(&v.repo), "{}", v.repo);
            }
        }
        for path in ["model.gguf", "x/model.safetensors", "./m", "/m", "~/m", "a/b/c", "a\\b"] {
            assert!(looks_like_path(path), "{path}");
        }
    }

    #[cfg(feature = "hub")]
    #[test]
    fn ollama_references_mean_the_hub() {
        for (model, repo, tag) in [
            (
                "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
                "bartowski/Llama-3.2-1B-Instruct-GGUF",
                Some("Q4_K_M"),
            ),
            ("hf.co/org/repo:q8_0", "org/repo", Some("q8_0")),
            ("huggingface.co/org/repo", "org/repo", None),
        ] {
            let r = hub_reference(model).unwrap_or_else(|| panic!("{model}"));
            assert_eq!((r.repo.as_str(), r.tag.as_deref()), (repo, tag), "{model}");
        }
        // Paths and plain repo ids are not references that bypass the path checks.
        for other in ["model.gguf", "./m:Q4_K_M", "a/b/c:Q4_K_M", "org/repo", "C:\\m.gguf"] {
            assert!(hub_reference(other).is_none(), "{other}");
        }
        assert!(looks_like_path("model.gguf"));
    }
}
