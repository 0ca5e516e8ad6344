//! CPU kernels of the engine: matrix products over stored (possibly quantised) weights,
//! RMSNorm, rotary embeddings, softmax and SiLU.
//!
//! Matrix products take a batch of activation rows (one per token) so prefill reads each weight
//! row once for the whole prompt; rows of the weight matrix are split across the engine's threads.

use super::kv_cache::{KvElement, Layer, LayerView};
use super::packed;
use super::quant::{GgmlType, QuantizedActivation, dot_row_portable};
use super::simd;
use super::threads;

/// Weight rows handed to one task; large enough to amortise scheduling, small enough to balance.
const MIN_ROWS_PER_TASK: usize = 16;
/// Tasks per thread a matmul is cut into: one, so each thread streams one long contiguous
/// run of weights (the hardware prefetcher's best case). Cutting finer, so that a thread that
/// was descheduled holds up less of the step, measured slower on the 2-vCPU VM, alone and under
/// the server's load with its HTTP threads beside the engine: with 4 per thread a one-sequence
/// pass took 3.6–3.8 ms against 3.4–3.5 and an 8-sequence pass 8.7–8.9 against 8.2–8.4 (and
/// 12 cut ever finer, "guided", was no better than 4).
const TASKS_PER_THREAD: usize = 1;
/// Float weight rows one kernel pass keeps results for before they are scattered, when several
/// groups of tokens meet each pass (prefill: the pass stays in L1 for all of them).
const ROWS_PER_PASS: usize = 16;
/// The same when one kernel call takes every token (small batches): the rows are read once
/// whatever the pass, so longer passes only save per-call work.
const ROWS_PER_PASS_ONE_CALL: usize = 64;
/// Packed groups of rows one pass covers when more tokens than one kernel call takes meet
/// them (prefill): 64 rows, which stay in L1 while every group of tokens meets them.
const GROUPS_PER_PASS: usize = 4;

/// A 2-D weight: `rows` rows of `cols` elements each.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// The rows one after another as files store them, or, with `packed` (block-quantised
    /// types only), in groups of sixteen as `packed` lays them out.
    pub data: &'a [u8],
    pub packed: bool,
}

/// `out[t] = W · xs[t]` for each of the `xs.len() / cols` activation rows.
pub fn matmul(w: WeightRef<'_>, xs: &[f32], out: &mut [f32]) {
    matmuls(&[w], xs, &mut [out]);
}

