//! The CLIP vision transformer (LLaVA's tower): patch embedding with a class
//! token and learned positions, pre-norm encoder layers, hidden states of any
//! layer (LLaVA reads the second to last).

use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask};
use engine_mlx::nn::{join, Conv2d, LayerNorm, Linear};
use engine_mlx::{concatenate, Array, Dtype, Result, WeightMap};
use serde::Deserialize;

/// `vision_config` of a CLIP tower.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the tower.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input side in pixels (square).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub num_channels: usize,
    /// Layer-norm epsilon.
    #[serde(default = "clip_eps")]
    pub layer_norm_eps: f32,
    /// MLP activation: `quick_gelu` (OpenAI CLIP) or `gelu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
}

fn three() -> usize {
    3
}
fn clip_eps() -> f32 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

impl ClipVisionConfig {
    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded CLIP vision tower.
pub struct ClipVision {
    cfg: ClipVisionConfig,
    patch: Conv2d,
    class_embedding: Array,
    positions: Array,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl ClipVision {
    /// Loads the tower from weights named `{prefix}.embeddings.*`,
    /// `{prefix}.pre_layrnorm.*`, `{prefix}.encoder.layers.N.*` (the patch
    /// convolution in MLX layout (out, kh, kw, in)). Only the first
    /// `layers` encoder layers are loaded: deeper ones are never read.
    pub fn load(cfg: ClipVisionConfig, w: &WeightMap, prefix: &str, layers: usize) -> Result<ClipVision> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let e = join(prefix, "embeddings");
        let patch = Conv2d {
            weight: w.get_shaped(&join(&e, "patch_embedding.weight"), &[d, p, p, c])?,
            bias: None,
            stride: (p as i32, p as i32),
            padding: (0, 0),
        };
        let n_pos = cfg.grid() * cfg.grid() + 1;
        let eps = cfg.layer_norm_eps;
        let mut encoder = Vec::with_capacity(layers);
        for i in 0..layers {
            let l = format!("{prefix}.encoder.layers.{i}");
            let a = join(&l, "self_attn");
            encoder.push(Layer {
                ln1: LayerNorm::load(w, &join(&l, "layer_norm1"), d, eps)?,
                q: Linear::load(w, &join(&a, "q_proj"), d, d, true)?,
                k: Linear::load(w, &join(&a, "k_proj"), d, d, true)?,
                v: Linear::load(w, &join(&a, "v_proj"), d, d, true)?,
                o: Linear::load(w, &join(&a, "out_proj"), d, d, true)?,
                ln2: LayerNorm::load(w, &join(&l, "layer_norm2"), d, eps)?,
                fc1: Linear::load(w, &join(&l, "mlp.fc1"), d, cfg.intermediate_size, true)?,
                fc2: Linear::load(w, &join(&l, "mlp.fc2"), cfg.intermediate_size, d, true)?,
            });
        }
        Ok(ClipVision {
            patch,
            class_embedding: w.get_shaped(&join(&e, "class_embedding"), &[d])?,
            positions: w.get_shaped(&join(&e, "position_embedding.weight"), &[n_pos, d])?,
            pre_norm: LayerNorm::load(w, &join(prefix, "pre_layrnorm"), d, eps)?,
            layers: encoder,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Every weight (for `eval` and dtype conversion).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.patch.weight, &self.class_embedding, &self.positions];
        v.extend(self.pre_norm.arrays());
        for l in &self.layers {
            v.extend(l.ln1.arrays().into_iter().chain(l.ln2.arrays()));
            for lin in [&l.q, &l.k, &l.v, &l.o, &l.fc1, &l.fc2] {
                v.extend(lin.arrays());
            }
        }
        v
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: Dtype) -> Result<()> {
        for a in [&mut self.patch.weight, &mut self.class_embedding, &mut self.positions] {
            *a = a.astype(dtype)?;
        }
        cast_norm(&mut self.pre_norm, dtype)?;
        for l in &mut self.layers {
            cast_norm(&mut l.ln1, dtype)?;
            cast_norm(&mut l.ln2, dtype)?;
            for lin in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.fc1, &mut l.fc2] {
                *lin = lin.dequantized(dtype)?;
            }
        }
        engine_mlx::eval(self.arrays())
    }

    /// Hidden states of pixels (N, H, W, C): entry 0 is the embeddings after
    /// the pre-norm, entry i the output of encoder layer i, for each loaded
    /// layer — HF's `hidden_states` tuple. Each (N, 1 + patches, hidden).
    pub fn hidden_states(&self, pixels: &Array) -> Result<Vec<Array>> {
        let n = pixels.dim(0) as i32;
        let d = self.cfg.hidden_size as i32;
        let patches = self.patch.forward(pixels)?.reshape(&[n, -1, d])?;
        let cls = self.class_embedding.astype(patches.dtype())?.broadcast_to(&[n, 1, d])?;
        let x = concatenate(&[&cls, &patches], 1)?.add(&self.positions)?;
        let mut states = vec![self.pre_norm.forward(&x)?];
        for l in &self.layers {
            let h = states.last().expect("starts non-empty");
            let next = self.layer(l, h)?;
            states.push(next);
        }
        Ok(states)
    }

    fn layer(&self, l: &Layer, x: &Array) -> Result<Array> {
        let s = x.shape_i32();
        let (b, t) = (s[0], s[1]);
        let heads = self.cfg.num_attention_heads as i32;
        let hd = self.cfg.hidden_size as i32 / heads;
        let h = l.ln1.forward(x)?;
        let split = |t_: Array| t_.reshape(&[b, t, heads, hd])?.transpose(&[0, 2, 1, 3]);
        let (q, k, v) = (
            split(l.q.forward(&h)?)?,
            split(l.k.forward(&h)?)?,
            split(l.v.forward(&h)?)?,
        );
        let a = scaled_dot_product_attention(&q, &k, &v, (hd as f32).powf(-0.5), AttentionMask::None)?;
        let a = l.o.forward(&a.transpose(&[0, 2, 1, 3])?.reshape(&[b, t, -1])?)?;
        let x = x.add(&a)?;
        let m = l.fc1.forward(&l.ln2.forward(&x)?)?;
        let m = if self.cfg.hidden_act == "quick_gelu" {
            m.multiply(&m.mul_scalar(1.702)?.sigmoid()?)?
        } else {
            m.gelu()?
        };
        x.add(&l.fc2.forward(&m)?)
    }
}

/// Casts a layer norm's parameters (shared with other towers).
pub(crate) fn cast_norm(n: &mut LayerNorm, dtype: Dtype) -> Result<()> {
    for p in [&mut n.weight, &mut n.bias].into_iter().flatten() {
        *p = p.astype(dtype)?;
    }
    Ok(())
}
