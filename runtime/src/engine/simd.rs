//! SIMD versions (AVX2, and AVX-512 where present) of the float row dot products, attention's
//! loops, activation quantisation and the elementwise functions, chosen at run time. (The
//! quantised weights' kernels are in `packed`, over their own layout.)
//!
//! Float rows (F32, F16, BF16): eight-lane FMA over two independent accumulators per token,
//! with F16 widened on the fly by F16C and BF16 by a shift, so half-precision weights are
//! never stored widened. Every kernel takes several activation rows at once
//! ([`FLOAT_TOKENS`]) and reads each weight row once for all of them (prefill is then
//! matrix–matrix work); each token's arithmetic is the same whatever the number of tokens, so
//! prefill and decode compute identical values. They sum in another order than the portable
//! loops, so they agree with them within float rounding (tested in `quant`), not bit for bit.
//!
//! Attention's score and value loops take eight (AVX2) or sixteen (AVX-512) positions or
//! outputs per register, each lane's arithmetic unchanged (tested bit for bit).
//! `AGENTRT_SIMD=avx2` keeps the AVX2 kernels on an AVX-512 machine.

use super::quant::{GgmlType, QK};

/// Activation rows per float kernel call (two accumulators each, within the sixteen vector
/// registers).
pub const FLOAT_TOKENS: usize = 4;

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

/// `out[r * n + k] = rows[r] · xs[k]` for consecutive float weight rows (F32, F16, BF16) of
/// `row_bytes` each and up to [`FLOAT_TOKENS`] activations `n`, through the SIMD kernels.
/// Returns `false`, leaving `out` alone, when this CPU has none, the type is not a float
/// type, or the lengths do not fit. One call per task keeps the checks and dispatch out of
/// the inner loop.
pub fn dot_rows_multi(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    xs: &[&[f32]],
    out: &mut [f32],
) -> bool {
    let n = xs.len();
    if n == 0
        || !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        || n > FLOAT_TOKENS
        || row_bytes == 0
        || !rows.len().is_multiple_of(row_bytes)
        || out.len() != rows.len() / row_bytes * n
        || !float_simd_available()
    {
        return false;
    }
    // The kernels read `x.len()` elements of every row and of every x.
    let len = xs[0].len();
    if row_bytes != len * ty.block_bytes() || xs.iter().any(|x| x.len() != len) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX2, FMA and F16C are present and the lengths were checked above.
        unsafe {
            match n {
                1 => x86::dispatch::<1>(ty, rows, row_bytes, xs, out),
                2 => x86::dispatch::<2>(ty, rows, row_bytes, xs, out),
                3 => x86::dispatch::<3>(ty, rows, row_bytes, xs, out),
                _ => x86::dispatch::<4>(ty, rows, row_bytes, xs, out),
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = out;
        false
    }
}

/// The instruction sets the quantised kernels (`packed`) and attention's loops come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKernels {
    /// AVX2, FMA and F16C: eight rows or lanes per register.
    Avx2,
    /// AVX-512 (F, BW) with VNNI: sixteen rows per register, `vpdpbusd`, sixteen-lane
    /// attention loops.
    Avx512Vnni,
}

