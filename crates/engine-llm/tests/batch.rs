//! Continuous batching on the real SmolLM2-135M-Instruct: requests that join
//! a running batch at different times, with prompts prefilled in several
//! chunks and prefixes reused from earlier requests, give the same greedy
//! tokens as each request alone; cancelled requests leave at once.

use engine_core::{ChatMessage, FinishReason, GenerateParams, Prompt, StreamEvent, TextGenerator};
use engine_llm::{BatchOptions, LlmModel, LoadOptions, SeqId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The model, one test at a time (MLX arrays are not `Sync`).
fn model() -> MutexGuard<'static, LlmModel> {
    static M: OnceLock<Mutex<LlmModel>> = OnceLock::new();
    let m = M.get_or_init(|| {
        let p = std::env::var_os("MLXENGINE_SMOLLM2_GGUF")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/SmolLM2-135M-Instruct.Q4_1.gguf")
            });
        assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
        Mutex::new(LlmModel::load(&p, &LoadOptions::default(), &mut |_| {}).unwrap())
    });
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chat(m: &LlmModel, system: Option<&str>, q: &str) -> Vec<u32> {
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", q));
    m.encode_prompt(&Prompt::Chat(msgs)).unwrap()
}

/// Tokens and finish of one request run alone, through the plain decode loop.
fn alone(m: &LlmModel, prompt: &[u32], params: &GenerateParams) -> (Vec<u32>, String, FinishReason) {
    let (mut tokens, mut text) = (Vec::new(), String::new());
    for e in m.generate_from_tokens(prompt, params, None).unwrap() {
        match e.unwrap() {
            StreamEvent::Text { text: t, token } => {
                tokens.push(token);
                text.push_str(&t);
            }
            StreamEvent::Done { finish_reason, .. } => return (tokens, text, finish_reason),
        }
    }
    panic!("no Done event")
}

#[derive(Default, Debug)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    prompt_tokens_processed: usize,
}

/// Runs `arrivals` (step at which to submit, prompt, params) through one
/// scheduler until every request is done.
fn batched(
    m: &LlmModel,
    options: BatchOptions,
    arrivals: &[(usize, Vec<u32>, GenerateParams)],
) -> (Vec<Outcome>, usize) {
    let mut s = m.scheduler(options);
    let mut row: HashMap<SeqId, usize> = HashMap::new();
    let mut out: Vec<Outcome> = arrivals.iter().map(|_| Outcome::default()).collect();
    let mut most_running = 0;
    let mut step = 0;
    while step == 0 || !s.is_idle() || row.len() < arrivals.len() {
        for (i, (at, prompt, params)) in arrivals.iter().enumerate() {
            if *at == step {
                row.insert(s.submit(prompt.clone(), params).unwrap(), i);
            }
        }
        for e in s.step().unwrap() {
            let o = &mut out[row[&e.id]];
            assert!(o.finish.is_none(), "an event after Done");
            match e.event {
                StreamEvent::Text { text, token } => {
                    o.tokens.push(token);
                    o.text.push_str(&text);
                }
                StreamEvent::Done { finish_reason, stats } => {
                    o.finish = Some(finish_reason);
                    o.prompt_tokens_processed = stats.prompt_tokens_processed;
                    assert_eq!(stats.generated_tokens, o.tokens.len());
                }
            }
        }
        most_running = most_running.max(s.running());
        step += 1;
        assert!(step < 2000, "the scheduler does not finish");
    }
    (out, most_running)
}

#[test]
fn staggered_requests_match_each_alone() {
    let guard = model();
    let m = &*guard;
    let long_q = "Here is a list of fruits: apple, banana, cherry, date, elderberry, fig, grape, honeydew, \
                  kiwi, lemon, mango, nectarine, orange, papaya, quince, raspberry, strawberry. \
                  Which of them is yellow?";
    let prompts = [
        chat(m, None, "What is the capital of France?"),
        chat(m, None, "Name a color."),
        chat(m, None, long_q),
        chat(m, None, "Say hello in Spanish."),
    ];
    assert!(prompts[2].len() > 64, "the long prompt spans several chunks");
    let mut p = GenerateParams::greedy(24);
    p.stop = vec!["\n\n".into()];
    let arrivals = vec![
        (0, prompts[0].clone(), GenerateParams::greedy(20)),
        (3, prompts[1].clone(), GenerateParams::greedy(16)),
        (3, prompts[2].clone(), p),
        (9, prompts[3].clone(), GenerateParams::greedy(0)),
    ];
    // Small chunks: the long prompt takes several steps beside the decoding ones.
    let opts = BatchOptions {
        prefill_chunk: 32,
        ..Default::default()
    };
    let (got, most) = batched(m, opts, &arrivals);
    assert!(most >= 3, "requests overlapped (at most {most} ran at once)");
    for ((_, prompt, params), o) in arrivals.iter().zip(&got) {
        let (tokens, text, finish) = alone(m, prompt, params);
        assert_eq!(o.tokens, tokens, "tokens of {:?}", text);
        assert_eq!(o.text, text);
        assert_eq!(o.finish, Some(finish));
    }
    assert!(got[0].text.contains("Paris"), "{:?}", got[0].text);
    assert!(got[3].tokens.is_empty() && got[3].finish == Some(FinishReason::Length));
}

