//! `mlxengine run --image` end to end on the tiny LLaVA checkpoint (committed
//! under crates/engine-vlm/tests/fixtures, with transformers' answers), `run
//! --json`, and every bad image input: each a clear error, never a panic.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn llava() -> PathBuf {
    root().join("crates/engine-vlm/tests/fixtures/llava")
}

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxengine"));
    cmd.arg("run")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLXENGINE_LOG");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn mlxengine");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn expected(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(llava().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"][case].clone()
}

fn greedy_until_eos(case: &serde_json::Value) -> Vec<u64> {
    let mut want: Vec<u64> = case["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    if let Some(p) = want.iter().position(|&t| t == 2) {
        want.truncate(p + 1);
    }
    want
}

fn json_run(image: &str) -> Output {
    let m = llava();
    let q = "What is in the image ?";
    run(
        &[
            m.to_str().unwrap(),
            q,
            "--image",
            image,
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--json",
        ],
        b"",
    )
}

#[test]
fn answers_about_an_image_as_transformers_does() {
    let img = llava().join("image0.png");
    let out = json_run(img.to_str().unwrap());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).expect("one JSON object");
    let case = expected("one_image");
    let ids: Vec<u64> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(ids, greedy_until_eos(&case));
    assert_eq!(
        v["prompt_tokens"].as_u64().unwrap() as usize,
        case["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(v["completion_tokens"].as_u64().unwrap() as usize, ids.len());
    assert!(
        v["finish_reason"].is_string() && v["ttft_ms"].is_number() && v["decode_tok_s"].is_number(),
        "{v}"
    );
    // The same image as a data: URL gives the same answer.
    let bytes = std::fs::read(&img).unwrap();
    let url = format!("data:image/png;base64,{}", base64(&bytes));
    let out = json_run(&url);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let w: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(w["token_ids"], v["token_ids"]);
}

#[test]
fn interactive_image_command_attaches_to_the_next_message() {
    let m = llava();
    let img = llava().join("image1.png");
    let input = format!("/image {}\nWhat is in the image ?\n/bye\n", img.display());
    let out = run(
        &[m.to_str().unwrap(), "--temperature", "0", "--max-tokens", "4"],
        input.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("attached"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).trim().is_empty());
}

/// A PNG whose header declares `w`×`h` pixels (valid signature and IHDR CRC).
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    v.extend(13u32.to_be_bytes());
    v.extend(&ihdr);
    v.extend(crc32fast::hash(&ihdr).to_be_bytes());
    v
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn bad_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(llava().join("image0.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.png", Vec::new(), "empty"),
        ("notes.png", b"these are not pixels".to_vec(), "not an image"),
        ("cut.png", good[..good.len() / 3].to_vec(), "truncated"),
        ("bomb.png", png_header(100_000, 100_000), "pixels"),
    ];
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let start = std::time::Instant::now();
        let out = json_run(p.to_str().unwrap());
        let err = text(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{name}: should fail");
        assert_eq!(out.status.code(), Some(1), "{name}: a clean error, not a crash: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
        assert!(start.elapsed().as_secs() < 30, "{name}: refused quickly");
    }
    let out = json_run(dir.path().join("missing.png").to_str().unwrap());
    assert!(text(&out.stderr).contains("no such file"), "{}", text(&out.stderr));
    let out = json_run("http://example.com/cat.png");
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("http://example.com/cat.png"),
        "{err}"
    );
}

#[test]
fn an_image_for_a_text_only_model_is_refused() {
    let gguf = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.exists(), "run `cargo xtask fetch-models`");
    let img = llava().join("image0.png");
    let out = run(&[gguf.to_str().unwrap(), "Hi", "--image", img.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("text-only"), "{}", text(&out.stderr));
}

#[test]
fn json_reports_exactly_the_generated_ids_for_text_models() {
    let gguf = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let q = "What is the capital of France?";
    let out = run(
        &[
            gguf.to_str().unwrap(),
            q,
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--json",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    let n = v["token_ids"].as_array().unwrap().len();
    assert_eq!(n as u64, v["completion_tokens"].as_u64().unwrap());
    if v["finish_reason"] == "eos" {
        assert_eq!(v["token_ids"][n - 1], 2, "ends with <|im_end|>: {v}");
    }
}
