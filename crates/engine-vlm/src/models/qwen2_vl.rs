//! Qwen2-VL (`Qwen2VLForConditionalGeneration`): a native-resolution ViT over
//! 14-px patches (two frames deep) with 2-D rotary positions, attention
//! within each image, a 2×2 patch merger, and a Qwen2 decoder whose rotary
//! positions are 3-D (M-RoPE: temporal, height, width) over image spans.

use crate::be;
use crate::preprocess::PixelValues;
use engine_core::{EngineError, Result};
use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask};
use engine_mlx::nn::{join, LayerNorm, Linear};
use engine_mlx::{concatenate, Array, Dtype, WeightMap};
use serde::Deserialize;

/// `vision_config` of Qwen2-VL.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VisionConfig {
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the tower.
    pub embed_dim: usize,
    /// Width of the merger's output (the decoder's hidden size).
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width as a multiple of `embed_dim`.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// MLP activation (`quick_gelu`).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// Input channels.
    #[serde(default = "three", alias = "in_chans")]
    pub in_channels: usize,
    /// Patch side in pixels.
    #[serde(default = "fourteen")]
    pub patch_size: usize,
    /// Patches merged per side into one decoder token.
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    /// Frames per patch.
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    /// Rotary settings (`rope_theta`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

fn four() -> f64 {
    4.0
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn three() -> usize {
    3
}
fn fourteen() -> usize {
    14
}
fn two() -> usize {
    2
}

/// The parts of a Qwen2-VL `config.json` the vision side needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VlConfig {
    /// The vision tower.
    pub vision_config: Qwen2VisionConfig,
    /// Id of `<|image_pad|>`.
    #[serde(default = "image_pad")]
    pub image_token_id: u32,
}

fn image_pad() -> u32 {
    151655
}

