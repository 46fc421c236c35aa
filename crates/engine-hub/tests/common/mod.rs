//! Shared fixtures: a repo folder with real files and a client pointed at a
//! test hub with fast retries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use engine_hub::test_hub::TestHub;
use engine_hub::{HubClient, HubConfig, Progress, RepoId, RetryPolicy};

pub const REPO: &str = "org/model";
pub const WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_SIZE: usize = 3 << 20;

/// Deterministic incompressible bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// `root/org/model` with configs, a tokenizer, LFS weights, a PyTorch
/// duplicate and a nested file.
pub fn make_repo(root: &Path) -> PathBuf {
    let dir = root.join(REPO);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type":"llama","hidden_size":64}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), bytes(20_000, 1)).unwrap();
    std::fs::write(dir.join(WEIGHTS), bytes(WEIGHTS_SIZE, 2)).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), bytes(50_000, 3)).unwrap();
    std::fs::write(dir.join("sub").join("notes.txt"), b"nested file\n").unwrap();
    dir
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub hub: TestHub,
    pub src: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let src = make_repo(&tmp.path().join("hub"));
        let hub = TestHub::serve(tmp.path().join("hub")).unwrap();
        Env { tmp, hub, src }
    }
    pub fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
    pub fn config(&self) -> HubConfig {
        fast_config(self.hub.url(), &self.cache())
    }
    pub fn client(&self) -> HubClient {
        HubClient::new(self.config())
    }
}

pub fn fast_config(endpoint: &str, cache: &Path) -> HubConfig {
    let mut c = HubConfig::new(endpoint, cache);
    c.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(5),
    };
    c.read_timeout = Duration::from_secs(5);
    c
}

pub fn repo() -> RepoId {
    RepoId::parse(REPO).unwrap()
}

pub fn ignore(_: &Progress) {}

/// Body bytes the hub sent for the LFS weights (`/cdn-lfs/` requests).
pub fn weight_bytes_served(hub: &TestHub) -> u64 {
    hub.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.target.starts_with("/cdn-lfs/"))
        .map(|r| r.body_bytes)
        .sum()
}

/// Every path under `dir` (recursively), symlinks not followed.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
        }
    }
    out
}
