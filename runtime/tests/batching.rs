//! Continuous batching: a batched forward pass gives every sequence exactly the logits it gets
//! alone (the default model in Q4_1, a Llama-shaped F16 checkpoint with grouped-query attention
//! and a StarCoder-shaped F32 one), and the scheduler serves concurrent requests with the same
//! answers as one at a time, joins newcomers between passes, frees the place of a cancelled or
//! abandoned request, and refuses work beyond its queue with QUEUE_001. A prompt that starts
//! like an earlier one reuses that one's keys and values with the same logits and answers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentrt::engine::models::{Architecture, Segment};
use agentrt::engine::quant::GgmlType;
use agentrt::engine::synthetic::SyntheticSpec;
use agentrt::engine::{
    BatchLimits, Control, EngineError, Generation, LoadedModel, Prompt, SamplingParams,
};
use agentrt::error_code::ErrorCode;

fn synthetic(dir: &Path, arch: Architecture, dtype: GgmlType, n_kv_head: usize) -> LoadedModel {
    let spec = SyntheticSpec {
        arch,
        n_layer: 2,
        dim: 64,
        n_head: 4,
        n_kv_head,
        ffn_dim: 128,
        vocab: 320,
        context: 1024,
        dtype,
        separate_head: false,
        seed: 7,
    };
    spec.write(dir).expect("write checkpoint");
    LoadedModel::load("synthetic", dir, &mut |_| {}).expect("load checkpoint")
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("agentrt-batching-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Three sequences: two start together, the third joins (its whole prompt) while the others
/// decode; every logit must equal the same sequence run alone, bit for bit.
fn assert_batched_equals_alone(model: &LoadedModel) {
    let prompts: [Vec<u32>; 3] = [
        vec![1, 40, 41, 42, 43],
        vec![7, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69],
        vec![9, 80, 81],
    ];
    let decode = |seq: usize, step: usize| (10 + seq * 37 + step * 11) as u32 % 250 + 3;
    const STEPS: usize = 4;
    // Alone: the prompt, then STEPS single tokens.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut cache = model.new_test_cache(p.len() + STEPS);
        let mut seq = vec![model.forward_for_test(p, &mut cache)];
        for k in 0..STEPS {
            seq.push(model.forward_for_test(&[decode(i, k)], &mut cache));
        }
        alone.push(seq);
    }
    // Batched: sequences 0 and 1 from the first pass, 2 joining at the second.
    let mut caches: Vec<_> = prompts
        .iter()
        .map(|p| model.new_test_cache(p.len() + STEPS))
        .collect();
    let mut seen: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    let mut step_of = [0usize; 3];
    for pass in 0..=STEPS + 1 {
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::new();
        for seq in 0..3 {
            let starts = if seq == 2 { 1 } else { 0 };
            if pass < starts || seen[seq].len() > STEPS {
                continue;
            }
            let tokens = if seen[seq].is_empty() {
                prompts[seq].clone()
            } else {
                vec![decode(seq, step_of[seq])]
            };
            if !seen[seq].is_empty() {
                step_of[seq] += 1;
            }
            inputs.push((seq, tokens));
        }
        let mut pending: Vec<(usize, &Vec<u32>, &mut _)> = Vec::new();
        let mut rest: Vec<Option<&mut _>> = caches.iter_mut().map(Some).collect();
        for (seq, tokens) in &inputs {
            pending.push((*seq, tokens, rest[*seq].take().expect("one use per pass")));
        }
        let mut segments: Vec<Segment<'_>> = pending
            .iter_mut()
            .map(|(_, tokens, cache)| Segment {
                tokens: tokens.as_slice(),
                cache,
            })
            .collect();
        let logits = model.forward_batch_for_test(&mut segments);
        assert_eq!(logits.len(), inputs.len());
        for ((seq, _), l) in inputs.iter().zip(logits) {
            seen[*seq].push(l);
        }
    }
    for seq in 0..3 {
        assert_eq!(seen[seq].len(), STEPS + 1, "sequence {seq} ran every step");
        for (step, (a, b)) in alone[seq].iter().zip(&seen[seq]).enumerate() {
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                same_bits(a, b),
                "{}: sequence {seq} step {step}: batched logits differ from alone (max |Δ| {worst})",
                model.info.id
            );
        }
    }
}