/// `outs[m][t] = ws[m] · xs[t]` for several matrices over the same input (Q, K and V; gate and
/// up): the input is quantised once and all their rows form one parallel operation.
///
/// Weight rows are split across the engine's threads in contiguous tasks (of whole groups for
/// packed weights); within a task each weight row meets several tokens per kernel call
/// (`packed::MAX_TOKENS`, [`simd::FLOAT_TOKENS`]), so a weight block is read and unpacked
/// once for them (prefill is
/// matrix–matrix work). Packed weights take the `packed` kernels; quantised rows as files
/// store them (tests, tools) the portable loops, which give the same bits.
pub fn matmuls(ws: &[WeightRef<'_>], xs: &[f32], outs: &mut [&mut [f32]]) {
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return;
    };
    assert!(
        ws.iter().all(|w| w.cols == cols) && outs.len() == ws.len(),
        "matmuls: matrices over one input must share its width"
    );
    assert!(
        ws.iter().all(|w| !w.packed || packed::packs(w.ty)),
        "matmuls: only block-quantised matrices are packed"
    );
    let tokens = xs.len() / cols;
    let quantise = ws.iter().any(|w| packed::packs(w.ty));
    let mut quantized: Vec<QuantizedActivation> = vec![QuantizedActivation::default(); tokens];
    if quantise {
        // One task per token: a prompt's rows quantise in parallel.
        threads::for_each_chunk_mut(&mut quantized, 1, |t, q| {
            q[0].quantize(&xs[t * cols..(t + 1) * cols]);
        });
    }
    let x_rows: Vec<&[f32]> = xs.chunks_exact(cols).collect();
    let q_rows: Vec<&QuantizedActivation> = quantized.iter().collect();

    // Tasks: each a contiguous run of one matrix's rows (whole groups where packed), holding
    // for every token the piece of that token's output row it fills. The kernels' results go
    // straight to their places from the thread that computed them: gathering them in row
    // order and scattering them into the outputs afterwards was a serial loop worth 5 % of a
    // batched decode pass.
    let mut tasks: Vec<Task<'_>> = Vec::new();
    for (m, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
        assert_eq!(out.len(), tokens * w.rows, "matmuls: output size");
        assert_eq!(
            w.data.len(),
            if w.packed {
                packed::groups(w.rows) * packed::group_bytes(w.ty, w.cols)
            } else {
                w.rows * w.ty.row_bytes(w.cols)
            },
            "matmuls: matrix size"
        );
        if w.rows == 0 {
            continue;
        }
        let first_task = tasks.len();
        let unit = if w.packed { packed::GROUP_ROWS } else { 1 };
        let mut first = 0;
        for count in task_sizes(w.rows.div_ceil(unit), MIN_ROWS_PER_TASK.div_ceil(unit)) {
            let first_row = first * unit;
            tasks.push(Task {
                m,
                first,
                count,
                rows: ((first + count) * unit).min(w.rows) - first_row,
                outs: Vec::with_capacity(tokens),
            });
            first += count;
        }
        for mut token_row in out.chunks_exact_mut(w.rows) {
            for task in &mut tasks[first_task..] {
                let (piece, rest) = std::mem::take(&mut token_row).split_at_mut(task.rows);
                task.outs.push(piece);
                token_row = rest;
            }
        }
    }
    threads::for_each_chunk_mut(&mut tasks, 1, |_, task| {
        let task = &mut task[0];
        let w = &ws[task.m];
        if w.packed {
            packed_task(w, task, &q_rows);
        } else {
            rows_task(w, task, &x_rows, &q_rows);
        }
    });
}

/// A task's groups of packed rows against every token: one kernel call per group of up to
/// `packed::MAX_TOKENS` tokens, over the whole run when one call takes them all (decode and
/// batches), else in passes of [`GROUPS_PER_PASS`] groups that stay in L1 while every group
/// of tokens meets them. Whole groups write straight into the outputs; a matrix's last,
/// partial group goes through a scratch copy.
fn packed_task(w: &WeightRef<'_>, task: &mut Task<'_>, q_rows: &[&QuantizedActivation]) {
    let group_bytes = packed::group_bytes(w.ty, w.cols);
    let tokens = q_rows.len();
    let data = &w.data[task.first * group_bytes..(task.first + task.count) * group_bytes];
    let whole = task.rows / packed::GROUP_ROWS;
    let pass_groups = if tokens <= packed::MAX_TOKENS {
        whole.max(1)
    } else {
        GROUPS_PER_PASS
    };
    for g0 in (0..whole).step_by(pass_groups) {
        let g1 = (g0 + pass_groups).min(whole);
        let groups = &data[g0 * group_bytes..g1 * group_bytes];
        let (r0, r1) = (g0 * packed::GROUP_ROWS, g1 * packed::GROUP_ROWS);
        for t0 in (0..tokens).step_by(packed::MAX_TOKENS) {
            let t1 = (t0 + packed::MAX_TOKENS).min(tokens);
            let mut outs: Vec<&mut [f32]> = task.outs[t0..t1]
                .iter_mut()
                .map(|out| &mut out[r0..r1])
                .collect();
            packed::dot_groups(w.ty, w.cols, groups, &q_rows[t0..t1], &mut outs);
        }
    }
    if whole < task.count {
        // The matrix's last group, cut short: its padding rows' results have nowhere to go.
        let group = &data[whole * group_bytes..];
        let r0 = whole * packed::GROUP_ROWS;
        for t0 in (0..tokens).step_by(packed::MAX_TOKENS) {
            let t1 = (t0 + packed::MAX_TOKENS).min(tokens);
            let mut scratch = vec![[0f32; packed::GROUP_ROWS]; t1 - t0];
            let mut outs: Vec<&mut [f32]> = scratch.iter_mut().map(|s| &mut s[..]).collect();
            packed::dot_groups(w.ty, w.cols, group, &q_rows[t0..t1], &mut outs);
            for (out, s) in task.outs[t0..t1].iter_mut().zip(&scratch) {
                out[r0..task.rows].copy_from_slice(&s[..task.rows - r0]);
            }
        }
    }
}

