//! Next-token selection: repeat penalty, temperature, top-k, top-p, seeded randomness.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest stop sequence a request may name, in bytes. After every token the text is searched
/// for each stop sequence and each one's prefixes are matched against the text's end (work
/// quadratic in its length, every step), so an unbounded one is a way to stall the model for
/// everyone; 1 KiB is far beyond any real stop sequence.
pub const MAX_STOP_BYTES: usize = 1024;

/// Most stop sequences a request may name. The work after every token grows with their number
/// as with their length, so plugins (whose `llm` calls reach the engine without the OpenAI
/// route's limit of 4) cannot name thousands; 16 is more than any real use.
pub const MAX_STOP_SEQUENCES: usize = 16;

/// Candidates put in order first when top-k does not bound them: enough for the usual
/// top-p cut or draw, so the rest of the vocabulary is only partitioned, not sorted; each
/// further round orders four times as many.
const FIRST_ORDERED: usize = 64;

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
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return Err(format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences, got {}",
                self.stop.len()
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err("stop sequences must not be empty".into());
        }
        if let Some(long) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(format!(
                "stop sequences must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                long.len()
            ));
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
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Result<u32, UnusableLogits> {
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

    /// The token `choice` picks from `logits` whose repeat penalty is already applied, or
    /// why none can be picked (logits that are not numbers: a broken model or pass).
    pub fn finish(&self, logits: &[f32], choice: &Choice) -> Result<u32, UnusableLogits> {
        // One rule wherever the bad number sits and whatever the choice: a NaN or +inf logit
        // means the pass is broken (-inf is how rows are masked). One scan; a forward pass
        // costs thousands of times more.
        if let Some(bad) = logits
            .iter()
            .position(|l| l.is_nan() || *l == f32::INFINITY)
        {
            return Err(UnusableLogits(format!("logit {bad} is {}", logits[bad])));
        }
        if choice.greedy {
            let t = argmax(logits);
            // `argmax` names an index whatever the logits hold (0 for a NaN first one); a
            // largest logit that is no finite number chose nothing.
            return match logits.get(t as usize) {
                Some(l) if l.is_finite() => Ok(t),
                Some(l) => Err(UnusableLogits(format!("the largest logit is {l}"))),
                None => Err(UnusableLogits("there are no logits".into())),
            };
        }
        let p = &self.params;
        draw(logits, p.temperature, p.top_k, p.top_p, choice.uniform)
    }
}

/// Why no token could be chosen from a pass's logits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no token can be chosen: {0} (the model's forward pass produced no usable numbers)")]
pub struct UnusableLogits(String);

