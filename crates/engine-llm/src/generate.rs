//! The decode loop: chunked prefill, then one token per step with the next
//! step's graph built (and scheduled) before the current token is read, plus
//! the text layer (streaming detokenization, EOS, stop strings).

use crate::cache::KvCache;
use crate::sample::Sampler;
use crate::transformer::{MaskSpec, Transformer};
use engine_core::{
    EngineError, FinishReason, GenerateParams, GenerationStats, Result, StreamEvent, StreamingDetokenizer, Tokenizer,
};
use engine_mlx::{async_eval, Array};
use std::time::Instant;

/// Prompt tokens processed per forward pass during prefill (bounds memory).
pub const PREFILL_CHUNK: usize = 512;

/// Most new tokens whose cache a generation reserves before it starts.
pub const RESERVE_LIMIT: usize = 4096;

pub(crate) fn be(e: engine_mlx::Error) -> EngineError {
    EngineError::Backend(e.to_string())
}

/// A KV cache together with what it holds, so a later prompt that shares a
/// prefix skips re-processing it.
#[derive(Default)]
pub struct CacheState {
    /// One cache per layer.
    pub cache: Vec<KvCache>,
    /// The tokens whose keys/values the cache holds, in order.
    pub tokens: Vec<u32>,
    /// Per cached position, what it holds: the token id, or for an image
    /// position a key derived from the image's pixels (see [`PromptEmbeds`]),
    /// so a prefix is never reused across different images behind the same
    /// placeholder ids.
    keys: Vec<u64>,
}

impl CacheState {
    /// Trims to the longest common prefix with a prompt whose per-position
    /// keys are `prompt` (token ids, or [`PromptEmbeds::keys`]), keeping at
    /// least one position to process (its logits start generation). Returns
    /// how many positions are already cached.
    pub fn reuse_prefix(&mut self, model: &Transformer, prompt: &[u64]) -> usize {
        self.reuse_prefix_outside(model, prompt, &[])
    }

    /// [`Self::reuse_prefix`] that never keeps part of a bidirectional span
    /// (its positions must be processed in one call).
    pub fn reuse_prefix_outside(&mut self, model: &Transformer, prompt: &[u64], spans: &[(usize, usize)]) -> usize {
        let common = self.keys.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let mut keep = common.min(prompt.len().saturating_sub(1));
        if let Some(&(a, _)) = spans.iter().find(|&&(a, b)| a < keep && keep < b) {
            keep = a;
        }
        if self.cache.is_empty() || !self.cache.iter_mut().all(|c| c.trim_to(keep)) {
            self.cache = model.new_cache();
            self.tokens.clear();
            self.keys.clear();
            return 0;
        }
        self.tokens.truncate(keep);
        self.keys.truncate(keep);
        keep
    }

    fn push(&mut self, token: u32, key: u64) {
        self.tokens.push(token);
        self.keys.push(key);
    }
}

/// A multimodal prompt as the decoder sees it: the input embeddings of every
/// position (token embeddings with image features scattered in) and a cache
/// key per position.
pub struct PromptEmbeds {
    /// Input embeddings, shape (1, L, hidden).
    pub embeds: Array,
    /// One key per position: the token id for text, [`image_key`] for image
    /// positions.
    pub keys: Vec<u64>,
    /// M-RoPE positions (Qwen2-VL), when the model rotates image positions
    /// by their place in the image.
    pub mrope: Option<MropePositions>,
    /// Position spans `[start, end)` attended bidirectionally (Gemma 3's
    /// images); prefill never splits one across calls.
    pub bidirectional: Vec<(usize, usize)>,
}

/// Rotary positions of a multimodal prompt (M-RoPE).
#[derive(Debug, Clone)]
pub struct MropePositions {
    /// (temporal, height, width) position of each prompt position.
    pub positions: Vec<[i32; 3]>,
    /// Position of generated token `i` minus its index in the sequence: the
    /// largest prompt position + 1 − the prompt length.
    pub delta: i64,
}

/// The cache key of position `index` of an image whose pixels hash to
/// `hash` (the high bit keeps it apart from token ids).
pub fn image_key(hash: u64, index: usize) -> u64 {
    (hash ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | (1 << 63)
}

enum StateRef<'a> {
    Owned(CacheState),
    Borrowed(&'a mut CacheState),
}

impl StateRef<'_> {
    fn get(&mut self) -> &mut CacheState {
        match self {
            StateRef::Owned(s) => s,
            StateRef::Borrowed(s) => s,
        }
    }
}

