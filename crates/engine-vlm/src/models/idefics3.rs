//! Idefics3 and SmolVLM (`Idefics3ForConditionalGeneration`,
//! `SmolVLMForConditionalGeneration`): a SigLIP tower over fixed-size frames
//! (an image split into tiles plus a global frame by the processor), a
//! pixel-shuffle connector (`scale_factor`² neighbouring patches into one
//! token) with a linear projection, and a Llama decoder. The processor writes
//! `<fake_token_around_image><row_r_col_c>` + image tokens per tile and a
//! `<global-img>` frame last.

use crate::be;
use crate::vit::{VisionTransformer, VitConfig, VitKind};
use engine_core::{EngineError, Result};
use engine_mlx::nn::Linear;
use engine_mlx::{Array, WeightMap};
use serde::Deserialize;

/// The parts of an Idefics3/SmolVLM `config.json` the vision side needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Idefics3Config {
    /// The SigLIP tower.
    pub vision_config: VitConfig,
    /// Patches merged per side by the connector.
    #[serde(default = "two")]
    pub scale_factor: usize,
    /// Id of `<image>`.
    #[serde(alias = "image_token_index")]
    pub image_token_id: u32,
}

fn two() -> usize {
    2
}

/// Checkpoint names → ours: `model.vision_model.*` → `vision_tower.*`,
/// `model.connector.modality_projection.proj` → `connector.proj`,
/// `model.text_model.*` → `model.*` (mlx-vlm's `language_model.*` too).
pub fn sanitize(w: WeightMap) -> WeightMap {
    w.rename(|n| {
        let n = n
            .strip_prefix("model.")
            .filter(|r| !r.starts_with("layers."))
            .unwrap_or(n);
        Some(if let Some(r) = n.strip_prefix("vision_model.") {
            format!("vision_tower.{r}")
        } else if let Some(r) = n.strip_prefix("connector.modality_projection.") {
            format!("connector.{r}")
        } else if let Some(r) = n.strip_prefix("text_model.") {
            format!("model.{r}")
        } else if let Some(r) = n.strip_prefix("language_model.") {
            if r.starts_with("lm_head.") || r.starts_with("model.") {
                r.to_string()
            } else {
                format!("model.{r}")
            }
        } else {
            n.to_string()
        })
    })
}

/// A loaded Idefics3 vision side.
pub struct Idefics3 {
    cfg: Idefics3Config,
    tower: VisionTransformer,
    proj: Linear,
}

impl Idefics3 {
    /// Loads from sanitized weights (`vision_tower.*`, `connector.proj`).
    pub fn load(cfg: Idefics3Config, w: &WeightMap, text_hidden: usize) -> Result<Idefics3> {
        let v = &cfg.vision_config;
        let kind = v.kind(VitKind::Siglip);
        v.check(kind).map_err(EngineError::Config)?;
        let s = cfg.scale_factor;
        if s == 0 || !v.grid().is_multiple_of(s) {
            return Err(EngineError::Config(format!(
                "scale_factor {s} must divide the tower's {} patches per side",
                v.grid()
            )));
        }
        let tower = VisionTransformer::load(v.clone(), kind, w, "vision_tower", v.num_hidden_layers).map_err(be)?;
        let proj = Linear::load(w, "connector.proj", v.hidden_size * s * s, text_hidden, false).map_err(be)?;
        Ok(Idefics3 { cfg, tower, proj })
    }

    /// `<image>`: written by the template, one per frame after the expansion.
    pub fn image_token_id(&self) -> u32 {
        self.cfg.image_token_id
    }

    /// The frame side the tower takes.
    pub fn image_size(&self) -> usize {
        self.tower.config().image_size
    }

    /// Tokens per frame.
    pub fn tokens_per_frame(&self) -> usize {
        let g = self.tower.config().grid() / self.cfg.scale_factor;
        g * g
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: engine_mlx::Dtype) -> engine_mlx::Result<()> {
        self.tower.convert(dtype)?;
        self.proj = self.proj.dequantized(dtype)?;
        let mut all = self.tower.arrays();
        all.extend(self.proj.arrays());
        engine_mlx::eval(all)
    }

    /// Features (frames · tokens_per_frame, text_hidden) of one image's
    /// frames (frames, H, W, C).
    pub fn image_features(&self, frames: &Array) -> engine_mlx::Result<Array> {
        let x = self.tower.last_hidden_state(frames)?;
        let (n, d) = (x.dim(0) as i32, x.dim(2) as i32);
        let (g, s) = (self.tower.config().grid() as i32, self.cfg.scale_factor as i32);
        // transformers' pixel_shuffle: (N, g, g, D) → (N, g, g/s, D·s) → swap the
        // two grid axes → (N, g/s, g/s, D·s²) → swap back → (N, (g/s)², D·s²).
        let x = x
            .reshape(&[n, g, g / s, d * s])?
            .transpose(&[0, 2, 1, 3])?
            .reshape(&[n, g / s, g / s, d * s * s])?
            .transpose(&[0, 2, 1, 3])?
            .reshape(&[-1, d * s * s])?;
        self.proj.forward(&x)
    }
}
