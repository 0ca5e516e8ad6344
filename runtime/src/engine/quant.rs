//! Weight formats (ggml block quantisation) and the dot products the matmuls are built on.
//!
//! Quantised weights are multiplied the way llama.cpp does it: the activation row is quantised
//! once per matmul to 8-bit blocks (`Q8_0` for `Q4_0`/`Q8_0` weights, `Q8_1` for `Q4_1`), then
//! each weight block meets its activation block in an integer dot product. That is both faster
//! than widening weights to f32 and numerically what other GGUF engines compute.

use half::{bf16, f16};

/// Elements per quantisation block for every block format we read.
pub const QK: usize = 32;

/// Tensor element types of ggml (the numbering is the file format's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    /// bfloat16, as HF checkpoints store many models.
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// The file format's number for this type (inverse of [`GgmlType::from_u32`]).
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// Elements per storage block.
    pub fn block_elements(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => QK,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 2 + QK / 2,
            Self::Q4_1 => 4 + QK / 2,
            Self::Q8_0 => 2 + QK,
        }
    }

    /// Bytes of one row of `n` elements.
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block_elements() * self.block_bytes()
    }
}

/// An activation row quantised to 8-bit blocks: per block a scale `d`, the sum term
/// `s = d * Σq` (used by `Q4_1`), the integer `Σq` itself (the packed kernels take Q4_0's and
/// Q8_0's offsets off with it), and 32 signed quants.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivation {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub sums: Vec<i32>,
    pub qs: Vec<i8>,
}

impl QuantizedActivation {
    /// Quantise `x` (length a multiple of 32) in place of the previous contents.
    ///
    /// Scales are rounded through f16 because the reference formats store them that way; doing
    /// the same keeps our products bit-compatible with other GGUF engines.
    pub fn quantize(&mut self, x: &[f32]) {
        let blocks = x.len() / QK;
        self.d.clear();
        self.s.clear();
        self.sums.clear();
        self.qs.clear();
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        self.sums.resize(blocks, 0);
        self.qs.resize(blocks * QK, 0);
        if super::simd::quantize_row(x, &mut self.d, &mut self.s, &mut self.sums, &mut self.qs) {
            return;
        }
        self.quantize_portable(x);
    }

    /// [`Self::quantize`] one block at a time without SIMD (and the reference its SIMD form
    /// is tested against).
    fn quantize_portable(&mut self, x: &[f32]) {
        let blocks = x.chunks_exact(QK);
        for ((((block, d), s), total), qs) in blocks
            .zip(&mut self.d)
            .zip(&mut self.s)
            .zip(&mut self.sums)
            .zip(self.qs.chunks_exact_mut(QK))
        {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let sum = quantize_block_portable(block, id, qs);
            *total = sum;
            let d16 = f16::from_f32(scale);
            *d = d16.to_f32();
            // `s` is formed from the stored (f16) scale, as candle and llama.cpp's Q8_1 do.
            *s = (f16::from_f32(sum as f32) * d16).to_f32();
        }
    }
}

/// `out[i] = round(block[i] · id)` (halves away from zero, as `f32::round`), returning Σ out.
pub fn quantize_block_portable(block: &[f32], id: f32, out: &mut [i8]) -> i32 {
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(block) {
        *o = (v * id).round() as i8;
        sum += *o as i32;
    }
    sum
}

#[inline]
fn read_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

#[inline]
fn read_bf16(b: &[u8]) -> f32 {
    bf16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dot product of one stored weight row with an activation (f32 `x` and its quantised form),
/// through the SIMD kernels where this CPU has them.
#[inline]
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32], xq: &QuantizedActivation) -> f32 {
    match super::simd::dot_row(ty, row, x) {
        Some(v) => v,
        None => dot_row_portable(ty, row, x, xq),
    }
}

