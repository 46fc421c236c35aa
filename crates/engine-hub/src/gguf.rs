//! Ollama-style model references: `[hf.co/]org/repo[:TAG]`, where `TAG`
//! picks one `.gguf` file of a repo that holds several quantisations
//! (`bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`).
//!
//! The rules that pick the file are documented on [`ModelRef`].

use std::fmt;
use std::path::PathBuf;

use crate::api::{ModelInfo, RepoFile};
use crate::error::HubError;
use crate::filter::FileFilter;
use crate::progress::Progress;
use crate::repo::{safe_relative_path, validate_revision, RepoId};
use crate::HubClient;

/// Prefixes that name the Hugging Face hub explicitly, as Ollama accepts them.
const HUB_PREFIXES: &[&str] = &["https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/"];

/// Quants tried, in order, when a GGUF-only repo is named without a tag.
pub const DEFAULT_QUANTS: &[&str] = &["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0"];

/// Longest tag accepted (Ollama's limit on tags is 128 characters).
const MAX_TAG_LEN: usize = 128;

/// What goes wrong between a model reference and its file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The reference is not `[hf.co/]org/repo[:TAG]`.
    #[error(
        "invalid model reference `{reference}`: {reason}; write `org/repo` or `org/repo:TAG` \
         (optionally prefixed by `hf.co/`), e.g. `bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`"
    )]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The repo holds no `.gguf` model file (projectors aside).
    #[error(
        "`{repo}` holds no GGUF model files{}",
        match tag {
            Some(t) => format!(", so the tag `{t}` picks nothing; drop `:{t}` to pull the repo's safetensors weights, or name a GGUF repo"),
            None => "; name a GGUF repo (or this one without a tag, for its safetensors weights)".into(),
        }
    )]
    NoGguf {
        /// Repo id.
        repo: String,
        /// Tag asked for (`None`: a default was wanted).
        tag: Option<String>,
    },
    /// No `.gguf` file of the repo matches the tag.
    #[error(
        "the repo `{repo}` has no {tag} file; it has: {}; pick one of those, e.g. `{repo}:{}`",
        available.join(", "),
        available.first().map(String::as_str).unwrap_or("Q4_K_M")
    )]
    NoSuchTag {
        /// Repo id.
        repo: String,
        /// Tag asked for.
        tag: String,
        /// The quant tags the repo has (split ones marked), smallest file first.
        available: Vec<String>,
    },
    /// The tag picks a GGUF split into several files.
    #[error(
        "the {tag} GGUF of `{repo}` is split into {} files ({}); split GGUFs are not supported yet: \
         pick a single-file tag{}, or merge the parts with llama.cpp's `llama-gguf-split --merge` \
         and pass the merged file's path",
        parts.len(),
        parts.join(", "),
        if single_file_tags.is_empty() { String::new() } else { format!(" (it has: {})", single_file_tags.join(", ")) }
    )]
    Split {
        /// Repo id.
        repo: String,
        /// Tag asked for (or picked by default).
        tag: String,
        /// The parts, in order.
        parts: Vec<String>,
        /// Tags of the repo that are one file each.
        single_file_tags: Vec<String>,
    },
    /// Several different files match the tag.
    #[error(
        "the tag `{tag}` matches several files of `{repo}`: {}; make the tag more specific with more \
         of the file name, e.g. `{repo}:{}`",
        files.join(", "),
        files.first().map(|f| stem(f)).unwrap_or_default()
    )]
    Ambiguous {
        /// Repo id.
        repo: String,
        /// Tag asked for.
        tag: String,
        /// The matching files.
        files: Vec<String>,
    },
    /// Listing, downloading or reading the cache failed.
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// A model reference: `[hf.co/|huggingface.co/]org/repo[:TAG]`.
///
/// # How a tag picks a file
///
/// A tag matches a `.gguf` file when it occurs in the file's name (without
/// the folder, the `.gguf` extension and a split suffix), ignoring case, as a
/// run of whole *tokens*: it starts at the beginning of the name or after a
/// `-` or `.`, and ends at the end of the name or before a `-` or `.`. An
/// underscore never separates tokens, because quant names contain it: `Q4_K`
/// does not match `…-Q4_K_M.gguf` and `Q4_0` does not match `…-Q4_0_4_4.gguf`,
/// while `q4_k_m` matches `Llama-3.2-1B-Instruct-Q4_K_M.gguf` and
/// `qwen2.5-0.5b-instruct-q4_k_m.gguf`. A longer tag made of more of the name
/// (`UD-Q4_K_XL`, `13b-Q4_K_M`) narrows the choice when several files match.
/// When several files match, one whose own quant tag ([`quant_tag`]) equals
/// the tag wins; otherwise the reference is ambiguous.
///
/// Multimodal projector files (any name containing `mmproj`) are never
/// picked: they are not language models. Split files
/// (`…-00001-of-00003.gguf`) are not supported yet: picking one is an error
/// that names the parts.
///
/// Without a tag, a repo with `.safetensors` weights (or without GGUF files)
/// is pulled as a folder, as [`HubClient::pull`] does. A GGUF-only repo gets
/// its best default: the first single-file quant of `Q4_K_M`, `Q4_K_S`,
/// `Q5_K_M`, `Q6_K`, `Q8_0`, `Q4_0` ([`DEFAULT_QUANTS`]), else the smallest
/// `.gguf` file; the pick is logged (`tracing::info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The repo.
    pub repo: RepoId,
    /// The quant tag as given (`None` without one, or for Ollama's `latest`).
    pub tag: Option<String>,
    /// Whether the reference named the hub explicitly (a prefix or a `:TAG`).
    explicit: bool,
}

