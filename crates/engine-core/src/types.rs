//! Small enums every crate speaks: what kind of model, what it can do.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The modality a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    /// Text generation (causal language model).
    Llm,
    /// Vision-language model: images plus text in, text out.
    Vlm,
    /// Text encoder producing embedding vectors.
    Embedding,
    /// Image generation by diffusion.
    Diffusion,
}

impl ModelType {
    /// All model types, in display order.
    pub const ALL: [ModelType; 4] = [Self::Llm, Self::Vlm, Self::Embedding, Self::Diffusion];

    /// The lowercase name used in files, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llm => "llm",
            Self::Vlm => "vlm",
            Self::Embedding => "embedding",
            Self::Diffusion => "diffusion",
        }
    }
}

impl fmt::Display for ModelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a model type name that is not one of `llm`, `vlm`, `embedding`, `diffusion`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model type `{0}`: use one of llm, vlm, embedding (or embed), diffusion")]
pub struct UnknownModelType(pub String);

impl FromStr for ModelType {
    type Err = UnknownModelType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "llm" | "text" => Ok(Self::Llm),
            "vlm" | "vision" => Ok(Self::Vlm),
            "embedding" | "embed" | "embeddings" => Ok(Self::Embedding),
            "diffusion" | "image" => Ok(Self::Diffusion),
            _ => Err(UnknownModelType(s.to_string())),
        }
    }
}

/// A capability a loaded model reports; requests are checked against these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureFlag {
    /// Weights are stored quantized (MLX affine or GGUF block formats).
    Quantization,
    /// LoRA adapters can be applied.
    Lora,
    /// Accepts images as input.
    Vision,
    /// Tokens can be streamed as they are produced.
    Streaming,
    /// Several prompts can be generated in one batch.
    Batch,
    /// The KV cache of a chat can be kept between turns.
    PromptCache,
    /// A tokenizer other than the checkpoint's can be supplied.
    CustomTokenizer,
    /// Has a chat template and can run multi-turn chats.
    Chat,
    /// Tool/function calling in the chat template.
    ToolUse,
    /// Produces embedding vectors.
    Embeddings,
    /// Generates images.
    ImageGeneration,
}
