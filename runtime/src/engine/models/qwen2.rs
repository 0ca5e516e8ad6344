//! Qwen2 (Qwen2, Qwen2.5, Qwen2.5-Coder): the Llama decoder with biases on the Q, K and V
//! projections and rotary embeddings in the half-split layout in both formats.
//!
//! Paper: Yang et al., "Qwen2 Technical Report" (2024).
//! Reference implementations: HF transformers' `modeling_qwen2.py`, candle's `qwen2.rs`.
//! llama.cpp runs `qwen2` GGUF files in its "NeoX" RoPE mode (its converter does not permute
//! Q/K rows as it does for Llama), so GGUF and HF checkpoints share one layout. Sliding-window
//! attention is off in every released Qwen2 configuration and is not implemented.

use crate::engine::cpu::RopeLayout;
use crate::engine::weights::ModelFileError;

use super::ConfigSource;
use super::llama::LlamaConfig;

/// The configuration of a Qwen2 model.
pub fn config(source: ConfigSource<'_>) -> Result<LlamaConfig, ModelFileError> {
    if let ConfigSource::Hf(c) = source
        && c.bool_or("use_sliding_window", false)
    {
        return Err(ModelFileError::Config {
            path: c.path.clone(),
            message: "use_sliding_window is set; sliding-window attention is not supported".into(),
        });
    }
    LlamaConfig::read(source, RopeLayout::HalfSplit, true)
}
