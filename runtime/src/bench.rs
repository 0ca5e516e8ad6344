//! `agentrt bench`: prefill and decode speed of the default model on this machine.
//!
//! Prefill runs the whole prompt through one forward pass; decode generates greedily one token at
//! a time. The best of several runs is reported, with the peak resident memory and how close
//! decode comes to the machine's memory bandwidth: each decoded token reads every weight once
//! plus the KV cache so far, so bytes per token × tokens/s against a measured streaming-read
//! rate says how much faster decode could possibly get.

use std::time::Instant;

use serde_json::json;

use crate::cli::{CliError, RuntimeOpts, load_default_model};
use crate::error_code::ErrorCode;

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Streaming read bandwidth in bytes/s: the best of three sums over a buffer far larger than
/// the caches, on every engine thread (as decode reads weights).
pub fn memory_read_bandwidth() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    const BYTES: usize = 512 << 20;
    const CHUNK: usize = 1 << 16;
    // Filled with distinct values so the pages are really allocated and read.
    let buffer: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let sum = AtomicU64::new(0);
        crate::engine::threads::parallel_for(buffer.len().div_ceil(CHUNK), |i| {
            let chunk = &buffer[i * CHUNK..((i + 1) * CHUNK).min(buffer.len())];
            let s = chunk.iter().fold(0u64, |a, b| a.wrapping_add(*b));
            sum.fetch_add(s, Ordering::Relaxed);
        });
        std::hint::black_box(sum.load(Ordering::Relaxed));
        best = best.max(BYTES as f64 / started.elapsed().as_secs_f64());
    }
    best
}

pub fn run(
    opts: &RuntimeOpts,
    prompt_tokens: usize,
    decode_tokens: usize,
    runs: usize,
) -> Result<(), CliError> {
    let served = load_default_model(opts)?;
    let Some(model) = served.as_local() else {
        return Err(CliError {
            code: ErrorCode::InvalidInput.as_str(),
            message: format!(
                "{} is served remotely ({}); agentrt bench measures the local engine",
                served.info.id, served.info.device
            ),
        });
    };
    let context = model.info.context_length as usize;
    if prompt_tokens > context || decode_tokens + 1 > context {
        return Err(CliError {
            code: ErrorCode::ModelContextOverflow.as_str(),
            message: format!(
                "--prompt-tokens {prompt_tokens} and --decode-tokens {decode_tokens} must each \
                 fit the model's context of {context} positions"
            ),
        });
    }
    let text = "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n";
    let mut ids = Vec::new();
    let unit = model.tokenizer.encode(text).map_err(|e| CliError {
        code: ErrorCode::Internal.as_str(),
        message: e.to_string(),
    })?;
    while ids.len() < prompt_tokens.max(1) {
        ids.extend_from_slice(&unit);
    }
    ids.truncate(prompt_tokens.max(1));
    let (mut best_prefill, mut best_decode) = (0f64, 0f64);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let _ = model.prompt_logits(&ids);
        let prefill = ids.len() as f64 / started.elapsed().as_secs_f64();
        // Decode from a one-token prompt, so the time is (almost) all single-token steps.
        let started = Instant::now();
        let _ = model.greedy_tokens(&ids[..1], decode_tokens);
        let decode = decode_tokens as f64 / started.elapsed().as_secs_f64();
        best_prefill = best_prefill.max(prefill);
        best_decode = best_decode.max(decode);
    }
    let threads = crate::engine::threads::count();
    let rss = peak_rss_bytes().unwrap_or(0);
    let weight_bytes = model.info.file_bytes;
    // Decode runs positions 1..=decode_tokens: on average half the final cache is read.
    let kv_read = (model.kv_bytes_per_position() * (decode_tokens + 1) / 2) as u64;
    let bytes_per_token = weight_bytes + kv_read;
    let bandwidth = memory_read_bandwidth();
    let utilisation = bytes_per_token as f64 * best_decode / bandwidth;
    let value = json!({
        "model": model.info.id,
        "prompt_tokens": ids.len(),
        "decode_tokens": decode_tokens,
        "threads": threads,
        "prefill_tokens_per_second": (best_prefill * 10.0).round() / 10.0,
        "decode_tokens_per_second": (best_decode * 10.0).round() / 10.0,
        "peak_rss_mib": rss / (1 << 20),
        "weight_bytes": weight_bytes,
        "peak_rss_per_weight_byte": (rss as f64 / weight_bytes.max(1) as f64 * 100.0).round() / 100.0,
        "decode_bytes_per_token": bytes_per_token,
        "memory_read_gb_per_second": (bandwidth / 1e8).round() / 10.0,
        "decode_bandwidth_utilisation": (utilisation * 1000.0).round() / 1000.0,
    });
    if opts.json {
        println!("{value}");
    } else {
        println!(
            "{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), {} threads, peak RSS {} MiB ({:.2}x the {} MiB of weights)",
            model.info.id,
            best_prefill,
            ids.len(),
            best_decode,
            decode_tokens,
            threads,
            rss >> 20,
            rss as f64 / weight_bytes.max(1) as f64,
            weight_bytes >> 20,
        );
        println!(
            "decode reads {:.1} MB per token; memory read bandwidth {:.1} GB/s; decode uses {:.0} % of it",
            bytes_per_token as f64 / 1e6,
            bandwidth / 1e9,
            utilisation * 100.0
        );
    }
    Ok(())
}
