//! One description of a decoder layer stack that both architectures map onto, so the GPU
//! backend has one forward pass: Llama-family (RMSNorm, RoPE, SwiGLU, optional Q/K/V biases)
//! and GPT-BigCode (LayerNorm with biases, learned positions, GELU, biases everywhere).

use crate::engine::cpu::RopeLayout;
use crate::engine::models::gpt_bigcode::GptBigCodeConfig;
use crate::engine::models::llama::LlamaConfig;
use crate::engine::models::{Architecture, ConfigSource, gpt_bigcode, llama, qwen2};
use crate::engine::weights::ModelFileError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    /// With a bias.
    Layer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfnKind {
    /// silu(gate · x) * (up · x), then down.
    SwiGlu,
    /// gelu_tanh(up · x + b), then down (+ b).
    GeluTanh,
}

/// The shape and operations of a model, whatever its architecture.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Architecture,
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub norm: NormKind,
    pub eps: f32,
    /// Rotary embeddings: layout and base.
    pub rope: Option<(RopeLayout, f32)>,
    /// Rows of a learned position table.
    pub learned_positions: Option<usize>,
    pub ffn: FfnKind,
    /// Q/K/V projection biases (Qwen2; always with GPT-BigCode).
    pub qkv_bias: bool,
    /// Biases on the attention output and feed-forward projections (GPT-BigCode).
    pub proj_bias: bool,
    /// What an HF config says of the output head (`tie_word_embeddings`), as in
    /// [`LlamaConfig::tied_head`]: `Some(false)` makes a missing head an error.
    pub tied_head: Option<bool>,
}

impl Spec {
    pub fn read(arch: Architecture, source: ConfigSource<'_>) -> Result<Self, ModelFileError> {
        Ok(match arch {
            Architecture::Llama => Self::llama(arch, llama::LlamaConfig::from_source(source)?),
            Architecture::Qwen2 => Self::llama(arch, qwen2::config(source)?),
            Architecture::GptBigCode => {
                Self::bigcode(gpt_bigcode::GptBigCodeConfig::from_source(source)?)
            }
        })
    }

    fn llama(arch: Architecture, c: LlamaConfig) -> Self {
        Self {
            arch,
            n_layer: c.n_layer,
            dim: c.dim,
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            vocab: c.vocab,
            context_length: c.context_length,
            norm: NormKind::Rms,
            eps: c.rms_eps,
            rope: Some((c.rope_layout, c.rope_base)),
            learned_positions: None,
            ffn: FfnKind::SwiGlu,
            qkv_bias: c.qkv_bias,
            proj_bias: false,
            tied_head: c.tied_head,
        }
    }

