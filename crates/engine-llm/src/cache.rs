//! Key/value caches: a growing cache for full-attention layers and a
//! window-bounded one for sliding-window layers.

use engine_mlx::{concatenate, Array, Result};

/// Capacity grows in steps of this many positions, so decoding writes into
/// spare room (MLX updates the buffer in place) instead of copying each step.
const STEP: usize = 256;

/// The cache of one attention layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Positions processed so far (also the RoPE offset of the next token).
    offset: usize,
    /// Positions held in `keys` (≤ offset for a window cache).
    len: usize,
    window: Option<usize>,
    /// Capacity to allocate at the next growth (see `reserve`).
    reserved: usize,
}

impl KvCache {
    /// A full-attention cache.
    pub fn new() -> Self {
        KvCache {
            keys: None,
            values: None,
            offset: 0,
            len: 0,
            window: None,
            reserved: 0,
        }
    }

    /// A cache that keeps only the last `window - 1` positions between calls
    /// (with the new token, a query sees exactly `window` keys).
    pub fn sliding(window: usize) -> Self {
        KvCache {
            window: Some(window.max(1)),
            ..Self::new()
        }
    }

    /// Positions processed so far.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Positions currently held (what the next query attends to, besides itself).
    pub fn held(&self) -> usize {
        self.len
    }

    /// The attention window, if this is a sliding cache.
    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Makes room for `total` positions in one allocation, so a generation
    /// whose length is known never reallocates (a reallocation holds the old
    /// and the new buffer at once). Takes effect at the next update.
    pub fn reserve(&mut self, total: usize) {
        if self.window.is_none() {
            self.reserved = self.reserved.max(total);
        }
    }

    /// Appends k/v (B, H, L, D) and returns all keys/values to attend to.
    pub fn update(&mut self, k: &Array, v: &Array) -> Result<(Array, Array)> {
        let l = k.dim(2);
        match self.window {
            None => self.update_growing(k, v, l),
            Some(w) => self.update_window(k, v, l, w),
        }
    }

    fn update_growing(&mut self, k: &Array, v: &Array, l: usize) -> Result<(Array, Array)> {
        let needed = self.len + l;
        let cap = self.keys.as_ref().map_or(0, |a| a.dim(2));
        if needed > cap {
            let grow = needed.max(self.reserved).div_ceil(STEP) * STEP - cap;
            let extend = |buf: &Option<Array>, new: &Array| -> Result<Array> {
                let s = new.shape();
                let zeros = Array::zeros(&[s[0], s[1], grow, s[3]], new.dtype())?;
                match buf {
                    Some(b) => concatenate(&[&b.slice_axis(2, 0, self.len as i32)?, &zeros], 2),
                    None => Ok(zeros),
                }
            };
            self.keys = Some(extend(&self.keys, k)?);
            self.values = Some(extend(&self.values, v)?);
        }
        let (kb, vb) = (
            self.keys.take().expect("allocated"),
            self.values.take().expect("allocated"),
        );
        let write = |buf: &Array, new: &Array| -> Result<Array> {
            let s = buf.shape_i32();
            let start = [0, 0, self.len as i32, 0];
            let stop = [s[0], s[1], (self.len + l) as i32, s[3]];
            buf.slice_update(new, &start, &stop, &[1, 1, 1, 1])
        };
        let (kb, vb) = (write(&kb, k)?, write(&vb, v)?);
        self.len += l;
        self.offset += l;
        let out = (
            kb.slice_axis(2, 0, self.len as i32)?,
            vb.slice_axis(2, 0, self.len as i32)?,
        );
        self.keys = Some(kb);
        self.values = Some(vb);
        Ok(out)
    }

    fn update_window(&mut self, k: &Array, v: &Array, l: usize, w: usize) -> Result<(Array, Array)> {
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
        Ok((all_k, all_v))
    }

    /// Forgets everything after the first `n` positions. Returns false when
    /// that is impossible (a window cache already dropped positions before `n`);
    /// the caller must then start over.
    pub fn trim_to(&mut self, n: usize) -> bool {
        if n >= self.offset {
            return n == self.offset;
        }
        if self.window.is_some() && self.offset > self.len {
            return false;
        }
        if self.window.is_some() {
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
        self.len = n;
        self.offset = n;
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
