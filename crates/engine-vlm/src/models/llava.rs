//! LLaVA 1.5 (`LlavaForConditionalGeneration`): a CLIP tower read at
//! `vision_feature_layer` (CLS dropped with the `default` strategy), a
//! two-layer GELU projector, and a Llama/Mistral/Vicuna decoder. LLaVA-NeXT
//! (`LlavaNextForConditionalGeneration`) runs the same tower over a squashed
//! base image and the anyres tiles, stitches the tiles' features into one
//! grid, cuts the padding off and ends every row with `image_newline`.

use crate::be;
use crate::preprocess::Anyres;
use crate::vit::{VisionTransformer, VitConfig, VitKind};
use engine_core::{EngineError, Result};
use engine_mlx::nn::Linear;
use engine_mlx::{concatenate, Array, WeightMap};
use serde::Deserialize;

/// The parts of a LLaVA `config.json` the vision side needs.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    /// The CLIP tower.
    pub vision_config: VitConfig,
    /// Id of the `<image>` placeholder token.
    #[serde(alias = "image_token_id")]
    pub image_token_index: u32,
    /// Which hidden state(s) of the tower to read (negative: from the end).
    #[serde(default = "second_to_last")]
    pub vision_feature_layer: FeatureLayer,
    /// `default` (drop the CLS position) or `full`.
    #[serde(default = "default_strategy")]
    pub vision_feature_select_strategy: String,
    /// Projector activation (`gelu`).
    #[serde(default = "gelu")]
    pub projector_hidden_act: String,
    /// Whether the projector's linears have biases.
    #[serde(default = "yes")]
    pub multimodal_projector_bias: bool,
    /// LLaVA-NeXT: the (height, width) resolutions of anyres tiling.
    #[serde(default)]
    pub image_grid_pinpoints: Option<Vec<[usize; 2]>>,
}

/// One layer index or several (their features are concatenated).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayer {
    /// One layer.
    One(i64),
    /// Several layers.
    Many(Vec<i64>),
}

fn second_to_last() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn default_strategy() -> String {
    "default".into()
}
fn gelu() -> String {
    "gelu".into()
}
fn yes() -> bool {
    true
}

/// Checkpoint names → ours: the tower under `vision_tower.`, the projector
/// under `multi_modal_projector.`, the decoder as a text checkpoint's
/// (`model.*`, `lm_head.*`). Handles transformers' legacy layout
/// (`language_model.model.*`, `vision_tower.vision_model.*`), its current one
/// (`model.language_model.*`, `model.vision_tower.*`) and mlx-vlm's.
pub fn sanitize(w: WeightMap) -> WeightMap {
    w.rename(|n| {
        let n = n
            .strip_prefix("model.")
            .filter(|r| !r.starts_with("layers.") && !r.starts_with("embed_tokens") && !r.starts_with("norm."))
            .unwrap_or(n);
        let n = if let Some(r) = n.strip_prefix("language_model.") {
            match r.strip_prefix("model.") {
                Some(inner) => format!("model.{inner}"),
                None if r.starts_with("lm_head.") => r.to_string(),
                None => format!("model.{r}"),
            }
        } else if let Some(r) = n.strip_prefix("vision_tower.") {
            format!("vision_tower.{}", r.strip_prefix("vision_model.").unwrap_or(r))
        } else {
            n.to_string()
        };
        Some(n)
    })
}

/// A loaded LLaVA vision side: tower + projector.
pub struct Llava {
    cfg: LlavaConfig,
    tower: VisionTransformer,
    layers: Vec<usize>,
    linear_1: Linear,
    linear_2: Linear,
    /// LLaVA-NeXT's row separator (text hidden,).
    newline: Option<Array>,
}

