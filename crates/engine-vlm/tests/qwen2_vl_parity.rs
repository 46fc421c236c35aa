//! Qwen2-VL and Qwen2.5-VL (window attention) against transformers on tiny
//! random checkpoints in the real layout (tests/fixtures/qwen2-vl and
//! qwen2.5-vl, `cargo xtask torch-fixtures`): the
//! processor's prompt ids (placeholders expanded by the image grids), logits
//! within 1e-4 through the native-resolution tower and M-RoPE, greedy
//! tokens, and a chat whose second turn reuses the first's cache.

mod common;

use common::{expected, fixture, greedy, ids, last_logits, messages};
use engine_core::{GenerateParams, Prompt, StreamEvent, TextGenerator};
use engine_vlm::VlmModel;

const NAME: &str = "qwen2-vl";

fn load() -> VlmModel {
    VlmModel::load(&fixture(NAME), &Default::default(), &mut |_| {}).unwrap()
}

#[test]
fn matches_transformers_on_every_case() {
    let model = load();
    let fx = expected(NAME);
    for (name, case) in fx["cases"].as_object().unwrap() {
        let (prompt_ids, logits) = model.logits(&messages(NAME, case)).unwrap();
        assert_eq!(prompt_ids, ids(&case["input_ids"]), "{name}: prompt ids");
        let got = logits.to_f32_vec().unwrap();
        let want = last_logits(case);
        let tail = &got[got.len() - want.len()..];
        let worst = tail
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: logits differ by {worst}");
    }
}

#[test]
fn greedy_tokens_match_and_images_steer_them() {
    let mut model = load();
    let fx = expected(NAME);
    let eos = fx["eos_token_id"].as_u64().unwrap() as u32;
    let mut answers = Vec::new();
    for name in ["one_image", "other_image", "two_images", "text_only"] {
        let case = &fx["cases"][name];
        let g = model
            .generate(&Prompt::Chat(messages(NAME, case)), &GenerateParams::greedy(12))
            .unwrap();
        assert_eq!(g.tokens, greedy(case, eos), "{name}: greedy tokens");
        answers.push(g.tokens);
    }
    assert_ne!(answers[0], answers[1], "a different image must give a different answer");
}

#[test]
fn a_chat_with_images_reuses_its_cache_and_keys_it_by_pixels() {
    let model = load();
    let fx = expected(NAME);
    let case = &fx["cases"]["one_image"];
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
    let first = run(chat.send(messages(NAME, case).remove(0), &params).unwrap());
    let follow = engine_core::ChatMessage::new("user", "Describe this picture .");
    let second = run(chat.send(follow, &params).unwrap());
    assert!(
        second.prompt_tokens_processed < second.prompt_tokens - first.prompt_tokens / 2,
        "the second turn reuses the image span: {second:?}"
    );
    // Same text, another image: the image span must be recomputed, not reused.
    let mut other = model.chat(None);
    run(other.send(messages(NAME, case).remove(0), &params).unwrap());
    let mut swapped = messages(NAME, &fx["cases"]["other_image"]).remove(0);
    swapped.content = "What is in the image ?".into();
    let again = run(other.send(swapped, &params).unwrap());
    assert!(again.prompt_tokens_processed > 0);
}
