//! Search, model info and input validation against the test hub.

mod common;

use common::*;
use engine_hub::test_hub::{ModelMeta, TestHub};
use engine_hub::{FileFilter, HubClient, HubError, RepoId, SearchQuery, SortBy};

fn meta(downloads: u64, likes: u64, lib: &str, pipeline: &str, modified: &str) -> ModelMeta {
    ModelMeta {
        downloads,
        likes,
        tags: vec![lib.into()],
        pipeline_tag: Some(pipeline.into()),
        library_name: Some(lib.into()),
        last_modified: Some(modified.into()),
    }
}

#[test]
fn search_filters_sorts_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hub");
    for id in [
        "mlx-community/llama-4bit",
        "mlx-community/qwen-embed",
        "other/llama-gguf",
    ] {
        std::fs::create_dir_all(root.join(id)).unwrap();
        std::fs::write(root.join(id).join("config.json"), b"{}").unwrap();
    }
    let hub = TestHub::serve(&root).unwrap();
    hub.set_meta(
        "mlx-community/llama-4bit",
        meta(100, 5, "mlx", "text-generation", "2024-03-01T00:00:00.000Z"),
    );
    hub.set_meta(
        "mlx-community/qwen-embed",
        meta(300, 1, "mlx", "feature-extraction", "2024-05-01T00:00:00.000Z"),
    );
    hub.set_meta(
        "other/llama-gguf",
        meta(50, 9, "gguf", "text-generation", "2024-01-01T00:00:00.000Z"),
    );
    let client = HubClient::new(fast_config(hub.url(), &tmp.path().join("cache")));
    let ids = |q: SearchQuery| client.search(&q).unwrap().into_iter().map(|m| m.id).collect::<Vec<_>>();

    assert_eq!(
        ids(SearchQuery {
            text: Some("LLAMA".into()),
            sort: Some(SortBy::Downloads),
            ..Default::default()
        }),
        ["mlx-community/llama-4bit", "other/llama-gguf"]
    );
    assert_eq!(
        ids(SearchQuery {
            library: Some("mlx".into()),
            sort: Some(SortBy::Downloads),
            ..Default::default()
        }),
        ["mlx-community/qwen-embed", "mlx-community/llama-4bit"]
    );
    assert_eq!(
        ids(SearchQuery {
            sort: Some(SortBy::Likes),
            limit: Some(1),
            ..Default::default()
        }),
        ["other/llama-gguf"]
    );
    assert_eq!(
        ids(SearchQuery {
            sort: Some(SortBy::Recent),
            limit: Some(1),
            ..Default::default()
        }),
        ["mlx-community/qwen-embed"]
    );
    assert_eq!(
        ids(SearchQuery {
            author: Some("other".into()),
            ..Default::default()
        }),
        ["other/llama-gguf"]
    );
    assert_eq!(
        ids(SearchQuery {
            pipeline_tag: Some("feature-extraction".into()),
            ..Default::default()
        }),
        ["mlx-community/qwen-embed"]
    );
    let hit = &client
        .search(&SearchQuery {
            text: Some("qwen".into()),
            ..Default::default()
        })
        .unwrap()[0];
    assert_eq!(
        (hit.downloads, hit.likes, hit.author.as_deref()),
        (300, 1, Some("mlx-community"))
    );
    assert_eq!(hit.library_name.as_deref(), Some("mlx"));
}

#[test]
fn model_info_lists_sizes_and_lfs_hashes() {
    let env = Env::new();
    let info = env.client().model_info(&repo(), "main").unwrap();
    assert_eq!(info.sha, env.hub.commit_of(REPO).unwrap());
    let w = info.files.iter().find(|f| f.name == WEIGHTS).unwrap();
    let lfs = w.lfs.as_ref().unwrap();
    assert_eq!(lfs.sha256, engine_hub::sha256_file(&env.src.join(WEIGHTS)).unwrap());
    assert_eq!(lfs.size, WEIGHTS_SIZE as u64);
    let c = info.files.iter().find(|f| f.name == "config.json").unwrap();
    assert!(c.lfs.is_none());
    assert_eq!(
        c.size,
        Some(std::fs::metadata(env.src.join("config.json")).unwrap().len())
    );
    assert_eq!(info.library_name.as_deref(), Some("safetensors"));
    let by_commit = env.client().model_info(&repo(), &info.sha).unwrap();
    assert_eq!(by_commit.files, info.files);
}

#[test]
fn unknown_repos_revisions_and_files_are_named() {
    let env = Env::new();
    let client = env.client();
    let err = client
        .model_info(&RepoId::parse("org/nope").unwrap(), "main")
        .unwrap_err();
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{err:?}");
    let err = client.model_info(&repo(), "v9").unwrap_err();
    assert!(matches!(err, HubError::RevisionNotFound { .. }), "{err:?}");
    let err = client.get_file(&repo(), "main", "nope.json", &mut ignore).unwrap_err();
    assert!(matches!(err, HubError::EntryNotFound { .. }), "{err:?}");
    let err = client
        .pull(&repo(), "main", &FileFilter::allow(["*.gguf"]), &mut ignore)
        .unwrap_err();
    assert!(matches!(err, HubError::EntryNotFound { .. }), "{err:?}");
}

#[test]
fn malformed_ids_and_revisions_are_refused_before_any_request() {
    let env = Env::new();
    let client = env.client();
    for bad in ["../etc", "a/b/c", "org/name--x", "org/ name"] {
        assert!(
            matches!(RepoId::parse(bad), Err(HubError::InvalidRepoId { .. })),
            "{bad}"
        );
    }
    for bad in ["../main", "/abs", "a b", "x\n"] {
        let err = client.pull(&repo(), bad, &FileFilter::all(), &mut ignore).unwrap_err();
        assert!(matches!(err, HubError::InvalidRevision { .. }), "{bad}: {err:?}");
    }
    assert!(matches!(
        client.get_file(&repo(), "main", "../x", &mut ignore),
        Err(HubError::UnsafeFileName { .. })
    ));
    assert!(env.hub.requests().is_empty());
}
