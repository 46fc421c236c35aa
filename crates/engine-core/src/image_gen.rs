//! Image generation: what a request asks for ([`ImageRequest`]), what comes
//! back ([`ImageF32`]), and the trait every image backend implements
//! ([`ImageGenerator`]), so apps and servers are written against core types
//! and never name a backend crate.

use crate::error::Result;

/// An RGB image, row-major `(height, width, 3)`, values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height × width × 3` values.
    pub data: Vec<f32>,
}

impl ImageF32 {
    /// 8-bit RGB samples as diffusers' `numpy_to_pil` makes them:
    /// `(x * 255).round()` of the value clamped to [0, 1], half to even (NumPy).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
            .collect()
    }
}

/// Initial latents in diffusers' layout: NCHW `(n, 4, height/8, width/8)`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Latents {
    /// `[n, channels, height/8, width/8]`.
    pub shape: [usize; 4],
    /// The values.
    pub data: Vec<f32>,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The prompt.
    pub prompt: String,
    /// What to steer away from. `None`: the empty prompt (SD 1/2) or zeros (SDXL's
    /// `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<String>,
    /// Width in pixels (a multiple of 8). Ignored for img2img (the image's size is used).
    pub width: usize,
    /// Height in pixels (a multiple of 8). Ignored for img2img.
    pub height: usize,
    /// Sampling steps (img2img runs `floor(steps × strength)` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 turns guidance off.
    pub guidance: f32,
    /// Seed of the initial noise (when `latents` is not given).
    pub seed: u64,
    /// The initial noise (diffusers' `latents=`); for img2img, the noise added to the image.
    pub latents: Option<Latents>,
    /// Ancestral samplers: the noise of each step (NCHW like `latents`, one per step
    /// run), to reproduce another implementation's draws; `None` draws it from `seed`.
    pub step_noise: Option<Vec<Latents>>,
    /// img2img: the starting image.
    pub init_image: Option<ImageF32>,
    /// img2img: how much of the schedule to run, in (0, 1].
    pub strength: f32,
    /// Images to make.
    pub n: usize,
    /// A scheduler other than the model's own, by the backend's name for it
    /// (engine-diffusion: `SchedulerKind::NAMES`).
    pub scheduler: Option<String>,
    /// Skip the last CLIP layers (diffusers' `clip_skip`); as in diffusers, it
    /// applies to the prompt only, not the negative prompt.
    pub clip_skip: Option<usize>,
}

impl ImageRequest {
    /// A 512×512, 30-step, guidance 7.5 request for `prompt`.
    pub fn new(prompt: impl Into<String>) -> ImageRequest {
        ImageRequest {
            prompt: prompt.into(),
            negative_prompt: None,
            width: 512,
            height: 512,
            steps: 30,
            guidance: 7.5,
            seed: 0,
            latents: None,
            step_noise: None,
            init_image: None,
            strength: 0.8,
            n: 1,
            scheduler: None,
            clip_skip: None,
        }
    }
}

/// Progress of an image generation, reported after each denoising step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
}

/// An image-generation backend (engine-diffusion's `ImagePipeline`).
///
/// ```
/// use engine_core::{ImageF32, ImageGenerator, ImageRequest, StepProgress, Result};
/// struct Grey;
/// impl ImageGenerator for Grey {
///     fn generate_with(&self, r: &ImageRequest, progress: &mut dyn FnMut(StepProgress) -> bool) -> Result<Vec<ImageF32>> {
///         progress(StepProgress { step: 1, steps: 1 });
///         Ok(vec![ImageF32 { width: r.width, height: r.height, data: vec![0.5; r.width * r.height * 3] }; r.n])
///     }
/// }
/// let mut r = ImageRequest::new("anything");
/// r.width = 8;
/// r.height = 8;
/// let model: &dyn ImageGenerator = &Grey;
/// assert_eq!(model.generate(&r)?[0].data.len(), 8 * 8 * 3);
/// # Ok::<(), engine_core::EngineError>(())
/// ```
pub trait ImageGenerator {
    /// Generates `req.n` images.
    fn generate(&self, req: &ImageRequest) -> Result<Vec<ImageF32>> {
        self.generate_with(req, &mut |_| true)
    }

    /// Generates, calling `progress` after each step; returning `false` stops
    /// at that step with [`EngineError::Cancelled`](crate::EngineError::Cancelled).
    fn generate_with(
        &self,
        req: &ImageRequest,
        progress: &mut dyn FnMut(StepProgress) -> bool,
    ) -> Result<Vec<ImageF32>>;
}
