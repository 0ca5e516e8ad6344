//! Model architectures, one file each, behind one interface: [`CausalLm`].
//!
//! An architecture reads its shape from either a GGUF file's `{arch}.*` keys or an HF
//! `config.json` ([`ConfigSource`]), binds its tensors by GGUF name from a [`WeightStore`], and
//! translates HF tensor names to those GGUF names ([`hf_tensor_name`]).

pub mod gpt_bigcode;
pub mod llama;
pub mod qwen2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::gguf::GgufFile;
use super::kv_cache::{KvCache, KvPrecision};
use super::sampling::Choice;
use super::weights::{ModelFileError, WeightStore};

/// A decoder-only language model.
pub trait CausalLm: Send + Sync {
    /// Most positions a sequence may hold.
    fn context_length(&self) -> usize;
    /// Rows of the output head.
    fn vocab(&self) -> usize;
    /// What the model keeps per position in its KV cache.
    fn cache_shape(&self) -> CacheShape;
    /// A KV cache able to hold `capacity` positions.
    fn new_cache(&self, capacity: usize, precision: KvPrecision) -> KvCache {
        let c = self.cache_shape();
        KvCache::new(c.n_layer, c.kv_dim, c.head_dim, capacity, precision)
    }
    /// Most sequences that may hold a KV cache at once: a model that keeps its caches on a
    /// device has a fixed number of slots for them ([`super::kv_cache::SlotPool`]); host
    /// caches are limited only by memory.
    fn max_sequences(&self) -> usize {
        usize::MAX
    }
    /// Values the KV cache holds per position, over all layers (keys and values).
    fn kv_values_per_position(&self) -> usize {
        let c = self.cache_shape();
        c.n_layer * 2 * c.kv_dim
    }
    /// Run `tokens` at positions `cache.len()..`, append them to the cache, and return the
    /// logits of the last one.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32>;

    /// Run several sequences in one pass: each segment's tokens after what its cache holds,
    /// returning the logits of each segment's last token (empty for a segment without tokens).
    /// Architectures that batch share every weight read among the segments' tokens (decode
    /// steps of many requests become one matrix–matrix product); the values are the same as
    /// running each segment alone. The default runs them one after another.
    fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Vec<Vec<f32>> {
        segments
            .iter_mut()
            .map(|s| self.forward(s.tokens, s.cache))
            .collect()
    }

    /// Run `tokens` like [`CausalLm::forward`], and on models that sample on their device,
    /// take `choice` there among ids `0..candidates` (the tokenizer's, without padding) so
    /// only the token leaves the device. Others return the logits for the host sampler.
    fn forward_choose(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        _choice: &Choice,
        _candidates: usize,
    ) -> Next {
        Next::Logits(self.forward(tokens, cache))
    }
}

/// One sequence's share of a batched forward pass ([`CausalLm::forward_batch`]).
#[derive(Debug)]
pub struct Segment<'a> {
    /// Tokens to run, at positions `cache.len()..`.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Where each activation row of a batched pass belongs: its segment and its position in that
/// segment's sequence. Rows are the segments' tokens one after another.
pub(crate) fn batch_rows(segments: &[Segment<'_>]) -> Vec<(usize, usize)> {
    segments
        .iter()
        .enumerate()
        .flat_map(|(s, seg)| {
            let pos0 = seg.cache.len();
            (0..seg.tokens.len()).map(move |t| (s, pos0 + t))
        })
        .collect()
}

/// Indices of the last row of every non-empty segment (the rows whose logits are wanted).
pub(crate) fn last_rows(segments: &[Segment<'_>]) -> Vec<Option<usize>> {
    let mut at = 0;
    segments
        .iter()
        .map(|seg| {
            at += seg.tokens.len();
            (!seg.tokens.is_empty()).then(|| at - 1)
        })
        .collect()
}

/// Logits of the picked rows (`vocab` each, in order) handed back per segment: a segment
/// without tokens gets none.
pub(crate) fn split_logits(
    last: &[Option<usize>],
    logits: Vec<f32>,
    vocab: usize,
) -> Vec<Vec<f32>> {
    if let [Some(_)] = last {
        return vec![logits];
    }
    let mut rows = logits.chunks_exact(vocab);
    last.iter()
        .map(|r| match r {
            Some(_) => rows.next().map(<[f32]>::to_vec).unwrap_or_default(),
            None => Vec::new(),
        })
        .collect()
}

/// What [`CausalLm::forward_choose`] hands back.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Chosen on the device.
    Token(u32),
    /// Logits for the host to choose from.
    Logits(Vec<f32>),
    /// Logits with the repeat penalty already applied (a device that deferred the choice).
    Penalized(Vec<f32>),
}

/// Layers, K/V width and head size: the shape of a model's KV cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheShape {
    pub n_layer: usize,
    pub kv_dim: usize,
    pub head_dim: usize,
}

