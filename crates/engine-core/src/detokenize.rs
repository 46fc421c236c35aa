//! Streaming detokenization: token ids in, text out, one token at a time.
//!
//! Decoding each token alone is wrong twice over: a byte-level or
//! byte-fallback token may hold half a UTF-8 character, and SentencePiece
//! vocabularies drop a token's leading space (`▁`) when it is decoded on its
//! own. So, like Hugging Face text-generation-inference and mlx-lm, this
//! decodes a short window of recent tokens twice — without and with the new
//! tokens — and emits the difference, holding text back while it ends in an
//! incomplete character (U+FFFD).
//!
//! The concatenation of everything [`StreamingDetokenizer::push`] and
//! [`StreamingDetokenizer::finish`] return equals
//! `tokenizer.decode(all_ids, skip_special_tokens)`.

use crate::tokenizer::{Result, Tokenizer};

/// Turns a stream of token ids into text pieces (see the module docs).
#[derive(Debug, Clone)]
pub struct StreamingDetokenizer {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// Ids from `prefix_offset` on; older ones are dropped.
    ids: Vec<u32>,
    /// `ids[..read_offset]` has been emitted; `ids[prefix_offset..read_offset]`
    /// is kept as decoding context for the next token.
    prefix_offset: usize,
    read_offset: usize,
    /// Everything emitted so far.
    emitted: String,
}

/// Once the window holds this many ids, already-emitted context before the
/// prefix is dropped so the cost per token stays bounded.
const COMPACT_AT: usize = 64;

impl StreamingDetokenizer {
    /// A detokenizer for `tokenizer`; with `skip_special_tokens`, special
    /// tokens (`<|im_end|>`, ...) produce no text.
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> Self {
        StreamingDetokenizer {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            emitted: String::new(),
        }
    }

    /// Adds one token; returns the text it completes, if any (`None` while
    /// bytes of a character are still missing).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        // Held back while the newest bytes do not form a whole character yet.
        if full.len() <= prefix.len() || full.ends_with('\u{fffd}') {
            return Ok(None);
        }
        let piece = match full.get(prefix.len()..) {
            Some(p) if full.starts_with(&prefix) => p.to_string(),
            // The window's decode changed its earlier text (rare decoder
            // context effects): emit only what is new by character count.
            _ => full.chars().skip(prefix.chars().count()).collect(),
        };
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if self.prefix_offset >= COMPACT_AT {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
        self.emitted.push_str(&piece);
        Ok(Some(piece))
    }

    /// Flushes what is still held back (an incomplete character at the end
    /// of the stream decodes as U+FFFD) and resets for a new stream.
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        let rest = match full.get(prefix.len()..) {
            Some(p) if full.starts_with(&prefix) => p.to_string(),
            _ => full.chars().skip(prefix.chars().count()).collect(),
        };
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        self.emitted.clear();
        Ok(rest)
    }

    /// All text emitted since the start (or the last `finish`).
    pub fn text(&self) -> &str {
        &self.emitted
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        if from >= to {
            return Ok(String::new());
        }
        self.tokenizer.decode(&self.ids[from..to], self.skip_special_tokens)
    }
}
