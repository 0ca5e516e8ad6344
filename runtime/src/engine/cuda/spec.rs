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
