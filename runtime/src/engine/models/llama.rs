//! Llama-family decoder (Llama 2/3, TinyLlama, SmolLM2) over GGUF weights.
//!
//! Paper: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023).
//! Reference implementation: llama.cpp's `llm_build_llama` and candle's `quantized_llama.rs`.
//! RMSNorm, rotary embeddings in GGUF's interleaved layout (the converter permutes Q/K rows so
//! adjacent pairs rotate together), grouped-query attention reading each K/V head in place for
//! all the query heads that share it, SwiGLU feed-forward, output head tied to the embedding when
//! the file has no `output.weight`.

use std::sync::Arc;

use rayon::prelude::*;

use crate::engine::cpu::{self, Rope, WeightRef};
use crate::engine::gguf::{GgufError, GgufFile, TensorInfo};
use crate::engine::kv_cache::KvCache;
use crate::engine::quant::{GgmlType, dequantize_row};

/// Shape and constants of a Llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

impl LlamaConfig {
    fn from_gguf(f: &GgufFile, arch: &str) -> Result<Self, GgufError> {
        let key = |k: &str| format!("{arch}.{k}");
        let dim = f.u64(&key("embedding_length"))? as usize;
        let n_head = f.u64(&key("attention.head_count"))? as usize;
        let n_kv_head = f
            .u64(&key("attention.head_count_kv"))
            .unwrap_or(n_head as u64) as usize;
        if dim == 0
            || n_head == 0
            || n_kv_head == 0
            || !dim.is_multiple_of(n_head)
            || !n_head.is_multiple_of(n_kv_head)
            || !(dim / n_head).is_multiple_of(2)
        {
            return Err(GgufError::Corrupt(format!(
                "inconsistent attention shape: dim {dim}, {n_head} heads, {n_kv_head} kv heads"
            )));
        }
        let vocab = match f.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => f.array("tokenizer.ggml.tokens")?.len(),
        };
        let n_layer = f.u64(&key("block_count"))?;
        let ffn_dim = f.u64(&key("feed_forward_length"))?;
        // Bounds far above any real model; they keep a hostile header from sizing allocations.
        let context_length = f.u64(&key("context_length"))?;
        if n_layer == 0
            || n_layer > 1024
            || dim > 1 << 16
            || ffn_dim == 0
            || ffn_dim > 1 << 18
            || vocab == 0
            || vocab > 1 << 22
            || context_length == 0
            || context_length > 1 << 22
        {
            return Err(GgufError::Corrupt(format!(
                "implausible model shape: {n_layer} layers, width {dim}, feed-forward {ffn_dim}, vocabulary {vocab}, context {context_length}"
            )));
        }
        Ok(Self {
            n_layer: n_layer as usize,
            dim,
            n_head,
            n_kv_head,
            head_dim: dim / n_head,
            ffn_dim: ffn_dim as usize,
            vocab,
            context_length: context_length as usize,
            rope_base: f.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rms_eps: f
                .f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: TensorInfo,
    wk: TensorInfo,
    wv: TensorInfo,
    wo: TensorInfo,
    ffn_norm: Vec<f32>,
    gate: TensorInfo,
    up: TensorInfo,
    down: TensorInfo,
}

/// A loaded Llama model: configuration plus views into the mapped file.
pub struct Llama {
    pub config: LlamaConfig,
    file: Arc<GgufFile>,
    embedding: TensorInfo,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: TensorInfo,
    rope: Rope,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Scratch buffers reused across layers of one forward pass.
struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Llama {
    /// Bind the tensors of `file`, checking every shape against the configuration.
    pub fn load(
        file: Arc<GgufFile>,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GgufError> {
        let arch = file.str("general.architecture")?.to_string();
        let config = LlamaConfig::from_gguf(&file, &arch)?;
        let c = &config;
        let matrix = |name: &str, cols: usize, rows: usize| -> Result<TensorInfo, GgufError> {
            let t = file
                .tensors
                .get(name)
                .ok_or_else(|| GgufError::MissingKey(format!("tensor {name}")))?;
            if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
                return Err(GgufError::Corrupt(format!(
                    "tensor {name} has shape {:?}, expected [{cols}, {rows}]",
                    t.dims
                )));
            }
            Ok(t.clone())
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, GgufError> {
            let t = matrix_or_vector(&file, name, n)?;
            let mut out = vec![0f32; n];
            dequantize_row(t.ty, file.tensor_bytes(&t), &mut out);
            Ok(out)
        };
        let embedding = matrix("token_embd.weight", c.dim, c.vocab)?;
        let output = match file.tensors.get("output.weight") {
            Some(_) => matrix("output.weight", c.dim, c.vocab)?,
            None => embedding.clone(),
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm"), c.dim)?,
                wq: matrix(&p("attn_q"), c.dim, c.dim)?,
                wk: matrix(&p("attn_k"), c.dim, c.kv_dim())?,
                wv: matrix(&p("attn_v"), c.dim, c.kv_dim())?,
                wo: matrix(&p("attn_output"), c.dim, c.dim)?,
                ffn_norm: vector(&p("ffn_norm"), c.dim)?,
                gate: matrix(&p("ffn_gate"), c.dim, c.ffn_dim)?,
                up: matrix(&p("ffn_up"), c.dim, c.ffn_dim)?,
                down: matrix(&p("ffn_down"), c.ffn_dim, c.dim)?,
            });
            on_progress(i + 1, c.n_layer);
        }
        let output_norm = vector("output_norm.weight", c.dim)?;
        let rope = Rope::new(c.head_dim, c.rope_base);
        Ok(Self {
            config,
            file,
            embedding,
            layers,
            output_norm,
            output,
            rope,
        })
    }

    fn weight(&self, t: &TensorInfo) -> WeightRef<'_> {
        WeightRef {
            ty: t.ty,
            rows: t.dims[1] as usize,
            cols: t.dims[0] as usize,
            data: self.file.tensor_bytes(t),
        }
    }

    /// A KV cache able to hold `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.n_layer, self.config.kv_dim(), capacity)
    }

