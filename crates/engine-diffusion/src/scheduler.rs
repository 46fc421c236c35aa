//! Noise schedulers with diffusers' semantics, configured from
//! `scheduler/scheduler_config.json`: DDIM (η = 0), Euler (`EulerDiscreteScheduler`)
//! Euler ancestral and DPM-Solver++ 2M (`DPMSolverMultistepScheduler`, optionally
//! with Karras sigmas). This file plans the schedule; `sampler.rs` holds the update rules.

use crate::error::{DiffusionError, Result};
use engine_mlx::Array;
use serde::Deserialize;

/// `scheduler_config.json` (shared fields of diffusers' schedulers).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// diffusers class (`DDIMScheduler`, `EulerDiscreteScheduler`, ...).
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Training steps (1000).
    pub num_train_timesteps: usize,
    /// First beta.
    pub beta_start: f32,
    /// Last beta.
    pub beta_end: f32,
    /// `scaled_linear` or `linear`.
    pub beta_schedule: String,
    /// `epsilon`, `v_prediction` or `sample`.
    pub prediction_type: String,
    /// `leading`, `trailing` or `linspace`.
    pub timestep_spacing: String,
    /// Added to `leading` timesteps.
    pub steps_offset: usize,
    /// DDIM/PNDM: the alpha after the last step is 1 (else `alphas_cumprod[0]`);
    /// absent: the class default (DDIM true, PNDM false).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clip the predicted sample to ±`clip_sample_range` (absent: DDIM's default, true).
    pub clip_sample: Option<bool>,
    /// DDIM: the clip range.
    pub clip_sample_range: f32,
    /// Dynamic thresholding (not implemented: refused).
    pub thresholding: bool,
    /// Zero-terminal-SNR rescaling (not implemented: refused).
    pub rescale_betas_zero_snr: bool,
    /// LCM: the distillation schedule's steps (50).
    pub original_inference_steps: Option<usize>,
    /// LCM: scales the timestep in the consistency boundary condition (10).
    pub timestep_scaling: Option<f32>,
    /// PNDM: skip the Runge-Kutta warm-up. Only `true` (what SD 1.x ships) is
    /// implemented; absent is taken as `true` (diffusers' class default is `false`).
    pub skip_prk_steps: Option<bool>,
    /// Custom betas (not implemented: refused).
    pub trained_betas: Option<Vec<f32>>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            class_name: String::new(),
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            prediction_type: "epsilon".into(),
            timestep_spacing: "leading".into(),
            steps_offset: 0,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            thresholding: false,
            rescale_betas_zero_snr: false,
            trained_betas: None,
            skip_prk_steps: None,
            original_inference_steps: None,
            timestep_scaling: None,
        }
    }
}

/// The samplers this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    /// DDIM, deterministic (η = 0).
    Ddim,
    /// PNDM's PLMS steps (`PNDMScheduler` with `skip_prk_steps`, SD 1.x's default):
    /// one more UNet call than steps.
    Pndm,
    /// Euler (Karras et al. ODE, `EulerDiscreteScheduler`).
    Euler,
    /// Euler ancestral (`EulerAncestralDiscreteScheduler`): fresh noise each step.
    EulerAncestral,
    /// Latent Consistency Models (`LCMScheduler`): few steps, fresh noise between them.
    Lcm,
    /// DPM-Solver++ 2M (`DPMSolverMultistepScheduler`), with Karras sigmas or not.
    DpmPp2M {
        /// `use_karras_sigmas`.
        karras: bool,
    },
}

