//! Per-sequence key/value cache: for every layer, the keys and values of all positions so far.
//!
//! Allocated once for the whole request (prompt + most tokens to generate), so decoding never
//! reallocates; new positions are written by [`KvCache::append`] and become visible to the next
//! forward pass after [`KvCache::commit`].
//!
//! Stored as f16 by default, as llama.cpp does: half the memory and half the bytes attention
//! reads per step, widened on the fly (F16C) in the attention loops. F32 ([`KvPrecision`])
//! gives exactly the arithmetic of engines that keep f32 caches (candle, HF transformers),
//! which the reference tests compare against token for token.
//!
//! Keys are stored transposed per head (`[head][dim][position]`): a query's scores against
//! every position are then eight positions per vector instruction, each position's sum still
//! taken over the head's dimensions in order. Values stay `[position][kv_dim]`, the layout the
//! weighted sum walks.

use half::f16;

use super::simd;

/// Element type of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    #[default]
    F16,
    F32,
}

impl KvPrecision {
    /// `f16` or `f32`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f16" => Some(Self::F16),
            "f32" => Some(Self::F32),
            _ => None,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

/// An element type the cache can hold; attention reads it through [`simd::Widen`].
pub trait KvElement: simd::Widen + Send + Sync + 'static {
    const ZERO: Self;
    fn store(v: f32) -> Self;
}

impl KvElement for f16 {
    const ZERO: Self = f16::ZERO;
    fn store(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl KvElement for f32 {
    const ZERO: Self = 0.0;
    fn store(v: f32) -> Self {
        v
    }
}

/// Per layer: keys `[kv_head][head_dim][capacity]`, values `[capacity][kv_dim]`.
#[derive(Debug)]
struct Store<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

impl<T: KvElement> Store<T> {
    fn new(layers: usize, size: usize) -> Self {
        Self {
            keys: (0..layers).map(|_| vec![T::ZERO; size]).collect(),
            values: (0..layers).map(|_| vec![T::ZERO; size]).collect(),
        }
    }

    fn append(
        &mut self,
        layer: usize,
        len: usize,
        capacity: usize,
        kv_dim: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let start = len * kv_dim;
        for (slot, value) in self.values[layer][start..start + v.len()].iter_mut().zip(v) {
            *slot = T::store(*value);
        }
        let keys = &mut self.keys[layer];
        for (t, row) in k.chunks_exact(kv_dim).enumerate() {
            for (i, value) in row.iter().enumerate() {
                // Element i of the row is dimension i % head_dim of head i / head_dim, and
                // (head * head_dim + dim) is i itself.
                keys[i * capacity + len + t] = T::store(*value);
            }
        }
    }
}

#[derive(Debug)]
enum Storage {
    F16(Store<f16>),
    F32(Store<f32>),
    /// Kept by the model on its device (the CUDA backend): only the length lives here.
    Device,
}

/// Keys and values of one sequence.
#[derive(Debug)]
pub struct KvCache {
    kv_dim: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    storage: Storage,
}

/// One layer's cache of element type `T`.
#[derive(Debug, Clone, Copy)]
pub struct Layer<'a, T> {
    keys: &'a [T],
    values: &'a [T],
    kv_dim: usize,
    head_dim: usize,
    capacity: usize,
}

impl<'a, T> Layer<'a, T> {
    /// Dimension `d` of the keys of KV head `h` at positions `0..n`.
    #[inline]
    pub fn key_dim(&self, h: usize, d: usize, n: usize) -> &'a [T] {
        let start = (h * self.head_dim + d) * self.capacity;
        &self.keys[start..start + n]
    }

    /// The keys of KV head `h`, dimension-major: dimension `d` of position `p` is at
    /// `d * stride + p`. Returns (keys, stride).
    #[inline]
    pub fn head_keys(&self, h: usize) -> (&'a [T], usize) {
        (
            &self.keys[h * self.head_dim * self.capacity..],
            self.capacity,
        )
    }