#[test]
fn a_shared_system_prompt_is_prefilled_once() {
    let guard = model();
    let m = &*guard;
    let system = "You are a helpful assistant for a bakery. You answer questions about bread, cakes, \
                  opening hours and prices politely, in one or two short sentences, and never make up facts.";
    let a = chat(m, Some(system), "When do you open?");
    let b = chat(m, Some(system), "Do you sell rye bread?");
    let params = GenerateParams::greedy(12);
    // b arrives after a's prefill is done, so a's prompt is in the prefix cache.
    let arrivals = vec![(0, a.clone(), params.clone()), (4, b.clone(), params.clone())];
    let (got, _) = batched(m, BatchOptions::default(), &arrivals);
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(shared > 40, "the prompts share the system prompt ({shared} tokens)");
    assert_eq!(got[0].prompt_tokens_processed, a.len());
    assert_eq!(
        got[1].prompt_tokens_processed,
        b.len() - shared,
        "b reuses the shared prefix"
    );
    for ((_, prompt, params), o) in arrivals.iter().zip(&got) {
        assert_eq!(o.tokens, alone(m, prompt, params).0);
    }
    // Turned off, nothing is reused.
    let off = BatchOptions {
        prefix_cache_bytes: 0,
        ..Default::default()
    };
    let (got, _) = batched(m, off, &arrivals);
    assert_eq!(got[1].prompt_tokens_processed, b.len());
}

#[test]
fn a_cancelled_request_leaves_the_batch_at_once() {
    let guard = model();
    let m = &*guard;
    let mut s = m.scheduler(BatchOptions::default());
    let keep = s
        .submit(chat(m, None, "Count from one to twenty."), &GenerateParams::greedy(40))
        .unwrap();
    let gone = s
        .submit(chat(m, None, "Tell me a story."), &GenerateParams::greedy(40))
        .unwrap();
    let mut seen = HashMap::<SeqId, usize>::new();
    for _ in 0..4 {
        for e in s.step().unwrap() {
            *seen.entry(e.id).or_default() += 1;
        }
    }
    assert_eq!(s.running(), 2);
    assert!(seen[&gone] > 0);
    s.cancel(gone);
    let mut after = 0;
    let mut kept = Vec::new();
    while !s.is_idle() {
        let events = s.step().unwrap();
        assert!(s.running() <= 1, "the cancelled row left within a step");
        for e in events {
            if e.id == gone {
                after += 1;
            } else {
                kept.push(e);
            }
        }
    }
    assert_eq!(after, 0, "no events after cancel");
    assert!(matches!(kept.last().map(|e| &e.event), Some(StreamEvent::Done { .. })));
    assert_eq!(kept.first().map(|e| e.id), Some(keep));
}

#[test]
fn sampling_and_greedy_requests_share_a_batch() {
    let guard = model();
    let m = &*guard;
    let q = chat(m, None, "Write a haiku about the sea.");
    let mut hot = GenerateParams::greedy(16);
    hot.temperature = 0.8;
    hot.top_p = 0.9;
    hot.seed = Some(7);
    let mut penalized = GenerateParams::greedy(16);
    penalized.repetition_penalty = 1.3;
    let arrivals = vec![
        (0, q.clone(), GenerateParams::greedy(16)),
        (0, q.clone(), hot),
        (0, q.clone(), penalized.clone()),
    ];
    let (got, most) = batched(m, BatchOptions::default(), &arrivals);
    assert_eq!(most, 3);
    assert_eq!(got[0].tokens, alone(m, &q, &GenerateParams::greedy(16)).0);
    assert_eq!(got[2].tokens, alone(m, &q, &penalized).0);
    assert_eq!(got[1].tokens.len(), 16);
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let guard = model();
    let m = &*guard;
    let mut s = m.scheduler(BatchOptions::default());
    assert!(s.submit(Vec::new(), &GenerateParams::greedy(4)).is_err());
    assert!(s.submit(vec![u32::MAX], &GenerateParams::greedy(4)).is_err());
    let mut bad = GenerateParams::greedy(4);
    bad.temperature = -1.0;
    assert!(s.submit(vec![1, 2, 3], &bad).is_err());
    let too_long = vec![1; m.configuration().context_length];
    assert!(s.submit(too_long, &GenerateParams::greedy(4)).is_err());
    assert!(s.is_idle());
}
