//! Gemma 3 against transformers on a tiny random checkpoint in the real
//! layout (tests/fixtures/gemma3, `cargo xtask torch-fixtures`): a SigLIP
//! tower, 2×2 average pooling and the RMSNorm projector, the processor's
//! `\n\n<start_of_image>…<end_of_image>\n\n` markup, attention bidirectional
//! over each image's soft tokens (the decoder's sliding layer has a window of
//! 8, which bites inside the prompt): prompt ids, logits within 1e-4, greedy
//! tokens, and a chat that reuses its cache.

mod common;

use common::{assert_greedy_match, assert_logits_match, expected, fixture, messages};
use engine_core::{ChatMessage, GenerateParams, StreamEvent};
use engine_vlm::VlmModel;

const NAME: &str = "gemma3";

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
fn it_runs_with_images() {
    assert!(engine_vlm::runs_with_images(&fixture(NAME)));
}

#[test]
fn image_tokens_form_one_bidirectional_span_per_image() {
    let model = load();
    let fx = expected(NAME);
    let image_token = fx["image_token_id"].as_u64().unwrap() as u32;
    let p = model.encode(&messages(NAME, &fx["cases"]["two_images"])).unwrap();
    let spans = p.embeds.unwrap().bidirectional;
    assert_eq!(spans.len(), 2, "{spans:?}");
    for (a, b) in spans {
        assert_eq!(b - a, 4, "mm_tokens_per_image soft tokens per image");
        assert!(p.ids[a..b].iter().all(|&t| t == image_token));
    }
    // A user typing the image marker gets text, not an image slot.
    let typed = model
        .encode(&[ChatMessage::new("user", "<start_of_image> What is in the image ?")])
        .unwrap();
    assert!(typed.embeds.is_none());
    assert!(!typed.ids.contains(&image_token));
}

#[test]
fn a_chat_reuses_its_cache_across_turns() {
    let model = load();
    let fx = expected(NAME);
    let mut chat = model.chat(None);
    let params = GenerateParams::greedy(4);
    let run = |turn: engine_llm::ChatTurn<'_>| {
        turn.map(|e| e.unwrap())
            .find_map(|e| match e {
                StreamEvent::Done { stats, .. } => Some(stats),
                _ => None,
            })
            .unwrap()
    };
    let first = run(chat
        .send(messages(NAME, &fx["cases"]["one_image"]).remove(0), &params)
        .unwrap());
    let second = run(chat
        .send(ChatMessage::new("user", "Describe this picture ."), &params)
        .unwrap());
    assert!(
        second.prompt_tokens_processed < second.prompt_tokens - first.prompt_tokens / 2,
        "the second turn reuses the image span: {second:?}"
    );
}
