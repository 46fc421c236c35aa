//! The real `mlxengine embed` with the real all-MiniLM-L6-v2 (`cargo xtask fetch-models`).

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models")
}

fn minilm() -> String {
    let p = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        p.join("config.json").exists(),
        "{} is missing: run `cargo xtask fetch-models`",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// Runs `mlxengine args...` with `stdin` piped in (an empty stdin when `None`).
fn mlxengine(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env_remove("MLXENGINE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the mlxengine binary runs");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("mlxengine finishes")
}

fn ok_json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout.clone()).expect("UTF-8");
    assert_eq!(text.trim_end().lines().count(), 1, "one JSON line expected");
    serde_json::from_str(&text).expect("stdout is JSON")
}

fn vectors(j: &Value) -> Vec<Vec<f64>> {
    j["embeddings"]
        .as_array()
        .expect("embeddings array")
        .iter()
        .map(|v| {
            v.as_array()
                .expect("a vector")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .collect()
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn json_embeddings_are_unit_vectors_that_carry_meaning() {
    let model = minilm();
    let texts = [
        "A cat sits on the mat",
        "Stock markets fell",
        "A kitten is sitting on a rug",
    ];
    let mut args = vec!["embed", model.as_str()];
    args.extend(texts);
    args.push("--json");
    let j = ok_json(&mlxengine(&args, None));
    assert_eq!(j["model"], model.as_str());
    assert_eq!(j["dimensions"], 384);
    let v = vectors(&j);
    assert_eq!(v.len(), 3);
    for x in &v {
        assert_eq!(x.len(), 384);
        let norm = dot(x, x).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Real embeddings: the paraphrase is much closer than the unrelated sentence.
    let (para, other) = (dot(&v[0], &v[2]), dot(&v[0], &v[1]));
    assert!(
        para > 0.5 && para > other + 0.3,
        "cat~kitten {para}, cat~stocks {other}"
    );
}

#[test]
fn stdin_lines_embed_like_arguments_and_plain_output_is_one_line_each() {
    let model = minilm();
    let args = [
        "embed",
        model.as_str(),
        "A cat sits on the mat",
        "Stock markets fell",
        "--json",
    ];
    let from_args = vectors(&ok_json(&mlxengine(&args, None)));
    // Blank and whitespace-only lines are skipped.
    let stdin = "A cat sits on the mat\n\n   \nStock markets fell\n";
    let from_stdin = vectors(&ok_json(&mlxengine(&["embed", &model, "--json"], Some(stdin))));
    assert_eq!(from_stdin.len(), 2);
    for (a, b) in from_args.iter().zip(&from_stdin) {
        assert!(max_diff(a, b) < 1e-5);
    }

    let out = mlxengine(&["embed", &model], Some(stdin));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<Vec<f64>> = text
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().expect("a number")).collect())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (plain, json) in lines.iter().zip(&from_args) {
        assert_eq!(plain.len(), 384);
        // Printed with 6 decimals.
        assert!(max_diff(plain, json) < 1e-6 + 1e-7);
    }
}

#[test]
fn no_input_text_is_an_error() {
    let model = minilm();
    for stdin in ["", "\n  \n\t\n"] {
        let out = mlxengine(&["embed", &model, "--json"], Some(stdin));
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("no input text"), "{err}");
    }
}

#[test]
fn a_generative_model_is_refused_clearly() {
    let gguf = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} is missing: run `cargo xtask fetch-models`",
        gguf.display()
    );
    let out = mlxengine(&["embed", &gguf.to_string_lossy(), "hello"], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{err}");
    assert!(
        err.to_lowercase().contains("embedding"),
        "the error should say an embedding model is needed: {err}"
    );
}
