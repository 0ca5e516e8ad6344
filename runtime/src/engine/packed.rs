//! Quantised weight matrices (Q4_0, Q4_1, Q8_0) as the CPU kernels read them — rows in groups
//! of sixteen, interleaved block by block — and the matrix–vector kernels over that layout.
//!
//! **Layout.** A matrix is cut into groups of [`GROUP_ROWS`] rows (the last one padded with
//! zero rows). A group holds its rows' first blocks, then their second blocks, and so on; the
//! sixteen blocks of one index, [`group_block_bytes`] long (sixteen times a block, the same
//! bytes), are stored as
//!
//! - the sixteen f16 scales `d`, row by row; for Q4_1 then the sixteen f16 minimums `m`;
//! - the quants in **chunks** of 64 bytes: chunk `k` is every row's four bytes `4k..4k + 4`,
//!   row by row. Q8_0 has eight chunks (elements `4k..4k + 4`); Q4_0 and Q4_1 four, whose low
//!   nibbles are elements `4k..4k + 4` and high nibbles `16 + 4k..16 + 4k + 4`.
//!
//! So one 512-bit register holds a chunk of all sixteen rows, and one `vpdpbusd` against the
//! token's four matching quants (broadcast) adds four products into each row's lane: a
//! block's sixteen integer dot products take eight of them and no horizontal sum, and the
//! block's float work (convert, scale, multiply–add) serves sixteen rows per instruction.
//! Row-by-row layouts spend most of their instructions on that float work and on sums across
//! lanes.
//!
//! **Arithmetic** (every kernel here, and [`super::quant::dot_row_portable`] on unpacked rows,
//! the same to the bit): per block, the exact integer `Σ w·q` (Q4_0's nibbles less 8, Q4_1's
//! as stored, Q8_0's signed bytes); `acc = fma(float(Σ), d_w · d_x, acc)` over the blocks in
//! order from `acc = 0`; for Q4_1 then `acc += m · s` (the activation's sum term). `d_w · d_x`
//! and `m · s` are products of f16 values, exact in f32, so the fma and the add are the only
//! roundings: a token's result does not depend on the tokens it is batched with, nor on which
//! kernel family runs it (tested).
//!
//! The unsigned-times-signed products (`vpdpbusd`, `vpmaddubsw`) take Q4 nibbles as they are;
//! Q4_0's offset of 8 and Q8_0's signed weights (made unsigned as `w ^ 0x80 = w + 128`) are
//! taken off by starting each block's sum at `-8 · Σq` or `-128 · Σq`
//! ([`QuantizedActivation::sums`]).

use super::quant::{GgmlType, QK, QuantizedActivation, dot_row_portable};
use super::simd::GroupKernels;

/// Rows per group.
pub const GROUP_ROWS: usize = 16;

/// Most activation rows one kernel call takes (one accumulator register each).
pub const MAX_TOKENS: usize = 8;

/// Whether matrices of `ty` are packed (the block-quantised types).
pub fn packs(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// Bytes of the sixteen blocks of one index in a group.
pub fn group_block_bytes(ty: GgmlType) -> usize {
    GROUP_ROWS * ty.block_bytes()
}

/// Bytes of one group of rows `cols` wide.
pub fn group_bytes(ty: GgmlType, cols: usize) -> usize {
    GROUP_ROWS * ty.row_bytes(cols)
}

/// Groups of a matrix of `rows` rows.
pub fn groups(rows: usize) -> usize {
    rows.div_ceil(GROUP_ROWS)
}

/// Where a group block's chunks start (after the scales, and Q4_1's minimums).
fn chunks_offset(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_1 => 4 * GROUP_ROWS,
        _ => 2 * GROUP_ROWS,
    }
}

/// Where a row block's quants start (after its scale, and Q4_1's minimum).
fn block_quants_offset(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_1 => 4,
        _ => 2,
    }
}

