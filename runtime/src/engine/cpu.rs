//! CPU kernels of the engine: matrix products over stored (possibly quantised) weights,
//! RMSNorm, rotary embeddings, softmax and SiLU.
//!
//! Matrix products take a batch of activation rows (one per token) so prefill reads each weight
//! row once for the whole prompt; rows of the weight matrix are split across rayon's threads.

use rayon::prelude::*;

use super::quant::{GgmlType, QuantizedActivation, dot_row};

/// Weight rows handed to one task; large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// A 2-D weight stored in the model file: `rows` rows of `cols` elements each.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl WeightRef<'_> {
    fn row(&self, r: usize) -> &[u8] {
        let n = self.ty.row_bytes(self.cols);
        &self.data[r * n..(r + 1) * n]
    }
}

/// `out[t] = W · xs[t]` for each of the `xs.len() / cols` activation rows.
pub fn matmul(w: WeightRef<'_>, xs: &[f32], out: &mut [f32]) {
    let tokens = xs.len() / w.cols;
    debug_assert_eq!(out.len(), tokens * w.rows);
    let quantized: Vec<QuantizedActivation> = xs
        .chunks_exact(w.cols)
        .map(|x| {
            let mut q = QuantizedActivation::default();
            if matches!(w.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) {
                q.quantize(x);
            }
            q
        })
        .collect();
    // Row-major in the weight's row index so each task owns a contiguous slice.
    let mut by_row = vec![0f32; w.rows * tokens];
    by_row
        .par_chunks_mut(ROWS_PER_TASK * tokens)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row_out) in chunk.chunks_exact_mut(tokens).enumerate() {
                let row = w.row(task * ROWS_PER_TASK + i);
                for (t, o) in row_out.iter_mut().enumerate() {
                    *o = dot_row(w.ty, row, &xs[t * w.cols..(t + 1) * w.cols], &quantized[t]);
                }
            }
        });
    for (r, vals) in by_row.chunks_exact(tokens).enumerate() {
        for (t, v) in vals.iter().enumerate() {
            out[t * w.rows + r] = *v;
        }
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x`, written to `out`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let rms = (xr.iter().map(|v| v * v).sum::<f32>() / n as f32 + eps).sqrt();
        // Divide rather than multiply by a reciprocal: the same rounding as candle and
        // llama.cpp, which keeps int8 activation quantisation downstream on the same side of
        // its rounding boundaries.
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v / rms * w;
        }
    }
}

/// Precomputed rotary frequencies for one head size.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// Rotate adjacent pairs `(2i, 2i+1)` of every head in `x` (GGUF's interleaved layout).
    pub fn apply_interleaved(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        for head in x.chunks_exact_mut(head_dim) {
            for (i, f) in self.inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f32 * f).sin_cos();
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos - b * sin;
                head[2 * i + 1] = a * sin + b * cos;
            }
        }
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matmul_matches_the_definition_for_a_batch() {
        let (rows, cols) = (37, 8);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.1).sin()).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let xs: Vec<f32> = (0..3 * cols).map(|i| i as f32 * 0.01).collect();
        let mut out = vec![0f32; 3 * rows];
        matmul(
            WeightRef {
                ty: GgmlType::F32,
                rows,
                cols,
                data: &bytes,
            },
            &xs,
            &mut out,
        );
        for t in 0..3 {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| w[r * cols + c] * xs[t * cols + c]).sum();
                assert!((out[t * rows + r] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let rope = Rope::new(4, 10000.0);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope.apply_interleaved(&mut x, 4, 0);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
        rope.apply_interleaved(&mut x, 4, 7);
        let norm: f32 = x.iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
