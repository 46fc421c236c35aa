//! The error type of the binding layer.

use std::path::PathBuf;

/// Errors from MLX or from the binding's own checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// MLX threw a C++ exception; the message is MLX's own.
    #[error("MLX error in {op}: {message}")]
    Mlx {
        /// The operation that failed.
        op: &'static str,
        /// MLX's message (the C++ exception's `what()`).
        message: String,
    },
    /// A weight file could not be read.
    #[error("cannot load {path}: {message}")]
    Load {
        /// The file that failed.
        path: PathBuf,
        /// What went wrong and how to fix it.
        message: String,
    },
    /// A tensor was missing from a weight map.
    #[error("weight `{name}` is missing from {source_desc}; the checkpoint does not match this architecture or is incomplete")]
    MissingWeight {
        /// The checkpoint name of the tensor.
        name: String,
        /// Where it was looked for.
        source_desc: String,
    },
    /// A tensor had the wrong shape.
    #[error("weight `{name}` has shape {actual:?} but the model expects {expected:?}; the config.json does not match the weights")]
    ShapeMismatch {
        /// The checkpoint name of the tensor.
        name: String,
        /// The shape the model expects.
        expected: Vec<i32>,
        /// The shape found in the file.
        actual: Vec<i32>,
    },
    /// A caller passed something the binding refuses before calling MLX.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the binding layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, cxx::Exception> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|e| Error::Mlx {
            op,
            message: e.what().to_string(),
        })
    }
}