/// A running generation; iterate it for [`StreamEvent`]s.
pub struct Generator<'a> {
    model: &'a Transformer,
    state: StateRef<'a>,
    sampler: Sampler,
    params: GenerateParams,
    tail: TextTail,
    /// The next token, scheduled but maybe not computed yet.
    pending: Option<Array>,
    /// How decode steps see positions (M-RoPE's delta).
    decode_mask: MaskSpec,
    history: Vec<u32>,
    generated: usize,
    context_length: usize,
    stats: GenerationStats,
    start: Instant,
    first_token_at: Option<Instant>,
    done: bool,
    queue: std::collections::VecDeque<StreamEvent>,
}

impl<'a> Generator<'a> {
    /// Starts generating after `prompt`. With `state`, reuses its cached
    /// prefix and leaves the cache holding the conversation for the next turn.
    pub fn new(
        model: &'a Transformer,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerateParams,
        context_length: usize,
        state: Option<&'a mut CacheState>,
    ) -> Result<Generator<'a>> {
        Self::start(model, tokenizer, prompt, None, params, context_length, state)
    }

    /// [`Self::new`] for a prompt given as input embeddings (a
    /// vision-language prompt); `prompt` holds its token ids, placeholders
    /// included, one per position of `embeds`.
    pub fn with_embeds(
        model: &'a Transformer,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        embeds: &PromptEmbeds,
        params: &GenerateParams,
        context_length: usize,
        state: Option<&'a mut CacheState>,
    ) -> Result<Generator<'a>> {
        let (l, d) = (embeds.embeds.dim(1), model.config().hidden_size);
        if embeds.embeds.shape() != [1, prompt.len(), d] || embeds.keys.len() != prompt.len() {
            return Err(EngineError::InvalidParameter(format!(
                "prompt embeddings of shape {:?} with {} keys do not fit {} prompt tokens of width {d}",
                embeds.embeds.shape(),
                embeds.keys.len(),
                prompt.len()
            )));
        }
        debug_assert_eq!(l, prompt.len());
        Self::start(model, tokenizer, prompt, Some(embeds), params, context_length, state)
    }

    fn start(
        model: &'a Transformer,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        embeds: Option<&PromptEmbeds>,
        params: &GenerateParams,
        context_length: usize,
        state: Option<&'a mut CacheState>,
    ) -> Result<Generator<'a>> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter(
                "the prompt is empty; give the model some text".into(),
            ));
        }
        if prompt.len() >= context_length {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_length,
            });
        }
        let vocab = model.config().vocab_size as u32;
        if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(EngineError::InvalidParameter(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}; the tokenizer does not match the weights"
            )));
        }
        let start = Instant::now();
        let mut state = match state {
            Some(s) => StateRef::Borrowed(s),
            None => StateRef::Owned(CacheState {
                cache: model.new_cache(),
                ..Default::default()
            }),
        };
        let st = state.get();
        let keys: Vec<u64> = match embeds {
            Some(e) => e.keys.clone(),
            None => prompt.iter().map(|&t| t as u64).collect(),
        };
        let spans = embeds.map_or(&[][..], |e| &e.bidirectional[..]);
        let cached = st.reuse_prefix_outside(model, &keys, spans);
        // Reserve the whole generation up front (no reallocation, whose old and new
        // buffers would coexist), but not a huge `max_tokens` the answer may never use.
        let total = (prompt.len() + params.max_tokens.min(RESERVE_LIMIT)).min(context_length);
        for c in &mut st.cache {
            c.reserve(total);
        }
        let mut g = Generator {
            model,
            sampler: Sampler::new(params).map_err(be)?,
            params: params.clone(),
            tail: TextTail::new(tokenizer, params, context_length),
            pending: None,
            decode_mask: MaskSpec {
                position_delta: embeds.and_then(|e| e.mrope.as_ref()).map_or(0, |m| m.delta),
                ..Default::default()
            },
            history: prompt.to_vec(),
            generated: 0,
            context_length,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                prompt_tokens_processed: prompt.len() - cached,
                ..Default::default()
            },
            start,
            first_token_at: None,
            done: false,
            queue: Default::default(),
            state,
        };
        if params.max_tokens > 0 {
            engine_mlx::memory::reset_peak();
            g.prefill(prompt, &keys, embeds, cached)?;
        }
        Ok(g)
    }

    /// Processes prompt positions `from..` in chunks (from ids, or from
    /// `embeds` for a multimodal prompt) and schedules the first token.
    fn prefill(&mut self, prompt: &[u32], keys: &[u64], embeds: Option<&PromptEmbeds>, from: usize) -> Result<()> {
        let mrope = embeds.and_then(|e| e.mrope.as_ref());
        let n = prompt.len();
        // The last position's logits start sampling. It goes alone, as in
        // mlx-lm, unless the model's bits do not depend on the chunking (the
        // int8 CPU kernels): then it joins the final chunk, which saves a
        // whole single-position pass from the time to the first token.
        let last_alone = !self.model.chunking_invariant();
        let mut start = from;
        while start < n {
            let mut end = if start == n - 1 || !last_alone {
                (start + PREFILL_CHUNK).min(n)
            } else {
                (start + PREFILL_CHUNK).min(n - 1)
            };
            let spans = embeds.map_or(&[][..], |e| &e.bidirectional[..]);
            // A chunk ends before a bidirectional span it would cut, or after it
            // when the span starts the chunk (then the chunk may run long).
            if let Some(&(a, b)) = spans.iter().find(|&&(a, b)| a < end && end < b) {
                end = if a > start { a } else { b.min(n) };
            }
            let h = match embeds {
                Some(e) => e.embeds.slice_axis(1, start as i32, end as i32),
                None => {
                    Array::from_slice(&prompt[start..end], &[1, end - start]).and_then(|ids| self.model.embed(&ids))
                }
            }
            .map_err(be)?;
            let mask = MaskSpec {
                mrope_positions: mrope.map(|m| m.positions[start..end].to_vec()),
                bidirectional: spans.to_vec(),
                ..Default::default()
            };
            let st = self.state.get();
            for (&t, &k) in prompt[start..end].iter().zip(&keys[start..end]) {
                st.push(t, k);
            }
            if end == n {
                let logits = self.model.forward_embeds(h, &mut st.cache, &mask, true).map_err(be)?;
                let logits = logits.squeeze(1).map_err(be)?;
                let y = self.sampler.sample(&logits, &[&self.history]).map_err(be)?;
                async_eval([&y]).map_err(be)?;
                self.pending = Some(y);
            } else {
                // An earlier chunk needs no LM head. Materialise the cache so
                // the next chunk's graph stays small, and the hidden states
                // (under pipeline parallelism they carry the sends to the
                // next rank).
                let h = self.model.hidden(h, &mut st.cache, &mask).map_err(be)?;
                let mut arrays: Vec<&Array> = st.cache.iter().flat_map(|c| c.arrays()).collect();
                arrays.push(&h);
                engine_mlx::eval(arrays).map_err(be)?;
            }
            start = end;
        }
        Ok(())
    }

    /// The last events: the final token's (always one per generated token,
    /// EOS included, even when its text is empty) and `Done`.
    fn finish(&mut self, reason: FinishReason, text: String, token: Option<u32>) -> Vec<StreamEvent> {
        self.done = true;
        self.settle();
        self.stats.generated_tokens = self.generated;
        fill_timing(&mut self.stats, self.start, self.first_token_at);
        self.stats.peak_memory_bytes = engine_mlx::memory::peak();
        let mut out = Vec::new();
        if let Some(token) = token {
            out.push(StreamEvent::Text { text, token });
        }
        out.push(StreamEvent::Done {
            finish_reason: reason,
            stats: self.stats.clone(),
        });
        out
    }

    /// Reads a scheduled token back, waiting for the device; after the first
    /// token the wait counts toward `decode_wait_ms`.
    fn read_token(&mut self, y: &Array) -> Result<u32> {
        let t0 = Instant::now();
        let t = y.item_i64().map_err(be)? as u32;
        if self.first_token_at.is_some() {
            self.stats.decode_wait_ms += t0.elapsed().as_secs_f64() * 1e3;
        }
        Ok(t)
    }

    /// Produces the events for the next token.
    fn advance(&mut self) -> Result<Vec<StreamEvent>> {
        if self.params.max_tokens == 0 {
            return Ok(self.finish(FinishReason::Length, String::new(), None));
        }
        let y = self
            .pending
            .take()
            .ok_or_else(|| EngineError::Backend("no pending token".into()))?;
        let room = self.history.len() + 1 < self.context_length;
        let mut token = None;
        if self.generated + 1 < self.params.max_tokens && room {
            // Schedule the following step before reading this token back, so
            // the device never idles while the host builds the next graph.
            let st = self.state.get();
            let ids = y.reshape(&[1, 1]).map_err(be)?;
            let logits = self
                .model
                .forward(&ids, &mut st.cache, &self.decode_mask, true)
                .map_err(be)?;
            let logits = logits.squeeze(1).map_err(be)?;
            if self.params.repetition_penalty != 1.0 {
                // The penalty needs this token's value first.
                let t = self.read_token(&y)?;
                self.history.push(t);
                token = Some(t);
            }
            let next = self.sampler.sample(&logits, &[&self.history]).map_err(be)?;
            async_eval([&next]).map_err(be)?;
            self.pending = Some(next);
        }
        let token = match token {
            Some(t) => t,
            None => {
                let t = self.read_token(&y)?;
                self.history.push(t);
                t
            }
        };
        if self.pending.is_some() {
            self.state.get().push(token, token as u64);
        }
        self.generated += 1;
        if self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        }
        let (text, reason) = self.tail.push(token, self.generated, self.history.len())?;
        Ok(match reason {
            Some(reason) => self.finish(reason, text, Some(token)),
            None => vec![StreamEvent::Text { text, token }],
        })
    }
}

