//! One module per architecture, holding only what is particular to it; the
//! decoder is always `engine-llm`'s.

pub mod gemma3;
pub mod idefics3;
pub mod llava;
pub mod qwen2_vl;

use crate::be;
use crate::preprocess::PixelValues;
use engine_core::{EngineError, Result, Tokenizer};
use engine_mlx::{Array, Dtype, WeightMap};

/// The architectures this crate implements (HF `model_type` values).
pub const SUPPORTED: &[&str] = &[
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "gemma3",
    "idefics3",
    "smolvlm",
];

/// The vision side of a loaded model: tower + projector.
pub enum VisionSide {
    /// LLaVA 1.5 and LLaVA-NeXT.
    Llava(llava::Llava),
    /// Qwen2-VL and Qwen2.5-VL.
    Qwen2Vl(qwen2_vl::Qwen2Vl),
    /// Gemma 3.
    Gemma3(gemma3::Gemma3),
    /// Idefics3 and SmolVLM.
    Idefics3(idefics3::Idefics3),
}

impl VisionSide {
    /// The token the chat template writes once per image.
    pub fn placeholder_id(&self) -> u32 {
        match self {
            VisionSide::Gemma3(m) => m.placeholder_id(),
            _ => self.image_token_id(),
        }
    }

    /// The token whose positions an image's features fill.
    pub fn image_token_id(&self) -> u32 {
        match self {
            VisionSide::Llava(m) => m.image_token_id(),
            VisionSide::Qwen2Vl(m) => m.image_token_id(),
            VisionSide::Gemma3(m) => m.image_token_id(),
            VisionSide::Idefics3(m) => m.image_token_id(),
        }
    }

    /// The text the processor writes in place of the template's placeholder
    /// for an image (`splits`: its Idefics3 tiling), with the image token once
    /// per frame (each is expanded to the frame's length after tokenizing);
    /// `None` when the placeholder stays as it is.
    pub fn expansion(&self, tok: &Tokenizer, splits: Option<[usize; 2]>) -> Result<Option<String>> {
        let name = |id: u32| {
            tok.id_to_token(id).ok_or_else(|| {
                EngineError::Config(format!(
                    "the tokenizer has no token {id}, which config.json names as an image marker"
                ))
            })
        };
        match self {
            VisionSide::Gemma3(m) => {
                let [boi, eoi, image] = m.marker_ids().map(name);
                Ok(Some(format!("\n\n{}{}{}\n\n", boi?, image?, eoi?)))
            }
            VisionSide::Idefics3(m) => {
                let image = name(m.image_token_id())?;
                let (fake, global) = ("<fake_token_around_image>", "<global-img>");
                for t in [fake, global] {
                    if tok.token_to_id(t).is_none() {
                        return Err(EngineError::Config(format!("the tokenizer has no `{t}` token")));
                    }
                }
                let [rows, cols] = splits.unwrap_or([0, 0]);
                let mut text = String::new();
                for r in 1..=rows {
                    for c in 1..=cols {
                        text.push_str(&format!("{fake}<row_{r}_col_{c}>{image}"));
                    }
                    text.push('\n');
                }
                if rows > 0 {
                    text.push('\n');
                }
                text.push_str(&format!("{fake}{global}{image}{fake}"));
                Ok(Some(text))
            }
            _ => Ok(None),
        }
    }

    /// Whether an image's positions attend to each other both ways (Gemma 3).
    pub fn bidirectional(&self) -> bool {
        matches!(self, VisionSide::Gemma3(_))
    }

    /// The spatial merge of a model whose decoder takes M-RoPE positions.
    pub fn mrope_merge(&self) -> Option<usize> {
        match self {
            VisionSide::Llava(_) | VisionSide::Gemma3(_) | VisionSide::Idefics3(_) => None,
            VisionSide::Qwen2Vl(m) => Some(m.merge_size()),
        }
    }

    /// Most images one prompt may hold (`None`: no limit but the context).
    pub fn max_images(&self) -> Option<usize> {
        None
    }

    /// Converts the weights to `dtype` (the decoder's) and materialises them.
    pub fn finish_load(&mut self, dtype: Dtype) -> engine_mlx::Result<()> {
        match self {
            VisionSide::Llava(m) => m.convert(dtype),
            VisionSide::Qwen2Vl(m) => m.convert(dtype),
            VisionSide::Gemma3(m) => m.convert(dtype),
            VisionSide::Idefics3(m) => m.convert(dtype),
        }
    }

