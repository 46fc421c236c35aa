//! `mlxengine launch -n 2 -- run ...`: the real binary as two ranks over the
//! ring backend on loopback gives the answer one process gives; what cannot
//! be split is a clear error and a non-zero exit, never a hang.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mlxengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLXENGINE_DISTRIBUTED")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Two ranks (each with half of every layer, or half of the layers) answer
/// exactly as one process: greedy and sampled with a seed.
#[test]
fn two_ranks_answer_as_one_process() {
    let model = root().join("target/parity/llama");
    assert!(
        model.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        model.display()
    );
    let m = model.to_str().unwrap();
    for extra in [
        &["--temperature", "0"][..],
        &["--temperature", "0.8", "--seed", "7"][..],
    ] {
        let mut run = vec!["run", m, "Hello there", "--max-tokens", "12", "--json"];
        run.extend_from_slice(extra);
        let one = json_of(&mlxengine(&run));
        for split in ["tensor", "pipeline"] {
            let mut launch = vec!["launch", "-n", "2", "--split", split, "--"];
            launch.extend_from_slice(&run);
            let two = json_of(&mlxengine(&launch));
            assert_eq!(two["token_ids"], one["token_ids"], "{split} {extra:?}: {two} vs {one}");
            assert_eq!(two["text"], one["text"], "{split} {extra:?}");
        }
        assert_eq!(one["completion_tokens"], 12, "{one}");
    }
}

/// Refusals: heads that do not divide by the ranks (SmolLM2 has 9), an
/// interactive chat, a command that cannot be split, an unknown backend.
#[test]
fn what_cannot_be_split_is_a_clear_error() {
    let smol = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        smol.exists(),
        "{} is missing: run `cargo xtask fetch-models`",
        smol.display()
    );
    let fixture = root().join("target/parity/llama");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "launch",
                "-n",
                "2",
                "--",
                "run",
                smol.to_str().unwrap(),
                "Hi",
                "--max-tokens",
                "2",
            ],
            "9 attention heads do not divide by 2",
        ),
        (
            vec!["launch", "-n", "2", "--", "run", fixture.to_str().unwrap()],
            "give the prompt on the command line",
        ),
        (
            vec!["launch", "-n", "2", "--", "embed", "x", "y"],
            "cannot be split yet",
        ),
        (
            vec!["launch", "--backend", "smoke-signals", "--", "run", "x", "y"],
            "unknown --backend",
        ),
    ];
    for (args, want) in cases {
        let started = std::time::Instant::now();
        let out = mlxengine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: stderr lacks `{want}`:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
        assert!(
            started.elapsed().as_secs() < 60,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