impl GroupKernels {
    /// Whether this CPU runs these kernels.
    pub fn available(self) -> bool {
        match self {
            Self::Avx2 => float_simd_available(),
            Self::Avx512Vnni => {
                #[cfg(target_arch = "x86_64")]
                {
                    float_simd_available()
                        && std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }

    /// For tests of these kernels: whether this CPU runs them. Where it does not, the test
    /// skips them with a message, or fails when `AGENTRT_REQUIRE_SIMD` names them (`avx2`,
    /// `avx512`), so a runner known to have them cannot pass without testing them.
    #[cfg(test)]
    pub(crate) fn testable(self) -> bool {
        if self.available() {
            return true;
        }
        let name = match self {
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512",
        };
        let required = std::env::var("AGENTRT_REQUIRE_SIMD").unwrap_or_default();
        assert!(
            !required.split(',').any(|r| r.trim() == name),
            "AGENTRT_REQUIRE_SIMD={required} but this CPU lacks the {self:?} kernels"
        );
        eprintln!("{self:?} kernels skipped: this CPU lacks them");
        false
    }

    /// The widest kernels this CPU runs, unless `AGENTRT_SIMD=avx2` asks for the AVX2 ones
    /// (read once).
    pub fn best() -> Self {
        static BEST: std::sync::OnceLock<GroupKernels> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let avx2_only = crate::settings::word("AGENTRT_SIMD") == Some("avx2");
            if !avx2_only && Self::Avx512Vnni.available() {
                Self::Avx512Vnni
            } else {
                Self::Avx2
            }
        })
    }
}

/// The largest magnitude among 32 values (0 for none), as a fold of `f32::max` over `abs`.
/// (The per-block reference for [`quantize_row`]'s tests.)
#[cfg(test)]
pub fn abs_max(block: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if block.len() == QK && float_simd_available() {
        // SAFETY: AVX2 is present and the block holds 32 values.
        return unsafe { x86::abs_max32(block) };
    }
    block.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `out[i] = round(block[i] · id)` for 32 values, rounding halves away from zero exactly as
/// `f32::round` (and [`super::quant::quantize_block_portable`]) does; returns Σ out.
/// (The per-block reference for [`quantize_row`]'s tests.)
#[cfg(test)]
pub fn quantize_block(block: &[f32], id: f32, out: &mut [i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if block.len() == QK && out.len() == QK && float_simd_available() {
        // SAFETY: AVX2 is present and both hold 32 elements.
        return unsafe { x86::quantize32(block, id, out) };
    }
    super::quant::quantize_block_portable(block, id, out)
}

/// A whole activation row quantised to 8-bit blocks
/// ([`super::quant::QuantizedActivation::quantize`]'s values to the bit: `d` the f16-rounded
/// scale, `s` the f16-rounded `d · Σq`, `sums` the `Σq`, `qs` the quants), with the f16
/// roundings done eight blocks at a time. Returns `false`, leaving the
/// outputs alone, where this CPU has no AVX2/FMA/F16C or the lengths do not fit.
pub fn quantize_row(
    x: &[f32],
    d: &mut [f32],
    s: &mut [f32],
    sums: &mut [i32],
    qs: &mut [i8],
) -> bool {
    let blocks = x.len() / QK;
    if !x.len().is_multiple_of(QK)
        || d.len() != blocks
        || s.len() != blocks
        || sums.len() != blocks
        || qs.len() != x.len()
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; the lengths were checked above.
        unsafe { x86::quantize_row(x, d, s, sums, qs) };
        return true;
    }
    false
}

/// `2^(i/32)` rounded to the nearest f64, less `i << 47` (so adding `k << 47` for a `k` with
/// `k % 32 == i` gives `2^(k/32)`'s bits): the table of glibc's `expf` (checked against
/// glibc's own on every input, see the tests).
const EXP2_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// 32 / ln 2.
const EXP_INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// 1.5 · 2^52: adding it rounds to an integer held in the low bits.
const EXP_SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The polynomial for `2^(r/32)`: `C0·r³ + C1·r² + C2·r + 1`.
const EXP_C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const EXP_C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const EXP_C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);
/// `|x|`'s top 12 bits from which [`expf`] leaves the common path (`|x| >= 88`, inf, NaN).
const EXP_SPECIAL_TOP: u32 = 0x42b;
/// Above ln(2^128) `expf` is infinite.
const EXP_OVERFLOW: u32 = 0x42b1_7217;
/// Below ln(2^-150) it is zero.
const EXP_UNDERFLOW: u32 = 0xc2cf_f1b4;
/// Below ln(2^-149) (and not below [`EXP_UNDERFLOW`]) it is the least subnormal.
const EXP_LEAST: u32 = 0xc2ce_8ecf;

/// `e^x` as glibc's `expf` computes it on a CPU with FMA (the engine's softmax and SiLU):
/// `x · 32/ln 2 = k + r`, `2^(k/32)` from a table and `2^(r/32)` from a cubic, in f64 with
/// the same fused operations in the same order, so every result has glibc's bits (tested on
/// all 2^32 inputs). Written out so that [`exp_in_place`] and [`silu_mul`] can compute eight at
/// once with the same values, and so softmax and SwiGLU do not depend on the platform's libm.
pub fn expf(x: f32) -> f32 {
    let bits = x.to_bits();
    if (bits >> 20) & 0x7ff >= EXP_SPECIAL_TOP {
        if bits == f32::NEG_INFINITY.to_bits() {
            return 0.0;
        }
        if (bits >> 20) & 0x7ff >= 0x7f8 {
            return x + x; // inf or NaN
        }
        if x > f32::from_bits(EXP_OVERFLOW) {
            return f32::INFINITY;
        }
        if x < f32::from_bits(EXP_UNDERFLOW) {
            return 0.0;
        }
        if x < f32::from_bits(EXP_LEAST) {
            return f32::from_bits(1);
        }
    }
    let xd = x as f64;
    let kd = EXP_INV_LN2_N.mul_add(xd, EXP_SHIFT);
    let ki = kd.to_bits();
    let kd = kd - EXP_SHIFT;
    let r = EXP_INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(EXP2_TABLE[(ki % 32) as usize].wrapping_add(ki << 47));
    let z = EXP_C0.mul_add(r, EXP_C1);
    let r2 = r * r;
    let y = EXP_C2.mul_add(r, 1.0);
    let y = z.mul_add(r2, y);
    (y * s) as f32
}

/// `x[i] = expf(x[i])` ([`expf`]'s bits), eight at a time where this CPU has AVX2 and FMA.
pub fn exp_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present.
        unsafe { x86::exp_in_place(x) };
        return;
    }
    for v in x {
        *v = expf(*v);
    }
}

/// `gate[i] = gate[i] / (1 + expf(-gate[i])) · up[i]` (SiLU of the gate times the up
/// projection, SwiGLU's activation), eight at a time where this CPU has AVX2 and FMA; every
/// operation rounded as the scalar expression rounds it.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(up.len() >= gate.len(), "silu_mul: up shorter than gate");
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; `up` is long enough.
        unsafe { x86::silu_mul(gate, up) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + expf(-*g)) * u;
    }
}

/// Element types the attention loops read (cached keys and values), widened to f32 one at a
/// time or, in the SIMD kernels, eight at a time.
pub trait Widen: Copy {
    fn widen(self) -> f32;

    /// Eight values at `p`, widened.
    ///
    /// # Safety
    /// Eight values are readable at `p`, and the CPU has AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen values at `p`, widened.
    ///
    /// # Safety
    /// Sixteen values are readable at `p`, and the CPU has AVX-512 F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

