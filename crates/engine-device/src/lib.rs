//! What this machine can run, and which model variant runs best on it.
//!
//! - [`DeviceReport::detect`]: backend, device, memory, CPU, BLAS, OS and MLX version, plus the
//!   [`Problem`]s `mlxengine doctor` reports with their fixes.
//! - [`MemoryBudget`] and [`parse_size`]: how much memory a model may take.
//! - [`Registry::builtin`]: the curated catalogue embedded from `registry.toml`, with
//!   [`Registry::search`].
//! - [`estimate_memory`] / [`estimate_for_config`]: weights + KV cache + activations.
//! - [`recommend`] and [`select_variant`]: the variants that fit, best first, and why.
#![warn(missing_docs)]

mod budget;
mod device;
mod error;
mod estimate;
mod recommend;
mod registry;

pub use budget::{format_size, parse_size, MemoryBudget};
pub use device::{DeviceReport, Problem, Severity};
pub use error::{DeviceError, NotFit, Result};
pub use estimate::{
    estimate_for_arch, estimate_for_config, estimate_memory, estimate_with, weights_in_memory, EstimateOptions,
    MemoryEstimate, RankSplit, SplitKind, KV_STEP, PREFILL_CHUNK,
};
pub use recommend::{
    default_context, recommend, select_variant, ComputePath, Purpose, RecommendReport, Recommendation, Selection,
};
pub use registry::{
    ArchConfig, DiffusionConfig, GenerationDefaults, ModelEntry, Query, Registry, SearchHit, Variant, VisionConfig,
    WeightFormat, BUILTIN_REGISTRY_TOML,
};
