//! GPT-BigCode: StarCoder, StarCoderBase (1B–15B), SantaCoder-style tiny_starcoder.
//!
//! Paper: Li et al., "StarCoder: may the source be with you!" (2023); the architecture is
//! GPT-2 with multi-query attention (Allal et al., "SantaCoder: don't reach for the stars!").
//! Reference implementations: HF transformers' `modeling_gpt_bigcode.py`, candle's
//! `bigcode.rs`, llama.cpp's `llm_build_starcoder`.
//! Learned absolute position embeddings (so the context is capped at `n_positions`), pre-norm
//! LayerNorm with biases, one fused QKV projection whose K and V are a single head shared by
//! every query head (multi-query attention), GELU (tanh approximation) MLP, and an output head
//! tied to the token embedding unless the file has its own.

use std::sync::Arc;

use crate::engine::cpu::{self, AttentionShape};
use crate::engine::kv_cache::KvCache;
use crate::engine::weights::{Matrix, ModelFileError, WeightStore};

use super::{
    CacheShape, CausalLm, ConfigSource, Segment, batch_rows, check_heads, check_norm_eps,
    check_plausible, last_rows, split_logits,
};

/// Shape and constants of a GPT-BigCode model.
#[derive(Debug, Clone, PartialEq)]
pub struct GptBigCodeConfig {
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    /// 1 for the multi-query attention every StarCoder model uses.
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    /// Rows of the position embedding: the longest sequence the model can see.
    pub n_positions: usize,
    pub norm_eps: f32,
    /// `tie_word_embeddings` of an HF config (`None`: not said, as in GGUF files): `false`
    /// means the head is a tensor of its own, which must then be there.
    pub tied_head: Option<bool>,
}

impl GptBigCodeConfig {
    pub fn from_source(source: ConfigSource<'_>) -> Result<Self, ModelFileError> {
        let config = match source {
            ConfigSource::Gguf(f, arch) => {
                let key = |k: &str| format!("{arch}.{k}");
                let dim = f.u64(&key("embedding_length"))? as usize;
                let n_head = f.u64(&key("attention.head_count"))? as usize;
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
                    n_kv_head: f.u64(&key("attention.head_count_kv")).unwrap_or(1) as usize,
                    head_dim: dim.checked_div(n_head).unwrap_or(0),
                    ffn_dim: f.u64(&key("feed_forward_length"))? as usize,
                    vocab,
                    n_positions: f.u64(&key("context_length"))? as usize,
                    norm_eps: f.f64(&key("attention.layer_norm_epsilon")).unwrap_or(1e-5) as f32,
                    tied_head: None,
                }
            }
            ConfigSource::Hf(c) => {
                let dim = c.usize(&["n_embd", "hidden_size"])?;
                let n_head = c.usize(&["n_head", "num_attention_heads"])?;
                if !c.bool_or("multi_query", true) {
                    // HF interleaves Q, K and V per head when multi_query is off; no released
                    // StarCoder checkpoint uses that layout.
                    return Err(ModelFileError::Config {
                        path: c.path.clone(),
                        message: "gpt_bigcode with multi_query=false is not supported".into(),
                    });
                }
                Self {
                    n_layer: c.usize(&["n_layer", "num_hidden_layers"])?,
                    dim,
                    n_head,
                    n_kv_head: 1,
                    head_dim: dim.checked_div(n_head).unwrap_or(0),
                    // Saturating: `dim` is not yet checked, and an absurd one is refused below.
                    ffn_dim: c.opt_usize(&["n_inner"]).unwrap_or(dim.saturating_mul(4)),
                    vocab: c.usize(&["vocab_size"])?,
                    n_positions: c.usize(&["n_positions", "max_position_embeddings"])?,
                    norm_eps: c.f32_or("layer_norm_epsilon", 1e-5),
                    tied_head: c.json.get("tie_word_embeddings").and_then(|v| v.as_bool()),
                }
            }
        };
        let c = &config;
        check_plausible(c.n_layer, c.dim, c.ffn_dim, c.vocab, c.n_positions)?;
        check_heads(c.dim, c.n_head, c.n_kv_head, c.head_dim)?;
        check_norm_eps(c.norm_eps)?;
        if c.n_head * c.head_dim != c.dim {
            return Err(ModelFileError::Shape(format!(
                "width {} is not a multiple of {} heads",
                c.dim, c.n_head
            )));
        }
        Ok(config)
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
}

