//! The update rules of the schedules planned in `scheduler.rs`, as diffusers'
//! `step`, `scale_model_input` and `add_noise`.

use crate::error::Result;
use crate::scheduler::{Schedule, SchedulerKind};
use engine_mlx::Array;

impl Schedule {
    /// Scales the UNet input at step `i`.
    pub fn scale_model_input(&self, x: &Array, i: usize) -> Result<Array> {
        Ok(match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let s = self.sigmas[i] as f64;
                x.mul_scalar(1.0 / (s * s + 1.0).sqrt())?
            }
            _ => x.clone(),
        })
    }

    /// `noise` added to clean latents for starting at step `i` (img2img).
    pub fn add_noise(&self, x0: &Array, noise: &Array, i: usize) -> Result<Array> {
        let (a, b) = match self.kind {
            SchedulerKind::Ddim | SchedulerKind::Pndm | SchedulerKind::Lcm => {
                let ac = self.acp[self.timesteps[i] as usize] as f64;
                (ac.sqrt(), (1.0 - ac).sqrt())
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => (1.0, self.sigmas[i] as f64),
            SchedulerKind::DpmPp2M { .. } => alpha_sigma(self.sigmas[i] as f64),
        };
        Ok(x0.mul_scalar(a)?.add(&noise.mul_scalar(b)?)?)
    }

    /// Whether [`Schedule::step`] needs fresh noise (ancestral samplers).
    pub fn needs_noise(&self) -> bool {
        matches!(self.kind, SchedulerKind::EulerAncestral | SchedulerKind::Lcm)
    }

    /// One sampling step at index `i` from `x` with the (guided) model output;
    /// `noise` (shaped like `x`) is used by ancestral samplers only.
    pub fn step(&mut self, out: &Array, i: usize, x: &Array, noise: Option<&Array>) -> Result<Array> {
        let pred = self.cfg.prediction_type.clone();
        match self.kind {
            SchedulerKind::Ddim => {
                let t = self.timesteps[i] as i64;
                let prev = t - (self.cfg.num_train_timesteps / self.steps) as i64;
                let at = self.acp[t as usize] as f64;
                let ap = match prev {
                    p if p >= 0 => self.acp[p as usize] as f64,
                    _ if self.cfg.set_alpha_to_one.unwrap_or(true) => 1.0,
                    _ => self.acp[0] as f64,
                };
                let bt = 1.0 - at;
                let (mut x0, eps) = match pred.as_str() {
                    "epsilon" => (
                        x.subtract(&out.mul_scalar(bt.sqrt())?)?.mul_scalar(1.0 / at.sqrt())?,
                        out.clone(),
                    ),
                    "v_prediction" => (
                        x.mul_scalar(at.sqrt())?.subtract(&out.mul_scalar(bt.sqrt())?)?,
                        out.mul_scalar(at.sqrt())?.add(&x.mul_scalar(bt.sqrt())?)?,
                    ),
                    _ => (
                        out.clone(),
                        x.subtract(&out.mul_scalar(at.sqrt())?)?.mul_scalar(1.0 / bt.sqrt())?,
                    ),
                };
                if self.cfg.clip_sample.unwrap_or(true) {
                    let r = self.cfg.clip_sample_range as f64;
                    x0 = x0.clip(-r, r)?;
                }
                x0.mul_scalar(ap.sqrt())?.add(&eps.mul_scalar((1.0 - ap).sqrt())?)
            }
            SchedulerKind::Pndm => self.step_plms(out, i, x),
            SchedulerKind::Lcm => {
                let t = self.timesteps[i] as usize;
                let last = i + 1 == self.timesteps.len();
                let prev = if last { t } else { self.timesteps[i + 1] as usize };
                let (at, ap) = (self.acp[t] as f64, self.acp[prev] as f64);
                let (bt, bp) = (1.0 - at, 1.0 - ap);
                // Consistency boundary condition (sigma_data = 0.5).
                let st = t as f64 * self.cfg.timestep_scaling.unwrap_or(10.0) as f64;
                let c_skip = 0.25 / (st * st + 0.25);
                let c_out = st / (st * st + 0.25).sqrt();
                let mut x0 = match pred.as_str() {
                    "epsilon" => x.subtract(&out.mul_scalar(bt.sqrt())?)?.mul_scalar(1.0 / at.sqrt())?,
                    "v_prediction" => x.mul_scalar(at.sqrt())?.subtract(&out.mul_scalar(bt.sqrt())?)?,
                    _ => out.clone(),
                };
                if self.cfg.clip_sample.unwrap_or(false) {
                    let r = self.cfg.clip_sample_range as f64;
                    x0 = x0.clip(-r, r)?;
                }
                let denoised = x0.mul_scalar(c_out)?.add(&x.mul_scalar(c_skip)?)?;
                match noise {
                    Some(z) if !last => denoised.mul_scalar(ap.sqrt())?.add(&z.mul_scalar(bp.sqrt())?),
                    _ => Ok(denoised),
                }
            }
            SchedulerKind::Euler => {
                let (s, next) = (self.sigmas[i] as f64, self.sigmas[i + 1] as f64);
                let x0 = match pred.as_str() {
                    "epsilon" => x.subtract(&out.mul_scalar(s)?)?,
                    "v_prediction" => out
                        .mul_scalar(-s / (s * s + 1.0).sqrt())?
                        .add(&x.mul_scalar(1.0 / (s * s + 1.0))?)?,
                    _ => out.clone(),
                };
                let d = x.subtract(&x0)?.mul_scalar(1.0 / s)?;
                x.add(&d.mul_scalar(next - s)?)
            }
            SchedulerKind::EulerAncestral => {
                let (s, next) = (self.sigmas[i] as f64, self.sigmas[i + 1] as f64);
                let x0 = match pred.as_str() {
                    "v_prediction" => out
                        .mul_scalar(-s / (s * s + 1.0).sqrt())?
                        .add(&x.mul_scalar(1.0 / (s * s + 1.0))?)?,
                    _ => x.subtract(&out.mul_scalar(s)?)?,
                };
                let up = (next * next * (s * s - next * next) / (s * s)).sqrt();
                let down = (next * next - up * up).sqrt();
                let d = x.subtract(&x0)?.mul_scalar(1.0 / s)?;
                let prev = x.add(&d.mul_scalar(down - s)?)?;
                match noise {
                    Some(z) if up > 0.0 => prev.add(&z.mul_scalar(up)?),
                    _ => Ok(prev),
                }
            }
            SchedulerKind::DpmPp2M { .. } => {
                let s0 = self.sigmas[i] as f64;
                let (a0, sg0) = alpha_sigma(s0);
                let x0 = match pred.as_str() {
                    "epsilon" => x.subtract(&out.mul_scalar(sg0)?)?.mul_scalar(1.0 / a0)?,
                    "v_prediction" => x.mul_scalar(a0)?.subtract(&out.mul_scalar(sg0)?)?,
                    _ => out.clone(),
                };
                let last = i + 1 == self.timesteps.len();
                let first_order = self.history.is_empty() || last;
                let (at, st) = alpha_sigma(self.sigmas[i + 1] as f64);
                let prev = if st == 0.0 {
                    x0.mul_scalar(at)?
                } else {
                    let lam = |a: f64, s: f64| a.ln() - s.ln();
                    let h = lam(at, st) - lam(a0, sg0);
                    let base = x.mul_scalar(st / sg0)?;
                    let c = -(at * ((-h).exp() - 1.0));
                    if first_order {
                        base.add(&x0.mul_scalar(c)?)?
                    } else {
                        let s1 = self.sigmas[i - 1] as f64;
                        let (a1, sg1) = alpha_sigma(s1);
                        let r0 = (lam(a0, sg0) - lam(a1, sg1)) / h;
                        let m1 = self.history.last().expect("non-empty");
                        let d1 = x0.subtract(m1)?.mul_scalar(1.0 / r0)?;
                        base.add(&x0.mul_scalar(c)?)?.add(&d1.mul_scalar(0.5 * c)?)?
                    }
                };
                self.history = vec![x0];
                Ok(prev)
            }
        }
        .map_err(Into::into)
    }

    /// PNDM's pseudo linear multistep update (`step_plms`): the second call
    /// averages with the first from the same sample; later ones use Adams-Bashforth
    /// weights over the last up-to-four model outputs.
    fn step_plms(&mut self, out: &Array, i: usize, x: &Array) -> engine_mlx::Result<Array> {
        let ratio = (self.cfg.num_train_timesteps / self.steps) as i64;
        let mut t = self.timesteps[i] as i64;
        let mut prev = t - ratio;
        if self.counter != 1 {
            if self.history.len() > 3 {
                self.history.remove(0);
            }
            self.history.push(out.clone());
        } else {
            prev = t;
            t += ratio;
        }
        let e = &self.history;
        let k = e.len();
        let lin = |ws: &[f64], div: f64| -> engine_mlx::Result<Array> {
            let mut acc = e[k - 1].mul_scalar(ws[0] / div)?;
            for (j, w) in ws.iter().enumerate().skip(1) {
                acc = acc.add(&e[k - 1 - j].mul_scalar(w / div)?)?;
            }
            Ok(acc)
        };
        let mut sample = x.clone();
        let m = match (k, self.counter) {
            (1, 0) => {
                self.cur_sample = Some(x.clone());
                out.clone()
            }
            (1, 1) => {
                sample = self.cur_sample.take().unwrap_or_else(|| x.clone());
                out.add(&e[0])?.mul_scalar(0.5)?
            }
            (2, _) => lin(&[3.0, -1.0], 2.0)?,
            (3, _) => lin(&[23.0, -16.0, 5.0], 12.0)?,
            _ => lin(&[55.0, -59.0, 37.0, -9.0], 24.0)?,
        };
        self.counter += 1;
        let at = self.acp[t as usize] as f64;
        let ap = match prev {
            p if p >= 0 => self.acp[p as usize] as f64,
            _ if self.cfg.set_alpha_to_one.unwrap_or(false) => 1.0,
            _ => self.acp[0] as f64,
        };
        let (bt, bp) = (1.0 - at, 1.0 - ap);
        let m = if self.cfg.prediction_type == "v_prediction" {
            m.mul_scalar(at.sqrt())?.add(&sample.mul_scalar(bt.sqrt())?)?
        } else {
            m
        };
        let denom = at * bp.sqrt() + (at * bt * ap).sqrt();
        sample
            .mul_scalar((ap / at).sqrt())?
            .subtract(&m.mul_scalar((ap - at) / denom)?)
    }
}

/// (alpha_t, sigma_t) of a sigma (variance-preserving form).
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}
