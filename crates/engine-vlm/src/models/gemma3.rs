//! Gemma 3 (`Gemma3ForConditionalGeneration`): a SigLIP tower at 896², its
//! patch grid average-pooled to `mm_tokens_per_image` tokens, a Gemma RMSNorm
//! and a projection into the Gemma 3 text decoder. Each image is written as
//! `\n\n<start_of_image>` + its soft tokens + `<end_of_image>\n\n`, and
//! attention is bidirectional among one image's soft tokens.

use crate::be;
use crate::vit::{VisionTransformer, VitConfig, VitKind};
use engine_core::{EngineError, Result};
use engine_mlx::nn::RmsNorm;
use engine_mlx::{Array, WeightMap};
use serde::Deserialize;

/// The parts of a Gemma 3 `config.json` the vision side needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3Config {
    /// The SigLIP tower.
    pub vision_config: VitConfig,
    /// Soft tokens per image (a square number).
    #[serde(default = "tokens_default")]
    pub mm_tokens_per_image: usize,
    /// `<start_of_image>`: what the chat template writes per image.
    #[serde(alias = "boi_token_id", default = "boi_default")]
    pub boi_token_index: u32,
    /// `<end_of_image>`.
    #[serde(alias = "eoi_token_id", default = "eoi_default")]
    pub eoi_token_index: u32,
    /// `<image_soft_token>`: the positions the features fill.
    #[serde(alias = "image_token_id", default = "image_default")]
    pub image_token_index: u32,
}

fn tokens_default() -> usize {
    256
}
fn boi_default() -> u32 {
    255_999
}
fn eoi_default() -> u32 {
    256_000
}
fn image_default() -> u32 {
    262_144
}

/// A loaded Gemma 3 vision side.
pub struct Gemma3 {
    cfg: Gemma3Config,
    tower: VisionTransformer,
    norm: RmsNorm,
    /// (vision hidden, text hidden).
    projection: Array,
    /// Pooling kernel (patches per soft token, per side).
    kernel: usize,
}

impl Gemma3 {
    /// Loads from sanitized weights (`vision_tower.*`, `multi_modal_projector.*`).
    pub fn load(cfg: Gemma3Config, w: &WeightMap, text_hidden: usize) -> Result<Gemma3> {
        let v = &cfg.vision_config;
        let kind = v.kind(VitKind::Siglip);
        v.check(kind).map_err(EngineError::Config)?;
        let side = (cfg.mm_tokens_per_image as f64).sqrt().round() as usize;
        let grid = v.grid();
        if side * side != cfg.mm_tokens_per_image || side == 0 || !grid.is_multiple_of(side) {
            return Err(EngineError::Config(format!(
                "mm_tokens_per_image {} must be a square whose side divides the tower's {grid}×{grid} patch grid",
                cfg.mm_tokens_per_image
            )));
        }
        let tower = VisionTransformer::load(v.clone(), kind, w, "vision_tower", v.num_hidden_layers).map_err(be)?;
        let eps = v.layer_norm_eps.unwrap_or(1e-6);
        let p = "multi_modal_projector";
        Ok(Gemma3 {
            norm: RmsNorm::load_offset(w, &format!("{p}.mm_soft_emb_norm"), v.hidden_size, eps).map_err(be)?,
            projection: w
                .get_shaped(
                    &format!("{p}.mm_input_projection_weight"),
                    &[v.hidden_size, text_hidden],
                )
                .map_err(be)?,
            kernel: grid / side,
            tower,
            cfg,
        })
    }

    /// What the template writes per image.
    pub fn placeholder_id(&self) -> u32 {
        self.cfg.boi_token_index
    }

    /// The soft-token id the features fill.
    pub fn image_token_id(&self) -> u32 {
        self.cfg.image_token_index
    }

    /// `<start_of_image>`, `<end_of_image>` and the soft token, by id (the
    /// processor writes them as text).
    pub fn marker_ids(&self) -> [u32; 3] {
        [
            self.cfg.boi_token_index,
            self.cfg.eoi_token_index,
            self.cfg.image_token_index,
        ]
    }

    /// The (square) input side the tower expects.
    pub fn image_size(&self) -> usize {
        self.tower.config().image_size
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: engine_mlx::Dtype) -> engine_mlx::Result<()> {
        self.tower.convert(dtype)?;
        self.norm = self.norm.cast(dtype)?;
        self.projection = self.projection.astype(dtype)?;
        let mut all = self.tower.arrays();
        all.extend([&self.norm.weight, &self.projection]);
        engine_mlx::eval(all)
    }

    /// Image features (N, mm_tokens_per_image, text_hidden) of pixels (N, H, W, C).
    pub fn image_features(&self, pixels: &Array) -> engine_mlx::Result<Array> {
        let x = self.tower.last_hidden_state(pixels)?;
        let (n, d) = (x.dim(0) as i32, x.dim(2) as i32);
        let (g, k) = (self.tower.config().grid() as i32, self.kernel as i32);
        let s = g / k;
        // (N, g, g, D) → (N, s, k, s, k, D): average each k×k block of patches.
        let pooled = x
            .reshape(&[n, s, k, s, k, d])?
            .mean(&[2, 4], false)?
            .reshape(&[n, s * s, d])?;
        self.norm.forward(&pooled)?.matmul(&self.projection)
    }
}
