//! Every weight format the engine reads (F32, F16, Q8_0, Q4_0, Q4_1), on small random-weight
//! Llama checkpoints written by this test as GGUF files, against candle's `quantized_llama` on
//! the same files: logits within a stated tolerance and the same greedy tokens.
//!
//! The other two families in GGUF: a Qwen2 file (`qwen2` keys, Q/K/V biases) against candle's
//! `quantized_qwen2`, and a StarCoder file (`starcoder` keys, fused QKV) against our own
//! safetensors load of the same weights (candle reads GPT-BigCode from safetensors only). The
//! GGUF files are converted here from synthetic HF checkpoints, as llama.cpp's converter does.

use std::io::Write;
use std::path::{Path, PathBuf};

use agentrt::engine::LoadedModel;
use agentrt::engine::models::{Architecture, hf_tensor_name};
use agentrt::engine::quant::{GgmlType, quantize_row};
use agentrt::engine::synthetic::SyntheticSpec;

mod common;
use common::{candle_greedy, candle_logits, candle_model, spread_and_max_error};

const DIM: usize = 64;
const FFN: usize = 128;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const VOCAB: usize = 96;
/// Largest tolerated |ours - candle| relative to the logits' spread: float formats differ only
/// in summation order; the 8-bit activation rounding of quantised formats can flip on a
/// boundary, as on the real model.
const TOLERANCE: f32 = 0.03;

