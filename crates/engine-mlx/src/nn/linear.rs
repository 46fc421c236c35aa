use super::{infer_quant, join, param};
use crate::quant::{dequantize, quantize_checked, quantized_matmul, FusedWeight, QuantSpec, Quantized};
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
    /// A base layer plus a low-rank update, applied unfused:
    /// `y = base(x) + scale · (x A) B` (mlx-lm's `LoRALinear`).
    Lora {
        /// The layer being adapted (dense or quantized).
        base: Box<Linear>,
        /// Down projection A (in, r).
        a: Array,
        /// Up projection B (r, out).
        b: Array,
        /// The update's scale (mlx-lm's `scale`; PEFT's `lora_alpha / r`).
        scale: f32,
        /// DoRA's per-output gain `m / ‖W + ΔW‖` (out,), constant at
        /// inference: `y = gain · (x Wᵀ + scale · (x A) B) + bias`.
        gain: Option<Array>,
    },
}

/// Which dimension of a layer a rank keeps one share of (tensor parallelism).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardDim {
    /// A share of the outputs (column-parallel: each rank computes some
    /// features of `y`; its bias share with them).
    Outputs,
    /// A share of the inputs (row-parallel: each rank computes a partial
    /// `y` from its share of `x`, to be summed over ranks; the bias stays on
    /// rank 0 only, so the sum adds it once).
    Inputs,
}

