//! Text-to-image and img2img: prompt → CLIP embeddings, classifier-free
//! guidance with the unconditional and conditional halves batched, the
//! scheduler's steps with a progress callback, VAE decoding to f32 RGB.

use crate::blocks::guidance_embedding;
use crate::error::{DiffusionError, Result};
use crate::request::{invalid, ImageF32, ImageRequest, Progress};
use crate::scheduler::{Schedule, SchedulerKind};
use crate::ImagePipeline;
use engine_mlx::{concatenate, random, Array, Dtype};

impl ImagePipeline {
    /// Generates `req.n` images.
    pub fn generate(&self, req: &ImageRequest) -> Result<Vec<ImageF32>> {
        self.generate_with(req, |_| true)
    }

    /// Generates, calling `progress` after each step; returning `false` cancels
    /// ([`DiffusionError::Cancelled`]).
    pub fn generate_with(
        &self,
        req: &ImageRequest,
        mut progress: impl FnMut(Progress) -> bool,
    ) -> Result<Vec<ImageF32>> {
        let (w, h) = match &req.init_image {
            Some(img) => (img.width, img.height),
            None => (req.width, req.height),
        };
        let (lc, lh, lw) = self.validate(req, w, h)?;
        let kind = match &req.scheduler {
            Some(name) => SchedulerKind::from_name(name)?,
            None => SchedulerKind::from_config(&self.scheduler),
        };
        let mut sched = Schedule::new(kind, &self.scheduler, req.steps)?;
        let n = req.n;
        let noise = match &req.latents {
            Some(l) => Array::from_slice(&l.data, &l.shape)?.transpose(&[0, 2, 3, 1])?,
            None => random::normal(
                &[n, lh, lw, lc],
                Dtype::Float32,
                0.0,
                1.0,
                Some(&random::key(req.seed)?),
            )?,
        };
        let noise = noise.astype(self.dtype)?;
        let (mut x, start) = match &req.init_image {
            None => (noise.mul_scalar(sched.init_noise_sigma() as f64)?, 0),
            Some(img) => {
                let run = ((req.steps as f64 * req.strength as f64).floor() as usize).min(req.steps);
                if run == 0 {
                    return invalid(format!(
                        "strength {} × {} steps runs no step; raise the strength or the steps",
                        req.strength, req.steps
                    ));
                }
                let start = req.steps - run;
                let pixels = Array::from_slice(&img.data, &[1, h, w, 3])?.astype(self.dtype)?;
                let pixels = pixels.mul_scalar(2.0)?.add_scalar(-1.0)?.repeat(n as i32, 0)?;
                let mean = self.vae.encode_mean(&pixels)?.ok_or_else(|| {
                    DiffusionError::InvalidRequest(
                        "img2img needs the VAE encoder, but vae/ holds only the decoder; use a full VAE".into(),
                    )
                })?;
                let z = mean
                    .mul_scalar(self.vae.config().scaling_factor as f64)?
                    .astype(self.dtype)?;
                (sched.add_noise(&z, &noise, start)?, start)
            }
        };
        // LCM-distilled UNets embed the guidance scale instead of running an unconditional half.
        let guidance_emb = match self.unet.config().time_cond_proj_dim {
            Some(d) => Some(guidance_embedding(req.guidance - 1.0, d)?.astype(self.dtype)?),
            None => None,
        };
        let guided = req.guidance > 1.0 && guidance_emb.is_none();
        let cond = self.condition(req, guided)?;
        let (context, added) = if guided {
            (
                concatenate(&[&cond.neg, &cond.pos], 0)?,
                cond.pooled.as_ref().map(|(p, q)| concatenate(&[q, p], 0)).transpose()?,
            )
        } else {
            (cond.pos, cond.pooled.map(|(p, _)| p))
        };
        let rows = if guided { 2 * n } else { n };
        let time_ids: Vec<f32> = (0..rows)
            .flat_map(|_| [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32])
            .collect();
        let timesteps = sched.timesteps().to_vec();
        let total = timesteps.len() - start;
        let step_keys = match (&req.step_noise, sched.needs_noise()) {
            (None, true) => random::split(&random::split(&random::key(req.seed)?, 2)?[1], total as i32)?,
            _ => vec![],
        };
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            let inp = if guided { concatenate(&[&x, &x], 0)? } else { x.clone() };
            let inp = sched.scale_model_input(&inp, i)?;
            let out = self.unet.forward(
                &inp,
                t,
                &context,
                added.as_ref().map(|a| (a, time_ids.as_slice())),
                guidance_emb.as_ref(),
            )?;
            let out = if guided {
                let halves = out.split(2, 0)?;
                let diff = halves[1].subtract(&halves[0])?;
                halves[0].add(&diff.mul_scalar(req.guidance as f64)?)?
            } else {
                out
            };
            let noise = match (&req.step_noise, sched.needs_noise()) {
                (_, false) => None,
                (Some(all), true) => {
                    let l = &all[i - start];
                    Some(
                        Array::from_slice(&l.data, &l.shape)?
                            .transpose(&[0, 2, 3, 1])?
                            .astype(self.dtype)?,
                    )
                }
                (None, true) => Some(random::normal(
                    &x.shape(),
                    self.dtype,
                    0.0,
                    1.0,
                    Some(&step_keys[i - start]),
                )?),
            };
            x = sched.step(&out, i, &x, noise.as_ref())?;
            x.eval()?;
            let step = i + 1 - start;
            if !progress(Progress { step, steps: total }) {
                return Err(DiffusionError::Cancelled { step, steps: total });
            }
        }
        let img = self
            .vae
            .decode(&x.mul_scalar(1.0 / self.vae.config().scaling_factor as f64)?)?;
        let img = img
            .mul_scalar(0.5)?
            .add_scalar(0.5)?
            .clip(0.0, 1.0)?
            .astype(Dtype::Float32)?;
        let data = img.to_vec::<f32>()?;
        let per = h * w * 3;
        Ok(data
            .chunks(per)
            .map(|c| ImageF32 {
                width: w,
                height: h,
                data: c.to_vec(),
            })
            .collect())
    }
}

/// The backend-neutral face of the pipeline: errors become [`engine_core::EngineError`]s.
impl engine_core::ImageGenerator for ImagePipeline {
    fn generate_with(
        &self,
        req: &ImageRequest,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> engine_core::Result<Vec<ImageF32>> {
        Ok(ImagePipeline::generate_with(self, req, progress)?)
    }
}
