//! A prompt-prefix cache shared across requests: the keys/values of prompts
//! already prefilled, so a later prompt that starts the same way (a shared
//! system prompt, a chat's earlier turns) skips those positions. LRU,
//! bounded in bytes.

use engine_mlx::{Array, Result};

/// Shortest shared prefix worth reusing: below this, copying the cached rows
/// costs about what recomputing them does.
pub const MIN_REUSE: usize = 16;

/// One cached prompt: per layer, keys and values (1, H, len, D).
struct Entry {
    tokens: Vec<u32>,
    layers: Vec<(Array, Array)>,
    bytes: usize,
    last_used: u64,
}

/// Cached prompt prefixes, least recently used evicted first.
pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

/// A reusable prefix: its length and, per layer, keys and values (1, H, len, D).
pub struct PrefixHit {
    /// Positions reused.
    pub len: usize,
    /// Per layer, keys and values of those positions.
    pub layers: Vec<(Array, Array)>,
}

impl PrefixCache {
    /// An empty cache holding at most `limit` bytes (0 turns it off).
    pub fn new(limit: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Prompts held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The longest cached prefix of `prompt`, leaving at least its last
    /// position to be processed (its logits start generation).
    pub fn lookup(&mut self, prompt: &[u32]) -> Result<Option<PrefixHit>> {
        let most = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    i,
                    e.tokens
                        .iter()
                        .zip(prompt)
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(most),
                )
            })
            .max_by_key(|&(_, n)| n);
        let Some((i, len)) = best.filter(|&(_, n)| n >= MIN_REUSE) else {
            return Ok(None);
        };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        let full = e.tokens.len() == len;
        let layers = e
            .layers
            .iter()
            .map(|(k, v)| {
                if full {
                    Ok((k.clone(), v.clone()))
                } else {
                    Ok((k.slice_axis(2, 0, len as i32)?, v.slice_axis(2, 0, len as i32)?))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(PrefixHit { len, layers }))
    }

    /// Remembers the keys/values of `tokens` (per layer, (1, H, len, D)
    /// arrays that nothing else writes to). A prompt already covered by an
    /// entry is not stored twice; entries it covers are replaced.
    pub fn insert(&mut self, tokens: &[u32], layers: Vec<(Array, Array)>) {
        if self.limit == 0 || tokens.len() < MIN_REUSE {
            return;
        }
        if self.entries.iter().any(|e| e.tokens.starts_with(tokens)) {
            return;
        }
        let bytes: usize = layers.iter().map(|(k, v)| k.nbytes() + v.nbytes()).sum();
        if bytes > self.limit {
            return;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        while self.bytes + bytes > self.limit {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used) else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            layers,
            bytes,
            last_used: self.clock,
        });
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_mlx::Dtype;

    fn kv(len: usize) -> Vec<(Array, Array)> {
        let a = Array::zeros(&[1, 2, len, 4], Dtype::Float32).unwrap();
        vec![(a.clone(), a)]
    }

    #[test]
    fn finds_the_longest_prefix_and_evicts_the_least_recently_used() {
        let per_token = 2 * 2 * 4 * 4; // k and v, 2 heads × 4 dims × f32
        let mut c = PrefixCache::new(100 * per_token);
        let a: Vec<u32> = (0..40).collect();
        let mut b = a[..30].to_vec();
        b.extend(100..130);
        c.insert(&a, kv(40));
        c.insert(&b, kv(60));
        assert_eq!(c.bytes(), 100 * per_token);
        // Shares 30 with b, 35 with a: a wins; the whole prompt is never reused.
        let mut q = a[..35].to_vec();
        q.extend(200..210);
        let hit = c.lookup(&q).unwrap().unwrap();
        assert_eq!((hit.len, hit.layers[0].0.dim(2)), (35, 35));
        assert_eq!(
            c.lookup(&a).unwrap().unwrap().len,
            39,
            "the last position is left to process"
        );
        assert!(c.lookup(&[7; 50]).unwrap().is_none());
        // Too short a match is not worth it.
        assert!(c
            .lookup(&[0, 1, 2, 3, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9])
            .unwrap()
            .is_none());
        // a was used last: inserting another evicts b.
        let d: Vec<u32> = (500..520).collect();
        c.insert(&d, kv(20));
        assert!(
            c.lookup(&b).unwrap().is_some_and(|h| h.len == 30),
            "b's prefix lives on in a"
        );
        assert_eq!(c.len(), 2);
        // A prompt that extends an entry replaces it; one covered by an entry is skipped.
        let mut longer = d.clone();
        longer.extend(600..620);
        c.insert(&longer, kv(40));
        c.insert(&d[..18], kv(18));
        assert_eq!(c.len(), 2);
        assert_eq!(c.bytes(), 80 * per_token);
    }
}
