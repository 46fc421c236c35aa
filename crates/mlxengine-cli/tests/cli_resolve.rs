//! How the real `mlxengine` binary resolves model names before any download:
//! a mistyped local path and a registry id of the wrong type fail at once,
//! and a loopback test hub (`engine_hub::test_hub`) proves no request left.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use engine_hub::test_hub::TestHub;

/// A test hub serving `org/model`, an empty cache, and a working folder
/// holding one subfolder (`present/`), all in one temp folder.
struct Fixture {
    tmp: tempfile::TempDir,
    hub: TestHub,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("temp dir");
        let repo = tmp.path().join("hub/org/model");
        std::fs::create_dir_all(&repo).expect("repo dir");
        std::fs::write(repo.join("config.json"), br#"{"model_type":"llama"}"#).expect("write");
        std::fs::create_dir_all(tmp.path().join("work/present")).expect("work dir");
        let hub = TestHub::serve(tmp.path().join("hub")).expect("start the test hub");
        Fixture { tmp, hub }
    }

    /// The binary in `work/`, talking to the test hub and to nothing else.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mlxengine"))
            .args(args)
            .current_dir(self.tmp.path().join("work"))
            .env("HF_ENDPOINT", self.hub.url())
            .env("HF_HOME", self.tmp.path().join("home"))
            .env("HF_HUB_CACHE", self.tmp.path().join("cache"))
            .env("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("MLXENGINE_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run mlxengine")
    }

    /// Runs `args`, expects a failure whose stderr names every needle, and
    /// that the hub saw no request.
    fn fails_offline(&self, args: &[&str], needles: &[&str]) {
        self.hub.clear_requests();
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`{}` succeeded", args.join(" "));
        for n in needles {
            assert!(stderr.contains(n), "`{}`: `{n}` missing from: {stderr}", args.join(" "));
        }
        let reqs = self.hub.requests();
        assert!(reqs.is_empty(), "`{}` reached the hub: {reqs:?}", args.join(" "));
        assert!(
            !self.tmp.path().join("cache").exists(),
            "`{}` created cache folders",
            args.join(" ")
        );
    }
}

#[test]
fn a_mistyped_local_path_fails_without_the_network() {
    let fx = Fixture::new();
    for model in [
        "model.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "weights.safetensors",
        "./model",
        "../models/x",
        "/nonexistent/model",
        "~/models/smollm2",
        "models/org/name",
        // `org/name` in form, but its parent folder exists here: a path typo.
        "present/typo",
    ] {
        fx.fails_offline(&["run", model, "hi"], &[&format!("no such file or folder: {model}")]);
        fx.fails_offline(&["embed", model, "hi"], &[&format!("no such file or folder: {model}")]);
    }
    assert!(Path::new(&fx.tmp.path().join("work/present")).is_dir());
}

#[test]
fn a_repo_id_needs_an_owner() {
    let fx = Fixture::new();
    // One segment that is no registry id: never a repo id.
    for model in ["gpt2", "smollm"] {
        fx.fails_offline(&["run", model, "hi"], &["cannot find model", "org/name"]);
        fx.fails_offline(&["pull", model], &["invalid repo id", "org/name"]);
    }
    // The control: a real `org/name` does go to the hub.
    let out = fx.run(&["pull", "org/model"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!fx.hub.requests().is_empty(), "org/name must be looked up on the hub");
}

#[test]
fn a_registry_id_of_another_type_fails_before_any_download() {
    let fx = Fixture::new();
    fx.fails_offline(
        &["run", "e5-small-v2", "hi"],
        &["type `embedding`", "`llm`", "mlxengine embed e5-small-v2"],
    );
    fx.fails_offline(
        &["run", "stable-diffusion-1.5", "hi"],
        &["type `diffusion`", "`llm`", "mlxengine imagine stable-diffusion-1.5"],
    );
    fx.fails_offline(
        &["embed", "smollm2-135m-instruct", "hi"],
        &["type `llm`", "`embedding`", "mlxengine run smollm2-135m-instruct"],
    );
    fx.fails_offline(
        &["embed", "llava-1.5-7b", "hi"],
        &["type `vlm`", "mlxengine run llava-1.5-7b --image"],
    );
}

#[test]
fn recommend_lists_only_what_this_build_runs() {
    let fx = Fixture::new();
    // The CLI is built with every modality, diffusion included.
    let types = ["vlm", "embedding", "diffusion"];
    for t in types {
        let out = fx.run(&["recommend", "--type", t, "--memory", "64GB", "--json"]);
        assert!(out.status.success(), "{t}: {}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let recs = j["recommendations"].as_array().expect("recommendations");
        assert!(!recs.is_empty(), "{t}: {j}");
        let reg = engine_device::Registry::builtin();
        for r in recs {
            let entry = reg.get(r["id"].as_str().unwrap()).expect("a registry entry");
            assert_eq!(entry.model_type.as_str(), t, "{r}");
        }
    }
}