    /// The first `n` (fewer than sixteen) values at `p`, widened, the other lanes zero; nothing
    /// past them is read (a masked load).
    ///
    /// # Safety
    /// `n` values are readable at `p`, `n < 16`, and the CPU has AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_first(p: *const Self, n: usize) -> std::arch::x86_64::__m512;
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: guaranteed by the caller.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        // SAFETY: guaranteed by the caller.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16_first(p: *const Self, n: usize) -> std::arch::x86_64::__m512 {
        let mask = ((1u32 << n) - 1) as u16;
        // SAFETY: guaranteed by the caller; masked-off lanes are not accessed.
        unsafe { std::arch::x86_64::_mm512_maskz_loadu_ps(mask, p) }
    }
}

impl Widen for half::f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm256_cvtph_ps};
        // SAFETY: guaranteed by the caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_cvtph_ps};
        // SAFETY: guaranteed by the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16_first(p: *const Self, n: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::{
            _mm512_castsi512_si256, _mm512_cvtph_ps, _mm512_maskz_loadu_epi16,
        };
        let mask = (1u32 << n) - 1;
        // SAFETY: guaranteed by the caller; masked-off lanes are not accessed.
        unsafe {
            let halves = _mm512_maskz_loadu_epi16(mask, p as *const i16);
            _mm512_cvtph_ps(_mm512_castsi512_si256(halves))
        }
    }
}

/// `acc[i] = acc[i] + (w * k[i])` (attention scores over cached keys), each product rounded
/// before the sum (no FMA), so every element gets exactly what a scalar loop computes.
#[inline]
pub fn add_scaled<T: Widen>(acc: &mut [f32], w: f32, k: &[T]) {
    let n = acc.len().min(k.len());
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; both slices hold at least `n` values.
        unsafe { x86::add_scaled(&mut acc[..n], w, &k[..n]) };
        return;
    }
    for (a, x) in acc[..n].iter_mut().zip(&k[..n]) {
        *a += w * x.widen();
    }
}

/// `out += w * v` (attention's weighted sum of cached values), with FMA where the CPU has it.
#[inline]
pub fn axpy<T: Widen>(out: &mut [f32], w: f32, v: &[T]) {
    let n = out.len().min(v.len());
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; both slices hold at least `n` values.
        unsafe { x86::axpy(&mut out[..n], w, &v[..n]) };
        return;
    }
    for (o, x) in out[..n].iter_mut().zip(&v[..n]) {
        *o = x.widen().mul_add(w, *o);
    }
}

/// One query's attention scores over `n = scores.len()` cached positions: for every position
/// `p`, `scores[p] += q[d] · keys[d * stride + p]` for `d` in order, each product rounded before
/// the sum. Exactly [`add_scaled`] once per dimension, bit for bit, but a block of positions
/// stays in registers across all dimensions instead of being read and written back per
/// dimension (one call per head rather than one per dimension).
///
/// # Panics
/// When `keys` is too short for `q.len()` dimensions of `n` positions at `stride`.
pub fn attention_scores<T: Widen>(scores: &mut [f32], q: &[f32], keys: &[T], stride: usize) {
    attention_scores_on(GroupKernels::best(), scores, q, keys, stride);
}

