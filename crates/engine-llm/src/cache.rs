//! Key/value caches: a growing cache for full-attention layers and a ring of
//! `window` positions for sliding-window layers.
//!
//! Both write new keys/values in place (MLX's `slice_update` on a buffer
//! nobody else holds) instead of copying what is cached. A ring stores keys
//! out of order once it wraps; that is harmless because RoPE is applied before
//! caching, so a key carries its absolute position and attention scores do not
//! depend on where it sits. [`KeyOrder`] says which position each returned key
//! holds, for the mask.

use engine_mlx::{concatenate, Array, Result};
use std::sync::Arc;

/// Capacity grows in steps of this many positions, so decoding writes into
/// spare room (MLX updates the buffer in place) instead of copying each step.
const STEP: usize = 256;

/// Which sequence position each key returned by [`KvCache::update`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Key `j` holds position `first + j`.
    InOrder {
        /// Position of the first key.
        first: usize,
    },
    /// A full ring of `window` keys holding positions `end - window .. end`,
    /// each at slot `position % window`.
    Ring {
        /// Slots in the ring.
        window: usize,
        /// One past the newest position.
        end: usize,
    },
}

impl KeyOrder {
    /// The sequence position of key `j`.
    pub fn position(&self, j: usize) -> usize {
        match *self {
            KeyOrder::InOrder { first } => first + j,
            KeyOrder::Ring { window, end } => {
                let base = end - window;
                base + (j + window - base % window) % window
            }
        }
    }

    /// The earliest position among the keys.
    pub fn first(&self) -> usize {
        match *self {
            KeyOrder::InOrder { first } => first,
            KeyOrder::Ring { window, end } => end - window,
        }
    }
}

/// What one attention call attends to: keys and values (B, H, T, D) and
/// which position each of the T holds.
#[derive(Debug, Clone)]
pub struct KvView {
    /// Keys, (B, H, T, D).
    pub keys: Array,
    /// Values, (B, H, T, D).
    pub values: Array,
    /// The position of each key.
    pub order: KeyOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Growing,
    /// A ring of `window` slots written in place.
    Ring(usize),
    /// The pre-ring sliding cache: concatenates and re-slices every step.
    Concat(usize),
}

/// A step's new keys and values (B, heads, L, D), for growing the buffers:
/// the arrays, or — when the kernel reads them in place from a packed
/// projection — their shapes and dtype.
#[derive(Debug, Clone, Copy)]
pub enum NewKv<'a> {
    /// The new keys and values.
    Arrays(&'a Array, &'a Array),
    /// Known by shape and dtype only.
    Shaped {
        /// Shape of the new keys.
        k: [usize; 4],
        /// Shape of the new values.
        v: [usize; 4],
        /// Their dtype (the buffers').
        dtype: engine_mlx::Dtype,
    },
}

impl NewKv<'_> {
    /// Positions the step adds (L).
    fn positions(&self) -> usize {
        match self {
            NewKv::Arrays(k, _) => k.dim(2),
            NewKv::Shaped { k, .. } => k[2],
        }
    }

    /// (B, heads, D) and dtype of the keys, and of the values.
    fn layout(&self) -> [([usize; 3], engine_mlx::Dtype); 2] {
        let bhd = |s: &[usize]| [s[0], s[1], s[3]];
        match self {
            NewKv::Arrays(k, v) => [(bhd(&k.shape()), k.dtype()), (bhd(&v.shape()), v.dtype())],
            NewKv::Shaped { k, v, dtype } => [(bhd(k), *dtype), (bhd(v), *dtype)],
        }
    }
}