impl Llava {
    /// Loads from sanitized weights; `text_hidden` is the decoder's width.
    /// `next` loads LLaVA-NeXT's `image_newline`.
    pub fn load(cfg: LlavaConfig, w: &WeightMap, text_hidden: usize, next: bool) -> Result<Llava> {
        if next && cfg.image_grid_pinpoints.as_ref().is_none_or(|p| p.is_empty()) {
            return Err(EngineError::Config(
                "a LLaVA-NeXT config.json needs image_grid_pinpoints".into(),
            ));
        }
        let v = &cfg.vision_config;
        let kind = v.kind(VitKind::Clip);
        v.check(kind).map_err(EngineError::Config)?;
        if cfg.projector_hidden_act != "gelu" {
            return Err(EngineError::Config(format!(
                "projector_hidden_act `{}` is not supported (gelu)",
                cfg.projector_hidden_act
            )));
        }
        if !matches!(cfg.vision_feature_select_strategy.as_str(), "default" | "full") {
            return Err(EngineError::Config(format!(
                "vision_feature_select_strategy `{}` is not supported (default, full)",
                cfg.vision_feature_select_strategy
            )));
        }
        let n = v.num_hidden_layers as i64;
        let wanted = match &cfg.vision_feature_layer {
            FeatureLayer::One(l) => vec![*l],
            FeatureLayer::Many(ls) => ls.clone(),
        };
        let mut layers = Vec::with_capacity(wanted.len());
        for l in wanted {
            // hidden_states has n + 1 entries (embeddings, then each layer).
            let idx = if l < 0 { n + 1 + l } else { l };
            if !(0..=n).contains(&idx) {
                return Err(EngineError::Config(format!(
                    "vision_feature_layer {l} is outside the tower's {n} layers"
                )));
            }
            layers.push(idx as usize);
        }
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let tower = VisionTransformer::load(v.clone(), kind, w, "vision_tower", deepest).map_err(be)?;
        let in_dim = v.hidden_size * layers.len();
        let bias = cfg.multimodal_projector_bias;
        Ok(Llava {
            linear_1: Linear::load(w, "multi_modal_projector.linear_1", in_dim, text_hidden, bias).map_err(be)?,
            linear_2: Linear::load(w, "multi_modal_projector.linear_2", text_hidden, text_hidden, bias).map_err(be)?,
            newline: next
                .then(|| w.get_shaped("image_newline", &[text_hidden]))
                .transpose()
                .map_err(be)?,
            tower,
            layers,
            cfg,
        })
    }

    /// The placeholder token id.
    pub fn image_token_id(&self) -> u32 {
        self.cfg.image_token_index
    }

    /// Positions one image takes in the prompt.
    pub fn tokens_per_image(&self) -> usize {
        let g = self.tower.config().grid();
        g * g + usize::from(self.cfg.vision_feature_select_strategy == "full")
    }

    /// The (square) input side the tower expects.
    pub fn image_size(&self) -> usize {
        self.tower.config().image_size
    }

    /// Every weight.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.tower.arrays();
        v.extend(self.linear_1.arrays());
        v.extend(self.linear_2.arrays());
        v.extend(&self.newline);
        v
    }

    /// Whether this is LLaVA-NeXT (anyres tiles).
    pub fn is_next(&self) -> bool {
        self.newline.is_some()
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: engine_mlx::Dtype) -> engine_mlx::Result<()> {
        self.tower.convert(dtype)?;
        self.linear_1 = self.linear_1.dequantized(dtype)?;
        self.linear_2 = self.linear_2.dequantized(dtype)?;
        if let Some(n) = &mut self.newline {
            *n = n.astype(dtype)?;
        }
        engine_mlx::eval(self.arrays())
    }

    /// Image features (N, tokens_per_image, text_hidden) of pixels (N, H, W, C).
    pub fn image_features(&self, pixels: &Array) -> engine_mlx::Result<Array> {
        let states = self.tower.hidden_states(pixels)?;
        let skip = i32::from(self.cfg.vision_feature_select_strategy == "default");
        let picked: Vec<Array> = self
            .layers
            .iter()
            .map(|&i| {
                let s = &states[i];
                s.slice_axis(1, skip, s.dim(1) as i32)
            })
            .collect::<engine_mlx::Result<_>>()?;
        let refs: Vec<&Array> = picked.iter().collect();
        let x = if refs.len() == 1 {
            picked[0].clone()
        } else {
            concatenate(&refs, -1)?
        };
        let h = self.linear_1.forward(&x)?.gelu()?;
        self.linear_2.forward(&h)
    }
}

