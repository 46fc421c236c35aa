//! Chat template rendering against transformers' `apply_chat_template`
//! (outputs recorded in tests/fixtures/tokenizer_fixtures.json).

mod common;

use engine_core::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};
use engine_core::gguf::GgufMetadata;
use engine_core::tokenizer::Tokenizer;

fn messages(v: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

#[test]
fn smollm2_gguf_template_matches_transformers() {
    let fx = common::fixtures();
    let chat = &fx["smollm2"]["chat"];
    let meta = GgufMetadata::read(common::smollm2_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&meta).unwrap();
    let t = ChatTemplate::from_gguf(&meta)
        .unwrap()
        .expect("SmolLM2 ships a template");
    let msgs = messages(&chat["messages"]);
    let opts = RenderOptions {
        add_generation_prompt: true,
        bos_token: tok.bos_token(),
        eos_token: tok.eos_token(),
        ..Default::default()
    };
    assert_eq!(t.render(&msgs, &opts).unwrap(), chat["rendered"].as_str().unwrap());
    let no_gen = RenderOptions {
        add_generation_prompt: false,
        ..opts
    };
    assert_eq!(
        t.render(&msgs[1..], &no_gen).unwrap(),
        chat["rendered_no_system"].as_str().unwrap()
    );
    // The rendered prompt tokenizes with the template's markers as single tokens.
    let ids = tok.encode(chat["rendered"].as_str().unwrap(), false).unwrap();
    assert_eq!(ids.iter().filter(|&&i| Some(i) == tok.bos_token_id()).count(), 5);
}

fn feature_options(f: &serde_json::Value, tools: bool) -> RenderOptions {
    RenderOptions {
        add_generation_prompt: true,
        bos_token: f["bos_token"].as_str().map(str::to_string),
        tools: tools.then(|| f["tools"].clone()),
        ..Default::default()
    }
}

#[test]
fn python_features_match_transformers() {
    let fx = common::fixtures();
    let f = &fx["smollm2"]["feature_template"];
    let t = ChatTemplate::new(f["template"].as_str().unwrap(), "fixture").unwrap();
    let msgs = messages(&f["messages"]);
    assert_eq!(
        t.render(&msgs, &feature_options(f, false)).unwrap(),
        f["rendered"].as_str().unwrap()
    );
    assert_eq!(
        t.render(&msgs, &feature_options(f, true)).unwrap(),
        f["rendered_with_tools"].as_str().unwrap()
    );
}

#[test]
fn raise_exception_surfaces_the_templates_message() {
    let fx = common::fixtures();
    let f = &fx["smollm2"]["feature_template"];
    let t = ChatTemplate::new(f["template"].as_str().unwrap(), "fixture").unwrap();
    let bad = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    let err = t.render(&bad, &feature_options(f, false)).unwrap_err();
    assert!(matches!(err, ChatTemplateError::Render { .. }));
    assert!(err.to_string().contains("Conversation roles must alternate"), "{err}");
}

#[test]
fn templates_from_model_directories() {
    let dir = std::env::temp_dir().join(format!("engine-core-tmpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // No template at all.
    assert!(ChatTemplate::from_dir(&dir).unwrap().is_none());
    // A list of named templates in tokenizer_config.json: "default" is used.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_dir(&dir).unwrap().unwrap();
    assert_eq!(
        t.render(&[ChatMessage::new("user", "x")], &RenderOptions::default())
            .unwrap(),
        "D1"
    );
    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "J{% if add_generation_prompt %}!{% endif %}",
    )
    .unwrap();
    let t = ChatTemplate::from_dir(&dir).unwrap().unwrap();
    let opts = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    assert_eq!(t.render(&[], &opts).unwrap(), "J!");
    // A malformed config is a clear error, not a panic.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{not json").unwrap();
    let err = ChatTemplate::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eos_ids_come_from_configs_and_the_template() {
    // A model directory holding SmolLM2's tokenizer as tokenizer.json.
    let meta = GgufMetadata::read(common::smollm2_gguf()).unwrap();
    let gguf_tok = Tokenizer::from_gguf(&meta).unwrap();
    let dir = std::env::temp_dir().join(format!("engine-core-eos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    gguf_tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({
        "eos_token": {"content": "<|endoftext|>"},
        "bos_token": "<|im_start|>",
        "chat_template": meta.chat_template().unwrap().unwrap(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [7, 8]}"#).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": 8}"#).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let endoftext = tok.token_to_id("<|endoftext|>").unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    // generation_config (a list), config, tokenizer_config's eos_token, and
    // <|im_end|> because the template ends turns with it.
    assert_eq!(tok.eos_token_ids(), &[7, 8, endoftext, im_end]);
    assert_eq!(tok.bos_token_id(), tok.token_to_id("<|im_start|>"));
    // Same ids as the GGUF route for the same text.
    let text = "<|im_start|>user\nHi 😀 123<|im_end|>";
    assert_eq!(tok.encode(text, true).unwrap(), gguf_tok.encode(text, true).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_tokenizer_json_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("engine-core-notok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("has no tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(err.to_string().contains("cannot load the tokenizer"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