/// The dense update a LoRA pair adds to a weight (out, in): `scale · (A B)ᵀ`.
pub fn lora_delta(a: &Array, b: &Array, scale: f32) -> Result<Array> {
    a.matmul(b)?.t()?.mul_scalar(f64::from(scale))
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
                int8_kernels: false,
            };
            return Ok(Linear::Quantized { q, bias: b });
        }
        Ok(Linear::Dense {
            weight: w.get_shaped(&wname, &[out_features, in_features])?,
            bias: b,
        })
    }

    /// Rank `rank`'s share (of `ranks` equal ones) of this layer along `dim`.
    /// A quantized layer whose input share does not fall on its quantization
    /// groups is made dense (in `dense`) first.
    pub fn shard(&self, dim: ShardDim, rank: usize, ranks: usize, dense: Dtype) -> Result<Linear> {
        let (inp, out) = self.dims();
        let total = match dim {
            ShardDim::Outputs => out,
            ShardDim::Inputs => inp,
        };
        if ranks == 0 || !total.is_multiple_of(ranks) || rank >= ranks {
            return Err(crate::Error::Invalid(format!(
                "cannot split a layer of {inp} inputs and {out} outputs into {ranks} equal shares of its {}",
                if dim == ShardDim::Outputs { "outputs" } else { "inputs" }
            )));
        }
        let share = total / ranks;
        // Each share is materialised on its own, so a rank holds the whole of
        // at most one weight at a time while loading and only its share after.
        let part = |a: &Array, axis: i32, per: usize| {
            let start = (rank * per) as i32;
            a.slice_axis(axis, start, start + per as i32)?.detached()
        };
        let bias_share = |b: &Option<Array>| -> Result<Option<Array>> {
            match (b, dim) {
                (Some(b), ShardDim::Outputs) => Ok(Some(part(b, 0, share)?)),
                (Some(b), ShardDim::Inputs) if rank == 0 => Ok(Some(b.clone())),
                _ => Ok(None),
            }
        };
        match self {
            Linear::Dense { weight, bias } => Ok(Linear::Dense {
                weight: match dim {
                    ShardDim::Outputs => part(weight, 0, share)?,
                    ShardDim::Inputs => part(weight, 1, share)?,
                },
                bias: bias_share(bias)?,
            }),
            Linear::Quantized { q, bias } => {
                let (bits, group) = (q.spec.bits as usize, q.spec.group_size as usize);
                let q = match dim {
                    ShardDim::Outputs => Quantized {
                        weight: part(&q.weight, 0, share)?,
                        scales: part(&q.scales, 0, share)?,
                        biases: part(&q.biases, 0, share)?,
                        spec: q.spec,
                        int8_kernels: q.int8_kernels,
                    },
                    ShardDim::Inputs if share.is_multiple_of(group) && (share * bits).is_multiple_of(32) => Quantized {
                        weight: part(&q.weight, 1, share * bits / 32)?,
                        scales: part(&q.scales, 1, share / group)?,
                        biases: part(&q.biases, 1, share / group)?,
                        spec: q.spec,
                        int8_kernels: q.int8_kernels,
                    },
                    ShardDim::Inputs => return self.dequantized(dense)?.shard(dim, rank, ranks, dense),
                };
                Ok(Linear::Quantized {
                    q,
                    bias: bias_share(bias)?,
                })
            }
            Linear::Lora { .. } => Err(crate::Error::Invalid(
                "a layer with a LoRA adapter cannot be split across ranks: fuse the adapter first (`mlxengine convert --adapter`)"
                    .into(),
            )),
        }
    }

    /// Applies the layer to x (..., in).
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let (y, bias) = match self {
            Linear::Dense { weight, bias: Some(b) } => return crate::fast::linear_bias(x, weight, b),
            Linear::Dense { weight, bias } => (crate::fast::linear(x, weight)?, bias),
            Linear::Quantized { q, bias } => (quantized_matmul(x, q, true)?, bias),
            Linear::Lora {
                base,
                a,
                b,
                scale,
                gain,
            } => {
                let z = x
                    .matmul(a)?
                    .matmul(b)?
                    .mul_scalar(f64::from(*scale))?
                    .astype(x.dtype())?;
                let Some(g) = gain else {
                    return base.forward(x)?.add(&z);
                };
                let y = base.unbiased(x)?.add(&z)?.multiply(&g.astype(x.dtype())?)?;
                return match base.bias() {
                    Some(bias) => y.add(bias),
                    None => Ok(y),
                };
            }
        };
        match bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }

    /// [`Linear::forward`] for activations of many rows (image tokens): a
    /// dense layer goes through [`crate::fast::linear_rows`].
    pub fn forward_rows(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Dense { weight, bias } => crate::fast::linear_rows(x, weight, bias.as_ref()),
            _ => self.forward(x),
        }
    }

    /// `x Wᵀ` without the bias (the base of a DoRA layer is never adapted itself).
    fn unbiased(&self, x: &Array) -> Result<Array> {
        match self {
            Linear::Dense { weight, .. } => crate::fast::linear(x, weight),
            Linear::Quantized { q, .. } => quantized_matmul(x, q, true),
            Linear::Lora { .. } => Err(crate::Error::Invalid(
                "a DoRA layer's base must be a plain layer".into(),
            )),
        }
    }

    /// A plain layer's weight and bias, for the fused kernels that read them
    /// directly (`quant::fused_matvec`); `None` for adapted layers.
    pub fn fused_weight(&self) -> Option<(FusedWeight<'_>, Option<&Array>)> {
        match self {
            Linear::Quantized { q, bias } => Some((FusedWeight::Quantized(q), bias.as_ref())),
            Linear::Dense { weight, bias } => Some((FusedWeight::Dense(weight), bias.as_ref())),
            Linear::Lora { .. } => None,
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Array> {
        match self {
            Linear::Dense { bias, .. } | Linear::Quantized { bias, .. } => bias.as_ref(),
            Linear::Lora { base, .. } => base.bias(),
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
            Linear::Lora {
                base,
                a,
                b,
                scale,
                gain,
            } => Linear::Lora {
                base: Box::new(base.dequantized(dtype)?),
                a: a.astype(dtype)?,
                b: b.astype(dtype)?,
                scale: *scale,
                gain: gain.as_ref().map(|g| g.astype(dtype)).transpose()?,
            },
        })
    }

    /// Layers reading the same input, fused into one whose outputs are theirs
    /// laid end to end, with each part rebuilt as a view of the fused arrays
    /// (no second copy of the weights): one int8 kernel call, one rounding
    /// of x, instead of one per part. Only for quantized layers opted in to
    /// the CPU kernels with the same spec (biases on all or none); `None`
    /// otherwise (dense layers: [`Linear::fuse_dense_outputs`]). Evaluates the
    /// fused arrays.
    pub fn fuse_outputs(parts: &mut [&mut Linear]) -> Result<Option<Linear>> {
        let mut qs = Vec::with_capacity(parts.len());
        for p in parts.iter() {
            match &**p {
                Linear::Quantized { q, bias } if q.int8_kernels => qs.push((q, bias)),
                _ => return Ok(None),
            }
        }
        let Some(&(first, first_bias)) = qs.first() else {
            return Ok(None);
        };
        if qs
            .iter()
            .any(|(q, b)| q.spec != first.spec || b.is_some() != first_bias.is_some())
        {
            return Ok(None);
        }
        let cat = |f: &dyn Fn(&Quantized) -> &Array| -> Result<Array> {
            let arrays: Vec<&Array> = qs.iter().map(|(q, _)| f(q)).collect();
            crate::concatenate(&arrays, 0)
        };
        let fused = Quantized {
            weight: cat(&|q| &q.weight)?,
            scales: cat(&|q| &q.scales)?,
            biases: cat(&|q| &q.biases)?,
            spec: first.spec,
            int8_kernels: true,
        };
        let bias = match first_bias {
            Some(_) => {
                let b: Vec<&Array> = qs.iter().filter_map(|(_, b)| b.as_ref()).collect();
                Some(crate::concatenate(&b, 0)?)
            }
            None => None,
        };
        let rows: Vec<usize> = qs.iter().map(|(q, _)| q.weight.dim(0)).collect();
        drop(qs);
        let mut arrays = vec![&fused.weight, &fused.scales, &fused.biases];
        arrays.extend(bias.as_ref());
        crate::eval(arrays)?;
        let mut start = 0;
        for (p, n) in parts.iter_mut().zip(rows) {
            let (a, b) = (start as i32, (start + n) as i32);
            **p = Linear::Quantized {
                q: Quantized {
                    weight: fused.weight.slice_axis(0, a, b)?,
                    scales: fused.scales.slice_axis(0, a, b)?,
                    biases: fused.biases.slice_axis(0, a, b)?,
                    spec: fused.spec,
                    int8_kernels: true,
                },
                bias: bias.as_ref().map(|x| x.slice_axis(0, a, b)).transpose()?,
            };
            start += n;
        }
        // The views must be evaluated so they share the fused buffers.
        let views: Vec<&Array> = parts.iter().flat_map(|p| p.arrays()).collect();
        crate::eval(views)?;
        Ok(Some(Linear::Quantized { q: fused, bias }))
    }

    /// [`Linear::fuse_outputs`] for dense layers of one dtype and input width
    /// (biases on all or none): a GPU decode step's one matvec instead of
    /// several. `None` where any part is not dense or they differ.
    pub fn fuse_dense_outputs(parts: &mut [&mut Linear]) -> Result<Option<Linear>> {
        let mut ws = Vec::with_capacity(parts.len());
        for p in parts.iter() {
            match &**p {
                Linear::Dense { weight, bias } => ws.push((weight, bias)),
                _ => return Ok(None),
            }
        }
        let Some(&(first, first_bias)) = ws.first() else {
            return Ok(None);
        };
        if ws.iter().any(|(w, b)| {
            w.ndim() != 2
                || w.dtype() != first.dtype()
                || w.dim(1) != first.dim(1)
                || b.is_some() != first_bias.is_some()
        }) {
            return Ok(None);
        }
        let weight = crate::concatenate(&ws.iter().map(|(w, _)| *w).collect::<Vec<_>>(), 0)?;
        let bias = match first_bias {
            Some(_) => Some(crate::concatenate(
                &ws.iter().filter_map(|(_, b)| b.as_ref()).collect::<Vec<_>>(),
                0,
            )?),
            None => None,
        };
        let rows: Vec<usize> = ws.iter().map(|(w, _)| w.dim(0)).collect();
        drop(ws);
        crate::eval([&weight].into_iter().chain(bias.as_ref()))?;
        let mut start = 0;
        for (p, n) in parts.iter_mut().zip(rows) {
            let (a, b) = (start as i32, (start + n) as i32);
            **p = Linear::Dense {
                weight: weight.slice_axis(0, a, b)?,
                bias: bias.as_ref().map(|x| x.slice_axis(0, a, b)).transpose()?,
            };
            start += n;
        }
        // The views must be evaluated so they share the fused buffers.
        let views: Vec<&Array> = parts.iter().flat_map(|p| p.arrays()).collect();
        crate::eval(views)?;
        Ok(Some(Linear::Dense { weight, bias }))
    }

    /// The weight of a dense layer without a bias (what `x · wᵀ` multiplies by).
    pub fn unbiased_dense_weight(&self) -> Option<&Array> {
        match self {
            Linear::Dense { weight, bias: None } => Some(weight),
            _ => None,
        }
    }

    /// The form the CPU runs fastest: a quantized weight the CPU's own
    /// kernels take (4, 5 or 8 bits, see [`crate::quant::cpu_kernel_supports`])
    /// stays quantized with float32 scales and biases; everything else
    /// becomes dense `dtype` (as [`Linear::dequantized`]).
    pub fn for_cpu_kernels(&self, dtype: Dtype) -> Result<Linear> {
        Ok(match self {
            Linear::Quantized { q, bias } if crate::quant::cpu_kernel_supports(q.spec) => Linear::Quantized {
                q: q.for_cpu_kernels()?,
                bias: bias.as_ref().map(|b| b.astype(dtype)).transpose()?,
            },
            Linear::Lora {
                base,
                a,
                b,
                scale,
                gain,
            } => Linear::Lora {
                base: Box::new(base.for_cpu_kernels(dtype)?),
                a: a.astype(dtype)?,
                b: b.astype(dtype)?,
                scale: *scale,
                gain: gain.as_ref().map(|g| g.astype(dtype)).transpose()?,
            },
            _ => self.dequantized(dtype)?,
        })
    }

    /// Wraps this layer with a low-rank update (A: (in, r), B: (r, out)); an
    /// already adapted layer gets the new update on top.
    pub fn with_lora(self, a: Array, b: Array, scale: f32) -> Linear {
        Linear::Lora {
            base: Box::new(self),
            a,
            b,
            scale,
            gain: None,
        }
    }

    /// Wraps a plain layer with a DoRA update: `m` is the learned magnitude
    /// (out,); the gain `m / ‖W + ΔW‖` (row norms) is computed once here.
    pub fn with_dora(self, a: Array, b: Array, scale: f32, m: &Array) -> Result<Linear> {
        if matches!(self, Linear::Lora { .. }) {
            return Err(crate::Error::Invalid(
                "DoRA on a layer that already has an adapter is not supported".into(),
            ));
        }
        let w = match self.dequantized(Dtype::Float32)? {
            Linear::Dense { weight, .. } => weight,
            _ => unreachable!("dequantized() of a plain layer is dense"),
        };
        let adapted = w.add(&lora_delta(&a, &b, scale)?)?;
        let norm = adapted.square()?.sum(&[1], false)?.sqrt()?;
        let gain = m.astype(Dtype::Float32)?.divide(&norm)?;
        Ok(Linear::Lora {
            base: Box::new(self),
            a,
            b,
            scale,
            gain: Some(gain),
        })
    }

    /// Folds low-rank updates into the weight: `W + scale · (A B)ᵀ`. A
    /// quantized base is dequantized, updated and re-quantized with its own
    /// settings (so the fused layer carries that rounding once more).
    pub fn fused(&self) -> Result<Linear> {
        let Linear::Lora {
            base,
            a,
            b,
            scale,
            gain,
        } = self
        else {
            return Ok(self.clone());
        };
        let delta = lora_delta(a, b, *scale)?;
        // W + ΔW, times DoRA's gain per output row.
        let update = |w: &Array| -> Result<Array> {
            let w2 = w.add(&delta.astype(w.dtype())?)?;
            match gain {
                Some(g) => w2.multiply(&g.expand_dims(1)?.astype(w.dtype())?),
                None => Ok(w2),
            }
        };
        Ok(match base.fused()? {
            Linear::Dense { weight, bias } => Linear::Dense {
                weight: update(&weight)?,
                bias,
            },
            Linear::Quantized { q, bias } => {
                let w = update(&dequantize(&q)?)?;
                Linear::Quantized {
                    q: crate::quant::quantize(&w, q.spec)?,
                    bias,
                }
            }
            Linear::Lora { .. } => unreachable!("fused() returns a plain layer"),
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
            Linear::Lora {
                base,
                a,
                b,
                scale,
                gain,
            } => Linear::Lora {
                base: Box::new(base.quantized(spec, name)?),
                a: a.clone(),
                b: b.clone(),
                scale: *scale,
                gain: gain.clone(),
            },
        })
    }

    /// Whether the (base) weight is quantized.
    pub fn is_quantized(&self) -> bool {
        match self {
            Linear::Lora { base, .. } => base.is_quantized(),
            _ => matches!(self, Linear::Quantized { .. }),
        }
    }

    /// The (base) weight's quantization settings, if quantized.
    pub fn quant_spec(&self) -> Option<QuantSpec> {
        match self {
            Linear::Dense { .. } => None,
            Linear::Quantized { q, .. } => Some(q.spec),
            Linear::Lora { base, .. } => base.quant_spec(),
        }
    }

    /// `(in, out)` of the layer.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Linear::Dense { weight, .. } => (weight.dim(1), weight.dim(0)),
            Linear::Quantized { q, .. } => (q.scales.dim(-1) * q.spec.group_size as usize, q.weight.dim(0)),
            Linear::Lora { base, .. } => base.dims(),
        }
    }

    /// The parameter arrays (for evaluation and memory accounting).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = match self {
            Linear::Dense { weight, .. } => vec![weight],
            Linear::Quantized { q, .. } => vec![&q.weight, &q.scales, &q.biases],
            Linear::Lora { base, a, b, gain, .. } => {
                let mut v = base.arrays();
                v.extend([a, b]);
                v.extend(gain);
                return v;
            }
        };
        if let Linear::Dense { bias: Some(b), .. } | Linear::Quantized { bias: Some(b), .. } = self {
            v.push(b);
        }
        v
    }
}