    fn bigcode(c: GptBigCodeConfig) -> Self {
        Self {
            arch: Architecture::GptBigCode,
            n_layer: c.n_layer,
            dim: c.dim,
            n_head: c.n_head,
            n_kv_head: c.n_kv_head,
            head_dim: c.head_dim,
            ffn_dim: c.ffn_dim,
            vocab: c.vocab,
            context_length: c.n_positions,
            norm: NormKind::Layer,
            eps: c.norm_eps,
            rope: None,
            learned_positions: Some(c.n_positions),
            ffn: FfnKind::GeluTanh,
            qkv_bias: true,
            proj_bias: true,
            tied_head: None,
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Rows of the feed-forward input projection: gate and up together for SwiGLU.
    pub fn ffn_in_rows(&self) -> usize {
        match self.ffn {
            FfnKind::SwiGlu => 2 * self.ffn_dim,
            FfnKind::GeluTanh => self.ffn_dim,
        }
    }

    /// Weights of one layer's matrices (Q/K/V, output, feed-forward in and out).
    pub fn layer_weight_elements(&self) -> usize {
        let dim = self.dim;
        self.qkv_dim() * dim + dim * self.q_dim() + self.ffn_in_rows() * dim + dim * self.ffn_dim
    }

    /// The GGUF names whose rows, stacked in order, make layer `i`'s fused Q/K/V matrix.
    pub fn qkv_parts(&self, i: usize) -> Vec<(String, usize)> {
        match self.arch {
            Architecture::GptBigCode => vec![(format!("blk.{i}.attn_qkv"), self.qkv_dim())],
            _ => vec![
                (format!("blk.{i}.attn_q"), self.q_dim()),
                (format!("blk.{i}.attn_k"), self.kv_dim()),
                (format!("blk.{i}.attn_v"), self.kv_dim()),
            ],
        }
    }

    /// The names stacked into layer `i`'s feed-forward input matrix.
    pub fn ffn_in_parts(&self, i: usize) -> Vec<(String, usize)> {
        match self.ffn {
            FfnKind::SwiGlu => vec![
                (format!("blk.{i}.ffn_gate"), self.ffn_dim),
                (format!("blk.{i}.ffn_up"), self.ffn_dim),
            ],
            FfnKind::GeluTanh => vec![(format!("blk.{i}.ffn_up"), self.ffn_dim)],
        }
    }

    /// Whether the output head is the embedding, given whether the weights hold their own
    /// `output.weight`. A missing head is the embedding only when the config does not say the
    /// two are untied: then the CPU engine refuses the model (llama.rs) and so does this one,
    /// rather than produce logits from the wrong matrix.
    pub fn head_tied(&self, has_output: bool) -> Result<bool, String> {
        if has_output {
            return Ok(false);
        }
        crate::engine::models::check_missing_head(self.tied_head).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Reject what the kernels cannot run, before any device memory is taken.
    pub fn check_supported(&self) -> Result<(), String> {
        let max_hd = agentrt_kernels::table::MAX_HEAD_DIM;
        // Cached key rows are read 8 values (16 bytes) at a time.
        if self.head_dim > max_hd || !self.head_dim.is_multiple_of(8) {
            return Err(format!(
                "head size {} is not supported on the GPU (a multiple of 8, at most {max_hd})",
                self.head_dim
            ));
        }
        let norm_max =
            agentrt_kernels::table::NORM_THREADS as usize * agentrt_kernels::table::NORM_PER_THREAD;
        if self.dim > norm_max {
            return Err(format!(
                "width {} is over the GPU norm's {norm_max}",
                self.dim
            ));
        }
        for (what, cols) in [
            ("width", self.dim),
            ("attention width", self.q_dim()),
            ("feed-forward width", self.ffn_dim),
        ] {
            if !cols.is_multiple_of(8) {
                return Err(format!(
                    "{what} {cols} is not a multiple of 8 (the GPU kernels read 8 weights at a time)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::models::HfConfig;

    /// The spec of a small Llama whose config says `tie_word_embeddings: tied` (or nothing).
    fn llama_spec(tied: Option<bool>) -> Spec {
        let mut json = serde_json::json!({
            "model_type": "llama",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "vocab_size": 100,
            "max_position_embeddings": 128,
        });
        if let Some(tied) = tied {
            json["tie_word_embeddings"] = tied.into();
        }
        let config = HfConfig {
            path: "config.json".into(),
            json,
        };
        Spec::read(Architecture::Llama, ConfigSource::Hf(&config)).expect("spec")
    }

    /// The GPU path used to put the embedding in place of a missing head whatever the config
    /// said; the CPU path refuses an untied model without one, and so must this.
    #[test]
    fn a_missing_head_is_refused_when_the_config_says_untied() {
        let untied = llama_spec(Some(false));
        let err = untied.head_tied(false).expect_err("must refuse");
        assert!(err.contains("output.weight"), "{err}");
        assert_eq!(untied.head_tied(true), Ok(false));
        assert_eq!(llama_spec(Some(true)).head_tied(false), Ok(true));
        assert_eq!(llama_spec(None).head_tied(false), Ok(true));
        assert_eq!(llama_spec(None).head_tied(true), Ok(false));
    }
}
