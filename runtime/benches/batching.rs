//! Continuous batching in the engine, without HTTP: aggregate decode throughput of N concurrent
//! generations on the default model with batching on (up to 8 sequences per pass) and off (one
//! request at a time), and the passes the scheduler ran.
//!
//! Run: `cargo bench --bench batching` (release build; `AGENTRT_BENCH_TOKENS` tokens per
//! request, default 64; `AGENTRT_BENCH_PASSES=1` first times single passes of 1–16 sequences;
//! `AGENTRT_BENCH_PROFILE=N` times only passes of N sequences, to run under a profiler;
//! `AGENTRT_BENCH_CONTEXT` the positions already cached in those passes, default 64;
//! `AGENTRT_BENCH_STREAMS=N` runs only N concurrent generations, five times, for a profiler or
//! an A/B of two builds).

use std::sync::Arc;
use std::time::Instant;

use agentrt::engine::models::Segment;
use agentrt::engine::{BatchLimits, Control, Generation, LoadedModel, Prompt, SamplingParams};

/// Code prompts: a code model keeps going on these rather than stopping after a sentence.
const PROMPTS: [&str; 8] = [
    "def fibonacci(n):",
    "class LinkedList:\n    def __init__(self):",
    "def parse_csv(path):\n    \"\"\"Read a CSV file",
    "import json\n\ndef load_config(path):",
    "def quicksort(items):",
    "def is_prime(n):\n    if n < 2:",
    "class Stack:\n    def push(self, item):",
    "def word_count(text):",
];

fn run(model: &Arc<LoadedModel>, streams: usize, tokens: u32) -> (f64, u64, f64) {
    let params = SamplingParams {
        max_tokens: tokens,
        ..SamplingParams::default()
    };
    let started = Instant::now();
    let generations: Vec<Generation> = (0..streams)
        .map(|i| {
            model
                .start(
                    &Prompt::Text(PROMPTS[i % PROMPTS.len()].into()),
                    &params,
                    &Control::default(),
                )
                .expect("queued")
        })
        .collect();
    let handles: Vec<_> = generations
        .into_iter()
        .map(|g| {
            std::thread::spawn(move || {
                let began = Instant::now();
                let done = g.finish(&mut |_| {}).expect("generation");
                (done.usage.completion_tokens, began.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut total = 0u64;
    let mut slowest = 0f64;
    for h in handles {
        let (n, secs) = h.join().expect("thread");
        total += u64::from(n);
        slowest = slowest.max(secs);
    }
    let wall = started.elapsed().as_secs_f64();
    (total as f64 / wall, total, slowest)
}

/// Milliseconds of one decode pass of `batch` sequences (each `AGENTRT_BENCH_CONTEXT`
/// positions in, default 64), best of 20.
fn pass_ms(model: &LoadedModel, batch: usize) -> f64 {
    let context: u32 = std::env::var("AGENTRT_BENCH_CONTEXT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut caches: Vec<_> = (0..batch)
        .map(|_| model.new_test_cache(context as usize + 40))
        .collect();
    let prompt: Vec<u32> = (0..context).map(|i| 100 + i % 1000).collect();
    for c in &mut caches {
        model.forward_for_test(&prompt, c);
    }
    let tokens: Vec<[u32; 1]> = (0..batch).map(|i| [200 + i as u32]).collect();
    let mut best = f64::MAX;
    for _ in 0..20 {
        let mut segments: Vec<Segment<'_>> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, t)| Segment { tokens: t, cache })
            .collect();
        let started = Instant::now();
        model.forward_batch_for_test(&mut segments);
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn main() {
    let tokens: u32 = std::env::var("AGENTRT_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let path = agentrt::paths::default_model();
    let load = |limits| {
        Arc::new(
            LoadedModel::load("smollm2", &path, &mut |_| {})
                .expect("default model (run scripts/setup.sh)")
                .with_batch_limits(limits),
        )
    };
    // Without prefix reuse: every generation here prefills its whole prompt, so the figures
    // measure the passes themselves.
    let on = load(BatchLimits {
        max_batch: 8,
        queue: 64,
        prefix_cache: 0,
        ..BatchLimits::default()
    });
    let off = load(BatchLimits {
        max_batch: 1,
        queue: 64,
        prefix_cache: 0,
        ..BatchLimits::default()
    });
    run(&on, 2, 8); // warm-up: pages the weights in
    // `AGENTRT_BENCH_PROFILE=N`: only decode passes of N sequences, for a profiler.
    if let Some(batch) = std::env::var("AGENTRT_BENCH_PROFILE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for _ in 0..10 {
            println!(
                "one pass of {batch} sequences: {:.2} ms",
                pass_ms(&on, batch)
            );
        }
        return;
    }
    // `AGENTRT_BENCH_STREAMS=N`: only generations of N streams, batching on.
    if let Some(streams) = std::env::var("AGENTRT_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for _ in 0..5 {
            let before = on.batch_stats().steps;
            let (rate, total, slowest) = run(&on, streams, tokens);
            let passes = on.batch_stats().steps - before;
            println!(
                "{streams} streams: {rate:.1} tok/s ({total} tokens, slowest {slowest:.2} s, {passes} passes)"
            );
        }
        return;
    }
    if std::env::var_os("AGENTRT_BENCH_PASSES").is_some() {
        for batch in [1, 2, 4, 8, 16] {
            let ms = pass_ms(&on, batch);
            println!(
                "one pass of {batch:>2} sequences: {ms:.2} ms ({:.1} tok/s)",
                batch as f64 * 1e3 / ms
            );
        }
    }
    println!(
        "{} on {} threads, {tokens} tokens per request, greedy",
        on.info.id,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| streams | batching | aggregate tok/s | tokens | slowest request s | passes |");
    println!("|---|---|---|---|---|---|");
    let mut single = 0.0;
    for (model, label, streams) in [
        (&on, "on", 1),
        (&on, "on", 2),
        (&on, "on", 4),
        (&on, "on", 8),
        (&off, "off", 8),
    ] {
        let before = model.batch_stats().steps;
        let (rate, total, slowest) = run(model, streams, tokens);
        let passes = model.batch_stats().steps - before;
        if streams == 1 {
            single = rate;
        }
        println!(
            "| {streams} | {label} | {rate:.1} ({:.2}× one stream) | {total} | {slowest:.2} | {passes} |",
            rate / single
        );
    }
}
