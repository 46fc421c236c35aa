//! Errors of device detection, budgets, the registry and variant selection.

use crate::budget::format_size;
use crate::estimate::MemoryEstimate;
use engine_core::ModelType;
use std::fmt;

/// Everything that can go wrong in this crate; each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A memory size string that could not be parsed.
    #[error("invalid memory size `{input}`: {why}; write a number with a unit, e.g. 8GB, 512MiB, 1.5G or 2048MB")]
    InvalidSize {
        /// What the user wrote.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// A budget fraction outside (0, 1].
    #[error("invalid memory fraction {0}: use a number greater than 0 and at most 1 (e.g. 0.8)")]
    InvalidFraction(f64),
    /// The embedded or a user-supplied registry file is malformed.
    #[error(
        "model registry is invalid: {0}; fix the registry file (see crates/engine-device/registry.toml for the format)"
    )]
    InvalidRegistry(String),
    /// A model id that the registry does not list.
    #[error("unknown model `{id}` in the registry{hint}; run `mlxengine search` to list the known models")]
    UnknownModel {
        /// The id asked for.
        id: String,
        /// ` (did you mean ...?)` or empty.
        hint: String,
    },
    /// A variant name the entry does not have.
    #[error("model `{id}` has no variant `{variant}`; available variants: {available}")]
    UnknownVariant {
        /// The model id.
        id: String,
        /// The variant asked for.
        variant: String,
        /// Comma-separated list of the entry's variants.
        available: String,
    },
    /// Nothing of the model fits the memory budget (boxed: it carries the numbers).
    #[error("{0}")]
    DoesNotFit(Box<NotFit>),
    /// A model type has no entries at all (a registry bug).
    #[error("the registry has no {0} models; add entries of type {0} to the registry file")]
    EmptyType(ModelType),
}

/// Result alias of this crate.
pub type Result<T, E = DeviceError> = std::result::Result<T, E>;

/// Why a model was refused before download: its estimate against the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFit {
    /// The model id.
    pub id: String,
    /// The variant that was tried (the smallest way to run it when none was named).
    pub variant: String,
    /// The estimate by part.
    pub estimate: MemoryEstimate,
    /// The budget in bytes.
    pub budget_bytes: u64,
    /// Context the estimate planned for.
    pub context_len: u64,
    /// Another variant of the model that would fit, with its estimate.
    pub fits_instead: Option<(String, u64)>,
}

impl fmt::Display for NotFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({}) needs about {} ({} at {} tokens) but the memory budget is {}; ",
            self.id,
            self.variant,
            format_size(self.estimate.total_bytes),
            self.estimate.breakdown(),
            self.context_len,
            format_size(self.budget_bytes)
        )?;
        match &self.fits_instead {
            Some((v, bytes)) => write!(f, "`--variant {v}` fits ({}), or ", format_size(*bytes))?,
            None => f.write_str("pick a smaller model, ")?,
        }
        f.write_str("shorten the context, or raise the budget with --memory")
    }
}
