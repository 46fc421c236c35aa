//! Random numbers: explicit keys (reproducible) or MLX's global seed.

use crate::array::{opt_list, unlist, wrap};
use crate::error::{Context, Result};
use crate::{ffi, Array, Dtype};

fn dims(shape: &[usize]) -> Vec<i32> {
    shape.iter().map(|&d| d as i32).collect()
}

/// A PRNG key derived from `seed`.
pub fn key(seed: u64) -> Result<Array> {
    wrap(ffi::random_key(seed), "random.key")
}

/// Seeds MLX's global generator (used when no key is passed).
pub fn seed(seed: u64) {
    ffi::random_seed(seed)
}

/// Splits a key into `num` independent keys.
pub fn split(key: &Array, num: i32) -> Result<Vec<Array>> {
    unlist(ffi::random_split(&key.inner, num).op("random.split")?, "random.split")
}

/// Normal samples with mean `loc` and standard deviation `scale`.
pub fn normal(shape: &[usize], dtype: Dtype, loc: f32, scale: f32, key: Option<&Array>) -> Result<Array> {
    wrap(
        ffi::random_normal(&dims(shape), dtype as u8, loc, scale, &opt_list(key)),
        "random.normal",
    )
}

/// Uniform samples in `[low, high)`.
pub fn uniform(shape: &[usize], dtype: Dtype, low: f32, high: f32, key: Option<&Array>) -> Result<Array> {
    wrap(
        ffi::random_uniform(&dims(shape), dtype as u8, low, high, &opt_list(key)),
        "random.uniform",
    )
}

/// Samples indices from unnormalised log-probabilities along `axis`.
pub fn categorical(logits: &Array, axis: i32, key: Option<&Array>) -> Result<Array> {
    wrap(
        ffi::random_categorical(&logits.inner, axis, &opt_list(key)),
        "random.categorical",
    )
}
