//! Stable Diffusion on MLX: SD 1.x/2.x-shaped and SDXL pipelines loaded from
//! the diffusers folder layout (or an original single-file checkpoint with a
//! folder's configs), sampling with diffusers' schedulers, checked against
//! diffusers itself (`tests/parity.rs`).
//!
//! ```no_run
//! use engine_diffusion::{ImagePipeline, ImageRequest};
//! let pipe = ImagePipeline::load("models/stable-diffusion-2-1-base")?;
//! let mut req = ImageRequest::new("a photo of an astronaut riding a horse on mars");
//! req.steps = 20;
//! let images = pipe.generate(&req)?; // RGB f32 in [0, 1]
//! # Ok::<(), engine_diffusion::DiffusionError>(())
//! ```
//!
//! Layout read: `model_index.json`, `unet/`, `vae/`, `text_encoder/` (+ `text_encoder_2/`
//! for SDXL), `tokenizer/` (+ `tokenizer_2/`; vocab.json + merges.txt), `scheduler/`.
//! Weights are `diffusion_pytorch_model.safetensors` / `model.safetensors` or their
//! `.fp16.safetensors` variants; conv kernels are transposed to MLX's layout at load.
//! img2img encodes the image to the VAE posterior's *mean* (diffusers samples it).
#![warn(missing_docs)]

mod blocks;
pub mod clip_text;
mod clip_tokenizer;
mod error;
mod pipeline;
mod prompt;
mod request;
mod sampler;
pub mod scheduler;
mod single_file;
mod transformer;
pub mod unet;
pub mod vae;
mod weights;

pub use clip_tokenizer::ClipTokenizer;
pub use error::{DiffusionError, Result};
pub use request::{ImageF32, ImageRequest, Latents, Progress};
pub use scheduler::{SchedulerConfig, SchedulerKind};

use clip_text::{ClipTextConfig, ClipTextEncoder};
use engine_mlx::{Dtype, WeightMap};
use error::read_json;
use serde_json::Value;
use std::path::{Path, PathBuf};
use unet::{per_level, UNet, UNetConfig};
use vae::{Vae, VaeConfig};

/// A loaded text-to-image pipeline.
pub struct ImagePipeline {
    pub(crate) unet: UNet,
    pub(crate) vae: Vae,
    /// One (tokenizer, encoder) per text encoder, in diffusers' order.
    pub(crate) text: Vec<(ClipTokenizer, ClipTextEncoder)>,
    pub(crate) scheduler: SchedulerConfig,
    pub(crate) sdxl: bool,
    pub(crate) force_zeros_for_empty_prompt: bool,
    pub(crate) dtype: Dtype,
}

fn bad_config(path: &Path, reason: String) -> DiffusionError {
    DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason,
    }
}

fn component(dir: &Path, sub: &str) -> Result<PathBuf> {
    let p = dir.join(sub);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(DiffusionError::MissingFile {
            path: p,
            what: format!("the `{sub}` component folder"),
        })
    }
}

fn load_text(
    dir: &Path,
    enc: &str,
    tok: &str,
    dtype: Dtype,
    weights: Option<WeightMap>,
) -> Result<(ClipTokenizer, ClipTextEncoder)> {
    let edir = component(dir, enc)?;
    let cpath = edir.join("config.json");
    let cfg: ClipTextConfig = read_json(&cpath, "the text encoder config")?;
    if !clip_text::supported_act(&cfg.hidden_act) {
        return Err(bad_config(
            &cpath,
            format!(
                "hidden_act `{}` is not supported (quick_gelu, gelu are)",
                cfg.hidden_act
            ),
        ));
    }
    let w = match weights {
        Some(w) => w,
        None => weights::load_component(&edir, "model", dtype)?,
    };
    let tokenizer = ClipTokenizer::load(&component(dir, tok)?)?;
    Ok((tokenizer, ClipTextEncoder::load(cfg, &w)?))
}

