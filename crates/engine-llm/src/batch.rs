//! Continuous batching: many generations share one forward pass per decode
//! step, and requests join and leave the running batch between steps.
//!
//! The running batch is one KV cache of B rows aligned on the right: row `r`
//! holds its sequence in slots `pads[r]..`, so every row writes its next
//! token at the same slot and one mask (keys before a row's padding are
//! hidden) plus per-row rotary positions (slot − padding) make each row
//! compute exactly what it would alone.
//!
//! New requests are prefilled as a group beside the running batch, a chunk
//! per step, so a long prompt never stalls the streams already decoding. A
//! group's prompts are right-padded (causal attention keeps the padding out
//! of every real position), start from the longest prefix the
//! [`PrefixCache`] holds for all of them, and when done are rolled so the
//! padding moves to the front, then merged into the running batch.

use crate::cache::KvCache;
use crate::generate::{be, fill_timing, TextTail};
use crate::prefix::PrefixCache;
use crate::sample::Sampler;
use crate::transformer::{MaskSpec, Transformer};
use engine_core::{EngineError, GenerateParams, GenerationStats, Result, StreamEvent, Tokenizer};
use engine_mlx::{async_eval, concatenate, Array, Dtype};
use std::collections::VecDeque;
use std::time::Instant;

/// Identifies a generation in a [`Scheduler`].
pub type SeqId = u64;

/// How a [`Scheduler`] batches.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Most sequences decoding at once.
    pub max_batch: usize,
    /// Prompt tokens per prefill pass (over all prompts of a group) while
    /// other sequences decode; bounds how long one step can stall them.
    pub prefill_chunk: usize,
    /// Bytes of the prompt-prefix cache (0 turns it off).
    pub prefix_cache_bytes: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 16,
            prefill_chunk: 512,
            prefix_cache_bytes: 512 << 20,
        }
    }
}

/// One event of one generation.
#[derive(Debug)]
pub struct SeqEvent {
    /// Whose.
    pub id: SeqId,
    /// What: a token's text, or the end with its statistics.
    pub event: StreamEvent,
}

/// A generation's state, wherever it is in the scheduler.
struct Seq {
    id: SeqId,
    prompt: Vec<u32>,
    sampler: Sampler,
    /// Greedy without a repetition penalty: sampled for the whole batch at once.
    plain_greedy: bool,
    penalized: bool,
    tail: TextTail,
    /// Prompt and generated tokens (the repetition penalty's context).
    history: Vec<u32>,
    generated: usize,
    max_tokens: usize,
    stats: GenerationStats,
    start: Instant,
    first_token_at: Option<Instant>,
    cancelled: bool,
}

/// Rows sharing one cache: the running batch, or a group being prefilled.
struct Rows {
    cache: Vec<KvCache>,
    /// Left padding of each row.
    pads: Vec<usize>,
    seqs: Vec<Seq>,
    /// Each row's next input token, sampled but not yet fed: (B,) uint32.
    pending: Option<Array>,
}

/// A group of prompts being prefilled, chunk by chunk.
struct Prefill {
    rows: Rows,
    /// The next slot to process.
    next: usize,
    /// Slots the longest prompt fills; shorter ones are right-padded to it.
    end: usize,
    /// Each row's first token, once its last prompt position was processed.
    first: Vec<Option<Array>>,
}

/// Continuous batching over one model: [`submit`](Self::submit) requests,
/// call [`step`](Self::step) in a loop, route its events.
pub struct Scheduler<'m> {
    model: &'m Transformer,
    tokenizer: &'m Tokenizer,
    context_length: usize,
    opts: BatchOptions,
    waiting: VecDeque<Seq>,
    prefill: Option<Prefill>,
    running: Option<Rows>,
    prefixes: PrefixCache,
    /// Events due at the next step (generations that end before starting).
    ready: Vec<SeqEvent>,
    next_id: SeqId,
}