/// Checkpoint names → ours: the tower under `visual.`, the decoder as a text
/// checkpoint's (`model.*`, `lm_head.*`); handles the original layout and
/// transformers' newer `model.language_model.*` / `model.visual.*`.
pub fn sanitize(w: WeightMap) -> WeightMap {
    w.rename(|n| {
        Some(if let Some(r) = n.strip_prefix("model.visual.") {
            format!("visual.{r}")
        } else if let Some(r) = n.strip_prefix("model.language_model.") {
            format!("model.{r}")
        } else {
            n.to_string()
        })
    })
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// A loaded Qwen2-VL vision side: tower + merger.
pub struct Qwen2Vl {
    cfg: Qwen2VlConfig,
    patch: Array,
    blocks: Vec<Block>,
    ln_q: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
}

impl Qwen2Vl {
    /// Loads from sanitized weights.
    pub fn load(cfg: Qwen2VlConfig, w: &WeightMap) -> Result<Qwen2Vl> {
        let v = &cfg.vision_config;
        if v.hidden_act != "quick_gelu" && v.hidden_act != "gelu" {
            return Err(EngineError::Config(format!(
                "vision_config.hidden_act `{}` is not supported (quick_gelu, gelu)",
                v.hidden_act
            )));
        }
        if v.num_heads == 0
            || !v.embed_dim.is_multiple_of(v.num_heads)
            || !(v.embed_dim / v.num_heads).is_multiple_of(4)
        {
            return Err(EngineError::Config(format!(
                "vision embed_dim {} must split into num_heads {} heads of a multiple of 4",
                v.embed_dim, v.num_heads
            )));
        }
        let (d, k) = (
            v.embed_dim,
            v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size,
        );
        // A 3-D convolution whose kernel equals its stride is a matmul over the
        // flattened (C, T, p, p) patch, the processor's layout.
        let patch = w
            .get_shaped(
                "visual.patch_embed.proj.weight",
                &[d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
            )
            .and_then(|a| a.reshape(&[d as i32, k as i32]))
            .map_err(be)?;
        let mlp = (d as f64 * v.mlp_ratio) as usize;
        let eps = 1e-6;
        let blocks = (0..v.depth)
            .map(|i| {
                let p = format!("visual.blocks.{i}");
                Ok(Block {
                    norm1: LayerNorm::load(w, &join(&p, "norm1"), d, eps)?,
                    qkv: Linear::load(w, &join(&p, "attn.qkv"), d, 3 * d, true)?,
                    proj: Linear::load(w, &join(&p, "attn.proj"), d, d, true)?,
                    norm2: LayerNorm::load(w, &join(&p, "norm2"), d, eps)?,
                    fc1: Linear::load(w, &join(&p, "mlp.fc1"), d, mlp, true)?,
                    fc2: Linear::load(w, &join(&p, "mlp.fc2"), mlp, d, true)?,
                })
            })
            .collect::<engine_mlx::Result<Vec<_>>>()
            .map_err(be)?;
        let merged = d * v.spatial_merge_size * v.spatial_merge_size;
        Ok(Qwen2Vl {
            ln_q: LayerNorm::load(w, "visual.merger.ln_q", d, eps).map_err(be)?,
            mlp0: Linear::load(w, "visual.merger.mlp.0", merged, merged, true).map_err(be)?,
            mlp2: Linear::load(w, "visual.merger.mlp.2", merged, v.hidden_size, true).map_err(be)?,
            patch,
            blocks,
            cfg,
        })
    }

    /// The placeholder token id.
    pub fn image_token_id(&self) -> u32 {
        self.cfg.image_token_id
    }

    /// Patches merged per side into one decoder token.
    pub fn merge_size(&self) -> usize {
        self.cfg.vision_config.spatial_merge_size
    }

    /// Every weight.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.patch];
        for b in &self.blocks {
            v.extend(b.norm1.arrays().into_iter().chain(b.norm2.arrays()));
            for l in [&b.qkv, &b.proj, &b.fc1, &b.fc2] {
                v.extend(l.arrays());
            }
        }
        v.extend(self.ln_q.arrays());
        v.extend(self.mlp0.arrays().into_iter().chain(self.mlp2.arrays()));
        v
    }

    /// Converts every weight to dense `dtype` and materialises them.
    pub fn convert(&mut self, dtype: Dtype) -> engine_mlx::Result<()> {
        self.patch = self.patch.astype(dtype)?;
        for b in &mut self.blocks {
            crate::clip::cast_norm(&mut b.norm1, dtype)?;
            crate::clip::cast_norm(&mut b.norm2, dtype)?;
            for l in [&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2] {
                *l = l.dequantized(dtype)?;
            }
        }
        crate::clip::cast_norm(&mut self.ln_q, dtype)?;
        self.mlp0 = self.mlp0.dequantized(dtype)?;
        self.mlp2 = self.mlp2.dequantized(dtype)?;
        engine_mlx::eval(self.arrays())
    }

    /// Features of each image: (grid_h·grid_w / merge², decoder hidden).
    pub fn encode(&self, pixels: &[PixelValues]) -> Result<Vec<Array>> {
        let v = &self.cfg.vision_config;
        let k = self.patch.dim(1);
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(pixels.len());
        for p in pixels {
            let grid = p.image_grid_thw.filter(|g| p.shape == [g[0] * g[1] * g[2], k]);
            let Some(grid) = grid else {
                return Err(EngineError::Image(format!(
                    "the image processor made pixels of shape {:?} but this tower takes patches of {k} values \
                     with a grid; preprocessor_config.json does not match config.json",
                    p.shape
                )));
            };
            data.extend_from_slice(&p.data);
            grids.push(grid);
        }
        let rows: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let x = Array::from_slice(&data, &[rows, k]).map_err(be)?;
        let dtype = self.patch.dtype();
        let mut x = x.astype(dtype).and_then(|x| x.matmul(&self.patch.t()?)).map_err(be)?;
        let (cos, sin) = self.rope_tables(&grids, dtype).map_err(be)?;
        let segments: Vec<usize> = grids
            .iter()
            .flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0]))
            .collect();
        for b in &self.blocks {
            x = self.block(b, &x, &cos, &sin, &segments).map_err(be)?;
        }
        let m = v.spatial_merge_size * v.spatial_merge_size;
        let merged = (|| {
            let h = self.ln_q.forward(&x)?.reshape(&[(rows / m) as i32, -1])?;
            self.mlp2.forward(&self.mlp0.forward(&h)?.gelu()?)
        })()
        .map_err(be)?;
        let mut out = Vec::with_capacity(grids.len());
        let mut at = 0;
        for g in &grids {
            let n = (g[0] * g[1] * g[2] / m) as i32;
            out.push(merged.slice_axis(0, at, at + n).map_err(be)?);
            at += n;
        }
        Ok(out)
    }

    /// 2-D rotary tables (rows, 1, head_dim): each patch's (row, column) in
    /// the processor's merge-block-major order, half the frequencies each.
    fn rope_tables(&self, grids: &[[usize; 3]], dtype: Dtype) -> engine_mlx::Result<(Array, Array)> {
        let v = &self.cfg.vision_config;
        let hd = v.embed_dim / v.num_heads;
        let theta = v
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|t| t.as_f64())
            .unwrap_or(10000.0);
        let spatial = hd / 2;
        let inv: Vec<f64> = (0..spatial / 2)
            .map(|j| theta.powf(-((2 * j) as f64) / spatial as f64))
            .collect();
        let m = v.spatial_merge_size;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &[t, h, w] in grids {
            for _ in 0..t {
                for (bh, bw, ih, iw) in merge_order(h / m, w / m, m) {
                    let (row, col) = ((bh * m + ih) as f64, (bw * m + iw) as f64);
                    let angles: Vec<f64> = inv.iter().map(|f| row * f).chain(inv.iter().map(|f| col * f)).collect();
                    for _ in 0..2 {
                        cos.extend(angles.iter().map(|a| a.cos() as f32));
                        sin.extend(angles.iter().map(|a| a.sin() as f32));
                    }
                }
            }
        }
        let n = cos.len() / hd;
        Ok((
            Array::from_slice(&cos, &[n, 1, hd])?.astype(dtype)?,
            Array::from_slice(&sin, &[n, 1, hd])?.astype(dtype)?,
        ))
    }

    fn block(&self, b: &Block, x: &Array, cos: &Array, sin: &Array, segments: &[usize]) -> engine_mlx::Result<Array> {
        let v = &self.cfg.vision_config;
        let (s, heads) = (x.dim(0) as i32, v.num_heads as i32);
        let hd = v.embed_dim as i32 / heads;
        let qkv = b.qkv.forward(&b.norm1.forward(x)?)?.reshape(&[s, 3, heads, hd])?;
        let part = |i: i32| qkv.slice_axis(1, i, i + 1)?.squeeze(1);
        let rot = |t: Array| -> engine_mlx::Result<Array> {
            let d = hd;
            let half = concatenate(
                &[&t.slice_axis(-1, d / 2, d)?.negative()?, &t.slice_axis(-1, 0, d / 2)?],
                -1,
            )?;
            t.multiply(cos)?
                .add(&half.multiply(sin)?)?
                .transpose(&[1, 0, 2])?
                .expand_dims(0)
        };
        let (q, k) = (rot(part(0)?)?, rot(part(1)?)?);
        let vv = part(2)?.transpose(&[1, 0, 2])?.expand_dims(0)?;
        // Attention stays within each image (frame).
        let scale = (hd as f32).powf(-0.5);
        let mut outs = Vec::with_capacity(segments.len());
        let mut at = 0;
        for &n in segments {
            let n = n as i32;
            let sl = |t: &Array| t.slice_axis(2, at, at + n);
            outs.push(scaled_dot_product_attention(
                &sl(&q)?,
                &sl(&k)?,
                &sl(&vv)?,
                scale,
                AttentionMask::None,
            )?);
            at += n;
        }
        let refs: Vec<&Array> = outs.iter().collect();
        let a = if refs.len() == 1 {
            outs[0].clone()
        } else {
            concatenate(&refs, 2)?
        };
        let a = b
            .proj
            .forward(&a.squeeze(0)?.transpose(&[1, 0, 2])?.reshape(&[s, -1])?)?;
        let x = x.add(&a)?;
        let h = b.fc1.forward(&b.norm2.forward(&x)?)?;
        let h = if v.hidden_act == "quick_gelu" {
            h.multiply(&h.mul_scalar(1.702)?.sigmoid()?)?
        } else {
            h.gelu()?
        };
        x.add(&b.fc2.forward(&h)?)
    }
}

