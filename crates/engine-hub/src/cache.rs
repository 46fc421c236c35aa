//! The Hugging Face cache layout, shared with Python's `huggingface_hub`:
//!
//! ```text
//! <cache>/models--org--name/blobs/<sha256 or git blob id>
//!                          /blobs/<hash>.incomplete      partial download
//!                          /snapshots/<commit>/<file>    -> ../../blobs/<hash>
//!                          /refs/<revision>              holds <commit>
//! <cache>/.locks/models--org--name/<hash>.lock           one per blob
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{HubError, Result};
use crate::repo::RepoId;

/// Paths of one repo in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    /// `<cache>/models--org--name`.
    pub root: PathBuf,
    /// `<cache>/.locks/models--org--name`.
    pub locks: PathBuf,
}

impl RepoCache {
    /// Paths for `repo` under `cache_dir`.
    pub fn new(cache_dir: &Path, repo: &RepoId) -> Self {
        let folder = repo.folder_name();
        RepoCache {
            root: cache_dir.join(&folder),
            locks: cache_dir.join(".locks").join(folder),
        }
    }
    /// The blobs folder.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// A finished blob.
    pub fn blob(&self, hash: &str) -> PathBuf {
        self.blobs().join(hash)
    }
    /// A partial blob being downloaded.
    pub fn incomplete(&self, hash: &str) -> PathBuf {
        self.blobs().join(format!("{hash}.incomplete"))
    }
    /// The lock guarding one blob's download.
    pub fn lock(&self, hash: &str) -> PathBuf {
        self.locks.join(format!("{hash}.lock"))
    }
    /// A snapshot folder.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }
    /// A ref file (revision may hold `/`, as in `refs/pr/1`).
    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    /// The commit a revision points to: a commit hash is itself, anything
    /// else is read from `refs/<revision>`.
    pub fn resolve_ref(&self, revision: &str) -> Option<String> {
        if crate::repo::is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let c = fs::read_to_string(self.ref_file(revision)).ok()?;
        let c = c.trim();
        crate::repo::is_commit_hash(c).then(|| c.to_string())
    }

    /// Points `refs/<revision>` at `commit`, atomically (temporary + rename).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.ref_file(revision);
        if fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
        let tmp = dir.join(format!(".{}.tmp{}", file_name(&path), unique()));
        let mut f = fs::File::create(&tmp).map_err(|e| HubError::io(&tmp, e))?;
        // No trailing newline: `huggingface_hub` writes the bare hash.
        f.write_all(commit.as_bytes()).map_err(|e| HubError::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| HubError::io(&path, e))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A name unique within this machine for temporary files.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Makes `link` (inside a snapshot) point at `blob`, replacing whatever was
/// there atomically: a relative symlink on Unix, like `huggingface_hub`;
/// elsewhere a copy made under a temporary name.
pub(crate) fn link_into_snapshot(blob: &Path, link: &Path, depth: usize) -> Result<()> {
    let dir = link
        .parent()
        .ok_or_else(|| HubError::io(link, std::io::Error::other("no parent folder")))?;
    fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    let tmp = dir.join(format!(".{}.tmp{}", file_name(link), unique()));
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<a>/<b> up to the repo folder: depth + 1 levels.
        let mut target = PathBuf::new();
        for _ in 0..depth + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| HubError::io(&tmp, e))?;
    }
    #[cfg(not(unix))]
    {
        let _ = depth;
        fs::copy(blob, &tmp).map_err(|e| HubError::io(&tmp, e))?;
    }
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        HubError::io(link, e)
    })
}

/// A model found in the local cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalModel {
    /// Repo id.
    pub repo: RepoId,
    /// Revisions known locally: refs (`main`, …) and bare snapshot commits.
    pub revisions: Vec<LocalRevision>,
    /// Bytes on disk: finished blobs plus partial downloads.
    pub size_bytes: u64,
    /// Bytes held by `.incomplete` partial downloads.
    pub incomplete_bytes: u64,
    /// The repo folder.
    pub path: PathBuf,
}

