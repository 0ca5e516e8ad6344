//! GGUF's k-quants — Q2_K, Q3_K, Q4_K, Q5_K and Q6_K, llama.cpp's 256-weight "super-block"
//! formats, which most GGUF files on the hub hold (Q4_K_M and Q5_K_M files; and llama-quantize
//! writes `output.weight`, or a tied `token_embd.weight`, as Q6_K even in Q4_0 files) — read
//! at load: their block layouts, their exact dequantisation, and their conversion to a format
//! the CPU kernels run. Also [`StoredType`], the type of a tensor as a GGUF file stores it.
//!
//! **Layouts** (ggml's `block_q2_K` … `block_q6_K`; [`QK_K`] = 256 weights a block; `d` and
//! `dmin` f16, little-endian; per sub-block of 16 or 32 weights a scale `sc` and, for some
//! types, a minimum `m`):
//!
//! - Q2_K, 84 bytes: `scales[16]` (4-bit `sc` and `m` per 16), `qs[64]` (2-bit `q`), `d`,
//!   `dmin`; `w = d·sc·q − dmin·m`.
//! - Q3_K, 110 bytes: `hmask[32]` (each `q`'s third bit), `qs[64]` (its low two), `scales[12]`
//!   (6-bit `sc` per 16), `d`; `w = d·(sc − 32)·(q − 4)`.
//! - Q4_K, 144 bytes: `d`, `dmin`, `scales[12]` (6-bit `sc` and `m` per 32), `qs[128]` (4-bit
//!   `q`); `w = d·sc·q − dmin·m`.
//! - Q5_K, 176 bytes: as Q4_K with `qh[32]` (each `q`'s fifth bit) before `qs[128]`.
//! - Q6_K, 210 bytes: `ql[128]` (low four bits of `q`), `qh[64]` (high two), `scales[16]` (i8
//!   `sc` per 16), `d`; `w = d·sc·(q − 32)`.
//!
//! [`dequantize_block`] does ggml's f32 operations in ggml's order (`d·sc` first, then `·q`,
//! then `− dmin·m`), so it gives the reference's bits: tested against llama.cpp's own Python
//! package (gguf-py) on the blocks in `tests/fixtures/kquants`.
//!
//! **Conversion** ([`KQuantType::target`]). The kernels multiply Q4_0, Q4_1 and Q8_0 (and the
//! float types), so a k-quant matrix is converted once at load, rows kept whole:
//!
//! - **Q4_K → Q4_1**, exact but for rounding two numbers per 32 weights to f16. Each 32-weight
//!   sub-block of a Q4_K block *is* a Q4_1 block (`w = d·sc·q − dmin·m`, `q` a nibble): its
//!   scale `d·sc` and minimum `−dmin·m` are rounded to f16 (relative error ≤ 2⁻¹¹, so a weight
//!   moves by at most `2⁻¹¹·(15·|d·sc| + |dmin·m|)`: under 1% of a quantisation step plus
//!   2⁻¹¹ of the minimum) and its nibbles reordered. 5.0 bits a weight against the file's 4.5.
//! - **Q2_K, Q3_K, Q5_K, Q6_K → Q8_0**: dequantised, then quantised as ggml's reference
//!   quantiser does (per 32 weights `d = amax/127`, `q = round(w/d)`), so a weight moves by at
//!   most half a step, `amax/254` of its 32-weight block. That step is a quarter of the block's
//!   coarser Q6_K step or less (`amax ≤ 32·d·|sc|`), finer still against the coarser types. No
//!   kernel of ours runs 2-, 3-, 5- or 6-bit quants, and Q8_0's are the fast integer ones; it
//!   costs 8.5 bits a weight against the files' 2.625, 3.4375, 5.5 and 6.5625.
//!
//! So a Q4_K_M file (mostly Q4_K, with Q6_K for `output.weight` and half the layers'
//! `attn_v`/`ffn_down`) takes about 15% more memory than its size once loaded, a Q5_K_M or
//! Q6_K one about 1.5 and 1.3 times its size. Embedding lookups read the converted matrix like
//! any quantised embedding; the GPU loader takes the converted rows and widens them to fp16 as
//! it does Q4_1 and Q8_0 files'.

use std::fmt;

use half::f16;

use super::quant::{GgmlType, QK};
use super::threads;

/// Weights per k-quant block.
pub const QK_K: usize = 256;

