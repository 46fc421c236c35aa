//! `InferenceEngine::resolve` with Ollama-style references against a
//! loopback test hub (`engine_hub::test_hub`): `org/repo:TAG` downloads
//! exactly the one `.gguf` file the tag names, and resolves offline once
//! cached.
#![cfg(feature = "hub")]

use engine_hub::test_hub::TestHub;
use engine_hub::{HubClient, HubConfig};
use mlxengine::{Error, InferenceEngine, ModelType};

const REPO: &str = "bartowski/Tiny-GGUF";
const FILES: &[&str] = &["Tiny-Q4_K_M.gguf", "Tiny-Q6_K.gguf", "Tiny-Q8_0.gguf"];

/// A temp folder holding the served repo (`hub/`) and the cache (`cache/`).
fn fixture() -> (tempfile::TempDir, TestHub) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let repo = tmp.path().join("hub").join(REPO);
    std::fs::create_dir_all(&repo).expect("repo dir");
    for (i, f) in FILES.iter().enumerate() {
        std::fs::write(repo.join(f), format!("GGUF fake {f}").repeat(100 * (i + 1))).expect("write");
    }
    let hub = TestHub::serve(tmp.path().join("hub")).expect("start the test hub");
    (tmp, hub)
}

fn engine(hub: &TestHub, tmp: &tempfile::TempDir, offline: bool) -> InferenceEngine {
    let mut config = HubConfig::new(hub.url(), tmp.path().join("cache"));
    config.offline = offline;
    InferenceEngine::with_hub(HubClient::new(config))
}

/// Files in the cache's snapshot folders.
fn cached_files(tmp: &tempfile::TempDir) -> Vec<String> {
    let snapshots = tmp.path().join("cache/models--bartowski--Tiny-GGUF/snapshots");
    let mut out = Vec::new();
    for commit in std::fs::read_dir(snapshots).expect("snapshots") {
        for f in std::fs::read_dir(commit.expect("entry").path()).expect("snapshot") {
            out.push(f.expect("entry").file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn a_tagged_reference_resolves_to_exactly_one_downloaded_file() {
    let (tmp, hub) = fixture();
    let online = engine(&hub, &tmp, false);
    let mut downloads = Vec::new();
    let path = online
        .resolve("bartowski/Tiny-GGUF:q6_k", ModelType::Llm, &mut |p| {
            if let mlxengine::Progress::Download { file, .. } = p {
                downloads.push(file);
            }
        })
        .expect("resolve");
    assert!(path.is_file() && path.ends_with("Tiny-Q6_K.gguf"), "{}", path.display());
    let served = tmp.path().join("hub").join(REPO).join("Tiny-Q6_K.gguf");
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(served).unwrap());
    assert_eq!(cached_files(&tmp), ["Tiny-Q6_K.gguf"]);
    downloads.dedup();
    assert_eq!(downloads, ["Tiny-Q6_K.gguf"]);
    let bodies: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.starts_with("/cdn-lfs/"))
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");

    // Cached, it resolves offline, with or without the hf.co prefix.
    hub.clear_requests();
    let offline = engine(&hub, &tmp, true);
    for model in ["bartowski/Tiny-GGUF:Q6_K", "hf.co/bartowski/Tiny-GGUF:Q6_K"] {
        assert_eq!(offline.resolve(model, ModelType::Llm, &mut |_| {}).expect(model), path);
    }
    assert!(hub.requests().is_empty(), "offline reached the hub");
}

#[test]
fn an_unknown_tag_lists_the_repos_tags_and_downloads_nothing() {
    let (tmp, hub) = fixture();
    let e = engine(&hub, &tmp, false)
        .resolve("hf.co/bartowski/Tiny-GGUF:Q3_K_S", ModelType::Llm, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Gguf(_)), "{e:?}");
    assert!(
        e.to_string().contains("has no Q3_K_S file; it has: Q4_K_M, Q6_K, Q8_0"),
        "{e}"
    );
    assert!(!tmp.path().join("cache/models--bartowski--Tiny-GGUF/snapshots").exists());
    // Without a tag, the GGUF-only repo gets its default quant.
    let path = engine(&hub, &tmp, false)
        .resolve(REPO, ModelType::Llm, &mut |_| {})
        .expect("resolve");
    assert!(path.ends_with("Tiny-Q4_K_M.gguf"), "{}", path.display());
    // A missing local `.gguf` is still a path, never a hub lookup.
    hub.clear_requests();
    let e = engine(&hub, &tmp, false)
        .resolve("Tiny-Q4_K_M.gguf", ModelType::Llm, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchPath(_)), "{e:?}");
    assert!(hub.requests().is_empty());
}
