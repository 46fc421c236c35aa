//! An explicitly chosen mock text backend for downstream apps' own tests:
//! deterministic, instant, no model files. The engine never falls back to it.

use crate::error::{EngineError, Result};
use crate::generation::{FinishReason, GenerationStats, Prompt, StreamEvent, TextGenerator};
use crate::params::{GenerateParams, ModelConfiguration, ModelSource};
use crate::{FeatureFlag, ModelType};

/// Replies with a scripted answer (or echoes the last user message), one
/// word per "token", honouring `max_tokens` and stop strings.
#[derive(Debug, Clone)]
pub struct MockTextGenerator {
    config: ModelConfiguration,
    reply: Option<String>,
}

impl MockTextGenerator {
    /// A mock that echoes `You said: <last user message>`.
    pub fn echo() -> Self {
        MockTextGenerator {
            config: ModelConfiguration {
                id: "mock".into(),
                source: ModelSource::Registry("mock".into()),
                revision: None,
                model_type: ModelType::Llm,
                architecture: "mock".into(),
                quantization: None,
                context_length: 4096,
                default_params: GenerateParams::default(),
                capabilities: vec![FeatureFlag::Streaming, FeatureFlag::Chat],
            },
            reply: None,
        }
    }

    /// A mock that always answers `reply`.
    pub fn scripted(reply: impl Into<String>) -> Self {
        MockTextGenerator {
            reply: Some(reply.into()),
            ..Self::echo()
        }
    }
}

impl TextGenerator for MockTextGenerator {
    fn configuration(&self) -> &ModelConfiguration {
        &self.config
    }

    fn stream<'a>(
        &'a mut self,
        prompt: &Prompt,
        params: &GenerateParams,
    ) -> Result<Box<dyn Iterator<Item = Result<StreamEvent>> + 'a>> {
        params.validate()?;
        let answer = match (&self.reply, prompt) {
            (Some(r), _) => r.clone(),
            (None, Prompt::Text(t)) => format!("You said: {t}"),
            (None, Prompt::Chat(m)) => {
                let last = m
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .ok_or_else(|| EngineError::InvalidParameter("the chat has no user message; add one".into()))?;
                format!("You said: {}", last.content)
            }
        };
        let mut text = String::new();
        let mut events = Vec::new();
        let mut finish = FinishReason::Eos;
        for (i, word) in answer.split_inclusive(' ').enumerate() {
            if i >= params.max_tokens {
                finish = FinishReason::Length;
                break;
            }
            let candidate = format!("{text}{word}");
            if let Some(pos) = params.stop.iter().filter_map(|s| candidate.find(s.as_str())).min() {
                events.push(StreamEvent::Text {
                    text: candidate[text.len().min(pos)..pos].to_string(),
                    token: i as u32,
                });
                finish = FinishReason::Stop;
                break;
            }
            events.push(StreamEvent::Text {
                text: word.to_string(),
                token: i as u32,
            });
            text = candidate;
        }
        let stats = GenerationStats {
            generated_tokens: events.len(),
            ..Default::default()
        };
        events.push(StreamEvent::Done {
            finish_reason: finish,
            stats,
        });
        Ok(Box::new(events.into_iter().map(Ok)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    #[test]
    fn echoes_and_respects_limits() {
        let mut m = MockTextGenerator::echo();
        let g = m
            .generate(
                &Prompt::Chat(vec![ChatMessage::new("user", "hi there")]),
                &GenerateParams::greedy(10),
            )
            .unwrap();
        assert_eq!(g.text, "You said: hi there");
        assert_eq!(g.finish_reason, FinishReason::Eos);
        let g = m
            .generate(&Prompt::Text("a b c".into()), &GenerateParams::greedy(2))
            .unwrap();
        assert_eq!(g.text, "You said: ");
        assert_eq!(g.finish_reason, FinishReason::Length);
        let p = GenerateParams {
            stop: vec!["b".into()],
            ..GenerateParams::greedy(10)
        };
        let g = m.generate(&Prompt::Text("a b c".into()), &p).unwrap();
        assert_eq!(g.text, "You said: a ");
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert!(m.generate(&Prompt::Chat(vec![]), &GenerateParams::greedy(1)).is_err());
    }
}