/// The tensor types the engine loads from a GGUF file, for messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Rows one conversion task takes.
const ROWS_PER_TASK: usize = 32;

/// The k-quant types (ggml's numbering in [`KQuantType::id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KQuantType {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
}

impl KQuantType {
    pub const ALL: [Self; 5] = [Self::Q2K, Self::Q3K, Self::Q4K, Self::Q5K, Self::Q6K];

    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            _ => return None,
        })
    }

    /// The file format's number for this type.
    pub fn id(self) -> u32 {
        match self {
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
        }
    }

    /// ggml's name (`Q6_K`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// Bytes per block of [`QK_K`] weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q2K => QK_K / 16 + QK_K / 4 + 4,
            Self::Q3K => QK_K / 8 + QK_K / 4 + 12 + 2,
            Self::Q4K => 4 + 12 + QK_K / 2,
            Self::Q5K => 4 + 12 + QK_K / 8 + QK_K / 2,
            Self::Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
        }
    }

    /// Bytes of one row of `n` weights (`n` a multiple of [`QK_K`]).
    pub fn row_bytes(self, n: usize) -> usize {
        n / QK_K * self.block_bytes()
    }

    /// The kernel format matrices of this type are converted to at load (see the module
    /// docs for why).
    pub fn target(self) -> GgmlType {
        match self {
            Self::Q4K => GgmlType::Q4_1,
            Self::Q2K | Self::Q3K | Self::Q5K | Self::Q6K => GgmlType::Q8_0,
        }
    }
}

impl fmt::Display for KQuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a tensor is stored in a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredType {
    /// A type the kernels read as it is.
    Native(GgmlType),
    /// A k-quant, converted at load to [`KQuantType::target`].
    KQuant(KQuantType),
}

impl StoredType {
    /// The type numbered `v`, when the engine loads it.
    pub fn from_u32(v: u32) -> Option<Self> {
        GgmlType::from_u32(v)
            .map(Self::Native)
            .or_else(|| KQuantType::from_u32(v).map(Self::KQuant))
    }

    /// Elements per storage block.
    pub fn block_elements(self) -> usize {
        match self {
            Self::Native(t) => t.block_elements(),
            Self::KQuant(_) => QK_K,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Native(t) => t.block_bytes(),
            Self::KQuant(k) => k.block_bytes(),
        }
    }

    /// The type the engine holds such a tensor as.
    pub fn loaded_as(self) -> GgmlType {
        match self {
            Self::Native(t) => t,
            Self::KQuant(k) => k.target(),
        }
    }
}

impl fmt::Display for StoredType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Native(t) => write!(f, "{t:?}"),
            Self::KQuant(k) => f.write_str(k.name()),
        }
    }
}

/// A ggml tensor type number as a message shows it: `IQ2_XS (17)`, or `unknown type 99`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeNumber(pub u32);

impl TypeNumber {
    /// ggml's name for the number (those of types since removed from ggml included).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            4 => "Q4_2",
            5 => "Q4_3",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            31 => "Q4_0_4_4",
            32 => "Q4_0_4_8",
            33 => "Q4_0_8_8",
            34 => "TQ1_0",
            35 => "TQ2_0",
            36 => "IQ4_NL_4_4",
            37 => "IQ4_NL_4_8",
            38 => "IQ4_NL_8_8",
            39 => "MXFP4",
            40 => "NVFP4",
            41 => "Q1_0",
            _ => return None,
        })
    }
}

impl fmt::Display for TypeNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "unknown type {}", self.0),
        }
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block `j` (0..8) from their twelve packed
/// bytes (ggml's `get_scale_min_k4`): bytes 0–3 hold the low six bits of scales 0–3, bytes 4–7
/// of minimums 0–3, bytes 8–11 the low four bits of scales and minimums 4–7, whose high two
/// bits are the top bits of bytes 0–7.
#[inline]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q3_K's signed scale of sub-block `j` (0..16): six bits, the low four from bytes 0–7 (low
/// nibbles for 0–7, high for 8–15), the high two from bytes 8–11, less 32.
#[inline]
fn scale_q3_k(j: usize, s: &[u8]) -> i32 {
    let low = (s[j % 8] >> (4 * (j / 8))) & 0x0F;
    let high = (s[8 + j % 4] >> (2 * (j / 4))) & 0x03;
    i32::from(low | (high << 4)) - 32
}

