//! Idefics3 / SmolVLM against transformers on a tiny random checkpoint in the
//! real layout (tests/fixtures/idefics3, `cargo xtask torch-fixtures`): the
//! processor's split into tiles plus a global frame, its
//! `<fake_token_around_image><row_r_col_c>` markup, the SigLIP tower and the
//! pixel-shuffle connector: prompt ids, logits within 1e-4, greedy tokens.

mod common;

use common::{assert_greedy_match, assert_logits_match, expected, messages};
use engine_core::ChatMessage;
use engine_vlm::VlmModel;

const NAME: &str = "idefics3";

fn load() -> VlmModel {
    common::load(NAME)
}

#[test]
fn matches_transformers_on_every_case() {
    assert_logits_match(&load(), NAME);
}

#[test]
fn greedy_tokens_match_and_images_steer_them() {
    let eos = expected(NAME)["eos_token_id"].as_u64().unwrap() as u32;
    assert_greedy_match(&mut load(), NAME, eos);
}

#[test]
fn each_frame_gets_its_slots_and_typed_markup_stays_text() {
    let model = load();
    let fx = expected(NAME);
    let image_token = fx["image_token_id"].as_u64().unwrap() as u32;
    // 80×64 splits 2×2: four tiles and the global frame, 4 tokens each.
    let p = model.encode(&messages(NAME, &fx["cases"]["one_image"])).unwrap();
    assert_eq!(p.ids.iter().filter(|&&t| t == image_token).count(), 5 * 4);
    let typed = model
        .encode(&[ChatMessage::new("user", "<image> <row_1_col_1> What is in the image ?")])
        .unwrap();
    assert!(typed.embeds.is_none());
}
