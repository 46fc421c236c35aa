//! What a caller asks for: model configuration and generation parameters.

use crate::error::{EngineError, Result};
use crate::{FeatureFlag, ModelType};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A local folder (config.json + safetensors + tokenizer files).
    Directory(PathBuf),
    /// A local `.gguf` file.
    GgufFile(PathBuf),
    /// A Hugging Face repository id (`org/name`).
    HuggingFace(String),
    /// An id of the built-in registry.
    Registry(String),
}

/// Quantization of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantization {
    /// Bits per weight.
    pub bits: u8,
    /// Weights per scale/bias group.
    pub group_size: u32,
}

/// Describes a loaded (or to-be-loaded) model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfiguration {
    /// Short id (folder or file name, registry id or repo id).
    pub id: String,
    /// Where it was loaded from.
    pub source: ModelSource,
    /// Hub revision, when it came from a hub.
    pub revision: Option<String>,
    /// The modality.
    pub model_type: ModelType,
    /// Architecture name (`llama`, `qwen2`, ...).
    pub architecture: String,
    /// Weight quantization, if any.
    pub quantization: Option<Quantization>,
    /// Maximum context in tokens.
    pub context_length: usize,
    /// Defaults the model ships (generation_config.json).
    pub default_params: GenerateParams,
    /// What the model can do.
    pub capabilities: Vec<FeatureFlag>,
}

/// Sampling and stopping parameters of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateParams {
    /// Most new tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens below `min_p` × the top probability (0 = off).
    pub min_p: f32,
    /// Penalty for tokens seen recently (1.0 = off).
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repetition_context_size: usize,
    /// Seed for reproducible sampling (`None`: from the clock).
    pub seed: Option<u64>,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            temperature: 0.7,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_context_size: 20,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl GenerateParams {
    /// Greedy decoding of up to `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateParams {
            max_tokens,
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks ranges, naming the parameter and its valid range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidParameter(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature {} must be ≥ 0 (0 is greedy)", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad(format!("min_p {} must be in [0, 1)", self.min_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty {} must be > 0 (1.0 is off)",
                self.repetition_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_parameter() {
        assert!(GenerateParams::default().validate().is_ok());
        let e = GenerateParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("temperature"));
        let e = GenerateParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("top_p"));
        let e = GenerateParams {
            stop: vec![String::new()],
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("stop"));
        let p: GenerateParams = serde_json::from_str(r#"{"temperature":0.0}"#).unwrap();
        assert_eq!(p.max_tokens, 256);
    }
}
