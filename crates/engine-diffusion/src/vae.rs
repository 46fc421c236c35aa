//! diffusers' `AutoencoderKL`: the decoder (latents → pixels) and the encoder
//! (pixels → the posterior's mean, for img2img), over NHWC.

use crate::blocks::{conv, Attention, Conv, Downsample, Resnet, Upsample};
use engine_mlx::nn::GroupNorm;
use engine_mlx::{Array, Result, WeightMap};
use serde::Deserialize;

/// `vae/config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// Width of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    /// Latent channels (4).
    pub latent_channels: usize,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Latents are divided by this before decoding (0.18215 for SD 1/2, 0.13025 for SDXL).
    #[serde(default = "scaling")]
    pub scaling_factor: f32,
    /// Run in float32 when the pipeline computes in float16 (SDXL's VAE overflows in f16; bfloat16
    /// keeps its dtype, having float32's range).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// The 1×1 `quant_conv` after the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// The 1×1 `post_quant_conv` before the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
}

fn groups() -> usize {
    32
}
fn scaling() -> f32 {
    0.18215
}
fn yes() -> bool {
    true
}

const EPS: f32 = 1e-6;

/// `UNetMidBlock2D`: resnet, single-head spatial self-attention, resnet.
struct Mid {
    r0: Resnet,
    norm: GroupNorm,
    attn: Attention,
    r1: Resnet,
}