/// The GGUF name of an HF GPT-BigCode tensor.
pub fn hf_tensor_name(name: &str) -> Option<String> {
    let fixed = match name {
        "transformer.wte.weight" => Some("token_embd.weight"),
        "transformer.wpe.weight" => Some("position_embd.weight"),
        "transformer.ln_f.weight" => Some("output_norm.weight"),
        "transformer.ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("transformer.h.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf = match module {
        "ln_1" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "ln_2" => "ffn_norm",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// A matrix with its bias.
struct Linear {
    weight: Matrix,
    bias: Vec<f32>,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Block {
    ln_1: Norm,
    qkv: Linear,
    attn_out: Linear,
    ln_2: Norm,
    fc: Linear,
    fc_out: Linear,
}

/// A loaded GPT-BigCode model.
pub struct GptBigCode {
    pub config: GptBigCodeConfig,
    store: Arc<WeightStore>,
    token_embedding: Matrix,
    position_embedding: Matrix,
    blocks: Vec<Block>,
    ln_f: Norm,
    head: Matrix,
}

impl std::fmt::Debug for GptBigCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptBigCode")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GptBigCode {
    /// Bind the tensors of `store`, checking every shape against the configuration.
    pub fn load(
        store: Arc<WeightStore>,
        config: GptBigCodeConfig,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelFileError> {
        let c = &config;
        let dim = c.dim;
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, ModelFileError> {
            Ok(Linear {
                weight: store.packed_matrix(&format!("{name}.weight"), rows, cols)?,
                bias: store.vector(&format!("{name}.bias"), rows)?,
            })
        };
        let norm = |name: &str| -> Result<Norm, ModelFileError> {
            Ok(Norm {
                weight: store.vector(&format!("{name}.weight"), dim)?,
                bias: store.vector(&format!("{name}.bias"), dim)?,
            })
        };
        let token_embedding = store.packed_matrix("token_embd.weight", c.vocab, dim)?;
        let position_embedding = store.packed_matrix("position_embd.weight", c.n_positions, dim)?;
        let head = match store.optional_packed_matrix("output.weight", c.vocab, dim)? {
            Some(head) => head,
            None => {
                super::check_missing_head(c.tied_head)?;
                token_embedding.clone()
            }
        };
        let mut blocks = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            blocks.push(Block {
                ln_1: norm(&p("attn_norm"))?,
                qkv: linear(&p("attn_qkv"), dim + 2 * c.kv_dim(), dim)?,
                attn_out: linear(&p("attn_output"), dim, dim)?,
                ln_2: norm(&p("ffn_norm"))?,
                fc: linear(&p("ffn_up"), c.ffn_dim, dim)?,
                fc_out: linear(&p("ffn_down"), dim, c.ffn_dim)?,
            });
            on_progress(i + 1, c.n_layer);
        }
        let ln_f = norm("output_norm")?;
        Ok(Self {
            config,
            store,
            token_embedding,
            position_embedding,
            blocks,
            ln_f,
            head,
        })
    }

    fn apply(&self, l: &Linear, x: &[f32], out: &mut [f32]) {
        cpu::matmul(self.store.weight(&l.weight), x, out);
        cpu::add_bias(out, &l.bias);
    }
}

impl CausalLm for GptBigCode {
    fn context_length(&self) -> usize {
        self.config.n_positions
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
        let (dim, kv_dim) = (c.dim, c.kv_dim());
        let qkv_dim = dim + 2 * kv_dim;
        let mut x = vec![0f32; n * dim];
        let mut pos_row = vec![0f32; dim];
        let tokens = segments.iter().flat_map(|seg| seg.tokens.iter());
        for (t, (&tok, &(_, pos))) in tokens.zip(&rows).enumerate() {
            let row = &mut x[t * dim..(t + 1) * dim];
            // Ids were checked against the vocabulary, positions against n_positions, by the
            // caller; clamping defends the mappings.
            self.store
                .read_row(&self.token_embedding, (tok as usize).min(c.vocab - 1), row);
            self.store.read_row(
                &self.position_embedding,
                pos.min(c.n_positions - 1),
                &mut pos_row,
            );
            cpu::add_in_place(row, &pos_row);
        }
        let mut normed = vec![0f32; n * dim];
        let mut qkv = vec![0f32; n * qkv_dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * dim];
        let mut proj = vec![0f32; n * dim];
        let mut hidden = vec![0f32; n * c.ffn_dim];
        let shape = AttentionShape {
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: c.head_dim,
        };
        for (li, b) in self.blocks.iter().enumerate() {
            cpu::layer_norm(&x, &b.ln_1.weight, &b.ln_1.bias, c.norm_eps, &mut normed);
            self.apply(&b.qkv, &normed, &mut qkv);
            for t in 0..n {
                let row = &qkv[t * qkv_dim..(t + 1) * qkv_dim];
                q[t * dim..(t + 1) * dim].copy_from_slice(&row[..dim]);
                k[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&row[dim..dim + kv_dim]);
                v[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&row[dim + kv_dim..]);
            }
            // Each sequence's new keys and values join its own cache; then every row attends
            // over its sequence's cache, all rows in one parallel operation.
            let mut at = 0;
            for seg in segments.iter_mut() {
                let kvs = at * kv_dim..(at + seg.tokens.len()) * kv_dim;
                seg.cache.append(li, &k[kvs.clone()], &v[kvs]);
                at += seg.tokens.len();
            }
            let views: Vec<_> = segments.iter().map(|seg| seg.cache.layer(li)).collect();
            cpu::batched_causal_attention(shape, &views, &rows, &q, &mut attn);
            self.apply(&b.attn_out, &attn, &mut proj);
            cpu::add_in_place(&mut x, &proj);
            cpu::layer_norm(&x, &b.ln_2.weight, &b.ln_2.bias, c.norm_eps, &mut normed);
            self.apply(&b.fc, &normed, &mut hidden);
            cpu::gelu_tanh(&mut hidden);
            self.apply(&b.fc_out, &hidden, &mut proj);
            cpu::add_in_place(&mut x, &proj);
        }
        for seg in segments.iter_mut() {
            seg.cache.commit(seg.tokens.len());
        }
        // The head runs on each sequence's last row only, all of them in one product.
        let last = last_rows(segments);
        let picked: Vec<usize> = last.iter().flatten().copied().collect();
        let mut final_normed = vec![0f32; picked.len() * dim];
        for (i, &r) in picked.iter().enumerate() {
            cpu::layer_norm(
                &x[r * dim..(r + 1) * dim],
                &self.ln_f.weight,
                &self.ln_f.bias,
                c.norm_eps,
                &mut final_normed[i * dim..(i + 1) * dim],
            );
        }
        let mut logits = vec![0f32; picked.len() * c.vocab];
        cpu::matmul(self.store.weight(&self.head), &final_normed, &mut logits);
        split_logits(&last, logits, c.vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::models::HfConfig;

    /// A small GPT-BigCode `config.json` with these width and `layer_norm_epsilon`.
    fn hf(n_embd: u64, eps: f64) -> HfConfig {
        HfConfig {
            path: "config.json".into(),
            json: serde_json::json!({
                "model_type": "gpt_bigcode",
                "n_embd": n_embd,
                "n_head": 4,
                "n_layer": 2,
                "vocab_size": 100,
                "n_positions": 128,
                "layer_norm_epsilon": eps,
            }),
        }
    }

    fn read(c: &HfConfig) -> Result<GptBigCodeConfig, ModelFileError> {
        GptBigCodeConfig::from_source(ConfigSource::Hf(c))
    }

    #[test]
    fn a_real_config_loads_with_the_default_feed_forward() {
        let c = read(&hf(64, 1e-5)).expect("real config");
        assert_eq!(c.ffn_dim, 256);
        assert_eq!(c.norm_eps, 1e-5);
    }

    /// An epsilon outside (0, 1) used to load and produce NaN logits.
    #[test]
    fn a_broken_norm_epsilon_is_refused() {
        for eps in [0.0, -1e-5, 1.0, 1e39] {
            let res = read(&hf(64, eps));
            assert!(
                matches!(res, Err(ModelFileError::Shape(_))),
                "{eps}: {res:?}"
            );
        }
    }

    /// A width whose default feed-forward (4 × width) overflows is refused as implausible,
    /// not a panic (with overflow checks) or a wrapped size.
    #[test]
    fn a_width_that_overflows_the_default_feed_forward_is_refused() {
        let res = read(&hf(u64::MAX / 2, 1e-5));
        assert!(
            matches!(&res, Err(ModelFileError::Shape(m)) if m.contains("implausible")),
            "{res:?}"
        );
    }
}
