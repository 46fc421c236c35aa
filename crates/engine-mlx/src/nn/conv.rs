use super::param;
use crate::{fast, Array, Result, WeightMap};

/// 2-D convolution over NHWC input; weight (out, kh, kw, in) in MLX layout.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// Weight (out, kh, kw, in).
    pub weight: Array,
    /// Optional bias (out,).
    pub bias: Option<Array>,
    /// Stride (h, w).
    pub stride: (i32, i32),
    /// Zero padding (h, w).
    pub padding: (i32, i32),
}

impl Conv2d {
    /// Loads `{prefix}.weight` (MLX layout) and `{prefix}.bias`. Checkpoints
    /// in PyTorch layout (out, in, kh, kw) are transposed by the model's sanitize step.
    pub fn load(
        w: &WeightMap,
        prefix: &str,
        (in_ch, out_ch): (usize, usize),
        kernel: usize,
        stride: i32,
        padding: i32,
    ) -> Result<Conv2d> {
        Ok(Conv2d {
            weight: param(w, prefix, "weight", &[out_ch, kernel, kernel, in_ch])?,
            bias: Some(param(w, prefix, "bias", &[out_ch])?),
            stride: (stride, stride),
            padding: (padding, padding),
        })
    }

    /// Applies the convolution (and the bias, fused on the CPU).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        fast::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
    }
}