/// The [`QK_K`] weights of one block of `ty` (`block` at least a block long), into `out`
/// (at least [`QK_K`] long), exactly as ggml's `dequantize_row_q*_K` computes them.
pub fn dequantize_block(ty: KQuantType, block: &[u8], out: &mut [f32]) {
    let b = &block[..ty.block_bytes()];
    let out = &mut out[..QK_K];
    match ty {
        KQuantType::Q2K => {
            let (scales, qs) = (&b[..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            // Sub-block j (16 weights): bits 2·((j / 2) % 4) of qs[32·(j / 8) + 16·(j % 2)..].
            for (j, y) in out.chunks_exact_mut(16).enumerate() {
                let sc = scales[j];
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                let shift = 2 * ((j / 2) % 4);
                let q = &qs[32 * (j / 8) + 16 * (j % 2)..][..16];
                for (y, q) in y.iter_mut().zip(q) {
                    *y = dl * f32::from((q >> shift) & 3) - ml;
                }
            }
        }
        KQuantType::Q3K => {
            let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            // As Q2_K for the low two bits; the third is bit j / 2 of hmask[16·(j % 2)..],
            // and a clear bit subtracts 4.
            for (j, y) in out.chunks_exact_mut(16).enumerate() {
                let dl = d * scale_q3_k(j, scales) as f32;
                let shift = 2 * ((j / 2) % 4);
                let at = 16 * (j % 2);
                let q = &qs[32 * (j / 8) + at..][..16];
                let h = &hmask[at..at + 16];
                let bit = j / 2;
                for ((y, q), h) in y.iter_mut().zip(q).zip(h) {
                    let low = i32::from((q >> shift) & 3);
                    let q = if (h >> bit) & 1 == 1 { low } else { low - 4 };
                    *y = dl * q as f32;
                }
            }
        }
        KQuantType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            // Sub-block j (32 weights): the low (even j) or high (odd j) nibbles of
            // qs[32·(j / 2)..][..32].
            for (j, y) in out.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scale_min_k4(j, scales);
                let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                let shift = 4 * (j % 2);
                for (y, q) in y.iter_mut().zip(&qs[32 * (j / 2)..][..32]) {
                    *y = dl * f32::from((q >> shift) & 0x0F) - ml;
                }
            }
        }
        KQuantType::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
            // As Q4_K, with bit j of qh[l] the fifth bit of weight l of sub-block j.
            for (j, y) in out.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scale_min_k4(j, scales);
                let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                let shift = 4 * (j % 2);
                for ((y, q), h) in y.iter_mut().zip(&qs[32 * (j / 2)..][..32]).zip(qh) {
                    let q = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
                    *y = dl * f32::from(q) - ml;
                }
            }
        }
        KQuantType::Q6K => {
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            // Two halves of 128 weights (ql[64·h..], qh[32·h..]); weight e of a half: the low
            // (e < 64) or high nibble of ql[e % 64], and bits 2·(e / 32) of qh[e % 32].
            for (j, y) in out.chunks_exact_mut(16).enumerate() {
                let dl = d * f32::from(scales[j] as i8);
                let (half, e) = (j / 8, 16 * (j % 8));
                let (shift_low, shift_high) = (4 * (e / 64), 2 * (e / 32));
                let low = &ql[64 * half + e % 64..][..16];
                let high = &qh[32 * half + e % 32..][..16];
                for ((y, l), h) in y.iter_mut().zip(low).zip(high) {
                    let q = ((l >> shift_low) & 0x0F) | (((h >> shift_high) & 3) << 4);
                    *y = dl * (i32::from(q) - 32) as f32;
                }
            }
        }
    }
}

/// A row of whole blocks of `ty`, widened to f32 (`out` as long as the row's weights).
pub fn dequantize_row(ty: KQuantType, row: &[u8], out: &mut [f32]) {
    for (b, y) in row
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(QK_K))
    {
        dequantize_block(ty, b, y);
    }
}