impl<'m> Scheduler<'m> {
    /// A scheduler over `model`.
    pub fn new(model: &'m Transformer, tokenizer: &'m Tokenizer, context_length: usize, opts: BatchOptions) -> Self {
        Scheduler {
            model,
            tokenizer,
            context_length,
            prefixes: PrefixCache::new(opts.prefix_cache_bytes),
            opts: BatchOptions {
                max_batch: opts.max_batch.max(1),
                prefill_chunk: opts.prefill_chunk.max(1),
                ..opts
            },
            waiting: VecDeque::new(),
            prefill: None,
            running: None,
            ready: Vec::new(),
            next_id: 0,
        }
    }

    /// Queues a generation; it starts within the next steps. Bad prompts and
    /// parameters are refused here.
    pub fn submit(&mut self, prompt: Vec<u32>, params: &GenerateParams) -> Result<SeqId> {
        params.validate()?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidParameter(
                "the prompt is empty; give the model some text".into(),
            ));
        }
        if prompt.len() >= self.context_length {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len(),
                context_length: self.context_length,
            });
        }
        let vocab = self.model.config().vocab_size as u32;
        if let Some(bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(EngineError::InvalidParameter(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}; the tokenizer does not match the weights"
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        if params.max_tokens == 0 {
            self.ready.push(SeqEvent {
                id,
                event: StreamEvent::Done {
                    finish_reason: engine_core::FinishReason::Length,
                    stats: GenerationStats {
                        prompt_tokens: prompt.len(),
                        ..Default::default()
                    },
                },
            });
            return Ok(id);
        }
        self.waiting.push_back(Seq {
            id,
            sampler: Sampler::new(params).map_err(be)?,
            plain_greedy: params.temperature == 0.0 && params.repetition_penalty == 1.0,
            penalized: params.repetition_penalty != 1.0,
            tail: TextTail::new(self.tokenizer, params, self.context_length),
            history: prompt.clone(),
            generated: 0,
            max_tokens: params.max_tokens,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            start: Instant::now(),
            first_token_at: None,
            cancelled: false,
            prompt,
        });
        Ok(id)
    }

    /// Stops a generation: it ends without further events at the next step.
    pub fn cancel(&mut self, id: SeqId) {
        let running = self.running.iter_mut().flat_map(|r| r.seqs.iter_mut());
        let prefilling = self.prefill.iter_mut().flat_map(|p| p.rows.seqs.iter_mut());
        for s in running.chain(prefilling) {
            if s.id == id {
                s.cancelled = true;
            }
        }
        self.waiting.retain(|s| s.id != id);
        self.ready.retain(|e| e.id != id);
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.prefill.is_none() && self.running.is_none() && self.ready.is_empty()
    }

    /// Sequences decoding now.
    pub fn running(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.seqs.len())
    }

    /// Sequences queued or being prefilled.
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.prefill.as_ref().map_or(0, |p| p.rows.seqs.len())
    }

    /// Bytes of KV cache held by running and prefilling sequences.
    pub fn cache_bytes(&self) -> usize {
        let rows = self.running.iter().chain(self.prefill.iter().map(|p| &p.rows));
        rows.flat_map(|r| r.cache.iter()).map(KvCache::nbytes).sum()
    }

    /// Bytes held by the prompt-prefix cache.
    pub fn prefix_cache_bytes(&self) -> usize {
        self.prefixes.bytes()
    }

    /// One decode step of the running batch plus one prefill chunk of the
    /// newest group; returns the events it produced. An error here is the
    /// backend failing: every sequence is dropped and the scheduler is empty.
    pub fn step(&mut self) -> Result<Vec<SeqEvent>> {
        let out = self.try_step();
        if out.is_err() {
            self.waiting.clear();
            self.prefill = None;
            self.running = None;
        }
        out
    }

    fn try_step(&mut self) -> Result<Vec<SeqEvent>> {
        let mut events = std::mem::take(&mut self.ready);
        if let Some(mut run) = self.running.take() {
            self.decode(&mut run, &mut events)?;
            self.running = (!run.seqs.is_empty()).then_some(run);
        }
        if self.prefill.is_none() {
            self.admit()?;
        }
        if let Some(mut p) = self.prefill.take() {
            if self.prefill_chunk(&mut p)? {
                let group = self.finish_prefill(p)?;
                self.merge(group)?;
            } else {
                self.prefill = Some(p);
            }
        }
        Ok(events)
    }

    /// Starts prefilling the next waiting requests, as many as fit beside
    /// the running batch and within a few chunks of prompt tokens.
    fn admit(&mut self) -> Result<()> {
        let room = self.opts.max_batch.saturating_sub(self.running());
        if room == 0 || self.waiting.is_empty() {
            return Ok(());
        }
        let budget = 4 * self.opts.prefill_chunk;
        let mut seqs = Vec::new();
        let mut tokens = 0;
        while seqs.len() < room {
            let Some(next) = self.waiting.front() else { break };
            if !seqs.is_empty() && tokens + next.prompt.len() > budget {
                break;
            }
            tokens += next.prompt.len();
            seqs.extend(self.waiting.pop_front());
        }
        // Reuse the prefix every prompt of the group has cached (the common
        // case: one system prompt shared by all).
        let mut hits = Vec::with_capacity(seqs.len());
        for s in &seqs {
            hits.push(self.prefixes.lookup(&s.prompt).map_err(be)?);
        }
        let start = hits.iter().map(|h| h.as_ref().map_or(0, |h| h.len)).min().unwrap_or(0);
        let cache = if start == 0 {
            self.model.new_growing_cache()
        } else {
            let layers = hits[0].as_ref().map_or(0, |h| h.layers.len());
            (0..layers)
                .map(|l| {
                    let part = |kv: usize| -> Result<Array> {
                        let rows: Vec<Array> = hits
                            .iter()
                            .flatten()
                            .map(|h| {
                                let a = if kv == 0 { &h.layers[l].0 } else { &h.layers[l].1 };
                                a.slice_axis(2, 0, start as i32).map_err(be)
                            })
                            .collect::<Result<_>>()?;
                        concatenate(&rows.iter().collect::<Vec<_>>(), 0).map_err(be)
                    };
                    Ok(KvCache::from_arrays(part(0)?, part(1)?))
                })
                .collect::<Result<Vec<_>>>()?
        };
        let end = seqs.iter().map(|s| s.prompt.len()).max().unwrap_or(0);
        let mut cache = cache;
        for c in &mut cache {
            c.reserve(end);
        }
        for s in &mut seqs {
            s.stats.prompt_tokens_processed = s.prompt.len() - start;
        }
        let n = seqs.len();
        self.prefill = Some(Prefill {
            rows: Rows {
                cache,
                pads: vec![0; n],
                seqs,
                pending: None,
            },
            next: start,
            end,
            first: vec![None; n],
        });
        Ok(())
    }

    /// Processes the group's next chunk of prompt positions; true when the
    /// whole prompts are done.
    fn prefill_chunk(&mut self, p: &mut Prefill) -> Result<bool> {
        let b = p.rows.seqs.len();
        let per_row = (self.opts.prefill_chunk / b).max(16);
        let (from, to) = (p.next, (p.next + per_row).min(p.end));
        let mut ids = Vec::with_capacity(b * (to - from));
        for s in &p.rows.seqs {
            // Right padding: any id does, causal attention keeps it out of real positions.
            ids.extend((from..to).map(|i| s.prompt.get(i).copied().unwrap_or(0)));
        }
        let ids = Array::from_slice(&ids, &[b, to - from]).map_err(be)?;
        let h = self.model.embed(&ids).map_err(be)?;
        let h = self
            .model
            .hidden(h, &mut p.rows.cache, &MaskSpec::default())
            .map_err(be)?;
        // Rows whose last prompt position is in this chunk sample their first token.
        let mut ends = Vec::new();
        for (r, s) in p.rows.seqs.iter().enumerate() {
            let last = s.prompt.len() - 1;
            if (from..to).contains(&last) {
                ends.push((r, last - from));
            }
        }
        let mut wanted: Vec<&Array> = p.rows.cache.iter().flat_map(|c| c.arrays()).collect();
        let mut firsts = Vec::new();
        if !ends.is_empty() {
            let rows: Vec<Array> = ends
                .iter()
                .map(|&(r, i)| {
                    h.slice(
                        &[r as i32, i as i32, 0],
                        &[r as i32 + 1, i as i32 + 1, h.dim(2) as i32],
                        &[1, 1, 1],
                    )
                    .map_err(be)
                })
                .collect::<Result<_>>()?;
            let hs = concatenate(&rows.iter().collect::<Vec<_>>(), 0).map_err(be)?;
            let logits = self.model.head(&hs).map_err(be)?.squeeze(1).map_err(be)?;
            for (k, &(r, _)) in ends.iter().enumerate() {
                let s = &mut p.rows.seqs[r];
                let row = logits.slice_axis(0, k as i32, k as i32 + 1).map_err(be)?;
                firsts.push((r, s.sampler.sample(&row, &[&s.history]).map_err(be)?));
            }
        }
        wanted.extend(firsts.iter().map(|(_, a)| a));
        engine_mlx::eval(wanted).map_err(be)?;
        for (r, a) in firsts {
            p.first[r] = Some(a);
        }
        p.next = to;
        Ok(to == p.end)
    }

    /// Turns a prefilled group into rows ready to decode: remembers each
    /// prompt in the prefix cache, then rolls each row's right padding to
    /// the front (left padding).
    fn finish_prefill(&mut self, p: Prefill) -> Result<Rows> {
        let Prefill {
            mut rows, end, first, ..
        } = p;
        let b = rows.seqs.len();
        let mut layers_kv = Vec::with_capacity(rows.cache.len());
        for c in &rows.cache {
            layers_kv.push(
                c.contents()
                    .map_err(be)?
                    .ok_or_else(|| be_msg("empty cache after prefill"))?,
            );
        }
        if self.opts.prefix_cache_bytes > 0 {
            for (r, s) in rows.seqs.iter().enumerate() {
                let n = s.prompt.len() as i32;
                let idx = Array::from_slice(&[r as i32], &[1]).map_err(be)?;
                // `take` copies, so the entry holds only this row's positions.
                let own = layers_kv
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.slice_axis(2, 0, n).and_then(|k| k.take(&idx, 0)).map_err(be)?,
                            v.slice_axis(2, 0, n).and_then(|v| v.take(&idx, 0)).map_err(be)?,
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.prefixes.insert(&s.prompt, own);
            }
        }
        let pads: Vec<usize> = rows.seqs.iter().map(|s| end - s.prompt.len()).collect();
        if pads.iter().any(|&d| d > 0) {
            // Slot j of row r takes old slot (j − pad) mod end.
            let mut idx = Vec::with_capacity(b * end);
            for &d in &pads {
                idx.extend((0..end).map(|j| ((j + end - d) % end) as i32));
            }
            let idx = Array::from_slice(&idx, &[b, 1, end, 1]).map_err(be)?;
            rows.cache = layers_kv
                .iter()
                .map(|(k, v)| {
                    Ok(KvCache::from_arrays(
                        k.take_along_axis(&idx, 2).map_err(be)?,
                        v.take_along_axis(&idx, 2).map_err(be)?,
                    ))
                })
                .collect::<Result<_>>()?;
        }
        rows.pads = pads;
        let firsts: Vec<Array> = first
            .into_iter()
            .map(|a| a.ok_or_else(|| be_msg("a prompt ended without a first token")))
            .collect::<Result<_>>()?;
        let firsts: Vec<Array> = firsts
            .iter()
            .map(|a| a.reshape(&[1]))
            .collect::<std::result::Result<_, _>>()
            .map_err(be)?;
        rows.pending = Some(concatenate(&firsts.iter().collect::<Vec<_>>(), 0).map_err(be)?);
        Ok(rows)
    }

    /// Adds prefilled rows to the running batch, aligning both on the right.
    fn merge(&mut self, mut group: Rows) -> Result<()> {
        group.drop_cancelled()?;
        if group.seqs.is_empty() {
            return Ok(());
        }
        let Some(mut run) = self.running.take() else {
            self.running = Some(group);
            return Ok(());
        };
        let (a, b) = (run.slots(), group.slots());
        if a < b {
            run.pad_left(b - a)?;
        } else if b < a {
            group.pad_left(a - b)?;
        }
        let mut cache = Vec::with_capacity(run.cache.len());
        for (x, y) in run.cache.iter().zip(&group.cache) {
            let (xk, xv) = x.contents().map_err(be)?.ok_or_else(|| be_msg("empty running cache"))?;
            let (yk, yv) = y.contents().map_err(be)?.ok_or_else(|| be_msg("empty group cache"))?;
            cache.push(KvCache::from_arrays(
                concatenate(&[&xk, &yk], 0).map_err(be)?,
                concatenate(&[&xv, &yv], 0).map_err(be)?,
            ));
        }
        run.cache = cache;
        run.pads.extend(group.pads);
        run.seqs.extend(group.seqs);
        run.pending = match (run.pending.take(), group.pending) {
            (Some(x), Some(y)) => Some(concatenate(&[&x, &y], 0).map_err(be)?),
            (x, y) => x.or(y),
        };
        self.running = Some(run);
        Ok(())
    }

    /// One decode step: feeds every row's pending token, schedules the next
    /// ones, then reads the fed tokens back and turns them into events.
    fn decode(&mut self, run: &mut Rows, events: &mut Vec<SeqEvent>) -> Result<()> {
        run.drop_cancelled()?;
        let Some(fed) = run.pending.take() else {
            return Ok(());
        };
        let b = run.seqs.len();
        // The repetition penalty needs the fed tokens' values before sampling.
        let early = if run.seqs.iter().any(|s| s.penalized) {
            Some(fed.to_vec::<u32>().map_err(be)?)
        } else {
            None
        };
        if let Some(tokens) = &early {
            for (s, &t) in run.seqs.iter_mut().zip(tokens) {
                s.history.push(t);
            }
        }
        let any_continues = run.seqs.iter().any(|s| s.generated + 1 < s.max_tokens);
        if any_continues {
            let ids = fed.reshape(&[b as i32, 1]).map_err(be)?;
            let mask = MaskSpec {
                left_padding: run.pads.iter().any(|&p| p > 0).then(|| run.pads.clone()),
                ..Default::default()
            };
            let logits = self
                .model
                .forward(&ids, &mut run.cache, &mask, true)
                .map_err(be)?
                .squeeze(1)
                .map_err(be)?;
            let next = if run.seqs.iter().all(|s| s.plain_greedy) {
                logits
                    .argmax(-1, false)
                    .and_then(|a| a.astype(Dtype::Uint32))
                    .map_err(be)?
            } else {
                let mut picks = Vec::with_capacity(b);
                for (r, s) in run.seqs.iter_mut().enumerate() {
                    let row = logits.slice_axis(0, r as i32, r as i32 + 1).map_err(be)?;
                    picks.push(
                        s.sampler
                            .sample(&row, &[&s.history])
                            .map_err(be)?
                            .reshape(&[1])
                            .map_err(be)?,
                    );
                }
                concatenate(&picks.iter().collect::<Vec<_>>(), 0).map_err(be)?
            };
            async_eval([&next]).map_err(be)?;
            run.pending = Some(next);
        }
        let tokens = match early {
            Some(t) => t,
            None => {
                let t = fed.to_vec::<u32>().map_err(be)?;
                for (s, &tok) in run.seqs.iter_mut().zip(&t) {
                    s.history.push(tok);
                }
                t
            }
        };
        let now = Instant::now();
        let mut done = vec![false; b];
        for (r, (s, &token)) in run.seqs.iter_mut().zip(&tokens).enumerate() {
            s.generated += 1;
            s.first_token_at.get_or_insert(now);
            let (text, reason) = s.tail.push(token, s.generated, s.history.len())?;
            events.push(SeqEvent {
                id: s.id,
                event: StreamEvent::Text { text, token },
            });
            if let Some(reason) = reason {
                s.stats.generated_tokens = s.generated;
                fill_timing(&mut s.stats, s.start, s.first_token_at);
                events.push(SeqEvent {
                    id: s.id,
                    event: StreamEvent::Done {
                        finish_reason: reason,
                        stats: s.stats.clone(),
                    },
                });
                done[r] = true;
            }
        }
        if !any_continues {
            // Every row ended with the tokens just read.
            run.seqs.clear();
            return Ok(());
        }
        run.keep(&done.iter().map(|d| !d).collect::<Vec<_>>())
    }
}