impl ModelRef {
    /// Parses `[hf.co/|huggingface.co/]org/repo[:TAG]` (an `https://` before
    /// the host is accepted too). The tag is 1 to 128 letters, digits, `_`,
    /// `-` and `.`, matched ignoring case; `latest` (Ollama's default tag)
    /// means no tag.
    pub fn parse(reference: &str) -> Result<ModelRef, GgufError> {
        let bad = |reason| GgufError::InvalidReference {
            reference: reference.to_string(),
            reason,
        };
        let trimmed = reference.trim();
        let lower = trimmed.to_ascii_lowercase();
        let prefix = HUB_PREFIXES
            .iter()
            .find(|p| lower.starts_with(*p))
            .map_or(0, |p| p.len());
        let rest = &trimmed[prefix..];
        let (id, tag) = match rest.split_once(':') {
            Some((id, tag)) => (id, Some(tag)),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if tag.is_empty() {
                return Err(bad("the tag after `:` is empty"));
            }
            if tag.len() > MAX_TAG_LEN {
                return Err(bad("the tag is longer than 128 characters"));
            }
            if !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(bad("a tag holds only letters, digits, `_`, `-` and `.`"));
            }
        }
        if id.is_empty() {
            return Err(bad("it names no repo"));
        }
        Ok(ModelRef {
            repo: RepoId::parse(id)?,
            tag: tag.filter(|t| !t.eq_ignore_ascii_case("latest")).map(str::to_string),
            explicit: prefix > 0 || tag.is_some(),
        })
    }

    /// A reference to `repo` with an optional tag.
    pub fn new(repo: RepoId, tag: Option<String>) -> ModelRef {
        let explicit = tag.is_some();
        ModelRef { repo, tag, explicit }
    }

    /// Whether the reference can only mean the hub: it has a hub prefix or a
    /// `:TAG`. Callers that also accept local paths check these before
    /// deciding a name that does not exist was a mistyped path.
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

/// The `.gguf` file a reference picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufChoice {
    /// Path of the file in the repo.
    pub file: String,
    /// Its quant tag ([`quant_tag`]), or its name without `.gguf` when it has none.
    pub tag: String,
    /// Size in bytes, when listed.
    pub size: Option<u64>,
    /// True when no tag was given and the default order picked it.
    pub defaulted: bool,
}

/// The quant tag in a GGUF file name, upper-cased: the last `-`/`.`-separated
/// token of the name (without folder, `.gguf` and split suffix) that looks
/// like a llama.cpp quant: `Q4_K_M`, `IQ4_XS`, `TQ1_0`, `Q8_0`, `F16`,
/// `BF16`, `F32`, `MXFP4`… `None` for other names.
pub fn quant_tag(file: &str) -> Option<String> {
    stem(file)
        .split(['-', '.'])
        .rev()
        .map(str::to_ascii_uppercase)
        .find(|t| is_quant_token(t))
}