/// The portable dot product of one row as files store it: for the float types a plain sum;
/// for the quantised ones exactly the packed kernels' arithmetic (one exact integer per
/// block, `acc = fma(float(Σ), d_w · d_x, acc)` in block order, Q4_1's `+ m · s` after each;
/// see `packed`), so the two agree to the bit (tested there).
pub fn dot_row_portable(ty: GgmlType, row: &[u8], x: &[f32], xq: &QuantizedActivation) -> f32 {
    let blocks = |bytes: usize| row.chunks_exact(bytes).enumerate();
    let step = |acc: f32, dot: i32, d: f32, i: usize| (dot as f32).mul_add(d * xq.d[i], acc);
    match ty {
        GgmlType::F32 => row
            .chunks_exact(4)
            .zip(x)
            .map(|(w, v)| f32::from_le_bytes([w[0], w[1], w[2], w[3]]) * v)
            .sum(),
        GgmlType::F16 => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, v)| read_f16(w) * v)
            .sum(),
        GgmlType::BF16 => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, v)| read_bf16(w) * v)
            .sum(),
        GgmlType::Q8_0 => blocks(34).fold(0f32, |acc, (i, blk)| {
            let q = &xq.qs[i * QK..(i + 1) * QK];
            let dot: i32 = (0..QK)
                .map(|j| (blk[2 + j] as i8) as i32 * q[j] as i32)
                .sum();
            step(acc, dot, read_f16(blk), i)
        }),
        GgmlType::Q4_0 => blocks(18).fold(0f32, |acc, (i, blk)| {
            let q = &xq.qs[i * QK..(i + 1) * QK];
            let dot: i32 = (0..QK / 2)
                .map(|j| {
                    let b = blk[2 + j];
                    ((b & 0x0F) as i32 - 8) * q[j] as i32
                        + ((b >> 4) as i32 - 8) * q[j + QK / 2] as i32
                })
                .sum();
            step(acc, dot, read_f16(blk), i)
        }),
        GgmlType::Q4_1 => blocks(20).fold(0f32, |acc, (i, blk)| {
            let q = &xq.qs[i * QK..(i + 1) * QK];
            let dot: i32 = (0..QK / 2)
                .map(|j| {
                    let b = blk[4 + j];
                    (b & 0x0F) as i32 * q[j] as i32 + (b >> 4) as i32 * q[j + QK / 2] as i32
                })
                .sum();
            step(acc, dot, read_f16(blk), i) + read_f16(&blk[2..]) * xq.s[i]
        }),
    }
}

