//! Llama-family decoder (Llama 2/3, TinyLlama, SmolLM2), also the body of Qwen2.
//!
//! Paper: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023).
//! Reference implementations: HF transformers' `modeling_llama.py`, llama.cpp's
//! `llm_build_llama`, candle's `quantized_llama.rs`.
//! RMSNorm, rotary embeddings in either layout ([`RopeLayout`]: GGUF Llama files are
//! interleaved, HF checkpoints half-split), grouped-query attention reading each K/V head in
//! place for all the query heads that share it, SwiGLU feed-forward, optional Q/K/V biases
//! (Qwen2), output head tied to the embedding when there is no `output.weight`.

use std::sync::Arc;

use crate::engine::cpu::{self, AttentionShape, Rope, RopeLayout};
use crate::engine::kv_cache::KvCache;
use crate::engine::threads;
use crate::engine::weights::{Matrix, ModelFileError, WeightStore};

use super::{
    CacheShape, CausalLm, ConfigSource, Segment, batch_rows, check_heads, check_norm_eps,
    check_plausible, check_rope_base, last_rows, split_logits,
};

/// Shape and constants of a Llama-family model.
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
    pub rope_layout: RopeLayout,
    pub rms_eps: f32,
    /// Q, K and V projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// What an HF config says of the output head (`tie_word_embeddings`): `Some(false)` makes
    /// a missing `lm_head` an error rather than the embedding.
    pub tied_head: Option<bool>,
}

impl LlamaConfig {
    /// The configuration of a Llama model (no biases; GGUF interleaved, HF half-split RoPE).
    pub fn from_source(source: ConfigSource<'_>) -> Result<Self, ModelFileError> {
        let layout = match source {
            ConfigSource::Gguf(..) => RopeLayout::Interleaved,
            ConfigSource::Hf(_) => RopeLayout::HalfSplit,
        };
        Self::read(source, layout, false)
    }

