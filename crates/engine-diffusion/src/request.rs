//! What a generation asks for ([`ImageRequest`]) and gets ([`ImageF32`]), and
//! the checks that turn bad requests into errors that say what to change.

use crate::error::{DiffusionError, Result};
use crate::scheduler::SchedulerKind;
use crate::ImagePipeline;

/// An RGB image, row-major (height, width, 3), values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height × width × 3` values.
    pub data: Vec<f32>,
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
    /// A scheduler other than the pipeline's own (see [`SchedulerKind::NAMES`]).
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

/// Progress of a generation, reported after each step.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
}

pub(crate) fn invalid<T>(msg: String) -> Result<T> {
    Err(DiffusionError::InvalidRequest(msg))
}

impl ImagePipeline {
    /// Checks a request; returns the latent (channels, height, width).
    pub(crate) fn validate(&self, req: &ImageRequest, w: usize, h: usize) -> Result<(usize, usize, usize)> {
        let f = self.vae.scale_factor();
        let levels = self.unet.config().block_out_channels.len();
        let unit = f << (levels - 1);
        if w == 0 || h == 0 || !w.is_multiple_of(unit) || !h.is_multiple_of(unit) {
            return invalid(format!(
                "size {w}×{h} is not a multiple of {unit} (the VAE's factor {f} × the UNet's {} downsamplings); \
                 round width and height to a multiple of {unit}",
                levels - 1
            ));
        }
        if req.steps == 0 || req.steps > self.scheduler.num_train_timesteps {
            return invalid(format!(
                "steps = {} is out of range; use 1 to {}",
                req.steps, self.scheduler.num_train_timesteps
            ));
        }
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return invalid(format!(
                "guidance = {} must be a finite number ≥ 0 (7.5 is usual)",
                req.guidance
            ));
        }
        if req.n == 0 || req.n > 64 {
            return invalid(format!("n = {} images; ask for 1 to 64", req.n));
        }
        if let Some(s) = &req.scheduler {
            SchedulerKind::from_name(s)?;
        }
        if let Some(img) = &req.init_image {
            if !(req.strength > 0.0 && req.strength <= 1.0) {
                return invalid(format!(
                    "strength = {} must be in (0, 1] (0.6 keeps much of the image)",
                    req.strength
                ));
            }
            if img.data.len() != img.width * img.height * 3 {
                return invalid(format!(
                    "init_image has {} values but {}×{}×3 = {} were expected",
                    img.data.len(),
                    img.height,
                    img.width,
                    img.width * img.height * 3
                ));
            }
        }
        let (lc, lh, lw) = (self.unet.config().in_channels, h / f, w / f);
        if let Some(all) = &req.step_noise {
            let want = [req.n, lc, lh, lw];
            if let Some(l) = all
                .iter()
                .find(|l| l.shape != want || l.data.len() != want.iter().product::<usize>())
            {
                return invalid(format!(
                    "step_noise holds shape {:?} ({} values); each must be {want:?}",
                    l.shape,
                    l.data.len()
                ));
            }
            let runs = match &req.init_image {
                Some(_) => ((req.steps as f64 * req.strength as f64).floor() as usize).min(req.steps),
                None => req.steps,
            };
            if all.len() < runs {
                return invalid(format!(
                    "step_noise has {} entries but {runs} steps run; give one per step",
                    all.len()
                ));
            }
        }
        if let Some(l) = &req.latents {
            let want = [req.n, lc, lh, lw];
            if l.shape != want || l.data.len() != want.iter().product::<usize>() {
                return invalid(format!(
                    "latents have shape {:?} ({} values) but {}×{} needs {want:?} (n, channels, height/{f}, width/{f})",
                    l.shape,
                    l.data.len(),
                    w,
                    h
                ));
            }
            if l.data.iter().any(|v| !v.is_finite()) {
                return invalid("latents hold NaN or infinite values".into());
            }
        }
        Ok((lc, lh, lw))
    }
}