impl Rows {
    /// Slots every row spans (the longest row's length).
    fn slots(&self) -> usize {
        self.cache.first().map_or(0, KvCache::offset)
    }

    /// Shifts every row right by `n` empty slots.
    fn pad_left(&mut self, n: usize) -> Result<()> {
        for c in &mut self.cache {
            let (k, v) = c.contents().map_err(be)?.ok_or_else(|| be_msg("empty cache"))?;
            let n = n as i32;
            *c = KvCache::from_arrays(
                k.pad(&[2], &[n], &[0], 0.0).map_err(be)?,
                v.pad(&[2], &[n], &[0], 0.0).map_err(be)?,
            );
        }
        for p in &mut self.pads {
            *p += n;
        }
        Ok(())
    }

    fn drop_cancelled(&mut self) -> Result<()> {
        if self.seqs.iter().any(|s| s.cancelled) {
            let keep: Vec<bool> = self.seqs.iter().map(|s| !s.cancelled).collect();
            self.keep(&keep)?;
        }
        Ok(())
    }

    /// Keeps only the rows marked true, then drops the padding every
    /// remaining row has.
    fn keep(&mut self, keep: &[bool]) -> Result<()> {
        if keep.iter().all(|&k| k) {
            return Ok(());
        }
        let idx: Vec<i32> = (0..keep.len() as i32).filter(|&r| keep[r as usize]).collect();
        let mut flags = keep.iter();
        self.seqs.retain(|_| *flags.next().unwrap_or(&false));
        if idx.is_empty() {
            self.cache.clear();
            self.pads.clear();
            self.pending = None;
            return Ok(());
        }
        self.pads = idx.iter().map(|&r| self.pads[r as usize]).collect();
        let trim = self.pads.iter().copied().min().unwrap_or(0);
        for p in &mut self.pads {
            *p -= trim;
        }
        let rows = Array::from_slice(&idx, &[idx.len()]).map_err(be)?;
        for c in &mut self.cache {
            let Some((k, v)) = c.contents().map_err(be)? else {
                continue;
            };
            let cut = |a: &Array| -> Result<Array> {
                let a = a.take(&rows, 0).map_err(be)?;
                if trim > 0 {
                    a.slice_axis(2, trim as i32, a.dim(2) as i32).map_err(be)
                } else {
                    Ok(a)
                }
            };
            *c = KvCache::from_arrays(cut(&k)?, cut(&v)?);
        }
        if let Some(p) = self.pending.take() {
            self.pending = Some(p.take(&rows, 0).map_err(be)?);
        }
        Ok(())
    }
}

fn be_msg(msg: &str) -> EngineError {
    EngineError::Backend(format!("batch scheduler: {msg}"))
}