/// Fills a finished generation's timing: TTFT from `start` to the first
/// token, prompt speed over that, decode speed after it.
pub(crate) fn fill_timing(stats: &mut GenerationStats, start: Instant, first_token_at: Option<Instant>) {
    let now = Instant::now();
    let first = first_token_at.unwrap_or(now);
    let prefill_s = (first - start).as_secs_f64();
    stats.ttft_ms = prefill_s * 1e3;
    stats.prompt_tok_per_s = stats.prompt_tokens_processed as f64 / prefill_s.max(1e-9);
    let decode_s = (now - first).as_secs_f64();
    stats.decode_tok_per_s = if stats.generated_tokens > 1 {
        (stats.generated_tokens - 1) as f64 / decode_s.max(1e-9)
    } else {
        0.0
    };
}

/// The text side of one generation, shared by the single-sequence decode
/// loop and the batch scheduler: streaming detokenization, EOS, stop strings
/// (text that may begin one is held back) and the length limits.
pub(crate) struct TextTail {
    detok: StreamingDetokenizer,
    eos: Vec<u32>,
    stop: Vec<String>,
    max_tokens: usize,
    context_length: usize,
    /// Text decoded but held back because it may begin a stop string.
    held: String,
}

impl TextTail {
    pub(crate) fn new(tokenizer: &Tokenizer, params: &GenerateParams, context_length: usize) -> TextTail {
        TextTail {
            detok: tokenizer.stream(true),
            eos: tokenizer.eos_token_ids().to_vec(),
            stop: params.stop.clone(),
            max_tokens: params.max_tokens,
            context_length,
            held: String::new(),
        }
    }