impl Llava {
    /// LLaVA-NeXT's features of one image from its pieces' features
    /// (1 + tiles, g², hidden): the base image's, then the tiles' stitched
    /// into one (rows·g, cols·g) grid, unpadded to the original aspect, each
    /// row ended by `image_newline` — (tokens, hidden).
    pub fn pack_anyres(&self, features: &Array, tiling: &Anyres) -> Result<Array> {
        let newline = self
            .newline
            .as_ref()
            .ok_or_else(|| EngineError::Backend("anyres pixels for a LLaVA 1.5 model".into()))?;
        let g = self.tower.config().grid();
        let [rows, cols] = tiling.grid;
        let pieces = features.dim(0);
        if pieces != 1 + rows * cols {
            return Err(EngineError::Image(format!(
                "the image processor made {pieces} pieces for a {rows}×{cols} tiling (1 + {}); \
                 preprocessor_config.json does not match config.json",
                rows * cols
            )));
        }
        let d = features.dim(2) as i32;
        let pack = || -> engine_mlx::Result<Array> {
            let base = features.slice_axis(0, 0, 1)?.squeeze(0)?;
            let (r, c, gi) = (rows as i32, cols as i32, g as i32);
            // (rows, cols, g, g, D) → (rows, g, cols, g, D) → (rows·g, cols·g, D).
            let grid = features
                .slice_axis(0, 1, pieces as i32)?
                .reshape(&[r, c, gi, gi, d])?
                .transpose(&[0, 2, 1, 3, 4])?
                .reshape(&[r * gi, c * gi, d])?;
            let (cur_h, cur_w) = (rows * g, cols * g);
            let [oh, ow] = tiling.original;
            let grid = match unpad(oh, ow, cur_h, cur_w) {
                Unpad::Rows(a, b) => grid.slice_axis(0, a as i32, b as i32)?,
                Unpad::Cols(a, b) => grid.slice_axis(1, a as i32, b as i32)?,
            };
            let (h, w) = (grid.dim(0) as i32, grid.dim(1) as i32);
            let nl = newline
                .astype(grid.dtype())?
                .reshape(&[1, 1, d])?
                .broadcast_to(&[h, 1, d])?;
            let grid = concatenate(&[&grid, &nl], 1)?.reshape(&[h * (w + 1), d])?;
            concatenate(&[&base, &grid], 0)
        };
        pack().map_err(be)
    }
}

/// Which rows or columns of the stitched grid hold the image (not padding).
enum Unpad {
    Rows(usize, usize),
    Cols(usize, usize),
}

/// transformers' `unpad_image` on a `cur_h` × `cur_w` grid of an `oh` × `ow` image.
fn unpad(oh: usize, ow: usize, cur_h: usize, cur_w: usize) -> Unpad {
    // Python's int(round(x, 7)).
    let round7 = |x: f64| ((x * 1e7).round() / 1e7) as usize;
    if ow as f64 / oh as f64 > cur_w as f64 / cur_h as f64 {
        let new_h = round7(oh as f64 * (cur_w as f64 / ow as f64));
        let pad = cur_h.saturating_sub(new_h) / 2;
        Unpad::Rows(pad, cur_h - pad)
    } else {
        let new_w = round7(ow as f64 * (cur_h as f64 / oh as f64));
        let pad = cur_w.saturating_sub(new_w) / 2;
        Unpad::Cols(pad, cur_w - pad)
    }
}