impl SchedulerKind {
    /// Names accepted by [`SchedulerKind::from_name`].
    pub const NAMES: &'static [&'static str] =
        &["ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm"];

    /// Parses a request's scheduler name.
    pub fn from_name(name: &str) -> Result<SchedulerKind> {
        Ok(match name {
            "ddim" => SchedulerKind::Ddim,
            "pndm" => SchedulerKind::Pndm,
            "euler" => SchedulerKind::Euler,
            "euler_a" => SchedulerKind::EulerAncestral,
            "lcm" => SchedulerKind::Lcm,
            "dpmpp_2m" => SchedulerKind::DpmPp2M { karras: false },
            "dpmpp_2m_karras" => SchedulerKind::DpmPp2M { karras: true },
            other => {
                return Err(DiffusionError::InvalidRequest(format!(
                    "unknown scheduler `{other}`; use one of {}",
                    Self::NAMES.join(", ")
                )))
            }
        })
    }

    /// The timesteps this sampler visits for `steps` steps under `cfg`, in order
    /// (what the UNet is given), as diffusers' `set_timesteps` computes them.
    pub fn timesteps(self, cfg: &SchedulerConfig, steps: usize) -> Result<Vec<f32>> {
        Ok(Schedule::new(self, cfg, steps)?.timesteps().to_vec())
    }

    /// The sampler a diffusers config names; others (e.g. PNDM) fall back to Euler.
    pub fn from_config(cfg: &SchedulerConfig) -> SchedulerKind {
        match cfg.class_name.as_str() {
            "DDIMScheduler" => SchedulerKind::Ddim,
            "PNDMScheduler" => SchedulerKind::Pndm,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2M { karras: false },
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
            "LCMScheduler" => SchedulerKind::Lcm,
            other => {
                tracing::info!(scheduler = other, "scheduler not implemented; sampling with Euler");
                SchedulerKind::Euler
            }
        }
    }
}