/// The cache of one attention layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions processed so far (also the RoPE offset of the next token).
    offset: usize,
    /// Positions stored: `offset` for a growing cache, at most the window
    /// for a ring, at most `window - 1` for the concatenating cache.
    len: usize,
    kind: Kind,
    /// Capacity to allocate at the next growth (see `reserve`).
    reserved: usize,
    /// Whether the buffers are this cache's alone, so a fused step may write
    /// them in place (`update_fused`): true once this cache allocated them or
    /// wrote them through MLX (which copies a buffer others still read);
    /// false for arrays handed in (`from_arrays`) and after `trim_to` (views
    /// handed out before may cover the slots about to be rewritten).
    owned: bool,
    /// Shared by clones, which share the buffers: in place only while alone.
    owner: Arc<()>,
}

impl KvCache {
    /// A full-attention cache.
    pub fn new() -> Self {
        KvCache {
            keys: None,
            values: None,
            offset: 0,
            len: 0,
            kind: Kind::Growing,
            reserved: 0,
            owned: false,
            owner: Arc::new(()),
        }
    }

    /// A sliding-window cache: a ring of `window` positions (each query sees
    /// itself and the `window - 1` positions before it), allocated once at
    /// its final size or at the reserved size when that is smaller.
    pub fn sliding(window: usize) -> Self {
        KvCache {
            kind: Kind::Ring(window.max(1)),
            ..Self::new()
        }
    }

    /// The sliding-window cache as it was before the ring: it concatenates
    /// the new keys to the last `window - 1` positions and slices them off
    /// again, copying the whole window per layer per token. Kept only as the
    /// baseline of `cargo xtask bench window`; models use [`Self::sliding`].
    pub fn sliding_concat(window: usize) -> Self {
        KvCache {
            kind: Kind::Concat(window.max(1)),
            ..Self::new()
        }
    }

    /// A full-attention cache holding `keys`/`values` (B, H, T, D) as its
    /// first T positions (batching assembles caches from rows).
    pub fn from_arrays(keys: Array, values: Array) -> Self {
        let len = keys.dim(2);
        KvCache {
            keys: Some(keys),
            values: Some(values),
            offset: len,
            len,
            ..Self::new()
        }
    }

    /// The stored keys and values (B, H, len, D) of a full-attention cache,
    /// in order; `None` when empty or for a window cache.
    pub fn contents(&self) -> Result<Option<(Array, Array)>> {
        if self.kind != Kind::Growing || self.len == 0 {
            return Ok(None);
        }
        self.prefix_view(self.len).map(Some)
    }

    /// Positions processed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Positions held that the next query attends to, besides itself.
    pub fn held(&self) -> usize {
        match self.kind {
            Kind::Ring(w) => self.len.min(w - 1),
            Kind::Growing | Kind::Concat(_) => self.len,
        }
    }

    /// The attention window, if this is a sliding cache.
    pub fn window(&self) -> Option<usize> {
        match self.kind {
            Kind::Growing => None,
            Kind::Ring(w) | Kind::Concat(w) => Some(w),
        }
    }

    /// Makes room for `total` positions (at most the window) in one
    /// allocation, so a generation whose length is known never reallocates
    /// (a reallocation holds the old and the new buffer at once). Takes
    /// effect at the next update.
    pub fn reserve(&mut self, total: usize) {
        if !matches!(self.kind, Kind::Concat(_)) {
            self.reserved = self.reserved.max(total);
        }
    }

    /// Adds k/v (B, H, L, D) at the next `L` positions and returns what this
    /// step's queries attend to.
    pub fn update(&mut self, k: &Array, v: &Array) -> Result<KvView> {
        let l = k.dim(2);
        match self.kind {
            Kind::Growing => self.update_growing(k, v, l),
            Kind::Ring(w) => self.update_ring(k, v, l, w),
            Kind::Concat(w) => self.update_concat(k, v, l, w),
        }
    }

