//! Shared vocabulary of MLXEngine: model types, capabilities, configuration,
//! generation parameters, errors and the traits each modality implements.

pub mod types;

pub use types::{FeatureFlag, ModelType};
