//! Batch-1 decode on the GPU: tokens/s and the share of the card's memory bandwidth it uses,
//! for a starcoderbase-1b-shaped fp16 checkpoint (random weights, written here) and SmolLM2.
//!
//! `cargo bench --features cuda --bench gpu` (scripts/gpu-check.sh runs it with HF
//! transformers beside it). Bandwidth is measured here too: a device-to-device copy, counting
//! bytes read plus bytes written. Utilisation = bytes a decode step reads (weights + KV cache)
//! × tokens/s ÷ that bandwidth. Prints a table and one JSON line per model, after the
//! weight-streaming probes (gpu/probe.rs): what kernels that only read the 1B shape's weights
//! reach, launched as the engine launches its GEMVs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agentrt::engine::cuda::CudaModel;
use agentrt::engine::models::Next;
use agentrt::engine::quant::GgmlType;
use agentrt::engine::sampling::Choice;
use agentrt::engine::synthetic::SyntheticSpec;
use cudarc::driver::CudaContext;

#[path = "gpu/probe.rs"]
mod probe;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Device-to-device copy bandwidth in bytes/s (read + write), median of 20 copies of 2 GiB.
fn copy_bandwidth() -> f64 {
    let ctx = CudaContext::new(0).expect("context");
    let stream = ctx.new_stream().expect("stream");
    let n = 1usize << 29; // f32 elements: 2 GiB
    let src = stream.alloc_zeros::<f32>(n).expect("alloc");
    let mut dst = stream.alloc_zeros::<f32>(n).expect("alloc");
    stream.memcpy_dtod(&src, &mut dst).expect("warm-up copy");
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut times = Vec::new();
    for _ in 0..20 {
        let a = stream.record_event(flags).expect("event");
        stream.memcpy_dtod(&src, &mut dst).expect("copy");
        let b = stream.record_event(flags).expect("event");
        times.push(a.elapsed_ms(&b).expect("elapsed") as f64 / 1e3);
    }
    times.sort_by(f64::total_cmp);
    (2 * n * 4) as f64 / times[times.len() / 2]
}

struct Run {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    bytes_per_token: f64,
}

/// Run `tokens` at `pos` and take the greedy token on the device.
fn greedy(model: &CudaModel, tokens: &[u32], pos: usize) -> u32 {
    match model.choose(tokens, pos, &Choice::greedy(), model.spec.vocab) {
        Ok(Next::Token(t)) => t,
        other => panic!("greedy decode on the GPU: {other:?}"),
    }
}

fn bench(model: &CudaModel, prompt_len: usize, decode: usize) -> Run {
    let vocab = model.spec.vocab as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    // Warm-up: graph capture for every attention bucket this run will touch, PTX loading.
    let mut next = greedy(model, &prompt, 0);
    for i in 0..decode {
        next = greedy(model, &[next], prompt_len + i);
    }
    let t = Instant::now();
    let mut next = greedy(model, &prompt, 0);
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..decode {
        next = greedy(model, &[next], prompt_len + i);
    }
    let elapsed = t.elapsed().as_secs_f64();
    let bytes: u64 = (0..decode)
        .map(|i| model.decode_bytes(prompt_len + i))
        .sum();
    Run {
        prefill_tok_s: prompt_len as f64 / prefill,
        decode_tok_s: decode as f64 / elapsed,
        bytes_per_token: bytes as f64 / decode as f64,
    }
}

fn starcoder_1b_dir() -> PathBuf {
    let dir = std::env::var_os("AGENTRT_BENCH_1B_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| agentrt::paths::home().join("bench/starcoderbase-1b-f16"));
    if !dir.join("config.json").exists() {
        eprintln!(
            "writing a random starcoderbase-1b-shaped fp16 checkpoint to {}",
            dir.display()
        );
        SyntheticSpec::starcoderbase_1b(GgmlType::F16)
            .write(&dir)
            .expect("write checkpoint");
    }
    dir
}

fn main() {
    if let Err(why) = agentrt_kernels::cuda_available() {
        println!("skipped: {why}");
        return;
    }
    let prompt_len = env_usize("AGENTRT_BENCH_PROMPT", 128);
    let decode = env_usize("AGENTRT_BENCH_DECODE", 256);
    let bandwidth = copy_bandwidth();
    // The weight-streaming probes first (a second or two; AGENTRT_BENCH_PROBE=0 skips them).
    if std::env::var("AGENTRT_BENCH_PROBE").as_deref() != Ok("0") {
        probe::report(bandwidth);
    }
    // AGENTRT_BENCH_MODELS: "1b", "smollm2" or both (the default).
    let which = std::env::var("AGENTRT_BENCH_MODELS").unwrap_or_else(|_| "1b,smollm2".into());
    let mut models: Vec<(&str, PathBuf)> = Vec::new();
    if which.contains("1b") {
        models.push(("starcoderbase-1b shape, fp16", starcoder_1b_dir()));
    }
    let smollm2 = agentrt::paths::default_model();
    if !which.contains("smollm2") {
    } else if smollm2.exists() {
        models.push(("SmolLM2-135M Q4_1 (fp16 on GPU)", smollm2));
    } else {
        eprintln!("SmolLM2 not installed at {}: skipped", smollm2.display());
    }
    let mut rows = Vec::new();
    for (label, path) in &models {
        let t = Instant::now();
        let model = CudaModel::open(Path::new(path)).expect("load on GPU");
        let load_s = t.elapsed().as_secs_f64();
        let run = bench(&model, prompt_len, decode);
        let util = run.bytes_per_token * run.decode_tok_s / bandwidth;
        println!(
            "{{\"model\":\"{label}\",\"device\":\"{}\",\"load_s\":{load_s:.2},\"prompt\":{prompt_len},\"decode\":{decode},\"fused_blocks\":{},\"prefill\":\"{}\",\"prefill_tok_s\":{:.1},\"decode_tok_s\":{:.1},\"bytes_per_token\":{:.0},\"copy_bandwidth_gb_s\":{:.1},\"bandwidth_utilisation\":{util:.3}}}",
            model.device_name,
            model.fused_decode_blocks().unwrap_or(0),
            if model.prefill_uses_cublas() {
                "cublas"
            } else {
                "gemv"
            },
            run.prefill_tok_s,
            run.decode_tok_s,
            run.bytes_per_token,
            bandwidth / 1e9
        );
        rows.push((label.to_string(), model.device_name.clone(), run, util));
    }
    println!(
        "\ncopy bandwidth (read + write): {:.0} GB/s",
        bandwidth / 1e9
    );
    println!(
        "| model | device | prefill tok/s | decode tok/s | MB read / token | bandwidth used |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (label, device, run, util) in rows {
        println!(
            "| {label} | {device} | {:.0} | {:.1} | {:.1} | {:.1} % |",
            run.prefill_tok_s,
            run.decode_tok_s,
            run.bytes_per_token / 1e6,
            util * 100.0
        );
    }
}
