//! Qwen2-VL and Qwen2.5-VL (window attention) against transformers on tiny
//! random checkpoints in the real layout (tests/fixtures/qwen2-vl and
//! qwen2.5-vl, `cargo xtask torch-fixtures`): the
//! processor's prompt ids (placeholders expanded by the image grids), logits
//! within 1e-4 through the native-resolution tower and M-RoPE, greedy
//! tokens, and a chat whose second turn reuses the first's cache.

mod common;

use common::{assert_greedy_match, assert_logits_match, expected, fixture, messages};
use engine_core::{GenerateParams, StreamEvent};
use engine_vlm::VlmModel;

const NAME: &str = "qwen2-vl";
const FIXTURES: [&str; 2] = ["qwen2-vl", "qwen2.5-vl"];

fn load_named(name: &str) -> VlmModel {
    VlmModel::load(&fixture(name), &Default::default(), &mut |_| {}).unwrap()
}

fn load() -> VlmModel {
    load_named(NAME)
}

#[test]
fn matches_transformers_on_every_case() {
    for name in FIXTURES {
        assert_logits_match(&load_named(name), name);
    }
}

#[test]
fn greedy_tokens_match_and_images_steer_them() {
    for name in FIXTURES {
        let eos = expected(name)["eos_token_id"].as_u64().unwrap() as u32;
        assert_greedy_match(&mut load_named(name), name, eos);
    }
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

#[test]
fn loads_the_mlx_vlm_layout_too() {
    // mlx-community conversions name the tower `vision_tower.*` and the decoder
    // `language_model.model.*`, with the patch convolution channels-last.
    let src = fixture("qwen2.5-vl");
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e != "safetensors") {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    let w = engine_mlx::WeightMap::load_safetensors(src.join("model.safetensors")).unwrap();
    let mut renamed: Vec<(String, engine_mlx::Array)> = Vec::new();
    for (name, a) in w.iter() {
        let (name, a) = if let Some(r) = name.strip_prefix("visual.") {
            let a = if r == "patch_embed.proj.weight" {
                a.transpose(&[0, 2, 3, 4, 1]).unwrap()
            } else {
                a.clone()
            };
            (format!("vision_tower.{r}"), a)
        } else if let Some(r) = name.strip_prefix("model.") {
            (format!("language_model.model.{r}"), a.clone())
        } else {
            (format!("language_model.{name}"), a.clone())
        };
        renamed.push((name, a.contiguous().unwrap()));
    }
    let refs: Vec<(&str, &engine_mlx::Array)> = renamed.iter().map(|(n, a)| (n.as_str(), a)).collect();
    engine_mlx::save_safetensors(dir.path().join("model.safetensors"), &refs, &[]).unwrap();
    let converted = VlmModel::load(dir.path(), &Default::default(), &mut |_| {}).unwrap();
    let original = load_named("qwen2.5-vl");
    let fx = expected("qwen2.5-vl");
    let msgs = messages("qwen2.5-vl", &fx["cases"]["one_image"]);
    let (a, b) = (original.logits(&msgs).unwrap().1, converted.logits(&msgs).unwrap().1);
    let worst = a
        .to_f32_vec()
        .unwrap()
        .iter()
        .zip(b.to_f32_vec().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "the mlx-vlm layout gives other logits: {worst}");
}