/// Where the pieces of row `lane`'s block sit in its group block: `(offset in the row's block,
/// offset in the group block, length)` for the scale, Q4_1's minimum and each four quant
/// bytes. Packing and unpacking copy along these.
fn block_pieces(ty: GgmlType, lane: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (quants_at, chunks_at) = (block_quants_offset(ty), chunks_offset(ty));
    let minimum = (ty == GgmlType::Q4_1).then_some((2, 2 * GROUP_ROWS + 2 * lane, 2));
    let chunks = (ty.block_bytes() - quants_at) / 4;
    std::iter::once((0, 2 * lane, 2))
        .chain(minimum)
        .chain((0..chunks).map(move |k| (quants_at + 4 * k, chunks_at + 64 * k + 4 * lane, 4)))
}

/// The packed form of the `rows × cols` matrix `data` (rows contiguous, as files store them)
/// of a block-quantised `ty`.
///
/// # Panics
/// When `ty` is not block-quantised or `data` is not `rows` rows of `cols`.
pub fn pack(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    assert!(packs(ty), "pack: {ty:?} is not block-quantised");
    let row_bytes = ty.row_bytes(cols);
    assert_eq!(data.len(), rows * row_bytes, "pack: matrix size");
    let (block, blocks) = (ty.block_bytes(), cols / QK);
    let mut out = vec![0u8; groups(rows) * group_bytes(ty, cols)];
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let (group, lane) = (r / GROUP_ROWS, r % GROUP_ROWS);
        for (b, src) in row.chunks_exact(block).enumerate() {
            let dst = &mut out[(group * blocks + b) * group_block_bytes(ty)..];
            for (at_row, at_group, len) in block_pieces(ty, lane) {
                dst[at_group..at_group + len].copy_from_slice(&src[at_row..at_row + len]);
            }
        }
    }
    out
}

/// Row `r` of a packed matrix `cols` wide in the file's layout (one row's blocks).
pub fn unpack_row(ty: GgmlType, cols: usize, packed: &[u8], r: usize) -> Vec<u8> {
    let (block, blocks) = (ty.block_bytes(), cols / QK);
    let (group, lane) = (r / GROUP_ROWS, r % GROUP_ROWS);
    let mut row = vec![0u8; blocks * block];
    for (b, dst) in row.chunks_exact_mut(block).enumerate() {
        let src = &packed[(group * blocks + b) * group_block_bytes(ty)..];
        for (at_row, at_group, len) in block_pieces(ty, lane) {
            dst[at_row..at_row + len].copy_from_slice(&src[at_group..at_group + len]);
        }
    }
    row
}

/// `outs[t][16 g + r]` = row `r` of group `g` of `groups` · `xs[t]`, for up to
/// [`MAX_TOKENS`] activations, on the widest kernels this CPU has.
///
/// # Panics
/// When the lengths do not fit: `groups` holds whole groups of rows `cols` wide, every
/// activation that many blocks (with their sums), every output 16 values per group.
pub fn dot_groups(
    ty: GgmlType,
    cols: usize,
    groups: &[u8],
    xs: &[&QuantizedActivation],
    outs: &mut [&mut [f32]],
) {
    let kernels = GroupKernels::best();
    dot_groups_on(
        kernels.available().then_some(kernels),
        ty,
        cols,
        groups,
        xs,
        outs,
    );
}