/// One row of `ty` in the layout of its [`KQuantType::target`]: `out` is that row
/// (`target.row_bytes(n)` bytes for the row's `n` weights).
pub fn convert_row(ty: KQuantType, row: &[u8], out: &mut [u8]) {
    let out_block = ty.target().row_bytes(QK_K);
    let blocks = row
        .chunks_exact(ty.block_bytes())
        .zip(out.chunks_exact_mut(out_block));
    match ty {
        KQuantType::Q4K => {
            for (b, o) in blocks {
                q4_k_to_q4_1(b, o);
            }
        }
        KQuantType::Q2K | KQuantType::Q3K | KQuantType::Q5K | KQuantType::Q6K => {
            let mut w = [0f32; QK_K];
            for (b, o) in blocks {
                dequantize_block(ty, b, &mut w);
                for (x, o) in w.chunks_exact(QK).zip(o.chunks_exact_mut(2 + QK)) {
                    super::quant::quantize_q8_0_block(x, o);
                }
            }
        }
    }
}

/// One Q4_K block as eight Q4_1 blocks (`out`: 8 × 20 bytes): sub-block j's scale `d·sc` and
/// minimum `−dmin·m` rounded to f16, its nibbles reordered (Q4_1 keeps weights `i` and
/// `i + 16` in byte `i`'s low and high nibble).
fn q4_k_to_q4_1(b: &[u8], out: &mut [u8]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, o) in out.chunks_exact_mut(4 + QK / 2).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        o[..2].copy_from_slice(&f16::from_f32(d * f32::from(sc)).to_le_bytes());
        o[2..4].copy_from_slice(&f16::from_f32(-(dmin * f32::from(m))).to_le_bytes());
        let q = &qs[32 * (j / 2)..][..32];
        let shift = 4 * (j % 2);
        for (i, o) in o[4..].iter_mut().enumerate() {
            *o = ((q[i] >> shift) & 0x0F) | (((q[i + 16] >> shift) & 0x0F) << 4);
        }
    }
}