    /// Read the shape from GGUF keys or an HF config; `rope_layout` and `qkv_bias` are the
    /// architecture's to decide.
    pub fn read(
        source: ConfigSource<'_>,
        rope_layout: RopeLayout,
        qkv_bias: bool,
    ) -> Result<Self, ModelFileError> {
        let config = match source {
            ConfigSource::Gguf(f, arch) => {
                let key = |k: &str| format!("{arch}.{k}");
                // Llama 3.1 files carry their scaled rotary frequencies as a tensor.
                if f.tensors.contains_key("rope_freqs.weight") {
                    return Err(ModelFileError::Shape(
                        "rope frequency factors (rope_freqs.weight, Llama 3.1 scaling) are not supported".into(),
                    ));
                }
                // Linear or YaRN scaling (DeepSeek-Coder, long-context Qwen2.5 files) changes
                // every rotary frequency: refused rather than run with plain RoPE.
                let scaling = f.str(&key("rope.scaling.type")).unwrap_or("none");
                let factor = f.f64(&key("rope.scaling.factor")).unwrap_or(1.0);
                // Older conversions wrote linear scaling under its own key.
                let linear = f.f64(&key("rope.scale_linear")).unwrap_or(1.0);
                if scaling != "none"
                    || (factor != 0.0 && factor != 1.0)
                    || (linear != 0.0 && linear != 1.0)
                {
                    return Err(ModelFileError::Shape(format!(
                        "rope scaling {scaling} (factor {factor}, linear {linear}) is not supported"
                    )));
                }
                let dim = f.u64(&key("embedding_length"))? as usize;
                let n_head = f.u64(&key("attention.head_count"))? as usize;
                let n_kv_head = f
                    .u64(&key("attention.head_count_kv"))
                    .unwrap_or(n_head as u64) as usize;
                // Heads are width / heads wide unless the file says (Mistral-Nemo-style models
                // have 32 heads of 128 in a 5120 width); keys and values must agree.
                let key_length = f.u64(&key("attention.key_length")).ok();
                let value_length = f.u64(&key("attention.value_length")).ok();
                if value_length.is_some_and(|v| Some(v) != key_length) {
                    return Err(ModelFileError::Shape(format!(
                        "value heads of {value_length:?} differ from key heads of {key_length:?}"
                    )));
                }
                let head_dim = match key_length {
                    Some(k) => usize::try_from(k).unwrap_or(usize::MAX),
                    None if n_head != 0 && dim.is_multiple_of(n_head) => dim / n_head,
                    None => {
                        return Err(ModelFileError::Shape(format!(
                            "width {dim} is not a multiple of {n_head} heads"
                        )));
                    }
                };
                // Without a vocab_size key, the embedding's rows are the vocabulary.
                let vocab = match f.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
                    Some(v) => v as usize,
                    None => f
                        .tensors
                        .get("token_embd.weight")
                        .and_then(|t| t.dims.get(1))
                        .map(|rows| *rows as usize)
                        .ok_or_else(|| ModelFileError::MissingTensor("token_embd.weight".into()))?,
                };
                Self {
                    n_layer: f.u64(&key("block_count"))? as usize,
                    dim,
                    n_head,
                    n_kv_head,
                    head_dim,
                    ffn_dim: f.u64(&key("feed_forward_length"))? as usize,
                    vocab,
                    context_length: f.u64(&key("context_length"))? as usize,
                    rope_base: f.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
                    rope_layout,
                    rms_eps: f
                        .f64(&key("attention.layer_norm_rms_epsilon"))
                        .unwrap_or(1e-5) as f32,
                    qkv_bias,
                    tied_head: None,
                }
            }
            ConfigSource::Hf(c) => {
                // Biases on every attention projection, or on the MLP's, are weights this
                // architecture does not read: refused rather than silently left out.
                for flag in ["attention_bias", "mlp_bias"] {
                    if c.json.get(flag).and_then(|v| v.as_bool()) == Some(true) {
                        return Err(ModelFileError::Config {
                            path: c.path.clone(),
                            message: format!("{flag}: true is not supported"),
                        });
                    }
                }
                // Scaled rotary embeddings (Llama 3.1's "llama3", YaRN, linear) change every
                // frequency; running such a model with plain RoPE would be silently wrong.
                // transformers 5 writes `rope_parameters` (holding `rope_theta`) where earlier
                // versions wrote `rope_scaling`; either may say "default", which is plain RoPE.
                for key in ["rope_scaling", "rope_parameters"] {
                    if let Some(rope) = c.json.get(key).filter(|v| !plain_rope(v)) {
                        return Err(ModelFileError::Config {
                            path: c.path.clone(),
                            message: format!("{key} {rope} is not supported"),
                        });
                    }
                }
                let rope_base = match c.json.get("rope_theta") {
                    Some(_) => c.f32_or("rope_theta", 10_000.0),
                    None => c
                        .json
                        .pointer("/rope_parameters/rope_theta")
                        .and_then(|v| v.as_f64())
                        .map_or(10_000.0, |theta| theta as f32),
                };
                let dim = c.usize(&["hidden_size"])?;
                let n_head = c.usize(&["num_attention_heads"])?;
                if n_head == 0 {
                    return Err(ModelFileError::Shape("num_attention_heads is 0".into()));
                }
                Self {
                    n_layer: c.usize(&["num_hidden_layers"])?,
                    dim,
                    n_head,
                    n_kv_head: c.opt_usize(&["num_key_value_heads"]).unwrap_or(n_head),
                    head_dim: c.opt_usize(&["head_dim"]).unwrap_or(dim / n_head),
                    ffn_dim: c.usize(&["intermediate_size"])?,
                    vocab: c.usize(&["vocab_size"])?,
                    context_length: c.usize(&["max_position_embeddings"])?,
                    rope_base,
                    rope_layout,
                    rms_eps: c.f32_or("rms_norm_eps", 1e-6),
                    qkv_bias,
                    tied_head: c.json.get("tie_word_embeddings").and_then(|v| v.as_bool()),
                }
            }
        };
        let c = &config;
        check_plausible(c.n_layer, c.dim, c.ffn_dim, c.vocab, c.context_length)?;
        check_heads(c.dim, c.n_head, c.n_kv_head, c.head_dim)?;
        check_rope_base(c.rope_base)?;
        check_norm_eps(c.rms_eps)?;
        Ok(config)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// Whether an HF config's `rope_scaling`/`rope_parameters` value leaves RoPE plain: absent
/// (null), or of type "default" with no factor other than 1.
fn plain_rope(rope: &serde_json::Value) -> bool {
    if rope.is_null() {
        return true;
    }
    let kind = rope
        .get("rope_type")
        .or_else(|| rope.get("type"))
        .and_then(|v| v.as_str());
    let factor = rope.get("factor").and_then(|v| v.as_f64()).unwrap_or(1.0);
    kind == Some("default") && factor == 1.0
}

/// The GGUF name of an HF Llama/Qwen2 tensor.
pub fn hf_tensor_name(name: &str) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    /// Q, K, V biases when the architecture has them.
    qkv_bias: Option<[Vec<f32>; 3]>,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// A loaded Llama-family model: configuration plus views into the mapped files.
pub struct Llama {
    pub config: LlamaConfig,
    store: Arc<WeightStore>,
    embedding: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
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
    /// Bind the tensors of `store`, checking every shape against the configuration.
    pub fn load(
        store: Arc<WeightStore>,
        config: LlamaConfig,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelFileError> {
        let c = &config;
        let (dim, q_dim, kv_dim) = (c.dim, c.q_dim(), c.kv_dim());
        let embedding = store.packed_matrix("token_embd.weight", c.vocab, dim)?;
        let output = match store.optional_packed_matrix("output.weight", c.vocab, dim)? {
            Some(head) => head,
            None => {
                super::check_missing_head(c.tied_head)?;
                embedding.clone()
            }
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let w = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let qkv_bias = if c.qkv_bias {
                Some([
                    store.vector(&b("attn_q"), q_dim)?,
                    store.vector(&b("attn_k"), kv_dim)?,
                    store.vector(&b("attn_v"), kv_dim)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: store.vector(&w("attn_norm"), dim)?,
                wq: store.packed_matrix(&w("attn_q"), q_dim, dim)?,
                wk: store.packed_matrix(&w("attn_k"), kv_dim, dim)?,
                wv: store.packed_matrix(&w("attn_v"), kv_dim, dim)?,
                qkv_bias,
                wo: store.packed_matrix(&w("attn_output"), dim, q_dim)?,
                ffn_norm: store.vector(&w("ffn_norm"), dim)?,
                gate: store.packed_matrix(&w("ffn_gate"), c.ffn_dim, dim)?,
                up: store.packed_matrix(&w("ffn_up"), c.ffn_dim, dim)?,
                down: store.packed_matrix(&w("ffn_down"), dim, c.ffn_dim)?,
            });
            on_progress(i + 1, c.n_layer);
        }
        let output_norm = store.vector("output_norm.weight", dim)?;
        let rope = Rope::new(c.head_dim, c.rope_base, c.rope_layout);
        Ok(Self {
            config,
            store,
            embedding,
            layers,
            output_norm,
            output,
            rope,
        })
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_head: self.config.n_head,
            n_kv_head: self.config.n_kv_head,
            head_dim: self.config.head_dim,
        }
    }
}

impl CausalLm for Llama {
    fn context_length(&self) -> usize {
        self.config.context_length
    }

