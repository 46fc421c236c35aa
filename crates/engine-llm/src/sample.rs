//! Token sampling on the device, so the next step's graph can be built
//! before the current token is read back (the decode loop never waits on
//! the host between steps).

use engine_core::GenerateParams;
use engine_mlx::{random, where_, Array, Dtype, Result};

/// Samples one token per row from last-position logits.
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    repetition_penalty: f32,
    repetition_context: usize,
    key: Option<Array>,
}

impl Sampler {
    /// A sampler for `params` (a seed makes it reproducible).
    pub fn new(params: &GenerateParams) -> Result<Sampler> {
        let key = if params.temperature > 0.0 {
            let seed = params.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            Some(random::key(seed)?)
        } else {
            None
        };
        Ok(Sampler {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            repetition_context: params.repetition_context_size,
            key,
        })
    }

    /// Picks tokens from logits (B, V); `history` holds each row's recent
    /// tokens for the repetition penalty. Returns (B,) uint32, lazily.
    pub fn sample(&mut self, logits: &Array, history: &[&[u32]]) -> Result<Array> {
        let mut logits = logits.astype(Dtype::Float32)?;
        if self.repetition_penalty != 1.0 {
            logits = self.penalize(&logits, history)?;
        }
        let Some(key) = self.key.take() else {
            return logits.argmax(-1, false)?.astype(Dtype::Uint32);
        };
        let neg_inf = Array::scalar(f32::NEG_INFINITY as f64, Dtype::Float32)?;
        let logprobs = logits.subtract(&logits.logsumexp(&[-1], true)?)?;
        let mut filtered = logprobs.clone();
        if self.top_k > 0 && self.top_k < logits.dim(-1) {
            // The k-th largest value is the threshold.
            let kth = logprobs
                .negative()?
                .sort(-1)?
                .slice_axis(-1, self.top_k as i32 - 1, self.top_k as i32)?
                .negative()?;
            filtered = where_(&logprobs.less(&kth)?, &neg_inf, &filtered)?;
        }
        if self.min_p > 0.0 {
            let top = logprobs.max(&[-1], true)?;
            let floor = top.add_scalar((self.min_p as f64).ln())?;
            filtered = where_(&logprobs.less(&floor)?, &neg_inf, &filtered)?;
        }
        if self.top_p < 1.0 {
            // Smallest set of top tokens whose mass reaches top_p: sort
            // ascending, keep where the mass above (inclusive) exceeds 1-p.
            let sorted = logprobs.sort(-1)?;
            let cum = sorted.exp()?.cumsum(-1, false, true)?;
            let keep = cum.greater(&Array::scalar(1.0 - self.top_p as f64, Dtype::Float32)?)?;
            let big = Array::scalar(f32::INFINITY as f64, Dtype::Float32)?;
            let threshold = where_(&keep, &sorted, &big)?.min(&[-1], true)?;
            filtered = where_(&logprobs.less(&threshold)?, &neg_inf, &filtered)?;
        }
        let mut keys = random::split(&key, 2)?;
        let sub = keys.pop().expect("two keys");
        self.key = keys.pop();
        let scaled = filtered.mul_scalar(1.0 / self.temperature as f64)?;
        random::categorical(&scaled, -1, Some(&sub))?.astype(Dtype::Uint32)
    }

    fn penalize(&self, logits: &Array, history: &[&[u32]]) -> Result<Array> {
        let rows = history.len();
        let n = history
            .iter()
            .map(|h| h.len().min(self.repetition_context))
            .max()
            .unwrap_or(0);
        if n == 0 {
            return Ok(logits.clone());
        }
        // Rows with shorter history repeat their last token (penalising twice is a no-op).
        let mut idx = Vec::with_capacity(rows * n);
        for h in history {
            let recent = &h[h.len().saturating_sub(self.repetition_context)..];
            for i in 0..n {
                idx.push(*recent.get(i).or(recent.last()).unwrap_or(&0));
            }
        }
        let idx = Array::from_slice(&idx, &[rows, n])?;
        let picked = logits.take_along_axis(&idx, -1)?;
        let p = self.repetition_penalty as f64;
        let zero = Array::scalar(0.0, Dtype::Float32)?;
        let penalized = where_(
            &picked.less(&zero)?,
            &picked.mul_scalar(p)?,
            &picked.mul_scalar(1.0 / p)?,
        )?;
        logits.put_along_axis(&idx, &penalized, -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(v: &[f32]) -> Array {
        Array::from_slice(v, &[1, v.len()]).unwrap()
    }

    #[test]
    fn greedy_top_k_top_p_min_p_and_penalty() {
        let l = logits(&[1.0, 5.0, 3.0, 4.9]);
        let mut greedy = Sampler::new(&GenerateParams::greedy(1)).unwrap();
        assert_eq!(greedy.sample(&l, &[&[]]).unwrap().to_vec::<u32>().unwrap(), vec![1]);
        // The penalty on token 1 (5.0/1.5 ≈ 3.3) hands the argmax to token 3.
        let mut pen = Sampler::new(&GenerateParams {
            repetition_penalty: 1.5,
            ..GenerateParams::greedy(1)
        })
        .unwrap();
        assert_eq!(pen.sample(&l, &[&[1]]).unwrap().to_vec::<u32>().unwrap(), vec![3]);
        // top_k = 1 at high temperature is still the argmax.
        let p = GenerateParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(&p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&l, &[&[]]).unwrap().to_vec::<u32>().unwrap(), vec![1]);
        }
        // top_p small keeps only the most likely token.
        let p = GenerateParams {
            temperature: 5.0,
            top_p: 0.05,
            seed: Some(2),
            ..Default::default()
        };
        let mut s = Sampler::new(&p).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&l, &[&[]]).unwrap().to_vec::<u32>().unwrap(), vec![1]);
        }
        // min_p 0.5 keeps tokens 1 and 3 (e^-0.1 ≈ 0.9 of the top), never 0 or 2.
        let p = GenerateParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        };
        let mut s = Sampler::new(&p).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            seen.insert(s.sample(&l, &[&[]]).unwrap().to_vec::<u32>().unwrap()[0]);
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![1, 3]);
        // Same seed, same draws.
        let p = GenerateParams {
            temperature: 1.0,
            seed: Some(9),
            ..Default::default()
        };
        let draw = |mut s: Sampler| {
            (0..10)
                .map(|_| s.sample(&l, &[&[]]).unwrap().to_vec::<u32>().unwrap()[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(Sampler::new(&p).unwrap()), draw(Sampler::new(&p).unwrap()));
    }
}
