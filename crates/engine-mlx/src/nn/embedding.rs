use super::{infer_quant, join};
use crate::quant::{dequantize, quantize_checked, quantized_matmul, QuantSpec, Quantized};
use crate::{Array, Dtype, Result, WeightMap};

/// A token embedding table (vocab, dim), dense or quantized. With tied
/// weights it doubles as the output projection ([`Embedding::as_linear`]).
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Dense table.
    Dense(Array),
    /// Quantized table.
    Quantized(Quantized),
}

impl Embedding {
    /// Loads `{prefix}.weight` (+ `.scales`/`.biases` when quantized).
    pub fn load(w: &WeightMap, prefix: &str, vocab: usize, dim: usize) -> Result<Embedding> {
        let wname = join(prefix, "weight");
        if let Some(scales) = w.try_get(&join(prefix, "scales")) {
            let spec = infer_quant(&wname, w.get(&wname)?, scales, dim)?;
            let groups = dim / spec.group_size as usize;
            return Ok(Embedding::Quantized(Quantized {
                weight: w.get_shaped(&wname, &[vocab, dim * spec.bits as usize / 32])?,
                scales: w.get_shaped(&join(prefix, "scales"), &[vocab, groups])?,
                biases: w.get_shaped(&join(prefix, "biases"), &[vocab, groups])?,
                spec,
                int8_kernels: false,
            }));
        }
        Ok(Embedding::Dense(w.get_shaped(&wname, &[vocab, dim])?))
    }

    /// Looks up rows for integer ids of any shape; returns (..., dim).
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match self {
            Embedding::Dense(t) => t.take(ids, 0),
            Embedding::Quantized(q) => {
                let rows = Quantized {
                    weight: q.weight.take(ids, 0)?,
                    scales: q.scales.take(ids, 0)?,
                    biases: q.biases.take(ids, 0)?,
                    spec: q.spec,
                    int8_kernels: false,
                };
                dequantize(&rows)
            }
        }
    }

    /// Uses the table as an output projection: `x @ tableᵀ` → logits.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        match self {
            Embedding::Dense(t) => crate::fast::linear(x, t),
            Embedding::Quantized(q) => quantized_matmul(x, q, true),
        }
    }

    /// The table quantized with MLX's affine `spec` (a quantized one stays as it is).
    pub fn quantized(&self, spec: QuantSpec, name: &str) -> Result<Embedding> {
        Ok(match self {
            Embedding::Dense(t) => Embedding::Quantized(quantize_checked(t, spec, name)?),
            Embedding::Quantized(_) => self.clone(),
        })
    }

    /// A dense copy of `dtype`.
    pub fn dequantized(&self, dtype: Dtype) -> Result<Embedding> {
        Ok(Embedding::Dense(match self {
            Embedding::Dense(t) => t.astype(dtype)?,
            Embedding::Quantized(q) => dequantize(q)?.astype(dtype)?,
        }))
    }

    /// [`Embedding::dequantized`], evaluated now a block of rows at a time:
    /// MLX's CPU dequantize unpacks through word-sized temporaries (a 49152 ×
    /// 576 table peaked ~3.5× its f32 size at once), while blocks written into
    /// one buffer (donated from update to update) peak near the final table.
    pub fn dequantized_now(&self, dtype: Dtype) -> Result<Embedding> {
        let Embedding::Quantized(q) = self else {
            let t = self.dequantized(dtype)?;
            crate::eval(t.arrays())?;
            return Ok(t);
        };
        let (rows, dim) = (q.weight.dim(0), q.scales.dim(1) * q.spec.group_size as usize);
        let block = (rows / 16).max(1);
        let mut table = Array::zeros(&[rows, dim], dtype)?;
        table.eval()?;
        for start in (0..rows).step_by(block) {
            let end = (start + block).min(rows);
            let part = |a: &Array| a.slice_axis(0, start as i32, end as i32);
            let rows_q = Quantized {
                weight: part(&q.weight)?,
                scales: part(&q.scales)?,
                biases: part(&q.biases)?,
                spec: q.spec,
                int8_kernels: false,
            };
            let values = dequantize(&rows_q)?.astype(dtype)?;
            // Reassigning drops the previous handle, so MLX may write in place.
            table = table.slice_update(&values, &[start as i32, 0], &[end as i32, dim as i32], &[1, 1])?;
            table.eval()?;
        }
        Ok(Embedding::Dense(table))
    }

    /// The parameter arrays.
    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            Embedding::Dense(t) => vec![t],
            Embedding::Quantized(q) => vec![&q.weight, &q.scales, &q.biases],
        }
    }
}
