//! `mlxengine convert` end to end: the folders it writes load in mlx-lm (the
//! oracle venv of `scripts/setup.sh`) and give the logits our engine gives on
//! them; the real SmolLM2 GGUFs (`cargo xtask fetch-models`, K-quants from
//! xtask/parity/make_kquants.py) as sources.

use mlxengine::{DtypePolicy, LlmModel, LoadOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(ty: &str) -> PathBuf {
    let p = root().join(format!("target/models/SmolLM2-135M-Instruct.{ty}.gguf"));
    assert!(p.exists(), "{} is missing: run `bash scripts/setup.sh`", p.display());
    p
}

fn mlxengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run mlxengine")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn convert(src: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["convert", src.to_str().unwrap(), out.to_str().unwrap()];
    args.extend(extra);
    let o = mlxengine(&args);
    assert!(o.status.success(), "convert {extra:?}: {}", text(&o.stderr));
}

/// mlx-lm's last-position logits for `ids`, and its tokenization of the chat prompt.
fn mlx_lm(dir: &Path, ids: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let script = r#"
import json, sys
import mlx.core as mx
from mlx_lm import load
model, tok = load(sys.argv[1])
ids = json.loads(sys.argv[2])
logits = model(mx.array([ids]))[0, -1].astype(mx.float32)
chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
print(json.dumps({"logits": logits.tolist(), "chat": list(chat)}))
"#;
    let python = root().join("target/oracle/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/setup.sh`",
        python.display()
    );
    let o = Command::new(python)
        .args([
            "-c",
            script,
            dir.to_str().unwrap(),
            &serde_json::to_string(ids).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "mlx-lm: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).lines().last().unwrap()).unwrap();
    let f = |k: &str| {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    (
        f("logits").into_iter().map(|x| x as f32).collect(),
        f("chat").into_iter().map(|x| x as u32).collect(),
    )
}

/// Our engine's logits on the folder equal mlx-lm's within 1e-4, and both
/// tokenize the chat prompt alike (the tokenizer and template files work).
fn check_parity(dir: &Path, what: &str) {
    let opts = LoadOptions {
        dtype: DtypePolicy::Native,
        ..Default::default()
    };
    let ours = LlmModel::load(dir, &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    let chat = mlxengine::Prompt::Chat(vec![mlxengine::ChatMessage::new(
        "user",
        "What is the capital of France?",
    )]);
    let ids = ours.encode_prompt(&chat).unwrap();
    let (theirs, their_ids) = mlx_lm(dir, &ids);
    assert_eq!(ids, their_ids, "{what}: chat prompt ids");
    let logits = ours.logits(&ids).unwrap().to_f32_vec().unwrap();
    let last = &logits[logits.len() - theirs.len()..];
    let worst = last
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-4, "{what}: logits differ from mlx-lm's by {worst}");
}

#[test]
fn converted_folders_load_in_mlx_lm_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    // A K-quant mix decoded to f32, and re-quantized to 4 bits (f32 scales).
    let f32_dir = tmp.path().join("q4km-f32");
    convert(&model("Q4_K_M"), &f32_dir, &["--dtype", "f32"]);
    check_parity(&f32_dir, "Q4_K_M --dtype f32");
    let q4 = tmp.path().join("q4");
    convert(
        &model("Q8_0"),
        &q4,
        &["--dtype", "f32", "--quantize", "4", "--group-size", "32"],
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q4.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization"]["bits"], 4);
    assert_eq!(cfg["quantization"]["group_size"], 32);
    check_parity(&q4, "Q8_0 --quantize 4");
    let o = mlxengine(&[
        "run",
        q4.to_str().unwrap(),
        "What is the capital of France?",
        "--temperature",
        "0",
    ]);
    assert!(
        text(&o.stdout).contains("Paris"),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// As stored (no --dtype): a mixed K-quant file keeps its blocks in MLX's
/// layout with per-layer bits in the quantization block, and mlx-lm runs it.
#[test]
fn a_native_k_quant_conversion_keeps_per_layer_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q5km");
    convert(&model("Q5_K_M"), &out, &[]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let q = cfg["quantization"].as_object().unwrap();
    assert_eq!(q["bits"], 5, "{q:?}");
    assert!(
        q.values().any(|v| v.get("bits") == Some(&serde_json::json!(8))),
        "per-layer 8-bit entries: {q:?}"
    );
    let script = "import sys; from mlx_lm import load, generate; m, t = load(sys.argv[1]); \
        p = t.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}], add_generation_prompt=True); \
        print(generate(m, t, prompt=p, max_tokens=16))";
    let o = Command::new(root().join("target/oracle/bin/python"))
        .args(["-c", script, out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "mlx-lm: {}", text(&o.stderr));
    assert!(text(&o.stdout).contains("Paris"), "mlx-lm answered {}", text(&o.stdout));
}

#[test]
fn bad_convert_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = model("Q4_1");
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "mine").unwrap();
    let out = tmp.path().join("out");
    let (s, b, o) = (src.to_str().unwrap(), busy.to_str().unwrap(), out.to_str().unwrap());
    for (args, want) in [
        (vec!["convert", s, b], "already exists"),
        (
            vec!["convert", s, o, "--quantize", "3"],
            "use --quantize 4 or --quantize 8",
        ),
        (
            vec!["convert", s, o, "--quantize", "4", "--group-size", "128"],
            "use a group size of 32 or 64",
        ),
        (vec!["convert", s, o, "--dtype", "int8"], "unknown --dtype"),
        (vec!["convert", "./missing.gguf", o], "missing.gguf"),
    ] {
        let r = mlxengine(&args);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(text(&r.stderr).contains(want), "{args:?}: {}", text(&r.stderr));
    }
    // Nothing was lost or left half-written.
    assert_eq!(std::fs::read_to_string(busy.join("keep.txt")).unwrap(), "mine");
    assert!(!out.exists());
    assert!(std::fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}
