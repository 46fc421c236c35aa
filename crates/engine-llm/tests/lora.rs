//! LoRA adapters in mlx-lm's format on the tiny parity checkpoints (dense and
//! 4-bit bases) against mlx-lm loading the same adapter (`load(adapter_path=)`),
//! made by xtask/parity/make_lora.py into target/lora (`cargo xtask
//! parity-fixtures`); PEFT adapters against transformers + PEFT (committed
//! fixtures from xtask/parity/make_peft.py, `cargo xtask torch-fixtures`);
//! fused = unfused.

use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use engine_mlx::{save_safetensors, Array, WeightMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cases() -> Vec<PathBuf> {
    let dir = root().join("target/lora");
    assert!(
        dir.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        dir.display()
    );
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn expected(case: &Path) -> (String, Vec<u32>, Vec<f32>) {
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap()).unwrap();
    let prompt = e["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = e["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    (e["base"].as_str().unwrap_or_default().to_string(), prompt, logits)
}

fn load(base: &str, adapters: Vec<PathBuf>) -> engine_core::Result<LlmModel> {
    let opts = LoadOptions {
        dtype: DtypePolicy::Native,
        adapters,
        ..Default::default()
    };
    LlmModel::load(&root().join("target/parity").join(base), &opts, &mut |_| {})
}

fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn adapters_match_mlx_lm_and_fused_equals_unfused() {
    let cases = cases();
    assert!(cases.len() >= 3, "expected the make_lora.py cases, found {cases:?}");
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (base, prompt, want) = expected(&case);
        let mut m = load(&base, vec![case.clone()]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(engine_core::TextGenerator::configuration(&m)
            .capabilities
            .contains(&engine_core::FeatureFlag::Lora));
        let got = m.logits(&prompt).unwrap().to_f32_vec().unwrap();
        let d = worst(&got, &want);
        assert!(d <= 1e-4, "{name}: logits differ from mlx-lm's by {d}");
        // The adapter matters: without it the logits are elsewhere.
        let plain = load(&base, vec![])
            .unwrap()
            .logits(&prompt)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        assert!(worst(&plain, &want) > 1e-3, "{name}: the adapter changed nothing");
        if !m.transformer().is_quantized() {
            m.fuse_adapters().unwrap();
            let fused = m.logits(&prompt).unwrap().to_f32_vec().unwrap();
            let d = worst(&fused, &got);
            assert!(d <= 1e-4, "{name}: fused differs from unfused by {d}");
        }
    }
}

/// The same weights in PEFT's layout (`lora_A.weight` (r, in), `lora_B.weight`
/// (out, r), scale `lora_alpha / r`) give the same logits.
#[test]
fn peft_layout_of_the_same_adapter_gives_the_same_logits() {
    let case = root().join("target/lora/llama-lora");
    let (base, prompt, want) = expected(&case);
    let w = WeightMap::load_safetensors(case.join("adapters.safetensors")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("adapter_config.json")).unwrap()).unwrap();
    let (rank, scale) = (
        cfg["lora_parameters"]["rank"].as_f64().unwrap(),
        cfg["lora_parameters"]["scale"].as_f64().unwrap(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors: Vec<(String, Array)> = Vec::new();
    for name in w.names() {
        let t = w.get(name).unwrap().t().unwrap();
        let peft = if let Some(m) = name.strip_suffix(".lora_a") {
            format!("base_model.model.{m}.lora_A.weight")
        } else {
            format!(
                "base_model.model.{}.lora_B.weight",
                name.strip_suffix(".lora_b").unwrap()
            )
        };
        tensors.push((peft, t));
    }
    let list: Vec<(&str, &Array)> = tensors.iter().map(|(n, a)| (n.as_str(), a)).collect();
    save_safetensors(tmp.path().join("adapter_model.safetensors"), &list, &[]).unwrap();
    let peft_cfg =
        serde_json::json!({"peft_type": "LORA", "r": rank, "lora_alpha": scale * rank, "target_modules": ["q_proj"]});
    std::fs::write(tmp.path().join("adapter_config.json"), peft_cfg.to_string()).unwrap();
    let got = load(&base, vec![tmp.path().to_path_buf()])
        .unwrap()
        .logits(&prompt)
        .unwrap()
        .to_f32_vec()
        .unwrap();
    assert!(worst(&got, &want) <= 1e-4, "PEFT layout: {}", worst(&got, &want));
}

/// In `dir`, the tiny Llama's LoRA cut to its first q_proj with B widened to
/// 96 outputs (the model has 64): an adapter for another base.
fn wide_adapter(dir: &Path) -> PathBuf {
    let case = root().join("target/lora/llama-lora");
    let wide = dir.join("wide");
    std::fs::create_dir_all(&wide).unwrap();
    std::fs::copy(case.join("adapter_config.json"), wide.join("adapter_config.json")).unwrap();
    let w = WeightMap::load_safetensors(case.join("adapters.safetensors")).unwrap();
    let b = Array::zeros(&[4, 96], engine_mlx::Dtype::Float32).unwrap();
    let a = w.get("model.layers.0.self_attn.q_proj.lora_a").unwrap();
    save_safetensors(
        wide.join("adapters.safetensors"),
        &[
            ("model.layers.0.self_attn.q_proj.lora_a", a),
            ("model.layers.0.self_attn.q_proj.lora_b", &b),
        ],
        &[],
    )
    .unwrap();
    wide
}

#[test]
fn bad_adapters_give_clear_errors() {
    let case = root().join("target/lora/llama-lora");
    let tmp = tempfile::tempdir().unwrap();
    // An adapter for a wider model: B's output width does not match.
    let e = load("llama", vec![wide_adapter(tmp.path())]).err().unwrap().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("[4, 96]") && e.contains("64 out"),
        "{e}"
    );
    // A module the base does not have.
    let w = WeightMap::load_safetensors(case.join("adapters.safetensors")).unwrap();
    let a = w.get("model.layers.0.self_attn.q_proj.lora_a").unwrap();
    let deep = tmp.path().join("deep");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(case.join("adapter_config.json"), deep.join("adapter_config.json")).unwrap();
    save_safetensors(
        deep.join("adapters.safetensors"),
        &[
            ("model.layers.9.self_attn.q_proj.lora_a", a),
            (
                "model.layers.9.self_attn.q_proj.lora_b",
                w.get("model.layers.0.self_attn.q_proj.lora_b").unwrap(),
            ),
        ],
        &[],
    )
    .unwrap();
    let e = load("llama", vec![deep]).err().unwrap().to_string();
    assert!(
        e.contains("model.layers.9.self_attn.q_proj") && e.contains("2-layer"),
        "{e}"
    );
    // No weights file; no folder at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(case.join("adapter_config.json"), empty.join("adapter_config.json")).unwrap();
    let e = load("llama", vec![empty]).err().unwrap().to_string();
    assert!(e.contains("adapters.safetensors is missing"), "{e}");
    let e = load("llama", vec![tmp.path().join("nowhere")])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

/// PEFT's own adapters (plain LoRA, rsLoRA on other modules, DoRA) on a tiny
/// transformers Llama: our logits within 1e-4 of transformers + PEFT's.
#[test]
fn peft_adapters_match_transformers_and_peft() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft");
    // The base plus the tiny parity tokenizer (the checkpoint has none; logits need only ids).
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("base").join(f), tmp.path().join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let src = root().join("target/parity/llama").join(f);
        assert!(
            src.exists(),
            "{} is missing: run `cargo xtask parity-fixtures`",
            src.display()
        );
        std::fs::copy(src, tmp.path().join(f)).unwrap();
    }
    for case in ["lora", "rslora", "dora"] {
        let dir = fixtures.join(case);
        let (_, prompt, want) = expected(&dir);
        let opts = LoadOptions {
            dtype: DtypePolicy::Native,
            adapters: vec![dir.clone()],
            ..Default::default()
        };
        let m = LlmModel::load(tmp.path(), &opts, &mut |_| {}).unwrap_or_else(|e| panic!("{case}: {e}"));
        let got = m.logits(&prompt).unwrap().to_f32_vec().unwrap();
        let d = worst(&got, &want);
        assert!(d <= 1e-4, "{case}: logits differ from transformers + PEFT by {d}");
        let plain = LlmModel::load(tmp.path(), &LoadOptions::default(), &mut |_| {}).unwrap();
        let p = plain.logits(&prompt).unwrap().to_f32_vec().unwrap();
        assert!(worst(&p, &want) > 1e-3, "{case}: the adapter changed nothing");
    }
}

/// `convert --adapter`: the adapter (LoRA or DoRA) fused into a written folder
/// gives, with no adapter at load, mlx-lm's logits with the adapter unfused.
#[test]
fn fused_folders_equal_the_unfused_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["llama-lora", "llama-dora"] {
        let case = root().join("target/lora").join(name);
        let (base, prompt, want) = expected(&case);
        let out = tmp.path().join(format!("fused-{name}"));
        let opts = engine_llm::export::ConvertOptions {
            adapters: vec![case],
            ..Default::default()
        };
        engine_llm::export::convert(&root().join("target/parity").join(&base), &out, &opts, &mut |_, _| {}).unwrap();
        let got = LlmModel::load(&out, &LoadOptions::default(), &mut |_| {})
            .unwrap()
            .logits(&prompt)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let d = worst(&got, &want);
        assert!(d <= 1e-4, "fused {name}: {d}");
    }
    // An adapter for a wider model is refused and leaves no folder behind.
    let wrong = tmp.path().join("wrong");
    let opts = engine_llm::export::ConvertOptions {
        adapters: vec![wide_adapter(tmp.path())],
        ..Default::default()
    };
    let e = engine_llm::export::convert(&root().join("target/parity/llama"), &wrong, &opts, &mut |_, _| {})
        .expect_err("a wrong adapter is refused")
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj") && e.contains("another base model"),
        "{e}"
    );
    assert!(!wrong.exists());
}
