//! Random-weight checkpoints in the shapes of real models, written as HF folders
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`).
//!
//! The model hubs are out of reach here, and a checkpoint's speed and correctness depend on its
//! shape and format, not on trained values; so benchmarks and reference tests write these and
//! run the same files through our engine and an independent one. The tokenizer is a byte-level
//! BPE whose merges pair alphabet characters until the vocabulary has the model's size, with the
//! special tokens of the family (StarCoder's FIM tokens, ChatML turn markers).

use std::io;
use std::path::Path;

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::models::Architecture;
use super::quant::GgmlType;

/// The shape of a checkpoint to write.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub arch: Architecture,
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub context: usize,
    /// F32, F16 or BF16.
    pub dtype: GgmlType,
    /// Write an `lm_head.weight` instead of tying the head to the embedding.
    pub separate_head: bool,
    pub seed: u64,
}

/// Special tokens every synthetic tokenizer has, after the BPE vocabulary.
const SPECIAL_TOKENS: [&str; 6] = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<|im_start|>",
    "<|im_end|>",
];

/// ChatML, the template of SmolLM2 and Qwen2.
const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

impl SyntheticSpec {
    /// `bigcode/tiny_starcoder_py`: 20 layers, 768 wide, 12 heads, MQA, 49152 tokens.
    pub fn tiny_starcoder(dtype: GgmlType) -> Self {
        Self {
            arch: Architecture::GptBigCode,
            n_layer: 20,
            dim: 768,
            n_head: 12,
            n_kv_head: 1,
            ffn_dim: 3072,
            vocab: 49152,
            context: 8192,
            dtype,
            separate_head: false,
            seed: 1,
        }
    }

    /// `bigcode/starcoderbase-1b`: 24 layers, 2048 wide, 16 heads, MQA, 49152 tokens.
    pub fn starcoderbase_1b(dtype: GgmlType) -> Self {
        Self {
            n_layer: 24,
            dim: 2048,
            n_head: 16,
            ffn_dim: 8192,
            ..Self::tiny_starcoder(dtype)
        }
    }

    /// Look a preset up by name (for the CLI).
    pub fn preset(name: &str, dtype: GgmlType) -> Option<Self> {
        match name {
            "tiny-starcoder" => Some(Self::tiny_starcoder(dtype)),
            "starcoderbase-1b" => Some(Self::starcoderbase_1b(dtype)),
            _ => None,
        }
    }

    pub const PRESETS: &'static str = "tiny-starcoder, starcoderbase-1b";

    fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    /// Write the checkpoint into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tensors = self.tensors();
        let dtype = match self.dtype {
            GgmlType::F32 => Dtype::F32,
            GgmlType::F16 => Dtype::F16,
            GgmlType::BF16 => Dtype::BF16,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("safetensors checkpoints hold F32, F16 or BF16, not {other:?}"),
                ));
            }
        };
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(name, shape, values)| {
                let bytes = encode(self.dtype, &values);
                (name, shape, bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .collect::<io::Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
            .map_err(|e| io::Error::other(e.to_string()))?;
        std::fs::write(dir.join("config.json"), self.config_json().to_string())?;
        self.write_tokenizer(dir)
    }

    /// Every tensor as (HF name, shape, values).
    fn tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = Rng::new(self.seed);
        let mut out = Vec::new();
        let (dim, hd) = (self.dim, self.head_dim());
        let kv_dim = self.n_kv_head * hd;
        // Scales like a trained model's (GPT-2 initialisation: std 0.02), so activations stay
        // in range through every layer.
        let mut matrix = |name: String, rows: usize, cols: usize, out: &mut Vec<_>| {
            out.push((name, vec![rows, cols], rng.values(rows * cols, 0.035)));
        };
        let mut vectors: Vec<(String, usize, f32, f32)> = Vec::new();
        match self.arch {
            Architecture::GptBigCode => {
                matrix("transformer.wte.weight".into(), self.vocab, dim, &mut out);
                matrix("transformer.wpe.weight".into(), self.context, dim, &mut out);
                for i in 0..self.n_layer {
                    let p = |s: &str| format!("transformer.h.{i}.{s}");
                    matrix(p("attn.c_attn.weight"), dim + 2 * kv_dim, dim, &mut out);
                    matrix(p("attn.c_proj.weight"), dim, dim, &mut out);
                    matrix(p("mlp.c_fc.weight"), self.ffn_dim, dim, &mut out);
                    matrix(p("mlp.c_proj.weight"), dim, self.ffn_dim, &mut out);
                    for norm in ["ln_1", "ln_2"] {
                        vectors.push((p(&format!("{norm}.weight")), dim, 1.0, 0.1));
                        vectors.push((p(&format!("{norm}.bias")), dim, 0.0, 0.02));
                    }
                    vectors.push((p("attn.c_attn.bias"), dim + 2 * kv_dim, 0.0, 0.02));
                    vectors.push((p("attn.c_proj.bias"), dim, 0.0, 0.02));
                    vectors.push((p("mlp.c_fc.bias"), self.ffn_dim, 0.0, 0.02));
                    vectors.push((p("mlp.c_proj.bias"), dim, 0.0, 0.02));
                }
                vectors.push(("transformer.ln_f.weight".into(), dim, 1.0, 0.1));
                vectors.push(("transformer.ln_f.bias".into(), dim, 0.0, 0.02));
            }
            Architecture::Llama | Architecture::Qwen2 => {
                matrix(
                    "model.embed_tokens.weight".into(),
                    self.vocab,
                    dim,
                    &mut out,
                );
                for i in 0..self.n_layer {
                    let p = |s: &str| format!("model.layers.{i}.{s}");
                    let q_dim = self.n_head * hd;
                    matrix(p("self_attn.q_proj.weight"), q_dim, dim, &mut out);
                    matrix(p("self_attn.k_proj.weight"), kv_dim, dim, &mut out);
                    matrix(p("self_attn.v_proj.weight"), kv_dim, dim, &mut out);
                    matrix(p("self_attn.o_proj.weight"), dim, q_dim, &mut out);
                    matrix(p("mlp.gate_proj.weight"), self.ffn_dim, dim, &mut out);
                    matrix(p("mlp.up_proj.weight"), self.ffn_dim, dim, &mut out);
                    matrix(p("mlp.down_proj.weight"), dim, self.ffn_dim, &mut out);
                    vectors.push((p("input_layernorm.weight"), dim, 1.0, 0.1));
                    vectors.push((p("post_attention_layernorm.weight"), dim, 1.0, 0.1));
                    if self.arch == Architecture::Qwen2 {
                        vectors.push((p("self_attn.q_proj.bias"), q_dim, 0.0, 0.1));
                        vectors.push((p("self_attn.k_proj.bias"), kv_dim, 0.0, 0.1));
                        vectors.push((p("self_attn.v_proj.bias"), kv_dim, 0.0, 0.1));
                    }
                }
                vectors.push(("model.norm.weight".into(), dim, 1.0, 0.1));
            }
        }
        if self.separate_head {
            matrix("lm_head.weight".into(), self.vocab, dim, &mut out);
        }
        for (name, n, centre, spread) in vectors {
            let values = rng.values(n, spread).iter().map(|v| centre + v).collect();
            out.push((name, vec![n], values));
        }
        out
    }

    fn config_json(&self) -> serde_json::Value {
        let tie = !self.separate_head;
        match self.arch {
            Architecture::GptBigCode => serde_json::json!({
                "model_type": "gpt_bigcode",
                "architectures": ["GPTBigCodeForCausalLM"],
                "n_embd": self.dim,
                "n_head": self.n_head,
                "n_layer": self.n_layer,
                "n_inner": self.ffn_dim,
                "n_positions": self.context,
                "vocab_size": self.vocab,
                "layer_norm_epsilon": 1e-5,
                "multi_query": self.n_kv_head == 1,
                "activation_function": "gelu_pytorch_tanh",
                "bos_token_id": 0,
                "eos_token_id": 0,
                "tie_word_embeddings": tie,
                "torch_dtype": torch_dtype(self.dtype),
            }),
            Architecture::Llama | Architecture::Qwen2 => serde_json::json!({
                "model_type": self.arch.name(),
                "hidden_size": self.dim,
                "intermediate_size": self.ffn_dim,
                "num_hidden_layers": self.n_layer,
                "num_attention_heads": self.n_head,
                "num_key_value_heads": self.n_kv_head,
                "max_position_embeddings": self.context,
                "sliding_window": self.context,
                "max_window_layers": self.n_layer,
                "use_sliding_window": false,
                "rope_theta": 10000.0,
                "rms_norm_eps": 1e-6,
                "tie_word_embeddings": tie,
                "vocab_size": self.vocab,
                "hidden_act": "silu",
                "torch_dtype": torch_dtype(self.dtype),
            }),
        }
    }

    fn write_tokenizer(&self, dir: &Path) -> io::Result<()> {
        let tokenizer = build_tokenizer(self.vocab)?;
        tokenizer
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut config = serde_json::json!({
            "eos_token": "<|endoftext|>",
            "bos_token": "<|endoftext|>",
            "add_bos_token": false,
        });
        if self.arch != Architecture::GptBigCode {
            // Chat models end a turn with <|im_end|>; StarCoder is a base model without one.
            config["eos_token"] = "<|im_end|>".into();
            config["chat_template"] = CHATML_TEMPLATE.into();
        }
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
    }
}

/// A byte-level BPE tokenizer of exactly `vocab` tokens (at least 262).
pub(crate) fn build_tokenizer(vocab: usize) -> io::Result<Tokenizer> {
    let alphabet: Vec<String> = {
        let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        chars.sort_unstable();
        chars.into_iter().map(String::from).collect()
    };
    let merges_wanted = vocab
        .checked_sub(alphabet.len() + SPECIAL_TOKENS.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a vocabulary of {vocab} cannot hold the byte alphabet"),
            )
        })?;
    // Pairs of printable characters first, so ordinary text merges; then the rest.
    let mut merges = Vec::with_capacity(merges_wanted);
    'outer: for a in &alphabet {
        for b in &alphabet {
            if merges.len() == merges_wanted {
                break 'outer;
            }
            merges.push((a.clone(), b.clone()));
        }
    }
    let mut tokens: Vec<String> = alphabet.clone();
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    let vocab_map: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map, merges)
        .build()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

fn torch_dtype(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    }
}

fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// xorshift64: fast, deterministic, and good enough for weights nobody trains.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// `n` values uniform in `[-scale, scale]`.
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_has_the_requested_size_and_special_tokens() {
        let t = build_tokenizer(400).expect("tokenizer");
        assert_eq!(t.get_vocab_size(true), 400);
        assert_eq!(t.token_to_id("<|endoftext|>"), Some(394));
        let ids = t
            .encode("def f(): pass", false)
            .expect("encode")
            .get_ids()
            .to_vec();
        assert_eq!(t.decode(&ids, true).expect("decode"), "def f(): pass");
    }
}
