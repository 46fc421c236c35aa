//! What generation returns, and the trait every text backend implements.

use crate::chat_template::ChatMessage;
use crate::error::Result;
use crate::params::{GenerateParams, ModelConfiguration};
use crate::FeatureFlag;
use serde::Serialize;

/// Input of a generation.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Raw text, tokenized as is (no chat template).
    Text(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string matched.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The context window is full.
    ContextFull,
}

/// Timing and size statistics of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens actually processed (fewer when a chat reuses its KV cache).
    pub prompt_tokens_processed: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time to first token, in milliseconds.
    pub ttft_ms: f64,
    /// Prompt processing speed.
    pub prompt_tok_per_s: f64,
    /// Decode speed (after the first token).
    pub decode_tok_per_s: f64,
    /// Peak memory of the backend during generation, in bytes.
    pub peak_memory_bytes: usize,
    /// Time the host spent waiting for the device to finish decode steps, in
    /// milliseconds (tokens after the first). Next to the decode time it tells
    /// what bounds decode: near zero when building each step's graph on the
    /// host takes longer than the device takes to run it. Measured by the
    /// single-sequence decode loop; 0 from the batch scheduler, whose
    /// sequences share their steps.
    pub decode_wait_ms: f64,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The generated text (stop string excluded).
    pub text: String,
    /// Exactly the generated token ids, in order — the EOS that ended the
    /// answer included (`finish_reason` is then `Eos`).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Statistics.
    pub stats: GenerationStats,
}

/// One item of a streamed generation.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// One per generated token (EOS included), with the text it completes
    /// (may be empty while a UTF-8 character or stop string is pending).
    Text {
        /// The new text.
        text: String,
        /// The token that completed it.
        token: u32,
    },
    /// The end, with why and the statistics.
    Done {
        /// Why it stopped.
        finish_reason: FinishReason,
        /// Statistics.
        stats: GenerationStats,
    },
}

/// Progress of a model load.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProgress {
    /// What is happening (`"reading weights"`, ...).
    pub stage: String,
    /// Fraction done, 0..=1.
    pub fraction: f32,
}

/// A text-generation backend: the MLX engine, or the explicit mock.
pub trait TextGenerator {
    /// What was loaded.
    fn configuration(&self) -> &ModelConfiguration;

    /// What this model supports; requests are checked against it.
    fn features(&self) -> &[FeatureFlag] {
        &self.configuration().capabilities
    }

    /// Generates to completion.
    fn generate(&mut self, prompt: &Prompt, params: &GenerateParams) -> Result<Generation> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        for event in self.stream(prompt, params)? {
            match event? {
                StreamEvent::Text { text: t, token } => {
                    text.push_str(&t);
                    tokens.push(token);
                }
                StreamEvent::Done { finish_reason, stats } => {
                    return Ok(Generation {
                        text,
                        tokens,
                        finish_reason,
                        stats,
                    })
                }
            }
        }
        Err(crate::EngineError::Backend(
            "the stream ended without a Done event".into(),
        ))
    }

    /// Streams the generation as it is produced.
    fn stream<'a>(
        &'a mut self,
        prompt: &Prompt,
        params: &GenerateParams,
    ) -> Result<Box<dyn Iterator<Item = Result<StreamEvent>> + 'a>>;
}
