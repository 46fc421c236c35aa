//! diffusers' `UNet2DConditionModel` (SD 1.x/2.x and SDXL): sinusoidal time
//! embedding (+ SDXL's `text_time` added conditioning), down blocks with or
//! without cross-attention, a cross-attention mid block, up blocks fed by the
//! skip connections, over NHWC latents.

use crate::blocks::{conv, timestep_embedding, Conv, Downsample, Resnet, Upsample};
use crate::transformer::{Transformer2D, TransformerSpec};
use engine_mlx::nn::{GroupNorm, Linear};
use engine_mlx::{concatenate, Array, Result, WeightMap};
use serde::Deserialize;
use serde_json::Value;

/// `unet/config.json` (the fields the SD family uses).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    pub in_channels: usize,
    /// Latent channels out.
    pub out_channels: usize,
    /// Width of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// `CrossAttnDownBlock2D` / `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` / `UpBlock2D` per level (deepest first).
    pub up_block_types: Vec<String>,
    /// Text-embedding width.
    pub cross_attention_dim: usize,
    /// Heads per level (diffusers' historical name; used when `num_attention_heads` is null).
    pub attention_head_dim: Value,
    /// Heads per level, when set.
    #[serde(default)]
    pub num_attention_heads: Value,
    /// Transformer blocks per attention (SDXL: a list per level).
    #[serde(default)]
    pub transformer_layers_per_block: Value,
    /// Linear instead of 1×1-conv projections (SD 2.x, SDXL).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Group-norm groups.
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Group-norm epsilon of resnets and the output norm.
    #[serde(default = "eps")]
    pub norm_eps: f32,
    /// cos before sin in the time embedding.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the time embedding.
    #[serde(default)]
    pub freq_shift: f32,
    /// `"text_time"` for SDXL.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each SDXL time-id embedding.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of SDXL's `add_embedding`.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Width of the guidance-scale embedding of LCM-distilled UNets (`time_embedding.cond_proj`).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Must be `UNetMidBlock2DCrossAttn` (or absent).
    #[serde(default)]
    pub mid_block_type: Option<String>,
}

fn groups() -> usize {
    32
}
fn eps() -> f32 {
    1e-5
}
fn yes() -> bool {
    true
}

/// An int, or one int per level.
pub(crate) fn per_level(v: &Value, levels: usize, default: usize) -> Option<Vec<usize>> {
    match v {
        Value::Null => Some(vec![default; levels]),
        Value::Number(n) => n.as_u64().map(|n| vec![n as usize; levels]),
        Value::Array(a) if a.len() == levels => a.iter().map(|x| x.as_u64().map(|n| n as usize)).collect(),
        _ => None,
    }
}

