//! The error type of the embedding crate.

use std::path::PathBuf;

/// Errors loading an embedding model or encoding text.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model path is not a folder (e.g. a lone `.gguf` or `.safetensors` file).
    #[error(
        "{path} is not a model folder; point at a folder holding config.json, model.safetensors \
         and tokenizer.json (a Hugging Face / sentence-transformers download)"
    )]
    NotAFolder {
        /// The path given.
        path: PathBuf,
    },
    /// A file the model needs is missing.
    #[error("{path} is missing; the model folder is incomplete: download the model's full repository again")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a required field.
    #[error("{path} is invalid: {reason}; re-download the model files")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model is not a text encoder (e.g. a causal language model).
    #[error(
        "{path} holds a `{model_type}` model ({architectures}), which is not a text encoder; \
         embeddings need an encoder such as sentence-transformers/all-MiniLM-L6-v2 \
         (supported: {supported})"
    )]
    NotAnEncoder {
        /// The model folder.
        path: PathBuf,
        /// `model_type` from config.json.
        model_type: String,
        /// `architectures` from config.json, comma-separated.
        architectures: String,
        /// The supported encoder families.
        supported: &'static str,
    },
    /// An encoder family this crate does not implement.
    #[error(
        "{path} holds a `{model_type}` encoder, which is not supported yet (supported: {supported}); \
         use a model of a supported family"
    )]
    UnsupportedEncoder {
        /// The model folder.
        path: PathBuf,
        /// `model_type` from config.json.
        model_type: String,
        /// The supported encoder families.
        supported: &'static str,
    },
    /// The sentence-transformers pipeline uses a module or option this crate does not implement.
    #[error("{path}: {what} is not supported; use a model whose pipeline is Transformer → Pooling (→ Normalize)")]
    UnsupportedPipeline {
        /// The file that declares it.
        path: PathBuf,
        /// What is unsupported.
        what: String,
    },
    /// An input is longer than the model's maximum and truncation was turned off.
    #[error(
        "input {index} has {tokens} tokens, more than the model's maximum of {max_length}; \
         shorten it, split it, or allow truncation (EmbedOptions::truncate)"
    )]
    TooLong {
        /// Position of the input in the list.
        index: usize,
        /// Its length in tokens, special tokens included.
        tokens: usize,
        /// The model's maximum length in tokens.
        max_length: usize,
    },
    /// Two vectors of different lengths were compared.
    #[error("cannot compare vectors of {left} and {right} dimensions; compare vectors made by the same model")]
    DimensionMismatch {
        /// Length of the first vector.
        left: usize,
        /// Length of the second vector.
        right: usize,
    },
    /// A batch size of zero was requested.
    #[error("batch size must be at least 1")]
    ZeroBatchSize,
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] engine_core::TokenizerError),
    /// MLX or a weight file failed.
    #[error(transparent)]
    Mlx(#[from] engine_mlx::Error),
}

/// Result alias of the embedding crate.
pub type Result<T, E = EmbedError> = std::result::Result<T, E>;
