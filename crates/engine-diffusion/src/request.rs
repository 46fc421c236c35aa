//! What a generation asks for ([`ImageRequest`]) and gets ([`ImageF32`]) —
//! engine-core's types — and the checks that turn bad requests into errors
//! that say what to change.

use crate::error::{DiffusionError, Result};
use crate::scheduler::SchedulerKind;
use crate::ImagePipeline;

// The request and image types are engine-core's, so apps written against
// `engine_core::ImageGenerator` never name this crate; re-exported from here.
pub use engine_core::image_gen::{ImageF32, ImageRequest, Latents};

/// Progress of a generation, reported after each step (engine-core's `StepProgress`).
pub use engine_core::image_gen::StepProgress as Progress;

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