/// A task's rows as files store them against every token, through the float SIMD kernels
/// (quantised rows, and CPUs without those kernels, take the portable loops). Decode streams
/// the rows straight into the results; otherwise passes of [`ROWS_PER_PASS`] rows (or [`ROWS_PER_PASS_ONE_CALL`] where
/// one kernel call takes every token) are met by the tokens [`simd::FLOAT_TOKENS`] at a
/// time, the results scattered into the outputs.
fn rows_task(
    w: &WeightRef<'_>,
    task: &mut Task<'_>,
    x_rows: &[&[f32]],
    q_rows: &[&QuantizedActivation],
) {
    let row_bytes = w.ty.row_bytes(w.cols);
    let rows = &w.data[task.first * row_bytes..(task.first + task.rows) * row_bytes];
    let tokens = x_rows.len();
    let product = |pass: &[u8], t0: usize, t1: usize, out: &mut [f32]| {
        if !simd::dot_rows_multi(w.ty, pass, row_bytes, &x_rows[t0..t1], out) {
            for (r, outs) in out.chunks_exact_mut(t1 - t0).enumerate() {
                let row = &pass[r * row_bytes..(r + 1) * row_bytes];
                for (k, o) in outs.iter_mut().enumerate() {
                    *o = dot_row_portable(w.ty, row, x_rows[t0 + k], q_rows[t0 + k]);
                }
            }
        }
    };
    if tokens == 1 {
        product(rows, 0, 1, task.outs[0]);
        return;
    }
    let mut block = [0f32; ROWS_PER_PASS_ONE_CALL * simd::FLOAT_TOKENS];
    let pass_rows = if tokens <= simd::FLOAT_TOKENS {
        ROWS_PER_PASS_ONE_CALL
    } else {
        ROWS_PER_PASS
    };
    for r0 in (0..task.rows).step_by(pass_rows) {
        let r1 = (r0 + pass_rows).min(task.rows);
        let pass = &rows[r0 * row_bytes..r1 * row_bytes];
        for t0 in (0..tokens).step_by(simd::FLOAT_TOKENS) {
            let t1 = (t0 + simd::FLOAT_TOKENS).min(tokens);
            let n = t1 - t0;
            let block = &mut block[..(r1 - r0) * n];
            product(pass, t0, t1, block);
            for (k, out) in task.outs[t0..t1].iter_mut().enumerate() {
                for (r, o) in out[r0..r1].iter_mut().enumerate() {
                    *o = block[r * n + k];
                }
            }
        }
    }
}

/// The sizes of the tasks `units` units of work (rows, or groups of rows) are cut into: up to
/// [`TASKS_PER_THREAD`] runs per thread of equal length, at least `min_units` each, but the
/// last, which is the rest.
fn task_sizes(units: usize, min_units: usize) -> impl Iterator<Item = usize> {
    let per_task = units
        .div_ceil(threads::count() * TASKS_PER_THREAD)
        .max(min_units);
    (0..units)
        .step_by(per_task)
        .map(move |first| per_task.min(units - first))
}

/// One parallel task of [`matmuls`]: units `first..first + count` (rows, or groups of rows
/// where packed) of matrix `m`, `rows` rows in all, and for each token the part of its output
/// row those rows fill.
struct Task<'o> {
    m: usize,
    first: usize,
    count: usize,
    rows: usize,
    outs: Vec<&'o mut [f32]>,
}