/// Patch order of the processor: merge blocks row-major, and inside each
/// block its `m`×`m` patches row-major — (block row, block col, row, col).
fn merge_order(bh: usize, bw: usize, m: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..bh).flat_map(move |r| (0..bw).flat_map(move |c| (0..m).flat_map(move |i| (0..m).map(move |j| (r, c, i, j)))))
}

/// M-RoPE positions of a prompt (HF's `get_rope_index`): text positions count
/// up; an image's tokens take (start, start + row, start + column) over its
/// merged grid, and the text after it continues at start + max(rows, cols).
/// `grids` are the images' (t, h, w) patch grids in prompt order.
pub fn rope_index(ids: &[u32], image_token: u32, grids: &[[usize; 3]], merge: usize) -> (Vec<[i32; 3]>, i64) {
    let mut out = Vec::with_capacity(ids.len());
    let mut pos = 0i32;
    let mut i = 0;
    let mut images = grids.iter();
    while i < ids.len() {
        if ids[i] != image_token {
            out.push([pos; 3]);
            pos += 1;
            i += 1;
            continue;
        }
        let Some(&[t, h, w]) = images.next() else {
            // More placeholders than images: the caller checks counts first.
            out.push([pos; 3]);
            pos += 1;
            i += 1;
            continue;
        };
        let (lh, lw) = (h / merge, w / merge);
        for ft in 0..t {
            for r in 0..lh {
                for c in 0..lw {
                    out.push([pos + ft as i32, pos + r as i32, pos + c as i32]);
                }
            }
        }
        i += t * lh * lw;
        pos += lh.max(lw) as i32;
    }
    let max = out.iter().flat_map(|p| p.iter().copied()).max().unwrap_or(-1);
    (out, max as i64 + 1 - ids.len() as i64)
}