/// The architectures the engine runs, by their canonical (HF `model_type`) names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    GptBigCode,
}

impl Architecture {
    /// From GGUF's `general.architecture` or HF's `model_type`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "starcoder" | "gpt_bigcode" => Self::GptBigCode,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::GptBigCode => "gpt_bigcode",
        }
    }

    /// Names accepted, for error messages.
    pub const SUPPORTED: &'static str = "llama, qwen2, gpt_bigcode (GGUF: starcoder)";
}

/// Where an architecture reads its shape from.
#[derive(Debug, Clone, Copy)]
pub enum ConfigSource<'a> {
    /// A GGUF file and its `general.architecture` (the prefix of its keys).
    Gguf(&'a GgufFile, &'a str),
    /// An HF `config.json`.
    Hf(&'a HfConfig),
}

/// Load the model `arch` from `store`, configured by `source`.
pub fn load(
    arch: Architecture,
    source: ConfigSource<'_>,
    store: Arc<WeightStore>,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Box<dyn CausalLm>, ModelFileError> {
    Ok(match arch {
        Architecture::Llama => {
            let config = llama::LlamaConfig::from_source(source)?;
            Box::new(llama::Llama::load(store, config, on_progress)?)
        }
        Architecture::Qwen2 => {
            let config = qwen2::config(source)?;
            Box::new(llama::Llama::load(store, config, on_progress)?)
        }
        Architecture::GptBigCode => {
            let config = gpt_bigcode::GptBigCodeConfig::from_source(source)?;
            Box::new(gpt_bigcode::GptBigCode::load(store, config, on_progress)?)
        }
    })
}

/// Read and check the configuration of an `arch` model as [`load`] does (plausible shape, heads
/// that divide, a usable rotary base, ...), without binding any weights.
pub fn check_config(arch: Architecture, source: ConfigSource<'_>) -> Result<(), ModelFileError> {
    match arch {
        Architecture::Llama => llama::LlamaConfig::from_source(source).map(drop),
        Architecture::Qwen2 => qwen2::config(source).map(drop),
        Architecture::GptBigCode => gpt_bigcode::GptBigCodeConfig::from_source(source).map(drop),
    }
}

/// The GGUF name of an HF tensor of `arch`, or `None` for tensors the engine does not use.
pub fn hf_tensor_name(arch: Architecture, name: &str) -> Option<String> {
    match arch {
        Architecture::Llama | Architecture::Qwen2 => llama::hf_tensor_name(name),
        Architecture::GptBigCode => gpt_bigcode::hf_tensor_name(name),
    }
}

/// An HF `config.json`.
#[derive(Debug, Clone)]
pub struct HfConfig {
    pub path: PathBuf,
    pub json: serde_json::Value,
}

impl HfConfig {
    /// Read `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, ModelFileError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelFileError::Io {
            path: path.clone(),
            source,
        })?;
        let json = serde_json::from_str(&text).map_err(|e| ModelFileError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { path, json })
    }

    fn err(&self, message: String) -> ModelFileError {
        ModelFileError::Config {
            path: self.path.clone(),
            message,
        }
    }

    /// `model_type`, the architecture's name.
    pub fn model_type(&self) -> Result<&str, ModelFileError> {
        self.json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| self.err("no model_type".into()))
    }

    /// A whole number under the first of `keys` present (HF configs alias some names).
    pub fn usize(&self, keys: &[&str]) -> Result<usize, ModelFileError> {
        self.opt_usize(keys).ok_or_else(|| {
            self.err(format!(
                "missing or not a whole number: {}",
                keys.join(" / ")
            ))
        })
    }

    pub fn opt_usize(&self, keys: &[&str]) -> Option<usize> {
        keys.iter()
            .find_map(|k| self.json.get(*k).and_then(|v| v.as_u64()))
            .map(|v| v as usize)
    }

    pub fn f32_or(&self, key: &str, default: f32) -> f32 {
        self.json
            .get(key)
            .and_then(|v| v.as_f64())
            .map_or(default, |v| v as f32)
    }

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        self.json
            .get(key)
            .and_then(|v| v.as_bool())
            .unwrap_or(default)
    }
}

/// Reject shapes no real model has before they size any allocation (a hostile or corrupt
/// header must not make us reserve terabytes).
pub fn check_plausible(
    n_layer: usize,
    dim: usize,
    ffn_dim: usize,
    vocab: usize,
    context: usize,
) -> Result<(), ModelFileError> {
    if n_layer == 0
        || n_layer > 1024
        || dim == 0
        || dim > 1 << 16
        || ffn_dim == 0
        || ffn_dim > 1 << 18
        || vocab == 0
        || vocab > 1 << 22
        || context == 0
        || context > 1 << 22
    {
        // The configuration's numbers (GGUF metadata or config.json), not the file's structure.
        return Err(ModelFileError::Shape(format!(
            "implausible model shape in its configuration: {n_layer} layers, width {dim}, \
             feed-forward {ffn_dim}, vocabulary {vocab}, context {context}"
        )));
    }
    Ok(())
}