    /// Features of each image, (tokens, text hidden) each.
    pub fn encode(&self, pixels: &[PixelValues]) -> Result<Vec<Array>> {
        let f = match self {
            VisionSide::Llava(m) if m.is_next() => {
                // Each image has its own number of pieces: one tower batch per image.
                let size = m.image_size();
                let mut out = Vec::with_capacity(pixels.len());
                for p in pixels {
                    let tiling = p.anyres.as_ref().ok_or_else(|| {
                        EngineError::Image(
                            "a LLaVA-NeXT model needs anyres pixels (LlavaNextImageProcessor in preprocessor_config.json)"
                                .into(),
                        )
                    })?;
                    let batch = pieces_batch(p, size, "LlavaNextImageProcessor's crop_size")?;
                    let f = m.image_features(&batch).map_err(be)?;
                    out.push(m.pack_anyres(&f, tiling)?);
                }
                return Ok(out);
            }
            VisionSide::Llava(m) => {
                let batch = square_batch(pixels, m.image_size())?;
                m.image_features(&batch).map_err(be)?
            }
            VisionSide::Gemma3(m) => {
                let batch = square_batch(pixels, m.image_size())?;
                m.image_features(&batch).map_err(be)?
            }
            VisionSide::Qwen2Vl(m) => return m.encode(pixels),
            VisionSide::Idefics3(m) => {
                // Images have different frame counts: one tower batch per image.
                let size = m.image_size();
                let mut out = Vec::with_capacity(pixels.len());
                for p in pixels {
                    if p.splits.is_none() {
                        return Err(EngineError::Image(
                            "an Idefics3 model needs split frames (Idefics3ImageProcessor in preprocessor_config.json)"
                                .into(),
                        ));
                    }
                    let batch = pieces_batch(p, size, "Idefics3ImageProcessor's max_image_size")?;
                    out.push(m.image_features(&batch).map_err(be)?);
                }
                return Ok(out);
            }
        };
        (0..pixels.len() as i32)
            .map(|i| f.slice_axis(0, i, i + 1).and_then(|x| x.squeeze(0)))
            .collect::<engine_mlx::Result<_>>()
            .map_err(be)
    }
}

/// Pixels (C, side, side) of fixed-size towers as one (N, H, W, C) batch;
/// another shape means the processor and the tower disagree.
fn square_batch(pixels: &[PixelValues], size: usize) -> Result<Array> {
    for p in pixels {
        if p.shape != [3, size, size] {
            return Err(EngineError::Image(format!(
                "the image processor made pixels of shape {:?} but the vision tower takes [3, {size}, {size}]; \
                 preprocessor_config.json does not match config.json",
                p.shape
            )));
        }
    }
    stack_nhwc(pixels)
}

/// Pixels (C, H, W) of equal shape as one (N, H, W, C) batch.
fn stack_nhwc(pixels: &[PixelValues]) -> Result<Array> {
    let shape = &pixels[0].shape;
    let mut data = Vec::with_capacity(pixels.len() * pixels[0].data.len());
    for p in pixels {
        data.extend_from_slice(&p.data);
    }
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    Array::from_slice(&data, &[pixels.len(), c, h, w])
        .and_then(|a| a.transpose(&[0, 2, 3, 1]))
        .map_err(be)
}