/// Rows per task when `rows` rows of row-wise work are split across the team: one run per
/// thread (a decode step's elementwise work is microseconds; more tasks only add hand-offs).
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(threads::count()).max(1)
}

/// RMSNorm of each `weight.len()`-wide row of `x`, written to `out`; rows in parallel.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    let per = rows_per_task(out.len() / n.max(1)) * n;
    threads::for_each_chunk_mut(out, per, |i, out| {
        rms_norm_rows(&x[i * per..i * per + out.len()], weight, eps, out);
    });
}

/// The residual connection and the next norm in one pass over each row, rows in parallel:
/// `x += y`, then `out` = RMSNorm of the new `x`.
pub fn add_rms_norm(x: &mut [f32], y: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    let mut rows: Vec<(&mut [f32], &mut [f32])> =
        x.chunks_exact_mut(n).zip(out.chunks_exact_mut(n)).collect();
    let per = rows_per_task(rows.len());
    threads::for_each_chunk_mut(&mut rows, per, |i, rows| {
        for (j, (x, out)) in rows.iter_mut().enumerate() {
            let r = i * per + j;
            add_in_place(x, &y[r * n..(r + 1) * n]);
            rms_norm_rows(x, weight, eps, out);
        }
    });
}

fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
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

/// How a checkpoint pairs the dimensions of a head for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF Llama files (the converter permutes Q/K rows).
    Interleaved,
    /// Pairs `(i, i + d/2)`: HF checkpoints, and GGUF files of models llama.cpp runs in its
    /// "NeoX" mode (Qwen2).
    HalfSplit,
}

/// Precomputed rotary frequencies for one head size.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    layout: RopeLayout,
}

impl Rope {
    pub fn new(head_dim: usize, base: f32, layout: RopeLayout) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        Self { inv_freq, layout }
    }

    /// `base^(-2i/d)` for each rotary pair (also uploaded by the GPU engine, so both rotate
    /// with the same frequencies bit for bit).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Rotate every `head_dim`-wide head of `x` for position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        self.apply_all(&mut [x], head_dim, pos);
    }

    /// Rotate every head of each of `xs` (a token's queries and keys) for position `pos`,
    /// working out each frequency's sine and cosine once for all of them.
    pub fn apply_all(&self, xs: &mut [&mut [f32]], head_dim: usize, pos: usize) {
        self.apply_angles(xs, head_dim, &self.angles(pos));
    }

    /// Each frequency's `(sin, cos)` at position `pos`: the same for every layer, so a forward
    /// pass works them out once per row (libm's `sin_cos` was most of the rotation's cost).
    pub fn angles(&self, pos: usize) -> Vec<(f32, f32)> {
        self.inv_freq
            .iter()
            .map(|f| (pos as f32 * f).sin_cos())
            .collect()
    }

    /// [`Self::apply_all`] with the position's [`Self::angles`] given.
    pub fn apply_angles(&self, xs: &mut [&mut [f32]], head_dim: usize, angles: &[(f32, f32)]) {
        let half = head_dim / 2;
        for x in xs.iter_mut() {
            for head in x.chunks_exact_mut(head_dim) {
                for (i, &(sin, cos)) in angles.iter().enumerate() {
                    let (ia, ib) = match self.layout {
                        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                        RopeLayout::HalfSplit => (i, i + half),
                    };
                    let (a, b) = (head[ia], head[ib]);
                    head[ia] = a * cos - b * sin;
                    head[ib] = a * sin + b * cos;
                }
            }
        }
    }
}

/// LayerNorm of each `weight.len()`-wide row of `x` (biased variance, as PyTorch), to `out`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = xr.iter().sum::<f32>() / n as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
        let std = (var + eps).sqrt();
        for (((o, v), w), b) in or.iter_mut().zip(xr).zip(weight).zip(bias) {
            *o = (v - mean) / std * w + b;
        }
    }
}

