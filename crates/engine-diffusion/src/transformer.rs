//! diffusers' `Transformer2DModel` as the UNet uses it: group norm, a linear
//! or 1×1-conv `proj_in`, `BasicTransformerBlock`s (self-attention,
//! cross-attention on the text, GEGLU feed-forward, each pre-norm with a
//! residual), `proj_out`, and the residual around it all.

use crate::blocks::{conv, Attention, Conv, Dense};
use engine_mlx::fast;
use engine_mlx::nn::{join, GroupNorm, LayerNorm};
use engine_mlx::{Array, Result, WeightMap};

struct Block {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Dense,
    ff_out: Dense,
}

enum Proj {
    Linear(Dense),
    Conv(Conv),
}

impl Proj {
    fn load(w: &WeightMap, prefix: &str, cin: usize, cout: usize, linear: bool) -> Result<Proj> {
        Ok(if linear {
            Proj::Linear(Dense::load(w, prefix, cin, cout, true)?)
        } else {
            Proj::Conv(conv(w, prefix, (cin, cout), 1)?)
        })
    }

    /// Applies to (N, H, W, C) (a 1×1 conv is a linear map over channels).
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Proj::Linear(l) => l.forward(x),
            Proj::Conv(c) => c.forward(x),
        }
    }
}

/// A `Transformer2DModel` of continuous input.
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<Block>,
    proj_out: Proj,
}

/// The shape of one `Transformer2DModel`.
pub(crate) struct TransformerSpec {
    /// Channels in and out (= heads × head_dim).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// `BasicTransformerBlock`s (SDXL's `transformer_layers_per_block`).
    pub layers: usize,
    /// Text-embedding width.
    pub context: usize,
    /// Group-norm groups.
    pub groups: usize,
    /// `use_linear_projection`.
    pub linear_projection: bool,
}

impl Transformer2D {
    pub fn load(w: &WeightMap, prefix: &str, s: &TransformerSpec) -> Result<Transformer2D> {
        let c = s.channels;
        let p = |n: &str| join(prefix, n);
        let blocks = (0..s.layers)
            .map(|i| {
                let b = p(&format!("transformer_blocks.{i}"));
                let q = |n: &str| join(&b, n);
                Ok(Block {
                    norm1: LayerNorm::load(w, &q("norm1"), c, 1e-5)?,
                    attn1: Attention::load(w, &q("attn1"), c, c, s.heads, c, false)?,
                    norm2: LayerNorm::load(w, &q("norm2"), c, 1e-5)?,
                    attn2: Attention::load(w, &q("attn2"), c, s.context, s.heads, c, false)?,
                    norm3: LayerNorm::load(w, &q("norm3"), c, 1e-5)?,
                    ff_in: Dense::load(w, &q("ff.net.0.proj"), c, c * 8, true)?,
                    ff_out: Dense::load(w, &q("ff.net.2"), c * 4, c, true)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Transformer2D {
            norm: GroupNorm::load(w, &p("norm"), s.groups, c, 1e-6)?,
            proj_in: Proj::load(w, &p("proj_in"), c, c, s.linear_projection)?,
            blocks,
            proj_out: Proj::load(w, &p("proj_out"), c, c, s.linear_projection)?,
        })
    }

    /// x (N, H, W, C), context (N, S, Ck) → (N, H, W, C).
    pub fn forward(&self, x: &Array, context: &Array) -> Result<Array> {
        let s = x.shape_i32();
        let h = self.proj_in.forward(&self.norm.forward(x)?)?;
        let mut h = h.reshape(&[s[0], s[1] * s[2], s[3]])?;
        for b in &self.blocks {
            h = h.add(&b.attn1.forward(&b.norm1.forward(&h)?, None)?)?;
            h = h.add(&b.attn2.forward(&b.norm2.forward(&h)?, Some(context))?)?;
            // GEGLU: the first half is the value, the second the gate.
            let ff = b.ff_in.forward(&b.norm3.forward(&h)?)?;
            h = h.add(&b.ff_out.forward(&fast::geglu(&ff)?)?)?;
        }
        self.proj_out.forward(&h.reshape(&s)?)?.add(x)
    }
}