/// [`attention_scores`] on the given instruction set (AVX-512 takes sixteen positions per
/// register, each lane's arithmetic unchanged); the AVX2 or portable loops where this CPU
/// lacks it.
pub fn attention_scores_on<T: Widen>(
    kernels: GroupKernels,
    scores: &mut [f32],
    q: &[f32],
    keys: &[T],
    stride: usize,
) {
    let n = scores.len();
    if q.is_empty() || n == 0 {
        return;
    }
    assert!(
        n <= stride && (q.len() - 1) * stride + n <= keys.len(),
        "attention_scores: keys too short"
    );
    #[cfg(target_arch = "x86_64")]
    if kernels == GroupKernels::Avx512Vnni && kernels.available() {
        // SAFETY: the features are present; the bounds were checked above.
        unsafe { x86::attention_scores_512(scores, q, keys, stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; the bounds were checked above.
        unsafe { x86::attention_scores(scores, q, keys, stride) };
        return;
    }
    for (d, &qd) in q.iter().enumerate() {
        add_scaled(scores, qd, &keys[d * stride..d * stride + n]);
    }
}

/// Attention's weighted sum of cached values: `out[j] = w[p] · values[p * stride + j] +
/// out[j]` (fused) for every position `p` in order. Exactly [`axpy`] once per position, bit for
/// bit, with `out` held in registers across the positions.
///
/// # Panics
/// When `values` is too short for `weights.len()` positions of `out.len()` values at `stride`.
pub fn weighted_values<T: Widen>(out: &mut [f32], weights: &[f32], values: &[T], stride: usize) {
    weighted_values_on(GroupKernels::best(), out, weights, values, stride);
}

/// [`weighted_values`] on the given instruction set (AVX-512 takes sixteen outputs per
/// register, each lane's arithmetic unchanged); the AVX2 or portable loops where this CPU
/// lacks it.
pub fn weighted_values_on<T: Widen>(
    kernels: GroupKernels,
    out: &mut [f32],
    weights: &[f32],
    values: &[T],
    stride: usize,
) {
    let n = out.len();
    if weights.is_empty() || n == 0 {
        return;
    }
    assert!(
        n <= stride && (weights.len() - 1) * stride + n <= values.len(),
        "weighted_values: values too short"
    );
    #[cfg(target_arch = "x86_64")]
    if kernels == GroupKernels::Avx512Vnni && kernels.available() {
        // SAFETY: the features are present; the bounds were checked above.
        unsafe { x86::weighted_values_512(out, weights, values, stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if float_simd_available() {
        // SAFETY: the features are present; the bounds were checked above.
        unsafe { x86::weighted_values(out, weights, values, stride) };
        return;
    }
    for (p, &w) in weights.iter().enumerate() {
        axpy(out, w, &values[p * stride..p * stride + n]);
    }
}

/// The SIMD dot product of one float row with one activation, when there is one.
#[inline]
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> Option<f32> {
    let mut out = [0f32];
    dot_rows_multi(ty, row, row.len(), &[x], &mut out).then_some(out[0])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{GgmlType, QK, Widen};

    /// Run the float kernel of `ty` for `N` tokens over every row in `rows`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be present; `ty` is a float type; `xs` hold `N` activations
    /// whose lengths match one row of `row_bytes`; `out` holds `N` values per row (checked by
    /// the caller).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dispatch<const N: usize>(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        xs: &[&[f32]],
        out: &mut [f32],
    ) {
        let xs: [&[f32]; N] = std::array::from_fn(|k| xs[k]);
        for (row, out) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(N)) {
            // SAFETY: forwarded from the caller.
            let result: [f32; N] = unsafe {
                match ty {
                    GgmlType::F32 => f32_dot(row, xs),
                    GgmlType::F16 => f16_dot(row, xs),
                    _ => bf16_dot(row, xs),
                }
            };
            out.copy_from_slice(&result);
        }
    }

    /// `acc += w * k` without fusing; the slices have equal length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_scaled<T: Widen>(acc: &mut [f32], w: f32, k: &[T]) {
        let n = acc.len();
        let (pa, pk) = (acc.as_mut_ptr(), k.as_ptr());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices; the caller guarantees the features.
            unsafe {
                let prod = _mm256_mul_ps(wv, T::load8(pk.add(i)));
                _mm256_storeu_ps(pa.add(i), _mm256_add_ps(_mm256_loadu_ps(pa.add(i)), prod));
            }
            i += 8;
        }
        for (a, x) in acc[i..].iter_mut().zip(&k[i..]) {
            *a += w * x.widen();
        }
    }

    /// `out += w * v`; the slices have equal length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy<T: Widen>(out: &mut [f32], w: f32, v: &[T]) {
        let n = out.len();
        let (po, pv) = (out.as_mut_ptr(), v.as_ptr());
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for both slices; the caller guarantees the features.
            unsafe {
                let o = _mm256_fmadd_ps(wv, T::load8(pv.add(i)), _mm256_loadu_ps(po.add(i)));
                _mm256_storeu_ps(po.add(i), o);
            }
            i += 8;
        }
        for (o, x) in out[i..].iter_mut().zip(&v[i..]) {
            *o = x.widen().mul_add(w, *o);
        }
    }

    /// [`super::attention_scores`]: 32 positions (four registers) at a time over every
    /// dimension, then 8, then the rest in one register.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `keys` holds `q.len()` rows of `scores.len()` values at
    /// `stride` (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attention_scores<T: Widen>(
        scores: &mut [f32],
        q: &[f32],
        keys: &[T],
        stride: usize,
    ) {
        let n = scores.len();
        let (ps, pk) = (scores.as_mut_ptr(), keys.as_ptr());
        let mut p = 0;
        while p + 32 <= n {
            // SAFETY: positions p..p+32 of every dimension are in bounds (caller).
            unsafe {
                let mut acc: [__m256; 4] =
                    std::array::from_fn(|j| _mm256_loadu_ps(ps.add(p + 8 * j)));
                for (d, &qd) in q.iter().enumerate() {
                    let qv = _mm256_set1_ps(qd);
                    let row = pk.add(d * stride + p);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_add_ps(*a, _mm256_mul_ps(qv, T::load8(row.add(8 * j))));
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(ps.add(p + 8 * j), *a);
                }
            }
            p += 32;
        }
        while p + 8 <= n {
            // SAFETY: as above, for positions p..p+8.
            unsafe {
                let mut a = _mm256_loadu_ps(ps.add(p));
                for (d, &qd) in q.iter().enumerate() {
                    let k = T::load8(pk.add(d * stride + p));
                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(qd), k));
                }
                _mm256_storeu_ps(ps.add(p), a);
            }
            p += 8;
        }
        if p < n {
            // The last (fewer than eight) positions in one register, each dimension's keys
            // copied to a full row first (a scalar loop here, one read-modify-write of the
            // score per dimension, took most of a short context's attention time).
            let rest = n - p;
            let mut sums = [0f32; 8];
            sums[..rest].copy_from_slice(&scores[p..]);
            let mut row = [keys[p]; 8];
            // SAFETY: `sums` and `row` hold eight values each.
            unsafe {
                let mut a = _mm256_loadu_ps(sums.as_ptr());
                for (d, &qd) in q.iter().enumerate() {
                    row[..rest].copy_from_slice(&keys[d * stride + p..d * stride + n]);
                    let k = T::load8(row.as_ptr());
                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(qd), k));
                }
                _mm256_storeu_ps(sums.as_mut_ptr(), a);
            }
            scores[p..].copy_from_slice(&sums[..rest]);
        }
    }

    /// [`super::weighted_values`]: 64 outputs (eight registers) at a time over every position,
    /// then 8, then the rest one by one.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `values` holds `weights.len()` rows of `out.len()` values
    /// at `stride` (checked by the caller).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_values<T: Widen>(
        out: &mut [f32],
        weights: &[f32],
        values: &[T],
        stride: usize,
    ) {
        let n = out.len();
        let (po, pv) = (out.as_mut_ptr(), values.as_ptr());
        let mut j = 0;
        while j + 64 <= n {
            // SAFETY: values j..j+64 of every position are in bounds (caller).
            unsafe {
                let mut acc: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(po.add(j + 8 * i)));
                for (p, &w) in weights.iter().enumerate() {
                    let wv = _mm256_set1_ps(w);
                    let row = pv.add(p * stride + j);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(wv, T::load8(row.add(8 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(po.add(j + 8 * i), *a);
                }
            }
            j += 64;
        }
        while j + 8 <= n {
            // SAFETY: as above, for values j..j+8.
            unsafe {
                let mut a = _mm256_loadu_ps(po.add(j));
                for (p, &w) in weights.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(w), T::load8(pv.add(p * stride + j)), a);
                }
                _mm256_storeu_ps(po.add(j), a);
            }
            j += 8;
        }
        for (i, o) in out.iter_mut().enumerate().skip(j) {
            for (p, &w) in weights.iter().enumerate() {
                *o = values[p * stride + i].widen().mul_add(w, *o);
            }
        }
    }

    /// [`attention_scores`] with sixteen positions per register, 64 at a time, then 16, then
    /// the rest in one masked register. Every lane meets the same rounded products and sums in
    /// the same order.
    ///
    /// # Safety
    /// As [`attention_scores`], and AVX-512 F and BW are present.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw")]
    pub unsafe fn attention_scores_512<T: Widen>(
        scores: &mut [f32],
        q: &[f32],
        keys: &[T],
        stride: usize,
    ) {
        let n = scores.len();
        let (ps, pk) = (scores.as_mut_ptr(), keys.as_ptr());
        let mut p = 0;
        while p + 64 <= n {
            // SAFETY: positions p..p+64 of every dimension are in bounds (caller).
            unsafe {
                let mut acc: [__m512; 4] =
                    std::array::from_fn(|j| _mm512_loadu_ps(ps.add(p + 16 * j)));
                for (d, &qd) in q.iter().enumerate() {
                    let qv = _mm512_set1_ps(qd);
                    let row = pk.add(d * stride + p);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_add_ps(*a, _mm512_mul_ps(qv, T::load16(row.add(16 * j))));
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(ps.add(p + 16 * j), *a);
                }
            }
            p += 64;
        }
        while p + 16 <= n {
            // SAFETY: as above, for positions p..p+16.
            unsafe {
                let mut a = _mm512_loadu_ps(ps.add(p));
                for (d, &qd) in q.iter().enumerate() {
                    let k = T::load16(pk.add(d * stride + p));
                    a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(qd), k));
                }
                _mm512_storeu_ps(ps.add(p), a);
            }
            p += 16;
        }
        if p < n {
            // The last (fewer than sixteen) positions in one masked register: the lanes past
            // them are neither read nor written.
            let rest = n - p;
            let mask = ((1u32 << rest) - 1) as u16;
            // SAFETY: positions p..n of every dimension are in bounds (caller).
            unsafe {
                let mut a = _mm512_maskz_loadu_ps(mask, ps.add(p));
                for (d, &qd) in q.iter().enumerate() {
                    let k = T::load16_first(pk.add(d * stride + p), rest);
                    a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(qd), k));
                }
                _mm512_mask_storeu_ps(ps.add(p), mask, a);
            }
        }
    }

    /// [`weighted_values`] with sixteen outputs per register, 64 at a time; the rest by the
    /// AVX2 kernel. Every lane meets the same fused products in the same order.
    ///
    /// # Safety
    /// As [`weighted_values`], and AVX-512 F is present.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    pub unsafe fn weighted_values_512<T: Widen>(
        out: &mut [f32],
        weights: &[f32],
        values: &[T],
        stride: usize,
    ) {
        let n = out.len();
        let (po, pv) = (out.as_mut_ptr(), values.as_ptr());
        let mut j = 0;
        while j + 64 <= n {
            // SAFETY: values j..j+64 of every position are in bounds (caller).
            unsafe {
                let mut acc: [__m512; 4] =
                    std::array::from_fn(|i| _mm512_loadu_ps(po.add(j + 16 * i)));
                for (p, &w) in weights.iter().enumerate() {
                    let wv = _mm512_set1_ps(w);
                    let row = pv.add(p * stride + j);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(wv, T::load16(row.add(16 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(po.add(j + 16 * i), *a);
                }
            }
            j += 64;
        }
        if j < n {
            // SAFETY: the rest, at the same stride, is in bounds (caller).
            unsafe { weighted_values(&mut out[j..], weights, &values[j..], stride) };
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum_ps(v: __m256) -> f32 {
        // ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)), as llama.cpp and candle sum their
        // eight lanes (so greedy continuations follow theirs through near-ties).
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// Σ w·x for `N` activations over a float row whose elements `i..i+8` are loaded by
    /// `load(i)`; two accumulators per token hide the FMA latency.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn float_dot<const N: usize>(
        load: impl Fn(usize) -> __m256,
        scalar: impl Fn(usize) -> f32,
        xs: [&[f32]; N],
    ) -> [f32; N] {
        let n = xs[0].len();
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mut i = 0;
        // SAFETY (every load below): i + 8 <= n = the length of the row and of every x.
        while i + 16 <= n {
            let (w0, w1) = (load(i), load(i + 8));
            for k in 0..N {
                let xp = xs[k].as_ptr();
                unsafe {
                    acc[k][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp.add(i)), acc[k][0]);
                    acc[k][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(i + 8)), acc[k][1]);
                }
            }
            i += 16;
        }
        while i + 8 <= n {
            let w = load(i);
            for k in 0..N {
                acc[k][0] = unsafe {
                    _mm256_fmadd_ps(w, _mm256_loadu_ps(xs[k].as_ptr().add(i)), acc[k][0])
                };
            }
            i += 8;
        }
        std::array::from_fn(|k| {
            let mut sum = hsum_ps(_mm256_add_ps(acc[k][0], acc[k][1]));
            for (j, x) in xs[k].iter().enumerate().skip(i) {
                sum += scalar(j) * x;
            }
            sum
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f32_dot<const N: usize>(row: &[u8], xs: [&[f32]; N]) -> [f32; N] {
        let p = row.as_ptr() as *const f32;
        // SAFETY: row holds as many f32 values as every x (checked by the caller).
        unsafe {
            float_dot(
                |i| _mm256_loadu_ps(p.add(i)),
                |i| p.add(i).read_unaligned(),
                xs,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_dot<const N: usize>(row: &[u8], xs: [&[f32]; N]) -> [f32; N] {
        let p = row.as_ptr() as *const u16;
        // SAFETY: row holds as many f16 values as every x (checked by the caller).
        unsafe {
            float_dot(
                |i| _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i)),
                |i| half::f16::from_bits(p.add(i).read_unaligned()).to_f32(),
                xs,
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bf16_dot<const N: usize>(row: &[u8], xs: [&[f32]; N]) -> [f32; N] {
        let p = row.as_ptr() as *const u16;
        // SAFETY: row holds as many bf16 values as every x (checked by the caller). A bf16 is
        // the top half of an f32: widen to 32 bits and shift into place.
        unsafe {
            float_dot(
                |i| {
                    let h = _mm_loadu_si128(p.add(i) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
                },
                |i| f32::from_bits((p.add(i).read_unaligned() as u32) << 16),
                xs,
            )
        }
    }

    /// [`super::quantize_row`]: each block's scale and quants as [`abs_max32`] and
    /// [`quantize32`] give them, then the f16 roundings of eight blocks' `d` and `s` at once
    /// (`vcvtps2ph` rounds to nearest even, as `half`'s conversion does; the product of two
    /// f16 values is exact in f32, so `s` is rounded once, as `half`'s `f16 * f16` rounds it).
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `x` holds `d.len()` blocks, `s` as many values and `qs`
    /// as many as `x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row(
        x: &[f32],
        d: &mut [f32],
        s: &mut [f32],
        sums: &mut [i32],
        qs: &mut [i8],
    ) {
        let blocks = d.len();
        for b in 0..blocks {
            let block = &x[b * QK..(b + 1) * QK];
            // SAFETY: the features are present (the caller); the block holds 32 values.
            let amax = unsafe { abs_max32(block) };
            let scale = amax / 127.0;
            let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            // SAFETY: as above; 32 quants per block.
            let sum = unsafe { quantize32(block, id, &mut qs[b * QK..(b + 1) * QK]) };
            sums[b] = sum;
            // Unrounded for now: the pass below rounds them eight at a time.
            d[b] = scale;
            s[b] = sum as f32;
        }
        let round = |d8: __m256, sums8: __m256| -> (__m256, __m256) {
            let d16 = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d8));
            let sum16 = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sums8));
            let s16 = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
                sum16, d16,
            )));
            (d16, s16)
        };
        let mut b = 0;
        while b + 8 <= blocks {
            // SAFETY: blocks b..b + 8 are in both slices.
            unsafe {
                let (dr, sr) = round(
                    _mm256_loadu_ps(d.as_ptr().add(b)),
                    _mm256_loadu_ps(s.as_ptr().add(b)),
                );
                _mm256_storeu_ps(d.as_mut_ptr().add(b), dr);
                _mm256_storeu_ps(s.as_mut_ptr().add(b), sr);
            }
            b += 8;
        }
        if b < blocks {
            let rest = blocks - b;
            let (mut d8, mut s8) = ([0f32; 8], [0f32; 8]);
            d8[..rest].copy_from_slice(&d[b..]);
            s8[..rest].copy_from_slice(&s[b..]);
            // SAFETY: both arrays hold eight values.
            unsafe {
                let (dr, sr) = round(_mm256_loadu_ps(d8.as_ptr()), _mm256_loadu_ps(s8.as_ptr()));
                _mm256_storeu_ps(d8.as_mut_ptr(), dr);
                _mm256_storeu_ps(s8.as_mut_ptr(), sr);
            }
            d[b..].copy_from_slice(&d8[..rest]);
            s[b..].copy_from_slice(&s8[..rest]);
        }
    }

    /// [`super::expf`] of eight values: the common path for all of them, and where one has
    /// |x| >= 88 (or is inf or NaN), `expf`'s special cases blended over it in `expf`'s order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn expf8(x: __m256) -> __m256 {
        let top = _mm256_and_si256(
            _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
            _mm256_set1_epi32(0x7ff),
        );
        let special = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(super::EXP_SPECIAL_TOP as i32 - 1));
        let low = expf4(_mm256_castps256_ps128(x));
        let high = expf4(_mm256_extractf128_ps::<1>(x));
        let common = _mm256_set_m128(high, low);
        if _mm256_movemask_epi8(special) == 0 {
            return common;
        }
        let threshold = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        // Ordered comparisons: false for NaN, which ends as x + x below.
        let least = _mm256_cmp_ps::<_CMP_LT_OQ>(x, threshold(super::EXP_LEAST));
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, threshold(super::EXP_UNDERFLOW));
        let over = _mm256_cmp_ps::<_CMP_GT_OQ>(x, threshold(super::EXP_OVERFLOW));
        let inf_or_nan = _mm256_castsi256_ps(_mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x7f7)));
        let minus_inf = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
            _mm256_castps_si256(x),
            _mm256_set1_epi32(f32::NEG_INFINITY.to_bits() as i32),
        ));
        let zero = _mm256_setzero_ps();
        let r = _mm256_blendv_ps(common, threshold(1), least);
        let r = _mm256_blendv_ps(r, zero, under);
        let r = _mm256_blendv_ps(r, _mm256_set1_ps(f32::INFINITY), over);
        let r = _mm256_blendv_ps(r, _mm256_add_ps(x, x), inf_or_nan);
        _mm256_blendv_ps(r, zero, minus_inf)
    }

    /// [`super::expf`]'s common path for four values, in f64 lanes, operation for operation.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn expf4(x: __m128) -> __m128 {
        let inv_ln2_n = _mm256_set1_pd(super::EXP_INV_LN2_N);
        let shift = _mm256_set1_pd(super::EXP_SHIFT);
        let xd = _mm256_cvtps_pd(x);
        let kd = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
        let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        // SAFETY: every index is below 32, the table's length.
        let t =
            unsafe { _mm256_i64gather_epi64::<8>(super::EXP2_TABLE.as_ptr() as *const i64, index) };
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(
            _mm256_set1_pd(super::EXP_C0),
            r,
            _mm256_set1_pd(super::EXP_C1),
        );
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(_mm256_set1_pd(super::EXP_C2), r, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }

    /// [`super::exp_in_place`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn exp_in_place(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: the chunk holds eight values.
            unsafe { _mm256_storeu_ps(chunk.as_mut_ptr(), expf8(_mm256_loadu_ps(chunk.as_ptr()))) };
        }
        for v in chunks.into_remainder() {
            *v = super::expf(*v);
        }
    }

    /// [`super::silu_mul`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present; `up` is at least as long as `gate`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
        let scalar = |g: &mut f32, u: f32| *g = *g / (1.0 + super::expf(-*g)) * u;
        let n = gate.len() / 8 * 8;
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let sign = _mm256_set1_ps(-0.0);
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths.
            unsafe {
                let g = _mm256_loadu_ps(pg.add(i));
                let u = _mm256_loadu_ps(pu.add(i));
                let d = _mm256_add_ps(_mm256_set1_ps(1.0), expf8(_mm256_xor_ps(g, sign)));
                _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(_mm256_div_ps(g, d), u));
            }
        }
        for (g, u) in gate[n..].iter_mut().zip(&up[n..]) {
            scalar(g, *u);
        }
    }

    /// [`super::abs_max`] of exactly 32 values.
    ///
    /// # Safety
    /// AVX2 must be present; `block` holds 32 values.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn abs_max32(block: &[f32]) -> f32 {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let p = block.as_ptr();
        // SAFETY: 32 readable values (the caller).
        let v: [__m256; 4] = std::array::from_fn(|i| {
            _mm256_and_ps(unsafe { _mm256_loadu_ps(p.add(8 * i)) }, magnitude)
        });
        let m = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 0b01));
        _mm_cvtss_f32(m).max(0.0)
    }

    /// [`super::quantize_block`] of exactly 32 values. Rounding: truncate, then step one away
    /// from zero where the dropped fraction is at least a half (the fraction `x - trunc(x)` is
    /// exact in floating point), which is `roundf`'s rule bit for bit.
    ///
    /// # Safety
    /// AVX2 must be present; `block` and `out` hold 32 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize32(block: &[f32], id: f32, out: &mut [i8]) -> i32 {
        let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let (half, one, scale) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0), _mm256_set1_ps(id));
        let (low, high) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
        let p = block.as_ptr();
        let ints: [__m256i; 4] = std::array::from_fn(|i| {
            // SAFETY: 32 readable values (the caller).
            let x = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p.add(8 * i)) }, scale);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
            let away = _mm256_or_ps(_mm256_and_ps(x, sign), one);
            let step = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), away);
            let rounded = _mm256_add_ps(t, step);
            // NaN to 0 and the rest saturated to -128..=127, as `as i8` casts them (the
            // conversion would give i32::MIN for NaN and infinities). Finite ids keep every
            // value in range; a block so small that 127 / amax overflows to infinity does not.
            let rounded = _mm256_and_ps(rounded, _mm256_cmp_ps::<_CMP_ORD_Q>(rounded, rounded));
            let rounded = _mm256_min_ps(_mm256_max_ps(rounded, low), high);
            _mm256_cvtps_epi32(rounded)
        });
        let total = _mm256_add_epi32(
            _mm256_add_epi32(ints[0], ints[1]),
            _mm256_add_epi32(ints[2], ints[3]),
        );
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(total),
            _mm256_extracti128_si256(total, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        // Packing works within 128-bit lanes; the permute puts the 4-byte groups back in order.
        let words_ab = _mm256_packs_epi32(ints[0], ints[1]);
        let words_cd = _mm256_packs_epi32(ints[2], ints[3]);
        let bytes = _mm256_packs_epi16(words_ab, words_cd);
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: 32 writable bytes (the caller).
        unsafe { _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ordered) };
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and values of `dims` × `positions` at `stride`, in `T`.
    fn cache<T: Widen>(len: usize, of: impl Fn(f32) -> T) -> Vec<T> {
        (0..len)
            .map(|i| of(((i * 37 % 101) as f32 - 50.0) * 0.013))
            .collect()
    }

    fn check_fused_attention_is_bit_identical<T: Widen + std::fmt::Debug>(
        kernels: GroupKernels,
        of: impl Fn(f32) -> T,
    ) {
        let cases = [
            (64, 65),
            (64, 1),
            (16, 200),
            (13, 7),
            (72, 33),
            (64, 8),
            (136, 150),
            (64, 31),
            (64, 15),
        ];
        for (dims, positions) in cases {
            let stride = positions + 5;
            // As short as the bounds allow: the last dimension's row ends at its last position.
            let keys = cache((dims - 1) * stride + positions, &of);
            let q: Vec<f32> = (0..dims).map(|d| (d as f32 * 0.37).sin()).collect();
            let mut fused = vec![0f32; positions];
            attention_scores_on(kernels, &mut fused, &q, &keys, stride);
            let mut reference = vec![0f32; positions];
            for (d, &qd) in q.iter().enumerate() {
                add_scaled(
                    &mut reference,
                    qd,
                    &keys[d * stride..d * stride + positions],
                );
            }
            assert_eq!(
                fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kernels:?} scores, {dims} dims × {positions} positions"
            );

            let vstride = dims + 3;
            let values = cache(positions * vstride, &of);
            let weights: Vec<f32> = (0..positions).map(|p| 1.0 / (p as f32 + 2.0)).collect();
            let mut fused = vec![0f32; dims];
            weighted_values_on(kernels, &mut fused, &weights, &values, vstride);
            let mut reference = vec![0f32; dims];
            for (p, &w) in weights.iter().enumerate() {
                axpy(&mut reference, w, &values[p * vstride..p * vstride + dims]);
            }
            assert_eq!(
                fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{kernels:?} values, {positions} positions × {dims} dims"
            );
        }
    }

    #[test]
    fn fused_attention_equals_the_per_dimension_loops_bit_for_bit() {
        for kernels in [GroupKernels::Avx2, GroupKernels::Avx512Vnni] {
            if !kernels.testable() {
                continue;
            }
            check_fused_attention_is_bit_identical(kernels, |v| v);
            check_fused_attention_is_bit_identical(kernels, half::f16::from_f32);
        }
    }

    /// Whether `f32::exp` here is glibc's FMA `expf`, which [`expf`] reproduces (glibc 2.27
    /// and later: older releases had another algorithm, whose last bits differ).
    fn libm_is_glibc_fma() -> bool {
        cfg!(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu"
        )) && float_simd_available()
    }

    /// [`expf`], [`exp_in_place`] and (on glibc with FMA) `f32::exp` agree on up to `count`
    /// inputs `bits = start, start + step, …` (not past the last f32 bit pattern).
    fn check_expf(start: u64, step: u64, count: u64) {
        let end = start
            .saturating_add(step.saturating_mul(count))
            .min(1 << 32);
        let glibc = libm_is_glibc_fma();
        let mut inputs = Vec::with_capacity(4096);
        let mut next = start;
        while next < end {
            inputs.clear();
            while inputs.len() < 4096 && next < end {
                inputs.push(f32::from_bits(next as u32));
                next += step;
            }
            let mut vector = inputs.clone();
            exp_in_place(&mut vector);
            for (x, v) in inputs.iter().zip(&vector) {
                let scalar = expf(*x);
                let same =
                    |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                assert!(
                    same(scalar, *v),
                    "expf({x:e}): scalar {scalar:e}, vector {v:e}"
                );
                if glibc {
                    let libm = x.exp();
                    assert!(
                        same(scalar, libm),
                        "expf({x:e}) = {scalar:e}, glibc {libm:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn expf_has_glibcs_bits_on_a_spread_of_inputs() {
        // Without AVX2 both sides of the vector comparison are the scalar function.
        if !GroupKernels::Avx2.testable() {
            return;
        }
        if !libm_is_glibc_fma() {
            eprintln!("glibc comparison skipped: f32::exp here is not glibc's FMA expf");
        }
        // About a million inputs across every exponent and sign, and the edges of the
        // special cases (overflow, underflow to zero and to the least subnormal).
        check_expf(0, 4099, u64::MAX);
        let edges = [
            88.0f32, 88.72283, 88.72284, -87.0, -103.27892, -103.27893, -103.97207, -103.97208,
            -104.0, 0.0, -0.0, 1e-30, -1e-30,
        ];
        for edge in edges {
            let b = edge.to_bits() as u64;
            check_expf(b.saturating_sub(64), 1, 128);
        }
        for special in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ] {
            check_expf(special.to_bits() as u64, 1, 1);
        }
    }

    #[test]
    #[ignore = "every f32 input (about a minute): cargo test --release -- --ignored expf_on_every"]
    fn expf_on_every_input() {
        check_expf(0, 1, u64::MAX);
    }

    #[test]
    fn silu_mul_rounds_as_the_scalar_expression() {
        if !GroupKernels::Avx2.testable() {
            return;
        }
        // Lengths with and without a tail; gates in and past the exp's common range.
        for n in [1, 7, 8, 9, 64, 77] {
            let gate: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * if i % 5 == 0 { 9.0 } else { 0.7 })
                .collect();
            let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let mut fused = gate.clone();
            silu_mul(&mut fused, &up);
            let expected: Vec<u32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| (g / (1.0 + expf(-g)) * u).to_bits())
                .collect();
            let got: Vec<u32> = fused.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, expected, "{n} values");
        }
    }

    #[test]
    #[should_panic(expected = "keys too short")]
    fn attention_scores_refuses_short_keys() {
        let mut scores = vec![0f32; 8];
        attention_scores(&mut scores, &[1.0, 2.0], &[0f32; 10], 8);
    }
}
