//! Continuous batching: one scheduler thread per loaded model runs every generation on it.
//!
//! Requests wait in a bounded queue ([`BatchLimits::queue`]; beyond it [`EngineError::QueueFull`],
//! which the server answers 429 with `Retry-After`, or for callers that cannot retry, such as
//! plugins' model calls, a wait in line for a place, first come first served). Between two
//! forward passes the scheduler admits waiting requests up to [`BatchLimits::max_batch`]
//! running at once; each pass then
//! runs every running sequence's next tokens together ([`CausalLm::forward_batch`]): a
//! newcomer's prompt (or the next chunk of it) beside the others' single decode tokens, so the
//! weights are read once per step for all of them. A sequence that finishes, is cancelled, runs past its deadline or
//! whose caller went away leaves the batch before the next pass, and its KV cache is freed then.
//!
//! A long prompt is read over several passes ([`BatchLimits::prefill_chunk`] prompt tokens a
//! pass, shared by the sequences still reading theirs, which take turns at being served first,
//! cut at multiples of the chunk in the prompt's own positions), so the sequences already
//! decoding keep getting a token every pass instead of waiting out the whole prompt, and a
//! short prompt is not held up until a long one admitted before it has been read.
//!
//! A newcomer's prompt starts from the longest prefix that a finished sequence left in the
//! [`PrefixCache`] (a shared system prompt, the earlier turns of a conversation): those
//! positions' keys and values are copied, not computed again ([`BatchLimits::prefix_cache`]).
//!
//! A pass of one sequence that takes a token goes through [`CausalLm::forward_choose`] (a GPU
//! model samples on the device); earlier chunks of its prompt through [`CausalLm::forward`].
//! Batching never changes a sequence's values: every architecture computes a token's row the
//! same whatever else shares the pass (tested), and a prompt is cut at the same places
//! whatever else is read beside it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;

use super::kv_cache::{KvCache, KvPrecision};
use super::models::{CausalLm, Next, Segment};
use super::prefix_cache::PrefixCache;
use super::sampling::{self, Sampler, SamplingParams};
use super::tokenizer::{DecodeState, Tokenizer};
use super::{
    Completion, Control, EngineError, FinishReason, Usage, earliest_stop, safe_prefix_len,
};
use crate::fifo_semaphore::{FifoSemaphore, Permit};
use crate::metrics::GenerationTimer;

/// How many sequences share a pass and how many may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Sequences running at once (1 turns batching off: one request at a time).
    pub max_batch: usize,
    /// Requests waiting for a place beyond those running.
    pub queue: usize,
    /// Bytes of finished sequences' keys and values kept for prompts that start the same way
    /// (0 keeps none).
    pub prefix_cache: usize,
    /// Prompt tokens one pass reads, over all the sequences still reading their prompts
    /// (at least 1); decoding sequences' single tokens come on top.
    pub prefill_chunk: usize,
    /// Bytes of host KV cache the running sequences may reserve together (each reserves its
    /// prompt plus `max_tokens`); a request that would pass it waits for others to end, one
    /// larger than all of it is refused (`MODEL_003`). 0: no limit. Device caches have their
    /// own fixed slots and are not counted.
    pub kv_cache: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue: 64,
            prefix_cache: 256 << 20,
            prefill_chunk: 256,
            kv_cache: 0,
        }
    }
}

impl BatchLimits {
    /// `AGENTRT_MAX_BATCH` (default 8) and `AGENTRT_GENERATION_QUEUE` (default 64), where
    /// values that are not whole numbers of at least 1 keep the default; and
    /// `AGENTRT_PREFIX_CACHE_MB` (default 256, 0 turns prefix reuse off); and
    /// `AGENTRT_PREFILL_CHUNK` (default 256); `AGENTRT_KV_CACHE_MB` (default 0: no limit).
    /// The budget is off unless set: caches take memory only as positions fill, so a default
    /// from the machine's memory would refuse long requests that fit, while the memory the
    /// system reports (page cache of the mapped weights, a container's host) can be too
    /// generous to prevent anything; the operator knows what the model may have.
    pub fn from_env() -> Self {
        let read = |name: &str, default: usize| crate::settings::count(name).unwrap_or(default);
        let d = Self::default();
        Self {
            max_batch: read("AGENTRT_MAX_BATCH", d.max_batch),
            queue: read("AGENTRT_GENERATION_QUEUE", d.queue),
            prefix_cache: read("AGENTRT_PREFIX_CACHE_MB", d.prefix_cache >> 20)
                .saturating_mul(1 << 20),
            prefill_chunk: read("AGENTRT_PREFILL_CHUNK", d.prefill_chunk),
            kv_cache: read("AGENTRT_KV_CACHE_MB", 0).saturating_mul(1 << 20),
        }
    }
}

/// What the scheduler has done so far (for tests, `/stats` and the load benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStats {
    /// Forward passes run.
    pub steps: u64,
    /// Sequence-steps run: the sum over passes of the sequences in each.
    pub sequence_steps: u64,
    /// Most sequences one pass has held.
    pub largest_batch: usize,
    pub running: usize,
    pub waiting: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub prefix_tokens_reused: u64,
    /// Bytes the prefix cache holds.
    pub prefix_cache_bytes: usize,
}

/// A generation's progress, from the scheduler to the caller.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Text that no stop sequence can claim any more.
    Text(String),
    /// What a generation that is about to end with an error had used (sent just before its
    /// `Done`): its prompt and the tokens made before it stopped.
    Spent(Usage),
    /// A remote server accepted the request (its answer's head came with status 200): what
    /// follows is its stream. Only remote generations send it ([`super::Generation::accepted`]).
    Accepted,
    Done(Result<Completion, EngineError>),
}