    /// A decode step through a fused kernel that writes k/v (B, H, 1, D)
    /// into the buffers in place (`fast::decode_attention_in_place`): `step`
    /// gets the buffers (B, H, capacity, D), the slot the new position goes
    /// to and how many slots the query attends to (`0..n`, the slot among
    /// them). Only while this cache owns its buffers alone (see `owned`), and
    /// not for the concatenating window cache: `None` then, or where `step`
    /// declines; the cache is unchanged, but for spare room it may have
    /// allocated.
    pub fn update_fused<T>(
        &mut self,
        k: &Array,
        v: &Array,
        step: impl FnOnce(&Array, &Array, usize, usize) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        self.update_fused_as(NewKv::Arrays(k, v), step)
    }

    /// [`KvCache::update_fused`] for a new key and value known by shape and
    /// dtype only (a packed q/k/v projection's, which the kernel reads in place).
    pub fn update_fused_as<T>(
        &mut self,
        kv: NewKv<'_>,
        step: impl FnOnce(&Array, &Array, usize, usize) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let (slot, n, len) = match self.kind {
            Kind::Growing => (self.len, self.len + 1, self.len + 1),
            // A full ring's new key replaces the one leaving the window, and the
            // ring holds exactly the query's window (see update_ring).
            Kind::Ring(w) if self.offset >= w => (self.offset % w, w, w),
            Kind::Ring(_) => (self.len, self.len + 1, self.len + 1),
            Kind::Concat(_) => return Ok(None),
        };
        if kv.positions() != 1 {
            return Ok(None);
        }
        self.ensure_capacity_as(len, kv)?;
        if !self.owned || Arc::strong_count(&self.owner) > 1 {
            return Ok(None);
        }
        let (kb, vb) = (
            self.keys.as_ref().expect("allocated"),
            self.values.as_ref().expect("allocated"),
        );
        let Some(out) = step(kb, vb, slot, n)? else {
            return Ok(None);
        };
        self.len = len;
        self.offset += 1;
        Ok(Some(out))
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |a| a.dim(2))
    }

    /// Grows the buffers to hold at least `needed` positions (rounded up to
    /// [`STEP`] and to what was reserved, but never past a ring's window),
    /// keeping the `len` stored ones, which must sit in order at the start.
    fn ensure_capacity(&mut self, needed: usize, k: &Array, v: &Array) -> Result<()> {
        self.ensure_capacity_as(needed, NewKv::Arrays(k, v))
    }

    /// [`KvCache::ensure_capacity`] from the new key's and value's shapes and dtype.
    fn ensure_capacity_as(&mut self, needed: usize, kv: NewKv<'_>) -> Result<()> {
        let cap = self.capacity();
        if needed <= cap {
            return Ok(());
        }
        let mut target = needed.max(self.reserved).div_ceil(STEP) * STEP;
        if let Kind::Ring(w) = self.kind {
            target = target.min(w);
        }
        // The stored positions are kept and the rest is zeros: the new buffer
        // holds exactly `target`, whatever was trimmed off before.
        let fresh = target - self.len;
        let [keys, values] = kv.layout();
        let extend = |buf: &Option<Array>, ([b, h, d], dtype): ([usize; 3], engine_mlx::Dtype)| -> Result<Array> {
            let zeros = Array::zeros(&[b, h, fresh, d], dtype)?;
            match buf {
                Some(b) if self.len > 0 => concatenate(&[&b.slice_axis(2, 0, self.len as i32)?, &zeros], 2),
                _ => Ok(zeros),
            }
        };
        self.keys = Some(extend(&self.keys, keys)?);
        self.values = Some(extend(&self.values, values)?);
        self.take_ownership();
        Ok(())
    }

    /// Marks the buffers just made (allocated, or written through MLX) as
    /// this cache's alone.
    fn take_ownership(&mut self) {
        self.owned = true;
        self.owner = Arc::new(());
    }

    /// Writes `k`/`v`'s positions `from..from + n` into buffer slots
    /// `slot..slot + n` in place.
    fn write(&mut self, k: &Array, v: &Array, from: usize, slot: usize, n: usize) -> Result<()> {
        let (kb, vb) = (
            self.keys.take().expect("allocated"),
            self.values.take().expect("allocated"),
        );
        let put = |buf: Array, new: &Array| -> Result<Array> {
            let new = if from == 0 && n == new.dim(2) {
                new.clone()
            } else {
                new.slice_axis(2, from as i32, (from + n) as i32)?
            };
            let s = buf.shape_i32();
            let start = [0, 0, slot as i32, 0];
            let stop = [s[0], s[1], (slot + n) as i32, s[3]];
            buf.slice_update(&new, &start, &stop, &[1, 1, 1, 1])
        };
        self.keys = Some(put(kb, k)?);
        self.values = Some(put(vb, v)?);
        self.take_ownership();
        Ok(())
    }

    /// The buffers' slots `0..n` (all of them when `n` is the capacity).
    fn prefix_view(&self, n: usize) -> Result<(Array, Array)> {
        let (kb, vb) = (
            self.keys.as_ref().expect("allocated"),
            self.values.as_ref().expect("allocated"),
        );
        Ok((kb.slice_axis(2, 0, n as i32)?, vb.slice_axis(2, 0, n as i32)?))
    }

    fn update_growing(&mut self, k: &Array, v: &Array, l: usize) -> Result<KvView> {
        self.ensure_capacity(self.len + l, k, v)?;
        self.write(k, v, 0, self.len, l)?;
        self.len += l;
        self.offset += l;
        let (keys, values) = self.prefix_view(self.len)?;
        Ok(KvView {
            keys,
            values,
            order: KeyOrder::InOrder { first: 0 },
        })
    }

    fn update_ring(&mut self, k: &Array, v: &Array, l: usize, w: usize) -> Result<KvView> {
        let (start, end) = (self.offset, self.offset + l);
        if end <= w {
            // Nothing wraps yet: the ring fills in order, as a growing cache.
            return self.update_growing(k, v, l);
        }
        if l == 1 {
            // A decode step with a full ring (start ≥ w): the new key replaces
            // the one that just left the window, and the ring holds exactly the
            // query's window, so every slot is valid.
            self.write(k, v, 0, start % w, 1)?;
            self.offset = end;
            self.len = w;
            let (keys, values) = self.prefix_view(w)?;
            return Ok(KvView {
                keys,
                values,
                order: KeyOrder::Ring { window: w, end },
            });
        }
        // A chunk that wraps: attend over the last `w - 1` cached positions, in
        // order, followed by the chunk; then keep the chunk's last `w` positions.
        let first = start.saturating_sub(w - 1);
        let (keys, values) = match self.in_order(first, start, w)? {
            Some((pk, pv)) => (concatenate(&[&pk, k], 2)?, concatenate(&[&pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.ensure_capacity(w, k, v)?;
        let keep_from = start.max(end - w);
        let (mut pos, mut src) = (keep_from, keep_from - start);
        while pos < end {
            let slot = pos % w;
            let n = (w - slot).min(end - pos);
            self.write(k, v, src, slot, n)?;
            pos += n;
            src += n;
        }
        self.offset = end;
        self.len = w;
        Ok(KvView {
            keys,
            values,
            order: KeyOrder::InOrder { first },
        })
    }

    /// Stored positions `from..to` of a ring, in order (`None` when empty).
    fn in_order(&self, from: usize, to: usize, w: usize) -> Result<Option<(Array, Array)>> {
        if from == to {
            return Ok(None);
        }
        let (kb, vb) = (
            self.keys.as_ref().expect("allocated"),
            self.values.as_ref().expect("allocated"),
        );
        let (slot, n) = (from % w, to - from);
        let pick = |b: &Array| -> Result<Array> {
            if slot + n <= w {
                b.slice_axis(2, slot as i32, (slot + n) as i32)
            } else {
                let tail = b.slice_axis(2, slot as i32, w as i32)?;
                let head = b.slice_axis(2, 0, (slot + n - w) as i32)?;
                concatenate(&[&tail, &head], 2)
            }
        };
        Ok(Some((pick(kb)?, pick(vb)?)))
    }

    fn update_concat(&mut self, k: &Array, v: &Array, l: usize, w: usize) -> Result<KvView> {
        let first = self.offset - self.len;
        let (all_k, all_v) = match (&self.keys, &self.values) {
            (Some(pk), Some(pv)) => (concatenate(&[pk, k], 2)?, concatenate(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        let total = self.len + l;
        let keep = total.min(w - 1);
        let (from, to) = ((total - keep) as i32, total as i32);
        self.keys = Some(all_k.slice_axis(2, from, to)?);
        self.values = Some(all_v.slice_axis(2, from, to)?);
        self.len = keep;
        self.offset += l;
        Ok(KvView {
            keys: all_k,
            values: all_v,
            order: KeyOrder::InOrder { first },
        })
    }

    /// Forgets everything after the first `n` positions. Returns false when
    /// that is impossible (a window cache already overwrote or dropped
    /// positions before `n`); the caller must then start over.
    pub fn trim_to(&mut self, n: usize) -> bool {
        if n >= self.offset {
            return n == self.offset;
        }
        match self.kind {
            Kind::Growing => {}
            // Slots past `n` are stale and get overwritten by the next writes.
            Kind::Ring(_) if self.offset > self.len => return false,
            Kind::Ring(_) => {}
            Kind::Concat(_) => {
                if self.offset > self.len {
                    return false;
                }
                let (Some(k), Some(v)) = (&self.keys, &self.values) else {
                    return false;
                };
                match (k.slice_axis(2, 0, n as i32), v.slice_axis(2, 0, n as i32)) {
                    (Ok(k), Ok(v)) => {
                        self.keys = Some(k);
                        self.values = Some(v);
                    }
                    _ => return false,
                }
            }
        }
        self.len = n;
        self.offset = n;
        self.owned = false;
        true
    }

    /// The arrays to evaluate so the cache is materialised.
    pub fn arrays(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }

    /// Bytes held.
    pub fn nbytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }
}

impl Default for KvCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine_mlx::{random, Dtype};

    const D: usize = 4;

    /// Random keys and values (1, 1, n, D) for positions `0..n`, and their host copies.
    fn sequence(n: usize, seed: u64) -> (Array, Array, Vec<f32>, Vec<f32>) {
        let key = random::key(seed).unwrap();
        let keys = random::split(&key, 2).unwrap();
        let k = random::normal(&[1, 1, n, D], Dtype::Float32, 0.0, 1.0, Some(&keys[0])).unwrap();
        let v = random::normal(&[1, 1, n, D], Dtype::Float32, 0.0, 1.0, Some(&keys[1])).unwrap();
        let (hk, hv) = (k.to_f32_vec().unwrap(), v.to_f32_vec().unwrap());
        (k, v, hk, hv)
    }

    /// Feeds positions `from..` of the sequence in chunks of `chunks` sizes and
    /// checks after each update that every key/value sits where its order says
    /// and that each query's window is exactly the positions it may see.
    fn feed(cache: &mut KvCache, seq: &(Array, Array, Vec<f32>, Vec<f32>), from: usize, chunks: &[usize], w: usize) {
        let (k, v, hk, hv) = seq;
        let mut start = from;
        for &l in chunks {
            let end = start + l;
            let view = cache
                .update(
                    &k.slice_axis(2, start as i32, end as i32).unwrap(),
                    &v.slice_axis(2, start as i32, end as i32).unwrap(),
                )
                .unwrap();
            assert_eq!(cache.offset(), end);
            let t = view.keys.dim(2);
            let (gk, gv) = (view.keys.to_f32_vec().unwrap(), view.values.to_f32_vec().unwrap());
            for j in 0..t {
                let p = view.order.position(j);
                assert!(p < end, "slot {j} claims future position {p} (chunk {start}..{end})");
                assert_eq!(
                    gk[j * D..(j + 1) * D],
                    hk[p * D..(p + 1) * D],
                    "key of position {p} at slot {j}"
                );
                assert_eq!(
                    gv[j * D..(j + 1) * D],
                    hv[p * D..(p + 1) * D],
                    "value of position {p} at slot {j}"
                );
            }
            for qp in start..end {
                let mut seen: Vec<usize> = (0..t)
                    .map(|j| view.order.position(j))
                    .filter(|&kp| kp <= qp && qp - kp < w)
                    .collect();
                seen.sort_unstable();
                let want: Vec<usize> = (qp.saturating_sub(w - 1)..=qp).collect();
                assert_eq!(seen, want, "query {qp} (chunk {start}..{end}, order {:?})", view.order);
            }
            if l == 1 && start >= w {
                assert!(
                    matches!(view.order, KeyOrder::Ring { .. }) && t == w,
                    "a decode step over a full ring attends to the ring as it is"
                );
            }
            assert!(cache.capacity() <= w, "a ring never holds more than its window");
            start = end;
        }
    }

    #[test]
    fn ring_holds_each_querys_window_through_wrapping_chunks() {
        let w = 8;
        let schedules: &[&[usize]] = &[
            &[3, 1, 1, 7, 1, 1, 13, 1, 1, 1, 5, 8, 1, 2, 1, 9, 1],
            &[11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            &[20, 1, 1, 30, 1, 7, 1],
            &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            &[8, 8, 1, 16, 1],
        ];
        for (i, chunks) in schedules.iter().enumerate() {
            let n: usize = chunks.iter().sum();
            let seq = sequence(n, i as u64);
            let mut cache = KvCache::sliding(w);
            feed(&mut cache, &seq, 0, chunks, w);
            assert_eq!(cache.held(), w - 1);
        }
    }

    #[test]
    fn ring_is_allocated_once_at_the_window_or_the_reservation() {
        let w = 8;
        let seq = sequence(40, 7);
        let mut cache = KvCache::sliding(w);
        feed(&mut cache, &seq, 0, &[3], w);
        let bytes = cache.nbytes();
        feed(&mut cache, &seq, 3, &[1; 37], w);
        assert_eq!(cache.capacity(), w);
        assert_eq!(cache.nbytes(), bytes, "the ring never grows or shrinks");

        // A reservation smaller than the window bounds the ring until it is needed.
        let w = 1024;
        let seq = sequence(300, 8);
        let mut cache = KvCache::sliding(w);
        cache.reserve(40);
        feed(&mut cache, &seq, 0, &[30, 1, 1], w);
        assert_eq!(cache.capacity(), STEP);
        feed(&mut cache, &seq, 32, &[250, 1], w);
        assert_eq!(cache.capacity(), 2 * STEP);
    }

    #[test]
    fn ring_trims_only_while_nothing_was_overwritten() {
        let w = 8;
        let seq = sequence(30, 3);
        let mut cache = KvCache::sliding(w);
        feed(&mut cache, &seq, 0, &[5, 1, 1, 1], w);
        assert_eq!(cache.offset(), w);
        assert!(!cache.trim_to(w + 1), "cannot trim forwards");
        assert!(cache.trim_to(w), "trimming to the offset is a no-op");
        assert!(cache.trim_to(3), "a full ring that overwrote nothing trims");
        assert_eq!((cache.offset(), cache.held()), (3, 3));
        // The stale slots 3.. are rewritten as positions 3.. arrive again.
        feed(&mut cache, &seq, 3, &[4, 1, 1, 9, 1, 1], w);
        assert!(!cache.trim_to(10), "positions before 10 were overwritten");
        assert!(cache.trim_to(cache.offset()));

        // Trimming a ring that has not filled, then wrapping in one chunk.
        let mut cache = KvCache::sliding(w);
        feed(&mut cache, &seq, 0, &[6], w);
        assert!(cache.trim_to(2));
        feed(&mut cache, &seq, 2, &[12, 1, 1], w);
    }

    #[test]
    fn growing_cache_regrows_after_a_trim() {
        let seq = sequence(400, 5);
        let mut cache = KvCache::new();
        feed(&mut cache, &seq, 0, &[STEP], usize::MAX);
        assert!(cache.trim_to(100));
        // 100 kept + 299 new outgrows the 256 allocated: the new buffer must
        // hold all 399, not the 256 it would add to a full one.
        feed(&mut cache, &seq, 100, &[299, 1], usize::MAX);
        assert_eq!(cache.capacity(), 2 * STEP);
    }

    #[test]
    fn key_order_positions() {
        let r = KeyOrder::Ring { window: 4, end: 10 };
        // Positions 6..10 at slots 6%4=2, 3, 0, 1.
        assert_eq!((0..4).map(|j| r.position(j)).collect::<Vec<_>>(), [8, 9, 6, 7]);
        assert_eq!(r.first(), 6);
        let o = KeyOrder::InOrder { first: 3 };
        assert_eq!((o.position(0), o.position(2), o.first()), (3, 5, 3));
    }

    /// Runs `update_fused` with a step that records its slot and count and
    /// writes nothing; `None` when the cache declined.
    fn fused(cache: &mut KvCache, k: &Array, v: &Array) -> Option<(usize, usize)> {
        cache.update_fused(k, v, |_, _, slot, n| Ok(Some((slot, n)))).unwrap()
    }

    #[test]
    fn fused_steps_only_on_buffers_the_cache_owns_alone() {
        let (k, v, ..) = sequence(6, 11);
        let one = |i: i32| (k.slice_axis(2, i, i + 1).unwrap(), v.slice_axis(2, i, i + 1).unwrap());
        let mut c = KvCache::new();
        c.update(&k.slice_axis(2, 0, 3).unwrap(), &v.slice_axis(2, 0, 3).unwrap())
            .unwrap();
        let (k3, v3) = one(3);
        assert_eq!(fused(&mut c, &k3, &v3), Some((3, 4)));
        assert_eq!((c.offset(), c.held()), (4, 4));
        // A clone shares the buffers: neither writes in place while both live.
        let twin = c.clone();
        let (k4, v4) = one(4);
        assert_eq!(fused(&mut c, &k4, &v4), None);
        drop(twin);
        assert_eq!(fused(&mut c, &k4, &v4), Some((4, 5)));
        // After a trim, views handed out before may cover the slots rewritten
        // next: one step through MLX first (a copy), then in place again.
        assert!(c.trim_to(2));
        let (k2, v2) = one(2);
        assert_eq!(fused(&mut c, &k2, &v2), None);
        c.update(&k2, &v2).unwrap();
        assert_eq!(fused(&mut c, &k3, &v3), Some((3, 4)));
        // Arrays handed in are not the cache's: it grows into its own buffer first.
        let (kk, vv) = c.contents().unwrap().unwrap();
        let mut d = KvCache::from_arrays(kk, vv);
        assert_eq!(fused(&mut d, &k4, &v4), Some((4, 5)));
        // A full ring writes over the slot leaving the window and attends to all of it.
        let mut r = KvCache::sliding(3);
        r.update(&k.slice_axis(2, 0, 4).unwrap(), &v.slice_axis(2, 0, 4).unwrap())
            .unwrap();
        assert_eq!(fused(&mut r, &k4, &v4), Some((1, 3)));
        // The concatenating window cache never does.
        let mut cc = KvCache::sliding_concat(3);
        cc.update(&k3, &v3).unwrap();
        assert_eq!(fused(&mut cc, &k4, &v4), None);
    }
}
