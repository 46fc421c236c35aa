//! The plain vision transformers the LLaVA, Gemma 3 and Idefics3 families
//! use as towers: CLIP (class token, pre-norm over the embeddings) and
//! SigLIP (no class token, a biased patch convolution, a post-norm), with
//! the same pre-norm encoder layers. Hidden states of any layer can be read
//! (LLaVA reads the second to last).

use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask};
use engine_mlx::nn::{join, Conv2d, LayerNorm, Linear};
use engine_mlx::{concatenate, Array, Dtype, Result, WeightMap};
use serde::Deserialize;

/// Which tower: decides the embeddings, the norms and the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitKind {
    /// OpenAI CLIP: class token, `pre_layrnorm`, no patch bias.
    Clip,
    /// SigLIP: no class token, biased patch convolution, `post_layernorm`.
    Siglip,
}

/// `vision_config` of a CLIP or SigLIP tower.
#[derive(Debug, Clone, Deserialize)]
pub struct VitConfig {
    /// `clip_vision_model`, `siglip_vision_model`, `idefics3_vision`, ...
    #[serde(default)]
    pub model_type: Option<String>,
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
    /// Layer-norm epsilon (default by kind: CLIP 1e-5, SigLIP 1e-6).
    #[serde(default)]
    pub layer_norm_eps: Option<f32>,
    /// MLP activation: `quick_gelu`, `gelu` or `gelu_pytorch_tanh` (default by
    /// kind: CLIP `quick_gelu`, SigLIP `gelu_pytorch_tanh`).
    #[serde(default)]
    pub hidden_act: Option<String>,
}

fn three() -> usize {
    3
}

impl VitConfig {
    /// The tower's kind from its `model_type` (`default` when absent).
    pub fn kind(&self, default: VitKind) -> VitKind {
        match self.model_type.as_deref() {
            Some(t) if t.starts_with("siglip") || t.starts_with("idefics3") || t.starts_with("smolvlm") => {
                VitKind::Siglip
            }
            Some(t) if t.starts_with("clip") => VitKind::Clip,
            _ => default,
        }
    }

    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    fn eps(&self, kind: VitKind) -> f32 {
        self.layer_norm_eps.unwrap_or(match kind {
            VitKind::Clip => 1e-5,
            VitKind::Siglip => 1e-6,
        })
    }

    /// The MLP activation, resolved for `kind`.
    pub fn activation(&self, kind: VitKind) -> &str {
        self.hidden_act.as_deref().unwrap_or(match kind {
            VitKind::Clip => "quick_gelu",
            VitKind::Siglip => "gelu_pytorch_tanh",
        })
    }

