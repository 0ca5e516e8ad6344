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

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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
    fn store(v: f32) -> Self;
    /// `n` zeros from zeroed memory: the allocator hands out fresh pages the kernel zeroes
    /// as they are first touched, so a cache sized for a long generation costs memory (and
    /// time, on the scheduler's thread) only for the positions it comes to hold.
    fn zeroed(n: usize) -> Vec<Self>
    where
        Self: Sized;
}

impl KvElement for f16 {
    fn store(v: f32) -> Self {
        f16::from_f32(v)
    }

    fn zeroed(n: usize) -> Vec<Self> {
        // `vec![f16::ZERO; n]` would write every element: only std's own number types get
        // the zeroed allocation. So allocate u16 zeros and take them as f16.
        let mut bits = std::mem::ManuallyDrop::new(vec![0u16; n]);
        // SAFETY: f16 is `repr(transparent)` over u16 (same size and alignment), the all-zero
        // pattern is +0.0, and the allocation passes whole (pointer, length, capacity) to the
        // new Vec, which frees it with the same layout.
        unsafe { Vec::from_raw_parts(bits.as_mut_ptr().cast::<f16>(), bits.len(), bits.capacity()) }
    }
}

impl KvElement for f32 {
    fn store(v: f32) -> Self {
        v
    }

    fn zeroed(n: usize) -> Vec<Self> {
        vec![0.0; n]
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
            keys: (0..layers).map(|_| T::zeroed(size)).collect(),
            values: (0..layers).map(|_| T::zeroed(size)).collect(),
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

    /// Positions `0..n` of every layer of `src` (of capacity `src_capacity`) written as this
    /// store's first positions (of capacity `capacity`).
    fn copy_prefix(
        &mut self,
        src: &Self,
        n: usize,
        kv_dim: usize,
        capacity: usize,
        src_capacity: usize,
    ) {
        for (dst, src) in self.values.iter_mut().zip(&src.values) {
            dst[..n * kv_dim].copy_from_slice(&src[..n * kv_dim]);
        }
        for (dst, src) in self.keys.iter_mut().zip(&src.keys) {
            // Keys are one row of `capacity` positions per (head, dimension).
            for row in 0..kv_dim {
                dst[row * capacity..row * capacity + n]
                    .copy_from_slice(&src[row * src_capacity..row * src_capacity + n]);
            }
        }
    }
}

#[derive(Debug)]
enum Storage {
    F16(Store<f16>),
    F32(Store<f32>),
    /// Kept by the model on its device (the CUDA backend) in the slot this cache holds: only
    /// the length lives here.
    Device(DeviceSlot),
}

/// The KV-cache slots of a model that keeps caches on its device: one region of device memory
/// per sequence running at once. A sequence's [`KvCache`] holds its slot and hands it back
/// when dropped, so two sequences never write the same region.
#[derive(Debug)]
pub struct SlotPool {
    total: usize,
    /// Ordered, so the lowest free index goes first and a lone sequence always runs in slot 0.
    free: Mutex<BTreeSet<usize>>,
    returned: Condvar,
}

impl SlotPool {
    /// A pool of `total` slots (at least one), numbered `0..total`.
    pub fn new(total: usize) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(Self {
            total,
            free: Mutex::new((0..total).collect()),
            returned: Condvar::new(),
        })
    }

    /// How many slots there are.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Slots no sequence holds now.
    pub fn available(&self) -> usize {
        self.lock().len()
    }

