use super::{infer_quant, join, param};
use crate::quant::{dequantize, quantize_checked, quantized_matmul, QuantSpec, Quantized};
use crate::{Array, Dtype, Result, WeightMap};

/// `y = x Wᵀ + b`, dense or group-quantized (MLX affine, also what GGUF
/// Q4_0/Q4_1/Q8_0 load as).
#[derive(Debug, Clone)]
pub enum Linear {
    /// Floating-point weight (out, in).
    Dense {
        /// Weight (out, in).
        weight: Array,
        /// Optional bias (out,).
        bias: Option<Array>,
    },
    /// Quantized weight.
    Quantized {
        /// Packed weight, scales, biases.
        q: Quantized,
        /// Optional bias (out,).
        bias: Option<Array>,
    },
}

impl Linear {
    /// Loads `{prefix}.weight` (and `.scales`/`.biases` when quantized, and
    /// `.bias` when `bias`), checking shapes against (out, in).
    pub fn load(w: &WeightMap, prefix: &str, in_features: usize, out_features: usize, bias: bool) -> Result<Linear> {
        let b = if bias {
            Some(param(w, prefix, "bias", &[out_features])?)
        } else {
            None
        };
        let wname = join(prefix, "weight");
        if let Some(scales) = w.try_get(&join(prefix, "scales")) {
            let packed = w.get(&wname)?;
            let spec = infer_quant(&wname, packed, scales, in_features)?;
            let q = Quantized {
                weight: w.get_shaped(&wname, &[out_features, in_features * spec.bits as usize / 32])?,
                scales: w.get_shaped(
                    &join(prefix, "scales"),
                    &[out_features, in_features / spec.group_size as usize],
                )?,
                biases: w.get_shaped(
                    &join(prefix, "biases"),
                    &[out_features, in_features / spec.group_size as usize],
                )?,
                spec,
            };
            return Ok(Linear::Quantized { q, bias: b });
        }
        Ok(Linear::Dense {
            weight: w.get_shaped(&wname, &[out_features, in_features])?,
            bias: b,
        })
    }

    /// Applies the layer to x (..., in).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (y, bias) = match self {
            Linear::Dense { weight, bias } => (crate::fast::linear(x, weight)?, bias),
            Linear::Quantized { q, bias } => (quantized_matmul(x, q, true)?, bias),
        };
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// Converts a quantized layer to a dense one of `dtype` (e.g. f32 on the
    /// CPU, where f32 + BLAS beats MLX's quantized kernels); dense layers are cast.
    pub fn dequantized(&self, dtype: Dtype) -> Result<Linear> {
        Ok(match self {
            Linear::Dense { weight, bias } => Linear::Dense {
                weight: weight.astype(dtype)?,
                bias: bias.as_ref().map(|b| b.astype(dtype)).transpose()?,
            },
            Linear::Quantized { q, bias } => Linear::Dense {
                weight: dequantize(q)?.astype(dtype)?,
                bias: bias.as_ref().map(|b| b.astype(dtype)).transpose()?,
            },
        })
    }

    /// Quantizes a dense layer with MLX's affine `spec` (as `mlx_lm.convert -q`);
    /// a quantized layer stays as it is. `name` is the layer's checkpoint name,
    /// for the error when the group size does not divide the input width.
    pub fn quantized(&self, spec: QuantSpec, name: &str) -> Result<Linear> {
        Ok(match self {
            Linear::Dense { weight, bias } => Linear::Quantized {
                q: quantize_checked(weight, spec, name)?,
                bias: bias.clone(),
            },
            Linear::Quantized { .. } => self.clone(),
        })
    }

    /// Whether the weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Linear::Quantized { .. })
    }

    /// The parameter arrays (for evaluation and memory accounting).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = match self {
            Linear::Dense { weight, .. } => vec![weight],
            Linear::Quantized { q, .. } => vec![&q.weight, &q.scales, &q.biases],
        };
        if let Linear::Dense { bias: Some(b), .. } | Linear::Quantized { bias: Some(b), .. } = self {
            v.push(b);
        }
        v
    }
}