impl Mid {
    fn load(w: &WeightMap, prefix: &str, c: usize, g: usize) -> Result<Mid> {
        Ok(Mid {
            r0: Resnet::load(w, &format!("{prefix}.resnets.0"), (c, c), None, g, EPS)?,
            norm: GroupNorm::load(w, &format!("{prefix}.attentions.0.group_norm"), g, c, EPS)?,
            attn: Attention::load(w, &format!("{prefix}.attentions.0"), c, c, 1, c, true)?,
            r1: Resnet::load(w, &format!("{prefix}.resnets.1"), (c, c), None, g, EPS)?,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let h = self.r0.forward(x, None)?;
        let s = h.shape_i32();
        let a = self.norm.forward(&h)?.reshape(&[s[0], s[1] * s[2], s[3]])?;
        let h = self.attn.forward(&a, None)?.reshape(&s)?.add(&h)?;
        self.r1.forward(&h, None)
    }
}

struct Level {
    resnets: Vec<Resnet>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

struct Encoder {
    conv_in: Conv,
    levels: Vec<Level>,
    mid: Mid,
    norm: GroupNorm,
    conv_out: Conv,
    quant: Option<Conv>,
}

/// A loaded VAE (decoder always; encoder when its weights are present).
pub struct Vae {
    cfg: VaeConfig,
    post_quant: Option<Conv>,
    dec_in: Conv,
    dec_mid: Mid,
    dec_up: Vec<Level>,
    dec_norm: GroupNorm,
    dec_out: Conv,
    encoder: Option<Encoder>,
}

impl Vae {
    /// Loads `decoder.*`, `post_quant_conv`, and `encoder.*` / `quant_conv` when present.
    pub fn load(cfg: VaeConfig, w: &WeightMap) -> Result<Vae> {
        let ch = &cfg.block_out_channels;
        let (n, g, lat) = (ch.len(), cfg.norm_num_groups, cfg.latent_channels);
        let top = ch[n - 1];
        let mut dec_up = Vec::with_capacity(n);
        let mut prev = top;
        for i in 0..n {
            let cout = ch[n - 1 - i];
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    let rin = if j == 0 { prev } else { cout };
                    Resnet::load(w, &format!("{p}.resnets.{j}"), (rin, cout), None, g, EPS)
                })
                .collect::<Result<_>>()?;
            let up = if i + 1 < n {
                Some(Upsample::load(w, &format!("{p}.upsamplers.0"), cout)?)
            } else {
                None
            };
            dec_up.push(Level {
                resnets,
                down: None,
                up,
            });
            prev = cout;
        }
        let encoder = if w.contains("encoder.conv_in.weight") {
            let mut levels = Vec::with_capacity(n);
            let mut cin = ch[0];
            for (i, &cout) in ch.iter().enumerate() {
                let p = format!("encoder.down_blocks.{i}");
                let resnets = (0..cfg.layers_per_block)
                    .map(|j| {
                        let rin = if j == 0 { cin } else { cout };
                        Resnet::load(w, &format!("{p}.resnets.{j}"), (rin, cout), None, g, EPS)
                    })
                    .collect::<Result<_>>()?;
                let down = if i + 1 < n {
                    Some(Downsample::load(w, &format!("{p}.downsamplers.0"), cout, true)?)
                } else {
                    None
                };
                levels.push(Level {
                    resnets,
                    down,
                    up: None,
                });
                cin = cout;
            }
            let quant = if cfg.use_quant_conv {
                Some(conv(w, "quant_conv", (2 * lat, 2 * lat), 1)?)
            } else {
                None
            };
            Some(Encoder {
                conv_in: conv(w, "encoder.conv_in", (cfg.in_channels, ch[0]), 1)?,
                levels,
                mid: Mid::load(w, "encoder.mid_block", top, g)?,
                norm: GroupNorm::load(w, "encoder.conv_norm_out", g, top, EPS)?,
                conv_out: conv(w, "encoder.conv_out", (top, 2 * lat), 1)?,
                quant,
            })
        } else {
            None
        };
        Ok(Vae {
            post_quant: if cfg.use_post_quant_conv {
                Some(conv(w, "post_quant_conv", (lat, lat), 1)?)
            } else {
                None
            },
            dec_in: conv(w, "decoder.conv_in", (lat, top), 1)?,
            dec_mid: Mid::load(w, "decoder.mid_block", top, g)?,
            dec_up,
            dec_norm: GroupNorm::load(w, "decoder.conv_norm_out", g, ch[0], EPS)?,
            dec_out: conv(w, "decoder.conv_out", (ch[0], cfg.out_channels), 1)?,
            encoder,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Pixels per latent along each side (2^(levels-1), 8 for every SD VAE).
    pub fn scale_factor(&self) -> usize {
        1 << (self.cfg.block_out_channels.len() - 1)
    }

    /// Whether the encoder was loaded (img2img needs it).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Decodes *unscaled* latents z (N, h, w, C) to pixels in [-1, 1] (N, H, W, 3),
    /// computing in the dtype of the VAE's weights.
    pub fn decode(&self, z: &Array) -> Result<Array> {
        let z = z.astype(self.dec_in.dtype())?;
        let z = match &self.post_quant {
            Some(c) => c.forward(&z)?,
            None => z,
        };
        let mut h = self.dec_mid.forward(&self.dec_in.forward(&z)?)?;
        for lvl in &self.dec_up {
            for r in &lvl.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = &lvl.up {
                h = u.forward(&h)?;
            }
        }
        self.dec_out.forward(&self.dec_norm.forward_silu(&h)?)
    }

    /// Encodes pixels in [-1, 1] (N, H, W, 3) to the posterior's mean (unscaled), or None without an encoder.
    pub fn encode_mean(&self, x: &Array) -> Result<Option<Array>> {
        let Some(e) = &self.encoder else {
            return Ok(None);
        };
        let mut h = e.conv_in.forward(&x.astype(e.conv_in.dtype())?)?;
        for lvl in &e.levels {
            for r in &lvl.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(d) = &lvl.down {
                h = d.forward(&h)?;
            }
        }
        let h = e.conv_out.forward(&e.norm.forward_silu(&e.mid.forward(&h)?)?)?;
        let moments = match &e.quant {
            Some(q) => q.forward(&h)?,
            None => h,
        };
        Ok(Some(moments.slice_axis(-1, 0, self.cfg.latent_channels as i32)?))
    }
}