/// Widen one stored row to f32 (used for embedding lookups and tests).
pub fn dequantize_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, w) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, w) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = read_f16(w);
            }
        }
        GgmlType::BF16 => {
            for (o, w) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = read_bf16(w);
            }
        }
        GgmlType::Q8_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(row.chunks_exact(34)) {
                let d = read_f16(blk);
                for j in 0..QK {
                    o[j] = (blk[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(row.chunks_exact(18)) {
                let d = read_f16(blk);
                for j in 0..QK / 2 {
                    o[j] = ((blk[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                    o[j + QK / 2] = ((blk[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, blk) in out.chunks_exact_mut(QK).zip(row.chunks_exact(20)) {
                let d = read_f16(blk);
                let m = read_f16(&blk[2..]);
                for j in 0..QK / 2 {
                    o[j] = (blk[4 + j] & 0x0F) as f32 * d + m;
                    o[j + QK / 2] = (blk[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
    }
}

/// 32 values as one Q8_0 block (`out`: 34 bytes), rounding as ggml's reference quantiser
/// does: the largest magnitude maps to ±127.
pub(crate) fn quantize_q8_0_block(x: &[f32], out: &mut [u8]) {
    let d = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// Store `w` (length a multiple of 32 for block formats) in format `ty`, rounding as ggml's
/// reference quantisers do. Used to write test checkpoints and fixtures.
pub fn quantize_row(ty: GgmlType, w: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.row_bytes(w.len()));
    match ty {
        GgmlType::F32 => w
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => w
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::BF16 => w
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in w.chunks_exact(QK) {
                let start = out.len();
                out.resize(start + 2 + QK, 0);
                quantize_q8_0_block(blk, &mut out[start..]);
            }
        }
        GgmlType::Q4_0 => {
            for blk in w.chunks_exact(QK) {
                // The value of largest magnitude maps to -8, as in ggml.
                let max = blk
                    .iter()
                    .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as u8).min(15);
                out.extend((0..QK / 2).map(|j| q(blk[j]) | (q(blk[j + QK / 2]) << 4)));
            }
        }
        GgmlType::Q4_1 => {
            for blk in w.chunks_exact(QK) {
                let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                out.extend((0..QK / 2).map(|j| q(blk[j]) | (q(blk[j + QK / 2]) << 4)));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` pseudo-random values in [-1, 1) from `seed`, for building test rows.
    pub(crate) fn sample(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn quantised_dot_products_match_the_dequantised_weights() {
        let n = 256;
        let x = sample(n, 7);
        let mut xq = QuantizedActivation::default();
        xq.quantize(&x);
        for (ty, row) in [
            (GgmlType::Q8_0, quantize_row(GgmlType::Q8_0, &sample(n, 3))),
            (GgmlType::Q4_1, quantize_row(GgmlType::Q4_1, &sample(n, 5))),
        ] {
            let mut w = vec![0f32; n];
            dequantize_row(ty, &row, &mut w);
            let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got = dot_row(ty, &row, &x, &xq);
            // 8-bit activations: error well under 1% of the row's magnitude.
            let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            assert!(
                (got - exact).abs() < 0.01 * scale,
                "{ty:?}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn float_simd_kernels_match_the_portable_code_within_rounding() {
        if !crate::engine::simd::GroupKernels::Avx2.testable() {
            return;
        }
        // Lengths that exercise the 32-wide loop, the 8-wide loop and the scalar tail.
        for n in [8, 37, 64, 100, 771] {
            let x = sample(n, 300 + n as u32);
            let w = sample(n, 400 + n as u32);
            let xq = QuantizedActivation::default();
            for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
                let row = quantize_row(ty, &w);
                let simd = crate::engine::simd::dot_row(ty, &row, &x).expect("float kernel");
                let portable = dot_row_portable(ty, &row, &x, &xq);
                let magnitude: f32 = x.iter().zip(&w).map(|(a, b)| (a * b).abs()).sum();
                assert!(
                    (simd - portable).abs() <= 1e-6 * magnitude.max(1.0),
                    "{ty:?} n={n}: {simd} vs {portable}"
                );
            }
        }
    }

    #[test]
    fn prefill_and_decode_float_kernels_compute_identical_values() {
        // One token at a time and several at once (prefill) must give every (row, token) the
        // same bits, so a prompt's logits do not depend on how it was batched. (The quantised
        // kernels' equivalent is in `packed`.)
        let (n, rows) = (96, 5);
        let xs: Vec<Vec<f32>> = (0..8).map(|t| sample(n, 500 + t)).collect();
        let x_refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
        let xq = QuantizedActivation::default();
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let data: Vec<u8> = (0..rows)
                .flat_map(|r| quantize_row(ty, &sample(n, 600 + r as u32)))
                .collect();
            let rb = ty.row_bytes(n);
            let tokens = crate::engine::simd::FLOAT_TOKENS;
            let mut batched = vec![0f32; rows * tokens];
            if !crate::engine::simd::dot_rows_multi(ty, &data, rb, &x_refs[..tokens], &mut batched)
            {
                eprintln!("skipped: no SIMD kernels on this CPU");
                return;
            }
            for t in 0..tokens {
                let mut one_token = vec![0f32; rows];
                assert!(crate::engine::simd::dot_rows_multi(
                    ty,
                    &data,
                    rb,
                    &x_refs[t..t + 1],
                    &mut one_token
                ));
                for r in 0..rows {
                    let single = dot_row(ty, &data[r * rb..(r + 1) * rb], &xs[t], &xq);
                    assert_eq!(one_token[r].to_bits(), single.to_bits(), "{ty:?} row {r}");
                    assert_eq!(
                        batched[r * tokens + t].to_bits(),
                        single.to_bits(),
                        "{ty:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_quantisation_rounds_exactly_like_the_portable_code() {
        if !crate::engine::simd::GroupKernels::Avx2.testable() {
            return;
        }
        // Random blocks, and blocks of exact halves (ties round away from zero), tiny and
        // negative values, and zeros.
        let mut blocks: Vec<Vec<f32>> = (0..50).map(|b| sample(QK, 900 + b)).collect();
        blocks.push((0..QK).map(|i| i as f32 - 15.5).collect());
        blocks.push((0..QK).map(|i| -(i as f32) * 0.5).collect());
        blocks.push(vec![0.0; QK]);
        blocks.push((0..QK).map(|i| (i as f32 - 16.0) * 1e-30).collect());
        for (n, block) in blocks.iter().enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(
                crate::engine::simd::abs_max(block).to_bits(),
                amax.to_bits()
            );
            for id in [1.0, 127.0 / amax.max(1e-30), 0.0, 3.0] {
                let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
                let sa = quantize_block_portable(block, id, &mut a);
                let sb = crate::engine::simd::quantize_block(block, id, &mut b);
                assert_eq!((a, sa), (b, sb), "block {n}, id {id}");
            }
        }
    }

    #[test]
    fn simd_row_quantisation_equals_the_portable_code_bit_for_bit() {
        if !crate::engine::simd::GroupKernels::Avx2.testable() {
            return;
        }
        // Every count of blocks up to past two rounds of eight (the f16 roundings' tail), and
        // magnitudes whose scales are f16 subnormals, zero, ordinary and overflowing.
        for blocks in 1..=19 {
            // 1e-38 and 3e-37: blocks so small that 127 / amax is infinite.
            for magnitude in [1.0f32, 1e-5, 1e-30, 0.0, 3e4, 1e7, 1e-38, 3e-37] {
                let x: Vec<f32> = sample(blocks * QK, 1000 + blocks as u32)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * magnitude * (1.0 + (i / QK) as f32))
                    .collect();
                let mut simd = QuantizedActivation::default();
                simd.quantize(&x);
                let mut portable = QuantizedActivation {
                    d: vec![0.0; blocks],
                    s: vec![0.0; blocks],
                    sums: vec![0; blocks],
                    qs: vec![0; blocks * QK],
                };
                portable.quantize_portable(&x);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let case = format!("{blocks} blocks of magnitude {magnitude}");
                assert_eq!(bits(&simd.d), bits(&portable.d), "d, {case}");
                assert_eq!(bits(&simd.s), bits(&portable.s), "s, {case}");
                assert_eq!(simd.sums, portable.sums, "sums, {case}");
                let recount: Vec<i32> = simd
                    .qs
                    .chunks_exact(QK)
                    .map(|q| q.iter().map(|&v| i32::from(v)).sum())
                    .collect();
                assert_eq!(simd.sums, recount, "sums are the quants' sums, {case}");
                assert_eq!(simd.qs, portable.qs, "quants, {case}");
            }
        }
        // Non-finite activations (a diverged model): whatever the quants are, both paths
        // must give the same ones, so every kernel sees the same integers.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = sample(2 * QK, 77);
            x[5] = bad;
            let mut simd = QuantizedActivation::default();
            simd.quantize(&x);
            let mut portable = QuantizedActivation {
                d: vec![0.0; 2],
                s: vec![0.0; 2],
                sums: vec![0; 2],
                qs: vec![0; 2 * QK],
            };
            portable.quantize_portable(&x);
            assert_eq!(simd.qs, portable.qs, "quants with {bad} in the first block");
            assert_eq!(simd.sums, portable.sums, "sums with {bad}");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&simd.d), bits(&portable.d), "d with {bad}");
        }
    }

    #[test]
    fn type_ids_round_trip() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ] {
            assert_eq!(GgmlType::from_u32(ty.id()), Some(ty));
        }
    }

    #[test]
    fn row_sizes_follow_the_block_layout() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), 18 * 20);
        assert_eq!(GgmlType::Q8_0.row_bytes(64), 68);
        assert_eq!(GgmlType::F16.row_bytes(3), 6);
    }
}
