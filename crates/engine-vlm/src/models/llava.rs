//! LLaVA 1.5 (`LlavaForConditionalGeneration`): a CLIP tower read at
//! `vision_feature_layer` (CLS dropped with the `default` strategy), a
//! two-layer GELU projector, and a Llama/Mistral/Vicuna decoder.

use crate::be;
use crate::clip::{ClipVision, ClipVisionConfig};
use engine_core::{EngineError, Result};
use engine_mlx::nn::Linear;
use engine_mlx::{concatenate, Array, WeightMap};
use serde::Deserialize;

/// The parts of a LLaVA `config.json` the vision side needs.
#[derive(Debug, Clone, Deserialize)]
pub struct LlavaConfig {
    /// The CLIP tower.
    pub vision_config: ClipVisionConfig,
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
    tower: ClipVision,
    layers: Vec<usize>,
    linear_1: Linear,
    linear_2: Linear,
}

impl Llava {
    /// Loads from sanitized weights; `text_hidden` is the decoder's width.
    pub fn load(cfg: LlavaConfig, w: &WeightMap, text_hidden: usize) -> Result<Llava> {
        let v = &cfg.vision_config;
        if !matches!(v.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(EngineError::Config(format!(
                "vision_config.hidden_act `{}` is not supported (quick_gelu, gelu)",
                v.hidden_act
            )));
        }
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
        let tower = ClipVision::load(v.clone(), w, "vision_tower", deepest).map_err(be)?;
        let in_dim = v.hidden_size * layers.len();
        let bias = cfg.multimodal_projector_bias;
        Ok(Llava {
            linear_1: Linear::load(w, "multi_modal_projector.linear_1", in_dim, text_hidden, bias).map_err(be)?,
            linear_2: Linear::load(w, "multi_modal_projector.linear_2", text_hidden, text_hidden, bias).map_err(be)?,
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
        v
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: engine_mlx::Dtype) -> engine_mlx::Result<()> {
        self.tower.convert(dtype)?;
        self.linear_1 = self.linear_1.dequantized(dtype)?;
        self.linear_2 = self.linear_2.dequantized(dtype)?;
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
