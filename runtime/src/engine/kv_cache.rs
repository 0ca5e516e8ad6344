//! Per-sequence key/value cache: for every layer, the keys and values of all positions so far.
//!
//! Allocated once for the whole request (prompt + most tokens to generate), so decoding never
//! reallocates; new positions are written by [`KvCache::append`] and become visible to the next
//! forward pass after [`KvCache::commit`].

/// Keys and values of one sequence, `[layer][position][kv_dim]`, f32.
#[derive(Debug)]
pub struct KvCache {
    kv_dim: usize,
    capacity: usize,
    len: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(layers: usize, kv_dim: usize, capacity: usize) -> Self {
        Self {
            kv_dim,
            capacity,
            len: 0,
            keys: (0..layers).map(|_| vec![0f32; capacity * kv_dim]).collect(),
            values: (0..layers).map(|_| vec![0f32; capacity * kv_dim]).collect(),
        }
    }

    /// Committed positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Write the keys and values of new positions (after the committed ones) for `layer`.
    ///
    /// # Panics
    /// When the cache would overflow; callers size it from the request before decoding.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let start = self.len * self.kv_dim;
        assert!(
            start + k.len() <= self.capacity * self.kv_dim,
            "KV cache overflow"
        );
        self.keys[layer][start..start + k.len()].copy_from_slice(k);
        self.values[layer][start..start + v.len()].copy_from_slice(v);
    }

    /// Make `n` appended positions part of the sequence.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Keys and values of `layer`, including positions appended but not yet committed.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.keys[layer], &self.values[layer])
    }
}