/// Bytes of host KV cache one position of `model` takes against [`BatchLimits::kv_cache`]; 0
/// for a model that keeps its caches in device slots sized at load (not counted).
pub(crate) fn host_kv_position_bytes(model: &dyn CausalLm, precision: KvPrecision) -> usize {
    if model.max_sequences() == usize::MAX {
        model.kv_values_per_position() * precision.bytes()
    } else {
        0
    }
}

/// A tokenised request on its way to the scheduler.
pub(crate) struct Request {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub control: Control,
    pub timer: GenerationTimer,
    pub progress: mpsc::Sender<Progress>,
    /// Set when the caller drops its [`crate::engine::Generation`]: nobody waits for the
    /// answer, so the request gives its place back at the next look, as a cancelled one does.
    pub abandoned: Arc<AtomicBool>,
    /// Its place in the queue (taken by [`Scheduler::submit`]), given back when it is admitted
    /// or leaves the queue otherwise.
    pub queue_place: Option<Permit>,
}

impl Request {
    /// Whether the request should still run: not abandoned, cancelled or past its deadline.
    fn check(&self) -> Result<(), EngineError> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        self.control.check()
    }

    /// End a request that never ran with `error`: it used nothing (said, so that a budget
    /// that reserved tokens for it gets them back).
    fn end_unstarted(&self, error: EngineError) {
        let _ = self.progress.send(Progress::Spent(Usage::default()));
        let _ = self.progress.send(Progress::Done(Err(error)));
    }
}

/// What the scheduler thread needs of its model.
pub(crate) struct StepModel {
    pub id: String,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Arc<Tokenizer>,
    pub kv_precision: KvPrecision,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Request>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    steps: AtomicU64,
    sequence_steps: AtomicU64,
    largest_batch: AtomicUsize,
    running: AtomicUsize,
    prefix_tokens_reused: AtomicU64,
    prefix_cache_bytes: AtomicUsize,
}

impl Queue {
    /// End the waiting requests that were cancelled or ran past their deadline while queued,
    /// freeing their places.
    fn drop_abandoned(&mut self) {
        self.waiting.retain(|r| match r.check() {
            Ok(()) => true,
            Err(why) => {
                r.end_unstarted(why);
                false
            }
        });
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is only pushed to and popped from; a panic cannot leave it half-changed.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The handle of a model's scheduler thread; dropping it stops the thread (requests still
/// queued or running end with [`EngineError::Cancelled`]).
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    limits: BatchLimits,
    /// The queue's places ([`BatchLimits::queue`]), given out first come, first served.
    places: Arc<FifoSemaphore>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    pub fn start(model: StepModel, limits: BatchLimits) -> Result<Self, EngineError> {
        let shared = Arc::new(Shared::default());
        let kv_position_bytes = host_kv_position_bytes(&*model.model, model.kv_precision);
        let worker = Worker {
            model,
            shared: shared.clone(),
            kv_budget: limits.kv_cache,
            kv_position_bytes,
            max_batch: limits.max_batch.max(1),
            prefill_chunk: limits.prefill_chunk.max(1),
            prefixes: PrefixCache::new(limits.prefix_cache),
            prefill_turn: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("agentrt-batch-{}", worker.model.id))
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Runtime(format!("cannot start the scheduler: {e}")))?;
        Ok(Self {
            shared,
            places: FifoSemaphore::new(limits.queue),
            limits,
            thread: Some(thread),
        })
    }