/// A `rows × cols` matrix of `ty` (rows one after another, as files store them) converted to
/// its [`KQuantType::target`], rows one after another; the rows are split across the engine's
/// threads.
///
/// # Panics
/// When `cols` is not a multiple of [`QK_K`] or `data` is not `rows` rows of `cols`.
pub fn convert_rows(ty: KQuantType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    assert!(
        cols.is_multiple_of(QK_K),
        "convert_rows: rows of {cols} are not whole {ty} blocks"
    );
    let (from, to) = (ty.row_bytes(cols), ty.target().row_bytes(cols));
    assert_eq!(data.len(), rows * from, "convert_rows: matrix size");
    let mut out = vec![0u8; rows * to];
    if to == 0 {
        return out;
    }
    threads::for_each_chunk_mut(&mut out, ROWS_PER_TASK * to, |task, chunk| {
        for (r, dst) in chunk.chunks_exact_mut(to).enumerate() {
            let row = task * ROWS_PER_TASK + r;
            convert_row(ty, &data[row * from..(row + 1) * from], dst);
        }
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::quant::{dequantize_row as dequantize_kernel_row, quantize_row};

    /// Blocks of every k-quant and their values as llama.cpp's gguf-py dequantises them; see
    /// the README beside it.
    const REFERENCE: &str = include_str!("../../../tests/fixtures/kquants/reference.json");

    /// One type's reference blocks: (block bytes, expected values).
    pub(crate) struct Reference {
        pub ty: KQuantType,
        pub blocks: Vec<(Vec<u8>, Vec<f32>)>,
    }

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digits"))
            .collect()
    }

    /// The fixture, parsed.
    pub(crate) fn reference() -> Vec<Reference> {
        let v: serde_json::Value = serde_json::from_str(REFERENCE).expect("reference.json");
        v["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| {
                let id = t["id"].as_u64().expect("id") as u32;
                let ty = KQuantType::from_u32(id).expect("a k-quant");
                assert_eq!(t["name"].as_str(), Some(ty.name()));
                assert_eq!(t["block_bytes"].as_u64(), Some(ty.block_bytes() as u64));
                let blocks = t["blocks"]
                    .as_array()
                    .expect("blocks")
                    .iter()
                    .map(|b| {
                        let bytes = hex(b["bytes"].as_str().expect("bytes"));
                        let values = hex(b["f32_le"].as_str().expect("f32_le"))
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect::<Vec<f32>>();
                        assert_eq!((bytes.len(), values.len()), (ty.block_bytes(), QK_K));
                        (bytes, values)
                    })
                    .collect();
                Reference { ty, blocks }
            })
            .collect()
    }

    /// A block of `ty` from pseudo-random bytes, its f16 `d` (and `dmin`) set to modest
    /// values so its weights are finite and of the size real checkpoints have.
    pub(crate) fn random_block(ty: KQuantType, seed: u32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
        let mut b: Vec<u8> = (0..ty.block_bytes())
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 24) as u8
            })
            .collect();
        let d = f16::from_f32(0.0041 + (seed % 7) as f32 * 0.0013).to_le_bytes();
        let dmin = f16::from_f32(0.0023 + (seed % 5) as f32 * 0.0007).to_le_bytes();
        let (d_at, dmin_at) = match ty {
            KQuantType::Q2K => (80, Some(82)),
            KQuantType::Q3K => (108, None),
            KQuantType::Q4K | KQuantType::Q5K => (0, Some(2)),
            KQuantType::Q6K => (208, None),
        };
        b[d_at..d_at + 2].copy_from_slice(&d);
        if let Some(at) = dmin_at {
            b[at..at + 2].copy_from_slice(&dmin);
        }
        b
    }

    /// How far each converted weight of `block` (of `ty`, exact values `w`) may be from its
    /// exact value, as the module docs state it:
    ///
    /// - Q4_K → Q4_1: the f16 roundings of `d·sc` and `−dmin·m` (relative 2⁻¹¹; absolute
    ///   2⁻²⁵ where the result is subnormal, so 2⁻²⁰ covers fifteen of them), then the Q4_1
    ///   dequantisation's own two f32 roundings (two ulps of the weight).
    /// - → Q8_0: half a step of `d = amax/127` (widened by the f32 rounding of `w · (1/d)`),
    ///   plus 127 times the f16 rounding of `d`, plus the f32 rounding of `q · d`.
    fn conversion_bound(ty: KQuantType, block: &[u8], w: &[f32]) -> Vec<f32> {
        match ty.target() {
            GgmlType::Q4_1 => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                (0..QK_K)
                    .map(|e| {
                        let (sc, m) = scale_min_k4(e / 32, &block[4..16]);
                        let (dl, ml) = (d * f32::from(sc), dmin * f32::from(m));
                        (15.0 * dl.abs() + ml.abs()) * 2f32.powi(-11)
                            + 2f32.powi(-20)
                            + 2.0 * f32::EPSILON * w[e].abs()
                    })
                    .collect()
            }
            _ => w
                .chunks_exact(QK)
                .flat_map(|x| {
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let d16 = f16::from_f32(d).to_f32();
                    let bound = 0.5 * d * (1.0 + 1e-4)
                        + 127.0 * (d - d16).abs()
                        + 2.0 * f32::EPSILON * amax;
                    std::iter::repeat_n(bound, QK)
                })
                .collect(),
        }
    }

    #[test]
    fn block_layouts_and_type_numbers_are_ggml_s() {
        for (ty, bytes, id, name) in [
            (KQuantType::Q2K, 84, 10, "Q2_K"),
            (KQuantType::Q3K, 110, 11, "Q3_K"),
            (KQuantType::Q4K, 144, 12, "Q4_K"),
            (KQuantType::Q5K, 176, 13, "Q5_K"),
            (KQuantType::Q6K, 210, 14, "Q6_K"),
        ] {
            assert_eq!(ty.block_bytes(), bytes, "{name}");
            assert_eq!(ty.row_bytes(2 * QK_K), 2 * bytes, "{name}");
            assert_eq!(ty.id(), id);
            assert_eq!(KQuantType::from_u32(id), Some(ty));
            assert_eq!(ty.to_string(), name);
            assert_eq!(TypeNumber(id).name(), Some(name));
            let stored = StoredType::from_u32(id).expect("loadable");
            assert_eq!(stored, StoredType::KQuant(ty));
            assert_eq!(
                (stored.block_elements(), stored.block_bytes()),
                (QK_K, bytes)
            );
            assert_eq!(stored.loaded_as(), ty.target());
        }
        assert_eq!(
            StoredType::from_u32(8),
            Some(StoredType::Native(GgmlType::Q8_0))
        );
        // Q8_K (ggml's activation format) and the i-quants are not loaded.
        for id in [6, 7, 9, 15, 16, 17, 23, 99] {
            assert_eq!(StoredType::from_u32(id), None, "{id}");
        }
        assert_eq!(TypeNumber(17).to_string(), "IQ2_XS (17)");
        assert_eq!(TypeNumber(99).to_string(), "unknown type 99");
        // The list in messages is exactly the loadable types.
        let loadable: Vec<String> = (0..64)
            .filter_map(StoredType::from_u32)
            .map(|t| t.to_string())
            .collect();
        let mut listed: Vec<&str> = SUPPORTED_TYPES.split(", ").collect();
        let mut loadable: Vec<&str> = loadable.iter().map(String::as_str).collect();
        listed.sort_unstable();
        loadable.sort_unstable();
        assert_eq!(listed, loadable);
    }

    /// Every weight of every reference block, and of the blocks as one row, has gguf-py's
    /// bits: f32 equality, not a tolerance, because each weight is the same IEEE single
    /// operations in the same order (`d·sc`, `·q`, `− dmin·m`; numpy on float32 arrays rounds
    /// each, and Rust never fuses them).
    #[test]
    fn dequantisation_matches_gguf_py_bit_for_bit() {
        let refs = reference();
        assert_eq!(
            refs.iter().map(|r| r.ty).collect::<Vec<_>>(),
            KQuantType::ALL
        );
        for r in &refs {
            assert!(!r.blocks.is_empty(), "{}", r.ty);
            let (mut row, mut want) = (Vec::new(), Vec::new());
            for (n, (bytes, values)) in r.blocks.iter().enumerate() {
                let mut got = [0f32; QK_K];
                dequantize_block(r.ty, bytes, &mut got);
                for (e, (g, w)) in got.iter().zip(values).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        w.to_bits(),
                        "{} block {n} weight {e}: {g} vs {w}",
                        r.ty
                    );
                }
                row.extend_from_slice(bytes);
                want.extend_from_slice(values);
            }
            let mut got = vec![f32::NAN; want.len()];
            dequantize_row(r.ty, &row, &mut got);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} as a row", r.ty);
        }
    }

    /// Each converted block dequantises (by the kernels' own `quant::dequantize_row`) to
    /// within [`conversion_bound`] of the exact weights; the Q8_0 ones are exactly ggml's
    /// reference quantiser applied to the exact weights.
    #[test]
    fn conversions_stay_within_their_stated_bounds() {
        let refs = reference();
        for ty in KQuantType::ALL {
            let target = ty.target();
            let mut blocks: Vec<Vec<u8>> = refs
                .iter()
                .filter(|r| r.ty == ty)
                .flat_map(|r| r.blocks.iter().map(|(b, _)| b.clone()))
                .collect();
            blocks.extend((0..24).map(|s| random_block(ty, 100 + s)));
            for (n, b) in blocks.iter().enumerate() {
                let mut exact = [0f32; QK_K];
                dequantize_block(ty, b, &mut exact);
                let mut converted = vec![0u8; target.row_bytes(QK_K)];
                convert_row(ty, b, &mut converted);
                let mut got = [0f32; QK_K];
                dequantize_kernel_row(target, &converted, &mut got);
                let bound = conversion_bound(ty, b, &exact);
                for e in 0..QK_K {
                    assert!(
                        (got[e] - exact[e]).abs() <= bound[e],
                        "{ty} block {n} weight {e}: {} vs {} (bound {})",
                        got[e],
                        exact[e],
                        bound[e]
                    );
                }
                if target == GgmlType::Q8_0 {
                    assert_eq!(
                        converted,
                        quantize_row(GgmlType::Q8_0, &exact),
                        "{ty} block {n}"
                    );
                }
            }
        }
    }

    /// With scales and minimums that f16 holds exactly (`d`, `dmin` powers of two, so `d·sc`
    /// and `dmin·m` have at most six significant bits), Q4_K → Q4_1 loses nothing: the Q4_1
    /// weights are the Q4_K ones to the bit.
    #[test]
    fn q4_k_with_exact_scales_converts_to_q4_1_without_loss() {
        for seed in 0..16 {
            let mut b = random_block(KQuantType::Q4K, 500 + seed);
            b[..2].copy_from_slice(&f16::from_f32(2f32.powi(-8)).to_le_bytes());
            b[2..4].copy_from_slice(&f16::from_f32(2f32.powi(-9)).to_le_bytes());
            let mut exact = [0f32; QK_K];
            dequantize_block(KQuantType::Q4K, &b, &mut exact);
            let mut converted = vec![0u8; GgmlType::Q4_1.row_bytes(QK_K)];
            convert_row(KQuantType::Q4K, &b, &mut converted);
            let mut got = [0f32; QK_K];
            dequantize_kernel_row(GgmlType::Q4_1, &converted, &mut got);
            for e in 0..QK_K {
                assert_eq!(
                    got[e].to_bits(),
                    exact[e].to_bits(),
                    "seed {seed} weight {e}"
                );
            }
        }
    }

    /// A converted matrix, packed as the model loader packs it, times a vector through the CPU
    /// kernels, gives the exact product of the dequantised (f32) k-quant weights to within
    /// the sum of what each rounding allows:
    ///
    /// - conversion: `Σ |x_i|·ε_i`, ε from [`conversion_bound`];
    /// - the kernels' 8-bit activations (`x̂ = d_x·q`, `|x − x̂| ≤ e = 0.57·amax/127` per
    ///   32-block: half a step, plus 127 times the f16 rounding of the step, ≤ 2⁻¹¹ of it):
    ///   `Σ (|ŵ_i| + |m|)·e` over each block, and for Q4_1 (minimum `m`, whose term meets the
    ///   activation's f16-rounded sum `s`) also `|m|·(32·e + 2⁻⁹·(Σ|x_i| + 32·e))`;
    /// - f32 accumulation over the blocks: `10⁻⁵ · Σ (|ŵ_i| + |m|)·|x_i|`.
    #[test]
    fn a_converted_matrix_times_a_vector_matches_the_f32_reference() {
        use crate::engine::cpu::{WeightRef, matmul};
        use crate::engine::packed;
        // 19 rows: a second group of sixteen cut short.
        let (rows, cols) = (19, 2 * QK_K);
        let x = crate::engine::quant::tests::sample(cols, 77);
        for ty in KQuantType::ALL {
            let target = ty.target();
            let (from, to) = (ty.row_bytes(cols), target.row_bytes(cols));
            let data: Vec<u8> = (0..rows * cols / QK_K)
                .flat_map(|i| random_block(ty, 1000 + i as u32))
                .collect();
            let converted = convert_rows(ty, rows, cols, &data);
            assert_eq!(converted.len(), rows * to);
            let packed_data = packed::pack(target, rows, cols, &converted);
            let mut out = vec![f32::NAN; rows];
            let w = WeightRef {
                ty: target,
                rows,
                cols,
                data: &packed_data,
                packed: true,
            };
            matmul(w, &x, &mut out);
            for r in 0..rows {
                let src = &data[r * from..(r + 1) * from];
                let conv = &converted[r * to..(r + 1) * to];
                // The threaded conversion is the row-by-row one.
                let mut one = vec![0u8; to];
                convert_row(ty, src, &mut one);
                assert_eq!(one, conv, "{ty} row {r}");
                let mut exact = vec![0f32; cols];
                dequantize_row(ty, src, &mut exact);
                let mut w_conv = vec![0f32; cols];
                dequantize_kernel_row(target, conv, &mut w_conv);
                let want: f64 = exact
                    .iter()
                    .zip(&x)
                    .map(|(w, x)| f64::from(*w) * f64::from(*x))
                    .sum();
                let eps: Vec<f32> = src
                    .chunks_exact(ty.block_bytes())
                    .zip(exact.chunks_exact(QK_K))
                    .flat_map(|(b, w)| conversion_bound(ty, b, w))
                    .collect();
                let mut bound: f64 = eps
                    .iter()
                    .zip(&x)
                    .map(|(e, x)| f64::from(*e) * f64::from(x.abs()))
                    .sum();
                for (blk, (wb, xb)) in w_conv.chunks_exact(QK).zip(x.chunks_exact(QK)).enumerate() {
                    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let e = 0.57 * f64::from(amax) / 127.0;
                    let m = match target {
                        GgmlType::Q4_1 => f64::from(f16_at(conv, 20 * blk + 2).abs()),
                        _ => 0.0,
                    };
                    let abs_x: f64 = xb.iter().map(|v| f64::from(v.abs())).sum();
                    let weights: f64 = wb.iter().map(|v| f64::from(v.abs()) + m).sum();
                    let products: f64 = wb
                        .iter()
                        .zip(xb)
                        .map(|(w, x)| (f64::from(w.abs()) + m) * f64::from(x.abs()))
                        .sum();
                    bound += weights * e
                        + m * (32.0 * e + 2f64.powi(-9) * (abs_x + 32.0 * e))
                        + 1e-5 * products;
                }
                let got = f64::from(out[r]);
                assert!(
                    (got - want).abs() <= bound,
                    "{ty} row {r}: {got} vs {want} (bound {bound})"
                );
            }
        }
    }
}