    /// Take a free slot, waiting for a sequence to end when every slot is held. The engine's
    /// scheduler runs at most [`SlotPool::total`] sequences, so it never waits.
    pub fn take(self: &Arc<Self>) -> DeviceSlot {
        let mut free = self.lock();
        loop {
            if let Some(index) = free.pop_first() {
                return DeviceSlot {
                    index,
                    pool: self.clone(),
                };
            }
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        // Only whole indices are pushed and popped; a panic cannot leave the list half-changed.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One slot of a [`SlotPool`], held by one sequence's cache until it is dropped.
#[derive(Debug)]
pub struct DeviceSlot {
    index: usize,
    pool: Arc<SlotPool>,
}

impl DeviceSlot {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        self.pool.lock().insert(self.index);
        self.pool.returned.notify_one();
    }
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

    /// The bookkeeping of a cache whose keys and values a device model keeps itself, in
    /// `slot`.
    pub fn on_device(capacity: usize, slot: DeviceSlot) -> Self {
        Self {
            kv_dim: 0,
            head_dim: 0,
            capacity,
            len: 0,
            storage: Storage::Device(slot),
        }
    }

    /// The device slot holding this cache's keys and values (`None` for a host cache).
    pub fn device_slot(&self) -> Option<usize> {
        match &self.storage {
            Storage::Device(slot) => Some(slot.index()),
            _ => None,
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
            Storage::Device(_) => panic!("append on a cache the device model keeps"),
        }
    }

    /// Bytes the keys and values take (zero for a cache the device keeps).
    pub fn bytes(&self) -> usize {
        self.capacity * self.position_bytes()
    }

    /// Bytes one position's keys and values take over all layers (zero for a cache the device
    /// keeps).
    pub fn position_bytes(&self) -> usize {
        let layer_elements = match &self.storage {
            Storage::F16(s) => s.keys.len() * 2,
            Storage::F32(s) => s.keys.len() * 4,
            Storage::Device(_) => 0,
        };
        // A key and a value row of `kv_dim` elements per layer.
        2 * layer_elements * self.kv_dim
    }

    /// Write positions `0..n` of `src` as this empty cache's first positions and commit them.
    /// Returns false, copying nothing, where the two differ in layers, width or element type,
    /// either is kept on a device, this one is not empty, or `n` exceeds what `src` holds or
    /// this one can hold.
    pub fn copy_prefix(&mut self, src: &KvCache, n: usize) -> bool {
        if self.len != 0
            || n > src.len
            || n > self.capacity
            || self.kv_dim != src.kv_dim
            || self.head_dim != src.head_dim
        {
            return false;
        }
        let (dim, cap, src_cap) = (self.kv_dim, self.capacity, src.capacity);
        match (&mut self.storage, &src.storage) {
            (Storage::F16(d), Storage::F16(s)) if d.keys.len() == s.keys.len() => {
                d.copy_prefix(s, n, dim, cap, src_cap)
            }
            (Storage::F32(d), Storage::F32(s)) if d.keys.len() == s.keys.len() => {
                d.copy_prefix(s, n, dim, cap, src_cap)
            }
            _ => return false,
        }
        self.len = n;
        true
    }

    /// A copy of the first `n` committed positions in a cache just large enough for them;
    /// `None` for `n` zero or beyond what is committed, or a cache the device keeps.
    pub fn snapshot(&self, n: usize) -> Option<KvCache> {
        let (layers, precision) = match &self.storage {
            Storage::F16(s) => (s.keys.len(), KvPrecision::F16),
            Storage::F32(s) => (s.keys.len(), KvPrecision::F32),
            Storage::Device(_) => return None,
        };
        if n == 0 || n > self.len {
            return None;
        }
        let mut copy = KvCache::new(layers, self.kv_dim, self.head_dim, n, precision);
        copy.copy_prefix(self, n).then_some(copy)
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
            Storage::Device(_) => panic!("host view of a cache the device model keeps"),
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

    /// Bytes of `buffers` in memory now (Linux `mincore`): the cache's own pages, whatever
    /// else the test process allocates meanwhile.
    #[cfg(unix)]
    fn resident_bytes<T>(buffers: &[Vec<T>]) -> usize {
        const PAGE: usize = 4096;
        let mut total = 0;
        for b in buffers {
            let start = b.as_ptr() as usize;
            let first = start & !(PAGE - 1);
            let len = start + std::mem::size_of_val(b.as_slice()) - first;
            let mut flags = vec![0u8; len.div_ceil(PAGE)];
            // SAFETY: [first, first + len) covers the live allocation behind `b`, rounded down
            // to its page; `flags` has a byte per page of it.
            let ok = unsafe { libc::mincore(first as *mut libc::c_void, len, flags.as_mut_ptr()) };
            assert_eq!(ok, 0, "mincore failed");
            total += flags.iter().filter(|f| **f & 1 == 1).count() * PAGE;
        }
        total
    }

    #[cfg(unix)]
    fn cache_resident_bytes(cache: &KvCache) -> usize {
        match &cache.storage {
            Storage::F16(s) => resident_bytes(&s.keys) + resident_bytes(&s.values),
            Storage::F32(s) => resident_bytes(&s.keys) + resident_bytes(&s.values),
            Storage::Device(_) => 0,
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_costs_memory_only_for_the_positions_it_holds() {
        // With transparent huge pages always on, the first write to each 2 MiB maps all of it:
        // then the cache really is resident as soon as every key row has a position.
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.is_ok_and(|t| t.contains("[always]")) {
            eprintln!("skipped: transparent huge pages are always on here");
            return;
        }
        for precision in [KvPrecision::F16, KvPrecision::F32] {
            // 512 MiB of f16 (1 GiB of f32): 131072 positions of 4 layers, two written. Each
            // written position touches a page of every transposed key row: 4 MiB in all.
            let mut cache = KvCache::new(4, 256, 64, 131072, precision);
            for layer in 0..4 {
                cache.append(layer, &[1.0; 2 * 256], &[2.0; 2 * 256]);
            }
            cache.commit(2);
            let resident = cache_resident_bytes(&cache);
            assert!(
                resident < 32 << 20,
                "{precision:?}: {} MiB of a cache holding two positions is in memory",
                resident >> 20
            );
        }
    }

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

    /// Every element of `cache`'s first `n` positions, keys then values, per layer.
    fn positions(cache: &KvCache, layers: usize, n: usize) -> Vec<f32> {
        let mut all = Vec::new();
        for layer in 0..layers {
            let mut take = |view: Layer<'_, f32>| {
                for h in 0..view.kv_dim / view.head_dim {
                    for d in 0..view.head_dim {
                        all.extend_from_slice(view.key_dim(h, d, n));
                    }
                }
                for p in 0..n {
                    for h in 0..view.kv_dim / view.head_dim {
                        all.extend_from_slice(view.value(h, p));
                    }
                }
            };
            match cache.layer(layer) {
                LayerView::F32(l) => take(l),
                LayerView::F16(_) => panic!("the test caches are f32"),
            }
        }
        all
    }

    #[test]
    fn a_copied_prefix_and_a_snapshot_hold_the_same_positions() {
        // 2 layers, 2 KV heads of 2 dimensions, 5 positions written, capacity 8.
        let mut src = KvCache::new(2, 4, 2, 8, KvPrecision::F32);
        for layer in 0..2 {
            let k: Vec<f32> = (0..20).map(|i| (layer * 100 + i) as f32).collect();
            let v: Vec<f32> = (0..20).map(|i| (layer * 100 + 50 + i) as f32).collect();
            src.append(layer, &k, &v);
        }
        src.commit(5);

        let mut dst = KvCache::new(2, 4, 2, 6, KvPrecision::F32);
        assert!(dst.copy_prefix(&src, 3));
        assert_eq!(dst.len(), 3);
        assert_eq!(positions(&dst, 2, 3), positions(&src, 2, 3));

        let snap = src.snapshot(5).expect("a host cache with positions");
        assert_eq!((snap.len(), snap.capacity()), (5, 5));
        assert_eq!(positions(&snap, 2, 5), positions(&src, 2, 5));
        assert_eq!(snap.bytes(), 2 * 2 * 4 * 5 * 4);

        // Refused: a non-empty target, more than the source holds, another width or type.
        assert!(!dst.copy_prefix(&src, 1));
        assert!(!KvCache::new(2, 4, 2, 8, KvPrecision::F32).copy_prefix(&src, 6));
        assert!(!KvCache::new(2, 6, 2, 8, KvPrecision::F32).copy_prefix(&src, 2));
        assert!(!KvCache::new(2, 4, 2, 8, KvPrecision::F16).copy_prefix(&src, 2));
        assert!(!KvCache::new(1, 4, 2, 8, KvPrecision::F32).copy_prefix(&src, 2));
        assert!(src.snapshot(6).is_none() && src.snapshot(0).is_none());
        assert!(
            KvCache::on_device(8, SlotPool::new(1).take())
                .snapshot(1)
                .is_none()
        );
    }

    #[test]
    fn device_slots_are_held_by_one_cache_at_a_time_and_come_back_when_it_drops() {
        let pool = SlotPool::new(3);
        let a = KvCache::on_device(8, pool.take());
        let b = KvCache::on_device(8, pool.take());
        let c = KvCache::on_device(8, pool.take());
        let held: Vec<_> = [&a, &b, &c].iter().map(|c| c.device_slot()).collect();
        assert_eq!(held, [Some(0), Some(1), Some(2)]);
        assert_eq!(pool.available(), 0);
        assert_eq!(
            KvCache::new(1, 4, 2, 8, KvPrecision::F16).device_slot(),
            None
        );

        drop(b);
        assert_eq!(pool.available(), 1);
        let d = KvCache::on_device(8, pool.take());
        assert_eq!(d.device_slot(), Some(1));

        // With every slot held, a taker waits until one is handed back.
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take().index())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "took a slot that another cache holds"
        );
        drop(a);
        assert_eq!(waiter.join().expect("waiter"), 0);
        drop((c, d));
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.total(), 3);
        assert_eq!(SlotPool::new(0).total(), 1);
    }
}