    /// Queue a request; with the queue full, refuse it or (as its [`Control`] says) wait in
    /// line for a place.
    ///
    /// [`Control`]: super::Control
    pub fn submit(&self, mut request: Request) -> Result<(), EngineError> {
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(EngineError::Runtime(
                "the model's scheduler has stopped; restart the server".into(),
            ));
        }
        if self.places.available() == 0 {
            // Waiters already cancelled or past their deadline give their places back first.
            self.shared.lock().drop_abandoned();
        }
        let place = request
            .control
            .take_place(&self.places, self.limits.queue)?;
        request.queue_place = Some(place);
        let mut queue = self.shared.lock();
        queue.waiting.push_back(request);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    pub fn stats(&self) -> BatchStats {
        let s = &self.shared;
        BatchStats {
            steps: s.steps.load(Ordering::Relaxed),
            sequence_steps: s.sequence_steps.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            waiting: s.lock().waiting.len(),
            prefix_tokens_reused: s.prefix_tokens_reused.load(Ordering::Relaxed),
            prefix_cache_bytes: s.prefix_cache_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A running generation: its cache, sampler and the text so far.
struct Sequence {
    request: Request,
    cache: KvCache,
    sampler: Sampler,
    /// Prompt and generated tokens (the repeat penalty's window).
    history: Vec<u32>,
    /// What is still to run: the prompt (or what of it earlier passes have not read), then
    /// the last token.
    input: Vec<u32>,
    generated: Vec<u32>,
    /// The answer's text so far, decoded a piece at a time.
    text: String,
    decoding: DecodeState,
    /// Bytes of `text` already handed to the caller.
    emitted: usize,
    /// Set when the sequence is over; it leaves the batch after the pass.
    outcome: Option<Result<FinishReason, EngineError>>,
}

struct Worker {
    model: StepModel,
    shared: Arc<Shared>,
    /// [`BatchLimits::kv_cache`].
    kv_budget: usize,
    /// Bytes a host KV cache takes per position (0 for device caches: not counted).
    kv_position_bytes: usize,
    max_batch: usize,
    prefill_chunk: usize,
    prefixes: PrefixCache,
    /// Passes that had prompts to read so far: which of the sequences reading theirs is
    /// served first in the next one (see [`Worker::plan`]).
    prefill_turn: usize,
}

impl Worker {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut running: Vec<Sequence> = Vec::new();
        let mut admitted: Vec<Request> = Vec::new();
        loop {
            {
                let mut queue = shared.lock();
                while running.is_empty() && queue.waiting.is_empty() && !queue.shutdown {
                    queue = shared
                        .wake
                        .wait(queue)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if queue.shutdown {
                    for request in queue.waiting.drain(..) {
                        request.end_unstarted(EngineError::Cancelled);
                    }
                    for s in running.iter_mut() {
                        s.outcome = Some(Err(EngineError::Cancelled));
                    }
                    self.retire(&mut running);
                    return;
                }
                queue.drop_abandoned();
                let free = self.max_batch.saturating_sub(running.len());
                // First come first served within the KV budget: the front request waits (and
                // those behind it) until enough running ones end. One always runs; a request
                // larger than the whole budget was refused when it was submitted.
                let mut reserved: usize = running.iter().map(|s| self.kv_need(&s.request)).sum();
                while admitted.len() < free {
                    let Some(need) = queue.waiting.front().map(|r| self.kv_need(r)) else {
                        break;
                    };
                    let alone = running.is_empty() && admitted.is_empty();
                    if self.kv_budget > 0
                        && reserved.saturating_add(need) > self.kv_budget
                        && !alone
                    {
                        break;
                    }
                    reserved = reserved.saturating_add(need);
                    if let Some(mut request) = queue.waiting.pop_front() {
                        // Out of the queue: its place goes to the next in line.
                        request.queue_place = None;
                        admitted.push(request);
                    }
                }
            }
            // Admitted outside the lock: a newcomer's KV cache and its prefix copy would
            // otherwise hold up every submitter.
            for request in admitted.drain(..) {
                let admitted = std::panic::catch_unwind(AssertUnwindSafe(|| self.admit(request)));
                match admitted {
                    Ok(Some(s)) => running.push(s),
                    Ok(None) => {}
                    Err(_) => {
                        tracing::error!(model = %self.model.id, "admitting a request failed; it ends without an answer")
                    }
                }
            }
            // Leave before the pass: cancelled, past the deadline.
            for s in running.iter_mut() {
                if let Err(e) = s.request.check() {
                    s.outcome = Some(Err(e));
                }
            }
            self.retire(&mut running);
            if running.is_empty() {
                continue;
            }
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.step(&mut running)));
            if let Err(panic) = outcome {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(model = %self.model.id, error = %why, "forward pass failed; failing its sequences");
                for s in running.iter_mut() {
                    s.outcome = Some(Err(EngineError::Runtime(format!(
                        "forward pass failed: {why}"
                    ))));
                }
            }
            self.retire(&mut running);
        }
    }

    /// Hand finished sequences their result; their KV caches are freed here, once the prefix
    /// cache has a copy of what they hold (a sequence that failed keeps nothing: a pass that
    /// panicked may have left its cache half-written).
    fn retire(&mut self, running: &mut Vec<Sequence>) {
        let finished: Vec<Sequence> = running.extract_if(.., |s| s.outcome.is_some()).collect();
        // Counted before anyone hears of the end, so a caller never sees its own as running.
        self.shared.running.store(running.len(), Ordering::Relaxed);
        if finished.is_empty() {
            return;
        }
        for s in finished {
            // A panic here would end the thread every later request waits on: it costs only
            // this sequence (its caller's channel closes).
            let retired = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if matches!(s.outcome, Some(Ok(_))) {
                    self.prefixes.keep(&s.history, &s.cache);
                    // Before the caller hears of the end, so it sees what its sequence left.
                    let bytes = self.prefixes.bytes();
                    self.shared
                        .prefix_cache_bytes
                        .store(bytes, Ordering::Relaxed);
                    crate::metrics::prefix_cache_bytes(&self.model.id, bytes);
                }
                s.finish(&self.model.id);
            }));
            if retired.is_err() {
                tracing::error!(model = %self.model.id, "finishing a sequence failed; its request ends without an answer");
            }
        }
    }

    /// Host KV-cache bytes `request` reserves: prompt and answer.
    fn kv_need(&self, request: &Request) -> usize {
        (request.prompt_ids.len() + request.params.max_tokens as usize)
            .saturating_mul(self.kv_position_bytes)
    }

    /// Start a request's sequence: its KV cache is allocated now, for prompt and answer, and
    /// starts with the longest prefix of the prompt the prefix cache holds.
    fn admit(&mut self, mut request: Request) -> Option<Sequence> {
        if let Err(e) = request.check() {
            request.end_unstarted(e);
            return None;
        }
        request.timer.admitted();
        let capacity = request.prompt_ids.len() + request.params.max_tokens as usize;
        let mut cache = self
            .model
            .model
            .new_cache(capacity, self.model.kv_precision);
        let reused = self.prefixes.reuse(&request.prompt_ids, &mut cache);
        if reused > 0 {
            self.shared
                .prefix_tokens_reused
                .fetch_add(reused as u64, Ordering::Relaxed);
            crate::metrics::prefix_reused(&self.model.id, reused);
        }
        Some(Sequence {
            sampler: Sampler::new(request.params.clone()),
            history: request.prompt_ids.clone(),
            input: request.prompt_ids[reused..].to_vec(),
            cache,
            request,
            generated: Vec::new(),
            decoding: DecodeState::default(),
            text: String::new(),
            emitted: 0,
            outcome: None,
        })
    }

    /// How many of each sequence's `input` tokens the next pass reads: a decoding sequence its
    /// one token; sequences reading their prompts share `prefill_chunk` tokens, each up to the
    /// next multiple of `prefill_chunk` in its own positions (0: it waits for the next pass).
    /// Chunk edges thus fall where they would for the prompt alone, so what shares a pass never
    /// changes how a prompt is cut (a GPU model's products differ in their last bits between
    /// chunk shapes). The budget is handed out starting one further along the readers each
    /// pass (`prefill_turn`): first admitted first, a long prompt whose chunks take the whole
    /// budget would keep every later prompt waiting until it was read to the end. The reader
    /// served first always fits, so while the same prompts are being read each one reads at
    /// least once every as many passes as there are of them.
    fn plan(&self, running: &[Sequence]) -> Vec<usize> {
        let chunk = self.prefill_chunk;
        let reading: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].input.len() > 1)
            .collect();
        let mut plan: Vec<usize> = running
            .iter()
            .map(|s| if s.input.len() <= 1 { s.input.len() } else { 0 })
            .collect();
        if reading.is_empty() {
            return plan;
        }
        let first = self.prefill_turn % reading.len();
        let mut budget = chunk;
        for &i in reading[first..].iter().chain(&reading[..first]) {
            let s = &running[i];
            let n = s.input.len().min(chunk - s.cache.len() % chunk);
            if n <= budget {
                budget -= n;
                plan[i] = n;
            }
        }
        plan
    }

    /// One forward pass: every running sequence's planned tokens. A sequence whose input the
    /// pass finishes takes its next token; one still reading its prompt keeps the rest.
    fn step(&mut self, running: &mut [Sequence]) {
        let plan = self.plan(running);
        if running.iter().any(|s| s.input.len() > 1) {
            self.prefill_turn = self.prefill_turn.wrapping_add(1);
        }
        let known = self.model.tokenizer.vocab_size();
        let model = &*self.model.model;
        let mut taking: Vec<(&mut Sequence, usize)> = running
            .iter_mut()
            .zip(plan)
            .filter(|(_, n)| *n > 0)
            .collect();
        self.shared.steps.fetch_add(1, Ordering::Relaxed);
        self.shared
            .sequence_steps
            .fetch_add(taking.len() as u64, Ordering::Relaxed);
        self.shared
            .largest_batch
            .fetch_max(taking.len(), Ordering::Relaxed);
        crate::metrics::batch_step(&self.model.id, taking.len());
        if let [(s, n)] = taking.as_mut_slice() {
            if *n < s.input.len() {
                // Part of a prompt: its keys and values are what this pass is for.
                model.forward(&s.input[..*n], &mut s.cache);
                s.input.drain(..*n);
                return;
            }
            let choice = s.sampler.prepare(&s.history);
            let next = match model.forward_choose(&s.input, &mut s.cache, &choice, known) {
                Next::Token(t) => Ok(t),
                Next::Logits(logits) => choose(logits, known, &s.sampler, &choice, true),
                Next::Penalized(logits) => choose(logits, known, &s.sampler, &choice, false),
            };
            self.take(s, next);
            return;
        }
        let mut segments: Vec<Segment<'_>> = taking
            .iter_mut()
            .map(|(s, n)| Segment {
                tokens: &s.input[..*n],
                cache: &mut s.cache,
            })
            .collect();
        let logits = model.forward_batch(&mut segments);
        drop(segments);
        for ((s, n), logits) in taking.into_iter().zip(logits) {
            if n < s.input.len() {
                s.input.drain(..n);
                continue;
            }
            let choice = s.sampler.prepare(&s.history);
            let next = choose(logits, known, &s.sampler, &choice, true);
            self.take(s, next);
        }
    }

    /// Take the pass's choice for `s`: its next token, or the failure that ends it (logits no
    /// token can be chosen from fail this sequence, as a failed pass does, not the others).
    fn take(&self, s: &mut Sequence, next: Result<u32, EngineError>) {
        match next {
            Ok(t) => self.accept(s, t),
            Err(e) => {
                tracing::error!(model = %self.model.id, error = %e, "no token could be chosen; failing the sequence");
                s.outcome = Some(Err(e));
            }
        }
    }

    /// Take `next` into `s`: stop on end of sequence, a stop sequence or the length limit;
    /// otherwise hand on the text no stop sequence can claim.
    fn accept(&self, s: &mut Sequence, next: u32) {
        let tokenizer = &self.model.tokenizer;
        let end = tokenizer.stop_ids.contains(&next);
        if end {
            // The end marker answers the prompt (a time to first token when it comes first)
            // but is no token of the answer: the metrics count what `usage` counts.
            s.request.timer.first_text();
        } else {
            s.request.timer.token();
            s.generated.push(next);
            s.history.push(next);
            s.input = vec![next];
        }
        let last = end || s.generated.len() >= s.request.params.max_tokens as usize;
        let checked = s.text.len();
        match tokenizer.decode_next(&s.generated, &mut s.decoding, last) {
            Ok(piece) => s.text.push_str(&piece),
            Err(e) => {
                s.outcome = Some(Err(EngineError::Runtime(e.to_string())));
                return;
            }
        }
        let stops = &s.request.params.stop;
        if let Some(cut) = earliest_stop(&s.text, stops, checked) {
            s.text.truncate(cut);
            s.outcome = Some(Ok(FinishReason::StopSequence));
            return;
        }
        if end {
            s.outcome = Some(Ok(FinishReason::EndOfSequence));
            return;
        }
        // Hold back a tail that could still grow into a stop sequence (an unfinished character
        // is not in the text until it completes).
        let safe = safe_prefix_len(&s.text, stops);
        if let Some(piece) = s.text.get(s.emitted..safe).filter(|p| !p.is_empty()) {
            let piece = piece.to_string();
            s.emitted = safe;
            if s.request.progress.send(Progress::Text(piece)).is_err() {
                // The caller is gone: nobody will read the rest.
                s.outcome = Some(Err(EngineError::Cancelled));
                return;
            }
        }
        if last {
            s.outcome = Some(Ok(FinishReason::Length));
        }
    }
}

