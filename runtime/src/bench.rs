//! `agentrt bench`: prefill and decode speed of the default model on this machine.
//!
//! Prefill runs the whole prompt through one forward pass; decode generates greedily one token at
//! a time. The best of several runs is reported, with the peak resident memory.

use std::time::Instant;

use serde_json::json;

use crate::cli::{CliError, RuntimeOpts, load_engine};
use crate::error_code::ErrorCode;

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(
    opts: &RuntimeOpts,
    prompt_tokens: usize,
    decode_tokens: usize,
    runs: usize,
) -> Result<(), CliError> {
    let engine = load_engine(opts)?;
    let model = engine.model(None).map_err(|e| CliError {
        code: e.code().as_str(),
        message: e.to_string(),
    })?;
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
    let value = json!({
        "model": model.info.id,
        "prompt_tokens": ids.len(),
        "decode_tokens": decode_tokens,
        "threads": threads,
        "prefill_tokens_per_second": (best_prefill * 10.0).round() / 10.0,
        "decode_tokens_per_second": (best_decode * 10.0).round() / 10.0,
        "peak_rss_mib": rss / (1 << 20),
    });
    if opts.json {
        println!("{value}");
    } else {
        println!(
            "{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), {} threads, peak RSS {} MiB",
            model.info.id,
            best_prefill,
            ids.len(),
            best_decode,
            decode_tokens,
            threads,
            rss >> 20
        );
    }
    Ok(())
}
