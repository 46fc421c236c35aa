//! Validation of what users and the hub hand us: repo ids, revisions and
//! file names. Anything that could escape the cache folder is refused here.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::error::{HubError, Result};

/// A validated Hugging Face model repo id: `org/name`.
///
/// A single `name` is refused: the hub's few legacy one-part ids (`gpt2`) now
/// live under an owner (`openai-community/gpt2`), and a one-part name given
/// to the CLI is far more often a mistyped file or registry id, which must
/// not be sent to the network. Cache folders of legacy ids still list
/// ([`RepoId::from_folder_name`]).
///
/// Rules follow `huggingface_hub.utils.validate_repo_id`: each part is 1 to 96
/// characters of ASCII letters, digits, `-`, `_` and `.`, does not start or end
/// with `-` or `.`, and the id holds neither `--` nor `..` (they would clash
/// with the cache's `models--org--name` folder naming).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RepoId(String);

impl RepoId {
    /// Parses and validates a repo id (`org/name`).
    pub fn parse(id: &str) -> Result<Self> {
        if !id.contains('/') {
            return Err(HubError::InvalidRepoId {
                id: id.to_string(),
                reason: "a repo id needs an owner: `org/name`",
            });
        }
        Self::parse_parts(id)
    }

    /// Validates `name` or `org/name` (the parts' rules without requiring an owner).
    fn parse_parts(id: &str) -> Result<Self> {
        let bad = |reason| HubError::InvalidRepoId {
            id: id.to_string(),
            reason,
        };
        if id.is_empty() {
            return Err(bad("it is empty"));
        }
        if id.contains("--") || id.contains("..") {
            return Err(bad("`--` and `..` are not allowed"));
        }
        if id.ends_with(".git") {
            return Err(bad("it must not end with `.git`"));
        }
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() > 2 {
            return Err(bad("it has more than one `/`"));
        }
        for part in &parts {
            if part.is_empty() || part.len() > 96 {
                return Err(bad("each part must be 1 to 96 characters"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(bad("only letters, digits, `-`, `_` and `.` are allowed"));
            }
            if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
                return Err(bad("a part must not start or end with `-` or `.`"));
            }
        }
        Ok(RepoId(id.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The organisation (or user) part, if any.
    pub fn owner(&self) -> Option<&str> {
        self.0.split_once('/').map(|(o, _)| o)
    }

    /// The cache folder name, `models--org--name` (computed by `hf-hub`).
    pub fn folder_name(&self) -> String {
        hf_hub::Repo::model(self.0.clone()).folder_name()
    }

    /// Inverse of [`RepoId::folder_name`]; `None` for folders that are not
    /// model repos or do not decode to a valid id.
    pub fn from_folder_name(folder: &str) -> Option<Self> {
        let rest = folder.strip_prefix("models--")?;
        RepoId::parse_parts(&rest.replacen("--", "/", 1)).ok()
    }

    /// Path segment(s) for URLs: each part percent-encoded.
    pub(crate) fn url_path(&self) -> String {
        self.0.split('/').map(percent_encode).collect::<Vec<_>>().join("/")
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepoId {
    type Err = HubError;
    fn from_str(s: &str) -> Result<Self> {
        RepoId::parse(s)
    }
}

/// Checks a revision (branch, tag, commit or `refs/pr/N`): it becomes a path
/// under `refs/` in the cache, so it must be a safe relative path too.
pub fn validate_revision(revision: &str) -> Result<()> {
    let bad = |reason| HubError::InvalidRevision {
        revision: revision.to_string(),
        reason,
    };
    if revision.is_empty() || revision.len() > 256 {
        return Err(bad("it must be 1 to 256 characters"));
    }
    if !revision
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(bad("only letters, digits, `-`, `_`, `.` and `/` are allowed"));
    }
    if revision.starts_with('/') || revision.ends_with('/') || revision.contains("//") {
        return Err(bad("it must not start or end with `/` or hold `//`"));
    }
    if revision.split('/').any(|p| p == "." || p == ".." || p.starts_with('.')) {
        return Err(bad("no part may be `.`, `..` or start with `.`"));
    }
    if revision.ends_with(".lock") || revision.contains("..") {
        return Err(bad("it must not hold `..` or end with `.lock`"));
    }
    Ok(())
}

/// True when `revision` is a full 40-hex-digit commit hash.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Validates a file name listed by the hub and returns it as a relative path.
///
/// Refused: empty names, absolute paths, Windows drive or UNC prefixes,
/// backslashes, NUL bytes, and any `.` or `..` component — so that joining
/// the result to a snapshot folder can never leave it.
pub fn safe_relative_path(name: &str) -> std::result::Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err("the name is empty");
    }
    if name.contains('\0') {
        return Err("the name holds a NUL byte");
    }
    if name.contains('\\') {
        return Err("the name holds a backslash");
    }
    if name.starts_with('/') {
        return Err("the name is an absolute path");
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err("the name starts with a drive letter");
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" => return Err("the name holds an empty component (`//` or a trailing `/`)"),
            "." | ".." => return Err("the name holds a `.` or `..` component"),
            _ => out.push(part),
        }
    }
    // Belt and braces: the std parser must agree that only normal parts remain.
    if !Path::new(&out).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("the name does not stay inside the snapshot folder");
    }
    Ok(out)
}

/// Percent-encodes one URL path segment (RFC 3986 unreserved characters kept).
pub(crate) fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a file name for a URL, keeping `/` between segments.
pub(crate) fn encode_file_path(name: &str) -> String {
    name.split('/').map(percent_encode).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["org/name", "mlx-community/Qwen2.5-0.5B-Instruct-4bit", "a_b/c.d"] {
            assert!(RepoId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "gpt2",
            "model.gguf",
            "/x",
            "x/",
            "a/b/c",
            "a--b/c",
            "../x",
            "a/..",
            "a b/c",
            "a/b.git",
            "-a/b",
            "a/b-",
            "a/\u{e9}",
            "a/b\0",
        ] {
            assert!(RepoId::parse(bad).is_err(), "{bad:?}");
        }
        let id = RepoId::parse("org/name").unwrap();
        assert_eq!(id.folder_name(), "models--org--name");
        assert_eq!(RepoId::from_folder_name("models--org--name"), Some(id));
        assert_eq!(RepoId::from_folder_name("datasets--org--name"), None);
        // A legacy one-part repo already in the cache still lists.
        assert_eq!(RepoId::from_folder_name("models--gpt2").unwrap().as_str(), "gpt2");
    }

    #[test]
    fn revisions() {
        for ok in ["main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"] {
            assert!(validate_revision(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../main",
            "a/../b",
            "/abs",
            "a//b",
            "with space",
            "a\\b",
            ".hidden",
            "x.lock",
            "a/",
        ] {
            assert!(validate_revision(bad).is_err(), "{bad:?}");
        }
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
    }

    #[test]
    fn file_names() {
        assert_eq!(safe_relative_path("a/b.json").unwrap(), PathBuf::from("a/b.json"));
        for bad in [
            "",
            "../../escape",
            "/etc/passwd",
            "a/../../b",
            "a/./b",
            "a//b",
            "a\\..\\b",
            "C:/x",
            "a/",
            "x\0",
        ] {
            assert!(safe_relative_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoding() {
        assert_eq!(encode_file_path("dir/a b+c.json"), "dir/a%20b%2Bc.json");
        assert_eq!(percent_encode("refs/pr/1"), "refs%2Fpr%2F1");
    }
}