impl Sequence {
    /// Hand on the held-back tail and the completion (with the whole text), or the error.
    fn finish(self, model_id: &str) {
        let Sequence {
            request,
            text,
            emitted,
            generated,
            outcome,
            cache,
            ..
        } = self;
        // The KV cache goes now, not when the caller has read the answer.
        drop(cache);
        let Request {
            prompt_ids,
            timer,
            progress,
            ..
        } = request;
        let result = match outcome {
            Some(Ok(finish_reason)) => {
                // What was streamed is a prefix of the text (see `accept`); `get` keeps a
                // decoder that broke that from taking the thread down.
                if let Some(rest) = text.get(emitted..).filter(|r| !r.is_empty()) {
                    let _ = progress.send(Progress::Text(rest.to_string()));
                }
                Ok(Completion {
                    model: model_id.to_string(),
                    text,
                    finish_reason,
                    usage: Usage {
                        prompt_tokens: prompt_ids.len() as u32,
                        completion_tokens: generated.len() as u32,
                    },
                })
            }
            outcome => {
                // Cancelled or failed part-way: the prompt was read and `generated` made, and
                // whoever counts tokens (a plugin's budget, the stats) should know.
                let _ = progress.send(Progress::Spent(Usage {
                    prompt_tokens: prompt_ids.len() as u32,
                    completion_tokens: generated.len() as u32,
                }));
                Err(match outcome {
                    Some(Err(e)) => e,
                    _ => EngineError::Runtime("sequence retired unfinished".into()),
                })
            }
        };
        // Settle the metrics before the caller hears of the end (a client reading /metrics
        // right after its answer sees the generation gone).
        drop(timer);
        let _ = progress.send(Progress::Done(result));
    }
}

