//! Pull behaviour against a real HTTP hub on 127.0.0.1 with injected faults.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use engine_core::ModelType;
use engine_hub::test_hub::{Faults, TestHub};
use engine_hub::{sha256_file, FileFilter, HubClient, HubError, Phase, Progress, RepoCache};

#[test]
fn pull_writes_the_hf_cache_layout_and_reuses_it() {
    let env = Env::new();
    let client = env.client();
    let snap = client.pull(&repo(), "main", &FileFilter::all(), &mut ignore).unwrap();
    let commit = env.hub.commit_of(REPO).unwrap();
    assert_eq!(snap.commit, commit);
    assert_eq!(
        snap.path,
        env.cache().join("models--org--model/snapshots").join(&commit)
    );
    assert_eq!(
        snap.files,
        [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "sub/notes.txt",
            "tokenizer.json"
        ]
    );
    for f in &snap.files {
        assert_eq!(
            std::fs::read(snap.path.join(f)).unwrap(),
            std::fs::read(env.src.join(f)).unwrap(),
            "{f}"
        );
    }
    // LFS blobs are named by sha256, the rest by git blob id; links are relative.
    let sha = sha256_file(&env.src.join(WEIGHTS)).unwrap();
    let link = std::fs::read_link(snap.path.join(WEIGHTS)).unwrap();
    assert_eq!(link, std::path::Path::new("../../blobs").join(&sha));
    let nested = std::fs::read_link(snap.path.join("sub/notes.txt")).unwrap();
    assert!(nested.starts_with("../../../blobs/"), "{nested:?}");
    let git_id = nested.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(git_id.len(), 40);
    assert_eq!(
        std::fs::read_to_string(env.cache().join("models--org--model/refs/main")).unwrap(),
        commit
    );
    assert!(walk(&env.cache())
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".incomplete")));

    let local = client.list_local().unwrap();
    assert_eq!(local.len(), 1);
    let expected: u64 = snap
        .files
        .iter()
        .map(|f| std::fs::metadata(env.src.join(f)).unwrap().len())
        .sum();
    assert_eq!(local[0].size_bytes, expected);
    assert_eq!(local[0].revisions[0].name, "main");
    assert_eq!(local[0].revisions[0].commit, commit);

    // A second pull fetches no content: every file reports Cached.
    env.hub.clear_requests();
    let mut phases = Vec::new();
    client
        .pull(&repo(), "main", &FileFilter::all(), &mut |p: &Progress| {
            phases.push(p.phase.clone())
        })
        .unwrap();
    assert!(
        env.hub.requests().iter().all(|r| r.target.starts_with("/api/")),
        "{:?}",
        env.hub.requests()
    );
    assert_eq!(phases.iter().filter(|p| **p == Phase::Cached).count(), 5);

    assert_eq!(client.remove(&repo()).unwrap(), expected);
    assert!(client.list_local().unwrap().is_empty());
    assert!(matches!(client.remove(&repo()), Err(HubError::NotInCache { .. })));
}

#[test]
fn filter_pulls_only_what_the_model_type_needs() {
    let env = Env::new();
    let snap = env
        .client()
        .pull(
            &repo(),
            "main",
            &FileFilter::for_model_type(ModelType::Llm),
            &mut ignore,
        )
        .unwrap();
    assert_eq!(
        snap.files,
        ["config.json", "model.safetensors", "sub/notes.txt", "tokenizer.json"]
    );
    assert!(!env
        .hub
        .requests()
        .iter()
        .any(|r| r.target.contains("pytorch_model.bin")));
}

