//! Hugging Face Hub client of MLXEngine.
//!
//! Users name models by repo id (`mlx-community/…`). This crate searches the
//! hub, reads model info (files, sizes, LFS sha256), and pulls the files a
//! model needs into the standard Hugging Face cache so Python's
//! `huggingface_hub` and this engine share downloads both ways. Ollama-style
//! references (`org/repo:Q4_K_M`, `hf.co/org/repo`) pick one `.gguf` file of
//! a repo ([`ModelRef`], [`HubClient::pull_ref`]).
//!
//! Downloads are resumable (`Range` from `blobs/<hash>.incomplete`), verified
//! (sha256 for LFS files, size for the rest) before they become visible,
//! atomic (rename, then snapshot symlink), safe across processes (one
//! advisory lock per blob) and retried with backoff on resets, 429 and 5xx
//! (honouring `Retry-After`). See `README.md` for which parts come from the
//! `hf-hub` crate and which are ours.
//!
//! ```no_run
//! use engine_hub::{FileFilter, HubClient, RepoId};
//! let client = HubClient::from_env()?;
//! let repo = RepoId::parse("mlx-community/Qwen2.5-0.5B-Instruct-4bit")?;
//! let snap = client.pull(&repo, "main", &FileFilter::all(), &mut |p| eprintln!("{}", engine_hub::progress_line(p, 0.0)))?;
//! println!("{}", snap.path.display());
//! # Ok::<(), engine_hub::HubError>(())
//! ```
#![warn(missing_docs)]

mod api;
mod cache;
mod config;
mod download;
mod error;
mod filter;
mod gguf;
mod http;
mod progress;
mod repo;
#[cfg(feature = "test-hub")]
pub mod test_hub;

use std::path::PathBuf;

pub use api::{LfsInfo, ModelInfo, ModelSummary, RepoFile, SearchQuery, SortBy};
pub use cache::{snapshot_files, LocalModel, LocalRevision, RepoCache};
pub use config::{HubConfig, RetryPolicy, DEFAULT_ENDPOINT};
pub use download::sha256_file;
pub use error::{HubError, Result};
pub use filter::{fnmatch, FileFilter};
pub use gguf::{quant_tag, select_gguf, wants_gguf, GgufChoice, GgufError, ModelRef, DEFAULT_QUANTS};
pub use progress::{format_bytes, format_duration, progress_line, CancelFlag, Phase, Progress, RateMeter};
pub use repo::{is_commit_hash, safe_relative_path, validate_revision, RepoId};

use download::BlobJob;
use http::{Ctx, Failure, Http};
use repo::{encode_file_path, percent_encode};

/// A pulled (or cached) revision of a repo.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Repo id.
    pub repo: RepoId,
    /// Revision asked for.
    pub revision: String,
    /// Commit it resolved to.
    pub commit: String,
    /// `…/models--org--name/snapshots/<commit>`: load the model from here.
    pub path: PathBuf,
    /// Files of this pull, relative to `path`, sorted.
    pub files: Vec<String>,
}

/// The hub client: configuration, one HTTP agent and a cancel flag.
pub struct HubClient {
    config: HubConfig,
    http: Http,
    cancel: CancelFlag,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient").field("config", &self.config).finish()
    }
}