/// torch.linspace in f32 (the two-sided formula of its CPU kernel).
fn linspace_f32(a: f32, b: f32, n: usize) -> Vec<f32> {
    let step = (b - a) / (n as f32 - 1.0);
    (0..n)
        .map(|i| {
            if i < n / 2 {
                a + step * i as f32
            } else {
                b - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

fn interp(x: f64, table: &[f32]) -> f64 {
    let lo = (x.floor().max(0.0) as usize).min(table.len() - 1);
    let hi = (lo + 1).min(table.len() - 1);
    let w = x - lo as f64;
    table[lo] as f64 * (1.0 - w) + table[hi] as f64 * w
}

/// A schedule planned for one generation: timesteps, sigmas, and the solver's history.
pub(crate) struct Schedule {
    pub(crate) kind: SchedulerKind,
    pub(crate) cfg: SchedulerConfig,
    /// `alphas_cumprod` of the training schedule.
    pub(crate) acp: Vec<f32>,
    pub(crate) timesteps: Vec<f32>,
    /// One per timestep, then 0 (Euler, DPM-Solver).
    pub(crate) sigmas: Vec<f32>,
    pub(crate) steps: usize,
    /// DPM-Solver's previous data prediction; PNDM's last model outputs.
    pub(crate) history: Vec<Array>,
    /// PNDM: steps taken, and the sample kept for its second (Heun-like) call.
    pub(crate) counter: usize,
    pub(crate) cur_sample: Option<Array>,
}

impl Schedule {
    pub fn new(kind: SchedulerKind, cfg: &SchedulerConfig, steps: usize) -> Result<Schedule> {
        let bad = |what: &str| {
            Err(DiffusionError::InvalidRequest(format!(
                "the scheduler config sets {what}, which this engine does not implement; pick a pipeline without it"
            )))
        };
        if cfg.thresholding {
            return bad("thresholding");
        }
        if cfg.rescale_betas_zero_snr {
            return bad("rescale_betas_zero_snr");
        }
        if cfg.trained_betas.is_some() {
            return bad("trained_betas");
        }
        let t_train = cfg.num_train_timesteps;
        let betas: Vec<f32> = match cfg.beta_schedule.as_str() {
            "scaled_linear" => linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), t_train)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            "linear" => linspace_f32(cfg.beta_start, cfg.beta_end, t_train),
            other => return bad(&format!("beta_schedule `{other}`")),
        };
        let mut acp = Vec::with_capacity(t_train);
        let mut p = 1f32;
        for b in &betas {
            p *= 1.0 - b;
            acp.push(p);
        }
        let n = steps;
        let (tt, nf) = (t_train as f64, n as f64);
        let spacing = cfg.timestep_spacing.as_str();
        let off = cfg.steps_offset as f64;
        let dpm = matches!(kind, SchedulerKind::DpmPp2M { .. });
        let timesteps: Vec<f64> = match (spacing, dpm) {
            ("leading", false) => (0..n).rev().map(|i| (i * (t_train / n)) as f64 + off).collect(),
            ("leading", true) => (1..=n).rev().map(|i| (i * (t_train / (n + 1))) as f64 + off).collect(),
            ("trailing", _) => (0..n).map(|i| (tt - i as f64 * tt / nf).round() - 1.0).collect(),
            ("linspace", false) => (0..n)
                .rev()
                .map(|i| {
                    if n == 1 {
                        0.0
                    } else {
                        i as f64 * (tt - 1.0) / (nf - 1.0)
                    }
                })
                .map(|t| {
                    if matches!(kind, SchedulerKind::Ddim | SchedulerKind::Pndm) {
                        t.round()
                    } else {
                        t
                    }
                })
                .collect(),
            ("linspace", true) => (1..=n).rev().map(|i| (i as f64 * (tt - 1.0) / nf).round()).collect(),
            (other, _) => return bad(&format!("timestep_spacing `{other}`")),
        };
        let mut timesteps = timesteps;
        if kind == SchedulerKind::Lcm {
            let orig = cfg.original_inference_steps.unwrap_or(50);
            if orig == 0 || orig > t_train || n > orig {
                return Err(DiffusionError::InvalidRequest(format!(
                    "LCM runs at most original_inference_steps = {orig} steps (of {t_train}); ask for 1 to {orig} steps"
                )));
            }
            // Every k-th training step, newest first, then n of them evenly spaced.
            let k = t_train / orig;
            let origin: Vec<f64> = (1..=orig).rev().map(|i| (i * k) as f64 - 1.0).collect();
            timesteps = (0..n).map(|i| origin[i * orig / n]).collect();
        }
        if kind == SchedulerKind::Pndm {
            if cfg.skip_prk_steps == Some(false) {
                return bad("skip_prk_steps = false (PNDM's Runge-Kutta warm-up)");
            }
            if n >= 2 {
                timesteps.insert(2, timesteps[1]);
            }
        }
        // `leading` + `steps_offset` can step past the last training step (diffusers
        // indexes out of range there); say so instead.
        if let Some(&t) = timesteps.iter().find(|&&t| !(0.0..tt).contains(&t)) {
            return Err(DiffusionError::InvalidRequest(format!(
                "{n} steps with timestep_spacing `{spacing}` and steps_offset {} reach timestep {t}, \
                 outside the {t_train} training steps; use fewer steps",
                cfg.steps_offset
            )));
        }
        let table: Vec<f32> = acp.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = match kind {
            SchedulerKind::DpmPp2M { karras: true } => {
                let (lo, hi) = (table[0] as f64, table[t_train - 1] as f64);
                let rho = 7.0;
                let sig: Vec<f64> = (0..n)
                    .map(|i| {
                        let r = if n == 1 { 0.0 } else { i as f64 / (nf - 1.0) };
                        let (mn, mx) = (lo.powf(1.0 / rho), hi.powf(1.0 / rho));
                        (mx + r * (mn - mx)).powf(rho)
                    })
                    .collect();
                let ts = sig.iter().map(|&s| sigma_to_t(s, &table).round()).collect();
                (ts, sig)
            }
            _ => {
                let sig = timesteps.iter().map(|&t| interp(t, &table)).collect();
                (timesteps, sig)
            }
        };
        sigmas.push(0.0);
        Ok(Schedule {
            kind,
            cfg: cfg.clone(),
            acp,
            timesteps: timesteps.iter().map(|&t| t as f32).collect(),
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
            steps: n,
            history: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    /// The timesteps, in sampling order (what the UNet sees).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The scale of the initial noise.
    pub fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let max = self.sigmas.iter().cloned().fold(0.0f32, f32::max);
                match self.cfg.timestep_spacing.as_str() {
                    "linspace" | "trailing" => max,
                    _ => (max * max + 1.0).sqrt(),
                }
            }
            _ => 1.0,
        }
    }
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of `sigma`.
fn sigma_to_t(sigma: f64, table: &[f32]) -> f64 {
    let ls = sigma.max(1e-10).ln();
    let logs: Vec<f64> = table.iter().map(|&s| (s as f64).ln()).collect();
    let count = logs.iter().filter(|&&l| ls - l >= 0.0).count();
    let low = count.saturating_sub(1).min(logs.len() - 2);
    let (lo, hi) = (logs[low], logs[low + 1]);
    let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