#[test]
fn interrupted_download_resumes_with_range_and_ends_identical() {
    let env = Env::new();
    let cut = 1_000_000u64;
    env.hub.set_faults(Faults {
        drop_at: Some(cut),
        drop_times: 1,
        ..Default::default()
    });
    let snap = env
        .client()
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut ignore)
        .unwrap();
    assert_eq!(
        std::fs::read(snap.path.join(WEIGHTS)).unwrap(),
        std::fs::read(env.src.join(WEIGHTS)).unwrap()
    );
    let gets: Vec<_> = env
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/cdn-lfs/"))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[0].body_bytes, cut);
    assert_eq!(gets[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    // Resumed, not restarted: the file crossed the wire exactly once.
    assert_eq!(weight_bytes_served(&env.hub), WEIGHTS_SIZE as u64);
}

#[test]
fn cancelled_pull_keeps_the_partial_file_hidden_and_the_next_pull_resumes() {
    let env = Env::new();
    env.hub.set_faults(Faults {
        trickle_bytes_per_sec: Some(4 << 20),
        ..Default::default()
    });
    let client = env.client();
    let cancel = client.cancel_flag();
    let err = client
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut |p: &Progress| {
            if matches!(p.phase, Phase::Downloading { .. }) && p.file_bytes > 0 {
                cancel.cancel();
            }
        })
        .unwrap_err();
    let HubError::Cancelled { partial: Some(partial) } = err else {
        panic!("{err:?}")
    };
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < WEIGHTS_SIZE as u64, "{kept}");
    assert!(partial.to_string_lossy().ends_with(".incomplete"));
    let snaps = env.cache().join("models--org--model/snapshots");
    assert!(
        walk(&snaps).iter().all(|p| !p.ends_with(WEIGHTS)),
        "partial file visible in snapshots"
    );

    cancel.reset();
    env.hub.set_faults(Faults::default());
    env.hub.clear_requests();
    let snap = client
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut ignore)
        .unwrap();
    let gets: Vec<_> = env
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/cdn-lfs/"))
        .collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].range.as_deref(), Some(format!("bytes={kept}-").as_str()));
    assert_eq!(gets[0].body_bytes, WEIGHTS_SIZE as u64 - kept);
    assert_eq!(
        std::fs::read(snap.path.join(WEIGHTS)).unwrap(),
        std::fs::read(env.src.join(WEIGHTS)).unwrap()
    );
    assert!(!partial.exists());
}

#[test]
fn corrupted_bytes_are_detected_and_fetched_again() {
    let env = Env::new();
    env.hub.set_faults(Faults {
        corrupt_at: Some(123_456),
        corrupt_times: 1,
        ..Default::default()
    });
    let mut verify_failures = 0;
    let snap = env
        .client()
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut |p: &Progress| {
            if let Phase::Retrying { reason, .. } = &p.phase {
                assert!(reason.contains("sha256"), "{reason}");
                verify_failures += 1;
            }
        })
        .unwrap();
    assert_eq!(verify_failures, 1);
    assert_eq!(
        std::fs::read(snap.path.join(WEIGHTS)).unwrap(),
        std::fs::read(env.src.join(WEIGHTS)).unwrap()
    );
    assert_eq!(weight_bytes_served(&env.hub), 2 * WEIGHTS_SIZE as u64);
}

#[test]
fn persistent_corruption_fails_and_leaves_nothing_visible() {
    let env = Env::new();
    env.hub.set_faults(Faults {
        corrupt_at: Some(7),
        corrupt_times: 100,
        ..Default::default()
    });
    let err = env
        .client()
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut ignore)
        .unwrap_err();
    assert!(matches!(err, HubError::Verification { attempts: 4, .. }), "{err:?}");
    let all = walk(&env.cache());
    assert!(all.iter().all(|p| !p.ends_with(WEIGHTS)), "{all:?}");
    let sha = sha256_file(&env.src.join(WEIGHTS)).unwrap();
    let rc = RepoCache::new(&env.cache(), &repo());
    assert!(!rc.blob(&sha).exists() && !rc.incomplete(&sha).exists());
}