impl HubClient {
    /// A client configured from the environment (see [`HubConfig::from_lookup`]).
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(HubConfig::from_env()?))
    }

    /// A client with explicit settings.
    pub fn new(config: HubConfig) -> Self {
        let cancel = CancelFlag::new();
        HubClient {
            http: Http::new(&config, cancel.clone()),
            config,
            cancel,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The flag that cancels this client's running and future operations
    /// until reset (the CLI sets it on SIGINT).
    pub fn cancel_flag(&self) -> CancelFlag {
        self.cancel.clone()
    }

    fn offline_err(&self, what: String) -> HubError {
        HubError::Offline {
            what,
            cache: self.config.cache_dir.clone(),
        }
    }

    /// Searches models on the hub.
    pub fn search(&self, query: &SearchQuery) -> Result<Vec<ModelSummary>> {
        if self.config.offline {
            return Err(self.offline_err("a hub search (searching needs the network)".into()));
        }
        let url = format!("{}/api/models?{}", self.config.endpoint, query.to_query_string());
        let mut hits: Vec<ModelSummary> = self.http.get_json(&url, &Ctx::default())?;
        for h in &mut hits {
            if h.author.is_none() {
                h.author = h.id.split_once('/').map(|(a, _)| a.to_string());
            }
        }
        Ok(hits)
    }

    /// Model info at `revision`: commit hash and files with sizes and LFS sha256.
    pub fn model_info(&self, repo: &RepoId, revision: &str) -> Result<ModelInfo> {
        validate_revision(revision)?;
        if self.config.offline {
            return Err(self.offline_err(format!("the hub's file list of `{repo}`")));
        }
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.config.endpoint,
            repo.url_path(),
            percent_encode(revision)
        );
        let ctx = Ctx {
            repo: repo.to_string(),
            revision: revision.to_string(),
            file: None,
        };
        let info: ModelInfo = self.http.get_json(&url, &ctx)?;
        // The commit becomes a folder name: it must be a plain hash.
        if !is_commit_hash(&info.sha) {
            return Err(HubError::BadResponse {
                url,
                detail: format!("commit {:?} is not a 40-digit hex hash", info.sha),
            });
        }
        Ok(info)
    }

    /// The cached snapshot for `revision`, if the cache has one (no network).
    pub fn cached_snapshot(&self, repo: &RepoId, revision: &str, filter: &FileFilter) -> Option<Snapshot> {
        validate_revision(revision).ok()?;
        let rc = RepoCache::new(&self.config.cache_dir, repo);
        let commit = rc.resolve_ref(revision)?;
        let path = rc.snapshot(&commit);
        if !path.is_dir() {
            return None;
        }
        let files: Vec<String> = snapshot_files(&path)
            .into_iter()
            .filter(|f| filter.matches(f))
            .collect();
        (!files.is_empty()).then(|| Snapshot {
            repo: repo.clone(),
            revision: revision.to_string(),
            commit,
            path,
            files,
        })
    }

    /// Pulls the files of `repo` at `revision` that `filter` selects into the
    /// cache and returns the snapshot. Files already cached are not fetched
    /// again. Offline (`HF_HUB_OFFLINE`), the cached snapshot is returned or
    /// [`HubError::Offline`] says what is missing. When the hub cannot be
    /// reached but the cache has the revision, the cache is used (logged).
    pub fn pull(
        &self,
        repo: &RepoId,
        revision: &str,
        filter: &FileFilter,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Snapshot> {
        validate_revision(revision)?;
        if self.config.offline {
            return self
                .cached_snapshot(repo, revision, filter)
                .ok_or_else(|| self.offline_err(format!("`{repo}` at revision `{revision}` ({filter})")));
        }
        let info = match self.model_info(repo, revision) {
            Ok(i) => i,
            Err(e @ HubError::Network { .. }) => {
                if let Some(s) = self.cached_snapshot(repo, revision, filter) {
                    tracing::warn!(error = %e, "hub unreachable; using the cached snapshot");
                    return Ok(s);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.pull_listed(repo, revision, &info, filter, progress)
    }

    /// [`HubClient::pull`] once the repo is listed.
    fn pull_listed(
        &self,
        repo: &RepoId,
        revision: &str,
        info: &ModelInfo,
        filter: &FileFilter,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Snapshot> {
        self.check_names(repo, info)?;
        let selected: Vec<&RepoFile> = info.files.iter().filter(|f| filter.matches(&f.name)).collect();
        if selected.is_empty() {
            return Err(HubError::EntryNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                file: format!("(nothing matches: {filter})"),
            });
        }
        self.pull_files(repo, revision, info, &selected, progress)
    }

    /// Path of one file of `repo` at `revision`, downloading it if needed.
    /// Offline, a missing file is reported as [`HubError::Offline`] naming it.
    pub fn get_file(
        &self,
        repo: &RepoId,
        revision: &str,
        file: &str,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<PathBuf> {
        validate_revision(revision)?;
        let rel = safe_relative_path(file).map_err(|reason| HubError::UnsafeFileName {
            repo: repo.to_string(),
            name: file.to_string(),
            reason,
        })?;
        if self.config.offline {
            let rc = RepoCache::new(&self.config.cache_dir, repo);
            // hf-hub reads refs/<revision> and the snapshot pointer; commits are direct.
            let found = if is_commit_hash(revision) {
                Some(rc.snapshot(revision).join(&rel)).filter(|p| p.is_file())
            } else {
                let cache = hf_hub::Cache::new(self.config.cache_dir.clone());
                cache
                    .repo(hf_hub::Repo::with_revision(
                        repo.to_string(),
                        hf_hub::RepoType::Model,
                        revision.to_string(),
                    ))
                    .get(file)
                    .filter(|p| p.is_file())
            };
            return found
                .ok_or_else(|| self.offline_err(format!("file `{file}` of `{repo}` at revision `{revision}`")));
        }
        let info = self.model_info(repo, revision)?;
        self.check_names(repo, &info)?;
        let Some(entry) = info.files.iter().find(|f| f.name == file) else {
            return Err(HubError::EntryNotFound {
                repo: repo.to_string(),
                revision: revision.to_string(),
                file: file.to_string(),
            });
        };
        let snap = self.pull_files(repo, revision, &info, &[entry], progress)?;
        Ok(snap.path.join(rel))
    }

    /// Refuses the whole listing if any name could escape the snapshot.
    fn check_names(&self, repo: &RepoId, info: &ModelInfo) -> Result<()> {
        for f in &info.files {
            safe_relative_path(&f.name).map_err(|reason| HubError::UnsafeFileName {
                repo: repo.to_string(),
                name: f.name.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    fn resolve_url(&self, repo: &RepoId, commit: &str, file: &str) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.endpoint,
            repo.url_path(),
            commit,
            encode_file_path(file)
        )
    }

    /// Blob name and size of a file: from the listing, else from a HEAD on
    /// its resolve URL (`X-Linked-Etag`/`ETag`, `X-Linked-Size`/`Content-Length`),
    /// as `huggingface_hub` does.
    fn blob_meta(&self, repo: &RepoId, commit: &str, f: &RepoFile) -> Result<(String, u64)> {
        let (hash, size) = match (f.blob_name(), f.content_size()) {
            (Some(h), Some(s)) => (h.to_string(), s),
            _ => {
                let url = self.resolve_url(repo, commit, &f.name);
                let ctx = Ctx {
                    repo: repo.to_string(),
                    revision: commit.to_string(),
                    file: Some(f.name.clone()),
                };
                self.http.with_retry(
                    |_| {
                        let r = self.http.send_opts("HEAD", &url, None, &ctx, false)?;
                        let etag = http::header(&r, "x-linked-etag")
                            .or_else(|| http::header(&r, "etag"))
                            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string());
                        let size = http::header(&r, "x-linked-size")
                            .or_else(|| http::header(&r, "content-length"))
                            .and_then(|s| s.trim().parse::<u64>().ok());
                        match (etag, size) {
                            (Some(e), Some(s)) => Ok((e, s)),
                            _ => Err(Failure::Fatal(HubError::BadResponse {
                                url: url.clone(),
                                detail: "no ETag or size in the file's headers".into(),
                            })),
                        }
                    },
                    |_, _, _| {},
                )?
            }
        };
        // The blob name becomes a file name: hex only.
        if hash.is_empty() || hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HubError::BadResponse {
                url: self.resolve_url(repo, commit, &f.name),
                detail: format!("blob id {hash:?} of `{}` is not a hex hash", f.name),
            });
        }
        Ok((hash.to_ascii_lowercase(), size))
    }

    fn pull_files(
        &self,
        repo: &RepoId,
        revision: &str,
        info: &ModelInfo,
        files: &[&RepoFile],
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Snapshot> {
        let commit = info.sha.as_str();
        let rc = RepoCache::new(&self.config.cache_dir, repo);
        let mut jobs = Vec::with_capacity(files.len());
        for f in files {
            let (hash, size) = self.blob_meta(repo, commit, f)?;
            jobs.push((f, hash, size));
        }
        let total_size: u64 = jobs.iter().map(|j| j.2).sum();
        let snapshot = rc.snapshot(commit);
        let mut done_before = 0u64;
        let mut names = Vec::with_capacity(jobs.len());
        for (index, (f, hash, size)) in jobs.iter().enumerate() {
            let rel = safe_relative_path(&f.name).map_err(|reason| HubError::UnsafeFileName {
                repo: repo.to_string(),
                name: f.name.clone(),
                reason,
            })?;
            let job = BlobJob {
                url: self.resolve_url(repo, commit, &f.name),
                file: f.name.clone(),
                hash: hash.clone(),
                size: *size,
                sha256: f.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()),
                ctx: Ctx {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    file: Some(f.name.clone()),
                },
            };
            let mut report = |phase: Phase, bytes: u64| {
                progress(&Progress {
                    file: f.name.clone(),
                    file_index: index,
                    file_count: jobs.len(),
                    file_bytes: bytes,
                    file_size: *size,
                    total_bytes: done_before + bytes,
                    total_size,
                    phase,
                })
            };
            let blob = download::fetch_blob(&self.http, &rc, &job, &mut report)?;
            let depth = rel.components().count();
            cache::link_into_snapshot(&blob, &snapshot.join(&rel), depth)?;
            report(Phase::Done, *size);
            done_before += size;
            names.push(f.name.clone());
        }
        rc.write_ref(revision, commit)?;
        names.sort();
        Ok(Snapshot {
            repo: repo.clone(),
            revision: revision.to_string(),
            commit: commit.to_string(),
            path: snapshot,
            files: names,
        })
    }

    /// Models in the local cache with their sizes.
    pub fn list_local(&self) -> Result<Vec<LocalModel>> {
        cache::list_local(&self.config.cache_dir)
    }

    /// Deletes a model from the cache; returns the bytes freed.
    pub fn remove(&self, repo: &RepoId) -> Result<u64> {
        cache::remove(&self.config.cache_dir, repo)
    }
}