fn is_quant_token(t: &str) -> bool {
    const FLOATS: &[&str] = &["F16", "F32", "F64", "BF16", "FP16", "FP32", "MXFP4"];
    if FLOATS.contains(&t) {
        return true;
    }
    let q = t.strip_prefix(['I', 'T']).unwrap_or(t);
    q.strip_prefix('Q').is_some_and(|r| {
        r.starts_with(|c: char| c.is_ascii_digit()) && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Whether a repo path is a `.gguf` file.
fn is_gguf(file: &str) -> bool {
    file.len() > 5 && file[file.len() - 5..].eq_ignore_ascii_case(".gguf")
}

/// Multimodal projectors ship as `.gguf` too, but are not language models.
fn is_projector(file: &str) -> bool {
    base_name(file).to_ascii_lowercase().contains("mmproj")
}

fn base_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// `(part, of)` for a split file name `…-00001-of-00003.gguf`.
fn split_part(file: &str) -> Option<(u32, u32)> {
    let name = base_name(file);
    let body = name.get(..name.len().checked_sub(5)?)?;
    let (head, total) = body.rsplit_once("-of-")?;
    let (_, part) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(part) && digits(total)) {
        return None;
    }
    Some((part.parse().ok()?, total.parse().ok()?))
}

/// The name a tag is matched against: no folder, `.gguf` or split suffix.
fn stem(file: &str) -> String {
    let name = base_name(file);
    let mut s = if is_gguf(name) { &name[..name.len() - 5] } else { name };
    if split_part(name).is_some() {
        // Drop `-00001-of-00003`.
        for _ in 0..3 {
            s = s.rsplit_once('-').map_or(s, |(h, _)| h);
        }
    }
    s.to_string()
}

/// Whether `tag` occurs in `stem` as whole `-`/`.`-separated tokens, ignoring case.
fn has_token(stem: &str, tag: &str) -> bool {
    let (s, t) = (stem.to_ascii_lowercase(), tag.to_ascii_lowercase());
    let (s, t) = (s.as_bytes(), t.as_bytes());
    let sep = |b: u8| b == b'-' || b == b'.';
    !t.is_empty()
        && (0..=s.len().saturating_sub(t.len())).any(|i| {
            s[i..].starts_with(t) && (i == 0 || sep(s[i - 1])) && (i + t.len() == s.len() || sep(s[i + t.len()]))
        })
}

/// The files of one quant: a single file, or the parts of a split one.
struct Group<'a> {
    folder: &'a str,
    stem: String,
    files: Vec<&'a RepoFile>,
}

impl Group<'_> {
    fn is_split(&self) -> bool {
        self.files.len() > 1 || self.files.iter().any(|f| split_part(&f.name).is_some())
    }
    fn tag(&self) -> String {
        quant_tag(&self.files[0].name).unwrap_or_else(|| self.stem.clone())
    }
    fn size(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.content_size().unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add)
    }
    fn label(&self) -> String {
        if self.is_split() {
            format!("{} (split)", self.tag())
        } else {
            self.tag()
        }
    }
    fn parts(&self) -> Vec<String> {
        let mut parts: Vec<String> = self.files.iter().map(|f| f.name.clone()).collect();
        parts.sort();
        parts
    }
}

/// The GGUF model files of a listing, split parts grouped, smallest first.
fn groups(files: &[RepoFile]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for f in files.iter().filter(|f| is_gguf(&f.name) && !is_projector(&f.name)) {
        let folder = f.name.rsplit_once('/').map_or("", |(d, _)| d);
        let stem = stem(&f.name);
        match out
            .iter_mut()
            .find(|g| g.folder == folder && g.stem == stem && g.is_split() && split_part(&f.name).is_some())
        {
            Some(g) => g.files.push(f),
            None => out.push(Group {
                folder,
                stem,
                files: vec![f],
            }),
        }
    }
    out.sort_by(|a, b| {
        a.size()
            .cmp(&b.size())
            .then_with(|| a.files[0].name.cmp(&b.files[0].name))
    });
    out
}

/// The repo's tags for messages: unique, smallest file first.
fn labels(groups: &[Group<'_>], single_only: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in groups.iter().filter(|g| !single_only || !g.is_split()) {
        let l = g.label();
        if !out.iter().any(|o| o.eq_ignore_ascii_case(&l)) {
            out.push(l);
        }
    }
    out
}

/// Whether a repo with these files is to be used as one GGUF file: always
/// with a tag; without one, when it has GGUF model files and no
/// `.safetensors` weights.
pub fn wants_gguf(files: &[RepoFile], tag: Option<&str>) -> bool {
    tag.is_some()
        || (!files
            .iter()
            .any(|f| f.name.to_ascii_lowercase().ends_with(".safetensors"))
            && files.iter().any(|f| is_gguf(&f.name) && !is_projector(&f.name)))
}

