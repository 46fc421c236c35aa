//! Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`,
//! `Qwen2_5_VLForConditionalGeneration`): a native-resolution ViT over 14-px
//! patches (two frames deep) with 2-D rotary positions, attention within each
//! image, a 2×2 patch merger, and a Qwen2 decoder whose rotary positions are
//! 3-D (M-RoPE: temporal, height, width) over image spans. Qwen2.5-VL's tower
//! adds RMS norms, a gated SiLU MLP and window attention (windows of
//! `window_size` pixels; full attention in `fullatt_block_indexes`).

use crate::be;
use crate::preprocess::PixelValues;
use engine_core::{EngineError, Result};
use engine_mlx::fast::{scaled_dot_product_attention, AttentionMask};
use engine_mlx::nn::{join, LayerNorm, Linear, RmsNorm};
use engine_mlx::{concatenate, Array, Dtype, WeightMap};
use serde::Deserialize;

/// `vision_config` of Qwen2-VL / Qwen2.5-VL.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VisionConfig {
    /// Transformer blocks.
    pub depth: usize,
    /// Width of the tower (Qwen2-VL; Qwen2.5-VL calls it `hidden_size`).
    #[serde(default)]
    pub embed_dim: Option<usize>,
    /// Qwen2-VL: the merger's output width; Qwen2.5-VL: the tower's width.
    pub hidden_size: usize,
    /// Qwen2.5-VL: the merger's output width (the decoder's hidden size).
    #[serde(default)]
    pub out_hidden_size: Option<usize>,
    /// Qwen2.5-VL: the gated MLP's width.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Qwen2-VL: MLP width as a multiple of the tower's.
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    /// MLP activation (`quick_gelu` for Qwen2-VL, `silu` for Qwen2.5-VL).
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
    /// Qwen2.5-VL: window side in pixels for windowed attention.
    #[serde(default)]
    pub window_size: Option<usize>,
    /// Qwen2.5-VL: blocks that attend over the whole image.
    #[serde(default)]
    pub fullatt_block_indexes: Vec<usize>,
    /// Rotary settings (`rope_theta`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
}

impl Qwen2VisionConfig {
    /// Qwen2.5-VL's layout (RMS norms, gated MLP, windows).
    fn v25(&self) -> bool {
        self.out_hidden_size.is_some()
    }

    fn width(&self) -> usize {
        if self.v25() {
            self.hidden_size
        } else {
            self.embed_dim.unwrap_or(self.hidden_size)
        }
    }

    fn out_width(&self) -> usize {
        self.out_hidden_size.unwrap_or(self.hidden_size)
    }
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
/// checkpoint's (`model.*`, `lm_head.*`). Handles the original layout,
/// transformers' newer `model.language_model.*` / `model.visual.*`, and
/// mlx-vlm's (`vision_tower.*`, `language_model.model.*`), as the
/// mlx-community conversions ship.
pub fn sanitize(w: WeightMap) -> WeightMap {
    w.rename(|n| {
        let renamed = [
            ("model.visual.", "visual."),
            ("vision_tower.", "visual."),
            ("model.language_model.", "model."),
            ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."),
        ]
        .iter()
        .find_map(|(from, to)| n.strip_prefix(from).map(|r| format!("{to}{r}")));
        Some(renamed.unwrap_or_else(|| n.to_string()))
    })
}

/// A norm of the tower: LayerNorm (Qwen2-VL) or RMSNorm (Qwen2.5-VL).
enum Norm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl Norm {
    fn load(w: &WeightMap, prefix: &str, dim: usize, rms: bool) -> engine_mlx::Result<Norm> {
        Ok(if rms {
            Norm::Rms(RmsNorm::load(w, prefix, dim, 1e-6)?)
        } else {
            Norm::Layer(LayerNorm::load(w, prefix, dim, 1e-6)?)
        })
    }

