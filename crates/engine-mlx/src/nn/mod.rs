//! Neural-network layers built on the safe API. Each layer loads its
//! parameters by checkpoint name from a [`WeightMap`](crate::WeightMap),
//! checking shapes, so model code never touches files.

mod conv;
mod embedding;
mod linear;
mod norm;
mod rope;

pub use conv::Conv2d;
pub use embedding::Embedding;
pub use linear::{lora_delta, Linear, ShardDim};
pub use norm::{GroupNorm, LayerNorm, RmsNorm};
pub use rope::{Rope, RopeScaling};

use crate::quant::QuantSpec;
use crate::{Array, Error, Result, WeightMap};

/// Joins a module prefix and a parameter name (`"model.layers.0" + "weight"`).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Infers (group size, bits) of a quantized matrix from the packed weight
/// and scales shapes, given the unpacked input width.
pub(crate) fn infer_quant(name: &str, packed: &Array, scales: &Array, in_features: usize) -> Result<QuantSpec> {
    let (pw, sw) = (packed.dim(-1), scales.dim(-1));
    if pw == 0 || sw == 0 || !in_features.is_multiple_of(sw) || !(pw * 32).is_multiple_of(in_features) {
        return Err(Error::Invalid(format!(
            "quantized weight `{name}` has packed width {pw} and {sw} scale groups, which do not fit {in_features} inputs; the checkpoint does not match its config"
        )));
    }
    QuantSpec {
        group_size: (in_features / sw) as i32,
        bits: (pw * 32 / in_features) as i32,
    }
    .validate()
}

/// Loads a tensor that must have `shape`.
pub(crate) fn param(w: &WeightMap, prefix: &str, name: &str, shape: &[usize]) -> Result<Array> {
    w.get_shaped(&join(prefix, name), shape)
}