#[test]
fn rate_limit_honours_retry_after() {
    let env = Env::new();
    env.hub.set_faults(Faults {
        status_429_times: 1,
        retry_after_secs: 1,
        ..Default::default()
    });
    let mut delays = Vec::new();
    let t = Instant::now();
    env.client()
        .pull(
            &repo(),
            "main",
            &FileFilter::allow(["config.json"]),
            &mut |p: &Progress| {
                if let Phase::Retrying { delay, .. } = p.phase {
                    delays.push(delay);
                }
            },
        )
        .unwrap();
    assert_eq!(delays, [Duration::from_secs(1)]);
    assert!(t.elapsed() >= Duration::from_secs(1));
    let statuses: Vec<u16> = env
        .hub
        .requests()
        .iter()
        .filter(|r| r.target.contains("/resolve/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
}

#[test]
fn server_errors_are_retried_then_reported() {
    let env = Env::new();
    env.hub.set_faults(Faults {
        status_500_times: 2,
        ..Default::default()
    });
    env.client()
        .pull(&repo(), "main", &FileFilter::allow(["config.json"]), &mut ignore)
        .unwrap();

    let env = Env::new();
    env.hub.set_faults(Faults {
        status_500_times: 100,
        ..Default::default()
    });
    let err = env
        .client()
        .pull(&repo(), "main", &FileFilter::allow(["config.json"]), &mut ignore)
        .unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Http {
                status: 500,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn slow_trickle_completes_with_steady_progress_and_no_partial_file_visible() {
    let env = Env::new();
    // ~0.75 s for the weights, with one dropped connection on the way.
    env.hub.set_faults(Faults {
        trickle_bytes_per_sec: Some(4 << 20),
        drop_at: Some(2_000_000),
        drop_times: 1,
        ..Default::default()
    });
    let snaps = env.cache().join("models--org--model/snapshots");
    let expected = std::fs::read(env.src.join(WEIGHTS)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // A watcher looks at the snapshot folder throughout the pull: whatever it
    // sees under the weights' name must be the whole, correct file.
    let watcher = {
        let (stop, snaps, expected) = (stop.clone(), snaps.clone(), expected.clone());
        std::thread::spawn(move || {
            let mut seen_partial = 0;
            while !stop.load(Ordering::SeqCst) {
                for p in walk(&snaps) {
                    if p.ends_with(WEIGHTS) {
                        if let Ok(b) = std::fs::read(&p) {
                            if b != expected {
                                seen_partial += 1;
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen_partial
        })
    };
    let mut reports = Vec::new();
    env.client()
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut |p: &Progress| {
            if matches!(p.phase, Phase::Downloading { .. }) {
                reports.push(p.file_bytes);
            }
        })
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(watcher.join().unwrap(), 0);
    assert!(reports.len() >= 5, "{reports:?}");
    assert_eq!(reports.last(), Some(&(WEIGHTS_SIZE as u64)));
    assert_eq!(
        std::fs::read(snaps.join(env.hub.commit_of(REPO).unwrap()).join(WEIGHTS)).unwrap(),
        expected
    );
}

#[test]
fn two_processes_pulling_the_same_repo_end_with_one_good_copy() {
    let env = Env::new();
    // Slow enough that both processes are downloading at the same time.
    env.hub.set_faults(Faults {
        trickle_bytes_per_sec: Some(6 << 20),
        ..Default::default()
    });
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hub-pull"))
            .args(["--quiet", REPO])
            .env("HF_ENDPOINT", env.hub.url())
            .env("HF_HUB_CACHE", env.cache())
            .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(a.stdout, b.stdout, "both name the same snapshot");
    // The lock made the second process wait and reuse the first one's blobs:
    // each LFS file (weights and the PyTorch file) crossed the wire once.
    let lfs_total = WEIGHTS_SIZE as u64 + std::fs::metadata(env.src.join("pytorch_model.bin")).unwrap().len();
    assert_eq!(weight_bytes_served(&env.hub), lfs_total);
    let blobs: Vec<_> = std::fs::read_dir(env.cache().join("models--org--model/blobs"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(blobs.len(), 5, "{blobs:?}");
    let snap = std::path::PathBuf::from(String::from_utf8_lossy(&a.stdout).trim());
    for f in ["config.json", WEIGHTS, "sub/notes.txt"] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(env.src.join(f)).unwrap()
        );
    }
}

#[test]
fn traversal_names_from_the_hub_are_refused() {
    for name in ["../../escape", "/tmp/abs-escape", "a/../../escape", "..", "sub//x"] {
        let env = Env::new();
        env.hub.set_faults(Faults {
            extra_names: vec![name.to_string()],
            ..Default::default()
        });
        let err = env
            .client()
            .pull(&repo(), "main", &FileFilter::all(), &mut ignore)
            .unwrap_err();
        assert!(
            matches!(&err, HubError::UnsafeFileName { name: n, .. } if n == name),
            "{name}: {err:?}"
        );
        assert!(!env.cache().join("models--org--model/snapshots").exists(), "{name}");
        assert!(walk(env.tmp.path())
            .iter()
            .all(|p| !p.ends_with("escape") && !p.ends_with("abs-escape")));
        assert!(env.hub.requests().iter().all(|r| !r.target.contains("/resolve/")));
    }
}

#[test]
fn offline_mode_uses_the_cache_and_says_what_is_missing() {
    let env = Env::new();
    let online = env.client();
    let snap = online
        .pull(&repo(), "main", &FileFilter::allow(["*.json"]), &mut ignore)
        .unwrap();
    let mut cfg = env.config();
    cfg.offline = true;
    let offline = HubClient::new(cfg);
    env.hub.clear_requests();

    let again = offline
        .pull(&repo(), "main", &FileFilter::allow(["*.json"]), &mut ignore)
        .unwrap();
    assert_eq!(again.path, snap.path);
    assert_eq!(again.files, ["config.json", "tokenizer.json"]);
    let by_commit = offline
        .pull(&repo(), &snap.commit, &FileFilter::all(), &mut ignore)
        .unwrap();
    assert_eq!(by_commit.path, snap.path);
    assert_eq!(
        offline.get_file(&repo(), "main", "config.json", &mut ignore).unwrap(),
        snap.path.join("config.json")
    );

    let missing = offline.get_file(&repo(), "main", WEIGHTS, &mut ignore).unwrap_err();
    assert!(matches!(missing, HubError::Offline { .. }));
    assert!(
        missing.to_string().contains(WEIGHTS) && missing.to_string().contains("HF_HUB_OFFLINE"),
        "{missing}"
    );
    let other = engine_hub::RepoId::parse("org/other").unwrap();
    let err = offline
        .pull(&other, "main", &FileFilter::all(), &mut ignore)
        .unwrap_err();
    assert!(
        matches!(err, HubError::Offline { .. }) && err.to_string().contains("org/other"),
        "{err}"
    );
    assert!(matches!(
        offline.search(&Default::default()),
        Err(HubError::Offline { .. })
    ));
    assert!(matches!(
        offline.model_info(&repo(), "main"),
        Err(HubError::Offline { .. })
    ));
    assert!(env.hub.requests().is_empty(), "offline mode touched the network");
}

#[test]
fn unreachable_hub_falls_back_to_the_cache() {
    let env = Env::new();
    let snap = env
        .client()
        .pull(&repo(), "main", &FileFilter::allow(["config.json"]), &mut ignore)
        .unwrap();
    let url = env.hub.url().to_string();
    drop(env.hub);
    let mut cfg = fast_config(&url, &env.tmp.path().join("cache"));
    cfg.retry.max_attempts = 1;
    let again = HubClient::new(cfg.clone())
        .pull(&repo(), "main", &FileFilter::allow(["config.json"]), &mut ignore)
        .unwrap();
    assert_eq!(again.path, snap.path);
    let err = HubClient::new(cfg).pull(
        &engine_hub::RepoId::parse("org/none").unwrap(),
        "main",
        &FileFilter::all(),
        &mut ignore,
    );
    assert!(matches!(err, Err(HubError::Network { .. })), "{err:?}");
}

#[test]
fn token_goes_to_the_endpoint_only() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_repo(&tmp.path().join("hub"));
    let cdn = TestHub::serve(tmp.path().join("hub")).unwrap();
    let hub = TestHub::builder(tmp.path().join("hub"))
        .cdn_base(cdn.url())
        .require_token("hf_secret")
        .start()
        .unwrap();
    let cache = tmp.path().join("cache");

    let anonymous = HubClient::new(fast_config(hub.url(), &cache));
    let err = anonymous
        .pull(&repo(), "main", &FileFilter::all(), &mut ignore)
        .unwrap_err();
    assert!(matches!(err, HubError::Unauthorized { status: 401, .. }), "{err:?}");
    assert!(err.to_string().contains("HF_TOKEN"));

    let mut cfg = fast_config(hub.url(), &cache);
    cfg.token = Some("hf_secret".into());
    let snap = HubClient::new(cfg)
        .pull(&repo(), "main", &FileFilter::allow([WEIGHTS]), &mut ignore)
        .unwrap();
    assert_eq!(
        std::fs::read(snap.path.join(WEIGHTS)).unwrap(),
        std::fs::read(src.join(WEIGHTS)).unwrap()
    );
    let cdn_reqs = cdn.requests();
    assert!(!cdn_reqs.is_empty(), "the weights came from the CDN origin");
    assert!(
        cdn_reqs.iter().all(|r| r.authorization.is_none()),
        "token leaked to another origin: {cdn_reqs:?}"
    );
    assert!(hub
        .requests()
        .iter()
        .filter(|r| r.status != 401)
        .all(|r| r.authorization.as_deref() == Some("Bearer hf_secret")));
}