/// Choose from host logits: padding rows masked, the repeat penalty applied unless the device
/// did it already. Logits no token can be chosen from (NaN, infinities: a broken pass) are the
/// engine's failure, not a token.
fn choose(
    mut logits: Vec<f32>,
    known: usize,
    sampler: &Sampler,
    choice: &sampling::Choice,
    penalize: bool,
) -> Result<u32, EngineError> {
    if logits.len() > known {
        logits[known..].fill(f32::NEG_INFINITY);
    }
    if penalize {
        sampling::apply_repeat_penalty(&mut logits, &choice.penalized, choice.repeat_penalty);
    }
    sampler
        .finish(&logits, choice)
        .map_err(|e| EngineError::Runtime(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::engine::models::{Architecture, CacheShape};
    use crate::engine::quant::GgmlType;
    use crate::engine::synthetic::SyntheticSpec;
    use crate::engine::{LoadedModel, Prompt};

    /// A real CPU model that holds only `slots` sequences at once (as a GPU model with that
    /// many KV-cache slots does) and records the tokens of every segment of every pass; its
    /// first pass waits until the test opens `gate`, when there is one, and the pass numbered
    /// in `cancel_at` sets its flag.
    struct Probe {
        inner: Arc<dyn CausalLm>,
        slots: usize,
        passes: Mutex<Vec<Vec<usize>>>,
        gate: Mutex<Option<mpsc::Receiver<()>>>,
        cancel_at: Option<(usize, Arc<AtomicBool>)>,
    }

    impl Probe {
        fn new(inner: Arc<dyn CausalLm>, slots: usize) -> Self {
            Self {
                inner,
                slots,
                passes: Mutex::new(Vec::new()),
                gate: Mutex::new(None),
                cancel_at: None,
            }
        }

        fn record(&self, sizes: Vec<usize>) {
            if let Some(gate) = self.gate.lock().expect("gate").take() {
                let _ = gate.recv();
            }
            let mut passes = self.passes.lock().expect("passes");
            passes.push(sizes);
            if let Some((at, cancel)) = &self.cancel_at
                && passes.len() == *at
            {
                cancel.store(true, Ordering::Relaxed);
            }
        }

        /// Hold the first pass until the returned sender sends (or is dropped).
        fn hold_first_pass(&self) -> mpsc::Sender<()> {
            let (open, gate) = mpsc::channel();
            *self.gate.lock().expect("gate") = Some(gate);
            open
        }

        fn passes(&self) -> Vec<Vec<usize>> {
            self.passes.lock().expect("passes").clone()
        }
    }

    impl CausalLm for Probe {
        fn context_length(&self) -> usize {
            self.inner.context_length()
        }
        fn vocab(&self) -> usize {
            self.inner.vocab()
        }
        fn cache_shape(&self) -> CacheShape {
            self.inner.cache_shape()
        }
        fn max_sequences(&self) -> usize {
            self.slots
        }
        fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
            self.record(vec![tokens.len()]);
            self.inner.forward(tokens, cache)
        }
        fn forward_batch(&self, segments: &mut [Segment<'_>]) -> Vec<Vec<f32>> {
            self.record(segments.iter().map(|s| s.tokens.len()).collect());
            self.inner.forward_batch(segments)
        }
    }

    /// A small random Llama-shaped checkpoint in a fresh folder `name`.
    fn synthetic_checkpoint(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("agentrt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SyntheticSpec {
            arch: Architecture::Llama,
            n_layer: 2,
            dim: 64,
            n_head: 4,
            n_kv_head: 2,
            ffn_dim: 128,
            vocab: 320,
            context: 512,
            dtype: GgmlType::F32,
            separate_head: false,
            seed: 11,
        }
        .write(&dir)
        .expect("write checkpoint");
        dir
    }

    /// The checkpoint at `dir` with these batch limits (room for 16 waiting, no prefix reuse).
    fn limited(dir: &std::path::Path, max_batch: usize, prefill_chunk: usize) -> LoadedModel {
        LoadedModel::load("synthetic", dir, &mut |_| {})
            .expect("load")
            .with_batch_limits(BatchLimits {
                max_batch,
                queue: 16,
                prefix_cache: 0,
                prefill_chunk,
                kv_cache: 0,
            })
    }

    /// `model` with the scheduler's other parts taken from `base`.
    fn with_model(base: LoadedModel, model: Arc<dyn CausalLm>) -> LoadedModel {
        let LoadedModel {
            info,
            tokenizer,
            template,
            fim,
            kv_precision,
            batch_limits,
            ..
        } = base;
        LoadedModel {
            info,
            model,
            tokenizer,
            template,
            fim,
            kv_precision,
            batch_limits,
            scheduler: OnceLock::new(),
        }
    }

    #[test]
    fn a_model_with_few_kv_slots_never_runs_more_sequences_than_it_holds() {
        let dir = synthetic_checkpoint("slots");
        let load = |max_batch| limited(&dir, max_batch, BatchLimits::default().prefill_chunk);
        let alone = load(1);
        let base = load(8);
        let few = Arc::new(Probe::new(base.model.clone(), 2));
        let limited = with_model(base, few.clone());
        assert_eq!(limited.batch_limits().max_batch, 2);

        let params = SamplingParams {
            max_tokens: 12,
            ..SamplingParams::default()
        };
        let prompts: Vec<Prompt> = (0..5)
            .map(|i| Prompt::Text(format!("request {i}: {}", "xy ".repeat(i + 1))))
            .collect();
        // The first pass waits until every request is queued: a tiny model can otherwise
        // finish one request before the next arrives, and nothing would ever share a pass.
        let open = few.hold_first_pass();
        let generations: Vec<_> = prompts
            .iter()
            .map(|p| {
                limited
                    .start(p, &params, &Control::default())
                    .expect("queued")
            })
            .collect();
        open.send(()).expect("open the gate");
        let together: Vec<_> = generations
            .into_iter()
            .map(|g| std::thread::spawn(move || g.finish(&mut |_| {})))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread").expect("generation"))
            .collect();
        for (i, (p, got)) in prompts.iter().zip(&together).enumerate() {
            let want = alone
                .generate(p, &params, &Control::default(), &mut |_| {})
                .expect("alone");
            assert_eq!(want.text, got.text, "request {i}");
        }
        let stats = limited.batch_stats();
        assert_eq!(stats.largest_batch, 2, "{stats:?}");
        assert_eq!(few.passes().iter().map(Vec::len).max(), Some(2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_wait_for_room_in_the_kv_budget_and_one_past_all_of_it_is_refused() {
        let dir = synthetic_checkpoint("kv-budget");
        let params = SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        };
        let prompts: Vec<Prompt> = (0..3)
            .map(|i| Prompt::Text(format!("request {i}")))
            .collect();
        let probe_base = limited(&dir, 8, 16);
        let position = probe_base.kv_bytes_per_position();
        let most = prompts
            .iter()
            .map(|p| probe_base.tokenize_prompt(p).expect("tokens").len())
            .max()
            .expect("prompts")
            + params.max_tokens as usize;
        // Room for two of the three at once.
        let base = probe_base.with_batch_limits(BatchLimits {
            max_batch: 8,
            queue: 16,
            prefix_cache: 0,
            prefill_chunk: 16,
            kv_cache: 2 * most * position + position,
        });
        let probe = Arc::new(Probe::new(base.model.clone(), usize::MAX));
        let model = with_model(base, probe.clone());
        let open = probe.hold_first_pass();
        let generations: Vec<_> = prompts
            .iter()
            .map(|p| {
                model
                    .start(p, &params, &Control::default())
                    .expect("queued")
            })
            .collect();
        open.send(()).expect("open the gate");
        for g in generations {
            g.finish(&mut |_| {}).expect("every request ends");
        }
        assert_eq!(probe.passes().iter().map(Vec::len).max(), Some(2));
        // One that needs more than the whole budget can never run: refused at once.
        let long = SamplingParams {
            max_tokens: (3 * most) as u32,
            ..params
        };
        let refused = model.start(&prompts[0], &long, &Control::default());
        assert!(
            matches!(refused, Err(EngineError::KvCacheBudget { .. })),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A model with room for one running and one waiting generation, whose passes `Probe`
    /// records (and can hold at the first).
    fn one_batch_and_one_queue_place(label: &str) -> (std::path::PathBuf, LoadedModel, Arc<Probe>) {
        let dir = synthetic_checkpoint(label);
        let base = limited(&dir, 1, 16).with_batch_limits(BatchLimits {
            max_batch: 1,
            queue: 1,
            prefix_cache: 0,
            prefill_chunk: 16,
            kv_cache: 0,
        });
        let probe = Arc::new(Probe::new(base.model.clone(), 1));
        let model = with_model(base, probe.clone());
        (dir, model, probe)
    }

    fn short_request() -> (Prompt, SamplingParams) {
        let params = SamplingParams {
            max_tokens: 4,
            ..SamplingParams::default()
        };
        (Prompt::Text("hello".into()), params)
    }

    /// Wait until nothing is queued on `model` (what was submitted runs).
    fn wait_until_admitted(model: &LoadedModel) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while model.batch_stats().waiting > 0 {
            assert!(
                std::time::Instant::now() < until,
                "a request was never admitted"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_generation_cancelled_part_way_reports_what_it_used() {
        let dir = synthetic_checkpoint("cancelled-usage");
        let base = limited(&dir, 1, 16);
        let cancel = Arc::new(AtomicBool::new(false));
        // Cancelled during its fourth pass, whatever the threads' timing: the prompt and a
        // few tokens are made by then.
        let probe = Probe {
            cancel_at: Some((4, cancel.clone())),
            ..Probe::new(base.model.clone(), base.model.max_sequences())
        };
        let model = with_model(base, Arc::new(probe));
        let control = Control {
            cancel: Some(cancel.clone()),
            ..Control::default()
        };
        let params = SamplingParams {
            max_tokens: 400,
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let prompt = Prompt::Text("hello there".into());
        let generation = model.start(&prompt, &params, &control).expect("start");
        let stopped = generation
            .finish_counted(&mut |_| {})
            .expect_err("cancelled before 400 tokens");
        assert!(
            matches!(stopped.error, EngineError::Cancelled),
            "{stopped:?}"
        );
        let spent = stopped.spent.expect("a local model says what it used");
        let prompt_tokens = model.tokenize_prompt(&prompt).expect("tokens").len() as u32;
        assert_eq!(spent.prompt_tokens, prompt_tokens);
        assert!((1..=4).contains(&spent.completion_tokens), "{spent:?}");

        // Cancelled while still waiting for its turn: it used nothing, and says so.
        let waiting = Control {
            cancel: Some(Arc::new(AtomicBool::new(true))),
            ..Control::default()
        };
        match model.start(&prompt, &params, &waiting) {
            Ok(generation) => {
                let stopped = generation
                    .finish_counted(&mut |_| {})
                    .expect_err("cancelled");
                assert_eq!(stopped.spent, Some(Usage::default()), "{stopped:?}");
            }
            // Refused before it was queued: nothing to report either.
            Err(e) => assert!(matches!(e, EngineError::Cancelled), "{e:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dropped_generation_gives_its_queue_place_back() {
        let (dir, model, probe) = one_batch_and_one_queue_place("dropped");
        // Made after the model, so a failing assertion drops the gate's sender first and the
        // scheduler thread the model's drop joins is not left waiting at the gate.
        let open = probe.hold_first_pass();
        let (prompt, params) = short_request();
        let start = || model.start(&prompt, &params, &Control::default());
        // The first holds the only batch place (its first pass waits at the gate)...
        let first = start().expect("runs");
        wait_until_admitted(&model);
        // ...the second the only queue place.
        let second = start().expect("queued");
        assert!(matches!(start(), Err(EngineError::QueueFull { .. })));
        // Nobody waits for the second any more: its place goes to the next request.
        drop(second);
        let third = start().expect("the dropped request's place");
        open.send(()).expect("open the gate");
        first.finish(&mut |_| {}).expect("first");
        third.finish(&mut |_| {}).expect("third");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_caller_waiting_in_line_gets_the_next_queue_place_before_any_newcomer() {
        let (dir, model, probe) = one_batch_and_one_queue_place("in-line");
        let model = Arc::new(model);
        let open = probe.hold_first_pass();
        let (prompt, params) = short_request();
        let in_line = |deadline| Control {
            deadline: Some(deadline),
            wait_in_line: true,
            ..Control::default()
        };
        // The first holds the only batch place, the second the only queue place.
        let first = model
            .start(&prompt, &params, &Control::default())
            .expect("runs");
        wait_until_admitted(&model);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let second = model
            .start(&prompt, &params, &Control::default())
            .expect("queued");
        // One in line whose deadline comes first gives up with a timeout, not a full queue.
        let soon = std::time::Instant::now() + std::time::Duration::from_millis(50);
        let late = model.start(&prompt, &params, &in_line(soon));
        assert!(matches!(late, Err(EngineError::Timeout)), "{late:?}");
        // One that waits long stands in line...
        let waiter = {
            let (model, prompt, params) = (model.clone(), prompt.clone(), params.clone());
            std::thread::spawn(move || model.start(&prompt, &params, &in_line(until)))
        };
        let places = model.scheduler().expect("scheduler").places.clone();
        while places.waiting() == 0 {
            assert!(std::time::Instant::now() < until, "the waiter never queued");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // ...and the place the second frees is its, not a newcomer's that will not wait.
        drop(second);
        let newcomer = model.start(&prompt, &params, &Control::default());
        assert!(
            matches!(newcomer, Err(EngineError::QueueFull { .. })),
            "{newcomer:?}"
        );
        let waited = waiter.join().expect("join").expect("queued in turn");
        open.send(()).expect("open the gate");
        first.finish(&mut |_| {}).expect("first");
        waited.finish(&mut |_| {}).expect("the one that waited");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_long_prompt_is_read_in_chunks_while_others_keep_decoding() {
        let dir = synthetic_checkpoint("chunks");
        let load = |max_batch, prefill_chunk| limited(&dir, max_batch, prefill_chunk);
        let whole = load(1, 1 << 20);
        let base = load(8, 16).with_batch_limits(BatchLimits {
            max_batch: 8,
            queue: 16,
            prefix_cache: 16 << 20,
            prefill_chunk: 16,
            kv_cache: 0,
        });
        let recorder = Arc::new(Probe::new(base.model.clone(), 8));
        let open = recorder.hold_first_pass();
        let chunked = with_model(base, recorder.clone());
        let params = |max_tokens| SamplingParams {
            max_tokens,
            ..SamplingParams::default()
        };
        let short = Prompt::Text("decode this".into());
        let long = Prompt::Text("a long prompt ".repeat(10));
        let long_tokens = chunked.tokenize_prompt(&long).expect("tokens").len();
        assert!(long_tokens > 100, "{long_tokens} tokens");

        // The short one's first pass waits until the long one is queued; then the short one
        // decodes (for many more passes than the long prompt takes to read) while the long
        // one is read.
        let decoding = chunked
            .start(&short, &params(200), &Control::default())
            .expect("queued");
        let reading = chunked
            .start(&long, &params(6), &Control::default())
            .expect("queued");
        open.send(()).expect("open the gate");
        let decoder = std::thread::spawn(move || decoding.finish(&mut |_| {}));
        let long_answer = reading.finish(&mut |_| {}).expect("long");
        let short_answer = decoder.join().expect("thread").expect("short");

        // Chunked or not, batched or alone: the same answers.
        let alone = |p: &Prompt, n| {
            whole
                .generate(p, &params(n), &Control::default(), &mut |_| {})
                .expect("alone")
        };
        assert_eq!(long_answer.text, alone(&long, 6).text);
        assert_eq!(short_answer.text, alone(&short, 200).text);
        let alone_chunked = load(1, 16);
        let read_alone = alone_chunked
            .generate(&long, &params(6), &Control::default(), &mut |_| {})
            .expect("alone, chunked");
        assert_eq!(read_alone.text, long_answer.text);

        // No pass read more than 16 prompt tokens, and while the long prompt was read (a
        // pass of 16 of its tokens) the short one decoded beside it every time.
        let passes = recorder.passes();
        let reading: Vec<&Vec<usize>> = passes.iter().filter(|p| p.contains(&16)).collect();
        assert!(
            reading.len() >= long_tokens / 16,
            "{} passes read 16 prompt tokens: {passes:?}",
            reading.len()
        );
        for pass in &reading {
            assert_eq!(pass.as_slice(), [1, 16], "{passes:?}");
        }
        assert!(
            passes
                .iter()
                .all(|p| p.iter().filter(|n| **n > 1).sum::<usize>() <= 16),
            "{passes:?}"
        );

        // A prompt that starts like the long one reuses its keys and values, and is cut at
        // multiples of 16 in its own positions: first up to the next one, then whole chunks.
        let longer = Prompt::Text(format!(
            "{}{}",
            "a long prompt ".repeat(10),
            "and then some more words to read".repeat(2)
        ));
        let longer_tokens = chunked.tokenize_prompt(&longer).expect("tokens").len();
        let before = recorder.passes().len();
        let answer = chunked
            .generate(&longer, &params(2), &Control::default(), &mut |_| {})
            .expect("longer");
        assert_eq!(answer.text, alone(&longer, 2).text);
        let reused = chunked.batch_stats().prefix_tokens_reused as usize;
        assert!(
            reused >= long_tokens / 2 && !reused.is_multiple_of(16),
            "{reused} tokens reused"
        );
        let mut want = Vec::new();
        let mut at = reused;
        while at < longer_tokens {
            let n = (longer_tokens - at).min(16 - at % 16);
            want.push(vec![n]);
            at += n;
        }
        want.push(vec![1]); // the second token
        let passes = recorder.passes();
        assert_eq!(
            passes[before..],
            want[..],
            "cut at multiples of 16 after {reused} reused"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_short_prompt_is_read_while_a_long_one_admitted_first_still_is() {
        let dir = synthetic_checkpoint("turns");
        let base = limited(&dir, 8, 16);
        let recorder = Arc::new(Probe::new(base.model.clone(), 8));
        let open = recorder.hold_first_pass();
        let model = with_model(base, recorder.clone());
        let params = SamplingParams {
            max_tokens: 2,
            ..SamplingParams::default()
        };
        let long = Prompt::Text("a long prompt ".repeat(10));
        let short = Prompt::Text("decode this".into());
        let long_tokens = model.tokenize_prompt(&long).expect("tokens").len();
        let short_tokens = model.tokenize_prompt(&short).expect("tokens").len();
        assert!(long_tokens > 100, "{long_tokens} tokens");
        // More than one token (a prompt still to read), less than a chunk (told apart from
        // the long prompt's whole chunks).
        assert!((2..16).contains(&short_tokens), "{short_tokens} tokens");

        // The long prompt's first pass waits until the short one is queued too.
        let reading = model
            .start(&long, &params, &Control::default())
            .expect("queued");
        let quick = model
            .start(&short, &params, &Control::default())
            .expect("queued");
        open.send(()).expect("open the gate");
        let quick = std::thread::spawn(move || quick.finish(&mut |_| {}));
        reading.finish(&mut |_| {}).expect("long");
        quick.join().expect("thread").expect("short");

        // Every chunk of the long prompt takes the whole budget of 16: read first admitted
        // first, the short prompt would wait for all of them.
        let passes = recorder.passes();
        assert!(
            passes.iter().take(2).any(|p| p.contains(&short_tokens)),
            "the short prompt was not read in the first two passes: {passes:?}"
        );
        assert!(
            passes
                .iter()
                .all(|p| p.iter().filter(|n| **n > 1).sum::<usize>() <= 16),
            "{passes:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A model whose every pass ends in NaN logits (a broken pass).
    struct Broken {
        inner: Arc<dyn CausalLm>,
    }

    impl CausalLm for Broken {
        fn context_length(&self) -> usize {
            self.inner.context_length()
        }
        fn vocab(&self) -> usize {
            self.inner.vocab()
        }
        fn cache_shape(&self) -> CacheShape {
            self.inner.cache_shape()
        }
        fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
            let mut logits = self.inner.forward(tokens, cache);
            logits.fill(f32::NAN);
            logits
        }
    }

    #[test]
    fn logits_that_are_not_numbers_fail_the_generation_with_a_runtime_error() {
        let dir = synthetic_checkpoint("nan");
        let base = limited(&dir, 8, 16);
        let inner = base.model.clone();
        let broken = with_model(base, Arc::new(Broken { inner }));
        let greedy = SamplingParams {
            max_tokens: 4,
            ..SamplingParams::default()
        };
        let sampled = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            ..greedy.clone()
        };
        for params in [&greedy, &sampled] {
            let got = broken.generate(
                &Prompt::Text("hello".into()),
                params,
                &Control::default(),
                &mut |_| {},
            );
            let failed = matches!(
                &got,
                Err(EngineError::Runtime(m)) if m.contains("no token can be chosen")
            );
            assert!(failed, "{got:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