    /// Run `tokens` at positions `cache.len()..`, append them to the cache, and return the
    /// logits of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Vec::new();
        }
        let pos0 = cache.len();
        let (dim, kv_dim, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let mut s = Scratch {
            x: vec![0f32; n * dim],
            normed: vec![0f32; n * dim],
            q: vec![0f32; n * dim],
            k: vec![0f32; n * kv_dim],
            v: vec![0f32; n * kv_dim],
            attn: vec![0f32; n * dim],
            proj: vec![0f32; n * dim],
            gate: vec![0f32; n * c.ffn_dim],
            up: vec![0f32; n * c.ffn_dim],
        };
        let emb = self.weight(&self.embedding);
        let row_bytes = emb.ty.row_bytes(dim);
        for (t, &tok) in tokens.iter().enumerate() {
            // Ids were checked against the vocabulary by the caller; clamp defends the mapping.
            let tok = (tok as usize).min(c.vocab - 1);
            dequantize_row(
                emb.ty,
                &emb.data[tok * row_bytes..(tok + 1) * row_bytes],
                &mut s.x[t * dim..(t + 1) * dim],
            );
        }
        for (li, layer) in self.layers.iter().enumerate() {
            cpu::rms_norm(&s.x, &layer.attn_norm, c.rms_eps, &mut s.normed);
            cpu::matmul(self.weight(&layer.wq), &s.normed, &mut s.q);
            cpu::matmul(self.weight(&layer.wk), &s.normed, &mut s.k);
            cpu::matmul(self.weight(&layer.wv), &s.normed, &mut s.v);
            for t in 0..n {
                self.rope
                    .apply_interleaved(&mut s.q[t * dim..(t + 1) * dim], hd, pos0 + t);
                self.rope
                    .apply_interleaved(&mut s.k[t * kv_dim..(t + 1) * kv_dim], hd, pos0 + t);
            }
            cache.append(li, &s.k, &s.v);
            self.attention(li, cache, pos0, &s.q, &mut s.attn);
            cpu::matmul(self.weight(&layer.wo), &s.attn, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
            cpu::rms_norm(&s.x, &layer.ffn_norm, c.rms_eps, &mut s.normed);
            cpu::matmul(self.weight(&layer.gate), &s.normed, &mut s.gate);
            cpu::matmul(self.weight(&layer.up), &s.normed, &mut s.up);
            cpu::swiglu(&mut s.gate, &s.up);
            cpu::matmul(self.weight(&layer.down), &s.gate, &mut s.proj);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }
        cache.commit(n);
        let last = &s.x[(n - 1) * dim..];
        let mut normed = vec![0f32; dim];
        cpu::rms_norm(last, &self.output_norm, c.rms_eps, &mut normed);
        let mut logits = vec![0f32; c.vocab];
        cpu::matmul(self.weight(&self.output), &normed, &mut logits);
        logits
    }

    /// Causal attention of the new queries over every cached position, one task per token.
    fn attention(&self, layer: usize, cache: &KvCache, pos0: usize, q: &[f32], out: &mut [f32]) {
        let c = &self.config;
        let (dim, kv_dim, hd) = (c.dim, c.kv_dim(), c.head_dim);
        let group = c.n_head / c.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        let (keys, values) = cache.layer(layer);
        out.par_chunks_mut(dim).enumerate().for_each(|(t, out_t)| {
            let visible = pos0 + t + 1;
            let mut scores = vec![0f32; visible];
            for h in 0..c.n_head {
                let kv_off = (h / group) * hd;
                let qh = &q[t * dim + h * hd..t * dim + (h + 1) * hd];
                for (p, sc) in scores.iter_mut().enumerate() {
                    let kh = &keys[p * kv_dim + kv_off..p * kv_dim + kv_off + hd];
                    *sc = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                cpu::softmax(&mut scores);
                let oh = &mut out_t[h * hd..(h + 1) * hd];
                oh.fill(0.0);
                for (p, w) in scores.iter().enumerate() {
                    let vh = &values[p * kv_dim + kv_off..p * kv_dim + kv_off + hd];
                    for (o, v) in oh.iter_mut().zip(vh) {
                        *o += w * v;
                    }
                }
            }
        });
    }
}

/// A 1-D tensor of `n` elements (GGUF writes norms as 1-D, some converters as 2-D `[n, 1]`).
fn matrix_or_vector(file: &GgufFile, name: &str, n: usize) -> Result<TensorInfo, GgufError> {
    let t = file
        .tensors
        .get(name)
        .ok_or_else(|| GgufError::MissingKey(format!("tensor {name}")))?;
    if t.element_count() != n as u64 || !matches!(t.ty, GgmlType::F32 | GgmlType::F16) {
        return Err(GgufError::Corrupt(format!(
            "tensor {name} should be {n} f32/f16 values, found {:?} of {:?}",
            t.dims, t.ty
        )));
    }
    Ok(t.clone())
}
