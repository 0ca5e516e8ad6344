//! Load test of `agentrt serve` on loopback, bounded (it stops by itself):
//!
//! 1. Chat: the same `8 × AGENTRT_LOAD_REQUESTS` (24) streamed chat completions of up to
//!    `AGENTRT_LOAD_TOKENS` (64) greedy tokens, each a different task (a code assistant's
//!    requests: they share the chat template's system turn and often their first words, never
//!    the whole prompt), sent by one client one after another and by eight clients at once,
//!    against a server with continuous batching on (`AGENTRT_MAX_BATCH=8`) and off (`=1`), and
//!    with prefix reuse on (the default) and off (`AGENTRT_PREFIX_CACHE_MB=0`): aggregate
//!    generated tokens/s, time to first token and request latency (p50/p99). One client and
//!    eight take `AGENTRT_LOAD_REPEATS` (3) turns each, alternating, on fresh servers; the table
//!    shows the median run of each and every turn's ratio follows it.
//! 2. Pipeline runs: twice the run queue's capacity submitted at once to a server whose queue
//!    holds `AGENTRT_LOAD_RUN_QUEUE` (4): every submission must get a run (202) or a 429, and every
//!    accepted run must end with a stored result — none lost.
//! 3. A long prompt beside a stream: while one answer streams, a prompt of about
//!    `AGENTRT_LOAD_LONG` (3000) tokens arrives; the longest wait between the stream's pieces,
//!    with the prompt read `AGENTRT_PREFILL_CHUNK` tokens a pass (256) and in one pass.
//!
//! Run: `cargo bench --bench load` (release build; the default model from scripts/setup.sh, or
//! `AGENTRT_LOAD_MODEL=PATH` for another, e.g. a folder from `agentrt synth tiny-starcoder`).
//! `AGENTRT_LOAD_PARTS` picks parts (default `chat,runs,long`; `AGENTRT_LOAD_RUNS=0` also
//! skips the pipeline part).
//! Prints Markdown tables for docs/BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Tasks a code assistant gets: long enough answers that few stop before the token limit.
/// Request `k` asks for task `k % 8` under a name of its own, so no two prompts are equal.
const TASKS: [&str; 8] = [
    "Write a Python function that parses a CSV file into a list of dictionaries.",
    "Write a Python class for a stack with push, pop and peek.",
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that merges two sorted lists.",
    "Write a Python function that counts the words in a text file.",
    "Write a Python function that reverses a linked list.",
    "Write a Python function that computes the Fibonacci numbers up to n.",
    "Write a Python function that validates an email address with a regular expression.",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `agentrt serve` on a free loopback port with its own store; killed on drop.
struct Server {
    child: Child,
    base: String,
    store: PathBuf,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let model: Vec<String> = std::env::var("AGENTRT_LOAD_MODEL")
            .map(|m| vec!["--model".to_string(), m])
            .unwrap_or_default();
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store =
            std::env::temp_dir().join(format!("agentrt-load-{}-{n}.db", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_agentrt"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&model)
            .env("AGENTRT_STORE", &store)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agentrt serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("agentrt listening on ") {
                        break url.trim().to_string();
                    }
                }
                _ => panic!("agentrt serve exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        // Listening comes before the model is loaded: wait for ready.
        let deadline = Instant::now() + Duration::from_secs(300);
        while agent()
            .get(&format!("{base}/health/ready"))
            .call()
            .map_or(true, |r| r.status().as_u16() != 200)
        {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, base, store }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.store.display()));
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// Whether the model has a chat template (else the load is text completions of the same tasks).
fn supports_chat(base: &str) -> bool {
    let body = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    agent()
        .post(&format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .is_ok_and(|r| r.status().as_u16() == 200)
}

/// One streamed chat (or text) completion: (time to first text, whole latency, generated
/// tokens).
fn streamed_chat(
    base: &str,
    task: &str,
    max_tokens: usize,
    chat: bool,
) -> (Duration, Duration, u64) {
    streamed_chat_watched(base, task, max_tokens, chat, &mut || {})
}

/// [`streamed_chat`], calling `on_text` as each piece of text arrives.
fn streamed_chat_watched(
    base: &str,
    task: &str,
    max_tokens: usize,
    chat: bool,
    on_text: &mut dyn FnMut(),
) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let mut body = json!({
        "model": "default",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let route = if chat {
        body["messages"] = json!([{"role": "user", "content": task}]);
        "chat/completions"
    } else {
        body["prompt"] = json!(task);
        "completions"
    };
    let mut resp = agent()
        .post(&format!("{base}/v1/{route}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("completion request");
    assert_eq!(resp.status().as_u16(), 200, "completion answered");
    let reader = BufReader::new(resp.body_mut().as_reader());
    let mut first = None;
    let mut tokens = 0;
    for line in reader.lines() {
        let line = line.expect("read stream");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).expect("chunk JSON");
        let choice = &chunk["choices"][0];
        let text = choice["delta"]["content"]
            .as_str()
            .or(choice["text"].as_str())
            .unwrap_or("");
        if !text.is_empty() {
            on_text();
            if first.is_none() {
                first = Some(started.elapsed());
            }
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n;
        }
    }
    let total = started.elapsed();
    (first.unwrap_or(total), total, tokens)
}

/// Forward passes the server has run and the sequences they held, from `/metrics`
/// (`agentrt_batch_size`, summed over models).
fn batch_totals(base: &str) -> (f64, f64) {
    let mut resp = agent()
        .get(&format!("{base}/metrics"))
        .call()
        .expect("metrics");
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let total = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        total("agentrt_batch_size_count"),
        total("agentrt_batch_size_sum"),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct ChatFigures {
    tokens_per_s: f64,
    tokens: u64,
    requests: usize,
    ttft_p50: f64,
    latency_p50: f64,
    latency_p99: f64,
}

/// The load's requests: every task under several names.
fn requests(count: usize) -> Vec<String> {
    (0..count)
        .map(|k| {
            let task = TASKS[k % TASKS.len()];
            format!("{task} Call it `solution_{k}`.")
        })
        .collect()
}

/// `requests` sent by `streams` clients at once, client `c` sending requests `c`, `c +
/// streams`, … one after another.
fn chat_load(
    base: &str,
    streams: usize,
    requests: &[String],
    max_tokens: usize,
    chat: bool,
) -> ChatFigures {
    let started = Instant::now();
    let clients: Vec<_> = (0..streams)
        .map(|c| {
            let base = base.to_string();
            let mine: Vec<String> = requests.iter().skip(c).step_by(streams).cloned().collect();
            std::thread::spawn(move || {
                mine.iter()
                    .map(|task| streamed_chat(&base, task, max_tokens, chat))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<(Duration, Duration, u64)> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client"))
        .collect();
    let wall = started.elapsed().as_secs_f64();
    let tokens: u64 = results.iter().map(|r| r.2).sum();
    let mut ttft: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64()).collect();
    let mut latency: Vec<f64> = results.iter().map(|r| r.1.as_secs_f64()).collect();
    ttft.sort_by(f64::total_cmp);
    latency.sort_by(f64::total_cmp);
    ChatFigures {
        tokens_per_s: tokens as f64 / wall,
        tokens,
        requests: results.len(),
        ttft_p50: percentile(&ttft, 50.0),
        latency_p50: percentile(&latency, 50.0),
        latency_p99: percentile(&latency, 99.0),
    }
}

/// Part 3 on a server reading prompts `chunk` tokens a pass: an answer of up to 256 tokens
/// streams; once its first piece is in, a prompt of about `long_tokens` tokens asks for one.
/// Returns (the stream's pieces, its longest wait between two, its whole latency, the long
/// request's latency), in seconds.
fn long_prompt_beside_a_stream(long_tokens: usize, chunk: &str) -> (usize, f64, f64, f64) {
    let server = Server::start(&[("AGENTRT_PREFILL_CHUNK", chunk)]);
    let chat = supports_chat(&server.base);
    streamed_chat(&server.base, "Say hello.", 8, chat);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let base = server.base.clone();
    let streamer = std::thread::spawn(move || {
        let mut arrivals = Vec::new();
        let (_, whole, _) = streamed_chat_watched(
            &base,
            "Write a Python module with ten small utility functions, each with a docstring.",
            256,
            chat,
            &mut || {
                if arrivals.is_empty() {
                    let _ = started_tx.send(());
                }
                arrivals.push(Instant::now());
            },
        );
        (arrivals, whole)
    });
    started_rx.recv().expect("the stream started");
    // About 12 tokens a definition with the default model's tokenizer.
    let long: String = (0..long_tokens / 12)
        .map(|i| format!("def f_{i}(x):\n    return x * {i}\n\n"))
        .collect();
    let body = json!({"model": "default", "prompt": long, "max_tokens": 1, "temperature": 0});
    let t = Instant::now();
    let resp = agent()
        .post(&format!("{}/v1/completions", server.base))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("long request");
    assert_eq!(resp.status().as_u16(), 200, "the long prompt was answered");
    let long_latency = t.elapsed().as_secs_f64();
    let (arrivals, whole) = streamer.join().expect("streamer");
    let longest = arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    (arrivals.len(), longest, whole.as_secs_f64(), long_latency)
}

/// Submit `count` runs at once; wait for every accepted one to end. Returns
/// (accepted, refused with 429, other answers, ended by state, lost, seconds).
fn pipeline_burst(
    base: &str,
    count: usize,
) -> (usize, usize, usize, Vec<(String, usize)>, usize, f64) {
    let started = Instant::now();
    let submissions: Vec<_> = (0..count)
        .map(|i| {
            let base = base.to_string();
            std::thread::spawn(move || {
                let body = json!({"task_description": TASKS[i % TASKS.len()]});
                let mut resp = agent()
                    .post(&format!("{base}/v1/pipeline/runs"))
                    .header("content-type", "application/json")
                    .send(body.to_string())
                    .expect("submit run");
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").is_some();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                (status, retry_after, v["id"].as_str().map(str::to_string))
            })
        })
        .collect();
    let answers: Vec<_> = submissions
        .into_iter()
        .map(|h| h.join().expect("submitter"))
        .collect();
    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.0 == 202)
        .filter_map(|a| a.2.clone())
        .collect();
    let refused = answers.iter().filter(|a| a.0 == 429 && a.1).count();
    let other = answers.len() - accepted.len() - refused;
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    let mut lost = 0;
    for id in &accepted {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let mut resp = agent()
                .get(&format!("{base}/v1/pipeline/runs/{id}"))
                .call()
                .expect("get run");
            let run: Value =
                serde_json::from_str(&resp.body_mut().read_to_string().unwrap_or_default())
                    .unwrap_or(Value::Null);
            let state = run["state"].as_str().unwrap_or("missing").to_string();
            if matches!(state.as_str(), "completed" | "failed" | "cancelled") {
                // An ended run must carry what it ended with.
                if run["result"].is_null() && run["error"].is_null() {
                    lost += 1;
                }
                // A failed run is an answer, not a loss; say why it failed.
                let error = &run["error"];
                let error = if error.is_null() {
                    &run["result"]["error"]
                } else {
                    error
                };
                if let Some(code) = error["code"].as_str() {
                    eprintln!("run {id} {state}: {code} {}", error["message"]);
                }
                *states.entry(state).or_default() += 1;
                break;
            }
            if state == "missing" || Instant::now() > deadline {
                lost += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    (
        accepted.len(),
        refused,
        other,
        states.into_iter().collect(),
        lost,
        started.elapsed().as_secs_f64(),
    )
}

fn main() {
    let per_stream = env_usize("AGENTRT_LOAD_REQUESTS", 3);
    let max_tokens = env_usize("AGENTRT_LOAD_TOKENS", 64);
    let run_queue = env_usize("AGENTRT_LOAD_RUN_QUEUE", 4);
    let repeats = env_usize("AGENTRT_LOAD_REPEATS", 3).max(1);
    let parts = std::env::var("AGENTRT_LOAD_PARTS").unwrap_or_else(|_| "chat,runs,long".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("chat") {
        chat_part(per_stream, max_tokens, repeats);
    }
    let runs_off = std::env::var("AGENTRT_LOAD_RUNS").is_ok_and(|v| v == "0");
    if part("runs") && run_queue > 0 && !runs_off {
        runs_part(run_queue);
    }
    if part("long") {
        let long_tokens = env_usize("AGENTRT_LOAD_LONG", 3000);
        println!(
            "A prompt of about {long_tokens} tokens (max_tokens 1) sent while one answer streams (up to 256 tokens):"
        );
        println!();
        println!(
            "| prompt read | stream pieces | longest wait between pieces s | stream latency s | long request latency s |"
        );
        println!("|---|---|---|---|---|");
        for (label, chunk) in [("256 tokens a pass", "256"), ("in one pass", "1000000")] {
            let (pieces, longest, stream, latency) =
                long_prompt_beside_a_stream(long_tokens, chunk);
            println!("| {label} | {pieces} | {longest:.2} | {stream:.2} | {latency:.2} |");
        }
    }
}

/// Part 1: chat load, one client and eight, batching and prefix reuse on and off.
fn chat_part(per_stream: usize, max_tokens: usize, repeats: usize) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::env::var("AGENTRT_LOAD_MODEL").unwrap_or_else(|_| "the default model".into());
    let load = requests(8 * per_stream);
    println!(
        "agentrt serve on loopback, {model}, {cores} CPU threads; the same {} streamed chats (text completions for a model without a chat template), greedy, up to {max_tokens} tokens, from one client in turn and from eight at once",
        load.len()
    );
    println!();
    println!(
        "| clients | batching | prefix reuse | requests | tokens | aggregate tok/s | × one client | sequences per pass | TTFT p50 s | latency p50 s | latency p99 s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // The VM this runs on drifts in speed over minutes, so one client and eight take turns
    // `repeats` times on fresh servers and each row is the run of median throughput; the
    // ratio is of the medians (each turn's own ratio is printed after the table).
    let mut turns = Vec::new();
    for prefix_mb in ["256", "0"] {
        let reuse = if prefix_mb == "0" { "off" } else { "on" };
        let run = |max_batch: &str, streams: usize| {
            let server = Server::start(&[
                ("AGENTRT_MAX_BATCH", max_batch),
                ("AGENTRT_PREFIX_CACHE_MB", prefix_mb),
            ]);
            let chat = supports_chat(&server.base);
            // Warm-up (weights paged in) with a prompt unlike the load's.
            streamed_chat(&server.base, "Say hello.", 8, chat);
            let (passes0, sequences0) = batch_totals(&server.base);
            let f = chat_load(&server.base, streams, &load, max_tokens, chat);
            let (passes, sequences) = batch_totals(&server.base);
            let per_pass = (sequences - sequences0) / (passes - passes0).max(1.0);
            (f, per_pass)
        };
        let mut single = Vec::new();
        let mut batched = Vec::new();
        for _ in 0..repeats {
            single.push(run("8", 1));
            batched.push(run("8", 8));
        }
        let ratios: Vec<String> = single
            .iter()
            .zip(&batched)
            .map(|(a, b)| format!("{:.2}×", b.0.tokens_per_s / a.0.tokens_per_s))
            .collect();
        turns.push(format!("prefix reuse {reuse}: {}", ratios.join(", ")));
        let median = |runs: &mut Vec<(ChatFigures, f64)>| {
            runs.sort_by(|a, b| a.0.tokens_per_s.total_cmp(&b.0.tokens_per_s));
            runs.swap_remove(runs.len() / 2)
        };
        let one = median(&mut single);
        let eight = median(&mut batched);
        let mut rows = vec![("on", 1, one), ("on", 8, eight)];
        if reuse == "on" {
            rows.push(("off", 8, run("1", 8)));
        }
        let base = rows[0].2.0.tokens_per_s;
        for (label, streams, (f, per_pass)) in rows {
            println!(
                "| {streams} | {label} | {reuse} | {} | {} | {:.1} | {:.2}× | {per_pass:.2} | {:.2} | {:.2} | {:.2} |",
                f.requests,
                f.tokens,
                f.tokens_per_s,
                f.tokens_per_s / base,
                f.ttft_p50,
                f.latency_p50,
                f.latency_p99
            );
        }
    }
    println!();
    println!(
        "Eight clients over one, turn by turn ({repeats} turns): {}",
        turns.join("; ")
    );
    println!();
}

/// Part 2: a burst of pipeline runs against a small run queue; none may be lost.
fn runs_part(run_queue: usize) {
    let queue = run_queue.to_string();
    let server = Server::start(&[("AGENTRT_RUN_QUEUE", queue.as_str())]);
    let submitted = 2 * run_queue;
    let (accepted, refused, other, states, lost, secs) = pipeline_burst(&server.base, submitted);
    let ended: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "| run queue | submitted at once | accepted (202) | refused (429 + Retry-After) | other answers | ended | lost | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {run_queue} | {submitted} | {accepted} | {refused} | {other} | {} | {lost} | {secs:.1} |",
        ended.join(", ")
    );
    assert_eq!(other, 0, "every submission got a run or a 429");
    assert_eq!(lost, 0, "every accepted run ended with its result");
    println!();
}
