//! Streaming detokenization: pieces concatenate to the full decode, and no
//! piece ever holds half a character.

mod common;

use engine_core::gguf::GgufMetadata;
use engine_core::tokenizer::Tokenizer;

/// Streams `ids` and checks every piece and the concatenation.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) {
    let mut stream = tok.stream(skip_special);
    let mut out = String::new();
    for &id in ids {
        if let Some(piece) = stream.push(id).unwrap() {
            assert!(
                !piece.contains('\u{fffd}'),
                "half a character emitted in {piece:?} (ids {ids:?})"
            );
            out.push_str(&piece);
        }
        assert_eq!(stream.text(), out);
    }
    out.push_str(&stream.finish().unwrap());
    assert_eq!(out, tok.decode(ids, skip_special).unwrap(), "ids {ids:?}");
}

fn case_ids(fx: &serde_json::Value, model: &str) -> Vec<Vec<u32>> {
    fx[model]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| common::ids(&c["ids"]))
        .collect()
}

#[test]
fn smollm2_byte_level_stream_equals_full_decode() {
    let fx = common::fixtures();
    let tok = Tokenizer::from_gguf(&GgufMetadata::read(common::smollm2_gguf()).unwrap()).unwrap();
    let all = case_ids(&fx, "smollm2");
    for ids in &all {
        check_stream(&tok, ids, false);
        check_stream(&tok, ids, true);
    }
    // One long stream (crosses the window compaction).
    let long: Vec<u32> = all.iter().flatten().copied().collect();
    assert!(long.len() > 200);
    check_stream(&tok, &long, false);
}

#[test]
fn emoji_split_across_byte_tokens_is_held_back() {
    let tok = Tokenizer::from_gguf(&GgufMetadata::read(common::smollm2_gguf()).unwrap()).unwrap();
    let ids = tok.encode("a👨‍👩‍👧", false).unwrap();
    // The family emoji takes more tokens than characters: some tokens are
    // partial UTF-8.
    assert!(ids.len() > 2, "{ids:?}");
    let mut stream = tok.stream(false);
    let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
    assert!(
        pieces.iter().any(Option::is_none),
        "some token must be held back: {pieces:?}"
    );
    let joined: String = pieces.into_iter().flatten().collect::<String>() + &stream.finish().unwrap();
    assert_eq!(joined, "a👨‍👩‍👧");
}

#[test]
fn spm_stream_keeps_leading_spaces() {
    let fx = common::fixtures();
    let tok = Tokenizer::from_gguf(&GgufMetadata::read(common::fixture_path("tiny_spm.gguf")).unwrap()).unwrap();
    for ids in case_ids(&fx, "tiny_spm") {
        check_stream(&tok, &ids, true);
        check_stream(&tok, &ids, false);
    }
    // Word by word: every piece after the first starts with its space.
    let ids = tok.encode("Hello world the dog", false).unwrap();
    let mut stream = tok.stream(true);
    let pieces: Vec<String> = ids.iter().filter_map(|&id| stream.push(id).unwrap()).collect();
    assert_eq!(pieces.concat(), "Hello world the dog");
    assert!(pieces.iter().skip(1).any(|p| p.starts_with(' ')), "{pieces:?}");
}

#[test]
fn truncated_character_is_flushed_by_finish() {
    let tok = Tokenizer::from_gguf(&GgufMetadata::read(common::smollm2_gguf()).unwrap()).unwrap();
    let ids = tok.encode("ok 😀", false).unwrap();
    let mut stream = tok.stream(false);
    let mut out = String::new();
    // Stop one token early: the emoji is incomplete.
    for &id in &ids[..ids.len() - 1] {
        out.extend(stream.push(id).unwrap());
    }
    assert!(!out.contains('\u{fffd}'));
    let rest = stream.finish().unwrap();
    assert_eq!(out + &rest, tok.decode(&ids[..ids.len() - 1], false).unwrap());
}