    /// The values of KV head `h`, position-major: dimension `j` of position `p` is at
    /// `p * stride + j`. Returns (values, stride).
    #[inline]
    pub fn head_values(&self, h: usize) -> (&'a [T], usize) {
        (&self.values[h * self.head_dim..], self.kv_dim)
    }

    /// The value of KV head `h` at position `p`.
    #[inline]
    pub fn value(&self, h: usize, p: usize) -> &'a [T] {
        let start = p * self.kv_dim + h * self.head_dim;
        &self.values[start..start + self.head_dim]
    }
}

/// One layer's cache as attention reads it.
#[derive(Debug, Clone, Copy)]
pub enum LayerView<'a> {
    F16(Layer<'a, f16>),
    F32(Layer<'a, f32>),
}

impl KvCache {
    pub fn new(
        layers: usize,
        kv_dim: usize,
        head_dim: usize,
        capacity: usize,
        precision: KvPrecision,
    ) -> Self {
        let size = capacity * kv_dim;
        let storage = match precision {
            KvPrecision::F16 => Storage::F16(Store::new(layers, size)),
            KvPrecision::F32 => Storage::F32(Store::new(layers, size)),
        };
        Self {
            kv_dim,
            head_dim,
            capacity,
            len: 0,
            storage,
        }
    }

    /// The bookkeeping of a cache whose keys and values a device model keeps itself.
    pub fn on_device(capacity: usize) -> Self {
        Self {
            kv_dim: 0,
            head_dim: 0,
            capacity,
            len: 0,
            storage: Storage::Device,
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
        let (len, cap, dim) = (self.len, self.capacity, self.kv_dim);
        match &mut self.storage {
            Storage::F16(s) => s.append(layer, len, cap, dim, k, v),
            Storage::F32(s) => s.append(layer, len, cap, dim, k, v),
            Storage::Device => panic!("append on a cache the device model keeps"),
        }
    }

    /// Make `n` appended positions part of the sequence.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// The cache of `layer`, including positions appended but not yet committed.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        match &self.storage {
            Storage::F16(s) => LayerView::F16(self.view(s, layer)),
            Storage::F32(s) => LayerView::F32(self.view(s, layer)),
            Storage::Device => panic!("host view of a cache the device model keeps"),
        }
    }

    fn view<'a, T>(&self, store: &'a Store<T>, layer: usize) -> Layer<'a, T> {
        Layer {
            keys: &store.keys[layer],
            values: &store.values[layer],
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
        for precision in [KvPrecision::F16, KvPrecision::F32] {
            // 2 KV heads of 3 dimensions; two positions appended, then one more.
            let mut cache = KvCache::new(1, 6, 3, 4, precision);
            let k: Vec<f32> = (0..12).map(|i| i as f32).collect();
            let v: Vec<f32> = (0..12).map(|i| 100.0 + i as f32).collect();
            cache.append(0, &k, &v);
            cache.commit(2);
            cache.append(0, &[20.0; 6], &[30.0; 6]);
            fn check<T: Copy + Into<f32>>(view: Layer<'_, T>) {
                let widen = |s: &[T]| s.iter().map(|v| (*v).into()).collect::<Vec<f32>>();
                // Head 1, dimension 2 is row element 5: 5 at position 0, 11 at 1, 20 at 2.
                assert_eq!(widen(view.key_dim(1, 2, 3)), [5.0, 11.0, 20.0]);
                assert_eq!(widen(view.key_dim(0, 0, 2)), [0.0, 6.0]);
                assert_eq!(widen(view.value(1, 1)), [109.0, 110.0, 111.0]);
                assert_eq!(widen(view.value(0, 2)), [30.0, 30.0, 30.0]);
                // The whole-head views the attention kernels walk agree with both.
                let (keys, stride) = view.head_keys(1);
                assert_eq!(widen(&keys[2 * stride..2 * stride + 3]), [5.0, 11.0, 20.0]);
                let (values, stride) = view.head_values(1);
                assert_eq!(widen(&values[stride..stride + 3]), [109.0, 110.0, 111.0]);
            }
            match cache.layer(0) {
                LayerView::F16(l) => check(l),
                LayerView::F32(l) => check(l),
            }
        }
    }
}