    fn forward(&self, x: &Array) -> engine_mlx::Result<Array> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms(n) => n.forward(x),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            Norm::Layer(n) => n.arrays(),
            Norm::Rms(n) => n.arrays(),
        }
    }

    fn cast(&mut self, dtype: Dtype) -> engine_mlx::Result<()> {
        match self {
            Norm::Layer(n) => crate::vit::cast_norm(n, dtype),
            Norm::Rms(n) => {
                *n = n.cast(dtype)?;
                Ok(())
            }
        }
    }
}

/// The block MLP: fc1 → act → fc2 (Qwen2-VL) or down(act(gate) · up) (Qwen2.5-VL).
enum Mlp {
    Plain(Linear, Linear),
    Gated(Linear, Linear, Linear),
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    mlp: Mlp,
}

impl Mlp {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Mlp::Plain(a, b) => vec![a, b],
            Mlp::Gated(a, b, c) => vec![a, b, c],
        }
    }

    fn linears(&self) -> Vec<&Linear> {
        match self {
            Mlp::Plain(a, b) => vec![a, b],
            Mlp::Gated(a, b, c) => vec![a, b, c],
        }
    }
}

/// A loaded Qwen2-VL vision side: tower + merger.
pub struct Qwen2Vl {
    cfg: Qwen2VlConfig,
    patch: Array,
    blocks: Vec<Block>,
    ln_q: Norm,
    mlp0: Linear,
    mlp2: Linear,
}

