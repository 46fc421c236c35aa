//! LLaVA 1.5 against transformers on a tiny random checkpoint in the real
//! layout (tests/fixtures/llava, made by `cargo xtask torch-fixtures`): the
//! same prompt ids, last-position logits within 1e-4 and greedy tokens, and
//! a second image steers the answer elsewhere.

use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, TextGenerator};
use engine_vlm::VlmModel;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load() -> VlmModel {
    VlmModel::load(&fixture(), &Default::default(), &mut |_| {}).unwrap()
}

/// The case's chat as ours: text parts joined, image parts attached in order.
fn messages(case: &Value) -> Vec<ChatMessage> {
    let mut images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| fixture().join(n.as_str().unwrap()));
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

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn matches_transformers_on_every_case() {
    let model = load();
    let fx = expected();
    for (name, case) in fx["cases"].as_object().unwrap() {
        let msgs = messages(case);
        let (prompt_ids, logits) = model.logits(&msgs).unwrap();
        assert_eq!(prompt_ids, ids(&case["input_ids"]), "{name}: prompt ids");
        let got = logits.to_f32_vec().unwrap();
        let vocab = logits.dim(1);
        let want: Vec<f32> = case["logits_last"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        let tail = &got[got.len() - want.len()..];
        let worst = tail
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: logits differ by {worst} (vocab {vocab})");
    }
}

#[test]
fn greedy_tokens_match_and_images_steer_them() {
    let mut model = load();
    let fx = expected();
    let eos = 2;
    let mut answers = Vec::new();
    for name in ["one_image", "other_image", "two_images", "text_only"] {
        let case = &fx["cases"][name];
        let g = model
            .generate(&Prompt::Chat(messages(case)), &GenerateParams::greedy(12))
            .unwrap();
        let mut want = ids(&case["greedy"]);
        if let Some(p) = want.iter().position(|&t| t == eos) {
            want.truncate(p + 1);
        }
        assert_eq!(g.tokens, want, "{name}: greedy tokens");
        answers.push(g.tokens);
    }
    assert_ne!(answers[0], answers[1], "a different image must give a different answer");
}

#[test]
fn placeholder_and_image_counts_must_agree() {
    let mut model = load();
    let img = ImageSource::Path(fixture().join("image0.png"));
    // An image on a message whose template writes no placeholder for it cannot happen
    // with this template, so attach one and forge a prompt with the placeholder typed in:
    // user text is plain text, so `<image>` typed by a user is not a placeholder.
    let msg = ChatMessage::new("user", "<image> What is in the image ?");
    let p = model.encode(&[msg]).unwrap();
    assert!(p.embeds.is_none(), "typed `<image>` must not become an image slot");
    let two = ChatMessage::new("user", "Compare")
        .with_image(img.clone())
        .with_image(img);
    let g = model.generate(&Prompt::Chat(vec![two]), &GenerateParams::greedy(2));
    assert!(g.is_ok(), "{:?}", g.err());
}
