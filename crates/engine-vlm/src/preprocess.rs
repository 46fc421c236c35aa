//! transformers' image processors, pixel-exact: a checkpoint's
//! `preprocessor_config.json` ([`ImageProcessorConfig`]) becomes an
//! [`ImageProcessor`] that turns an RGB image into the `pixel_values` the vision
//! tower was trained on.
//!
//! The reference is transformers' PIL ("slow") backend, which resizes with
//! Pillow. [`resize`] reimplements Pillow's `ImagingResample` (two separable
//! passes, 22-bit fixed-point coefficients, an 8-bit intermediate) and its
//! nearest-neighbour scaling, so resized pixels are bit-identical; rescaling and
//! normalisation repeat numpy's float64-then-float32 arithmetic. Supported:
//! `CLIPImageProcessor` (LLaVA 1.5), `SiglipImageProcessor`, `Gemma3ImageProcessor`
//! (without pan-and-scan) and `Qwen2VLImageProcessor` (smart resize + patches).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::image::RgbImage;
pub use crate::resample::{resize, Resample};

// ------------------------------------------------------------------ config

/// A checkpoint's `preprocessor_config.json`, as transformers writes it. Missing
/// or `null` fields take the processor class's defaults; unknown fields are ignored.
/// `size` and `crop_size` keep their JSON form (an int, `[h, w]` or a dict such as
/// `{"shortest_edge": 336}`), as do `image_mean`/`image_std` (a number or 3 numbers).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    /// The processor class, e.g. `"CLIPImageProcessor"` (`Fast`/`Pil` suffixes are accepted).
    pub image_processor_type: Option<String>,
    /// The legacy class name older checkpoints write instead, e.g. `"CLIPFeatureExtractor"`.
    pub feature_extractor_type: Option<String>,
    /// Convert to RGB first (images from [`crate::image`] always are).
    pub do_convert_rgb: Option<bool>,
    /// Resize to `size`.
    pub do_resize: Option<bool>,
    /// The resize target.
    pub size: Option<Value>,
    /// Whether an integer `size` means a square (else the shortest edge).
    pub default_to_square: Option<bool>,
    /// The Pillow filter code (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
    pub resample: Option<u64>,
    /// Center-crop to `crop_size` after resizing.
    pub do_center_crop: Option<bool>,
    /// The crop size.
    pub crop_size: Option<Value>,
    /// Multiply by `rescale_factor`.
    pub do_rescale: Option<bool>,
    /// Usually 1/255.
    pub rescale_factor: Option<f64>,
    /// Subtract `image_mean`, divide by `image_std`.
    pub do_normalize: Option<bool>,
    /// Per-channel mean.
    pub image_mean: Option<Value>,
    /// Per-channel standard deviation.
    pub image_std: Option<Value>,
    /// Pad a batch to one size (refused: not needed for single images here).
    pub do_pad: Option<bool>,
    /// Qwen2-VL: the fewest pixels after resizing.
    pub min_pixels: Option<u64>,
    /// Qwen2-VL: the most pixels after resizing.
    pub max_pixels: Option<u64>,
    /// Qwen2-VL: the vision tower's patch size.
    pub patch_size: Option<u64>,
    /// Qwen2-VL: frames per temporal patch (an image is repeated to fill it).
    pub temporal_patch_size: Option<u64>,
    /// Qwen2-VL: patches merged per side by the projector.
    pub merge_size: Option<u64>,
    /// Gemma 3: extra crops of wide images (refused: not implemented).
    pub do_pan_and_scan: Option<bool>,
    /// LLaVA-NeXT: the (height, width) resolutions anyres tiling picks from.
    pub image_grid_pinpoints: Option<Vec<[u32; 2]>>,
    /// Idefics3: the frame side (`{"longest_edge": 364}`).
    pub max_image_size: Option<Value>,
    /// Idefics3: split big images into frame-sized tiles plus a global frame.
    pub do_image_splitting: Option<bool>,
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json` from a checkpoint folder (or, for folders
    /// saved by transformers 5, the `image_processor` entry of `processor_config.json`)
    /// and checks that it describes a supported processor.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, PreprocessError> {
        let dir = dir.as_ref();
        let path = dir.join("preprocessor_config.json");
        let config = if path.exists() {
            let text = read(&path)?;
            Self::from_json(&text).map_err(|e| e.at(&path))?
        } else {
            let processor = dir.join("processor_config.json");
            if !processor.exists() {
                return Err(PreprocessError::MissingConfig { dir: dir.to_path_buf() });
            }
            let mut value: Value =
                serde_json::from_str(&read(&processor)?).map_err(|source| PreprocessError::ParseConfig {
                    path: processor.clone(),
                    source,
                })?;
            let inner = value.get_mut("image_processor").map(Value::take);
            let inner = inner.ok_or_else(|| PreprocessError::MissingConfig { dir: dir.to_path_buf() })?;
            serde_json::from_value(inner).map_err(|source| PreprocessError::ParseConfig {
                path: processor,
                source,
            })?
        };
        config.processor()?;
        Ok(config)
    }

    /// Parses the JSON text of a `preprocessor_config.json`.
    pub fn from_json(json: &str) -> Result<Self, PreprocessError> {
        serde_json::from_str(json).map_err(|source| PreprocessError::ParseConfig {
            path: PathBuf::new(),
            source,
        })
    }

    /// Resolves the class defaults and validates the fields.
    pub fn processor(&self) -> Result<ImageProcessor, PreprocessError> {
        ImageProcessor::new(self)
    }

    /// Preprocesses one image (shorthand for `self.processor()?.preprocess(image)`).
    pub fn preprocess(&self, image: &RgbImage) -> Result<PixelValues, PreprocessError> {
        self.processor()?.preprocess(image)
    }
}

fn read(path: &Path) -> Result<String, PreprocessError> {
    std::fs::read_to_string(path).map_err(|source| PreprocessError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// The image processor families implemented here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcessorKind {
    /// `CLIPImageProcessor`: shortest edge, center crop (LLaVA 1.5, CLIP).
    Clip,
    /// `SiglipImageProcessor`: fixed size.
    Siglip,
    /// `Gemma3ImageProcessor`: fixed size, bilinear.
    Gemma3,
    /// `Qwen2VLImageProcessor`: `smart_resize` to a multiple of the patch grid, flattened patches.
    Qwen2Vl,
    /// `LlavaNextImageProcessor`: anyres tiles of the best pinpoint plus a squashed base image.
    LlavaNext,
    /// `Idefics3ImageProcessor` (SmolVLM's too): longest-edge resize, frame-sized tiles and a global frame.
    Idefics3,
}

impl ProcessorKind {
    fn from_name(name: &str) -> Option<Self> {
        let base = name
            .strip_suffix("Fast")
            .or_else(|| name.strip_suffix("Pil"))
            .unwrap_or(name);
        Some(match base {
            "CLIPImageProcessor" | "CLIPFeatureExtractor" => ProcessorKind::Clip,
            "SiglipImageProcessor" => ProcessorKind::Siglip,
            "Gemma3ImageProcessor" => ProcessorKind::Gemma3,
            "Qwen2VLImageProcessor" => ProcessorKind::Qwen2Vl,
            "LlavaNextImageProcessor" => ProcessorKind::LlavaNext,
            "Idefics3ImageProcessor" | "SmolVLMImageProcessor" => ProcessorKind::Idefics3,
            _ => return None,
        })
    }
}

/// How the resize target follows from the input size (transformers' `SizeDict` cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeRule {
    Exact { height: u32, width: u32 },
    ShortestEdge(u32),
    ShortestLongest { shortest: u32, longest: u32 },
    MaxHeightWidth { height: u32, width: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PatchSpec {
    min_pixels: u64,
    max_pixels: u64,
    patch: u32,
    temporal: u32,
    merge: u32,
}

/// A validated image processor: defaults resolved, sizes non-zero.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    kind: ProcessorKind,
    geometry: Geometry,
    rescale: Option<f64>,
    normalize: Option<([f32; 3], [f32; 3])>,
}

/// What happens to the image's size and layout around rescale/normalize.
#[derive(Debug, Clone, PartialEq)]
enum Geometry {
    /// Resize (if set), then center-crop (if set), to one CHW image.
    Image {
        resize: Option<(SizeRule, Resample)>,
        center_crop: Option<(u32, u32)>,
    },
    /// Qwen2-VL: `smart_resize` (unless `resample` is `None`: no do_resize), then patches.
    Patches {
        spec: PatchSpec,
        resample: Option<Resample>,
    },
    /// LLaVA-NeXT: the image resized (aspect kept) into the best pinpoint,
    /// zero-padded to it and cut into `tile`-sided tiles, after a base image
    /// squashed to `base` (height, width); each then goes through `each`.
    Anyres {
        pinpoints: Vec<[u32; 2]>,
        tile: u32,
        base: (u32, u32),
        resample: Resample,
        each: Box<Geometry>,
    },
    /// Idefics3: the longest edge resized to `longest` (when set), then (with
    /// `split`) both sides up to multiples of `frame` and cut into frames plus
    /// a global frame; without `split` one frame.
    Frames {
        longest: Option<u32>,
        frame: u32,
        split: bool,
        resample: Resample,
    },
}

/// Preprocessed pixels: `data` in row-major order with `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// The values.
    pub data: Vec<f32>,
    /// `[3, height, width]` (CHW), or for Qwen2-VL `[patches, 3 * temporal * patch²]`.
    pub shape: Vec<usize>,
    /// Qwen2-VL's `image_grid_thw`: `[1, height / patch, width / patch]`.
    pub image_grid_thw: Option<[usize; 3]>,
    /// LLaVA-NeXT's anyres tiling, when `shape` is `[1 + tiles, 3, h, w]`.
    pub anyres: Option<Anyres>,
    /// Idefics3's split, (rows, cols) of tiles (`[0, 0]`: one global frame),
    /// when `shape` is `[frames, 3, side, side]`.
    pub splits: Option<[usize; 2]>,
}