struct Level {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

/// A loaded UNet.
pub struct UNet {
    cfg: UNetConfig,
    conv_in: Conv,
    time: (Linear, Linear),
    cond_proj: Option<Linear>,
    add_embedding: Option<(Linear, Linear)>,
    down: Vec<Level>,
    mid: (Resnet, Transformer2D, Resnet),
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl UNet {
    /// Builds the UNet of `cfg` from its weights (conv kernels in MLX layout), with
    /// `heads` and transformer `layers` per level (resolved and checked by `check_unet`).
    pub(crate) fn load(cfg: UNetConfig, heads: &[usize], layers: &[usize], w: &WeightMap) -> Result<UNet> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let temb = ch[0] * 4;
        let (g, e) = (cfg.norm_num_groups, cfg.norm_eps);
        let spec = |c: usize, lvl: usize| TransformerSpec {
            channels: c,
            heads: heads[lvl],
            layers: layers[lvl],
            context: cfg.cross_attention_dim,
            groups: g,
            linear_projection: cfg.use_linear_projection,
        };
        let lin = |p: &str, i: usize, o: usize| Linear::load(w, p, i, o, true);
        let mut down = Vec::with_capacity(n);
        let mut cin = ch[0];
        for (i, kind) in cfg.down_block_types.iter().enumerate() {
            let cout = ch[i];
            let p = format!("down_blocks.{i}");
            let mut lvl = Level {
                resnets: vec![],
                attentions: vec![],
                down: None,
                up: None,
            };
            for j in 0..cfg.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                lvl.resnets.push(Resnet::load(
                    w,
                    &format!("{p}.resnets.{j}"),
                    (rin, cout),
                    Some(temb),
                    g,
                    e,
                )?);
                if kind.starts_with("CrossAttn") {
                    lvl.attentions
                        .push(Transformer2D::load(w, &format!("{p}.attentions.{j}"), &spec(cout, i))?);
                }
            }
            if i + 1 < n {
                lvl.down = Some(Downsample::load(w, &format!("{p}.downsamplers.0"), cout, false)?);
            }
            down.push(lvl);
            cin = cout;
        }
        let c = ch[n - 1];
        let mid = (
            Resnet::load(w, "mid_block.resnets.0", (c, c), Some(temb), g, e)?,
            Transformer2D::load(w, "mid_block.attentions.0", &spec(c, n - 1))?,
            Resnet::load(w, "mid_block.resnets.1", (c, c), Some(temb), g, e)?,
        );
        let mut up = Vec::with_capacity(n);
        let mut prev = c;
        for (i, kind) in cfg.up_block_types.iter().enumerate() {
            let lvl_idx = n - 1 - i;
            let cout = ch[lvl_idx];
            let skip_in = ch[lvl_idx.saturating_sub(1)];
            let p = format!("up_blocks.{i}");
            let mut lvl = Level {
                resnets: vec![],
                attentions: vec![],
                down: None,
                up: None,
            };
            for j in 0..=cfg.layers_per_block {
                let skip = if j == cfg.layers_per_block { skip_in } else { cout };
                let rin = if j == 0 { prev } else { cout };
                let r = Resnet::load(w, &format!("{p}.resnets.{j}"), (rin + skip, cout), Some(temb), g, e)?;
                lvl.resnets.push(r);
                if kind.starts_with("CrossAttn") {
                    let t = Transformer2D::load(w, &format!("{p}.attentions.{j}"), &spec(cout, lvl_idx))?;
                    lvl.attentions.push(t);
                }
            }
            if i + 1 < n {
                lvl.up = Some(Upsample::load(w, &format!("{p}.upsamplers.0"), cout)?);
            }
            up.push(lvl);
            prev = cout;
        }
        let add_embedding = match (
            cfg.addition_embed_type.as_deref(),
            cfg.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(pin)) => Some((
                lin("add_embedding.linear_1", pin, temb)?,
                lin("add_embedding.linear_2", temb, temb)?,
            )),
            _ => None,
        };
        Ok(UNet {
            conv_in: conv(w, "conv_in", (cfg.in_channels, ch[0]), 1)?,
            time: (
                lin("time_embedding.linear_1", ch[0], temb)?,
                lin("time_embedding.linear_2", temb, temb)?,
            ),
            add_embedding,
            cond_proj: cfg
                .time_cond_proj_dim
                .map(|d| Linear::load(w, "time_embedding.cond_proj", d, ch[0], false))
                .transpose()?,
            down,
            mid,
            up,
            norm_out: GroupNorm::load(w, "conv_norm_out", g, ch[0], e)?,
            conv_out: conv(w, "conv_out", (ch[0], cfg.out_channels), 1)?,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Whether this is an SDXL UNet (needs pooled text embeddings and time ids).
    pub fn needs_added_cond(&self) -> bool {
        self.add_embedding.is_some()
    }

    /// Whether this UNet takes a guidance-scale embedding instead of classifier-free guidance (LCM).
    pub fn takes_guidance_embedding(&self) -> bool {
        self.cond_proj.is_some()
    }

    /// Predicts noise (or v) for latents x (N, h, w, C) at timestep `t`, with
    /// text context (N, L, D); `added` = (text_embeds (N, P), time_ids (N, 6)) for SDXL;
    /// `guidance_emb` (1, time_cond_proj_dim) for LCM-distilled UNets.
    pub fn forward(
        &self,
        x: &Array,
        t: f32,
        context: &Array,
        added: Option<(&Array, &[f32])>,
        guidance_emb: Option<&Array>,
    ) -> Result<Array> {
        let c0 = self.cfg.block_out_channels[0];
        let mut tproj = timestep_embedding(&[t], c0, self.cfg.flip_sin_to_cos, self.cfg.freq_shift)?;
        if let (Some(proj), Some(g)) = (&self.cond_proj, guidance_emb) {
            tproj = tproj.add(&proj.forward(g)?)?;
        }
        let mut emb = self.time.1.forward(&self.time.0.forward(&tproj)?.silu()?)?;
        if let (Some((l1, l2)), Some((text, ids))) = (&self.add_embedding, added) {
            let dim = self.cfg.addition_time_embed_dim.unwrap_or(256);
            let te = timestep_embedding(ids, dim, self.cfg.flip_sin_to_cos, self.cfg.freq_shift)?;
            let te = te.reshape(&[text.dim(0) as i32, -1])?;
            let a = concatenate(&[text, &te], -1)?;
            emb = emb.add(&l2.forward(&l1.forward(&a)?.silu()?)?)?;
        }
        let emb = emb.astype(x.dtype())?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for lvl in &self.down {
            for (j, r) in lvl.resnets.iter().enumerate() {
                h = r.forward(&h, Some(&emb))?;
                if let Some(a) = lvl.attentions.get(j) {
                    h = a.forward(&h, context)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &lvl.down {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.0.forward(&h, Some(&emb))?;
        h = self.mid.1.forward(&h, context)?;
        h = self.mid.2.forward(&h, Some(&emb))?;
        for lvl in &self.up {
            for (j, r) in lvl.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = r.forward(&concatenate(&[&h, &skip], -1)?, Some(&emb))?;
                if let Some(a) = lvl.attentions.get(j) {
                    h = a.forward(&h, context)?;
                }
            }
            if let Some(u) = &lvl.up {
                h = u.forward(&h)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
    }
}