/// The widest attention head accepted. Released models use 64 to 256; the rotary tables and
/// attention scratch are sized by it, so a header's 2^60 must be refused, not allocated.
const MAX_HEAD_DIM: usize = 1024;

/// Reject attention shapes that do not divide evenly or that no real model has.
pub fn check_heads(
    dim: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
) -> Result<(), ModelFileError> {
    // Checked: the product of two header values wraps in a release build and could pass.
    let q_dim = n_head.checked_mul(head_dim);
    if n_head == 0
        || n_kv_head == 0
        || head_dim == 0
        || n_head > dim
        || head_dim > MAX_HEAD_DIM
        || !n_head.is_multiple_of(n_kv_head)
        || !head_dim.is_multiple_of(2)
        || q_dim.is_none_or(|q| q > dim.saturating_mul(4))
    {
        return Err(ModelFileError::Shape(format!(
            "inconsistent attention shape: width {dim}, {n_head} heads of {head_dim}, {n_kv_head} kv heads"
        )));
    }
    Ok(())
}

/// A file without `output.weight` uses the embedding as its head, unless its config says the
/// embeddings are not tied (`tied_head` `Some(false)`): then the head is missing, on every
/// device.
pub fn check_missing_head(tied_head: Option<bool>) -> Result<(), ModelFileError> {
    if tied_head == Some(false) {
        return Err(ModelFileError::MissingTensor(
            "output.weight (lm_head.weight: the config says the embeddings are not tied)".into(),
        ));
    }
    Ok(())
}

/// Reject a rotary base that is not a positive finite number: 0, a negative base or NaN make
/// every rotation NaN, and a base past `f32` (infinite) stops all but the first pair rotating.
pub fn check_rope_base(base: f32) -> Result<(), ModelFileError> {
    if !(base.is_finite() && base > 0.0) {
        return Err(ModelFileError::Shape(format!(
            "rotary base {base} is not a positive finite number"
        )));
    }
    Ok(())
}

/// Reject a normalization epsilon outside (0, 1): released models use 1e-5, 1e-6 or 1e-12;
/// 0 divides by zero on an all-zero row, and NaN, a negative or a huge epsilon corrupt every
/// normalized value.
pub fn check_norm_eps(eps: f32) -> Result<(), ModelFileError> {
    if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
        return Err(ModelFileError::Shape(format!(
            "normalization epsilon {eps} is not in (0, 1)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_attention_shapes_pass() {
        // Llama 3 8B, Qwen2.5 0.5B, TinyLlama, a Gemma-style 256-wide head, StarCoder (MQA).
        for (dim, n_head, n_kv, head_dim) in [
            (4096, 32, 8, 128),
            (896, 14, 2, 64),
            (2048, 32, 4, 64),
            (2048, 8, 1, 256),
            (6144, 48, 1, 128),
        ] {
            check_heads(dim, n_head, n_kv, head_dim).expect("real shape");
        }
    }

    /// A head count times head size that wraps `usize` used to compare as 0 in a release
    /// build and pass, leaving a huge head size to size the rotary tables.
    #[test]
    fn head_shapes_that_wrap_or_are_absurd_are_refused() {
        for (dim, n_head, n_kv, head_dim) in [
            (4096, 4, 1, 1usize << 62),  // 4 * 2^62 wraps to 0
            (4096, 1 << 40, 1, 1 << 24), // 2^64 wraps to 0
            (4096, 32, 8, 2048),         // a head wider than any model's
            (64, 128, 1, 2),             // more heads than width
            (4096, 32, 0, 128),
            (4096, 32, 5, 128), // kv heads that do not divide the heads
            (4096, 32, 8, 127),
        ] {
            assert!(
                check_heads(dim, n_head, n_kv, head_dim).is_err(),
                "{dim} {n_head} {n_kv} {head_dim}"
            );
        }
    }

    #[test]
    fn rope_base_and_norm_eps_must_be_sane() {
        for base in [10_000.0, 500_000.0, 1e6, 1e7] {
            check_rope_base(base).expect("real base");
        }
        for base in [0.0, -10_000.0, f32::NAN, f32::INFINITY] {
            assert!(check_rope_base(base).is_err(), "{base}");
        }
        for eps in [1e-5, 1e-6, 1e-12] {
            check_norm_eps(eps).expect("real epsilon");
        }
        for eps in [0.0, -1e-5, 1.0, 2.0, f32::NAN, f32::INFINITY] {
            assert!(check_norm_eps(eps).is_err(), "{eps}");
        }
    }
}
