//! Prompt → text conditioning, as diffusers' `encode_prompt` does it: SD 1/2
//! take the last (final-normed) hidden state of one CLIP; SDXL concatenates
//! the penultimate hidden states of two and adds the second's pooled,
//! projected output.

use crate::error::Result;
use crate::request::ImageRequest;
use crate::ImagePipeline;
use engine_mlx::{concatenate, Array};

/// Text conditioning of one request: (n, L, D) each.
pub(crate) struct Conditioning {
    pub pos: Array,
    pub neg: Array,
    /// SDXL: (pooled, negative pooled), (n, P) each.
    pub pooled: Option<(Array, Array)>,
}

impl ImagePipeline {
    /// Hidden states (1, L, D) and pooled output (1, P) of `text`.
    pub(crate) fn encode_text(&self, text: &str, clip_skip: Option<usize>) -> Result<(Array, Option<Array>)> {
        let mut hidden = Vec::with_capacity(self.text.len());
        let mut pooled = None;
        for (tok, enc) in &self.text {
            let ids = tok.encode(text)?;
            let out = enc.forward(&[ids], tok.eos_id())?;
            let hs = &out.hidden_states;
            let h = if self.sdxl {
                // hidden_states[-(clip_skip + 2)], no final norm.
                hs[hs.len().saturating_sub(clip_skip.unwrap_or(0) + 2)].clone()
            } else {
                match clip_skip {
                    None => out.last_hidden_state.clone(),
                    Some(k) => enc.final_norm(&hs[hs.len().saturating_sub(k + 1)])?,
                }
            };
            hidden.push(h);
            if out.text_embeds.is_some() {
                pooled = out.text_embeds;
            }
        }
        let refs: Vec<&Array> = hidden.iter().collect();
        Ok((concatenate(&refs, -1)?, pooled))
    }

    /// The conditioning of `req`, repeated for its `n` images; the negative
    /// half only when guidance uses it (`neg` is then `pos`, unused).
    pub(crate) fn condition(&self, req: &ImageRequest, guided: bool) -> Result<Conditioning> {
        let n = req.n as i32;
        let (pos, pooled) = self.encode_text(&req.prompt, req.clip_skip)?;
        let zeros = req.negative_prompt.is_none() && self.sdxl && self.force_zeros_for_empty_prompt;
        let (neg, neg_pooled) = if !guided {
            (pos.clone(), pooled.clone())
        } else if zeros {
            (
                pos.mul_scalar(0.0)?,
                pooled.as_ref().map(|p| p.mul_scalar(0.0)).transpose()?,
            )
        } else {
            // diffusers applies `clip_skip` to the prompt only, never to the negative prompt.
            self.encode_text(req.negative_prompt.as_deref().unwrap_or(""), None)?
        };
        let rep = |a: &Array| a.repeat(n, 0);
        let pooled = match (pooled, neg_pooled) {
            (Some(p), Some(q)) => Some((rep(&p)?, rep(&q)?)),
            _ => None,
        };
        Ok(Conditioning {
            pos: rep(&pos)?,
            neg: rep(&neg)?,
            pooled,
        })
    }
}