/// [`dot_groups`] on the given kernels (`None`: the portable loops). Every family gives the
/// same bits.
///
/// # Panics
/// As [`dot_groups`], and when this CPU lacks `kernels`.
pub fn dot_groups_on(
    kernels: Option<GroupKernels>,
    ty: GgmlType,
    cols: usize,
    groups: &[u8],
    xs: &[&QuantizedActivation],
    outs: &mut [&mut [f32]],
) {
    assert!(packs(ty), "dot_groups: {ty:?} is not block-quantised");
    let blocks = cols / QK;
    let count = groups.len() / group_bytes(ty, cols).max(1);
    assert!(
        cols.is_multiple_of(QK)
            && groups.len() == count * group_bytes(ty, cols)
            && xs.len() <= MAX_TOKENS
            && xs.len() == outs.len()
            && xs.iter().all(|x| {
                x.d.len() >= blocks
                    && x.s.len() >= blocks
                    && x.sums.len() >= blocks
                    && x.qs.len() >= blocks * QK
            })
            && outs.iter().all(|o| o.len() == count * GROUP_ROWS),
        "dot_groups: lengths do not fit"
    );
    if xs.is_empty() || count == 0 {
        return;
    }
    match kernels {
        None => portable(ty, cols, groups, xs, outs),
        #[cfg(target_arch = "x86_64")]
        Some(kernels) => {
            assert!(
                kernels.available(),
                "dot_groups: this CPU lacks {kernels:?}"
            );
            // SAFETY: the features are present (checked just above) and the lengths were
            // checked at the top.
            unsafe { x86::dot_groups(kernels, ty, blocks, groups, xs, outs) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Some(kernels) => panic!("dot_groups: this CPU lacks {kernels:?}"),
    }
}

/// The portable loops (where there are no SIMD kernels, and the reference the SIMD families
/// are tested against): each row unpacked and multiplied by `quant::dot_row_portable`, which
/// defines the arithmetic.
fn portable(
    ty: GgmlType,
    cols: usize,
    groups: &[u8],
    xs: &[&QuantizedActivation],
    outs: &mut [&mut [f32]],
) {
    for (g, group) in groups.chunks_exact(group_bytes(ty, cols)).enumerate() {
        for lane in 0..GROUP_ROWS {
            let row = unpack_row(ty, cols, group, lane);
            for (x, out) in xs.iter().zip(outs.iter_mut()) {
                out[g * GROUP_ROWS + lane] = dot_row_portable(ty, &row, &[], x);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        GROUP_ROWS, GgmlType, GroupKernels, QK, QuantizedActivation, chunks_offset,
        group_block_bytes,
    };

    /// How far ahead of the block being multiplied the weights are prefetched: the hardware
    /// prefetcher alone leaves decode waiting on memory. 8 KiB is about 200 ns of a thread's
    /// share of the stream at the Zen 5 VM's 45 GB/s, a DRAM round trip with margin. Measured
    /// with the row-by-row kernels before this layout (one-sequence pass, best of ten, two
    /// rounds): 2 KiB (tuned on the first, AVX2-only VM) 3.5–4.0 ms, 4 KiB 2.6–2.9, 8 KiB
    /// 2.2–2.3, 16 KiB 2.2–2.5, 32 KiB 2.5–2.6.
    const PREFETCH_BYTES: usize = 8192;

    /// Ask for the `bytes` at `p`, `PREFETCH_BYTES` on (a prefetch never faults, so running
    /// past the end of the matrix is harmless).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn prefetch(p: *const u8, bytes: usize) {
        for line in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint; it reads nothing architecturally.
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES + line) as *const i8);
        }
    }

    /// The kernels' tokens as raw pointers they index by block: quants four at a time (read
    /// unaligned: they are bytes), scales, sum terms, and the quants' sums.
    struct Tokens<const T: usize> {
        qs: [*const i32; T],
        ds: [*const f32; T],
        ss: [*const f32; T],
        sums: [*const i32; T],
    }

    impl<const T: usize> Tokens<T> {
        /// The first `T` of `xs` (the caller passes exactly `T`).
        fn of(xs: &[&QuantizedActivation]) -> Self {
            Self {
                qs: std::array::from_fn(|t| xs[t].qs.as_ptr() as *const i32),
                ds: std::array::from_fn(|t| xs[t].d.as_ptr()),
                ss: std::array::from_fn(|t| xs[t].s.as_ptr()),
                sums: std::array::from_fn(|t| xs[t].sums.as_ptr()),
            }
        }
    }

    /// Runs `$body` once for each token `t` below `$count` (at most [`MAX_TOKENS`]), each copy
    /// with `t` a constant. A plain `for t in 0..T` over eight tokens is too big for LLVM to
    /// unroll, and with `t` a variable the accumulators `acc[t]` live on the stack: every
    /// block then stored and reloaded all eight, and a pass of eight sequences took twice as
    /// long as one of four (perf annotate on the Xeon VM of 2026-11-28).
    macro_rules! for_each_token {
        ($count:expr, |$t:ident| $body:block) => {
            for_each_token!(@each $count, $t, $body, 0 1 2 3 4 5 6 7)
        };
        (@each $count:expr, $t:ident, $body:block, $($i:literal)*) => {
            const _: () = assert!(super::MAX_TOKENS == 8, "one copy per possible token");
            $(
                if $i < $count {
                    let $t: usize = $i;
                    $body
                }
            )*
        };
    }

    /// Calls `$kernel::<N>($args)` with `N` the token count `$n` (1 to 8).
    macro_rules! by_token_count {
        ($n:expr, $kernel:ident, ($($args:expr),* $(,)?)) => {
            match $n {
                1 => $kernel::<1>($($args),*),
                2 => $kernel::<2>($($args),*),
                3 => $kernel::<3>($($args),*),
                4 => $kernel::<4>($($args),*),
                5 => $kernel::<5>($($args),*),
                6 => $kernel::<6>($($args),*),
                7 => $kernel::<7>($($args),*),
                _ => $kernel::<8>($($args),*),
            }
        };
    }

    /// [`super::dot_groups_on`] on `kernels`.
    ///
    /// # Safety
    /// This CPU has `kernels`; the lengths were checked as `dot_groups_on` checks them.
    pub unsafe fn dot_groups(
        kernels: GroupKernels,
        ty: GgmlType,
        blocks: usize,
        groups: &[u8],
        xs: &[&QuantizedActivation],
        outs: &mut [&mut [f32]],
    ) {
        match kernels {
            // SAFETY: forwarded from the caller.
            GroupKernels::Avx512Vnni => unsafe {
                by_token_count!(xs.len(), groups_512, (ty, blocks, groups, xs, outs))
            },
            GroupKernels::Avx2 => {
                // Four tokens at a time: eight weight registers and the accumulators share
                // AVX2's sixteen.
                for (xs, outs) in xs.chunks(4).zip(outs.chunks_mut(4)) {
                    // SAFETY: forwarded from the caller.
                    unsafe {
                        match xs.len() {
                            1 => groups_avx2::<1>(ty, blocks, groups, xs, outs),
                            2 => groups_avx2::<2>(ty, blocks, groups, xs, outs),
                            3 => groups_avx2::<3>(ty, blocks, groups, xs, outs),
                            _ => groups_avx2::<4>(ty, blocks, groups, xs, outs),
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 VNNI kernel for `T` tokens: each group block's chunks are loaded (Q4
    /// nibbles split, Q8 bytes made unsigned) once for all tokens; per token, eight
    /// `vpdpbusd` against its quants (four at a time, broadcast) leave the sixteen rows'
    /// integer sums, which one convert, one scale product and one multiply–add take into the
    /// token's accumulator (Q4_1: and one more multiply–add for the minimums).
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2, FMA and F16C are present; the lengths fit (see
    /// [`dot_groups`]) and `xs.len() == T`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    unsafe fn groups_512<const T: usize>(
        ty: GgmlType,
        blocks: usize,
        groups: &[u8],
        xs: &[&QuantizedActivation],
        outs: &mut [&mut [f32]],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let flip = _mm512_set1_epi8(-128);
        let chunks_at = chunks_offset(ty);
        // SAFETY (all three): a group block holds its chunks at `chunks_at` (the caller).
        let q4 = |blk: *const u8| -> [__m512i; 8] {
            let c: [__m512i; 4] = std::array::from_fn(|k| unsafe {
                _mm512_loadu_si512(blk.add(chunks_at + 64 * k) as *const __m512i)
            });
            let hi = |v: __m512i| _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
            [
                _mm512_and_si512(c[0], nibble),
                _mm512_and_si512(c[1], nibble),
                _mm512_and_si512(c[2], nibble),
                _mm512_and_si512(c[3], nibble),
                hi(c[0]),
                hi(c[1]),
                hi(c[2]),
                hi(c[3]),
            ]
        };
        let q8 = |blk: *const u8| -> [__m512i; 8] {
            std::array::from_fn(|k| unsafe {
                _mm512_xor_si512(
                    _mm512_loadu_si512(blk.add(chunks_at + 64 * k) as *const __m512i),
                    flip,
                )
            })
        };
        // SAFETY: forwarded from the caller.
        unsafe {
            match ty {
                GgmlType::Q4_1 => kernel_512::<T>(ty, blocks, groups, xs, outs, q4, 0),
                GgmlType::Q4_0 => kernel_512::<T>(ty, blocks, groups, xs, outs, q4, 8),
                _ => kernel_512::<T>(ty, blocks, groups, xs, outs, q8, 128),
            }
        }
    }

    /// [`groups_512`]'s loops for one weight type: `weights` gives a group block's eight
    /// unsigned chunks (in the order of the token's four-quant groups, elements `4j..4j + 4`);
    /// each block's sums start at `-offset · Σq`.
    ///
    /// # Safety
    /// As [`groups_512`]; `weights` reads only within the group block it is given.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel_512<const T: usize>(
        ty: GgmlType,
        blocks: usize,
        groups: &[u8],
        xs: &[&QuantizedActivation],
        outs: &mut [&mut [f32]],
        weights: impl Fn(*const u8) -> [__m512i; 8],
        offset: i32,
    ) {
        let block_bytes = group_block_bytes(ty);
        let with_min = ty == GgmlType::Q4_1;
        let Tokens { qs, ds, ss, sums } = Tokens::<T>::of(xs);
        for (g, group) in groups.chunks_exact(blocks * block_bytes).enumerate() {
            let mut acc = [_mm512_setzero_ps(); T];
            for b in 0..blocks {
                // SAFETY: block b of the group, and of every activation (the caller).
                unsafe {
                    let blk = group.as_ptr().add(b * block_bytes);
                    prefetch(blk, block_bytes);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(
                        blk.add(2 * GROUP_ROWS) as *const __m256i
                    ));
                    let w = weights(blk);
                    for_each_token!(T, |t| {
                        let q = qs[t].add(b * QK / 4);
                        let quad = |j: usize| _mm512_set1_epi32(q.add(j).read_unaligned());
                        // Two chains of four, so a token's eight products are not one
                        // dependency chain.
                        let mut even =
                            _mm512_set1_epi32(offset.wrapping_neg().wrapping_mul(*sums[t].add(b)));
                        let mut odd = _mm512_setzero_si512();
                        for j in (0..8).step_by(2) {
                            even = _mm512_dpbusd_epi32(even, w[j], quad(j));
                            odd = _mm512_dpbusd_epi32(odd, w[j + 1], quad(j + 1));
                        }
                        let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
                        let scale = _mm512_mul_ps(d, _mm512_set1_ps(*ds[t].add(b)));
                        acc[t] = _mm512_fmadd_ps(dot, scale, acc[t]);
                        if with_min {
                            acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(*ss[t].add(b)), acc[t]);
                        }
                    });
                }
            }
            for (t, out) in outs.iter_mut().enumerate() {
                // SAFETY: each output holds 16 values per group (the caller).
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(g * GROUP_ROWS), acc[t]) };
            }
        }
    }

    /// The AVX2 kernel for `T` (at most four) tokens, a group's rows in two halves of eight
    /// (one row per 32-bit lane). Q4: a token's eight `vpmaddubsw` against the half's nibble
    /// chunks add up in 16 bits (each at most 2 · 15 · 128 in magnitude, eight of them below
    /// 2^15), then one `vpmaddwd` makes the rows' sums. Q8_0: each product by sign trick
    /// (|w| against q with w's sign; |w| ≤ 128 and |q| ≤ 127 keep a pair below 2^15), widened
    /// chunk by chunk.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; the lengths fit (see [`dot_groups`]) and
    /// `xs.len() == T`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn groups_avx2<const T: usize>(
        ty: GgmlType,
        blocks: usize,
        groups: &[u8],
        xs: &[&QuantizedActivation],
        outs: &mut [&mut [f32]],
    ) {
        let block_bytes = group_block_bytes(ty);
        let chunks_at = chunks_offset(ty);
        let nibble = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let Tokens { qs, ds, ss, sums } = Tokens::<T>::of(xs);
        let offset: i32 = if ty == GgmlType::Q4_0 { 8 } else { 0 };
        for (g, group) in groups.chunks_exact(blocks * block_bytes).enumerate() {
            for half in 0..2 {
                let mut acc = [_mm256_setzero_ps(); T];
                for b in 0..blocks {
                    // SAFETY: block b of the group, and of every activation (the caller).
                    unsafe {
                        let blk = group.as_ptr().add(b * block_bytes);
                        if half == 0 {
                            prefetch(blk, block_bytes);
                        }
                        let scales = |at: usize| {
                            _mm256_cvtph_ps(_mm_loadu_si128(
                                blk.add(at + 16 * half) as *const __m128i
                            ))
                        };
                        let d = scales(0);
                        let chunk = |k: usize| {
                            _mm256_loadu_si256(
                                blk.add(chunks_at + 64 * k + 32 * half) as *const __m256i
                            )
                        };
                        let mut dots = [_mm256_setzero_si256(); T];
                        if ty == GgmlType::Q8_0 {
                            for k in 0..8 {
                                let w = chunk(k);
                                let magnitude = _mm256_sign_epi8(w, w);
                                for t in 0..T {
                                    let q = _mm256_set1_epi32(
                                        qs[t].add(b * QK / 4 + k).read_unaligned(),
                                    );
                                    let pairs =
                                        _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(q, w));
                                    dots[t] =
                                        _mm256_add_epi32(dots[t], _mm256_madd_epi16(pairs, ones));
                                }
                            }
                        } else {
                            let c: [__m256i; 4] = std::array::from_fn(chunk);
                            let w: [__m256i; 8] = std::array::from_fn(|j| {
                                let v = c[j % 4];
                                if j < 4 {
                                    _mm256_and_si256(v, nibble)
                                } else {
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibble)
                                }
                            });
                            for t in 0..T {
                                let q = qs[t].add(b * QK / 4);
                                let mut pairs = _mm256_setzero_si256();
                                for (j, w) in w.iter().enumerate() {
                                    let quad = _mm256_set1_epi32(q.add(j).read_unaligned());
                                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(*w, quad));
                                }
                                let start = _mm256_set1_epi32(
                                    offset.wrapping_neg().wrapping_mul(*sums[t].add(b)),
                                );
                                dots[t] = _mm256_add_epi32(start, _mm256_madd_epi16(pairs, ones));
                            }
                        }
                        let m = scales(2 * GROUP_ROWS);
                        for t in 0..T {
                            let dot = _mm256_cvtepi32_ps(dots[t]);
                            let scale = _mm256_mul_ps(d, _mm256_set1_ps(*ds[t].add(b)));
                            acc[t] = _mm256_fmadd_ps(dot, scale, acc[t]);
                            if ty == GgmlType::Q4_1 {
                                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(*ss[t].add(b)), acc[t]);
                            }
                        }
                    }
                }
                for (t, out) in outs.iter_mut().enumerate() {
                    // SAFETY: each output holds 16 values per group (the caller).
                    unsafe {
                        _mm256_storeu_ps(out.as_mut_ptr().add(g * GROUP_ROWS + 8 * half), acc[t])
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quant::tests::sample;
    use crate::engine::quant::{dequantize_row, dot_row_portable, quantize_row};

    fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Vec<u8> {
        (0..rows)
            .flat_map(|r| quantize_row(ty, &sample(cols, seed + r as u32)))
            .collect()
    }

    const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

    #[test]
    fn packing_keeps_every_row() {
        for ty in TYPES {
            let (rows, cols) = (37, 96);
            let data = matrix(ty, rows, cols, 7);
            let packed = pack(ty, rows, cols, &data);
            assert_eq!(
                packed.len(),
                3 * group_bytes(ty, cols),
                "{ty:?}: padded to groups"
            );
            let row_bytes = ty.row_bytes(cols);
            for r in 0..rows {
                let row = &data[r * row_bytes..(r + 1) * row_bytes];
                assert_eq!(unpack_row(ty, cols, &packed, r), row, "{ty:?} row {r}");
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                dequantize_row(ty, row, &mut a);
                dequantize_row(ty, &unpack_row(ty, cols, &packed, r), &mut b);
                assert_eq!(a, b);
            }
            // The padding rows are zero blocks.
            assert!(unpack_row(ty, cols, &packed, 47).iter().all(|&b| b == 0));
        }
    }

    /// Every kernel family, for every token count, gives each row and token the bits of
    /// `dot_row_portable` on the unpacked row (one token alone, the arithmetic in the module
    /// docs), and the products are those of the dequantised weights within rounding.
    #[test]
    fn every_kernel_family_gives_the_portable_bits() {
        let mut families = vec![None];
        for kernels in [GroupKernels::Avx2, GroupKernels::Avx512Vnni] {
            if kernels.testable() {
                families.push(Some(kernels));
            }
        }
        for ty in TYPES {
            let (rows, cols) = (40, 160);
            let data = matrix(ty, rows, cols, 11);
            let packed = pack(ty, rows, cols, &data);
            let row_bytes = ty.row_bytes(cols);
            let xs: Vec<Vec<f32>> = (0..MAX_TOKENS)
                .map(|t| sample(cols, 100 + t as u32))
                .collect();
            let xqs: Vec<QuantizedActivation> = xs
                .iter()
                .map(|x| {
                    let mut q = QuantizedActivation::default();
                    q.quantize(x);
                    q
                })
                .collect();
            let alone: Vec<Vec<f32>> = xqs
                .iter()
                .zip(&xs)
                .map(|(q, x)| {
                    (0..rows)
                        .map(|r| dot_row_portable(ty, &data[r * row_bytes..][..row_bytes], x, q))
                        .collect()
                })
                .collect();
            for (t, x) in xs.iter().enumerate() {
                for r in 0..rows {
                    let mut w = vec![0f32; cols];
                    dequantize_row(ty, &data[r * row_bytes..][..row_bytes], &mut w);
                    let exact: f32 = w.iter().zip(x).map(|(a, b)| a * b).sum();
                    // 8-bit activations: error well under 1% of the products' magnitude.
                    let scale: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                    let got = alone[t][r];
                    assert!(
                        (got - exact).abs() <= 0.01 * scale,
                        "{ty:?} row {r} token {t}: {got} vs {exact}"
                    );
                }
            }
            for &kernels in &families {
                for n in 1..=MAX_TOKENS {
                    // Tokens from an offset, so each count meets other neighbours.
                    let members: Vec<&QuantizedActivation> =
                        (0..n).map(|k| &xqs[(k + n) % MAX_TOKENS]).collect();
                    let mut outs = vec![vec![f32::NAN; 3 * GROUP_ROWS]; n];
                    let mut views: Vec<&mut [f32]> =
                        outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                    dot_groups_on(kernels, ty, cols, &packed, &members, &mut views);
                    for (k, out) in outs.iter().enumerate() {
                        let t = (k + n) % MAX_TOKENS;
                        for r in 0..rows {
                            assert_eq!(
                                out[r].to_bits(),
                                alone[t][r].to_bits(),
                                "{ty:?} {kernels:?} n={n} row {r} token {t}: {} vs {}",
                                out[r],
                                alone[t][r]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_weights_and_activations_keep_the_bits() {
        // Q8_0 weights of -128 (a file may hold them) and -127, activations at ±127.
        let ty = GgmlType::Q8_0;
        let cols = 64;
        let mut data = matrix(ty, GROUP_ROWS, cols, 3);
        let row_bytes = ty.row_bytes(cols);
        for (r, row) in data.chunks_exact_mut(row_bytes).enumerate() {
            for blk in row.chunks_exact_mut(34) {
                for (i, q) in blk[2..].iter_mut().enumerate() {
                    *q = if (i + r) % 3 == 0 { 0x80 } else { 0x81 };
                }
            }
        }
        let packed = pack(ty, GROUP_ROWS, cols, &data);
        let x: Vec<f32> = (0..cols)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut xq = QuantizedActivation::default();
        xq.quantize(&x);
        let mut reference = vec![0f32; GROUP_ROWS];
        dot_groups_on(
            None,
            ty,
            cols,
            &packed,
            &[&xq],
            &mut [reference.as_mut_slice()],
        );
        for kernels in [GroupKernels::Avx2, GroupKernels::Avx512Vnni] {
            if !kernels.testable() {
                continue;
            }
            let mut out = vec![0f32; GROUP_ROWS];
            dot_groups_on(
                Some(kernels),
                ty,
                cols,
                &packed,
                &[&xq],
                &mut [out.as_mut_slice()],
            );
            assert_eq!(out, reference, "{kernels:?}");
        }
    }
}