/// Splits a checkpoint's weights into the vision side and the decoder's
/// (named as a text checkpoint's) and builds the vision side.
pub fn load_vision(
    arch: &str,
    config: &serde_json::Value,
    weights: WeightMap,
    text_config: &serde_json::Value,
) -> Result<(VisionSide, WeightMap)> {
    let text_hidden = text_config
        .get("hidden_size")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| EngineError::Config("text_config has no hidden_size".into()))? as usize;
    match arch {
        "llava" | "llava_next" => {
            let cfg: llava::LlavaConfig = serde_json::from_value(config.clone())
                .map_err(|e| EngineError::Config(format!("config.json does not describe a LLaVA model: {e}")))?;
            let w = llava::sanitize(weights);
            let (vision, text) = split_vit(w, cfg.vision_config.num_channels, |n| {
                n.starts_with("multi_modal_projector.") || n == "image_newline"
            })?;
            let next = arch == "llava_next";
            Ok((
                VisionSide::Llava(llava::Llava::load(cfg, &vision, text_hidden, next)?),
                text,
            ))
        }
        "gemma3" => {
            let cfg: gemma3::Gemma3Config = serde_json::from_value(config.clone())
                .map_err(|e| EngineError::Config(format!("config.json does not describe a Gemma 3 model: {e}")))?;
            let (vision, text) = split_vit(llava::sanitize(weights), cfg.vision_config.num_channels, |n| {
                n.starts_with("multi_modal_projector.")
            })?;
            Ok((
                VisionSide::Gemma3(gemma3::Gemma3::load(cfg, &vision, text_hidden)?),
                text,
            ))
        }
        "idefics3" | "smolvlm" => {
            let cfg: idefics3::Idefics3Config = serde_json::from_value(config.clone())
                .map_err(|e| EngineError::Config(format!("config.json does not describe an Idefics3 model: {e}")))?;
            let (vision, text) = split_vit(idefics3::sanitize(weights), cfg.vision_config.num_channels, |n| {
                n.starts_with("connector.")
            })?;
            Ok((
                VisionSide::Idefics3(idefics3::Idefics3::load(cfg, &vision, text_hidden)?),
                text,
            ))
        }
        "qwen2_vl" | "qwen2_5_vl" => {
            let cfg: qwen2_vl::Qwen2VlConfig = serde_json::from_value(config.clone())
                .map_err(|e| EngineError::Config(format!("config.json does not describe a Qwen2-VL model: {e}")))?;
            let (vision, text) = split(qwen2_vl::sanitize(weights), |n| n.starts_with("visual."));
            Ok((VisionSide::Qwen2Vl(qwen2_vl::Qwen2Vl::load(cfg, &vision)?), text))
        }
        other => Err(EngineError::UnsupportedArchitecture(format!(
            "{other} (vision-language architectures supported: {})",
            SUPPORTED.join(", ")
        ))),
    }
}

/// The vision side of a `vit.rs` tower (`vision_tower.*` plus the
/// connector's names `extra` matches) and the rest, the patch convolution in
/// MLX's layout.
fn split_vit(w: WeightMap, channels: usize, extra: impl Fn(&str) -> bool) -> Result<(WeightMap, WeightMap)> {
    let (mut vision, text) = split(w, |n| n.starts_with("vision_tower.") || extra(n));
    torch_conv_to_mlx(&mut vision, "vision_tower.embeddings.patch_embedding.weight", channels)?;
    Ok((vision, text))
}

/// One image's pieces (n, 3, size, size) as an (n, H, W, C) batch; another
/// shape means the processor and the tower disagree (`needs` says what fits).
fn pieces_batch(p: &PixelValues, size: usize, needs: &str) -> Result<Array> {
    if p.shape.len() != 4 || p.shape[1..] != [3, size, size] {
        return Err(EngineError::Image(format!(
            "the image processor made pixels of shape {:?} but the vision tower takes pieces [n, 3, {size}, {size}] ({needs})",
            p.shape
        )));
    }
    Array::from_slice(&p.data, &p.shape)
        .and_then(|a| a.transpose(&[0, 2, 3, 1]))
        .map_err(be)
}

/// Partitions `w` by name: (matching, rest).
fn split(w: WeightMap, matching: impl Fn(&str) -> bool) -> (WeightMap, WeightMap) {
    let origin = w.origin().to_string();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (name, arr) in w.iter() {
        if matching(name) {
            a.push((name.to_string(), arr.clone()));
        } else {
            b.push((name.to_string(), arr.clone()));
        }
    }
    (WeightMap::from_arrays(a, &origin), WeightMap::from_arrays(b, &origin))
}

/// PyTorch convolution weights are (out, in, kh, kw); MLX's (out, kh, kw, in).
/// Checkpoints converted by mlx-vlm are already in MLX layout.
fn torch_conv_to_mlx(w: &mut WeightMap, name: &str, in_channels: usize) -> Result<()> {
    let Some(a) = w.remove(name) else { return Ok(()) };
    let s = a.shape();
    let a = if s.len() == 4 && s[1] == in_channels && s[3] != in_channels {
        a.transpose(&[0, 2, 3, 1]).map_err(be)?
    } else {
        a
    };
    w.insert(name, a);
    Ok(())
}
