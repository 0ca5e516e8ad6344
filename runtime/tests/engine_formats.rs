//! Every weight format the engine reads (F32, F16, Q8_0, Q4_0, Q4_1), on small random-weight
//! Llama checkpoints written by this test as GGUF files, against candle's `quantized_llama` on
//! the same files: logits within a stated tolerance and the same greedy tokens.

use std::io::Write;
use std::path::PathBuf;

use agentrt::engine::LoadedModel;
use agentrt::engine::quant::{GgmlType, quantize_row};

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