impl Qwen2Vl {
    /// Loads from sanitized weights.
    pub fn load(cfg: Qwen2VlConfig, w: &WeightMap) -> Result<Qwen2Vl> {
        let v = &cfg.vision_config;
        let (d, heads) = (v.width(), v.num_heads);
        if !matches!(v.hidden_act.as_str(), "quick_gelu" | "gelu" | "silu") {
            return Err(EngineError::Config(format!(
                "vision_config.hidden_act `{}` is not supported (quick_gelu, gelu, silu)",
                v.hidden_act
            )));
        }
        if heads == 0 || !d.is_multiple_of(heads) || !(d / heads).is_multiple_of(4) {
            return Err(EngineError::Config(format!(
                "vision width {d} must split into num_heads {heads} heads of a multiple of 4"
            )));
        }
        let k = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        // A 3-D convolution whose kernel equals its stride is a matmul over the
        // flattened (C, T, p, p) patch, the processor's layout.
        let (c, t, p) = (v.in_channels, v.temporal_patch_size, v.patch_size);
        let name = "visual.patch_embed.proj.weight";
        let raw = w.get(name).map_err(be)?;
        // mlx-vlm stores the convolution channels-last: (D, T, p, p, C).
        let patch = if raw.shape() == [d, t, p, p, c] && c != t {
            raw.transpose(&[0, 4, 1, 2, 3])
        } else {
            w.get_shaped(name, &[d, c, t, p, p])
        }
        .and_then(|a| a.reshape(&[d as i32, k as i32]))
        .map_err(be)?;
        let rms = v.v25();
        let blocks = (0..v.depth)
            .map(|i| {
                let p = format!("visual.blocks.{i}");
                let mlp = match v.intermediate_size.filter(|_| rms) {
                    Some(f) => Mlp::Gated(
                        Linear::load(w, &join(&p, "mlp.gate_proj"), d, f, true)?,
                        Linear::load(w, &join(&p, "mlp.up_proj"), d, f, true)?,
                        Linear::load(w, &join(&p, "mlp.down_proj"), f, d, true)?,
                    ),
                    None => {
                        let f = (d as f64 * v.mlp_ratio) as usize;
                        Mlp::Plain(
                            Linear::load(w, &join(&p, "mlp.fc1"), d, f, true)?,
                            Linear::load(w, &join(&p, "mlp.fc2"), f, d, true)?,
                        )
                    }
                };
                Ok(Block {
                    norm1: Norm::load(w, &join(&p, "norm1"), d, rms)?,
                    qkv: Linear::load(w, &join(&p, "attn.qkv"), d, 3 * d, true)?,
                    proj: Linear::load(w, &join(&p, "attn.proj"), d, d, true)?,
                    norm2: Norm::load(w, &join(&p, "norm2"), d, rms)?,
                    mlp,
                })
            })
            .collect::<engine_mlx::Result<Vec<_>>>()
            .map_err(be)?;
        let merged = d * v.spatial_merge_size * v.spatial_merge_size;
        Ok(Qwen2Vl {
            ln_q: Norm::load(w, "visual.merger.ln_q", d, rms).map_err(be)?,
            mlp0: Linear::load(w, "visual.merger.mlp.0", merged, merged, true).map_err(be)?,
            mlp2: Linear::load(w, "visual.merger.mlp.2", merged, v.out_width(), true).map_err(be)?,
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
            for l in [&b.qkv, &b.proj].into_iter().chain(b.mlp.linears()) {
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
            b.norm1.cast(dtype)?;
            b.norm2.cast(dtype)?;
            for l in [&mut b.qkv, &mut b.proj].into_iter().chain(b.mlp.linears_mut()) {
                *l = l.dequantized(dtype)?;
            }
        }
        self.ln_q.cast(dtype)?;
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
        let m = v.spatial_merge_size * v.spatial_merge_size;
        // Qwen2.5-VL regroups the merged units window by window, so windowed
        // attention is over contiguous rows, and puts them back after the merger.
        let (order, windows) = match v.window_size {
            Some(ws) => window_index(&grids, v.spatial_merge_size, ws / v.spatial_merge_size / v.patch_size),
            None => ((0..rows / m).collect(), Vec::new()),
        };
        let rows_order: Vec<usize> = order.iter().flat_map(|&u| (0..m).map(move |i| u * m + i)).collect();
        let (cos, sin) = self.rope_tables(&grids, &rows_order, dtype).map_err(be)?;
        let permute = |a: &Array, idx: &[usize]| -> engine_mlx::Result<Array> {
            let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
            a.take(&Array::from_slice(&idx, &[idx.len()])?, 0)
        };
        if v.window_size.is_some() {
            x = permute(&x, &rows_order).map_err(be)?;
        }
        let images: Vec<usize> = grids
            .iter()
            .flat_map(|g| std::iter::repeat_n(g[1] * g[2], g[0]))
            .collect();
        for (i, b) in self.blocks.iter().enumerate() {
            let full = v.window_size.is_none() || v.fullatt_block_indexes.contains(&i);
            let segments = if full { &images } else { &windows };
            x = self.block(b, &x, &cos, &sin, segments).map_err(be)?;
        }
        let merged = (|| {
            let h = self.ln_q.forward(&x)?.reshape(&[(rows / m) as i32, -1])?;
            let h = self.mlp2.forward(&self.mlp0.forward(&h)?.gelu()?)?;
            if v.window_size.is_none() {
                return Ok(h);
            }
            let mut back = vec![0; order.len()];
            for (pos, &u) in order.iter().enumerate() {
                back[u] = pos;
            }
            permute(&h, &back)
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
    fn rope_tables(&self, grids: &[[usize; 3]], order: &[usize], dtype: Dtype) -> engine_mlx::Result<(Array, Array)> {
        let v = &self.cfg.vision_config;
        let hd = v.width() / v.num_heads;
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
        // Rows in the tower's order (windows first, for Qwen2.5-VL).
        let pick = |t: &[f32]| -> Vec<f32> { order.iter().flat_map(|&r| t[r * hd..(r + 1) * hd].to_vec()).collect() };
        let (cos, sin) = (pick(&cos), pick(&sin));
        let n = order.len();
        Ok((
            Array::from_slice(&cos, &[n, 1, hd])?.astype(dtype)?,
            Array::from_slice(&sin, &[n, 1, hd])?.astype(dtype)?,
        ))
    }

    fn block(&self, b: &Block, x: &Array, cos: &Array, sin: &Array, segments: &[usize]) -> engine_mlx::Result<Array> {
        let v = &self.cfg.vision_config;
        let (s, heads) = (x.dim(0) as i32, v.num_heads as i32);
        let hd = v.width() as i32 / heads;
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
        // Attention stays within each image (frame) or window.
        let a = segmented_attention(&q, &k, &vv, segments, (hd as f32).powf(-0.5))?;
        let a = b
            .proj
            .forward(&a.squeeze(0)?.transpose(&[1, 0, 2])?.reshape(&[s, -1])?)?;
        let x = x.add(&a)?;
        let h = b.norm2.forward(&x)?;
        let act = |t: Array| -> engine_mlx::Result<Array> {
            match v.hidden_act.as_str() {
                "quick_gelu" => t.multiply(&t.mul_scalar(1.702)?.sigmoid()?),
                "silu" => t.silu(),
                _ => t.gelu(),
            }
        };
        let m = match &b.mlp {
            Mlp::Plain(fc1, fc2) => fc2.forward(&act(fc1.forward(&h)?)?)?,
            Mlp::Gated(gate, up, down) => down.forward(&act(gate.forward(&h)?)?.multiply(&up.forward(&h)?)?)?,
        };
        x.add(&m)
    }
}

/// Attention of q, k, v (1, heads, rows, head_dim) within consecutive
/// segments of `segments` rows each. A run of equal segments (an image's
/// full windows, several frames of one size) is one batched attention call
/// instead of one call per segment: the same sums, far fewer kernels.
fn segmented_attention(q: &Array, k: &Array, v: &Array, segments: &[usize], scale: f32) -> engine_mlx::Result<Array> {
    let (heads, hd) = (q.dim(1) as i32, q.dim(3) as i32);
    let mut outs = Vec::new();
    let (mut at, mut i) = (0i32, 0usize);
    while i < segments.len() {
        let n = segments[i];
        let run = segments[i..].iter().take_while(|&&m| m == n).count();
        let (count, n) = (run as i32, n as i32);
        let len = count * n;
        // (1, H, count·n, D) → (count, H, n, D): one batch row per segment.
        let batch = |t: &Array| {
            t.slice_axis(2, at, at + len)?
                .reshape(&[heads, count, n, hd])?
                .transpose(&[1, 0, 2, 3])
        };
        let o = scaled_dot_product_attention(&batch(q)?, &batch(k)?, &batch(v)?, scale, AttentionMask::None)?;
        outs.push(o.transpose(&[1, 0, 2, 3])?.reshape(&[1, heads, len, hd])?);
        at += len;
        i += run;
    }
    match outs.len() {
        1 => Ok(outs.remove(0)),
        _ => concatenate(&outs.iter().collect::<Vec<_>>(), 2),
    }
}

/// Qwen2.5-VL's window grouping (HF's `get_vision_window_index`): the order
/// of merged units when each image's grid is cut into `win`×`win` windows
/// (row-major windows, row-major inside), and each window's length in patches.
fn window_index(grids: &[[usize; 3]], merge: usize, win: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut order, mut lengths) = (Vec::new(), Vec::new());
    let mut base = 0;
    let win = win.max(1);
    for &[t, h, w] in grids {
        let (lh, lw) = (h / merge, w / merge);
        for ft in 0..t {
            for wr in 0..lh.div_ceil(win) {
                for wc in 0..lw.div_ceil(win) {
                    let mut n = 0;
                    for r in wr * win..((wr + 1) * win).min(lh) {
                        for c in wc * win..((wc + 1) * win).min(lw) {
                            order.push(base + (ft * lh + r) * lw + c);
                            n += 1;
                        }
                    }
                    lengths.push(n * merge * merge);
                }
            }
        }
        base += t * lh * lw;
    }
    (order, lengths)
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