fn check_unet(path: &Path, raw: &Value, cfg: &UNetConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let n = cfg.block_out_channels.len();
    let bad = |r: String| {
        Err(bad_config(
            path,
            format!("{r}; this engine runs SD 1.x/2.x and SDXL UNets"),
        ))
    };
    for key in ["class_embed_type", "encoder_hid_dim", "num_class_embeds"] {
        if raw.get(key).is_some_and(|v| !v.is_null()) {
            return bad(format!("`{key}` is set"));
        }
    }
    if raw.get("only_cross_attention").and_then(Value::as_bool) == Some(true) {
        return bad("`only_cross_attention` is set".into());
    }
    let known = |t: &String, a: &str, b: &str| t == a || t == b;
    if cfg.down_block_types.len() != n
        || cfg.up_block_types.len() != n
        || !cfg
            .down_block_types
            .iter()
            .all(|t| known(t, "CrossAttnDownBlock2D", "DownBlock2D"))
        || !cfg
            .up_block_types
            .iter()
            .all(|t| known(t, "CrossAttnUpBlock2D", "UpBlock2D"))
    {
        return bad(format!(
            "block types {:?} / {:?} for {n} levels",
            cfg.down_block_types, cfg.up_block_types
        ));
    }
    if cfg
        .mid_block_type
        .as_deref()
        .is_some_and(|m| m != "UNetMidBlock2DCrossAttn")
    {
        return bad(format!("mid_block_type `{:?}`", cfg.mid_block_type));
    }
    match cfg.addition_embed_type.as_deref() {
        None => {}
        Some("text_time") if cfg.projection_class_embeddings_input_dim.is_some() => {}
        Some(other) => return bad(format!("addition_embed_type `{other}`")),
    }
    let heads_src = if cfg.num_attention_heads.is_null() {
        &cfg.attention_head_dim
    } else {
        &cfg.num_attention_heads
    };
    let heads =
        per_level(heads_src, n, 8).ok_or_else(|| bad_config(path, "attention heads per level unreadable".into()))?;
    let layers = per_level(&cfg.transformer_layers_per_block, n, 1)
        .ok_or_else(|| bad_config(path, "transformer_layers_per_block unreadable".into()))?;
    if let Some(i) = (0..n).find(|&i| heads[i] == 0 || !cfg.block_out_channels[i].is_multiple_of(heads[i])) {
        return bad(format!(
            "{} heads do not divide {} channels",
            heads[i], cfg.block_out_channels[i]
        ));
    }
    Ok((heads, layers))
}

impl ImagePipeline {
    /// Loads a diffusers pipeline folder in float32.
    pub fn load(dir: impl AsRef<Path>) -> Result<ImagePipeline> {
        Self::load_with_dtype(dir, Dtype::Float32)
    }

    /// Loads a diffusers pipeline folder, computing in `dtype` (float32 on the CPU;
    /// float16 halves memory on a GPU).
    pub fn load_with_dtype(dir: impl AsRef<Path>, dtype: Dtype) -> Result<ImagePipeline> {
        Self::assemble(dir.as_ref(), dtype, None)
    }

    /// Loads an original single-file SD 1.x, SD 2.x or SDXL checkpoint (one safetensors
    /// with `model.diffusion_model.*`, `first_stage_model.*` and the text encoders under
    /// `cond_stage_model.*` or `conditioner.embedders.*`), with the configs, tokenizers and
    /// scheduler of a diffusers folder of the same architecture (its weights are not read).
    /// A file whose kind cannot be told, or that does not fit the folder, is an error.
    pub fn load_single_file(
        checkpoint: impl AsRef<Path>,
        config_dir: impl AsRef<Path>,
        dtype: Dtype,
    ) -> Result<ImagePipeline> {
        Self::assemble(config_dir.as_ref(), dtype, Some(checkpoint.as_ref()))
    }

    fn assemble(dir: &Path, dtype: Dtype, single: Option<&Path>) -> Result<ImagePipeline> {
        let index_path = dir.join("model_index.json");
        if !index_path.is_file() {
            return Err(DiffusionError::NotAPipeline {
                path: dir.to_path_buf(),
            });
        }
        let index: Value = read_json(&index_path, "the pipeline index")?;
        let has = |k: &str| {
            index
                .get(k)
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().all(|v| !v.is_null()))
        };
        let sdxl = has("text_encoder_2");
        let force_zeros = index
            .get("force_zeros_for_empty_prompt")
            .and_then(Value::as_bool)
            .unwrap_or(sdxl);

