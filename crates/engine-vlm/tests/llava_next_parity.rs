//! LLaVA-NeXT against transformers on a tiny random checkpoint in the real
//! layout (tests/fixtures/llava-next, made by `cargo xtask torch-fixtures`): the
//! same prompt ids, last-position logits within 1e-4 and greedy tokens, and
//! a second image steers the answer elsewhere.

mod common;

use common::{assert_greedy_match, assert_logits_match, fixture};
use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, TextGenerator};
use engine_vlm::VlmModel;

const NAME: &str = "llava-next";

fn load() -> VlmModel {
    common::load(NAME)
}

#[test]
fn matches_transformers_on_every_case() {
    assert_logits_match(&load(), NAME);
}

#[test]
fn greedy_tokens_match_and_images_steer_them() {
    assert_greedy_match(&mut load(), NAME, 2);
}

#[test]
fn each_image_takes_its_anyres_token_count() {
    // The count follows each image's pinpoint and aspect (unpadded rows or
    // columns plus a newline per row), so differently shaped images differ.
    let model = load();
    let fx = common::expected(NAME);
    let token = fx["image_token_id"].as_u64().unwrap() as u32;
    let mut counts = Vec::new();
    for case in ["one_image", "other_image"] {
        let want = common::ids(&fx["cases"][case]["input_ids"]);
        let p = model.encode(&common::messages(NAME, &fx["cases"][case])).unwrap();
        assert_eq!(p.ids, want);
        counts.push(p.ids.iter().filter(|&&t| t == token).count());
    }
    assert_ne!(counts[0], counts[1], "{counts:?}");
    let img = ImageSource::Path(fixture(NAME).join("image2.png"));
    let g = model_generate(img);
    assert!(g.is_ok(), "{:?}", g.err());
}

fn model_generate(img: ImageSource) -> engine_core::Result<engine_core::Generation> {
    let mut model = load();
    let msg = ChatMessage::new("user", "What is in the image ?").with_image(img);
    model.generate(&Prompt::Chat(vec![msg]), &GenerateParams::greedy(2))
}
