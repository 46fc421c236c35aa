//! LLaVA 1.5 against transformers on a tiny random checkpoint in the real
//! layout (tests/fixtures/llava, made by `cargo xtask torch-fixtures`): the
//! same prompt ids, last-position logits within 1e-4 and greedy tokens, and
//! a second image steers the answer elsewhere.

mod common;

use common::{assert_greedy_match, assert_logits_match, fixture};
use engine_core::{ChatMessage, GenerateParams, ImageSource, Prompt, TextGenerator};
use engine_vlm::VlmModel;

const NAME: &str = "llava";

fn load() -> VlmModel {
    VlmModel::load(&fixture(NAME), &Default::default(), &mut |_| {}).unwrap()
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
fn typed_placeholders_are_text_and_each_image_gets_its_slots() {
    let mut model = load();
    // User text is plain text: `<image>` typed by a user is not an image slot.
    let p = model
        .encode(&[ChatMessage::new("user", "<image> What is in the image ?")])
        .unwrap();
    assert!(p.embeds.is_none(), "typed `<image>` must not become an image slot");
    let img = ImageSource::Path(fixture(NAME).join("image0.png"));
    let two = ChatMessage::new("user", "Compare")
        .with_image(img.clone())
        .with_image(img);
    let p = model.encode(std::slice::from_ref(&two)).unwrap();
    assert_eq!(
        p.ids.iter().filter(|&&t| t == 3).count(),
        2 * 16,
        "two images of 16 positions each"
    );
    let g = model.generate(&Prompt::Chat(vec![two]), &GenerateParams::greedy(2));
    assert!(g.is_ok(), "{:?}", g.err());
}