/// How LLaVA-NeXT tiled an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anyres {
    /// The original (height, width) in pixels (the model unpads by it).
    pub original: [usize; 2],
    /// Tiles per (column, row): the chosen pinpoint divided by the tile side.
    pub grid: [usize; 2],
}

const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
const HALF_MEAN_STD: [f64; 3] = [0.5, 0.5, 0.5];

impl ImageProcessor {
    /// Resolves a config against its class's defaults (as transformers' constructor
    /// does for `None` fields) and validates it.
    pub fn new(config: &ImageProcessorConfig) -> Result<Self, PreprocessError> {
        let name = config
            .image_processor_type
            .as_deref()
            .or(config.feature_extractor_type.as_deref());
        let name = name.ok_or(PreprocessError::MissingProcessorType)?;
        let kind = ProcessorKind::from_name(name)
            .ok_or_else(|| PreprocessError::UnsupportedProcessor { name: name.into() })?;
        use ProcessorKind::*;
        let (resample, mean, std, default_to_square) = match kind {
            Clip => (Resample::Bicubic, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, false),
            Siglip => (Resample::Bicubic, HALF_MEAN_STD, HALF_MEAN_STD, false),
            Gemma3 => (Resample::Bilinear, HALF_MEAN_STD, HALF_MEAN_STD, true),
            Qwen2Vl | LlavaNext => (Resample::Bicubic, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, false),
            Idefics3 => (Resample::Lanczos, HALF_MEAN_STD, HALF_MEAN_STD, false),
        };
        let resample = match config.resample {
            None => resample,
            Some(code) => Resample::from_pil(code)
                .ok_or_else(|| bad("resample", format!("is {code}, not a Pillow filter code (0-5)")))?,
        };
        let rescale = config
            .do_rescale
            .unwrap_or(true)
            .then(|| config.rescale_factor.unwrap_or(1.0 / 255.0));
        if let Some(f) = rescale.filter(|f| !f.is_finite()) {
            return Err(bad("rescale_factor", format!("is {f}")));
        }
        let normalize = if config.do_normalize.unwrap_or(true) {
            let mean = channels("image_mean", config.image_mean.as_ref(), mean)?;
            let std = channels("image_std", config.image_std.as_ref(), std)?;
            if std.contains(&0.0) {
                return Err(bad("image_std", "contains 0 (division by zero)".into()));
            }
            Some((mean, std))
        } else {
            None
        };
        if config.do_pan_and_scan == Some(true) {
            return Err(PreprocessError::Unsupported {
                feature: "do_pan_and_scan (Gemma 3's extra crops)".into(),
            });
        }
        if config.do_pad == Some(true) && !matches!(kind, Qwen2Vl | LlavaNext | Idefics3) {
            return Err(PreprocessError::Unsupported {
                feature: "do_pad (batch padding)".into(),
            });
        }
        let do_resize = config.do_resize.unwrap_or(true);

        if kind == Qwen2Vl {
            // The constructor folds min_pixels/max_pixels into size's shortest/longest edge.
            let (mut min_pixels, mut max_pixels) = (56 * 56, 28 * 28 * 1280);
            if let Some(size) = &config.size {
                let dict = size_dict("size", size, false)?;
                min_pixels = dict.shortest_edge.map_or(min_pixels, u64::from);
                max_pixels = dict.longest_edge.map_or(max_pixels, u64::from);
            }
            let min_pixels = config.min_pixels.unwrap_or(min_pixels);
            let max_pixels = config.max_pixels.unwrap_or(max_pixels);
            if max_pixels == 0 {
                return Err(bad("max_pixels", "is 0".into()));
            }
            let spec = PatchSpec {
                min_pixels,
                max_pixels,
                patch: positive("patch_size", config.patch_size.unwrap_or(14))?,
                temporal: positive("temporal_patch_size", config.temporal_patch_size.unwrap_or(2))?,
                merge: positive("merge_size", config.merge_size.unwrap_or(2))?,
            };
            if spec.patch.checked_mul(spec.merge).is_none() {
                return Err(bad("patch_size", "times merge_size overflows".into()));
            }
            let geometry = Geometry::Patches {
                spec,
                resample: do_resize.then_some(resample),
            };
            return Ok(ImageProcessor {
                kind,
                geometry,
                rescale,
                normalize,
            });
        }

        if kind == Idefics3 {
            let edge = |field: &'static str, v: Option<&Value>, default: u32| -> Result<u32, PreprocessError> {
                match v {
                    None => Ok(default),
                    Some(v) => size_dict(field, v, false)?
                        .longest_edge
                        .ok_or_else(|| bad(field, format!("{v} has no longest_edge"))),
                }
            };
            let geometry = Geometry::Frames {
                longest: do_resize
                    .then(|| edge("size", config.size.as_ref(), 4 * 364))
                    .transpose()?,
                frame: edge("max_image_size", config.max_image_size.as_ref(), 364)?,
                split: config.do_image_splitting.unwrap_or(true),
                resample,
            };
            return Ok(ImageProcessor {
                kind,
                geometry,
                rescale,
                normalize,
            });
        }
        let resize = if do_resize {
            let size = match &config.size {
                Some(size) => size.clone(),
                None => match kind {
                    Clip | LlavaNext => serde_json::json!({"shortest_edge": 224}),
                    _ => serde_json::json!({"height": 224, "width": 224}),
                },
            };
            let rule = size_rule(&size, config.default_to_square.unwrap_or(default_to_square))?;
            Some((rule, resample))
        } else {
            None
        };
        let clip_like = matches!(kind, Clip | LlavaNext);
        let center_crop = if config.do_center_crop.unwrap_or(clip_like) {
            let crop = match &config.crop_size {
                Some(crop) => crop.clone(),
                None if clip_like => serde_json::json!({"height": 224, "width": 224}),
                None => return Err(bad("crop_size", "is missing but do_center_crop is true".into())),
            };
            let dict = size_dict("crop_size", &crop, true)?;
            match (dict.height, dict.width) {
                (Some(h), Some(w)) => Some((h, w)),
                _ => return Err(bad("crop_size", format!("{crop} has no height and width"))),
            }
        } else {
            None
        };
        let mut geometry = Geometry::Image { resize, center_crop };
        if kind == LlavaNext {
            geometry = anyres_geometry(config, geometry, resample)?;
        }
        Ok(ImageProcessor {
            kind,
            geometry,
            rescale,
            normalize,
        })
    }

    /// The processor family.
    pub fn kind(&self) -> ProcessorKind {
        self.kind
    }

    /// Turns one upright RGB image into the model's pixel values.
    pub fn preprocess(&self, image: &RgbImage) -> Result<PixelValues, PreprocessError> {
        self.preprocess_as(image, &self.geometry)
    }

    fn preprocess_as(&self, image: &RgbImage, geometry: &Geometry) -> Result<PixelValues, PreprocessError> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(PreprocessError::EmptyImage);
        }
        let (resize_to, center_crop_to) = match geometry {
            Geometry::Patches { spec, resample } => return self.preprocess_patches(image, *spec, *resample),
            Geometry::Image { resize, center_crop } => (*resize, *center_crop),
            Geometry::Anyres {
                pinpoints,
                tile,
                base,
                resample,
                each,
            } => return self.preprocess_anyres(image, pinpoints, *tile, *base, *resample, each),
            Geometry::Frames {
                longest,
                frame,
                split,
                resample,
            } => return Ok(self.preprocess_frames(image, *longest, *frame, *split, *resample)),
        };
        let mut current = std::borrow::Cow::Borrowed(image);
        if let Some((rule, resample)) = resize_to {
            let (th, tw) = rule.target(h, w);
            if th == 0 || tw == 0 {
                return Err(PreprocessError::BadImageSize {
                    width: w,
                    height: h,
                    reason: format!("resizing gives {tw}x{th}"),
                });
            }
            current = std::borrow::Cow::Owned(resize(image, tw, th, resample));
        }
        if let Some((ch, cw)) = center_crop_to {
            current = std::borrow::Cow::Owned(center_crop(&current, ch, cw));
        }
        let (w, h) = current.dimensions();
        Ok(PixelValues {
            data: self.rescale_normalize(&current),
            shape: vec![3, h as usize, w as usize],
            image_grid_thw: None,
            anyres: None,
            splits: None,
        })
    }

    /// Idefics3's resize, `resize_for_vision_encoder` and `split_images`, then
    /// rescale/normalise of every frame (tiles row by row, the global frame last).
    fn preprocess_frames(
        &self,
        image: &RgbImage,
        longest: Option<u32>,
        frame: u32,
        split: bool,
        resample: Resample,
    ) -> PixelValues {
        let mut current = match longest {
            Some(max) => {
                let (h, w) = idefics3_resize(image.height(), image.width(), max);
                resize(image, w, h, resample)
            }
            None => image.clone(),
        };
        let mut frames = Vec::new();
        let mut splits = [0, 0];
        if split {
            let (h, w) = (current.height(), current.width());
            let aspect = f64::from(w) / f64::from(h);
            let up = |x: u32| x.div_ceil(frame) * frame;
            let (h, w) = if w >= h {
                let w = up(w);
                (up(((f64::from(w) / aspect) as u32).max(1)), w)
            } else {
                let h = up(h);
                (h, up(((f64::from(h) * aspect) as u32).max(1)))
            };
            current = resize(&current, w, h, resample);
            if h > frame || w > frame {
                let (rows, cols) = ((h - frame) / frame + 1, (w - frame) / frame + 1);
                for r in 0..rows {
                    for c in 0..cols {
                        frames
                            .push(::image::imageops::crop_imm(&current, c * frame, r * frame, frame, frame).to_image());
                    }
                }
                splits = [rows as usize, cols as usize];
                frames.push(resize(&current, frame, frame, resample));
            } else {
                frames.push(current);
            }
        } else {
            frames.push(resize(&current, frame, frame, resample));
        }
        let data = frames.iter().flat_map(|f| self.rescale_normalize(f)).collect();
        PixelValues {
            data,
            shape: vec![frames.len(), 3, frame as usize, frame as usize],
            image_grid_thw: None,
            anyres: None,
            splits: Some(splits),
        }
    }

    /// LLaVA-NeXT's `get_image_patches`, then each piece through `each`.
    fn preprocess_anyres(
        &self,
        image: &RgbImage,
        pinpoints: &[[u32; 2]],
        tile: u32,
        base: (u32, u32),
        resample: Resample,
        each: &Geometry,
    ) -> Result<PixelValues, PreprocessError> {
        let (w, h) = image.dimensions();
        let [best_h, best_w] = select_best_resolution(h, w, pinpoints);
        // get_patch_output_size: fit inside the pinpoint, the other side rounded up.
        let (sw, sh) = (f64::from(best_w) / f64::from(w), f64::from(best_h) / f64::from(h));
        let (nh, nw) = if sw < sh {
            (((f64::from(h) * sw).ceil() as u32).min(best_h), best_w)
        } else {
            (best_h, ((f64::from(w) * sh).ceil() as u32).min(best_w))
        };
        let fitted = resize(image, nw.max(1), nh.max(1), resample);
        let mut padded = RgbImage::new(best_w, best_h);
        ::image::imageops::replace(
            &mut padded,
            &fitted,
            i64::from((best_w - nw) / 2),
            i64::from((best_h - nh) / 2),
        );
        let mut pieces = vec![resize(image, base.1, base.0, resample)];
        for y in (0..best_h).step_by(tile as usize) {
            for x in (0..best_w).step_by(tile as usize) {
                let (tw, th) = (tile.min(best_w - x), tile.min(best_h - y));
                pieces.push(::image::imageops::crop_imm(&padded, x, y, tw, th).to_image());
            }
        }
        let mut data = Vec::new();
        let mut piece_shape = Vec::new();
        for piece in &pieces {
            let p = self.preprocess_as(piece, each)?;
            if !piece_shape.is_empty() && piece_shape != p.shape {
                return Err(bad(
                    "crop_size",
                    format!(
                        "gives anyres tiles of shapes {piece_shape:?} and {:?}; they must match",
                        p.shape
                    ),
                ));
            }
            piece_shape = p.shape;
            data.extend(p.data);
        }
        let mut shape = vec![pieces.len()];
        shape.extend(piece_shape);
        Ok(PixelValues {
            data,
            shape,
            image_grid_thw: None,
            anyres: Some(Anyres {
                original: [h as usize, w as usize],
                grid: [(best_h / tile) as usize, (best_w / tile) as usize],
            }),
            splits: None,
        })
    }

    fn preprocess_patches(
        &self,
        image: &RgbImage,
        spec: PatchSpec,
        resample: Option<Resample>,
    ) -> Result<PixelValues, PreprocessError> {
        let (w, h) = image.dimensions();
        let factor = spec.patch * spec.merge;
        let resized;
        let image = match resample {
            Some(resample) => {
                let (th, tw) = smart_resize(h, w, factor, spec.min_pixels, spec.max_pixels)?;
                resized = resize(image, tw, th, resample);
                &resized
            }
            None => image,
        };
        let (w, h) = (image.width() as usize, image.height() as usize);
        let (p, m, t) = (spec.patch as usize, spec.merge as usize, spec.temporal as usize);
        if h % (p * m) != 0 || w % (p * m) != 0 {
            return Err(PreprocessError::BadImageSize {
                width: w as u32,
                height: h as u32,
                reason: format!(
                    "without do_resize the sides must be multiples of patch_size * merge_size = {}",
                    p * m
                ),
            });
        }
        let chw = self.rescale_normalize(image);
        let (grid_h, grid_w) = (h / p, w / p);
        let row_len = 3 * t * p * p;
        let mut data = Vec::with_capacity(grid_h * grid_w * row_len);
        // transformers' order: (block row, block col, row in block, col in block) per
        // patch; (channel, time, y, x) inside it, the image repeated over time.
        for gy in 0..grid_h / m {
            for gx in 0..grid_w / m {
                for my in 0..m {
                    for mx in 0..m {
                        let (y0, x0) = ((gy * m + my) * p, (gx * m + mx) * p);
                        for c in 0..3 {
                            let plane = &chw[c * h * w..(c + 1) * h * w];
                            for _ in 0..t {
                                for y in y0..y0 + p {
                                    data.extend_from_slice(&plane[y * w + x0..y * w + x0 + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(PixelValues {
            data,
            shape: vec![grid_h * grid_w, row_len],
            image_grid_thw: Some([1, grid_h, grid_w]),
            anyres: None,
            splits: None,
        })
    }

    /// HWC u8 to CHW f32: numpy's `astype(float64) * factor` cast to float32, then
    /// `(x - mean) / std` in float32.
    fn rescale_normalize(&self, image: &RgbImage) -> Vec<f32> {
        let plane = image.width() as usize * image.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        let raw = image.as_raw();
        for c in 0..3 {
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(raw.chunks_exact(3)) {
                let v = px[c];
                let mut x = match self.rescale {
                    Some(f) => (f64::from(v) * f) as f32,
                    None => f32::from(v),
                };
                if let Some((mean, std)) = &self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                *d = x;
            }
        }
        out
    }
}

impl SizeRule {
    /// The (height, width) transformers resizes an `h` × `w` image to.
    fn target(self, h: u32, w: u32) -> (u32, u32) {
        let (hf, wf) = (f64::from(h), f64::from(w));
        match self {
            SizeRule::Exact { height, width } => (height, width),
            // get_resize_output_image_size(default_to_square=False): the long side truncates.
            SizeRule::ShortestEdge(size) => {
                let (short, long) = if w <= h { (w, h) } else { (h, w) };
                let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short)) as u32;
                if w <= h {
                    (new_long, size)
                } else {
                    (size, new_long)
                }
            }
            // get_size_with_aspect_ratio(image_size, shortest_edge, longest_edge).
            SizeRule::ShortestLongest { shortest, longest } => {
                let mut size = shortest;
                let mut raw_size = None;
                let (min_side, max_side) = (hf.min(wf), hf.max(wf));
                if max_side / min_side * f64::from(size) > f64::from(longest) {
                    let raw = f64::from(longest) * min_side / max_side;
                    size = raw.round_ties_even() as u32;
                    raw_size = Some(raw);
                }
                if (h <= w && h == size) || (w <= h && w == size) {
                    (h, w)
                } else if w < h {
                    let oh = match raw_size {
                        Some(raw) => raw * hf / wf,
                        None => (u64::from(size) * u64::from(h)) as f64 / wf,
                    };
                    (oh as u32, size)
                } else {
                    let ow = match raw_size {
                        Some(raw) => raw * wf / hf,
                        None => (u64::from(size) * u64::from(w)) as f64 / hf,
                    };
                    (size, ow as u32)
                }
            }
            // get_image_size_for_max_height_width.
            SizeRule::MaxHeightWidth { height, width } => {
                let scale = (f64::from(height) / hf).min(f64::from(width) / wf);
                ((hf * scale) as u32, (wf * scale) as u32)
            }
        }
    }
}

/// Qwen2-VL's `smart_resize`: the (height, width) nearest the input's whose sides
/// are multiples of `factor` and whose area lies in `[min_pixels, max_pixels]`.
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32), PreprocessError> {
    let err = |reason: String| PreprocessError::BadImageSize { width, height, reason };
    if height == 0 || width == 0 || factor == 0 {
        return Err(err("a side or the patch factor is 0".into()));
    }
    let (h, w, f) = (f64::from(height), f64::from(width), f64::from(factor));
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(err(format!("the aspect ratio {ratio:.1} is over 200; crop the image")));
    }
    // Python's round() rounds half to even.
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if !(1.0..=f64::from(u32::MAX)).contains(&h_bar) || !(1.0..=f64::from(u32::MAX)).contains(&w_bar) {
        return Err(err(format!(
            "smart_resize gives {w_bar}x{h_bar}; check min_pixels/max_pixels"
        )));
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// transformers' `center_crop` on the uint8 image: the offset is floor((in - crop) / 2)
/// when cropping, and a side smaller than the crop is zero-padded, ceil((crop - in) / 2)
/// before it.
fn center_crop(image: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    // (first source index, first destination index, length) along one axis.
    let axis = |size: u32, crop: u32| {
        if crop <= size {
            ((size - crop) / 2, 0, crop)
        } else {
            (0, (crop - size).div_ceil(2), size)
        }
    };
    let (sy, dy, ny) = axis(h, crop_h);
    let (sx, dx, nx) = axis(w, crop_w);
    let mut out = RgbImage::new(crop_w, crop_h);
    let (src, dst_w) = (image.as_raw(), crop_w as usize * 3);
    let dst = &mut *out;
    for row in 0..ny as usize {
        let s = ((sy as usize + row) * w as usize + sx as usize) * 3;
        let d = (dy as usize + row) * dst_w + dx as usize * 3;
        dst[d..d + nx as usize * 3].copy_from_slice(&src[s..s + nx as usize * 3]);
    }
    out
}

// ------------------------------------------------------------------ config parsing

/// Idefics3's longest-edge resize: the long side to `max` (the short one
/// truncated, then made even), then scaled below 4096 px.
fn idefics3_resize(h: u32, w: u32, max: u32) -> (u32, u32) {
    let aspect = f64::from(w) / f64::from(h);
    let (mut h, mut w) = if w >= h {
        let h = (f64::from(max) / aspect) as u32;
        (h + h % 2, max)
    } else {
        let w = (f64::from(max) * aspect) as u32;
        (max, w + w % 2)
    };
    (h, w) = (h.max(1), w.max(1));
    const UPPER: u32 = 4096;
    let aspect = f64::from(w) / f64::from(h);
    if w >= h && w > UPPER {
        (h, w) = (((f64::from(UPPER) / aspect) as u32).max(1), UPPER);
    } else if h > w && h > UPPER {
        (h, w) = (UPPER, ((f64::from(UPPER) * aspect) as u32).max(1));
    }
    (h, w)
}

/// transformers' `select_best_resolution`: the (height, width) pinpoint that
/// keeps the most of the image's resolution, then wastes the least.
pub fn select_best_resolution(h: u32, w: u32, pinpoints: &[[u32; 2]]) -> [u32; 2] {
    let (oh, ow) = (f64::from(h), f64::from(w));
    let mut best = pinpoints[0];
    let (mut max_effective, mut min_wasted) = (0u64, u64::MAX);
    for &[ph, pw] in pinpoints {
        let scale = (f64::from(pw) / ow).min(f64::from(ph) / oh);
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let effective = (dw * dh).min(u64::from(w) * u64::from(h));
        let wasted = (u64::from(pw) * u64::from(ph)).saturating_sub(effective);
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            (max_effective, min_wasted, best) = (effective, wasted, [ph, pw]);
        }
    }
    best
}

/// LLaVA-NeXT's tiling around the per-piece `each` (resize + crop).
fn anyres_geometry(
    config: &ImageProcessorConfig,
    each: Geometry,
    resample: Resample,
) -> Result<Geometry, PreprocessError> {
    let pinpoints = config
        .image_grid_pinpoints
        .clone()
        .unwrap_or_else(|| vec![[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]);
    if pinpoints.is_empty() || pinpoints.iter().any(|p| p.contains(&0)) {
        return Err(bad(
            "image_grid_pinpoints",
            format!("{pinpoints:?} must be non-zero (height, width) pairs"),
        ));
    }
    let size = size_dict(
        "size",
        config
            .size
            .as_ref()
            .unwrap_or(&serde_json::json!({"shortest_edge": 224})),
        false,
    )?;
    let base = match (size.height, size.width, size.shortest_edge) {
        (Some(h), Some(w), _) => (h, w),
        (_, _, Some(e)) => (e, e),
        _ => return Err(bad("size", "needs height and width or shortest_edge".into())),
    };
    let crop = match &config.crop_size {
        Some(c) => size_dict("crop_size", c, true)?.height,
        None => None,
    };
    let tile = crop.or(size.height).unwrap_or(base.0);
    if pinpoints.iter().any(|p| p[0] % tile != 0 || p[1] % tile != 0) {
        return Err(bad(
            "image_grid_pinpoints",
            format!("{pinpoints:?} must be multiples of the tile side {tile}"),
        ));
    }
    Ok(Geometry::Anyres {
        pinpoints,
        tile,
        base,
        resample,
        each: Box::new(each),
    })
}

fn bad(field: &'static str, reason: String) -> PreprocessError {
    PreprocessError::BadConfig { field, reason }
}

fn positive(field: &'static str, v: u64) -> Result<u32, PreprocessError> {
    match u32::try_from(v) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(bad(field, format!("is {v}; expected a positive integer"))),
    }
}

/// A `size`-style value as transformers' `get_size_dict` reads it.
#[derive(Debug, Default)]
struct SizeDict {
    height: Option<u32>,
    width: Option<u32>,
    shortest_edge: Option<u32>,
    longest_edge: Option<u32>,
    max_height: Option<u32>,
    max_width: Option<u32>,
}

fn size_dict(field: &'static str, value: &Value, default_to_square: bool) -> Result<SizeDict, PreprocessError> {
    let dim = |v: &Value| -> Result<u32, PreprocessError> {
        let n = v
            .as_u64()
            .ok_or_else(|| bad(field, format!("has {v}, not a positive integer")))?;
        positive(field, n)
    };
    match value {
        Value::Number(_) if default_to_square => {
            let n = dim(value)?;
            Ok(SizeDict {
                height: Some(n),
                width: Some(n),
                ..Default::default()
            })
        }
        Value::Number(_) => Ok(SizeDict {
            shortest_edge: Some(dim(value)?),
            ..Default::default()
        }),
        Value::Array(hw) if hw.len() == 2 => Ok(SizeDict {
            height: Some(dim(&hw[0])?),
            width: Some(dim(&hw[1])?),
            ..Default::default()
        }),
        Value::Object(map) => {
            let mut dict = SizeDict::default();
            let mut keys = Vec::new();
            for (key, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                let slot = match key.as_str() {
                    "height" => &mut dict.height,
                    "width" => &mut dict.width,
                    "shortest_edge" => &mut dict.shortest_edge,
                    "longest_edge" => &mut dict.longest_edge,
                    "max_height" => &mut dict.max_height,
                    "max_width" => &mut dict.max_width,
                    _ => return Err(bad(field, format!("has an unknown key {key:?}"))),
                };
                *slot = Some(dim(v)?);
                keys.push(key.as_str());
            }
            keys.sort_unstable();
            const VALID: [&[&str]; 5] = [
                &["height", "width"],
                &["shortest_edge"],
                &["longest_edge", "shortest_edge"],
                &["longest_edge"],
                &["max_height", "max_width"],
            ];
            if !VALID.contains(&keys.as_slice()) {
                return Err(bad(
                    field,
                    format!("{value} has keys {keys:?}; expected one of {VALID:?}"),
                ));
            }
            Ok(dict)
        }
        _ => Err(bad(
            field,
            format!("is {value}; expected an integer, [height, width] or a dict"),
        )),
    }
}

fn size_rule(value: &Value, default_to_square: bool) -> Result<SizeRule, PreprocessError> {
    let d = size_dict("size", value, default_to_square)?;
    Ok(match d {
        SizeDict {
            shortest_edge: Some(shortest),
            longest_edge: Some(longest),
            ..
        } => SizeRule::ShortestLongest { shortest, longest },
        SizeDict {
            shortest_edge: Some(s), ..
        } => SizeRule::ShortestEdge(s),
        SizeDict {
            max_height: Some(height),
            max_width: Some(width),
            ..
        } => SizeRule::MaxHeightWidth { height, width },
        SizeDict {
            height: Some(height),
            width: Some(width),
            ..
        } => SizeRule::Exact { height, width },
        _ => {
            return Err(bad(
                "size",
                format!("{value} needs shortest_edge, height and width, or max_height and max_width"),
            ))
        }
    })
}

/// `image_mean`/`image_std`: one number for all channels or exactly three; numpy
/// makes them float32 before normalising.
fn channels(field: &'static str, value: Option<&Value>, default: [f64; 3]) -> Result<[f32; 3], PreprocessError> {
    let values = match value {
        None => default,
        Some(Value::Number(n)) => [n.as_f64().unwrap_or(f64::NAN); 3],
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, item) in out.iter_mut().zip(items) {
                *o = item
                    .as_f64()
                    .ok_or_else(|| bad(field, format!("has {item}, not a number")))?;
            }
            out
        }
        Some(Value::Array(items)) => {
            return Err(bad(
                field,
                format!(
                    "has {} values; expected 3 (one per RGB channel) or a single number",
                    items.len()
                ),
            ))
        }
        Some(other) => return Err(bad(field, format!("is {other}; expected 3 numbers"))),
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad(field, format!("has a non-finite value {values:?}")));
    }
    Ok(values.map(|v| v as f32))
}

/// Why a processor config or an image could not be preprocessed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreprocessError {
    /// Neither `preprocessor_config.json` nor a `processor_config.json` with an `image_processor` entry.
    #[error("{} has no preprocessor_config.json: download it with the checkpoint (vision models ship one beside config.json)", dir.display())]
    MissingConfig {
        /// The checkpoint folder.
        dir: PathBuf,
    },
    /// The config file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config is not valid JSON of the expected shape.
    #[error("{} is not a valid image processor config: {source}; re-download it", if path.as_os_str().is_empty() { "the JSON".into() } else { path.display().to_string() })]
    ParseConfig {
        /// The file (empty when parsed from a string).
        path: PathBuf,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// The config names no processor class.
    #[error("the image processor config has no image_processor_type: add one (e.g. \"CLIPImageProcessor\")")]
    MissingProcessorType,
    /// A processor class not implemented here.
    #[error("image processor {name:?} is not supported; supported: CLIPImageProcessor, SiglipImageProcessor, Gemma3ImageProcessor, Qwen2VLImageProcessor, LlavaNextImageProcessor, Idefics3ImageProcessor")]
    UnsupportedProcessor {
        /// The class name from the config.
        name: String,
    },
    /// A field with an invalid value.
    #[error("image processor config: {field} {reason}; fix preprocessor_config.json")]
    BadConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A processor option that is not implemented.
    #[error("image processor option {feature} is not supported here: set it to false in preprocessor_config.json")]
    Unsupported {
        /// The option.
        feature: String,
    },
    /// A 0×0 image.
    #[error("the image is empty (0 pixels)")]
    EmptyImage,
    /// An image whose size the processor cannot handle.
    #[error("cannot preprocess a {width}x{height} image: {reason}")]
    BadImageSize {
        /// Input width.
        width: u32,
        /// Input height.
        height: u32,
        /// Why.
        reason: String,
    },
}

impl PreprocessError {
    fn at(self, path: &Path) -> Self {
        match self {
            PreprocessError::ParseConfig { source, .. } => PreprocessError::ParseConfig {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        // 336 * 400 / 300 = 448 exactly; 336 * 61 / 47 = 436.08 -> 436.
        assert_eq!(SizeRule::ShortestEdge(336).target(300, 400), (336, 448));
        assert_eq!(SizeRule::ShortestEdge(336).target(61, 47), (436, 336));
    }

    #[test]
    fn smart_resize_matches_python() {
        assert_eq!(smart_resize(47, 61, 28, 3136, 12544).unwrap(), (56, 56));
        assert_eq!(smart_resize(300, 400, 28, 3136, 12544).unwrap(), (84, 112));
        // round(2.5) == 2 in Python.
        assert_eq!(smart_resize(70, 70, 28, 0, u64::MAX).unwrap(), (56, 56));
        assert!(smart_resize(1, 300, 28, 3136, 12544).is_err());
    }
}
