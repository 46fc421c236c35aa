//! The committed tiny vision-language checkpoints (`cargo xtask
//! torch-fixtures`) and transformers' answers for them.
#![allow(dead_code)] // each test binary uses a subset

use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, TextGenerator};
use engine_vlm::VlmModel;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// tests/fixtures/<name>.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Loads fixture `name` with the default options.
pub fn load(name: &str) -> VlmModel {
    VlmModel::load(&fixture(name), &Default::default(), &mut |_| {}).unwrap()
}

/// The fixture's expected.json.
pub fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A case's chat as ours: text parts joined, image parts attached in order.
pub fn messages(name: &str, case: &Value) -> Vec<ChatMessage> {
    let dir = fixture(name);
    let mut images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| dir.join(n.as_str().unwrap()));
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mut text = String::new();
            let mut msg_images = Vec::new();
            for part in m["content"].as_array().unwrap() {
                match part["type"].as_str().unwrap() {
                    "text" => text.push_str(part["text"].as_str().unwrap()),
                    _ => msg_images.push(ImageSource::Path(images.next().unwrap())),
                }
            }
            let mut msg = ChatMessage::new(m["role"].as_str().unwrap(), text);
            msg.images = msg_images;
            msg
        })
        .collect()
}

/// A JSON list of ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The last positions' logits of a case, flattened.
pub fn last_logits(case: &Value) -> Vec<f32> {
    case["logits_last"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect()
}

/// transformers' greedy tokens, cut after the first `eos` (where we stop).
pub fn greedy(case: &Value, eos: u32) -> Vec<u32> {
    let mut want = ids(&case["greedy"]);
    if let Some(p) = want.iter().position(|&t| t == eos) {
        want.truncate(p + 1);
    }
    want
}

/// Every case of fixture `name`: the prompt ids equal the processor's and the
/// last positions' logits are within 1e-4 of transformers'.
pub fn assert_logits_match(model: &VlmModel, name: &str) {
    let fx = expected(name);
    for (case_name, case) in fx["cases"].as_object().unwrap() {
        let (prompt_ids, logits) = model.logits(&messages(name, case)).unwrap();
        assert_eq!(prompt_ids, ids(&case["input_ids"]), "{name} {case_name}: prompt ids");
        let got = logits.to_f32_vec().unwrap();
        let want = last_logits(case);
        let tail = &got[got.len() - want.len()..];
        let worst = tail
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name} {case_name}: logits differ by {worst}");
    }
}

/// transformers' greedy tokens for each case of fixture `name`, and a
/// different image gives a different answer.
pub fn assert_greedy_match(model: &mut VlmModel, name: &str, eos: u32) {
    let fx = expected(name);
    let mut answers = Vec::new();
    for case_name in ["one_image", "other_image", "two_images", "text_only"] {
        let case = &fx["cases"][case_name];
        let prompt = Prompt::Chat(messages(name, case));
        let g = model.generate(&prompt, &GenerateParams::greedy(12)).unwrap();
        assert_eq!(g.tokens, greedy(case, eos), "{name} {case_name}: greedy tokens");
        answers.push(g.tokens);
    }
    assert_ne!(
        answers[0], answers[1],
        "{name}: a different image must give a different answer"
    );
}
