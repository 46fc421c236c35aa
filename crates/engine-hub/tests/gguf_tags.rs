//! Ollama-style `org/repo:TAG` references against a real HTTP hub on
//! 127.0.0.1: the tag picks one `.gguf` file, only that file is downloaded,
//! a missing tag lists the repo's tags, and a cached pick resolves offline.

mod common;

use std::path::Path;

use common::*;
use engine_hub::test_hub::TestHub;
use engine_hub::{FileFilter, GgufError, HubClient, HubError, ModelRef};

const GGUF_REPO: &str = "bartowski/Tiny-GGUF";

/// A GGUF-only repo with three quants, a projector and a README.
fn make_gguf_repo(root: &Path) {
    let dir = root.join(GGUF_REPO);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (name, len)) in [
        ("Tiny-Q4_K_M.gguf", 4_000),
        ("Tiny-Q5_K_M.gguf", 5_000),
        ("Tiny-Q8_0.gguf", 8_000),
        ("mmproj-Tiny-f16.gguf", 1_000),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = b"GGUF".to_vec();
        body.extend(bytes(len, 10 + i as u64));
        std::fs::write(dir.join(name), body).unwrap();
    }
    std::fs::write(dir.join("README.md"), b"# Tiny\n").unwrap();
}

struct GgufEnv {
    env: Env,
}

impl GgufEnv {
    fn new() -> GgufEnv {
        let env = Env::new();
        make_gguf_repo(&env.tmp.path().join("hub"));
        GgufEnv { env }
    }
    fn hub(&self) -> &TestHub {
        &self.env.hub
    }
    fn src(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.env.tmp.path().join("hub").join(GGUF_REPO).join(file)).unwrap()
    }
    fn pull(&self, client: &HubClient, reference: &str) -> Result<std::path::PathBuf, GgufError> {
        let r = ModelRef::parse(reference).unwrap();
        client.pull_ref(&r, "main", &FileFilter::all(), &mut ignore)
    }
    /// Files downloaded (resolve and CDN `GET`s with a body).
    fn downloads(&self) -> Vec<String> {
        self.hub()
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && !r.target.starts_with("/api/") && r.status < 300)
            .map(|r| r.target)
            .collect()
    }
}

#[test]
fn a_tag_downloads_exactly_its_file() {
    let g = GgufEnv::new();
    let client = g.env.client();
    let path = g.pull(&client, "hf.co/bartowski/Tiny-GGUF:q8_0").unwrap();
    assert!(path.ends_with("Tiny-Q8_0.gguf"), "{}", path.display());
    assert_eq!(std::fs::read(&path).unwrap(), g.src("Tiny-Q8_0.gguf"));
    let snapshot = path.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(snapshot)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["Tiny-Q8_0.gguf"]);
    let got = g.downloads();
    assert_eq!(got.len(), 1, "{got:?}");
    let api: Vec<_> = g
        .hub()
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/api/"))
        .collect();
    assert_eq!(api.len(), 1, "the repo is listed once: {api:?}");
}

#[test]
fn without_a_tag_a_gguf_only_repo_gets_its_default() {
    let g = GgufEnv::new();
    let path = g.pull(&g.env.client(), GGUF_REPO).unwrap();
    assert!(path.ends_with("Tiny-Q4_K_M.gguf"), "{}", path.display());
    assert_eq!(g.downloads().len(), 1);
    // A repo with safetensors weights is still pulled as a folder.
    let path = g.pull(&g.env.client(), REPO).unwrap();
    assert!(path.is_dir());
    assert!(path.join(WEIGHTS).is_file());
}

#[test]
fn a_missing_tag_lists_the_tags_the_repo_has() {
    let g = GgufEnv::new();
    let e = g.pull(&g.env.client(), "bartowski/Tiny-GGUF:Q3_K_S").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the repo `bartowski/Tiny-GGUF` has no Q3_K_S file; it has: Q4_K_M, Q5_K_M, Q8_0; \
         pick one of those, e.g. `bartowski/Tiny-GGUF:Q4_K_M`"
    );
    assert!(g.downloads().is_empty());
    // A tag on a repo without GGUF files says so.
    let e = g.pull(&g.env.client(), "org/model:Q4_K_M").unwrap_err();
    assert!(matches!(e, GgufError::NoGguf { .. }), "{e}");
    // A repo that does not exist is the hub's own error.
    let e = g.pull(&g.env.client(), "org/absent:Q4_K_M").unwrap_err();
    assert!(matches!(e, GgufError::Hub(HubError::RepoNotFound { .. })), "{e}");
}

#[test]
fn a_cached_pick_resolves_offline() {
    let g = GgufEnv::new();
    let online = g.pull(&g.env.client(), "bartowski/Tiny-GGUF:Q5_K_M").unwrap();
    g.hub().clear_requests();
    let mut cfg = g.env.config();
    cfg.offline = true;
    let offline = HubClient::new(cfg);
    assert_eq!(g.pull(&offline, "bartowski/Tiny-GGUF:q5_k_m").unwrap(), online);
    // Without a tag, the cached GGUF is the default.
    assert_eq!(g.pull(&offline, "hf.co/bartowski/Tiny-GGUF").unwrap(), online);
    let e = g.pull(&offline, "bartowski/Tiny-GGUF:Q8_0").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GgufError::Hub(HubError::Offline { .. })), "{msg}");
    assert!(msg.contains("Q8_0") && msg.contains("the cache has: Q5_K_M"), "{msg}");
    assert!(g.hub().requests().is_empty(), "offline reached the hub");
    // Nothing cached at all: the error names what is missing.
    let mut cfg = fast_config(g.hub().url(), &g.env.tmp.path().join("empty-cache"));
    cfg.offline = true;
    let msg = g
        .pull(&HubClient::new(cfg), "bartowski/Tiny-GGUF:Q8_0")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("offline mode") && msg.contains("a Q8_0 GGUF file of `bartowski/Tiny-GGUF`"),
        "{msg}"
    );
    assert!(g.hub().requests().is_empty(), "offline reached the hub");
    // An unreachable hub falls back to the cache too.
    let mut cfg = fast_config("http://127.0.0.1:9", &g.env.cache());
    cfg.retry.max_attempts = 1;
    assert_eq!(
        g.pull(&HubClient::new(cfg), "bartowski/Tiny-GGUF:Q5_K_M").unwrap(),
        online
    );
}
