//! ModernBERT (`model_type: "modernbert"`): a pre-norm long-context encoder
//! (8192 tokens) with rotary positions, GeGLU feed-forward, no biases, and
//! layers that alternate global attention with a sliding window.

use std::path::Path;

use engine_mlx::fast::{self, AttentionMask, RopeFreqs};
use engine_mlx::nn::{Embedding, LayerNorm, Linear};
use engine_mlx::{Array, Dtype, WeightMap};
use serde::Deserialize;
use serde_json::Value;

use crate::error::Result;
use crate::model::{check_heads, Activation};

/// The fields of a ModernBERT `config.json` the forward pass needs, in both
/// the original spelling (`global_rope_theta`, `global_attn_every_n_layers`)
/// and the transformers ≥ 5 one (`rope_parameters`, `layer_types`).
#[derive(Debug, Clone, Deserialize)]
pub struct ModernBertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the gated feed-forward layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// The longest input in tokens.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Whether LayerNorms have a bias.
    #[serde(default)]
    pub norm_bias: bool,
    /// Whether attention projections have biases.
    #[serde(default)]
    pub attention_bias: bool,
    /// Whether feed-forward projections have biases.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    /// Every n-th layer (from 0) attends globally, the others in a window.
    #[serde(default = "default_every")]
    pub global_attn_every_n_layers: usize,
    /// Total width of the sliding window (each token sees ±local_attention/2).
    #[serde(default = "default_local")]
    pub local_attention: usize,
    /// Rotary base of global layers (original spelling).
    #[serde(default)]
    pub global_rope_theta: Option<f64>,
    /// Rotary base of sliding-window layers (original spelling).
    #[serde(default)]
    pub local_rope_theta: Option<f64>,
    /// Per-layer `full_attention` / `sliding_attention` (transformers ≥ 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Per-layer-type rotary parameters (transformers ≥ 5).
    #[serde(default)]
    pub rope_parameters: Option<Value>,
}

fn default_max_pos() -> usize {
    8192
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu".into()
}
fn default_every() -> usize {
    3
}
fn default_local() -> usize {
    128
}

impl ModernBertConfig {
    fn is_global(&self, layer: usize) -> bool {
        match &self.layer_types {
            Some(t) => t.get(layer).is_none_or(|s| s != "sliding_attention"),
            None => layer.is_multiple_of(self.global_attn_every_n_layers.max(1)),
        }
    }

    fn theta(&self, global: bool) -> f64 {
        let key = if global { "full_attention" } else { "sliding_attention" };
        let from_params = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64);
        let legacy = if global {
            self.global_rope_theta
        } else {
            self.local_rope_theta
        };
        from_params
            .or(legacy)
            .unwrap_or(if global { 160_000.0 } else { 10_000.0 })
    }
}

struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    global: bool,
}

/// A loaded ModernBERT encoder.
pub struct ModernBert {
    cfg: ModernBertConfig,
    act: Activation,
    words: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    theta_global: f32,
    theta_local: f32,
}

fn norm(w: &WeightMap, prefix: &str, dim: usize, eps: f32, bias: bool) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: Some(
            w.get_shaped(&format!("{prefix}.weight"), &[dim])?
                .astype(Dtype::Float32)?,
        ),
        bias: if bias {
            Some(
                w.get_shaped(&format!("{prefix}.bias"), &[dim])?
                    .astype(Dtype::Float32)?,
            )
        } else {
            None
        },
        eps,
    })
}