#[test]
fn batched_passes_equal_single_passes_on_the_default_model() {
    let path = agentrt::paths::default_model();
    assert!(
        path.exists(),
        "default model missing at {} — run scripts/setup.sh first",
        path.display()
    );
    let model = LoadedModel::load("smollm2", &path, &mut |_| {}).expect("load");
    assert_batched_equals_alone(&model);
}

#[test]
fn batched_passes_equal_single_passes_on_llama_and_starcoder_shapes() {
    let dir = temp_dir("shapes");
    let llama = synthetic(&dir.join("llama"), Architecture::Llama, GgmlType::F16, 2);
    assert_batched_equals_alone(&llama);
    let starcoder = synthetic(
        &dir.join("starcoder"),
        Architecture::GptBigCode,
        GgmlType::F32,
        1,
    );
    assert_batched_equals_alone(&starcoder);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prompt whose first `shared` tokens come from another sequence's cache: every logit, of
/// the rest of the prompt and of the decode steps after it, equals a full prefill's bit for bit,
/// alone and in batched passes beside a fresh prompt.
fn assert_reused_prefix_equals_prefill(model: &LoadedModel) {
    let earlier: Vec<u32> = (0..13).map(|i| 40 + i).collect();
    let shared = 9;
    let mut prompt = earlier[..shared].to_vec();
    prompt.extend([90, 91, 92, 93]);
    let steps = [5u32, 77, 31];

    let mut full = model.new_test_cache(prompt.len() + steps.len());
    let mut expected = vec![model.forward_for_test(&prompt, &mut full)];
    for t in steps {
        expected.push(model.forward_for_test(&[t], &mut full));
    }

    let mut earlier_cache = model.new_test_cache(earlier.len());
    model.forward_for_test(&earlier, &mut earlier_cache);
    let kept = earlier_cache.snapshot(earlier.len()).expect("a host cache");
    let mut cache = model.new_test_cache(prompt.len() + steps.len());
    assert!(cache.copy_prefix(&kept, shared));
    let mut seen = vec![model.forward_for_test(&prompt[shared..], &mut cache)];
    for t in steps {
        seen.push(model.forward_for_test(&[t], &mut cache));
    }
    for (step, (a, b)) in expected.iter().zip(&seen).enumerate() {
        assert!(
            same_bits(a, b),
            "{}: step {step}: logits after a reused prefix differ from a full prefill",
            model.info.id
        );
    }

    // The same in a batched pass beside a newcomer's whole prompt (as the scheduler runs a
    // reused prompt next to a fresh one), then their decode steps together: each sequence's
    // logits are those it has alone.
    let other: Vec<u32> = vec![7, 200, 201, 202, 203, 204];
    let mut other_alone = model.new_test_cache(other.len() + steps.len());
    let mut other_expected = vec![model.forward_for_test(&other, &mut other_alone)];
    for t in steps {
        other_expected.push(model.forward_for_test(&[t], &mut other_alone));
    }
    let mut cache = model.new_test_cache(prompt.len() + steps.len());
    assert!(cache.copy_prefix(&kept, shared));
    let mut other_cache = model.new_test_cache(other.len() + steps.len());
    let mut inputs = (prompt[shared..].to_vec(), other.clone());
    for step in 0..=steps.len() {
        let mut segments = [
            Segment {
                tokens: &inputs.0,
                cache: &mut cache,
            },
            Segment {
                tokens: &inputs.1,
                cache: &mut other_cache,
            },
        ];
        let logits = model.forward_batch_for_test(&mut segments);
        assert!(
            same_bits(&logits[0], &expected[step]),
            "{}: step {step}: a reused prefix in a batched pass differs from a full prefill",
            model.info.id
        );
        assert!(
            same_bits(&logits[1], &other_expected[step]),
            "{}: step {step}: a fresh prompt beside a reused one differs from alone",
            model.info.id
        );
        if let Some(&t) = steps.get(step) {
            inputs = (vec![t], vec![t]);
        }
    }
}

/// Equal to the bit (so -0.0 and 0.0 differ, and a NaN equals the same NaN).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn a_reused_prefix_gives_the_logits_of_a_full_prefill() {
    let path = agentrt::paths::default_model();
    if path.exists() {
        let model = LoadedModel::load("smollm2", &path, &mut |_| {}).expect("default model");
        assert_reused_prefix_equals_prefill(&model);
    } else {
        eprintln!("default model not set up (scripts/setup.sh): checking synthetic shapes only");
    }
    for (name, arch, dtype, kv) in [
        ("llama", Architecture::Llama, GgmlType::F16, 2),
        ("starcoder", Architecture::GptBigCode, GgmlType::F32, 1),
    ] {
        let dir = temp_dir(&format!("prefix-{name}"));
        assert_reused_prefix_equals_prefill(&synthetic(&dir, arch, dtype, kv));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_prompt_that_starts_like_an_earlier_one_reuses_its_keys_and_values() {
    let dir = temp_dir("prefix-scheduler");
    synthetic(&dir, Architecture::Llama, GgmlType::F32, 2);
    let limits = |prefix_cache| BatchLimits {
        max_batch: 4,
        queue: 16,
        prefix_cache,
        ..BatchLimits::default()
    };
    let fresh = LoadedModel::load("synthetic", &dir, &mut |_| {})
        .expect("load")
        .with_batch_limits(limits(0));
    let reusing = LoadedModel::load("synthetic", &dir, &mut |_| {})
        .expect("load")
        .with_batch_limits(limits(1 << 20));
    let instructions = "You review code. Answer in one line, politely. ";
    let first = format!("{instructions}Task: add two numbers");
    let prompts = [
        first.clone(),
        format!("{instructions}Task: sort a list"),
        first.clone(),
    ];
    let run = |model: &LoadedModel, text: &str, i: usize| {
        let p = if i == 1 {
            params(12, 0.8, 42)
        } else {
            params(12, 0.0, 0)
        };
        model
            .generate(
                &Prompt::Text(text.into()),
                &p,
                &Control::default(),
                &mut |_| {},
            )
            .expect("generation")
    };
    let first_ids = reusing
        .tokenize_prompt(&Prompt::Text(first.clone()))
        .expect("tokens");
    let mut reused_before = 0;
    for (i, text) in prompts.iter().enumerate() {
        let a = run(&fresh, text, i);
        let b = run(&reusing, text, i);
        assert_eq!(a.text, b.text, "prompt {i}: same answer with reuse");
        assert_eq!(a.usage, b.usage, "prompt {i}");
        let stats = reusing.batch_stats();
        let reused = stats.prefix_tokens_reused - reused_before;
        reused_before = stats.prefix_tokens_reused;
        match i {
            0 => assert_eq!(reused, 0, "nothing kept before the first request"),
            // The instructions' tokens, at least.
            1 => assert!(
                reused >= 8,
                "the shared instructions were reused: {stats:?}"
            ),
            // The same prompt again: all of it but the last token, which must run.
            _ => assert_eq!(reused, first_ids.len() as u64 - 1, "{stats:?}"),
        }
        assert!(stats.prefix_cache_bytes > 0, "{stats:?}");
    }
    assert_eq!(fresh.batch_stats().prefix_tokens_reused, 0);
    assert_eq!(fresh.batch_stats().prefix_cache_bytes, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn params(max_tokens: u32, temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature,
        seed,
        ..SamplingParams::default()
    }
}

fn start(model: &LoadedModel, text: &str, p: &SamplingParams, control: &Control) -> Generation {
    model
        .start(&Prompt::Text(text.into()), p, control)
        .expect("queued")
}

#[test]
fn concurrent_requests_get_the_answers_they_get_alone() {
    let dir = temp_dir("concurrent");
    synthetic(&dir, Architecture::Llama, GgmlType::F32, 2);
    let one_at_a_time = LoadedModel::load("synthetic", &dir, &mut |_| {})
        .expect("load")
        .with_batch_limits(BatchLimits {
            max_batch: 1,
            queue: 16,
            prefix_cache: 0,
            ..BatchLimits::default()
        });
    let batched = Arc::new(
        LoadedModel::load("synthetic", &dir, &mut |_| {})
            .expect("load")
            .with_batch_limits(BatchLimits {
                max_batch: 8,
                queue: 16,
                ..BatchLimits::default()
            }),
    );
    let requests: Vec<(String, SamplingParams)> = (0..6)
        .map(|i| {
            let p = if i % 2 == 0 {
                params(24 + i as u32, 0.0, 0)
            } else {
                params(20, 0.8, 100 + i as u64)
            };
            (format!("request {i}: {}", "abc ".repeat(i + 1)), p)
        })
        .collect();
    let alone: Vec<_> = requests
        .iter()
        .map(|(text, p)| {
            one_at_a_time
                .generate(
                    &Prompt::Text(text.clone()),
                    p,
                    &Control::default(),
                    &mut |_| {},
                )
                .expect("alone")
        })
        .collect();
    assert_eq!(one_at_a_time.batch_stats().largest_batch, 1);
    // Queue all of them first, then collect each on its own thread with its streamed text.
    let generations: Vec<Generation> = requests
        .iter()
        .map(|(text, p)| start(&batched, text, p, &Control::default()))
        .collect();
    let together: Vec<_> = generations
        .into_iter()
        .map(|g| {
            std::thread::spawn(move || {
                let mut streamed = String::new();
                let done = g.finish(&mut |piece| streamed.push_str(piece));
                (done, streamed)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let mut tokens = 0u64;
    for (i, (a, (b, streamed))) in alone.iter().zip(together).enumerate() {
        let b = b.expect("batched");
        assert_eq!(a.text, b.text, "request {i}: same text");
        assert_eq!(a.finish_reason, b.finish_reason, "request {i}");
        assert_eq!(a.usage, b.usage, "request {i}");
        assert_eq!(
            streamed, b.text,
            "request {i}: the stream adds up to the answer"
        );
        tokens += u64::from(b.usage.completion_tokens);
    }
    let stats = batched.batch_stats();
    assert!(stats.largest_batch > 1, "requests shared passes: {stats:?}");
    assert!(
        stats.steps < tokens,
        "fewer passes ({}) than tokens generated ({tokens}): {stats:?}",
        stats.steps
    );
    assert_eq!((stats.running, stats.waiting), (0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A generation's thread: its result and how many pieces of text it streamed.
type Collector = std::thread::JoinHandle<(Result<agentrt::engine::Completion, EngineError>, usize)>;

/// Start a long generation on its own thread; returns when its first text has arrived (so it
/// holds a place in the batch), with its handle and cancel flag.
fn running_generation(model: &Arc<LoadedModel>) -> (Collector, Arc<AtomicBool>) {
    let cancel = Arc::new(AtomicBool::new(false));
    let control = Control {
        deadline: None,
        cancel: Some(cancel.clone()),
        wait_in_line: false,
    };
    let generation = start(model, "a long story", &params(900, 0.0, 0), &control);
    let (first_tx, first_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut pieces = 0usize;
        let done = generation.finish(&mut |_| {
            pieces += 1;
            let _ = first_tx.send(());
        });
        (done, pieces)
    });
    first_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the long generation produced text");
    (handle, cancel)
}

fn one_slot_model(name: &str, queue: usize) -> (Arc<LoadedModel>, std::path::PathBuf) {
    let dir = temp_dir(name);
    synthetic(&dir, Architecture::Llama, GgmlType::F32, 2);
    let model = LoadedModel::load("synthetic", &dir, &mut |_| {})
        .expect("load")
        .with_batch_limits(BatchLimits {
            max_batch: 1,
            queue,
            ..BatchLimits::default()
        });
    (Arc::new(model), dir)
}

#[test]
fn a_cancelled_request_frees_its_place_and_a_full_queue_is_refused() {
    let (model, dir) = one_slot_model("cancel", 1);
    let (long, cancel) = running_generation(&model);
    // The one place is taken: the next request waits, the one after finds the queue full.
    let waiting = start(&model, "short", &params(5, 0.0, 0), &Control::default());
    let refused = model
        .start(
            &Prompt::Text("refused".into()),
            &params(5, 0.0, 0),
            &Control::default(),
        )
        .expect_err("queue of one is full");
    assert!(
        matches!(refused, EngineError::QueueFull { waiting: 1 }),
        "{refused:?}"
    );
    assert_eq!(refused.code(), ErrorCode::QueueFull);
    assert_eq!(refused.code().http_status(), 429);
    assert_eq!(model.batch_stats().waiting, 1);

    cancel.store(true, Ordering::Relaxed);
    let (result, pieces) = long.join().expect("thread");
    assert!(
        matches!(result, Err(EngineError::Cancelled)),
        "the long one was cancelled: {result:?}"
    );
    assert!(pieces < 900, "it stopped early ({pieces} pieces)");
    let short = waiting
        .finish(&mut |_| {})
        .expect("the waiting request ran");
    assert!(short.usage.completion_tokens >= 1);
    let stats = model.batch_stats();
    assert_eq!((stats.running, stats.waiting), (0, 0), "{stats:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_abandoned_request_frees_its_place() {
    let (model, dir) = one_slot_model("abandon", 4);
    // Started and dropped unread: the scheduler finds nobody listening at its first text.
    let abandoned = start(
        &model,
        "nobody reads this",
        &params(900, 0.0, 0),
        &Control::default(),
    );
    drop(abandoned);
    let next = start(&model, "short", &params(5, 0.0, 0), &Control::default());
    let done = next.finish(&mut |_| {}).expect("the next request ran");
    let steps = model.batch_stats().steps;
    assert!(
        steps < 100,
        "the abandoned generation stopped at once ({steps} passes for it and a 5-token answer)"
    );
    assert!(done.usage.completion_tokens >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deadline_ends_a_running_generation_between_passes() {
    let model = LoadedModel::load("smollm2", &agentrt::paths::default_model(), &mut |_| {})
        .expect("load the default model");
    let control = Control {
        deadline: Some(Instant::now() + Duration::from_millis(300)),
        cancel: None,
        wait_in_line: false,
    };
    let mut pieces = 0;
    let result = model.generate(
        &Prompt::Text("Once upon a time".into()),
        &params(1500, 0.0, 0),
        &control,
        &mut |_| pieces += 1,
    );
    assert!(matches!(result, Err(EngineError::Timeout)), "{result:?}");
    assert!(pieces > 0, "it ran until the deadline");
    assert_eq!(model.batch_stats().running, 0);
}

/// A request that named no `max_tokens` (`fit_to_context`) gets the room its prompt leaves in
/// the context; one that named too many is refused with MODEL_004 before anything runs.
#[test]
fn a_long_prompt_without_max_tokens_gets_what_room_the_context_has() {
    let dir = temp_dir("fit");
    let model = synthetic(&dir, Architecture::Llama, GgmlType::F32, 2);
    let context = 1024;
    let tokens = |words: usize| {
        model
            .tokenize_prompt(&Prompt::Text("abc ".repeat(words)))
            .expect("tokenize")
            .len()
    };
    // The most words whose prompt leaves at least 4 positions free.
    let (mut fits, mut too_many) = (1, 4000);
    assert!(tokens(too_many) > context);
    while too_many - fits > 1 {
        let mid = (fits + too_many) / 2;
        if tokens(mid) + 4 <= context {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    let prompt = "abc ".repeat(fits);
    let len = tokens(fits);
    assert!(context - len <= 40, "{len} tokens");
    let mut p = SamplingParams {
        max_tokens: 256,
        temperature: 0.0,
        repeat_penalty: 1.0,
        ..SamplingParams::default()
    };
    let prompt = Prompt::Text(prompt);
    let refused = model
        .generate(&prompt, &p, &Control::default(), &mut |_| {})
        .expect_err("256 more tokens do not fit");
    assert_eq!(refused.code(), ErrorCode::ModelContextOverflow, "{refused}");
    p.fit_to_context = true;
    let done = model
        .generate(&prompt, &p, &Control::default(), &mut |_| {})
        .expect("fits");
    assert_eq!(done.usage.prompt_tokens as usize, len);
    assert!(
        done.usage.completion_tokens as usize <= context - len,
        "{:?}",
        done.usage
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_request_cancelled_while_it_waits_gives_its_queue_place_back() {
    let (model, dir) = one_slot_model("queued-cancel", 1);
    let (long, cancel_long) = running_generation(&model);
    // The one queue place is taken by a request whose caller then cancels it.
    let cancel_waiting = Arc::new(AtomicBool::new(false));
    let waiting = start(
        &model,
        "short",
        &params(5, 0.0, 0),
        &Control {
            deadline: None,
            cancel: Some(cancel_waiting.clone()),
            wait_in_line: false,
        },
    );
    cancel_waiting.store(true, Ordering::Relaxed);
    // Its place is free for the next request at once, while the long one still runs.
    let next = start(&model, "next", &params(5, 0.0, 0), &Control::default());
    let gone = waiting.finish(&mut |_| {});
    assert!(matches!(gone, Err(EngineError::Cancelled)), "{gone:?}");
    cancel_long.store(true, Ordering::Relaxed);
    let _ = long.join().expect("thread");
    next.finish(&mut |_| {}).expect("the next request ran");
    let _ = std::fs::remove_dir_all(&dir);
}
