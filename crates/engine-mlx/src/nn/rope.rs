use crate::fast::{self, RopeFreqs};
use crate::{Array, Dtype, Result};

/// Frequency scaling schemes found in checkpoints' `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear {
        /// Divisor of positions.
        factor: f32,
    },
    /// Llama 3.x frequency smoothing (`"llama3"`).
    Llama3 {
        /// Overall factor.
        factor: f32,
        /// Low-frequency factor.
        low_freq_factor: f32,
        /// High-frequency factor.
        high_freq_factor: f32,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
    },
    /// Phi-3's LongRoPE (`"longrope"`, `"su"`): per-pair period factors and
    /// a magnitude correction of the rotated features. As in mlx-lm, the long
    /// factors are used at every length.
    LongRope {
        /// One factor per rotated pair (`long_factor`, dims/2 values).
        factors: Vec<f32>,
        /// Multiplies the rotated features before rotation.
        mscale: f32,
    },
}

/// Rotary position embedding.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Rotated features (usually the head dimension).
    pub dims: i32,
    /// Rotate adjacent pairs (GGUF/Meta layout) rather than halves (HF layout).
    pub traditional: bool,
    base: f32,
    scale: f32,
    freqs: Option<Array>,
    /// Multiplies the rotated features first (LongRoPE); 1 otherwise.
    mscale: f32,
    /// Angular frequencies (dims/2,) float32: 1 / period (the fused decode
    /// attention computes its angles from them).
    inv_freq: Array,
}

impl Rope {
    /// A RoPE with `base` (theta) and a scaling scheme.
    pub fn new(dims: i32, traditional: bool, base: f32, scaling: &RopeScaling) -> Result<Rope> {
        let mut rope = Rope {
            dims,
            traditional,
            base,
            scale: 1.0,
            freqs: None,
            mscale: 1.0,
            inv_freq: Array::scalar(0.0, Dtype::Float32)?,
        };
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => rope.scale = 1.0 / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                let freqs: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        // MLX's rope takes periods (base^(2i/d)) as `freqs`.
                        let f = base.powf(2.0 * i as f32 / dims as f32);
                        let wavelen = 2.0 * std::f32::consts::PI * f;
                        if wavelen > low_wavelen {
                            f * factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            f / ((1.0 - smooth) / factor + smooth)
                        }
                    })
                    .collect();
                rope.freqs = Some(Array::from_slice(&freqs, &[freqs.len()])?);
            }
            RopeScaling::LongRope { factors, mscale } => {
                if factors.len() != (dims / 2) as usize {
                    return Err(crate::Error::Invalid(format!(
                        "longrope has {} factors for {} rotated dimensions; it needs one per pair ({})",
                        factors.len(),
                        dims,
                        dims / 2
                    )));
                }
                let freqs: Vec<f32> = factors
                    .iter()
                    .enumerate()
                    .map(|(i, f)| f * base.powf(2.0 * i as f32 / dims as f32))
                    .collect();
                rope.freqs = Some(Array::from_slice(&freqs, &[freqs.len()])?);
                rope.mscale = *mscale;
            }
        }
        let inv: Vec<f32> = match &rope.freqs {
            Some(periods) => periods.to_vec::<f32>()?.iter().map(|p| 1.0 / p).collect(),
            None => (0..dims / 2)
                .map(|j| (base as f64).powf(-2.0 * j as f64 / dims as f64) as f32)
                .collect(),
        };
        rope.inv_freq = Array::from_slice(&inv, &[inv.len()])?;
        Ok(rope)
    }

    /// Rotates x (B, H, L, D) for positions `offset..offset+L`.
    pub fn forward(&self, x: &Array, offset: usize) -> Result<Array> {
        let x = self.premultiplied(x)?;
        fast::rope(&x, self.dims, self.traditional, self.freqs(), self.scale, offset as i32)
    }

    /// Rotates x (B, H, L, D) with a start position per row: `offsets`
    /// (B,) int32 (a batch of sequences at different lengths).
    pub fn forward_rows(&self, x: &Array, offsets: &Array) -> Result<Array> {
        let x = self.premultiplied(x)?;
        fast::rope_rows(&x, self.dims, self.traditional, self.freqs(), self.scale, offsets)
    }

    fn freqs(&self) -> RopeFreqs<'_> {
        match &self.freqs {
            Some(f) => RopeFreqs::Custom(f),
            None => RopeFreqs::Base(self.base),
        }
    }

    /// x with LongRoPE's magnitude correction applied to the rotated features.
    fn premultiplied(&self, x: &Array) -> Result<Array> {
        if self.mscale == 1.0 {
            return Ok(x.clone());
        }
        let d = x.dim(-1) as i32;
        if self.dims >= d {
            return x.mul_scalar(self.mscale as f64);
        }
        let rotated = x.slice_axis(-1, 0, self.dims)?.mul_scalar(self.mscale as f64)?;
        crate::concatenate(&[&rotated, &x.slice_axis(-1, self.dims, d)?], -1)
    }

    /// This RoPE for [`fast::decode_attention_in_place`]; `None` for LongRoPE (its
    /// magnitude correction is not part of the kernel).
    pub fn decode_spec(&self) -> Option<fast::DecodeRope<'_>> {
        (self.mscale == 1.0).then_some(fast::DecodeRope {
            inv_freq: &self.inv_freq,
            dims: self.dims,
            traditional: self.traditional,
            scale: self.scale,
        })
    }

    /// The custom period table, if any (for tests).
    pub fn custom_freqs(&self) -> Option<&Array> {
        self.freqs.as_ref().filter(|f| f.dtype() == Dtype::Float32)
    }
}