    fn vocab(&self) -> usize {
        self.config.vocab
    }

    fn cache_shape(&self) -> CacheShape {
        CacheShape {
            n_layer: self.config.n_layer,
            kv_dim: self.config.kv_dim(),
            head_dim: self.config.head_dim,
        }
    }

    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        let mut segments = [Segment { tokens, cache }];
        self.forward_batch(&mut segments).pop().unwrap_or_default()
    }

    fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Vec<Vec<f32>> {
        let c = &self.config;
        let rows = batch_rows(segments);
        let n = rows.len();
        if n == 0 {
            return vec![Vec::new(); segments.len()];
        }
        let (dim, q_dim, kv_dim, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.head_dim);
        let mut s = Scratch {
            x: vec![0f32; n * dim],
            normed: vec![0f32; n * dim],
            q: vec![0f32; n * q_dim],
            k: vec![0f32; n * kv_dim],
            v: vec![0f32; n * kv_dim],
            attn: vec![0f32; n * q_dim],
            proj: vec![0f32; n * dim],
            gate: vec![0f32; n * c.ffn_dim],
            up: vec![0f32; n * c.ffn_dim],
        };
        let tokens = segments.iter().flat_map(|seg| seg.tokens.iter());
        for (t, &tok) in tokens.enumerate() {
            // Ids were checked against the vocabulary by the caller; clamp defends the mapping.
            let tok = (tok as usize).min(c.vocab - 1);
            self.store
                .read_row(&self.embedding, tok, &mut s.x[t * dim..(t + 1) * dim]);
        }
        let shape = self.attention_shape();
        if let Some(first) = self.layers.first() {
            cpu::rms_norm(&s.x, &first.attn_norm, c.rms_eps, &mut s.normed);
        }
        // Each row's rotary sines and cosines, the same in every layer.
        let half = self.rope.inv_freq().len();
        let mut angles = vec![(0f32, 0f32); n * half];
        threads::for_each_chunk_mut(&mut angles, half.max(1), |t, out| {
            out.copy_from_slice(&self.rope.angles(rows[t].1));
        });
        for (li, layer) in self.layers.iter().enumerate() {
            cpu::matmuls(
                &[
                    self.store.weight(&layer.wq),
                    self.store.weight(&layer.wk),
                    self.store.weight(&layer.wv),
                ],
                &s.normed,
                &mut [&mut s.q, &mut s.k, &mut s.v],
            );
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                cpu::add_bias(&mut s.q, bq);
                cpu::add_bias(&mut s.k, bk);
                cpu::add_bias(&mut s.v, bv);
            }
            // Each sequence rotates its queries and keys and appends its keys and values to its
            // own cache, one task per sequence; then every row attends over its sequence's
            // cache, all rows in one parallel operation.
            let mut per_sequence = Vec::with_capacity(segments.len());
            let (mut q_rest, mut k_rest, mut v_rest) = (&mut s.q[..], &mut s.k[..], &s.v[..]);
            let mut row_angles = &angles[..];
            for seg in segments.iter_mut() {
                let len = seg.tokens.len();
                let (q, qr) = std::mem::take(&mut q_rest).split_at_mut(len * q_dim);
                let (k, kr) = std::mem::take(&mut k_rest).split_at_mut(len * kv_dim);
                let (v, vr) = v_rest.split_at(len * kv_dim);
                let (a, ar) = row_angles.split_at(len * half);
                (q_rest, k_rest, v_rest, row_angles) = (qr, kr, vr, ar);
                per_sequence.push((&mut *seg.cache, q, k, v, a));
            }
            threads::for_each_chunk_mut(&mut per_sequence, 1, |_, job| {
                let (cache, q, k, v, angles) = &mut job[0];
                for t in 0..q.len() / q_dim {
                    let q = &mut q[t * q_dim..(t + 1) * q_dim];
                    let k = &mut k[t * kv_dim..(t + 1) * kv_dim];
                    let angles = &angles[t * half..(t + 1) * half];
                    self.rope.apply_angles(&mut [q, k], hd, angles);
                }
                cache.append(li, k, v);
            });
            let views: Vec<_> = segments.iter().map(|seg| seg.cache.layer(li)).collect();
            cpu::batched_causal_attention(shape, &views, &rows, &s.q, &mut s.attn);
            cpu::matmul(self.store.weight(&layer.wo), &s.attn, &mut s.proj);
            cpu::add_rms_norm(&mut s.x, &s.proj, &layer.ffn_norm, c.rms_eps, &mut s.normed);
            cpu::matmuls(
                &[self.store.weight(&layer.gate), self.store.weight(&layer.up)],
                &s.normed,
                &mut [&mut s.gate, &mut s.up],
            );
            cpu::swiglu(&mut s.gate, &s.up);
            cpu::matmul(self.store.weight(&layer.down), &s.gate, &mut s.proj);
            // The residual, and the next layer's input norm in the same pass.
            match self.layers.get(li + 1) {
                Some(next) => {
                    cpu::add_rms_norm(&mut s.x, &s.proj, &next.attn_norm, c.rms_eps, &mut s.normed)
                }
                None => cpu::add_in_place(&mut s.x, &s.proj),
            }
        }
        for seg in segments.iter_mut() {
            seg.cache.commit(seg.tokens.len());
        }
        // The head runs on each sequence's last row only, all of them in one product.
        let last = last_rows(segments);
        let picked: Vec<usize> = last.iter().flatten().copied().collect();
        let mut normed = vec![0f32; picked.len() * dim];
        for (i, &r) in picked.iter().enumerate() {
            cpu::rms_norm(
                &s.x[r * dim..(r + 1) * dim],
                &self.output_norm,
                c.rms_eps,
                &mut normed[i * dim..(i + 1) * dim],
            );
        }
        let mut logits = vec![0f32; picked.len() * c.vocab];
        cpu::matmul(self.store.weight(&self.output), &normed, &mut logits);
        split_logits(&last, logits, c.vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gguf::test_files::{Meta, gguf_file};
    use crate::engine::models::HfConfig;

    /// A small Llama `config.json` with `rope_theta` and `rms_norm_eps` set to these.
    fn hf(rope_theta: serde_json::Value, eps: serde_json::Value) -> HfConfig {
        HfConfig {
            path: "config.json".into(),
            json: serde_json::json!({
                "model_type": "llama",
                "hidden_size": 64,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "vocab_size": 100,
                "max_position_embeddings": 128,
                "rope_theta": rope_theta,
                "rms_norm_eps": eps,
            }),
        }
    }

    fn read(c: &HfConfig) -> Result<LlamaConfig, ModelFileError> {
        LlamaConfig::from_source(ConfigSource::Hf(c))
    }

    #[test]
    fn real_rope_bases_and_epsilons_load() {
        for (theta, eps) in [
            (10_000.0_f64, 1e-5_f64),
            (500_000.0, 1e-5),
            (1e6, 1e-6),
            (1e4, 1e-12),
        ] {
            let c = read(&hf(theta.into(), eps.into())).expect("real config");
            assert_eq!(c.rope_base, theta as f32);
            assert_eq!(c.rms_eps, eps as f32);
        }
    }

    #[test]
    fn transformers_5_rope_parameters_give_the_base_and_refuse_scaling() {
        // transformers 5 moves `rope_theta` into `rope_parameters`.
        let mut c = hf(serde_json::Value::Null, 1e-6_f64.into());
        let json = c.json.as_object_mut().expect("object");
        json.remove("rope_theta");
        json.insert(
            "rope_parameters".into(),
            serde_json::json!({ "rope_theta": 1e6, "rope_type": "default" }),
        );
        assert_eq!(read(&c).expect("plain rope").rope_base, 1e6);
        for scaled in [
            serde_json::json!({ "rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0 }),
            serde_json::json!({ "rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0 }),
            serde_json::json!({ "rope_theta": 1e6, "rope_type": "default", "factor": 2.0 }),
            // Per-layer-type parameters (no type at the top) are not plain either.
            serde_json::json!({ "full_attention": { "rope_type": "default" } }),
        ] {
            c.json["rope_parameters"] = scaled.clone();
            let res = read(&c);
            assert!(
                matches!(&res, Err(ModelFileError::Config { message, .. }) if message.contains("rope_parameters")),
                "{scaled}: {res:?}"
            );
        }
        // The older key may also say "default".
        let mut c = hf(10_000.0_f64.into(), 1e-6_f64.into());
        c.json["rope_scaling"] = serde_json::json!({ "type": "default" });
        assert_eq!(read(&c).expect("plain rope").rope_base, 10_000.0);
        c.json["rope_scaling"] = serde_json::json!({ "type": "linear", "factor": 2.0 });
        assert!(read(&c).is_err());
    }

    /// A Llama GGUF's shape keys, width 320 in 4 heads (2 for keys and values), plus `extra`.
    fn gguf(name: &str, extra: &[(&str, Meta<'_>)]) -> Result<LlamaConfig, ModelFileError> {
        let mut meta = vec![
            ("llama.embedding_length", Meta::U64(320)),
            ("llama.attention.head_count", Meta::U64(4)),
            ("llama.attention.head_count_kv", Meta::U64(2)),
            ("llama.block_count", Meta::U64(2)),
            ("llama.feed_forward_length", Meta::U64(640)),
            ("llama.context_length", Meta::U64(256)),
            ("llama.vocab_size", Meta::U64(100)),
        ];
        meta.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let file = gguf_file(&format!("llama-{name}"), &meta);
        LlamaConfig::from_source(ConfigSource::Gguf(&file, "llama"))
    }

    #[test]
    fn a_gguf_head_size_comes_from_its_key_length_when_it_has_one() {
        let plain = gguf("plain", &[]).expect("load");
        assert_eq!((plain.head_dim, plain.q_dim()), (80, 320));
        // Heads wider than width / heads, as Mistral-Nemo's are.
        let wide = [
            ("llama.attention.key_length", Meta::U64(128)),
            ("llama.attention.value_length", Meta::U64(128)),
        ];
        let c = gguf("wide", &wide).expect("load");
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 512, 256));
        let differ = [
            ("llama.attention.key_length", Meta::U64(128)),
            ("llama.attention.value_length", Meta::U64(64)),
        ];
        assert!(matches!(
            gguf("differ", &differ),
            Err(ModelFileError::Shape(_))
        ));
        // Linear scaling under the older key is refused like the newer keys' scaling.
        let linear = [("llama.rope.scale_linear", Meta::F32(4.0))];
        assert!(matches!(
            gguf("linear", &linear),
            Err(ModelFileError::Shape(_))
        ));
        assert!(gguf("unscaled", &[("llama.rope.scale_linear", Meta::F32(1.0))]).is_ok());
    }

    /// A zero, negative or (as `f32`) infinite rotary base, or an epsilon outside (0, 1),
    /// used to load and produce NaN logits.
    #[test]
    fn broken_rope_bases_and_epsilons_are_refused() {
        for theta in [0.0_f64, -10_000.0, 1e39] {
            let res = read(&hf(theta.into(), 1e-5_f64.into()));
            assert!(
                matches!(res, Err(ModelFileError::Shape(_))),
                "{theta}: {res:?}"
            );
        }
        for eps in [0.0_f64, -1e-6, 1.0, 1e39] {
            let res = read(&hf(10_000.0_f64.into(), eps.into()));
            assert!(
                matches!(res, Err(ModelFileError::Shape(_))),
                "{eps}: {res:?}"
            );
        }
    }
}