    /// Refuses activations the tower does not implement.
    pub fn check(&self, kind: VitKind) -> std::result::Result<(), String> {
        match self.activation(kind) {
            "quick_gelu" | "gelu" | "gelu_pytorch_tanh" => Ok(()),
            other => Err(format!(
                "vision_config.hidden_act `{other}` is not supported (quick_gelu, gelu, gelu_pytorch_tanh)"
            )),
        }
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

/// A loaded CLIP or SigLIP tower.
pub struct VisionTransformer {
    cfg: VitConfig,
    kind: VitKind,
    patch: Conv2d,
    class_embedding: Option<Array>,
    positions: Array,
    pre_norm: Option<LayerNorm>,
    post_norm: Option<LayerNorm>,
    layers: Vec<Layer>,
}

impl VisionTransformer {
    /// Loads the tower from weights named `{prefix}.embeddings.*`,
    /// `{prefix}.encoder.layers.N.*` and the kind's norm (the patch
    /// convolution in MLX layout (out, kh, kw, in)). Only the first `layers`
    /// encoder layers are loaded: deeper ones are never read. SigLIP's
    /// post-norm is loaded only with every layer (it follows the last).
    pub fn load(cfg: VitConfig, kind: VitKind, w: &WeightMap, prefix: &str, layers: usize) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let e = join(prefix, "embeddings");
        let siglip = kind == VitKind::Siglip;
        let patch = Conv2d {
            weight: w.get_shaped(&join(&e, "patch_embedding.weight"), &[d, p, p, c])?,
            bias: if siglip {
                Some(w.get_shaped(&join(&e, "patch_embedding.bias"), &[d])?)
            } else {
                None
            },
            stride: (p as i32, p as i32),
            padding: (0, 0),
        };
        let n_pos = cfg.grid() * cfg.grid() + usize::from(!siglip);
        let eps = cfg.eps(kind);
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
        let all = layers == cfg.num_hidden_layers;
        Ok(VisionTransformer {
            patch,
            class_embedding: (!siglip)
                .then(|| w.get_shaped(&join(&e, "class_embedding"), &[d]))
                .transpose()?,
            positions: w.get_shaped(&join(&e, "position_embedding.weight"), &[n_pos, d])?,
            pre_norm: (!siglip)
                .then(|| LayerNorm::load(w, &join(prefix, "pre_layrnorm"), d, eps))
                .transpose()?,
            post_norm: (siglip && all)
                .then(|| LayerNorm::load(w, &join(prefix, "post_layernorm"), d, eps))
                .transpose()?,
            layers: encoder,
            kind,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Every weight (for `eval` and dtype conversion).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.patch.weight, &self.positions];
        v.extend(self.patch.bias.iter().chain(&self.class_embedding));
        for n in self.pre_norm.iter().chain(&self.post_norm) {
            v.extend(n.arrays());
        }
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
        for a in [&mut self.patch.weight, &mut self.positions]
            .into_iter()
            .chain(self.patch.bias.as_mut())
            .chain(self.class_embedding.as_mut())
        {
            *a = a.astype(dtype)?;
        }
        for n in self.pre_norm.iter_mut().chain(self.post_norm.as_mut()) {
            cast_norm(n, dtype)?;
        }
        for l in &mut self.layers {
            cast_norm(&mut l.ln1, dtype)?;
            cast_norm(&mut l.ln2, dtype)?;
            for lin in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.fc1, &mut l.fc2] {
                *lin = lin.dequantized(dtype)?;
            }
        }
        engine_mlx::eval(self.arrays())
    }

    /// Hidden states of pixels (N, H, W, C): entry 0 is the embeddings (after
    /// CLIP's pre-norm), entry i the output of encoder layer i, for each
    /// loaded layer — HF's `hidden_states` tuple. Each (N, [1 +] patches, hidden).
    pub fn hidden_states(&self, pixels: &Array) -> Result<Vec<Array>> {
        let n = pixels.dim(0) as i32;
        let d = self.cfg.hidden_size as i32;
        let patches = self.patch.forward(pixels)?.reshape(&[n, -1, d])?;
        let x = match &self.class_embedding {
            Some(cls) => {
                let cls = cls.astype(patches.dtype())?.broadcast_to(&[n, 1, d])?;
                concatenate(&[&cls, &patches], 1)?.add(&self.positions)?
            }
            None => patches.add(&self.positions)?,
        };
        let x = match &self.pre_norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        let mut states = vec![x];
        for l in &self.layers {
            let h = states.last().expect("starts non-empty");
            let next = self.layer(l, h)?;
            states.push(next);
        }
        Ok(states)
    }

    /// The last layer's output after SigLIP's post-norm (HF's
    /// `last_hidden_state`), (N, patches, hidden).
    pub fn last_hidden_state(&self, pixels: &Array) -> Result<Array> {
        let last = self.hidden_states(pixels)?.pop().expect("starts non-empty");
        match &self.post_norm {
            Some(norm) => norm.forward(&last),
            None => Ok(last),
        }
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
        let m = match self.cfg.activation(self.kind) {
            "quick_gelu" => m.multiply(&m.mul_scalar(1.702)?.sigmoid()?)?,
            "gelu_pytorch_tanh" => m.gelu_approx()?,
            _ => m.gelu()?,
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
