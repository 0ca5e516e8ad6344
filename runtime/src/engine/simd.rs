//! AVX2 versions of the row dot products, chosen at run time.
//!
//! Quantised rows (Q4_0, Q4_1, Q8_0 against int8 activations): each block's integer products
//! stay in eight i32 lanes, are converted once and scaled into an eight-lane float accumulator,
//! so there is one horizontal sum per row rather than one per block (as llama.cpp does it).
//!
//! Float rows (F32, F16, BF16): eight-lane FMA over four independent accumulators, with F16
//! widened on the fly by F16C and BF16 by a shift, so half-precision weights are never stored
//! widened.
//!
//! Both sum in another order than the portable loops, so they agree with them within float
//! rounding (tested in `quant`), not bit for bit.

use super::quant::{GgmlType, QK, QuantizedActivation};

/// Whether the SIMD kernels (they need AVX2, FMA and F16C) can run on this CPU; std caches
/// the answer.
#[inline]
pub fn float_simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX2 dot product of one stored row with `x` (and its quantised form `xq`), when there is
/// one for `ty` on this CPU.
#[inline]
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32], xq: &QuantizedActivation) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        // The kernels read `x.len()` elements of both; refuse a mismatched pair.
        if !float_simd_available() || row.len() != x.len() * ty.block_bytes() {
            return None;
        }
        // SAFETY: the features are present (checked above) and the lengths agree.
        return Some(unsafe {
            match ty {
                GgmlType::F32 => x86::f32_dot(row, x),
                GgmlType::F16 => x86::f16_dot(row, x),
                _ => x86::bf16_dot(row, x),
            }
        });
    }
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        let blocks = row.len() / ty.block_bytes();
        // The kernels read `blocks` activation blocks unchecked; refuse a mismatched pair.
        if xq.d.len() < blocks || xq.s.len() < blocks || xq.qs.len() < blocks * QK {
            return None;
        }
        // SAFETY: AVX2, FMA and F16C are present (checked above); the kernels read whole
        // blocks of `row` and `xq`, whose lengths were checked just above.
        return unsafe {
            match ty {
                GgmlType::Q4_0 => Some(x86::q4_0(row, xq)),
                GgmlType::Q4_1 => Some(x86::q4_1(row, xq)),
                GgmlType::Q8_0 => Some(x86::q8_0(row, xq)),
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
            }
        };
    }
    let _ = (ty, row, x, xq);
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{QK, QuantizedActivation};
    use half::f16;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// Σ w·x over a float row whose element `i` is loaded by `load(i)` (eight at a time) or
    /// `scalar(i)` (the tail), with four accumulators to hide the FMA latency.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn float_dot(
        n: usize,
        load: impl Fn(usize) -> __m256,
        x: &[f32],
        scalar: impl Fn(usize) -> f32,
    ) -> f32 {
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load below): i + 8 <= n = x.len(), and `load` reads the same range.
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *a = unsafe { _mm256_fmadd_ps(load(j), _mm256_loadu_ps(xp.add(j)), *a) };
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = unsafe { _mm256_fmadd_ps(load(i), _mm256_loadu_ps(xp.add(i)), acc[0]) };
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum_ps(v);
        while i < n {
            sum += scalar(i) * x[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_dot(row: &[u8], x: &[f32]) -> f32 {
        let p = row.as_ptr() as *const f32;
        // SAFETY: row holds x.len() f32 values (checked by the dispatcher); unaligned loads.
        float_dot(
            x.len(),
            |i| unsafe { _mm256_loadu_ps(p.add(i)) },
            x,
            |i| unsafe { p.add(i).read_unaligned() },
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_dot(row: &[u8], x: &[f32]) -> f32 {
        let p = row.as_ptr() as *const u16;
        // SAFETY: row holds x.len() f16 values (checked by the dispatcher); unaligned loads.
        float_dot(
            x.len(),
            |i| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i)) },
            x,
            |i| f16::from_bits(unsafe { p.add(i).read_unaligned() }).to_f32(),
        )
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn bf16_dot(row: &[u8], x: &[f32]) -> f32 {
        let p = row.as_ptr() as *const u16;
        // SAFETY: row holds x.len() bf16 values (checked by the dispatcher); unaligned loads.
        // A bf16 is the top half of an f32: widen to 32 bits and shift into place.
        float_dot(
            x.len(),
            |i| unsafe {
                let h = _mm_loadu_si128(p.add(i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            },
            x,
            |i| f32::from_bits((unsafe { p.add(i).read_unaligned() } as u32) << 16),
        )
    }

    /// Σ nibble·q for 16 packed bytes (low nibbles are elements 0..16, high 16..32).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles_dot(packed: *const u8, q: *const i8) -> (__m256i, __m256i) {
        // SAFETY: the caller guarantees 16 readable bytes at `packed` and 32 at `q`.
        let (bytes, qv) = unsafe {
            (
                _mm_loadu_si128(packed as *const __m128i),
                _mm256_loadu_si256(q as *const __m256i),
            )
        };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        let w = _mm256_set_m128i(hi, lo);
        let ones = _mm256_set1_epi16(1);
        (_mm256_madd_epi16(_mm256_maddubs_epi16(w, qv), ones), qv)
    }

    /// An f16 scale stored at `b` (little-endian), widened by F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale(b: &[u8]) -> f32 {
        let bits = u16::from_le_bytes([b[0], b[1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_1(row: &[u8], xq: &QuantizedActivation) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (i, blk) in row.chunks_exact(20).enumerate() {
            // SAFETY: a block holds 16 packed bytes after its 4-byte header; xq holds 32
            // quants per block.
            let (dot, _) = unsafe { nibbles_dot(blk.as_ptr().add(4), xq.qs.as_ptr().add(i * QK)) };
            let d = _mm256_set1_ps(scale(blk) * xq.d[i]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, acc);
            // The block minimum times Σx, from the activation's precomputed sum term.
            offsets += scale(&blk[2..]) * xq.s[i];
        }
        hsum_ps(acc) + offsets
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4_0(row: &[u8], xq: &QuantizedActivation) -> f32 {
        let ones_u8 = _mm256_set1_epi8(1);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (i, blk) in row.chunks_exact(18).enumerate() {
            // SAFETY: as for q4_1, with a 2-byte header.
            let (dot, qv) = unsafe { nibbles_dot(blk.as_ptr().add(2), xq.qs.as_ptr().add(i * QK)) };
            // Stored nibbles are offset by 8: Σ(n-8)·q = Σn·q - 8·Σq.
            let qsum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones_u8, qv), ones);
            let lanes = _mm256_sub_epi32(dot, _mm256_slli_epi32(qsum, 3));
            let d = _mm256_set1_ps(scale(blk) * xq.d[i]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), d, acc);
        }
        hsum_ps(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q8_0(row: &[u8], xq: &QuantizedActivation) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (i, blk) in row.chunks_exact(34).enumerate() {
            // SAFETY: a block holds 32 quants after its 2-byte scale; xq holds 32 per block.
            let (w, q) = unsafe {
                (
                    _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i),
                    _mm256_loadu_si256(xq.qs.as_ptr().add(i * QK) as *const __m256i),
                )
            };
            // maddubs needs one unsigned operand: |w| · (q with w's sign).
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
            let d = _mm256_set1_ps(scale(blk) * xq.d[i]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), d, acc);
        }
        hsum_ps(acc)
    }
}
