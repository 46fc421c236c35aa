//! The hub commands of the real `mlxengine` binary (`pull`, `list`, `rm`,
//! `search --hub`) against a real Hugging Face–compatible hub on loopback
//! (`engine_hub::test_hub`), each test with its own temporary HF cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use engine_hub::test_hub::{Faults, ModelMeta, TestHub};
use serde_json::Value;

const REPO: &str = "org/model";
const WEIGHTS: &str = "model.safetensors";

/// Deterministic incompressible bytes.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// A hub serving a few repos and an empty cache, both in one temp folder.
struct Fixture {
    tmp: tempfile::TempDir,
    hub: TestHub,
}

impl Fixture {
    /// `org/model` holds exactly what `pull` selects for an LLM (configs,
    /// tokenizer, LFS weights of `weights_len` bytes), so the cached size is
    /// the sum of the served files.
    fn new(weights_len: usize) -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("hub");
        let dir = root.join(REPO);
        std::fs::create_dir_all(&dir).expect("repo dir");
        std::fs::write(dir.join("config.json"), br#"{"model_type":"llama","hidden_size":64}"#).expect("write");
        std::fs::write(dir.join("tokenizer.json"), bytes(20_000, 1)).expect("write");
        std::fs::write(dir.join(WEIGHTS), bytes(weights_len, 2)).expect("write");
        for repo in ["org/embed-small", "acme/embed-large", "acme/chat-7b"] {
            let d = root.join(repo);
            std::fs::create_dir_all(&d).expect("repo dir");
            std::fs::write(d.join("config.json"), format!(r#"{{"name":"{repo}"}}"#)).expect("write");
        }
        let hub = TestHub::serve(&root).expect("start the test hub");
        hub.set_meta(
            "org/embed-small",
            ModelMeta {
                downloads: 10,
                likes: 1,
                pipeline_tag: Some("feature-extraction".into()),
                ..Default::default()
            },
        );
        hub.set_meta(
            "acme/embed-large",
            ModelMeta {
                downloads: 500,
                likes: 7,
                pipeline_tag: Some("sentence-similarity".into()),
                ..Default::default()
            },
        );
        Fixture { tmp, hub }
    }

    /// Like `new`, with the weights served at 250 kB/s (~6 s for 1.5 MB), so
    /// an interrupt lands mid-file.
    fn trickling(weights_len: usize) -> Fixture {
        let fx = Fixture::new(weights_len);
        fx.hub.set_faults(Faults {
            trickle_bytes_per_sec: Some(250_000),
            only_file: Some(WEIGHTS.into()),
            ..Default::default()
        });
        fx
    }

    /// The binary started with piped output.
    fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mlxengine")
    }

    fn served(&self) -> PathBuf {
        self.tmp.path().join("hub").join(REPO)
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// The binary with the hub's settings and nothing from the caller's
    /// environment that could change them (tokens, offline mode, log level).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mlxengine"));
        c.args(args)
            .env("HF_ENDPOINT", self.hub.url())
            .env("HF_HOME", self.tmp.path().join("home"))
            .env("HF_HUB_CACHE", self.cache())
            .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("MLXENGINE_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run mlxengine")
    }

    /// `list --json`, parsed.
    fn list(&self) -> Vec<Value> {
        let out = self.run(&["list", "--json"]);
        assert!(out.status.success(), "list failed: {}", text(&out.stderr));
        match serde_json::from_slice(&out.stdout) {
            Ok(Value::Array(a)) => a,
            other => panic!("list --json printed {other:?}: {}", text(&out.stdout)),
        }
    }

    fn listed(&self, repo: &str) -> Option<Value> {
        self.list().into_iter().find(|m| m["repo"] == repo)
    }

    /// `.incomplete` files of the repo's blobs.
    fn partials(&self) -> Vec<PathBuf> {
        let blobs = self.cache().join("models--org--model").join("blobs");
        std::fs::read_dir(blobs)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Files of a folder and their sizes (top level; the fixtures are flat).
fn files_of(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            let len = std::fs::metadata(e.path()).expect("metadata").len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    v.sort();
    v
}

/// Asserts the snapshot printed by `pull` holds exactly the served files, byte for byte.
fn assert_same_files(snapshot: &Path, served: &Path) {
    let names: Vec<String> = files_of(served).into_iter().map(|f| f.0).collect();
    assert_eq!(files_of(snapshot).into_iter().map(|f| f.0).collect::<Vec<_>>(), names);
    for n in &names {
        let (a, b) = (
            std::fs::read(snapshot.join(n)).expect("read"),
            std::fs::read(served.join(n)).expect("read"),
        );
        assert!(a == b, "{n} differs from the served file");
    }
}

fn snapshot_path(out: &Output) -> PathBuf {
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "pull must print only the snapshot path, got {stdout:?}");
    PathBuf::from(lines[0])
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits until `child` has written some bytes of a download (a non-empty
/// `.incomplete` file), which it returns; the child must still be running.
fn wait_for_partial(fx: &Fixture, child: &mut Child, what: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = fx
            .partials()
            .into_iter()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        {
            return p;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{what} ended before the interrupt"
        );
        assert!(Instant::now() < deadline, "{what}: no partial download appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGINT and waits (5 s at most) for the child to end; returns its
/// status and how long it took.
fn interrupt(child: &mut Child, what: &str) -> (std::process::ExitStatus, Duration) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let sent = Instant::now();
    let Some(status) = wait_with_deadline(child, Duration::from_secs(5)) else {
        let _ = child.kill();
        panic!("{what} did not stop within 5 s of SIGINT");
    };
    (status, sent.elapsed())
}

#[test]
fn pull_list_rm() {
    let fx = Fixture::new(300_000);
    let out = fx.run(&["pull", REPO]);
    assert!(out.status.success(), "pull failed: {}", text(&out.stderr));
    let snap = snapshot_path(&out);
    let commit = fx.hub.commit_of(REPO).expect("commit");
    assert_eq!(
        snap,
        fx.cache().join("models--org--model").join("snapshots").join(&commit)
    );
    assert_same_files(&snap, &fx.served());

    let served_bytes: u64 = files_of(&fx.served()).iter().map(|f| f.1).sum();
    let m = fx.listed(REPO).expect("list --json shows the pulled model");
    assert_eq!(m["size_bytes"], served_bytes);
    assert_eq!(m["incomplete_bytes"], 0);
    assert_eq!(m["revisions"][0]["name"], "main");
    assert_eq!(m["revisions"][0]["commit"], commit.as_str());

    // The table form names it too.
    let out = fx.run(&["list"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(REPO), "{}", text(&out.stdout));

    // A second pull is served from the cache: no content request.
    fx.hub.clear_requests();
    let out = fx.run(&["pull", REPO]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot_path(&out), snap);
    let fetched: Vec<_> = fx
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && (r.target.contains("/resolve/") || r.target.starts_with("/cdn-lfs/")))
        .collect();
    assert!(fetched.is_empty(), "cached files fetched again: {fetched:?}");

    let out = fx.run(&["rm", REPO]);
    assert!(out.status.success(), "rm failed: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("removed org/model"), "{}", text(&out.stderr));
    assert!(fx.listed(REPO).is_none(), "rm left the model listed");
    assert!(!fx.cache().join("models--org--model").exists());

    // Removing it again says it is not there.
    let out = fx.run(&["rm", REPO]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not in the cache"), "{}", text(&out.stderr));
}

#[test]
fn sigint_during_a_first_use_download_keeps_the_partial_file() {
    const LEN: usize = 1_500_000;
    let fx = Fixture::trickling(LEN);
    // `run` and `embed` pull a repo id they do not find locally.
    for cmd in [vec!["run", REPO, "hello"], vec!["embed", REPO, "hello"]] {
        let _ = std::fs::remove_dir_all(fx.cache());
        let mut child = fx.spawn(&cmd);
        let what = format!("{cmd:?}");
        let partial = wait_for_partial(&fx, &mut child, &what);
        // The download reports progress every 0.1 s; from then on Ctrl-C cancels it.
        std::thread::sleep(Duration::from_millis(300));
        let (status, _) = interrupt(&mut child, &what);
        let out = child.wait_with_output().expect("collect output");
        let stderr = text(&out.stderr);
        assert_eq!(status.code(), Some(130), "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("interrupted") && stderr.contains("resume"),
            "{cmd:?}: {stderr}"
        );
        assert!(stderr.contains("partial download is kept"), "{cmd:?}: {stderr}");
        let kept = std::fs::metadata(&partial).expect("the .incomplete file is kept").len();
        assert!(
            kept > 0 && kept < LEN as u64,
            "{cmd:?}: partial holds {kept} of {LEN} bytes"
        );
    }
}

#[test]
fn sigint_interrupts_then_pull_resumes() {
    const LEN: usize = 1_500_000;
    let fx = Fixture::trickling(LEN);
    let mut child = fx.spawn(&["pull", REPO]);

    // Wait until some bytes of the weights are on disk.
    let partial = wait_for_partial(&fx, &mut child, "pull");
    let (status, took) = interrupt(&mut child, "pull");
    let out = child.wait_with_output().expect("collect output");
    let stderr = text(&out.stderr);
    assert_eq!(
        status.code(),
        Some(130),
        "an interrupted pull exits 128 + SIGINT; stderr: {stderr}"
    );
    assert!(took < Duration::from_secs(2), "pull took {took:?} to stop after SIGINT");
    assert!(
        out.stdout.is_empty(),
        "no snapshot path after an interrupt: {}",
        text(&out.stdout)
    );
    let lower = stderr.to_lowercase();
    assert!(lower.contains("interrupted"), "{stderr}");
    assert!(lower.contains("resume"), "{stderr}");
    assert!(stderr.contains(&format!("mlxengine pull {REPO}")), "{stderr}");

    // The partial file stays, part-way through, and `list` accounts for it.
    let kept = std::fs::metadata(&partial).expect("the .incomplete file is kept").len();
    assert!(kept > 0 && kept < LEN as u64, "partial holds {kept} of {LEN} bytes");
    let m = fx.listed(REPO).expect("the partial pull is listed");
    assert_eq!(m["incomplete_bytes"], kept);
    let table = text(&fx.run(&["list"]).stdout);
    assert!(
        table.contains("partial") && table.contains("mlxengine pull org/model"),
        "{table}"
    );

    // Run again at full speed: it resumes from the partial file.
    fx.hub.set_faults(Faults::default());
    fx.hub.clear_requests();
    let out = fx.run(&["pull", REPO]);
    assert!(out.status.success(), "resumed pull failed: {}", text(&out.stderr));
    let snap = snapshot_path(&out);
    assert_same_files(&snap, &fx.served());
    let weights: Vec<_> = fx
        .hub
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.target.starts_with("/cdn-lfs/"))
        .collect();
    assert_eq!(weights.len(), 1, "{weights:?}");
    let from: u64 = weights[0]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Range on the resumed request: {:?}", weights[0]));
    assert!(from > 0, "resumed from byte {from}");
    assert!(from <= kept, "resumed from {from}, past the {kept} bytes kept");
    assert_eq!(
        weights[0].body_bytes,
        LEN as u64 - from,
        "only the missing bytes are fetched"
    );
    assert!(fx.partials().is_empty(), "a finished pull leaves no .incomplete");
    assert_eq!(fx.listed(REPO).expect("listed")["incomplete_bytes"], 0);
}

#[test]
fn search_hub_json() {
    let fx = Fixture::new(1000);
    let search = |args: &[&str]| -> Vec<Value> {
        let out = fx.run(args);
        assert!(out.status.success(), "search failed: {}", text(&out.stderr));
        match serde_json::from_slice(&out.stdout) {
            Ok(Value::Array(a)) => a,
            other => panic!("search --json printed {other:?}"),
        }
    };
    let ids = |hits: &[Value]| {
        let mut v: Vec<String> = hits
            .iter()
            .map(|h| h["id"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };

    let hits = search(&["search", "embed", "--hub", "--json"]);
    assert_eq!(ids(&hits), ["acme/embed-large", "org/embed-small"]);
    let large = hits.iter().find(|h| h["id"] == "acme/embed-large").expect("hit");
    assert_eq!(large["downloads"], 500);
    assert_eq!(large["likes"], 7);
    assert_eq!(large["author"], "acme");

    // --type maps to the hub's pipeline tag; --limit caps the hits.
    let hits = search(&["search", "embed", "--hub", "--type", "embedding", "--json"]);
    assert_eq!(ids(&hits), ["org/embed-small"]);
    assert_eq!(search(&["search", "embed", "--hub", "--limit", "1", "--json"]).len(), 1);
    assert!(search(&["search", "no-such-model", "--hub", "--json"]).is_empty());

    let reqs = fx.hub.requests();
    assert!(
        reqs.iter()
            .any(|r| r.target.starts_with("/api/models?") && r.target.contains("search=embed")),
        "{reqs:?}"
    );

    // The table form.
    let out = fx.run(&["search", "embed", "--hub"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("acme/embed-large") && stdout.contains("org/embed-small"),
        "{stdout}"
    );
}

#[test]
fn offline_pull_fails_clearly() {
    let fx = Fixture::new(1000);
    let out = fx
        .cmd(&["pull", "org/other"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("offline") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    assert!(stderr.contains("org/other"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(fx.hub.requests().is_empty(), "offline mode touched the network");

    // Searching needs the network too.
    let out = fx
        .cmd(&["search", "embed", "--hub"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("offline"), "{}", text(&out.stderr));

    // Once cached, the same pull works offline and prints the snapshot.
    let online = fx.run(&["pull", REPO]);
    assert!(online.status.success(), "{}", text(&online.stderr));
    fx.hub.clear_requests();
    let offline = fx
        .cmd(&["pull", REPO])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run");
    assert!(offline.status.success(), "{}", text(&offline.stderr));
    assert_eq!(snapshot_path(&offline), snapshot_path(&online));
    assert!(fx.hub.requests().is_empty());
}

#[test]
fn bad_repo_ids_fail_clearly() {
    let fx = Fixture::new(1000);
    for id in [
        "../../etc",
        "org/../../etc",
        "a/b/c",
        "org/na me",
        "org/",
        "org/-x",
        "org/name.git",
    ] {
        for cmd in ["pull", "rm"] {
            let out = fx.run(&[cmd, id]);
            assert!(!out.status.success(), "`{cmd} {id}` succeeded");
            let stderr = text(&out.stderr);
            assert!(stderr.contains("invalid repo id"), "`{cmd} {id}`: {stderr}");
            assert!(
                stderr.contains("org/name"),
                "the message shows the expected form: {stderr}"
            );
        }
    }
    assert!(fx.hub.requests().is_empty(), "a bad id reached the hub");
    assert!(!fx.cache().exists(), "a bad id created cache folders");

    // A well-formed id the hub does not have.
    let out = fx.run(&["pull", "org/missing"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not found") && stderr.contains("org/missing"),
        "{stderr}"
    );
}
