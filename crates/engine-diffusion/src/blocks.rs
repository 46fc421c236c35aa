//! Building blocks shared by the UNet and the VAE (diffusers' `ResnetBlock2D`,
//! `Downsample2D`, `Upsample2D`, `Attention`), over NHWC activations.

use engine_mlx::fast::{self, PackedConvWeight, PackedLinearWeight};
use engine_mlx::nn::{join, Conv2d, GroupNorm, Linear};
use engine_mlx::{upsample_nearest, Array, Dtype, Result, WeightMap};

/// A conv of the UNet or VAE: where the CPU's direct conv kernel runs, only its
/// weight packed once at load is kept (`fast::conv2d` packs it on every call,
/// reading and writing all conv weights again each step: 1.7% of the CPU bench's
/// profile).
pub(crate) struct Conv {
    weight: ConvWeight,
    bias: Option<Array>,
    pub padding: (i32, i32),
    stride: (i32, i32),
}

enum ConvWeight {
    Plain(Array),
    Packed(PackedConvWeight),
}

impl Conv {
    /// The weight's dtype (what the input is cast to).
    pub fn dtype(&self) -> Dtype {
        match &self.weight {
            ConvWeight::Plain(w) => w.dtype(),
            ConvWeight::Packed(_) => Dtype::Float32,
        }
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        match &self.weight {
            ConvWeight::Plain(w) => fast::conv2d(x, w, self.bias.as_ref(), self.stride, self.padding),
            ConvWeight::Packed(w) => fast::conv2d_packed(x, w, self.bias.as_ref(), self.stride, self.padding),
        }
    }
}

/// Loads a square conv whose kernel size is read from the weight ((O, k, k, I) after load).
pub(crate) fn conv(w: &WeightMap, prefix: &str, io: (usize, usize), stride: i32) -> Result<Conv> {
    let k = w.get(&join(prefix, "weight"))?.dim(1);
    let c = Conv2d::load(w, prefix, io, k, stride, (k / 2) as i32)?;
    let weight = match fast::pack_conv_weight(&c.weight, c.stride)? {
        Some(p) => ConvWeight::Packed(p),
        None => ConvWeight::Plain(c.weight),
    };
    Ok(Conv {
        weight,
        bias: c.bias,
        padding: c.padding,
        stride: c.stride,
    })
}

/// A linear layer over image tokens (many rows): where the CPU's direct kernel
/// takes its products, only its weight packed once at load is kept
/// (`fast::linear_rows` packs it on every call).
pub(crate) enum Dense {
    Plain(Linear),
    Packed {
        weight: PackedLinearWeight,
        bias: Option<Array>,
    },
}

impl Dense {
    /// Loads `{prefix}.weight` (out, in) and, when `bias`, `{prefix}.bias`.
    pub fn load(w: &WeightMap, prefix: &str, inp: usize, out: usize, bias: bool) -> Result<Dense> {
        let layer = Linear::load(w, prefix, inp, out, bias)?;
        if let Linear::Dense { weight, bias } = &layer {
            if let Some(packed) = fast::pack_linear_weight(weight)? {
                return Ok(Dense::Packed {
                    weight: packed,
                    bias: bias.clone(),
                });
            }
        }
        Ok(Dense::Plain(layer))
    }

    /// x (…, in) → (…, out).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            Dense::Plain(l) => l.forward_rows(x),
            Dense::Packed { weight, bias } => fast::linear_rows_packed(x, weight, bias.as_ref()),
        }
    }
}

/// `ResnetBlock2D`: norm → SiLU → conv, plus the projected time embedding,
/// norm → SiLU → conv, and a 1×1 shortcut when the width changes.
pub(crate) struct Resnet {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl Resnet {
    /// Loads `{prefix}.*`; `temb` is the time-embedding width (None in the VAE).
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        (cin, cout): (usize, usize),
        temb: Option<usize>,
        groups: usize,
        eps: f32,
    ) -> Result<Resnet> {
        let p = |n: &str| join(prefix, n);
        Ok(Resnet {
            norm1: GroupNorm::load(w, &p("norm1"), groups, cin, eps)?,
            conv1: conv(w, &p("conv1"), (cin, cout), 1)?,
            time_emb_proj: temb
                .map(|t| Linear::load(w, &p("time_emb_proj"), t, cout, true))
                .transpose()?,
            norm2: GroupNorm::load(w, &p("norm2"), groups, cout, eps)?,
            conv2: conv(w, &p("conv2"), (cout, cout), 1)?,
            shortcut: if w.contains(&p("conv_shortcut.weight")) {
                Some(conv(w, &p("conv_shortcut"), (cin, cout), 1)?)
            } else {
                None
            },
        })
    }

