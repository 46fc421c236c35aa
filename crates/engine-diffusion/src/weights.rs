//! Finding and loading a component's safetensors (full precision or the
//! `fp16` variant), with the fix-ups every diffusers checkpoint needs.

use crate::error::{DiffusionError, Result};
use engine_mlx::{Array, Dtype, WeightMap};
use std::path::{Path, PathBuf};

/// The weights file of a component folder: `{stem}.safetensors`, else
/// `{stem}.fp16.safetensors` (what diffusers' `variant="fp16"` writes).
pub(crate) fn weights_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")];
    for c in &candidates {
        let p = dir.join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DiffusionError::MissingFile {
        path: dir.join(&candidates[0]),
        what: format!(
            "the weights ({} or {}; .bin checkpoints are not read: convert them to safetensors)",
            candidates[0], candidates[1]
        ),
    })
}

/// Casts floats to `dtype` and turns PyTorch conv kernels (O, I, kh, kw) into
/// MLX's (O, kh, kw, I): every 4-D tensor of a diffusers UNet/VAE is one. The
/// kernels are copied into that layout (on first use): a transposed view made
/// every conv copy its weight again (3% of a CPU image).
pub(crate) fn prepare(tensors: impl Iterator<Item = (String, Array)>, dtype: Dtype, origin: &str) -> Result<WeightMap> {
    let mut out = Vec::new();
    for (name, a) in tensors {
        let a = if a.ndim() == 4 {
            a.transpose(&[0, 2, 3, 1])?.contiguous()?
        } else {
            a
        };
        let a = if a.dtype().is_float() && a.dtype() != dtype {
            a.astype(dtype)?
        } else {
            a
        };
        out.push((name, a));
    }
    Ok(WeightMap::from_arrays(out, origin))
}

/// Loads a component folder's weights as `dtype` (see [`prepare`]).
pub(crate) fn load_component(dir: &Path, stem: &str, dtype: Dtype) -> Result<WeightMap> {
    let file = weights_file(dir, stem)?;
    let raw = WeightMap::load_safetensors(&file)?;
    let tensors = raw.iter().map(|(n, a)| (n.to_string(), a.clone()));
    prepare(tensors, dtype, &file.display().to_string())
}