/// Picks the `.gguf` file of `files` (a listing of `repo`) that `tag` names,
/// or without a tag the best default (see [`ModelRef`]).
pub fn select_gguf(repo: &RepoId, files: &[RepoFile], tag: Option<&str>) -> Result<GgufChoice, GgufError> {
    let groups = groups(files);
    let split_err = |g: &Group<'_>, tag: &str| GgufError::Split {
        repo: repo.to_string(),
        tag: tag.to_string(),
        parts: g.parts(),
        single_file_tags: labels(&groups, true),
    };
    let choice = |g: &Group<'_>, defaulted| GgufChoice {
        file: g.files[0].name.clone(),
        tag: g.tag(),
        size: g.files[0].content_size(),
        defaulted,
    };
    let Some(tag) = tag else {
        for want in DEFAULT_QUANTS {
            match by_tag(repo, &groups, want) {
                Ok(g) if !g.is_split() => {
                    let c = choice(g, true);
                    tracing::info!(repo = %repo, file = %c.file, tag = %c.tag, "no quant tag given; picked the default {want} (append `:TAG` to choose another)");
                    return Ok(c);
                }
                Err(e @ GgufError::Ambiguous { .. }) => return Err(e),
                _ => {}
            }
        }
        if let Some(g) = groups.iter().find(|g| !g.is_split()) {
            let c = choice(g, true);
            tracing::info!(repo = %repo, file = %c.file, tag = %c.tag, "no quant tag given and none of {} found; picked the smallest GGUF (append `:TAG` to choose another)", DEFAULT_QUANTS.join(", "));
            return Ok(c);
        }
        return Err(match groups.first() {
            Some(g) => split_err(g, &g.tag()),
            None => GgufError::NoGguf {
                repo: repo.to_string(),
                tag: None,
            },
        });
    };
    let g = by_tag(repo, &groups, tag)?;
    if g.is_split() {
        return Err(split_err(g, tag));
    }
    Ok(choice(g, false))
}

/// The one group `tag` names.
fn by_tag<'g, 'f>(repo: &RepoId, groups: &'g [Group<'f>], tag: &str) -> Result<&'g Group<'f>, GgufError> {
    if groups.is_empty() {
        return Err(GgufError::NoGguf {
            repo: repo.to_string(),
            tag: Some(tag.to_string()),
        });
    }
    let hits: Vec<&Group<'_>> = groups.iter().filter(|g| has_token(&g.stem, tag)).collect();
    let exact: Vec<&Group<'_>> = hits
        .iter()
        .copied()
        .filter(|g| quant_tag(&g.files[0].name).is_some_and(|q| q.eq_ignore_ascii_case(tag)))
        .collect();
    match (hits.as_slice(), exact.as_slice()) {
        ([], _) => Err(GgufError::NoSuchTag {
            repo: repo.to_string(),
            tag: tag.to_string(),
            available: labels(groups, false),
        }),
        ([one], _) | (_, [one]) => Ok(one),
        (many, _) => Err(GgufError::Ambiguous {
            repo: repo.to_string(),
            tag: tag.to_string(),
            files: many.iter().map(|g| g.files[0].name.clone()).collect(),
        }),
    }
}

