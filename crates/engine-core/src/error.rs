//! The engine's error type: every message names the problem and the fix.

use std::path::PathBuf;

/// Errors shared by every modality.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model files could not be found or read.
    #[error("cannot load model from {path}: {reason}")]
    ModelLoad {
        /// What was being loaded.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The checkpoint's architecture is not implemented.
    #[error("unsupported architecture `{0}`: MLXEngine runs llama, mistral, qwen2, qwen3, phi3, gemma2 and gemma3 text models; pick one of those or open an issue")]
    UnsupportedArchitecture(String),
    /// A configuration file is missing a field or has a bad value.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A request parameter is out of range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The prompt does not fit the model's context.
    #[error("the prompt has {prompt_tokens} tokens but the model's context is {context_length}; shorten the prompt or start a new chat")]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The model's maximum context.
        context_length: usize,
    },
    /// The model does not support a requested feature.
    #[error("this model does not support {0:?}; check `features()` before asking for it")]
    Unsupported(crate::FeatureFlag),
    /// Tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Chat template failure.
    #[error(transparent)]
    ChatTemplate(#[from] crate::chat_template::ChatTemplateError),
    /// GGUF header failure.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// An image could not be read, decoded or used.
    #[error("{0}")]
    Image(String),
    /// The prompt's image placeholders and its images do not match.
    #[error("the prompt has {placeholders} image placeholder(s) but {images} image(s) were given; the chat template must write one placeholder per attached image")]
    ImageCount {
        /// Placeholders the rendered prompt holds.
        placeholders: usize,
        /// Images attached to the messages.
        images: usize,
    },
    /// A progress callback asked to stop (an image generation's step callback
    /// returned `false`).
    #[error("cancelled at step {step} of {steps}")]
    Cancelled {
        /// The step at which the callback asked to stop (1-based).
        step: usize,
        /// Steps planned.
        steps: usize,
    },
    /// Failure in the compute backend (MLX).
    #[error("backend error: {0}")]
    Backend(String),
    /// I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result alias for engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
