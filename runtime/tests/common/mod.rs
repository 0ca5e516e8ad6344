//! Shared by the engine's reference tests: candle's `quantized_llama` as the independent
//! implementation, and the comparison both tests make against it.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

/// Load a GGUF file with candle.
pub fn candle_model(path: &Path) -> ModelWeights {
    let mut file = std::fs::File::open(path).expect("open model");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("read gguf");
    ModelWeights::from_gguf(content, &mut file, &Device::Cpu).expect("candle load")
}

/// candle's logits of the last of `ids`, placed at positions `pos..`.
pub fn candle_logits(model: &mut ModelWeights, ids: &[u32], pos: usize) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    model
        .forward(&input, pos)
        .and_then(|l| l.squeeze(0))
        .and_then(|l| l.to_vec1::<f32>())
        .expect("forward")
}

/// candle's greedy continuation of a `prompt_len`-token prompt whose logits were `first`.
#[allow(dead_code)] // each test crate compiles this module; not all use every helper
pub fn candle_greedy(
    model: &mut ModelWeights,
    first: &[f32],
    prompt_len: usize,
    n: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    let mut next = agentrt::engine::sampling::argmax(first);
    for i in 0..n {
        out.push(next);
        next = agentrt::engine::sampling::argmax(&candle_logits(model, &[next], prompt_len + i));
    }
    out
}

/// candle's logits along a given continuation `tokens` of a `prompt_len`-token prompt whose
/// logits were `first` (teacher forcing): for each token, how far candle's logit for it is
/// below candle's largest (0 where it is candle's argmax), relative to the logits' spread.
#[allow(dead_code)] // each test crate compiles this module; not all use every helper
pub fn candle_shortfalls(
    model: &mut ModelWeights,
    first: &[f32],
    prompt_len: usize,
    tokens: &[u32],
) -> Vec<f32> {
    let mut logits = first.to_vec();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, &token) in tokens.iter().enumerate() {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let min = logits.iter().fold(f32::INFINITY, |m, v| m.min(*v));
        out.push((max - logits[token as usize]) / (max - min));
        logits = candle_logits(model, &[token], prompt_len + i);
    }
    out
}

/// (spread of `want` = max - min, largest |want - got|).
pub fn spread_and_max_error(want: &[f32], got: &[f32]) -> (f32, f32) {
    assert_eq!(want.len(), got.len(), "logit vectors differ in length");
    let spread = want.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v))
        - want.iter().fold(f32::INFINITY, |m, v| m.min(*v));
    let err = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (spread, err)
}