/// Add `bias` to every `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `x += y`, the residual connection.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`, GPT-2 and StarCoder).
pub fn gelu_tanh(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (SQRT_2_OVER_PI * u * (1.0 + 0.044715 * u * u)).tanh());
    }
}

/// Shape of one attention call: `n_head` query heads sharing `n_kv_head` K/V heads.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

/// Causal attention of new queries (`q`: one `n_head * head_dim` row per token, the first at
/// position `pos0`) over every cached position. One task per (token, query head), so a single
/// decoded token still spreads over the cores; each K/V head is read in place by all the query
/// heads that share it (grouped- and multi-query attention).
///
/// Each score is summed over the head's dimensions in order, one rounded product at a time,
/// exactly as a scalar loop would (the vectors run across positions, not dimensions): on a
/// quantised model a last-bit difference here can move an activation across an int8 rounding
/// boundary in the next matmul, so the reference tests see the same tokens.
pub fn causal_attention(
    shape: AttentionShape,
    cache: LayerView<'_>,
    pos0: usize,
    q: &[f32],
    out: &mut [f32],
) {
    let rows: Vec<(usize, usize)> = (0..q.len() / (shape.n_head * shape.head_dim))
        .map(|t| (0, pos0 + t))
        .collect();
    batched_causal_attention(shape, &[cache], &rows, q, out);
}