impl ModernBert {
    /// Loads the weights, accepting both bare (`layers.…`) and task-model
    /// (`model.layers.…`) names.
    pub fn load(cfg: ModernBertConfig, w: &WeightMap, config_path: &Path) -> Result<ModernBert> {
        check_heads(cfg.hidden_size, cfg.num_attention_heads, config_path)?;
        let act = Activation::parse(&cfg.hidden_activation, config_path)?;
        let p = if w.contains("model.embeddings.tok_embeddings.weight") {
            "model."
        } else {
            ""
        };
        let (h, i_size) = (cfg.hidden_size, cfg.intermediate_size);
        let eps = cfg.norm_eps as f32;
        let words = Embedding::load(w, &format!("{p}embeddings.tok_embeddings"), cfg.vocab_size, h)?
            .dequantized(Dtype::Float32)?;
        let emb_norm = norm(w, &format!("{p}embeddings.norm"), h, eps, cfg.norm_bias)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}layers.{i}");
            let lin = |name: &str, i_f: usize, o_f: usize, bias: bool| -> Result<Linear> {
                Ok(Linear::load(w, &format!("{l}.{name}"), i_f, o_f, bias)?.dequantized(Dtype::Float32)?)
            };
            layers.push(Layer {
                // The first layer has no attention norm: the embedding norm precedes it.
                attn_norm: if i == 0 {
                    None
                } else {
                    Some(norm(w, &format!("{l}.attn_norm"), h, eps, cfg.norm_bias)?)
                },
                wqkv: lin("attn.Wqkv", h, 3 * h, cfg.attention_bias)?,
                wo: lin("attn.Wo", h, h, cfg.attention_bias)?,
                mlp_norm: norm(w, &format!("{l}.mlp_norm"), h, eps, cfg.norm_bias)?,
                wi: lin("mlp.Wi", h, 2 * i_size, cfg.mlp_bias)?,
                mlp_wo: lin("mlp.Wo", i_size, h, cfg.mlp_bias)?,
                global: cfg.is_global(i),
            });
        }
        let final_norm = norm(w, &format!("{p}final_norm"), h, eps, cfg.norm_bias)?;
        let model = ModernBert {
            theta_global: cfg.theta(true) as f32,
            theta_local: cfg.theta(false) as f32,
            cfg,
            act,
            words,
            emb_norm,
            layers,
            final_norm,
        };
        engine_mlx::eval(model.arrays())?;
        Ok(model)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = self.words.arrays();
        v.extend(self.emb_norm.arrays());
        v.extend(self.final_norm.arrays());
        for l in &self.layers {
            for lin in [&l.wqkv, &l.wo, &l.wi, &l.mlp_wo] {
                v.extend(lin.arrays());
            }
            v.extend(l.attn_norm.iter().flat_map(LayerNorm::arrays));
            v.extend(l.mlp_norm.arrays());
        }
        v
    }

    /// Width of the output vectors.
    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The longest input the model was trained for.
    pub fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// The (L, L) band where |i − j| ≤ local_attention / 2.
    fn window(&self, l: usize) -> Result<Array> {
        let half = (self.cfg.local_attention / 2) as i64;
        let band: Vec<u8> = (0..l as i64)
            .flat_map(|i| (0..l as i64).map(move |j| u8::from((i - j).abs() <= half)))
            .collect();
        Ok(Array::from_bytes(&band, &[l, l], Dtype::Bool)?)
    }

    /// Hidden states (B, L, H) of token ids (B, L); `mask` (B, 1, 1, L) is
    /// true for real tokens, `None` when no row is padded.
    pub fn forward(&self, ids: &Array, mask: Option<&Array>) -> Result<Array> {
        let (b, l) = (ids.dim(0) as i32, ids.dim(1) as i32);
        let h = self.cfg.hidden_size as i32;
        let nh = self.cfg.num_attention_heads as i32;
        let hd = h / nh;
        let scale = 1.0 / (hd as f32).sqrt();
        // Sliding-window layers only need a band when the input is longer than the window.
        let local_mask = if (l as usize) > self.cfg.local_attention / 2 {
            let band = self.window(l as usize)?;
            Some(match mask {
                Some(m) => band.logical_and(m)?,
                None => band,
            })
        } else {
            mask.cloned()
        };
        let mut x = self.emb_norm.forward(&self.words.forward(ids)?)?;
        for layer in &self.layers {
            let (m, theta) = if layer.global {
                (mask, self.theta_global)
            } else {
                (local_mask.as_ref(), self.theta_local)
            };
            let xn = match &layer.attn_norm {
                Some(n) => n.forward(&x)?,
                None => x.clone(),
            };
            let qkv = layer
                .wqkv
                .forward(&xn)?
                .reshape(&[b, l, 3, nh, hd])?
                .transpose(&[2, 0, 3, 1, 4])?;
            let parts = qkv.split(3, 0)?;
            let rope = |a: &Array| fast::rope(a, hd, false, RopeFreqs::Base(theta), 1.0, 0);
            let q = rope(&parts[0].squeeze(0)?)?;
            let k = rope(&parts[1].squeeze(0)?)?;
            let v = parts[2].squeeze(0)?;
            let am = match m {
                Some(m) => AttentionMask::Array(m),
                None => AttentionMask::None,
            };
            let attn = fast::scaled_dot_product_attention(&q, &k, &v, scale, am)?
                .transpose(&[0, 2, 1, 3])?
                .reshape(&[b, l, h])?;
            x = x.add(&layer.wo.forward(&attn)?)?;
            let gated = layer.wi.forward(&layer.mlp_norm.forward(&x)?)?.split(2, -1)?;
            let ff = self.act.apply(&gated[0])?.multiply(&gated[1])?;
            x = x.add(&layer.mlp_wo.forward(&ff)?)?;
        }
        Ok(self.final_norm.forward(&x)?)
    }
}
