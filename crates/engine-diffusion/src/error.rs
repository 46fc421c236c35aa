//! The error type of the diffusion crate.

use std::path::PathBuf;

/// Errors loading a diffusion pipeline or generating images.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// The model path is not a diffusers folder.
    #[error(
        "{path} is not a diffusers pipeline folder (no model_index.json); point at a folder holding \
         model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (a Hugging Face diffusers download)"
    )]
    NotAPipeline {
        /// The path given.
        path: PathBuf,
    },
    /// A component folder or file the pipeline needs is missing.
    #[error("{path} is missing: {what}; the pipeline folder is incomplete: download the repository's {what} again")]
    MissingFile {
        /// The missing path.
        path: PathBuf,
        /// What it holds.
        what: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON config is malformed, lacks a field or uses an option this crate does not implement.
    #[error("{path}: {reason}")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A request parameter is out of range.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The tokenizer failed.
    #[error(
        "tokenizer {path}: {reason}; the tokenizer folder's vocab.json / merges.txt are damaged: download them again"
    )]
    Tokenizer {
        /// The tokenizer folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Generation was cancelled by the progress callback.
    #[error("generation cancelled at step {step} of {steps}")]
    Cancelled {
        /// The step at which the callback asked to stop (1-based).
        step: usize,
        /// Steps planned.
        steps: usize,
    },
    /// MLX or a weight file failed.
    #[error(transparent)]
    Mlx(#[from] engine_mlx::Error),
}

/// Result alias of the diffusion crate.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

/// Reads and parses a JSON file, naming it in errors.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DiffusionError::MissingFile {
            path: path.to_path_buf(),
            what: what.to_string(),
        },
        _ => DiffusionError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::BadConfig {
        path: path.to_path_buf(),
        reason: format!("{e}; re-download the file"),
    })
}

/// For [`engine_core::ImageGenerator`]: a bad request stays a parameter error and a
/// cancel stays a cancel; load-time errors keep their path; the rest keep their message.
impl From<DiffusionError> for engine_core::EngineError {
    fn from(e: DiffusionError) -> Self {
        use engine_core::EngineError as E;
        match e {
            DiffusionError::InvalidRequest(m) => E::InvalidParameter(m),
            DiffusionError::Cancelled { step, steps } => E::Cancelled { step, steps },
            DiffusionError::NotAPipeline { ref path }
            | DiffusionError::MissingFile { ref path, .. }
            | DiffusionError::Io { ref path, .. }
            | DiffusionError::BadConfig { ref path, .. }
            | DiffusionError::Tokenizer { ref path, .. } => E::ModelLoad {
                path: path.clone(),
                reason: e.to_string(),
            },
            DiffusionError::Mlx(m) => E::Backend(m.to_string()),
        }
    }
}