        let udir = component(dir, "unet")?;
        let upath = udir.join("config.json");
        let raw: Value = read_json(&upath, "the UNet config")?;
        let ucfg: UNetConfig = serde_json::from_value(raw.clone()).map_err(|e| bad_config(&upath, e.to_string()))?;
        let (heads, layers) = check_unet(&upath, &raw, &ucfg)?;
        let vdir = component(dir, "vae")?;
        let vcfg: VaeConfig = read_json(&vdir.join("config.json"), "the VAE config")?;
        // `force_upcast` guards against float16 overflow; bfloat16 has float32's range, and a
        // float32 VAE decode took 1.9 s of a 2 s SDXL-Turbo image on an H100 (MLX's f32 convs).
        let vae_dtype = if vcfg.force_upcast && dtype == Dtype::Float16 {
            Dtype::Float32
        } else {
            dtype
        };
        let mut single = match single {
            Some(path) => {
                let attn: Vec<bool> = ucfg.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect();
                let n = vcfg.block_out_channels.len();
                let cfg = (ucfg.layers_per_block, attn.as_slice(), n);
                Some(single_file::load(path, (dir, sdxl), cfg, (dtype, vae_dtype))?)
            }
            None => None,
        };
        let uw = match single.as_mut() {
            Some(s) => std::mem::take(&mut s.unet),
            None => weights::load_component(&udir, "diffusion_pytorch_model", dtype)?,
        };
        let unet = UNet::load(ucfg, &heads, &layers, &uw)?;
        if sdxl != unet.needs_added_cond() {
            return Err(bad_config(
                &upath,
                "the UNet's addition_embed_type does not match the text encoders in model_index.json".into(),
            ));
        }

        let vw = match single.as_mut() {
            Some(s) => std::mem::take(&mut s.vae),
            None => weights::load_component(&vdir, "diffusion_pytorch_model", vae_dtype)?,
        };
        let vae = Vae::load(vcfg, &vw)?;

        let mut tw = single.map(|s| s.text.into_iter()).into_iter().flatten();
        let mut text = vec![load_text(dir, "text_encoder", "tokenizer", dtype, tw.next())?];
        if sdxl {
            text.push(load_text(dir, "text_encoder_2", "tokenizer_2", dtype, tw.next())?);
        }
        let ctx: usize = text.iter().map(|(_, e)| e.config().hidden_size).sum();
        if ctx != unet.config().cross_attention_dim {
            return Err(bad_config(
                &upath,
                format!(
                    "cross_attention_dim {} but the text encoders give {ctx}; the components are from different models",
                    unet.config().cross_attention_dim
                ),
            ));
        }
        let spath = component(dir, "scheduler")?.join("scheduler_config.json");
        let scheduler: SchedulerConfig = read_json(&spath, "the scheduler config")?;
        tracing::info!(path = %dir.display(), sdxl, "loaded diffusion pipeline");
        Ok(ImagePipeline {
            unet,
            vae,
            text,
            scheduler,
            sdxl,
            force_zeros_for_empty_prompt: force_zeros,
            dtype,
        })
    }

    /// Whether this is an SDXL pipeline (two text encoders, size conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.sdxl
    }

    /// The scheduler config (the folder's, unless replaced).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Replaces the scheduler config, e.g. `timestep_spacing = "trailing"` for
    /// few-step models; [`ImageRequest::scheduler`] still picks the sampler.
    pub fn set_scheduler_config(&mut self, cfg: SchedulerConfig) {
        self.scheduler = cfg;
    }

    /// The UNet (for tests and tools that run one forward pass).
    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &Vae {
        &self.vae
    }

    /// The (tokenizer, text encoder) pairs, in diffusers' order.
    pub fn text_encoders(&self) -> &[(ClipTokenizer, ClipTextEncoder)] {
        &self.text
    }

    /// The prompt's text conditioning as the UNet sees it: hidden states (1, L, D)
    /// and, for SDXL, the pooled output (1, P).
    pub fn encode_prompt(&self, prompt: &str) -> Result<(engine_mlx::Array, Option<engine_mlx::Array>)> {
        self.encode_text(prompt, None)
    }
}
