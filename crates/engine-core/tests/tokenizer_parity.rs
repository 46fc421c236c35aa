//! Token ids and decoded text against the transformers / sentencepiece
//! oracles recorded in tests/fixtures/tokenizer_fixtures.json.

mod common;

use engine_core::gguf::GgufMetadata;
use engine_core::tokenizer::Tokenizer;

fn check_cases(tok: &Tokenizer, cases: &serde_json::Value, with_full_decode: bool) {
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = common::ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, want, "encode({text:?})");
        let skip = tok.decode(&want, true).unwrap();
        assert_eq!(
            skip,
            case["decoded_skip_special"].as_str().unwrap(),
            "decode skip({text:?})"
        );
        if with_full_decode {
            let full = tok.decode(&want, false).unwrap();
            assert_eq!(full, case["decoded"].as_str().unwrap(), "decode({text:?})");
        }
    }
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let fx = common::fixtures();
    let meta = GgufMetadata::read(common::smollm2_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    let sm = &fx["smollm2"];
    check_cases(&tok, &sm["cases"], true);
    assert_eq!(tok.vocab_size() as u64, sm["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_token_id().map(u64::from), sm["bos_token_id"].as_u64());
    // <|im_end|> is both the GGUF eos and the template's end of turn.
    assert_eq!(tok.eos_token_ids()[0] as u64, sm["eos_token_id"].as_u64().unwrap());
    assert_eq!(tok.eos_token(), sm["chat"]["eos_token"].as_str().map(str::to_string));
    assert_eq!(tok.bos_token(), sm["chat"]["bos_token"].as_str().map(str::to_string));
    assert!(!tok.adds_bos(), "SmolLM2's GGUF says add_bos_token = false");
    assert!(tok.is_special(tok.eos_token_ids()[0]));
}

#[test]
fn minilm_tokenizer_json_matches_transformers() {
    let fx = common::fixtures();
    let tok = Tokenizer::from_dir(common::minilm_dir()).unwrap();
    check_cases(&tok, &fx["minilm"]["cases"], false);
    assert_eq!(tok.vocab_size() as u64, fx["minilm"]["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.token_to_id("[CLS]"), Some(101));
    assert_eq!(tok.id_to_token(102).as_deref(), Some("[SEP]"));
    // A BERT encoder has no end-of-sequence for generation.
    assert!(tok.eos_token_ids().is_empty());
}

#[test]
fn llama_spm_gguf_tokenizer_matches_sentencepiece() {
    let fx = common::fixtures();
    let meta = GgufMetadata::read(common::fixture_path("tiny_spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    check_cases(&tok, &fx["tiny_spm"]["cases"], false);
    assert_eq!(tok.vocab_size() as u64, fx["tiny_spm"]["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.bos_token_id(), Some(1));
    assert_eq!(tok.eos_token_ids(), &[2]);
    assert!(tok.adds_bos());
}