    /// x (N, H, W, Cin), temb (N or 1, T) → (N, H, W, Cout).
    pub fn forward(&self, x: &Array, temb: Option<&Array>) -> Result<Array> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&t.silu()?)?;
            h = h.add(&t.expand_dims(1)?.expand_dims(1)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip.add(&h)
    }
}

/// `Downsample2D`: a stride-2 3×3 conv (`{prefix}.conv`). The VAE encoder
/// pads only right and bottom (`pad_asymmetric`), as diffusers' padding=0 path does.
pub(crate) struct Downsample {
    conv: Conv,
    pad_asymmetric: bool,
}

impl Downsample {
    pub fn load(w: &WeightMap, prefix: &str, ch: usize, pad_asymmetric: bool) -> Result<Downsample> {
        let mut conv = conv(w, &join(prefix, "conv"), (ch, ch), 2)?;
        if pad_asymmetric {
            conv.padding = (0, 0);
        }
        Ok(Downsample { conv, pad_asymmetric })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        if self.pad_asymmetric {
            return self.conv.forward(&x.pad(&[1, 2], &[0, 0], &[1, 1], 0.0)?);
        }
        self.conv.forward(x)
    }
}

/// `Upsample2D`: nearest ×2, then a 3×3 conv (`{prefix}.conv`).
pub(crate) struct Upsample {
    conv: Conv,
}

impl Upsample {
    pub fn load(w: &WeightMap, prefix: &str, ch: usize) -> Result<Upsample> {
        Ok(Upsample {
            conv: conv(w, &join(prefix, "conv"), (ch, ch), 1)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        self.conv.forward(&upsample_nearest(x, 2, 2)?)
    }
}

/// diffusers' `Attention` (`to_q`, `to_k`, `to_v`, `to_out.0`), multi-head,
/// over (B, L, C) queries and (B, S, Ck) context.
pub(crate) struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    heads: i32,
}

impl Attention {
    /// `inner` = heads × head_dim; `ctx` is the context width (= `dim` for self-attention).
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        dim: usize,
        ctx: usize,
        heads: usize,
        inner: usize,
        qkv_bias: bool,
    ) -> Result<Attention> {
        let p = |n: &str| join(prefix, n);
        Ok(Attention {
            q: Dense::load(w, &p("to_q"), dim, inner, qkv_bias)?,
            k: Dense::load(w, &p("to_k"), ctx, inner, qkv_bias)?,
            v: Dense::load(w, &p("to_v"), ctx, inner, qkv_bias)?,
            out: Dense::load(w, &p("to_out.0"), inner, dim, true)?,
            heads: heads as i32,
        })
    }

    pub fn forward(&self, x: &Array, context: Option<&Array>) -> Result<Array> {
        let ctx = context.unwrap_or(x);
        let q = self.q.forward(x)?;
        let scale = ((q.dim(-1) / self.heads as usize) as f32).powf(-0.5);
        let a = fast::attention(&q, &self.k.forward(ctx)?, &self.v.forward(ctx)?, self.heads, scale)?;
        self.out.forward(&a)
    }
}

/// Sinusoidal embedding of `t` (diffusers' `get_timestep_embedding`), computed
/// in f32 in the same order as diffusers so the phases round identically.
pub(crate) fn timestep_embedding(t: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f32) -> Result<Array> {
    let half = dim / 2;
    let ln = -(10000f32.ln());
    let freqs: Vec<f32> = (0..half)
        .map(|i| ((ln * i as f32) / (half as f32 - shift)).exp())
        .collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let args: Vec<f32> = freqs.iter().map(|f| tv * f).collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        let (first, second) = if flip_sin_to_cos { (cos, sin) } else { (sin, cos) };
        out.extend(first);
        out.extend(second);
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Array::from_slice(&out, &[t.len(), dim])
}

/// diffusers' `get_guidance_scale_embedding` of `w` (LCM's `guidance_scale - 1`), in f32.
pub(crate) fn guidance_embedding(w: f32, dim: usize) -> Result<Array> {
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let args: Vec<f32> = (0..half).map(|i| (w * 1000.0) * (i as f32 * -step).exp()).collect();
    let mut out: Vec<f32> = args
        .iter()
        .map(|a| a.sin())
        .chain(args.iter().map(|a| a.cos()))
        .collect();
    out.resize(dim, 0.0);
    Array::from_slice(&out, &[1, dim])
}
