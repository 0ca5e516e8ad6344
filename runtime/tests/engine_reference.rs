//! The engine against an independent implementation on the same file: candle's
//! `quantized_llama` loads the default SmolLM2 GGUF and must agree with ours on the logits of a
//! real chat prompt (within a stated tolerance) and on 32 greedy tokens.
//!
//! Needs the default model (`scripts/setup.sh` fetches it); fails with a clear message if absent.

use std::path::PathBuf;

use agentrt::engine::LoadedModel;
use agentrt::engine::Prompt;
use agentrt::engine::chat_template::TemplateMessage;
use agentrt::engine::kv_cache::KvPrecision;

mod common;
use common::{candle_logits, candle_model, candle_shortfalls, spread_and_max_error};

/// Largest tolerated |ours - candle| on any logit, relative to the logits' spread (max - min).
///
/// Both engines quantise activations to 8 bits before every matmul, with the same rounding, and
/// multiply the same integers; but they add the blocks' scaled sums in different orders (ours
/// one fused multiply–add chain per row and token, see `packed`; candle its own), so a
/// matmul's result differs in its last bits. An activation that sits on an int8 rounding
/// boundary then rounds the other way in the next matmul, and 30 layers amplify that to a few
/// hundredths of the spread (measured: 0.87 of 42.6 on the 44-token chat prompt, 2.0 %; with
/// four float lanes per token it was 0.82, with eight 0.75).
const MAX_RELATIVE_LOGIT_ERROR: f32 = 0.03;
const GREEDY_TOKENS: usize = 32;
/// How far below candle's top logit (relative to the spread) a greedy token of ours may be
/// where it is not candle's choice: a third of the logit bound. Measured: one such step in 32,
/// 0.37 % below (at 23; every other step candle's own choice).
const NEAR_TIE: f32 = 0.01;
/// Steps of the continuation that may be such near-ties.
const MAX_NEAR_TIES: usize = 2;
/// The bound with our default f16 KV cache against candle's f32 one: rounding the cached keys
/// and values adds its own last-bit differences on top, which cross more int8 boundaries
/// (measured: at most 1.73 of 40.1, 4.3 %, over the chat prompt and eight decoded steps, at
/// step 4; the other steps 1.8–2.2 %. With four float lanes per token it was 1.16 of 44.7.
/// Every kernel family gives the same bits, so this does not vary by machine).
const F16_KV_RELATIVE_LOGIT_ERROR: f32 = 0.05;

fn model_path() -> PathBuf {
    let path = agentrt::paths::default_model();
    assert!(
        path.exists(),
        "default model missing at {} — run scripts/setup.sh first",
        path.display()
    );
    path
}

/// Greedy decoding is compared with our KV cache in f32, the arithmetic candle uses: with the
/// default f16 cache a near-tie later in the continuation may resolve the other way, which says
/// nothing about correctness. The f16 cache is held to the logit bound below.
///
/// Along our greedy continuation (candle fed the same tokens), every token must be candle's
/// own choice or a near-tie for it: the two engines sum each matmul's blocks in different
/// orders (above), so where candle's top two logits are closer than that difference, either
/// choice is right, and the continuations part there. A wrong engine shows as a token far
/// below candle's top, or as many near-ties.
#[test]
fn logits_and_greedy_tokens_match_candle() {
    let path = model_path();
    let ours = LoadedModel::load("smollm2", &path, &mut |_| {})
        .expect("our load")
        .with_kv_precision(KvPrecision::F32);
    let ids = ours.tokenize_prompt(&chat_prompt()).expect("tokenize");
    assert!(
        ids.len() > 20,
        "chat prompt should be a few dozen tokens, got {}",
        ids.len()
    );

    let mut reference = candle_model(&path);
    let want = candle_logits(&mut reference, &ids, 0);
    let got = ours.prompt_logits(&ids);
    let (spread, max_err) = spread_and_max_error(&want, &got);
    println!(
        "prompt {} tokens, logit spread {spread:.3}, max abs error {max_err:.5}",
        ids.len()
    );
    assert!(
        max_err <= MAX_RELATIVE_LOGIT_ERROR * spread,
        "max logit error {max_err} exceeds {MAX_RELATIVE_LOGIT_ERROR} x spread {spread}"
    );

    let ours_greedy = ours.greedy_tokens(&ids, GREEDY_TOKENS);
    println!(
        "greedy: {}",
        ours.tokenizer.decode(&ours_greedy).unwrap_or_default()
    );
    let shortfalls = candle_shortfalls(&mut reference, &want, ids.len(), &ours_greedy);
    println!("candle's logit for each of our tokens below its top (of the spread): {shortfalls:?}");
    for (step, shortfall) in shortfalls.iter().enumerate() {
        assert!(
            *shortfall <= NEAR_TIE,
            "step {step}: our token {} is {shortfall} of the spread below candle's choice",
            ours_greedy[step]
        );
    }
    let near_ties = shortfalls.iter().filter(|s| **s > 0.0).count();
    assert!(
        near_ties <= MAX_NEAR_TIES,
        "{near_ties} of {GREEDY_TOKENS} tokens are not candle's choice: {shortfalls:?}"
    );
}

/// Our default f16 KV cache against candle's f32 one: the chat prompt's logits, then eight
/// decoded steps (attention reading cached f16 positions), each within its logit bound.
#[test]
fn f16_kv_cache_logits_stay_within_the_bound() {
    let path = model_path();
    let ours = LoadedModel::load("smollm2", &path, &mut |_| {})
        .expect("our load")
        .with_kv_precision(KvPrecision::F16);
    let mut history = ours.tokenize_prompt(&chat_prompt()).expect("tokenize");
    let mut reference = candle_model(&path);
    let mut want = candle_logits(&mut reference, &history, 0);
    for step in 0..8 {
        let got = ours.prompt_logits(&history);
        let (spread, max_err) = spread_and_max_error(&want, &got);
        println!("step {step}: spread {spread:.3}, max error {max_err:.4}");
        assert!(
            max_err <= F16_KV_RELATIVE_LOGIT_ERROR * spread,
            "step {step}: max logit error {max_err} exceeds {F16_KV_RELATIVE_LOGIT_ERROR} x spread {spread}"
        );
        let next = agentrt::engine::sampling::argmax(&want);
        history.push(next);
        want = candle_logits(&mut reference, &[next], history.len() - 1);
    }
}

fn chat_prompt() -> Prompt {
    Prompt::Chat(vec![TemplateMessage {
        role: "user".into(),
        content: "Write a Python function that returns the n-th Fibonacci number.".into(),
    }])
}