impl HubClient {
    /// Pulls what `reference` names at `revision` and returns its path: the
    /// chosen `.gguf` file (only that file is downloaded) when the reference
    /// has a tag or the repo is GGUF-only (see [`wants_gguf`]), else the
    /// snapshot folder of the files `filter` selects, as [`HubClient::pull`].
    ///
    /// The repo is listed once. Offline (`HF_HUB_OFFLINE`), or when the hub
    /// cannot be reached, the choice is made among the cached files of the
    /// revision; a tag the cache lacks is [`HubError::Offline`].
    pub fn pull_ref(
        &self,
        reference: &ModelRef,
        revision: &str,
        filter: &FileFilter,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<PathBuf, GgufError> {
        validate_revision(revision)?;
        let repo = &reference.repo;
        let info = if self.config.offline {
            None
        } else {
            match self.model_info(repo, revision) {
                Ok(info) => Some(info),
                Err(e @ HubError::Network { .. }) => {
                    if self.cached_snapshot(repo, revision, &FileFilter::all()).is_none() {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, "hub unreachable; using the cached snapshot");
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        match info {
            Some(info) => self.pull_listed_ref(reference, revision, &info, filter, progress),
            None => self.cached_ref(reference, revision, filter),
        }
    }

    fn pull_listed_ref(
        &self,
        reference: &ModelRef,
        revision: &str,
        info: &ModelInfo,
        filter: &FileFilter,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<PathBuf, GgufError> {
        let repo = &reference.repo;
        if !wants_gguf(&info.files, reference.tag.as_deref()) {
            return Ok(self.pull_listed(repo, revision, info, filter, progress)?.path);
        }
        self.check_names(repo, info)?;
        let choice = select_gguf(repo, &info.files, reference.tag.as_deref())?;
        let entry = info
            .files
            .iter()
            .find(|f| f.name == choice.file)
            .expect("the choice comes from the listing");
        let snap = self.pull_files(repo, revision, info, &[entry], progress)?;
        Ok(snap.path.join(relative_path(repo, &choice.file)?))
    }

    /// [`HubClient::pull_ref`] from the cache alone.
    fn cached_ref(&self, reference: &ModelRef, revision: &str, filter: &FileFilter) -> Result<PathBuf, GgufError> {
        let repo = &reference.repo;
        let missing = |what: String| HubError::Offline {
            what,
            cache: self.config.cache_dir.clone(),
        };
        let Some(snap) = self.cached_snapshot(repo, revision, &FileFilter::all()) else {
            let what = match &reference.tag {
                Some(tag) => format!("a {tag} GGUF file of `{repo}` at revision `{revision}`"),
                None => format!("`{repo}` at revision `{revision}` ({filter})"),
            };
            return Err(missing(what).into());
        };
        let files: Vec<RepoFile> = snap
            .files
            .iter()
            .map(|name| RepoFile {
                name: name.clone(),
                size: std::fs::metadata(snap.path.join(name)).ok().map(|m| m.len()),
                blob_id: None,
                lfs: None,
            })
            .collect();
        if !wants_gguf(&files, reference.tag.as_deref()) {
            return self
                .cached_snapshot(repo, revision, filter)
                .map(|s| s.path)
                .ok_or_else(|| missing(format!("`{repo}` at revision `{revision}` ({filter})")).into());
        }
        match select_gguf(repo, &files, reference.tag.as_deref()) {
            Ok(choice) => Ok(snap.path.join(relative_path(repo, &choice.file)?)),
            Err(GgufError::NoSuchTag { tag, available, .. }) => Err(missing(format!(
                "a {tag} GGUF file of `{repo}` at revision `{revision}` (the cache has: {})",
                available.join(", ")
            ))
            .into()),
            Err(GgufError::NoGguf { tag, .. }) => Err(missing(format!(
                "a {} GGUF file of `{repo}` at revision `{revision}` (the cache has none)",
                tag.as_deref().unwrap_or("default")
            ))
            .into()),
            Err(e) => Err(e),
        }
    }
}

/// The file's path relative to the snapshot, refusing names that escape it.
fn relative_path(repo: &RepoId, file: &str) -> Result<PathBuf, HubError> {
    safe_relative_path(file).map_err(|reason| HubError::UnsafeFileName {
        repo: repo.to_string(),
        name: file.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoId {
        RepoId::parse("org/M-GGUF").unwrap()
    }

    fn listing(files: &[(&str, u64)]) -> Vec<RepoFile> {
        files
            .iter()
            .map(|&(name, size)| RepoFile {
                name: name.into(),
                size: Some(size),
                blob_id: None,
                lfs: None,
            })
            .collect()
    }

    fn bartowski() -> Vec<RepoFile> {
        listing(&[
            (".gitattributes", 1),
            ("README.md", 2),
            ("M-Q8_0.gguf", 800),
            ("M-Q4_K_M.gguf", 400),
            ("M-Q4_K_L.gguf", 450),
            ("M-IQ4_XS.gguf", 350),
            ("M-Q4_0_4_4.gguf", 380),
            ("M-f16.gguf", 1600),
            ("mmproj-M-f16.gguf", 100),
        ])
    }

    fn pick(files: &[RepoFile], tag: Option<&str>) -> Result<GgufChoice, GgufError> {
        select_gguf(&repo(), files, tag)
    }

    #[test]
    fn parses_references() {
        let r = ModelRef::parse("bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").unwrap();
        assert_eq!(r.repo.as_str(), "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(r.tag.as_deref(), Some("Q4_K_M"));
        assert!(r.is_explicit());
        assert_eq!(r.to_string(), "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M");
        for (text, repo, tag) in [
            ("hf.co/org/repo:q8_0", "org/repo", Some("q8_0")),
            ("HF.CO/org/repo", "org/repo", None),
            ("huggingface.co/org/repo:IQ4_XS", "org/repo", Some("IQ4_XS")),
            ("https://huggingface.co/org/repo:BF16", "org/repo", Some("BF16")),
            ("org/repo:latest", "org/repo", None),
            ("org/repo:UD-Q4_K_XL", "org/repo", Some("UD-Q4_K_XL")),
        ] {
            let r = ModelRef::parse(text).unwrap();
            assert_eq!((r.repo.as_str(), r.tag.as_deref()), (repo, tag), "{text}");
            assert!(r.is_explicit(), "{text}");
        }
        let plain = ModelRef::parse("org/repo").unwrap();
        assert_eq!(plain.tag, None);
        assert!(!plain.is_explicit());
        for bad in [
            "org/repo:",
            "org/repo:a b",
            "org/repo:a:b",
            "org/repo:Q4/K",
            "hf.co/",
            ":Q4_K_M",
            "repo:Q4_K_M",
            "a/b/c:Q4_K_M",
            "model.gguf",
        ] {
            assert!(ModelRef::parse(bad).is_err(), "{bad:?}");
        }
        let e = ModelRef::parse("org/repo:").unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("org/repo:TAG"), "{e}");
    }

    #[test]
    fn quant_tags_from_names() {
        for (name, tag) in [
            ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", Some("Q4_K_M")),
            ("qwen2.5-0.5b-instruct-q4_k_m.gguf", Some("Q4_K_M")),
            ("llama-2-7b.Q5_K_S.gguf", Some("Q5_K_S")),
            ("M-IQ4_XS.gguf", Some("IQ4_XS")),
            ("ggml-model-f16.gguf", Some("F16")),
            ("M-BF16.gguf", Some("BF16")),
            ("M-UD-Q4_K_XL.gguf", Some("Q4_K_XL")),
            ("Q8_0/M-Q8_0-00001-of-00002.gguf", Some("Q8_0")),
            ("model.gguf", None),
        ] {
            assert_eq!(quant_tag(name).as_deref(), tag, "{name}");
        }
        assert_eq!(split_part("a/M-Q8_0-00002-of-00003.gguf"), Some((2, 3)));
        assert_eq!(split_part("M-Q8_0.gguf"), None);
        assert_eq!(stem("a/M-Q8_0-00002-of-00003.gguf"), "M-Q8_0");
    }

    #[test]
    fn tags_match_whole_tokens_ignoring_case() {
        assert!(has_token("M-Q4_K_M", "q4_k_m"));
        assert!(has_token("llama-2-7b.Q4_K_M", "Q4_K_M"));
        assert!(has_token("M-UD-Q4_K_XL", "UD-Q4_K_XL"));
        assert!(has_token("M-13b-Q4_K_M", "13b-q4_k_m"));
        assert!(!has_token("M-Q4_K_M", "Q4_K"));
        assert!(!has_token("M-Q4_0_4_4", "Q4_0"));
        assert!(!has_token("M-IQ4_XS", "Q4_XS"));
        assert!(!has_token("M-Q4_K_M", ""));
    }

    #[test]
    fn a_tag_picks_its_file() {
        let files = bartowski();
        for (tag, file) in [
            ("Q4_K_M", "M-Q4_K_M.gguf"),
            ("q8_0", "M-Q8_0.gguf"),
            ("iq4_xs", "M-IQ4_XS.gguf"),
            ("F16", "M-f16.gguf"),
            ("Q4_0_4_4", "M-Q4_0_4_4.gguf"),
        ] {
            let c = pick(&files, Some(tag)).unwrap();
            assert_eq!(c.file, file, "{tag}");
            assert!(!c.defaulted);
        }
        // Neither a prefix of a longer quant nor the projector.
        let e = pick(&files, Some("Q4_K")).unwrap_err();
        let GgufError::NoSuchTag { ref available, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(available, &["IQ4_XS", "Q4_0_4_4", "Q4_K_M", "Q4_K_L", "Q8_0", "F16"]);
        assert_eq!(
            e.to_string(),
            "the repo `org/M-GGUF` has no Q4_K file; it has: IQ4_XS, Q4_0_4_4, Q4_K_M, Q4_K_L, Q8_0, F16; \
             pick one of those, e.g. `org/M-GGUF:IQ4_XS`"
        );
    }

    #[test]
    fn the_exact_quant_wins_and_real_ambiguity_is_an_error() {
        let files = listing(&[("M-Q4_K_M.gguf", 4), ("M-UD-Q4_K_M.gguf", 5)]);
        assert!(pick(&files, Some("Q4_K_M"))
            .unwrap_err()
            .to_string()
            .contains("several"));
        assert_eq!(pick(&files, Some("UD-Q4_K_M")).unwrap().file, "M-UD-Q4_K_M.gguf");
        let files = listing(&[("M-7b-Q4_K_M.gguf", 4), ("M-13b-Q4_K_M.gguf", 8)]);
        let e = pick(&files, Some("Q4_K_M")).unwrap_err().to_string();
        assert!(e.contains("M-7b-Q4_K_M.gguf, M-13b-Q4_K_M.gguf"), "{e}");
        assert!(e.contains("more specific"), "{e}");
        assert_eq!(pick(&files, Some("13B-q4_k_m")).unwrap().file, "M-13b-Q4_K_M.gguf");
    }

    #[test]
    fn split_files_are_refused_with_their_parts() {
        let files = listing(&[
            ("M-Q4_K_M.gguf", 4),
            ("Q8_0/M-Q8_0-00002-of-00002.gguf", 4),
            ("Q8_0/M-Q8_0-00001-of-00002.gguf", 4),
        ]);
        let e = pick(&files, Some("q8_0")).unwrap_err();
        let GgufError::Split { ref parts, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(
            parts,
            &["Q8_0/M-Q8_0-00001-of-00002.gguf", "Q8_0/M-Q8_0-00002-of-00002.gguf"]
        );
        let msg = e.to_string();
        assert!(
            msg.contains("split GGUFs are not supported yet") && msg.contains("it has: Q4_K_M"),
            "{msg}"
        );
        let e = pick(&files, Some("Q6_K")).unwrap_err().to_string();
        assert!(e.contains("it has: Q4_K_M, Q8_0 (split)"), "{e}");
        // Without a tag, a single file beats a preferred split one.
        let files = listing(&[
            ("M-Q4_K_M-00001-of-00002.gguf", 4),
            ("M-Q4_K_M-00002-of-00002.gguf", 4),
            ("M-Q8_0.gguf", 9),
        ]);
        assert_eq!(pick(&files, None).unwrap().file, "M-Q8_0.gguf");
        let only_split = &files[..2];
        assert!(matches!(pick(only_split, None), Err(GgufError::Split { .. })));
    }

    #[test]
    fn defaults_follow_the_preference_order_then_size() {
        let c = pick(&bartowski(), None).unwrap();
        assert_eq!(
            (c.file.as_str(), c.tag.as_str(), c.defaulted),
            ("M-Q4_K_M.gguf", "Q4_K_M", true)
        );
        let files = listing(&[("M-Q8_0.gguf", 8), ("M-Q6_K.gguf", 6), ("M-Q2_K.gguf", 2)]);
        assert_eq!(pick(&files, None).unwrap().file, "M-Q6_K.gguf");
        let files = listing(&[("M-Q3_K_L.gguf", 3), ("M-Q2_K.gguf", 2), ("mmproj-f16.gguf", 1)]);
        assert_eq!(pick(&files, None).unwrap().file, "M-Q2_K.gguf");
        assert!(matches!(
            pick(&listing(&[("config.json", 1)]), None),
            Err(GgufError::NoGguf { .. })
        ));
        let e = pick(&listing(&[("model.safetensors", 1)]), Some("Q4_K_M"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no GGUF model files") && e.contains("drop `:Q4_K_M`"),
            "{e}"
        );
    }

    #[test]
    fn gguf_only_repos_want_a_file() {
        assert!(wants_gguf(&bartowski(), None));
        assert!(wants_gguf(&listing(&[("model.safetensors", 1)]), Some("Q4_K_M")));
        assert!(!wants_gguf(
            &listing(&[("model.safetensors", 1), ("m-Q4_K_M.gguf", 1)]),
            None
        ));
        assert!(!wants_gguf(
            &listing(&[("config.json", 1), ("mmproj-f16.gguf", 1)]),
            None
        ));
    }
}