/// The order candidates are ranked in: larger scaled logit first, then smaller index, as the
/// device sampler ranks them (`ahead` in kernels/src/cuda/sampling.cu, on the logits before
/// scaling); a strict total order, so ties never depend on how a sort happened to move them.
fn ahead(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Put the `want` best of `c` first, in order, where the first `sorted` already are.
fn order_prefix(c: &mut [(u32, f32)], sorted: usize, want: usize) {
    let rest = &mut c[sorted..];
    let take = want.saturating_sub(sorted).min(rest.len());
    if take < rest.len() {
        // Only the `take` best are ordered; the rest is just moved behind them.
        rest.select_nth_unstable_by(take, ahead);
    }
    rest[..take].sort_unstable_by(ahead);
}

/// Temperature, top-k, top-p, then the draw `uniform` in [0, 1), ordering only as much of the
/// vocabulary as the choice needs. The rules, with candidates ranked by [`ahead`]:
/// - top-k cuts (0 < k < vocabulary): over the k best, probabilities normalised over them,
///   the top-p cut where the running sum reaches `top_p`, a draw over what is kept (summed in
///   rank order; the device sampler's rules and order of operations);
/// - otherwise the probabilities are normalised over the whole vocabulary, its sum taken in
///   index order (a sum in rank order would need the whole vocabulary sorted); with
///   `top_p < 1`, cut and draw as above;
/// - `top_p` 1 (top-p off, OpenAI's default) with no top-k keeps the whole vocabulary and
///   draws in f64, `uniform` times the total, taking off each candidate's weight in rank order
///   (so the draw always lands on a candidate with weight, instead of running off the end of
///   a rank-order sum the tail rounded away).
///
/// A largest logit or a sum that is not a finite number is an error, not a choice; a candidate
/// with no probability (a masked row) is never chosen, even when rounding leaves the draw short.
fn draw(
    logits: &[f32],
    temperature: f32,
    top_k: u32,
    top_p: f32,
    uniform: f32,
) -> Result<u32, UnusableLogits> {
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u32, l / temperature))
        .collect();
    let n = c.len();
    if n == 0 {
        return Err(UnusableLogits("there are no logits".into()));
    }
    // A cut at the vocabulary or beyond is no cut (as on the device).
    let k = usize::try_from(top_k).unwrap_or(usize::MAX);
    let cut = (k > 0 && k < n).then_some(k);
    // The candidates a draw may reach: the k best, or the whole vocabulary.
    let reach = cut.unwrap_or(n);
    let mut sorted = cut.unwrap_or(FIRST_ORDERED.min(n));
    order_prefix(&mut c, 0, sorted);
    let max = c[0].1;
    if !max.is_finite() {
        return Err(UnusableLogits(format!("the largest logit is {max}")));
    }
    let weight = |v: f32| (v - max).exp();

    if cut.is_none() && top_p >= 1.0 {
        let total = logits
            .iter()
            .fold(0f64, |t, l| t + f64::from(weight(l / temperature)));
        if !total.is_finite() {
            return Err(UnusableLogits(format!("the weights sum to {total}")));
        }
        let mut r = f64::from(uniform) * total;
        let mut i = 0;
        loop {
            while i < sorted {
                let w = weight(c[i].1);
                // Ranked, so every candidate from here on weighs nothing (a masked row, say):
                // the draw ran past the mass by rounding and takes the last one with weight
                // (there is one: the first weighs 1).
                if w == 0.0 {
                    return Ok(c[i - 1].0);
                }
                r -= f64::from(w);
                if r <= 0.0 {
                    return Ok(c[i].0);
                }
                i += 1;
            }
            if sorted == n {
                return Ok(c[n - 1].0);
            }
            let want = sorted.saturating_mul(4).min(n);
            order_prefix(&mut c, sorted, want);
            sorted = want;
        }
    }

    let total = match cut {
        Some(k) => c[..k].iter().fold(0f32, |t, x| t + weight(x.1)),
        None => logits.iter().fold(0f32, |t, l| t + weight(l / temperature)),
    };
    if !total.is_finite() {
        return Err(UnusableLogits(format!("the weights sum to {total}")));
    }
    let prob = |v: f32| weight(v) / total;
    // The top-p cut: the shortest run of candidates, in rank order, whose running sum reaches
    // top_p (all of them when none does), ordering more of the vocabulary only while the
    // sum falls short.
    let mut cumulative = 0f32;
    let mut keep = reach;
    let mut i = 0;
    'cut: loop {
        while i < sorted {
            let p = prob(c[i].1);
            // Nothing from here on has any probability (ranked): never kept, so rounding can
            // never make the draw land on a token with none.
            if p == 0.0 {
                keep = i;
                break 'cut;
            }
            cumulative += p;
            i += 1;
            if cumulative >= top_p {
                keep = i;
                break 'cut;
            }
        }
        if sorted == reach {
            break;
        }
        let want = sorted.saturating_mul(4).min(reach);
        order_prefix(&mut c, sorted, want);
        sorted = want;
    }
    // The mass of what is kept: the running sum where the cut fell (the same sum, in the same
    // order, as adding the kept probabilities up again).
    let mut r = uniform * cumulative;
    for x in &c[..keep] {
        r -= prob(x.1);
        if r <= 0.0 {
            return Ok(x.0);
        }
    }
    Ok(c[keep - 1].0)
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
        assert_eq!(
            s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[]).expect("finite"),
            1
        );
    }

    #[test]
    fn repeat_penalty_can_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(
            s.sample(&mut [0.1, 3.0, -1.0, 2.9], &[1]).expect("finite"),
            3
        );
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
                .map(|_| s.sample(&mut logits.clone(), &[]).expect("finite"))
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
            let want = a.sample(&mut logits.clone(), &history).expect("finite");
            let choice = b.prepare(&history);
            assert_eq!(
                choice.penalized,
                vec![3, 40, 41, 9],
                "distinct tokens of the window"
            );
            let mut l = logits.clone();
            apply_repeat_penalty(&mut l, &choice.penalized, choice.repeat_penalty);
            assert_eq!(b.finish(&l, &choice).expect("finite"), want);
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

    #[test]
    fn stop_sequences_longer_than_the_cap_are_refused() {
        let with_stop = |len: usize| SamplingParams {
            stop: vec!["\n".into(), "x".repeat(len)],
            ..Default::default()
        };
        assert!(with_stop(MAX_STOP_BYTES).validate().is_ok());
        let refused = with_stop(MAX_STOP_BYTES + 1)
            .validate()
            .expect_err("a stop sequence over the cap");
        assert!(refused.contains("stop"), "{refused}");
    }

    #[test]
    fn more_stop_sequences_than_the_cap_are_refused() {
        let with_stops = |n: usize| SamplingParams {
            stop: (0..n).map(|i| format!("stop{i}")).collect(),
            ..Default::default()
        };
        assert!(with_stops(MAX_STOP_SEQUENCES).validate().is_ok());
        let refused = with_stops(MAX_STOP_SEQUENCES + 1)
            .validate()
            .expect_err("one stop sequence too many");
        assert!(refused.contains("stop sequences"), "{refused}");
    }

    /// [`draw`]'s rules the plain way: the whole vocabulary sorted first, then each rule in one
    /// pass over it (`None`: no token can be chosen).
    fn draw_by_sorting(
        logits: &[f32],
        temperature: f32,
        top_k: u32,
        top_p: f32,
        uniform: f32,
    ) -> Option<u32> {
        let mut c: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u32, l / temperature))
            .collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = c.first()?.1;
        if !max.is_finite() {
            return None;
        }
        let n = c.len();
        let k = top_k as usize;
        if k > 0 && k < n {
            // The rule as it was, with ties going to the smaller index.
            c.truncate(k);
            let mut total = 0f32;
            for x in &c {
                total += (x.1 - max).exp();
            }
            return total
                .is_finite()
                .then(|| cut_and_draw(&c, max, total, top_p, uniform));
        }
        if top_p >= 1.0 {
            let mut total = 0f64;
            for l in logits {
                total += f64::from((l / temperature - max).exp());
            }
            if !total.is_finite() {
                return None;
            }
            let mut r = f64::from(uniform) * total;
            let mut last = c[0].0;
            for x in &c {
                let w = f64::from((x.1 - max).exp());
                if w == 0.0 {
                    break;
                }
                r -= w;
                last = x.0;
                if r <= 0.0 {
                    return Some(x.0);
                }
            }
            return Some(last);
        }
        let mut total = 0f32;
        for l in logits {
            total += (l / temperature - max).exp();
        }
        total
            .is_finite()
            .then(|| cut_and_draw(&c, max, total, top_p, uniform))
    }

    /// Top-p over ranked candidates, then the draw over what is kept (its mass summed again).
    fn cut_and_draw(c: &[(u32, f32)], max: f32, total: f32, top_p: f32, uniform: f32) -> u32 {
        let p: Vec<f32> = c.iter().map(|x| (x.1 - max).exp() / total).collect();
        let mut cumulative = 0f32;
        let mut keep = p.len();
        for (i, q) in p.iter().enumerate() {
            // A token with no probability is never kept.
            if *q == 0.0 {
                keep = i;
                break;
            }
            cumulative += q;
            if cumulative >= top_p {
                keep = i + 1;
                break;
            }
        }
        let mass: f32 = p[..keep].iter().sum();
        let mut r = uniform * mass;
        for (x, q) in c.iter().zip(&p[..keep]) {
            r -= q;
            if r <= 0.0 {
                return x.0;
            }
        }
        c[keep - 1].0
    }

    #[test]
    fn the_draw_orders_only_what_it_needs_and_chooses_what_a_full_sort_does() {
        let mut rng = StdRng::seed_from_u64(7);
        let sizes = [1usize, 2, 5, 63, 64, 65, 200, 257, 1100, 4500];
        let largest_below_one = 1.0 - f32::EPSILON / 2.0;
        for round in 0..400 {
            let n = sizes[round % sizes.len()];
            let spread = [0.3f32, 3.0, 12.0][rng.random_range(0..3)];
            let mut logits: Vec<f32> = (0..n)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * spread)
                .collect();
            match rng.random_range(0..8) {
                // Many ties.
                0 | 1 => logits.iter_mut().for_each(|l| *l = l.round()),
                // Padding rows masked off, as the scheduler masks them.
                2 => logits[n - n / 8..].fill(f32::NEG_INFINITY),
                // Numbers no choice can be made from, ranked first, last or in between.
                3 => logits[rng.random_range(0..n)] = f32::NAN,
                4 => logits[rng.random_range(0..n)] = -f32::NAN,
                5 => logits[rng.random_range(0..n)] = f32::INFINITY,
                _ => {}
            }
            let nn = n as u32;
            let ks = [0, 0, 1, 3, 40, 64, 100, nn.saturating_sub(1), nn, nn + 5];
            for top_p in [0.05f32, 0.5, 0.9, 0.95, 0.999, 0.999_999, 1.0] {
                let temperature = [0.2f32, 0.7, 1.0, 1.5, 4.0][rng.random_range(0..5)];
                let top_k = ks[rng.random_range(0..ks.len())];
                for uniform in [
                    rng.random::<f32>(),
                    [0.0, largest_below_one, rng.random::<f32>()][rng.random_range(0..3)],
                ] {
                    assert_eq!(
                        draw(&logits, temperature, top_k, top_p, uniform).ok(),
                        draw_by_sorting(&logits, temperature, top_k, top_p, uniform),
                        "round {round}: {n} logits, t {temperature} k {top_k} p {top_p} u {uniform}"
                    );
                }
            }
        }
    }

    #[test]
    fn tied_candidates_rank_by_index_as_on_the_device() {
        let logits = [2.0f32; 10];
        for uniform in [0.0, 0.2, 0.5, 0.9, 1.0 - f32::EPSILON / 2.0] {
            let t = draw(&logits, 1.0, 3, 1.0, uniform).expect("finite");
            assert!(t < 3, "top-3 of ten ties drew {t}");
        }
        // Without top-k the draw walks the ties in index order.
        assert_eq!(draw(&logits, 1.0, 0, 1.0, 0.0).ok(), Some(0));
        assert_eq!(draw(&logits, 1.0, 0, 1.0, 0.25).ok(), Some(2));
    }

    #[test]
    fn logits_that_are_not_numbers_choose_no_token() {
        let greedy = SamplingParams {
            repeat_penalty: 1.0,
            ..Default::default()
        };
        let sampled = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..greedy.clone()
        };
        let cut = SamplingParams {
            top_k: 40,
            top_p: 0.9,
            ..sampled.clone()
        };
        let broken: [Vec<f32>; 5] = [
            vec![f32::NAN; 8],
            vec![f32::INFINITY; 8],
            vec![f32::NEG_INFINITY; 8],
            vec![],
            vec![1.0, f32::INFINITY, 0.5],
        ];
        // A NaN behind the largest logit, or outside a top-k cut, fails as one in front does.
        let mut behind = vec![0.0f32; 100];
        behind[0] = 5.0;
        behind[77] = f32::NAN;
        let broken: Vec<Vec<f32>> = broken.into_iter().chain([behind]).collect();
        for params in [&greedy, &sampled, &cut] {
            for logits in &broken {
                let mut s = Sampler::new(params.clone());
                let got = s.sample(&mut logits.clone(), &[]);
                assert!(got.is_err(), "{params:?} chose {got:?} from {logits:?}");
            }
        }
        // Weighing the whole vocabulary, a NaN anywhere leaves no probabilities to draw by.
        for nan in [f32::NAN, -f32::NAN] {
            let mut s = Sampler::new(sampled.clone());
            let got = s.sample(&mut [1.0, nan, 0.5], &[]);
            assert!(got.is_err(), "chose {got:?} beside {nan}");
        }
    }
}
