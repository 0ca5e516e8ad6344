//! Side by side on this machine, in one run: agentrt against the engines users would otherwise
//! pick, on the same files and thread count.
//!
//! - SmolLM2-135M-Instruct Q4_1 (the default model): ours against llama.cpp's `llama-bench`
//!   (built from PyPI's llama-cpp-python sdist by `scripts/peer-llama-cpp.sh`; reported as
//!   absent otherwise, or pass its path in `AGENTRT_LLAMA_BENCH`).
//! - A tiny_starcoder-shaped checkpoint written by `agentrt synth`: ours in F16 and F32
//!   against candle's `bigcode` (which runs F32 only) on the F32 file.
//!
//! Prefill: a 64-token prompt in one forward pass. Decode: 64 greedy tokens one at a time from
//! a one-token prompt. Best of `AGENTRT_BENCH_RUNS` runs (default 3). Our figures come from
//! `agentrt bench --json` in its own process, so its peak RSS is ours alone.
//!
//! Run: `cargo bench --bench peers` (release build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bigcode;
use serde_json::Value;

const PROMPT: usize = 64;
const DECODE: usize = 64;

fn home() -> PathBuf {
    std::env::var_os("AGENTRT_HOME").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/agentrt"),
        PathBuf::from,
    )
}

fn runs() -> usize {
    std::env::var("AGENTRT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Our figures for `model`, from `agentrt bench --json`.
fn ours(model: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["bench", "--json", "--model"])
        .arg(model)
        .args(["--prompt-tokens", &PROMPT.to_string()])
        .args(["--decode-tokens", &DECODE.to_string()])
        .args(["--runs", &runs().to_string()])
        .output()
        .expect("run agentrt bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench json")
}

/// llama.cpp's (prefill, decode) tokens/s on `model`, if llama-bench is present.
fn llama_cpp(model: &Path, threads: u64) -> Option<(f64, f64)> {
    let bin = std::env::var_os("AGENTRT_LLAMA_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join("peers/llama.cpp-build/bin/llama-bench"));
    if !bin.is_file() {
        println!(
            "llama.cpp: absent ({}; run scripts/peer-llama-cpp.sh)",
            bin.display()
        );
        return None;
    }
    let out = Command::new(&bin)
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-p", &PROMPT.to_string(), "-n", &DECODE.to_string()])
        .args(["-r", &runs().to_string(), "-o", "json"])
        .output()
        .ok()?;
    let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
    let rate = |prompt: u64, generated: u64| {
        rows.as_array()?
            .iter()
            .find(|r| r["n_prompt"] == prompt && r["n_gen"] == generated)?["avg_ts"]
            .as_f64()
    };
    Some((rate(PROMPT as u64, 0)?, rate(0, DECODE as u64)?))
}

/// A tiny_starcoder-shaped checkpoint in `dtype`, written once into the cache.
fn starcoder(dtype: &str) -> PathBuf {
    let dir = home().join(format!("bench/tiny-starcoder-{dtype}"));
    if !dir.join("model.safetensors").is_file() {
        let ok = Command::new(env!("CARGO_BIN_EXE_agentrt"))
            .args(["synth", "tiny-starcoder"])
            .arg(&dir)
            .args(["--dtype", dtype])
            .status()
            .expect("run agentrt synth")
            .success();
        assert!(ok, "agentrt synth failed");
    }
    dir
}

/// candle's bigcode (prefill, decode) tokens/s on the F32 checkpoint `dir`.
fn candle_bigcode(dir: &Path) -> (f64, f64) {
    let config = || bigcode::Config {
        vocab_size: 49152,
        max_position_embeddings: 8192,
        num_hidden_layers: 20,
        hidden_size: 768,
        layer_norm_epsilon: 1e-5,
        n_inner: Some(3072),
        num_attention_heads: 12,
        multi_query: true,
        use_cache: true,
    };
    let load = || {
        // SAFETY: the checkpoint is not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .expect("var builder");
        bigcode::GPTBigCode::load(vb, config()).expect("candle load")
    };
    let input = |ids: &[u32]| {
        Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("input")
    };
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 100 + i * 7).collect();
    let (mut prefill, mut decode) = (0f64, 0f64);
    for _ in 0..runs() {
        let mut model = load();
        let started = Instant::now();
        model.forward(&input(&prompt), 0).expect("prefill");
        prefill = prefill.max(PROMPT as f64 / started.elapsed().as_secs_f64());
        let mut model = load();
        let started = Instant::now();
        let mut next = prompt[0];
        for pos in 0..DECODE {
            let logits = model.forward(&input(&[next]), pos).expect("decode");
            let row: Vec<f32> = logits
                .flatten_all()
                .and_then(|l| l.to_vec1())
                .expect("logits");
            next = agentrt::engine::sampling::argmax(&row);
        }
        decode = decode.max(DECODE as f64 / started.elapsed().as_secs_f64());
    }
    (prefill, decode)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn report(label: &str, v: &Value) {
    println!(
        "{label}: prefill {:.1} tok/s, decode {:.1} tok/s, peak RSS {} MiB = {:.2}x the weights, decode reads {:.1} MB/token = {:.0} % of {:.1} GB/s",
        f(v, "prefill_tokens_per_second"),
        f(v, "decode_tokens_per_second"),
        v["peak_rss_mib"],
        f(v, "peak_rss_per_weight_byte"),
        f(v, "decode_bytes_per_token") / 1e6,
        f(v, "decode_bandwidth_utilisation") * 100.0,
        f(v, "memory_read_gb_per_second"),
    );
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; there are none to honour.
    println!("runs: best of {}, prompt {PROMPT}, decode {DECODE}", runs());

    let smollm = home().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smollm.is_file() {
        let ours_smollm = ours(&smollm);
        report("agentrt SmolLM2 Q4_1", &ours_smollm);
        let threads = ours_smollm["threads"].as_u64().unwrap_or(1);
        if let Some((prefill, decode)) = llama_cpp(&smollm, threads) {
            println!(
                "llama.cpp SmolLM2 Q4_1 ({threads} threads): prefill {prefill:.1} tok/s, decode {decode:.1} tok/s; agentrt/llama.cpp: prefill {:.2}x, decode {:.2}x",
                f(&ours_smollm, "prefill_tokens_per_second") / prefill,
                f(&ours_smollm, "decode_tokens_per_second") / decode,
            );
        }
    } else {
        println!(
            "SmolLM2: absent ({}; run scripts/setup.sh)",
            smollm.display()
        );
    }

    let (f16_dir, f32_dir) = (starcoder("f16"), starcoder("f32"));
    let ours_f16 = ours(&f16_dir);
    report("agentrt tiny_starcoder F16", &ours_f16);
    let ours_f32 = ours(&f32_dir);
    report("agentrt tiny_starcoder F32", &ours_f32);
    let (prefill, decode) = candle_bigcode(&f32_dir);
    println!(
        "candle bigcode tiny_starcoder F32: prefill {prefill:.1} tok/s, decode {decode:.1} tok/s; agentrt F16/candle decode {:.2}x, agentrt F32/candle: prefill {:.2}x, decode {:.2}x",
        f(&ours_f16, "decode_tokens_per_second") / decode,
        f(&ours_f32, "prefill_tokens_per_second") / prefill,
        f(&ours_f32, "decode_tokens_per_second") / decode,
    );
}