/// Deterministic pseudo-random weights in [-scale, scale].
fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct GgufWriter {
    kv: Vec<u8>,
    kv_count: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl GgufWriter {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, k: &str, ty: u32) {
        Self::string(&mut self.kv, k);
        self.kv.extend_from_slice(&ty.to_le_bytes());
        self.kv_count += 1;
    }

    fn u32(&mut self, k: &str, v: u32) {
        self.key(k, 4);
        self.kv.extend_from_slice(&v.to_le_bytes());
    }

    fn f32(&mut self, k: &str, v: f32) {
        self.key(k, 6);
        self.kv.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k, 8);
        Self::string(&mut self.kv, v);
    }

    fn str_array(&mut self, k: &str, items: &[String]) {
        self.key(k, 9);
        self.kv.extend_from_slice(&8u32.to_le_bytes());
        self.kv
            .extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            Self::string(&mut self.kv, s);
        }
    }

    fn tensor(&mut self, name: &str, dims: &[usize], format: GgmlType, seed: u64, scale: f32) {
        let n: usize = dims.iter().product();
        let data = quantize_row(format, &weights(n, seed, scale));
        self.tensors.push((
            name.into(),
            dims.iter().map(|d| *d as u64).collect(),
            format.id(),
            data,
        ));
    }

    fn norm(&mut self, name: &str, seed: u64) {
        let w: Vec<f32> = weights(DIM, seed, 0.2).iter().map(|v| 1.0 + v).collect();
        self.tensors.push((
            name.into(),
            vec![DIM as u64],
            0,
            quantize_row(GgmlType::F32, &w),
        ));
    }

    fn finish(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.kv_count.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            Self::string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter()
                .for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

fn write_model(format: GgmlType) -> PathBuf {
    let mut g = GgufWriter {
        kv: Vec::new(),
        kv_count: 0,
        tensors: Vec::new(),
    };
    g.str("general.architecture", "llama");
    g.u32("llama.block_count", LAYERS as u32);
    g.u32("llama.embedding_length", DIM as u32);
    g.u32("llama.feed_forward_length", FFN as u32);
    g.u32("llama.attention.head_count", HEADS as u32);
    g.u32("llama.attention.head_count_kv", KV_HEADS as u32);
    g.u32("llama.context_length", 256);
    g.u32("llama.rope.dimension_count", (DIM / HEADS) as u32);
    g.f32("llama.rope.freq_base", 10_000.0);
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    g.str("tokenizer.ggml.model", "gpt2");
    let tokens: Vec<String> = (0..VOCAB).map(|i| format!("t{i}")).collect();
    g.str_array("tokenizer.ggml.tokens", &tokens);
    g.str_array("tokenizer.ggml.merges", &[]);
    let kv = DIM / HEADS * KV_HEADS;
    g.tensor("token_embd.weight", &[DIM, VOCAB], format, 1, 1.0);
    for l in 0..LAYERS {
        let s = 100 * (l as u64 + 1);
        g.norm(&format!("blk.{l}.attn_norm.weight"), s);
        g.tensor(
            &format!("blk.{l}.attn_q.weight"),
            &[DIM, DIM],
            format,
            s + 1,
            0.3,
        );
        g.tensor(
            &format!("blk.{l}.attn_k.weight"),
            &[DIM, kv],
            format,
            s + 2,
            0.3,
        );
        g.tensor(
            &format!("blk.{l}.attn_v.weight"),
            &[DIM, kv],
            format,
            s + 3,
            0.3,
        );
        g.tensor(
            &format!("blk.{l}.attn_output.weight"),
            &[DIM, DIM],
            format,
            s + 4,
            0.3,
        );
        g.norm(&format!("blk.{l}.ffn_norm.weight"), s + 5);
        g.tensor(
            &format!("blk.{l}.ffn_gate.weight"),
            &[DIM, FFN],
            format,
            s + 6,
            0.3,
        );
        g.tensor(
            &format!("blk.{l}.ffn_up.weight"),
            &[DIM, FFN],
            format,
            s + 7,
            0.3,
        );
        g.tensor(
            &format!("blk.{l}.ffn_down.weight"),
            &[FFN, DIM],
            format,
            s + 8,
            0.3,
        );
    }
    g.norm("output_norm.weight", 7);
    g.tensor("output.weight", &[DIM, VOCAB], format, 9, 0.5);
    let path = std::env::temp_dir().join(format!("agentrt-{format:?}-{}.gguf", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&g.finish()))
        .expect("write gguf");
    path
}

fn compare(format: GgmlType) {
    let path = write_model(format);
    let ours = LoadedModel::load("tiny", &path, &mut |_| {}).expect("our load");
    let mut theirs = candle_model(&path);
    let _ = std::fs::remove_file(&path);
    let prompt = [3u32, 17, 42, 8, 77, 5];
    let want = candle_logits(&mut theirs, &prompt, 0);
    let (spread, err) = spread_and_max_error(&want, &ours.prompt_logits(&prompt));
    assert!(
        err <= TOLERANCE * spread,
        "{format:?}: max logit error {err} above {TOLERANCE} x spread {spread}"
    );

    let greedy = ours.greedy_tokens(&prompt, 16);
    let reference = candle_greedy(&mut theirs, &want, prompt.len(), 16);
    assert_eq!(greedy, reference, "{format:?}: greedy tokens differ");
}

#[test]
fn f32_weights_match_candle() {
    compare(GgmlType::F32);
}

#[test]
fn f16_weights_match_candle() {
    compare(GgmlType::F16);
}

#[test]
fn q8_0_weights_match_candle() {
    compare(GgmlType::Q8_0);
}

#[test]
fn q4_0_weights_match_candle() {
    compare(GgmlType::Q4_0);
}

#[test]
fn q4_1_weights_match_candle() {
    compare(GgmlType::Q4_1);
}

/// Mutation fuzzing of the loader (stable Rust has no cargo-fuzz; this is the equivalent that
/// runs in CI): bit flips, byte overwrites, truncations and length-field corruptions of a valid
/// file must give an error or a working model, never a panic or an out-of-bounds read.
#[test]
fn corrupted_files_are_errors_not_panics() {
    let original = std::fs::read(write_model(GgmlType::Q4_1)).expect("read model");
    let path = std::env::temp_dir().join(format!("agentrt-fuzz-{}.gguf", std::process::id()));
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut loaded, mut refused) = (0, 0);
    for round in 0..400 {
        let mut bytes = original.clone();
        // Most mutations land in the header and metadata, where the parser makes its decisions.
        let header_len = 4096.min(bytes.len());
        match round % 4 {
            0 => {
                let i = next() as usize % header_len;
                bytes[i] ^= 1 << (next() % 8);
            }
            1 => {
                for _ in 0..4 {
                    let i = next() as usize % header_len;
                    bytes[i] = next() as u8;
                }
            }
            2 => bytes.truncate(next() as usize % bytes.len()),
            _ => {
                // Overwrite an 8-byte little-endian field with a huge or tiny length.
                let i = (next() as usize % (header_len - 8)) & !7;
                let v = [u64::MAX, u64::MAX / 2, 1 << 40, 0, 1][next() as usize % 5];
                bytes[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        std::fs::write(&path, &bytes).expect("write");
        let outcome =
            std::panic::catch_unwind(|| match LoadedModel::load("fuzz", &path, &mut |_| {}) {
                Ok(model) => {
                    let _ = model.greedy_tokens(&[1, 2], 2);
                    true
                }
                Err(_) => false,
            });
        match outcome {
            Ok(true) => loaded += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("round {round}: the loader or the model panicked on a corrupted file"),
        }
    }
    let _ = std::fs::remove_file(&path);
    println!("{loaded} mutated files still loaded, {refused} refused");
    assert!(
        refused > 100,
        "most corruptions should be caught, only {refused} were"
    );
}

impl GgufWriter {
    fn new() -> Self {
        Self {
            kv: Vec::new(),
            kv_count: 0,
            tensors: Vec::new(),
        }
    }

    fn u32_array(&mut self, k: &str, items: &[u32]) {
        self.key(k, 9);
        self.kv.extend_from_slice(&4u32.to_le_bytes());
        self.kv
            .extend_from_slice(&(items.len() as u64).to_le_bytes());
        items
            .iter()
            .for_each(|v| self.kv.extend_from_slice(&v.to_le_bytes()));
    }

    /// A tensor of given values; `shape` outermost first, as safetensors has it.
    fn values(&mut self, name: &str, shape: &[usize], format: GgmlType, values: &[f32]) {
        self.tensors.push((
            name.into(),
            shape.iter().rev().map(|d| *d as u64).collect(),
            format.id(),
            quantize_row(format, values),
        ));
    }
}

/// Convert a synthetic F32 HF checkpoint into a GGUF file of `arch`, matrices stored as
/// `format` (norms and biases stay F32), with the tokenizer as `tokenizer.ggml.*` metadata.
fn gguf_from_hf(dir: &Path, arch: Architecture, spec: &SyntheticSpec, format: GgmlType) -> PathBuf {
    let key = match arch {
        Architecture::GptBigCode => "starcoder",
        Architecture::Qwen2 => "qwen2",
        Architecture::Llama => "llama",
    };
    let mut g = GgufWriter::new();
    g.str("general.architecture", key);
    let k = |s: &str| format!("{key}.{s}");
    g.u32(&k("block_count"), spec.n_layer as u32);
    g.u32(&k("embedding_length"), spec.dim as u32);
    g.u32(&k("feed_forward_length"), spec.ffn_dim as u32);
    g.u32(&k("attention.head_count"), spec.n_head as u32);
    g.u32(&k("attention.head_count_kv"), spec.n_kv_head as u32);
    g.u32(&k("context_length"), spec.context as u32);
    if arch == Architecture::GptBigCode {
        g.f32(&k("attention.layer_norm_epsilon"), 1e-5);
    } else {
        g.f32(&k("rope.freq_base"), 10_000.0);
        g.f32(&k("attention.layer_norm_rms_epsilon"), 1e-6);
    }
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).expect("read"))
            .expect("tokenizer json");
    let mut tokens = vec![String::new(); spec.vocab];
    let mut types = vec![1u32; spec.vocab];
    for (text, id) in tokenizer["model"]["vocab"].as_object().expect("vocab") {
        tokens[id.as_u64().expect("id") as usize] = text.clone();
    }
    for added in tokenizer["added_tokens"].as_array().expect("added") {
        let id = added["id"].as_u64().expect("id") as usize;
        tokens[id] = added["content"].as_str().expect("content").to_string();
        types[id] = 3;
    }
    let merges: Vec<String> = tokenizer["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m[0].as_str().expect("a"),
                m[1].as_str().expect("b")
            )
        })
        .collect();
    g.str("tokenizer.ggml.model", "gpt2");
    g.str(
        "tokenizer.ggml.pre",
        if arch == Architecture::Qwen2 {
            "qwen2"
        } else {
            "starcoder"
        },
    );
    g.str_array("tokenizer.ggml.tokens", &tokens);
    g.u32_array("tokenizer.ggml.token_type", &types);
    g.str_array("tokenizer.ggml.merges", &merges);
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    for name in names {
        let view = st.tensor(name).expect("tensor");
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let gguf_name = hf_tensor_name(arch, name).expect("known tensor");
        let ty = if view.shape().len() == 2 {
            format
        } else {
            GgmlType::F32
        };
        g.values(&gguf_name, view.shape(), ty, &values);
    }
    let path = dir.join(format!("model-{format:?}.gguf"));
    std::fs::write(&path, g.finish()).expect("write gguf");
    path
}