/// A revision in the local cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalRevision {
    /// Ref name (`main`) or, for a snapshot no ref points to, the commit.
    pub name: String,
    /// Commit hash.
    pub commit: String,
    /// The snapshot folder.
    pub path: PathBuf,
    /// Files in the snapshot (relative paths), sorted.
    pub files: Vec<String>,
}

/// Lists every model repo in `cache_dir`, sorted by id. A missing cache
/// folder is an empty list.
pub fn list_local(cache_dir: &Path) -> Result<Vec<LocalModel>> {
    let entries = match fs::read_dir(cache_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HubError::io(cache_dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(repo) = RepoId::from_folder_name(&name) else {
            continue;
        };
        if !entry.path().is_dir() {
            continue;
        }
        out.push(local_model(cache_dir, repo)?);
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

/// Describes one cached repo.
pub fn local_model(cache_dir: &Path, repo: RepoId) -> Result<LocalModel> {
    let rc = RepoCache::new(cache_dir, &repo);
    let (mut size, mut incomplete) = (0u64, 0u64);
    if let Ok(blobs) = fs::read_dir(rc.blobs()) {
        for b in blobs.flatten() {
            let Ok(meta) = b.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            size += meta.len();
            if b.file_name().to_string_lossy().ends_with(".incomplete") {
                incomplete += meta.len();
            }
        }
    }
    let mut revisions = Vec::new();
    let mut referenced = std::collections::HashSet::new();
    let refs_dir = rc.root.join("refs");
    for (name, commit) in walk_refs(&refs_dir, &refs_dir) {
        referenced.insert(commit.clone());
        let path = rc.snapshot(&commit);
        if path.is_dir() {
            revisions.push(LocalRevision {
                files: snapshot_files(&path),
                name,
                commit,
                path,
            });
        }
    }
    if let Ok(snaps) = fs::read_dir(rc.root.join("snapshots")) {
        for s in snaps.flatten() {
            let commit = s.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&commit) && s.path().is_dir() {
                revisions.push(LocalRevision {
                    name: commit.clone(),
                    files: snapshot_files(&s.path()),
                    commit,
                    path: s.path(),
                });
            }
        }
    }
    revisions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(LocalModel {
        repo,
        revisions,
        size_bytes: size,
        incomplete_bytes: incomplete,
        path: rc.root,
    })
}

fn walk_refs(base: &Path, dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_refs(base, &p));
        } else if let Ok(c) = fs::read_to_string(&p) {
            let c = c.trim();
            let name = p.strip_prefix(base).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            if crate::repo::is_commit_hash(c) && !name.contains(".tmp") {
                out.push((name, c.to_string()));
            }
        }
    }
    out
}

/// Relative paths of the files in a snapshot (following links), sorted.
/// Temporary link names are skipped.
pub fn snapshot_files(snapshot: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp") {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.is_file() {
                out.push(p.strip_prefix(base).unwrap_or(&p).to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(snapshot, snapshot, &mut out);
    out.sort();
    out
}

/// Deletes a repo's folder and its lock folder; returns bytes freed.
pub fn remove(cache_dir: &Path, repo: &RepoId) -> Result<u64> {
    let rc = RepoCache::new(cache_dir, repo);
    if !rc.root.is_dir() {
        return Err(HubError::NotInCache {
            repo: repo.to_string(),
            cache: cache_dir.to_path_buf(),
        });
    }
    let size = local_model(cache_dir, repo.clone())?.size_bytes;
    fs::remove_dir_all(&rc.root).map_err(|e| HubError::io(&rc.root, e))?;
    if rc.locks.is_dir() {
        // Lock files may be held by a running pull; losing them is harmless.
        let _ = fs::remove_dir_all(&rc.locks);
    }
    Ok(size)
}