/// [`causal_attention`] for rows of several sequences in one parallel operation (a batched
/// pass): row `t` is a query of sequence `rows[t].0` at position `rows[t].1`, attending over
/// that sequence's cache `caches[rows[t].0]` up to its own position. Each (row, head) is
/// computed exactly as alone.
///
/// A task is one row's query heads that share a KV head (grouped-query attention) when there
/// are rows enough to keep every thread busy with those; else one head, so a single row's
/// heads still spread across the threads.
pub fn batched_causal_attention(
    shape: AttentionShape,
    caches: &[LayerView<'_>],
    rows: &[(usize, usize)],
    q: &[f32],
    out: &mut [f32],
) {
    let n_head = shape.n_head;
    let group = n_head / shape.n_kv_head.max(1);
    let heads_per_task = if rows.len() * shape.n_kv_head >= 2 * threads::count() {
        group.max(1)
    } else {
        1
    };
    threads::for_each_chunk_mut(out, shape.head_dim * heads_per_task, |task, out| {
        let mut scores = Vec::new();
        for (i, oh) in out.chunks_exact_mut(shape.head_dim).enumerate() {
            let row_head = task * heads_per_task + i;
            let (t, h) = (row_head / n_head, row_head % n_head);
            let (seq, pos) = rows[t];
            let qh = &q[row_head * shape.head_dim..(row_head + 1) * shape.head_dim];
            match caches[seq] {
                LayerView::F16(layer) => attend(shape, layer, h, pos + 1, qh, &mut scores, oh),
                LayerView::F32(layer) => attend(shape, layer, h, pos + 1, qh, &mut scores, oh),
            }
        }
    });
}

/// One query head `h` over the first `visible` positions of `cache`, into `oh` (`scores` is
/// scratch).
fn attend<T: KvElement>(
    shape: AttentionShape,
    cache: Layer<'_, T>,
    h: usize,
    visible: usize,
    qh: &[f32],
    scores: &mut Vec<f32>,
    oh: &mut [f32],
) {
    let group = shape.n_head / shape.n_kv_head;
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    let kv_head = h / group;
    // scores[p] = Σ_d q[d]·k[p][d], accumulated dimension by dimension over all positions.
    scores.clear();
    scores.resize(visible, 0.0);
    let (keys, key_stride) = cache.head_keys(kv_head);
    simd::attention_scores(scores, qh, keys, key_stride);
    for s in scores.iter_mut() {
        *s *= scale;
    }
    softmax(scores);
    oh.fill(0.0);
    let (values, value_stride) = cache.head_values(kv_head);
    simd::weighted_values(oh, scores, values, value_stride);
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for v in x.iter_mut() {
        *v -= max;
    }
    simd::exp_in_place(x);
    // Summed in order, one rounding at a time.
    let sum = x.iter().fold(0f32, |s, v| s + v);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `gate = silu(gate) * up`, the SwiGLU activation.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    // Split across the team in runs of at least this many values (the exp dominates).
    const MIN_PER_TASK: usize = 1024;
    let per = gate.len().div_ceil(threads::count()).max(MIN_PER_TASK);
    threads::for_each_chunk_mut(gate, per, |i, gate| {
        simd::silu_mul(gate, &up[i * per..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quantised matmul over packed weights gives every (row, token) the bits of the
    /// portable loops over the file's rows, for decode, a batch, and a prompt long enough for
    /// several token groups and passes, with a last group of rows cut short.
    #[test]
    fn packed_matmuls_equal_the_portable_rows_bit_for_bit() {
        use crate::engine::quant::quantize_row;
        let (rows, cols) = (150, 96);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let data: Vec<u8> = (0..rows)
                .flat_map(|r| {
                    let w: Vec<f32> = (0..cols)
                        .map(|i| ((r * cols + i) as f32 * 0.37).sin())
                        .collect();
                    quantize_row(ty, &w)
                })
                .collect();
            let packed_data = packed::pack(ty, rows, cols, &data);
            for tokens in [1, 3, 8, 13, 40] {
                let xs: Vec<f32> = (0..tokens * cols)
                    .map(|i| (i as f32 * 0.11).cos())
                    .collect();
                let (mut a, mut b) = (vec![0f32; tokens * rows], vec![f32::NAN; tokens * rows]);
                let weight = |data, packed| WeightRef {
                    ty,
                    rows,
                    cols,
                    data,
                    packed,
                };
                matmul(weight(&data, false), &xs, &mut a);
                matmul(weight(&packed_data, true), &xs, &mut b);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{ty:?}, {tokens} tokens");
            }
        }
    }

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
                packed: false,
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
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            let rope = Rope::new(4, 10000.0, layout);
            let mut x = vec![1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut x, 4, 0);
            assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
            rope.apply(&mut x, 4, 7);
            let norm: f32 = x.iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4);
        }
    }

    #[test]
    fn the_two_rope_layouts_pair_different_dimensions() {
        // The half-split layout of a head is the interleaved layout with its dimensions
        // permuted (even ones first): rotating either way then un-permuting must agree.
        let hd = 8;
        let x: Vec<f32> = (0..hd).map(|i| i as f32 + 1.0).collect();
        let mut inter = x.clone();
        Rope::new(hd, 10000.0, RopeLayout::Interleaved).apply(&mut inter, hd, 5);
        let perm: Vec<usize> = (0..hd / 2)
            .map(|i| 2 * i)
            .chain((0..hd / 2).map(|i| 2 * i + 1))
            .collect();
        let mut split: Vec<f32> = perm.iter().map(|&i| x[i]).collect();
        Rope::new(hd, 10000.0, RopeLayout::HalfSplit).apply(&mut split, hd, 5);
        for (j, &i) in perm.iter().enumerate() {
            assert!((split[j] - inter[i]).abs() < 1e-6);
        }
        assert_ne!(inter, x);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0f32; 4];
        layer_norm(&x, &[1.0; 4], &[0.5; 4], 0.0, &mut out);
        let mean: f32 = out.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6);
        let var: f32 = out.iter().map(|v| (v - 0.5) * (v - 0.5)).sum::<f32>() / 4.0;
        assert!((var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn gelu_tanh_matches_known_values() {
        let mut x = [0.0f32, 1.0, -1.0, 3.0];
        gelu_tanh(&mut x);
        // Values of torch.nn.functional.gelu(x, approximate="tanh").
        let want = [0.0, 0.841_192, -0.158_808, 2.996_363_5];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[2] > x[1] && x[1] > x[0]);
    }
}