fn small_spec(arch: Architecture) -> SyntheticSpec {
    SyntheticSpec {
        arch,
        n_layer: 2,
        dim: 64,
        n_head: 4,
        n_kv_head: if arch == Architecture::GptBigCode {
            1
        } else {
            2
        },
        ffn_dim: 160,
        vocab: 400,
        context: 128,
        dtype: GgmlType::F32,
        separate_head: false,
        seed: 11,
    }
}

fn checkpoint(arch: Architecture, label: &str) -> (PathBuf, SyntheticSpec) {
    let spec = small_spec(arch);
    let dir = std::env::temp_dir().join(format!("agentrt-gguf-{label}-{}", std::process::id()));
    spec.write(&dir).expect("write checkpoint");
    (dir, spec)
}

const FAMILY_PROMPT: [u32; 6] = [5, 77, 300, 12, 390, 41];

#[test]
fn qwen2_gguf_files_match_candle_quantized_qwen2() {
    use candle_transformers::models::quantized_qwen2::ModelWeights;
    let (dir, spec) = checkpoint(Architecture::Qwen2, "qwen2");
    for (format, tolerance, greedy) in [
        (GgmlType::F32, 1e-3, 32),
        (GgmlType::F16, 1e-3, 32),
        (GgmlType::Q8_0, TOLERANCE, 16),
        (GgmlType::Q4_1, TOLERANCE, 16),
    ] {
        let path = gguf_from_hf(&dir, Architecture::Qwen2, &spec, format);
        let ours = LoadedModel::load("qwen2-gguf", &path, &mut |_| {}).expect("our load");
        assert_eq!(ours.info.architecture, "qwen2");
        let mut file = std::fs::File::open(&path).expect("open");
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("read");
        let mut theirs = ModelWeights::from_gguf(content, &mut file, &candle_core::Device::Cpu)
            .expect("candle load");
        let mut step = |ids: &[u32], pos: usize| -> Vec<f32> {
            let input = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("input");
            theirs
                .forward(&input, pos)
                .and_then(|l| l.flatten_all())
                .and_then(|l| l.to_vec1::<f32>())
                .expect("forward")
        };
        let want = step(&FAMILY_PROMPT, 0);
        let (spread, err) = spread_and_max_error(&want, &ours.prompt_logits(&FAMILY_PROMPT));
        println!("qwen2 {format:?}: spread {spread:.4}, max error {err:.2e}");
        assert!(err <= tolerance * spread, "{format:?}: {err} of {spread}");
        let mut reference = Vec::new();
        let mut next = agentrt::engine::sampling::argmax(&want);
        for i in 0..greedy {
            reference.push(next);
            next = agentrt::engine::sampling::argmax(&step(&[next], FAMILY_PROMPT.len() + i));
        }
        assert_eq!(
            ours.greedy_tokens(&FAMILY_PROMPT, greedy),
            reference,
            "{format:?}: greedy"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn starcoder_gguf_files_match_the_same_weights_from_safetensors() {
    let (dir, spec) = checkpoint(Architecture::GptBigCode, "starcoder");
    let reference = LoadedModel::load("hf", &dir, &mut |_| {}).expect("safetensors load");
    let want = reference.prompt_logits(&FAMILY_PROMPT);
    for (format, tolerance) in [
        (GgmlType::F32, 1e-5),
        (GgmlType::F16, 2e-3),
        (GgmlType::Q8_0, TOLERANCE),
        (GgmlType::Q4_0, 0.1),
    ] {
        let path = gguf_from_hf(&dir, Architecture::GptBigCode, &spec, format);
        let ours = LoadedModel::load("starcoder-gguf", &path, &mut |_| {}).expect("gguf load");
        assert_eq!(ours.info.architecture, "gpt_bigcode");
        assert_eq!(ours.info.format, "gguf");
        assert!(
            ours.info.supports_fim,
            "FIM tokens from the GGUF vocabulary"
        );
        let (spread, err) = spread_and_max_error(&want, &ours.prompt_logits(&FAMILY_PROMPT));
        println!("starcoder {format:?}: spread {spread:.4}, max error {err:.2e}");
        assert!(err <= tolerance * spread, "{format:?}: {err} of {spread}");
        if format == GgmlType::F32 {
            assert_eq!(
                ours.greedy_tokens(&FAMILY_PROMPT, 32),
                reference.greedy_tokens(&FAMILY_PROMPT, 32)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
