//! Next-token selection: repeat penalty, temperature, top-k, top-p, seeded randomness.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1.0 = off.
    pub top_p: f32,
    /// 1.0 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_window: usize,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Where the prompt and `max_tokens` together exceed the model's context, generate only
    /// what fits instead of refusing (a request that named no `max_tokens` of its own).
    pub fit_to_context: bool,
}

/// A seed for a request that names none: a different one every call, so repeated requests
/// sample different answers, as OpenAI-style APIs do (a request that sends a seed repeats its
/// answer).
pub fn fresh_seed() -> u64 {
    StdRng::from_os_rng().random()
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            repeat_penalty: 1.1,
            repeat_window: 64,
            seed: 0x5eed,
            stop: Vec::new(),
            fit_to_context: false,
        }
    }
}

impl SamplingParams {
    /// Reject settings no engine could honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return Err(format!(
                "repeat_penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop sequences must not be empty".into());
        }
        Ok(())
    }
}

/// Picks tokens from logits; owns the random state of one generation.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Choose the next token given the logits and the tokens so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let choice = self.prepare(history);
        apply_repeat_penalty(logits, &choice.penalized, choice.repeat_penalty);
        self.finish(logits, &choice)
    }

    /// What a device needs to choose the next token the way [`Sampler::sample`] would: the
    /// settings, the distinct recent tokens the repeat penalty applies to, and this step's
    /// random draw (taken from the seeded stream only when sampling, as `sample` does).
    pub fn prepare(&mut self, history: &[u32]) -> Choice {
        let p = &self.params;
        let mut penalized = Vec::new();
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_window);
            let mut seen = std::collections::HashSet::new();
            penalized.extend(history[start..].iter().filter(|t| seen.insert(**t)));
        }
        // Below this, dividing by the temperature overflows the logits; it is greedy anyway.
        let greedy = p.temperature < 1e-4;
        let uniform = if greedy {
            0.0
        } else {
            self.rng.random::<f32>()
        };
        Choice {
            greedy,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            repeat_penalty: p.repeat_penalty,
            penalized,
            uniform,
        }
    }

    /// The token `choice` picks from `logits` whose repeat penalty is already applied.
    pub fn finish(&self, logits: &[f32], choice: &Choice) -> u32 {
        if choice.greedy {
            return argmax(logits);
        }
        let p = &self.params;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l / p.temperature))
            .collect();
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            candidates.truncate(p.top_k as usize);
        }
        let max = candidates[0].1;
        let mut total = 0f32;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        let mut cumulative = 0f32;
        let mut keep = candidates.len();
        for (i, c) in candidates.iter_mut().enumerate() {
            c.1 /= total;
            cumulative += c.1;
            if cumulative >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        candidates.truncate(keep);
        let mass: f32 = candidates.iter().map(|c| c.1).sum();
        let mut r = choice.uniform * mass;
        for c in &candidates {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        candidates[candidates.len() - 1].0
    }
}

/// One step's sampling decision, ready to be taken on the host or a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub greedy: bool,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub repeat_penalty: f32,
    /// Distinct tokens of the recent window (empty when the penalty is off).
    pub penalized: Vec<u32>,
    /// The draw in [0, 1) (0 when greedy).
    pub uniform: f32,
}

impl Choice {
    /// The largest logit, no penalty.
    pub fn greedy() -> Self {
        Self {
            greedy: true,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            penalized: Vec::new(),
            uniform: 0.0,
        }
    }
}

/// llama.cpp's rule: make repeated tokens less likely whatever the logit's sign.
pub fn apply_repeat_penalty(logits: &mut [f32], penalized: &[u32], penalty: f32) {
    for &t in penalized {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit (the first one on ties; NaNs are never the largest, and a NaN
/// first logit is kept, as one scan with `>` keeps it), found in two passes the compiler
/// vectorises — the largest value in sixteen independent lanes, then the first chunk holding
/// it — instead of one long chain of compare-and-select (a 49152-entry vocabulary took ~17 µs
/// a token that way, on a batched pass's serial path once per sequence).
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    if logits.first().is_none_or(|l| l.is_nan()) {
        return 0;
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &l) in lanes.iter_mut().zip(chunk) {
            *m = if l > *m { l } else { *m };
        }
    }
    let largest = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
    // Equal to the largest compares equal whatever the sign of a zero, as `>` does above.
    let chunk = logits
        .chunks(LANES)
        .position(|c| c.iter().fold(false, |any, &l| any | (l == largest)))
        .unwrap_or(0);
    let within = logits[chunk * LANES..]
        .iter()
        .position(|&l| l == largest)
        .unwrap_or(0);
    (chunk * LANES + within) as u32
}

/// [`argmax`] as one scan (the reference it is tested against).
#[cfg(test)]
fn argmax_scalar(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_finds_the_first_largest_logit_as_one_scan_does() {
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN; 5],
            vec![f32::NEG_INFINITY; 40],
            vec![1.0; 33],
            vec![-0.0, 0.0, -1.0],
            vec![0.0, -0.0, -1.0],
            vec![f32::NAN, 2.0, f32::NAN, 2.0],
        ];
        for n in [1usize, 15, 16, 17, 49_152, 49_159] {
            let logits: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 0.01)
                .collect();
            cases.push(logits.clone());
            // The largest value twice, first past the chunk where the second one is.
            let mut twice = logits.clone();
            twice[n / 3] = 99.0;
            twice[n - 1] = 99.0;
            cases.push(twice);
            let mut with_nan = logits;
            with_nan[n / 2] = f32::NAN;
            cases.push(with_nan);
        }
        for logits in &cases {
            assert_eq!(
                argmax(logits),
                argmax_scalar(logits),
                "{} logits",
                logits.len()
            );
        }
    }

    #[test]
    fn greedy_picks_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    #[test]
    fn repeat_penalty_can_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[1]), 3);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        let other = run(SamplingParams {
            seed: 99,
            ..params.clone()
        });
        assert_ne!(
            run(params.clone()),
            other,
            "different seeds should differ over 20 draws"
        );
        let k1 = run(SamplingParams { top_k: 1, ..params });
        assert!(k1.iter().all(|t| *t == argmax(&logits)));
    }

    /// prepare → penalty → finish (the path a device takes) is `sample`, draw for draw.
    #[test]
    fn the_split_steps_choose_what_sample_chooses() {
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 7,
            top_p: 0.9,
            repeat_penalty: 1.3,
            repeat_window: 4,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..64).map(|i| (i as f32 * 0.71).cos() * 3.0).collect();
        let history = [3u32, 9, 3, 40, 41, 9];
        let (mut a, mut b) = (Sampler::new(params.clone()), Sampler::new(params));
        for _ in 0..30 {
            let want = a.sample(&mut logits.clone(), &history);
            let choice = b.prepare(&history);
            assert_eq!(
                choice.penalized,
                vec![3, 40, 41, 9],
                "distinct tokens of the window"
            );
            let mut l = logits.clone();
            apply_repeat_penalty(&mut l, &choice.penalized, choice.repeat_penalty);
            assert_eq!(b.finish(&l, &choice), want);
        }
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
