//! Per-sequence key/value cache: for every layer, the keys and values of all positions so far.
//!
//! Allocated once for the whole request (prompt + most tokens to generate), so decoding never
//! reallocates; new positions are written by [`KvCache::append`] and become visible to the next
//! forward pass after [`KvCache::commit`].
//!
//! Keys are stored transposed per head (`[head][dim][position]`): a query's scores against
//! every position are then eight positions per vector instruction, each position's sum still
//! taken over the head's dimensions in order. Values stay `[position][kv_dim]`, the layout the
//! weighted sum walks.

/// Keys and values of one sequence, f32.
#[derive(Debug)]
pub struct KvCache {
    kv_dim: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    /// Per layer: `[kv_head][head_dim][capacity]`.
    keys: Vec<Vec<f32>>,
    /// Per layer: `[capacity][kv_dim]`.
    values: Vec<Vec<f32>>,
}

/// One layer's cache as attention reads it.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    kv_dim: usize,
    head_dim: usize,
    capacity: usize,
}

impl<'a> LayerView<'a> {
    /// Dimension `d` of the keys of KV head `h` at positions `0..n`.
    #[inline]
    pub fn key_dim(&self, h: usize, d: usize, n: usize) -> &'a [f32] {
        let start = (h * self.head_dim + d) * self.capacity;
        &self.keys[start..start + n]
    }

    /// The value of KV head `h` at position `p`.
    #[inline]
    pub fn value(&self, h: usize, p: usize) -> &'a [f32] {
        let start = p * self.kv_dim + h * self.head_dim;
        &self.values[start..start + self.head_dim]
    }
}

impl KvCache {
    pub fn new(layers: usize, kv_dim: usize, head_dim: usize, capacity: usize) -> Self {
        Self {
            kv_dim,
            head_dim,
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

    /// Write the keys and values of new positions (after the committed ones) for `layer`;
    /// `k` and `v` hold one `kv_dim` row per position.
    ///
    /// # Panics
    /// When the cache would overflow; callers size it from the request before decoding.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let new = k.len() / self.kv_dim;
        assert!(self.len + new <= self.capacity, "KV cache overflow");
        let start = self.len * self.kv_dim;
        self.values[layer][start..start + v.len()].copy_from_slice(v);
        let keys = &mut self.keys[layer];
        for (t, row) in k.chunks_exact(self.kv_dim).enumerate() {
            let pos = self.len + t;
            for (i, value) in row.iter().enumerate() {
                // Element i of the row is dimension i % head_dim of head i / head_dim, and
                // (head * head_dim + dim) is i itself.
                keys[i * self.capacity + pos] = *value;
            }
        }
    }

    /// Make `n` appended positions part of the sequence.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// The cache of `layer`, including positions appended but not yet committed.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        LayerView {
            keys: &self.keys[layer],
            values: &self.values[layer],
            kv_dim: self.kv_dim,
            head_dim: self.head_dim,
            capacity: self.capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_per_head_dimension_and_values_per_position() {
        // 2 KV heads of 3 dimensions; two positions appended, then one more.
        let mut cache = KvCache::new(1, 6, 3, 4);
        let k: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..12).map(|i| 100.0 + i as f32).collect();
        cache.append(0, &k, &v);
        cache.commit(2);
        cache.append(0, &[20.0; 6], &[30.0; 6]);
        let view = cache.layer(0);
        // Head 1, dimension 2 is row element 5: 5 at position 0, 11 at position 1, 20 at 2.
        assert_eq!(view.key_dim(1, 2, 3), &[5.0, 11.0, 20.0]);
        assert_eq!(view.key_dim(0, 0, 2), &[0.0, 6.0]);
        assert_eq!(view.value(1, 1), &[109.0, 110.0, 111.0]);
        assert_eq!(view.value(0, 2), &[30.0, 30.0, 30.0]);
    }
}
