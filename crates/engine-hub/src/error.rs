//! The error type of the crate: every message names the problem and the fix.

use std::path::PathBuf;

/// Result alias used across `engine-hub`.
pub type Result<T, E = HubError> = std::result::Result<T, E>;

/// Everything that can go wrong while talking to the hub or the cache.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A repo id that is not `org/name` made of safe characters.
    #[error("invalid repo id `{id}`: {reason}; use `org/name` made of letters, digits, `-`, `_` and `.`, e.g. `mlx-community/Qwen2.5-0.5B-Instruct-4bit`")]
    InvalidRepoId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A revision that is not a safe branch, tag or commit name.
    #[error("invalid revision `{revision}`: {reason}; use a branch, tag or commit hash such as `main`")]
    InvalidRevision {
        /// The revision as given.
        revision: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The hub listed a file name that would escape the snapshot folder.
    #[error("the hub listed an unsafe file name {name:?} in `{repo}` ({reason}); nothing was written — check HF_ENDPOINT points at a trusted hub")]
    UnsafeFileName {
        /// Repo whose listing held the name.
        repo: String,
        /// The offending name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The repo does not exist (or is private and no token was given).
    #[error("repository `{repo}` not found on {endpoint}; check the id, or set HF_TOKEN if it is private")]
    RepoNotFound {
        /// Repo id.
        repo: String,
        /// Hub endpoint asked.
        endpoint: String,
    },
    /// The revision does not exist in the repo.
    #[error("revision `{revision}` not found in `{repo}`; check the branch, tag or commit hash")]
    RevisionNotFound {
        /// Repo id.
        repo: String,
        /// Revision asked for.
        revision: String,
    },
    /// The file is not part of the repo at that revision.
    #[error("file `{file}` not found in `{repo}` at `{revision}`; `mlxengine search --hub` and the model page list its files")]
    EntryNotFound {
        /// Repo id.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// File name.
        file: String,
    },
    /// 401/403: private or gated repo, or a bad token.
    #[error("access to `{url}` denied (HTTP {status}); set HF_TOKEN to a token that can read it, and accept the model's terms on the hub if it is gated")]
    Unauthorized {
        /// URL refused (without query secrets; tokens never appear in URLs).
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// Any other HTTP error status, after retries where they apply.
    #[error("HTTP {status} from {url} after {attempts} attempt(s): {message}; retry later or check HF_ENDPOINT")]
    Http {
        /// URL asked.
        url: String,
        /// Last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// Body or reason from the server.
        message: String,
    },
    /// Connection-level failure, after retries.
    #[error("network error talking to {url} after {attempts} attempt(s): {message}; check the connection and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache")]
    Network {
        /// URL asked.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Transport error.
        message: String,
    },
    /// Offline mode and the thing asked for is not cached.
    #[error("offline mode (HF_HUB_OFFLINE is set): {what} is not in the cache at {cache}; unset HF_HUB_OFFLINE to download it")]
    Offline {
        /// What was asked for.
        what: String,
        /// Cache folder searched.
        cache: PathBuf,
    },
    /// The downloaded bytes never matched the hub's metadata.
    #[error("`{file}` failed verification after {attempts} attempt(s): {detail}; the hub or a proxy served corrupted data, retry later")]
    Verification {
        /// File name in the repo.
        file: String,
        /// Attempts made.
        attempts: u32,
        /// Expected versus got.
        detail: String,
    },
    /// The caller's [`crate::CancelFlag`] was set.
    #[error("cancelled{}", match partial { Some(p) => format!("; the partial file is kept at {} and the next pull resumes from it", p.display()), None => String::new() })]
    Cancelled {
        /// The `.incomplete` file kept for resuming, when a download was cut.
        partial: Option<PathBuf>,
    },
    /// Filesystem error.
    #[error("I/O error on {}: {source}; check permissions and free disk space", path.display())]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered something that is not the hub API.
    #[error("unexpected response from {url}: {detail}; HF_ENDPOINT may not point at a Hugging Face hub")]
    BadResponse {
        /// URL asked.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The model is not in the local cache.
    #[error("model `{repo}` is not in the cache at {}; `mlxengine list` shows the cached models", cache.display())]
    NotInCache {
        /// Repo id.
        repo: String,
        /// Cache folder searched.
        cache: PathBuf,
    },
    /// A configuration value (environment variable) is unusable.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Config {
        /// Variable name.
        name: &'static str,
        /// Value found.
        value: String,
        /// What to change.
        reason: &'static str,
    },
}

impl HubError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.into(),
            source,
        }
    }
}