    /// Takes the `generated`-th new token, after which the sequence holds
    /// `seq_len` tokens. Returns the text to emit now and, when the
    /// generation ends with this token, why.
    pub(crate) fn push(
        &mut self,
        token: u32,
        generated: usize,
        seq_len: usize,
    ) -> Result<(String, Option<FinishReason>)> {
        if self.eos.contains(&token) {
            let rest = std::mem::take(&mut self.held) + &self.detok.finish()?;
            return Ok((rest, Some(FinishReason::Eos)));
        }
        let piece = self.detok.push(token)?.unwrap_or_default();
        self.held.push_str(&piece);
        if let Some(pos) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            return Ok((self.held[..pos].to_string(), Some(FinishReason::Stop)));
        }
        let last = generated >= self.max_tokens;
        let full = seq_len >= self.context_length;
        if last || full {
            let rest = std::mem::take(&mut self.held) + &self.detok.finish()?;
            let rest = match self.stop.iter().filter_map(|s| rest.find(s.as_str())).min() {
                Some(p) => rest[..p].to_string(),
                None => rest,
            };
            let reason = if last {
                FinishReason::Length
            } else {
                FinishReason::ContextFull
            };
            return Ok((rest, Some(reason)));
        }
        // Emit what cannot be the start of a stop string.
        let keep = self
            .stop
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        Ok((self.held.drain(..cut).collect(), None))
    }
}

impl Generator<'_> {
    /// Waits for a step scheduled ahead but not needed any more, so no work
    /// is left running behind the caller's back (and none is running in
    /// MLX's stream thread while the process exits and tears down BLAS).
    fn settle(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.eval();
        }
    }
}

impl Drop for Generator<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`
/// (at a char boundary).
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.is_char_boundary(text.len() - n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

impl Iterator for Generator<'_> {
    type Item = Result<StreamEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.queue.pop_front() {
            return Some(Ok(e));
        }
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(events) => {
                self.queue.extend(events);
                self.queue.pop_front().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::longest_suffix_prefix;

    #[test]
    fn stop_string_holdback() {
        assert_eq!(longest_suffix_prefix("hello wor", "world"), 3);
        assert_eq!(longest_suffix_prefix("hello", "world"), 0);
        assert_eq!(
            longest_suffix_prefix("ab", "b"),
            0,
            "a full match is found by search, not held"
        );
        assert_eq!(longest_suffix_prefix("x<", "<|end|>"), 1);
    }
}
