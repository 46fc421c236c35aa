//! The CLIP text encoder (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`): token + learned position embeddings,
//! causal pre-norm layers, a final layer norm; hidden states of every layer
//! (SD 2.x reads the last, normed; SDXL the penultimate, un-normed) and the
//! pooled, projected end-of-text state (SDXL's second encoder).

use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask};
use engine_mlx::nn::{join, Embedding, LayerNorm, Linear};
use engine_mlx::{Array, Result, WeightMap};
use serde::Deserialize;

/// `text_encoder/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Positions (77).
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP, SD 1.x / SDXL's first encoder) or `gelu` (OpenCLIP).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// Layer-norm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f32,
    /// Width of `text_projection` (with-projection models).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f32 {
    1e-5
}

struct Layer {
    ln1: LayerNorm,
    qkv: [Linear; 3],
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// What one forward pass returns.
pub struct ClipTextOutput {
    /// Entry 0: the embeddings; entry i: the output of layer i (transformers'
    /// `hidden_states`), each (B, L, hidden). None has the final norm applied.
    pub hidden_states: Vec<Array>,
    /// `final_layer_norm` of the last hidden state (`last_hidden_state`).
    pub last_hidden_state: Array,
    /// The end-of-text state projected by `text_projection` (`text_embeds`), (B, projection_dim).
    pub text_embeds: Option<Array>,
}

/// A loaded CLIP text encoder.
pub struct ClipTextEncoder {
    cfg: ClipTextConfig,
    tokens: Embedding,
    positions: Array,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
}

impl ClipTextEncoder {
    /// Loads `text_model.*` (and `text_projection.weight` when present);
    /// transformers 5 writes the same names without the `text_model.` prefix.
    pub fn load(cfg: ClipTextConfig, w: &WeightMap) -> Result<ClipTextEncoder> {
        let (d, m, e) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let p = if w.contains("embeddings.token_embedding.weight") {
            ""
        } else {
            "text_model"
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = join(p, &format!("encoder.layers.{i}"));
                let a = join(&l, "self_attn");
                let lin = |n: &str| Linear::load(w, &join(&a, n), d, d, true);
                Ok(Layer {
                    ln1: LayerNorm::load(w, &join(&l, "layer_norm1"), d, e)?,
                    qkv: [lin("q_proj")?, lin("k_proj")?, lin("v_proj")?],
                    out: lin("out_proj")?,
                    ln2: LayerNorm::load(w, &join(&l, "layer_norm2"), d, e)?,
                    fc1: Linear::load(w, &join(&l, "mlp.fc1"), d, m, true)?,
                    fc2: Linear::load(w, &join(&l, "mlp.fc2"), m, d, true)?,
                })
            })
            .collect::<Result<_>>()?;
        let projection = match (w.contains("text_projection.weight"), cfg.projection_dim) {
            (true, Some(pd)) => Some(Linear::load(w, "text_projection", d, pd, false)?),
            _ => None,
        };
        Ok(ClipTextEncoder {
            tokens: Embedding::load(w, &join(p, "embeddings.token_embedding"), cfg.vocab_size, d)?,
            positions: w.get_shaped(
                &join(p, "embeddings.position_embedding.weight"),
                &[cfg.max_position_embeddings, d],
            )?,
            layers,
            final_norm: LayerNorm::load(w, &join(p, "final_layer_norm"), d, e)?,
            projection,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// Encodes token ids (B rows of L ids); `eos` is the end-of-text id whose
    /// first position gives the pooled state.
    pub fn forward(&self, ids: &[Vec<u32>], eos: u32) -> Result<ClipTextOutput> {
        let (b, l) = (ids.len(), ids.first().map_or(0, Vec::len));
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let idx = Array::from_slice(&flat, &[b, l])?;
        let pos = self.positions.slice_axis(0, 0, l as i32)?;
        let mut x = self.tokens.forward(&idx)?.add(&pos)?;
        let mut hidden_states = vec![x.clone()];
        for layer in &self.layers {
            x = self.layer(layer, &x)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_norm.forward(&x)?;
        let text_embeds = match &self.projection {
            Some(proj) => {
                let at: Vec<i32> = ids
                    .iter()
                    .enumerate()
                    .map(|(r, row)| (r * l + row.iter().position(|&t| t == eos).unwrap_or(l - 1)) as i32)
                    .collect();
                let rows = last_hidden_state
                    .reshape(&[(b * l) as i32, -1])?
                    .take(&Array::from_slice(&at, &[b])?, 0)?;
                Some(proj.forward(&rows)?)
            }
            None => None,
        };
        Ok(ClipTextOutput {
            hidden_states,
            last_hidden_state,
            text_embeds,
        })
    }

    fn layer(&self, l: &Layer, x: &Array) -> Result<Array> {
        let s = x.shape_i32();
        let (b, t) = (s[0], s[1]);
        let heads = self.cfg.num_attention_heads as i32;
        let hd = self.cfg.hidden_size as i32 / heads;
        let h = l.ln1.forward(x)?;
        let split = |lin: &Linear| lin.forward(&h)?.reshape(&[b, t, heads, hd])?.transpose(&[0, 2, 1, 3]);
        let (q, k, v) = (split(&l.qkv[0])?, split(&l.qkv[1])?, split(&l.qkv[2])?);
        let a = scaled_dot_product_attention(&q, &k, &v, (hd as f32).powf(-0.5), AttentionMask::Causal)?;
        let x = x.add(&l.out.forward(&a.transpose(&[0, 2, 1, 3])?.reshape(&[b, t, -1])?)?)?;
        let m = l.fc1.forward(&l.ln2.forward(&x)?)?;
        let m = match self.cfg.hidden_act.as_str() {
            "quick_gelu" => m.multiply(&m.mul_scalar(1.702)?.sigmoid()?)?,
            _ => m.gelu()?,
        };
        x.add(&l.fc2.forward(&m)?)
    }

    /// Applies `final_layer_norm` (SD 1.x/2.x with `clip_skip`).
    pub fn final_norm(&self, x: &Array) -> Result<Array> {
        self.final_norm.forward(x)
    }

    /// Every weight, for `eval`.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.positions];
        v.extend(self.tokens.arrays());
        v.extend(self.final_norm.arrays());
        for l in &self.layers {
            v.extend(l.ln1.arrays().into_iter().chain(l.ln2.arrays()));
            for lin in l.qkv.iter().chain([&l.out, &l.fc1, &l.fc2]) {
                v.extend(lin.arrays());
            }
        }
        if let Some(p) = &self.projection {
            v.extend(p.arrays());
        }
        v
    }
}

/// Checks that a config's activation is one this encoder implements.
pub(crate) fn supported_act(act: &str) -> bool {
    matches!(act, "quick_gelu" | "gelu")
}
