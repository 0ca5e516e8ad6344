//! Pipeline runs as resources: submitted, queued, run in the background, stored with every
//! event in the [`Store`], streamed live to whoever watches, cancellable.
//!
//! At most `workers` runs execute at once; up to `capacity` may be queued or running, and a
//! submission beyond that is refused (`QUEUE_001`, 429 with `Retry-After`) rather than
//! accepted and lost. Each run gets a thread; its events are numbered, committed to the store
//! as they happen and broadcast to live watchers. Generated text arrives token by token and is
//! gathered into `tokens` events (a few per second), so storing a run stays cheap and a watcher
//! who joins late replays exactly what a live one saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::error_code::ErrorCode;
use crate::fifo_semaphore::{FifoSemaphore, Place};
use crate::pipeline::report::ErrorOut;
use crate::pipeline::{Pipeline, PipelineEvent, PipelineRequest, RunContext};
use crate::plugin::CallContext;
use crate::store::{RunRecord, RunState, RunStore, StoreError, StoredEvent, now_ms};

/// Runs executing at once when not configured (each may hold a plugin slot and the model).
pub const DEFAULT_WORKERS: usize = 2;
/// The name runs are counted under in `/stats`.
pub const STATS_ENDPOINT: &str = "/v1/pipeline/runs";
/// Runs queued or running at once when not configured.
pub const DEFAULT_CAPACITY: usize = 32;
/// Generated text goes out as a `tokens` event as it comes, except that pieces following
/// within the age of the last event are gathered, up to the size.
const TOKENS_FLUSH_BYTES: usize = 256;
const TOKENS_FLUSH_AGE: Duration = Duration::from_millis(100);
/// Pauses between attempts at storing a run's end that the store refused, doubling.
const FIRST_END_RETRY: Duration = Duration::from_millis(500);
const LAST_END_RETRY: Duration = Duration::from_secs(30);
/// Live events buffered per watcher before it lags (and catches up from the store).
const BROADCAST_DEPTH: usize = 1024;

/// A numbered event, as stored and as sent to live watchers.
pub type NumberedEvent = Arc<StoredEvent>;

/// Why a submission or cancellation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(
        "{queued} pipeline runs are queued or running, the most this server takes; try again shortly"
    )]
    QueueFull { queued: usize },
    #[error(
        "this API key has {held} pipeline runs queued or running, its share of this server's \
         queue (AGENTRT_RUN_QUEUE over the number of keys, or AGENTRT_RUN_QUEUE_PER_KEY); try \
         again when one has ended"
    )]
    KeyQueueFull { held: usize },
    #[error("no pipeline run {0}")]
    NotFound(String),
    #[error("pipeline run {id} has already ended ({state})")]
    Finished { id: String, state: &'static str },
    #[error(
        "pipeline run {0} is {1} on another host sharing the store; cancel it through that host"
    )]
    Elsewhere(String, &'static str),
    #[error("the server is shutting down and takes no new pipeline runs; try another")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunsError {
    pub fn code(&self) -> ErrorCode {
        match self {
            // Like a full queue: no place here now, another server (or this one restarted) takes it.
            Self::QueueFull { .. } | Self::KeyQueueFull { .. } | Self::ShuttingDown => {
                ErrorCode::QueueFull
            }
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Finished { .. } => ErrorCode::RunFinished,
            Self::Elsewhere(..) => ErrorCode::RunElsewhere,
            Self::Store(_) => ErrorCode::StoreFailed,
        }
    }
}

/// A run in this process (queued or running).
struct LiveRun {
    cancel: Arc<AtomicBool>,
    events: broadcast::Sender<NumberedEvent>,
    /// The state the run is ending in, set (under the live table's lock) before its end is
    /// stored: a cancel from then on is answered `RUN_001`, not accepted for a run that will
    /// not see it.
    ended_as: OnceLock<&'static str>,
    /// Numbered events the store refused so far, oldest first (stored before any later one);
    /// a watcher that fell behind the broadcast reads them here (see [`Runs::events_after`]).
    unstored: Mutex<Vec<StoredEvent>>,
    /// Stopped by the server's shutdown rather than by a client: a run that has not started
    /// by then stays queued in the store, for the next start ([`Runs::resume_queued`]).
    parked: AtomicBool,
    /// Whose it is (see [`Runs::submit`]'s share).
    submitted_by: Option<String>,
    /// Its place among the runs waiting for a worker, while it waits.
    ticket: OnceLock<u64>,
}

impl LiveRun {
    fn of(submitted_by: Option<&str>) -> Self {
        Self {
            cancel: Arc::new(AtomicBool::new(false)),
            events: broadcast::channel(BROADCAST_DEPTH).0,
            ended_as: OnceLock::new(),
            unstored: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            submitted_by: submitted_by.map(str::to_owned),
            ticket: OnceLock::new(),
        }
    }

    fn unstored(&self) -> std::sync::MutexGuard<'_, Vec<StoredEvent>> {
        self.unstored.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The runs of one server.
pub struct Runs {
    store: Arc<dyn RunStore>,
    pipeline: Pipeline,
    workers: usize,
    capacity: usize,
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// Worker slots, taken first come first served (runs block on a plain thread, not the
    /// runtime).
    slots: Arc<FifoSemaphore>,
    /// Set by [`Runs::shutdown`]: no run is taken after its cancellation sweep.
    closing: AtomicBool,
    /// Set by [`Runs::stop_taking`] when shutting down begins: the runs in flight go on
    /// (their ends are still stored), new ones are refused.
    refusing: AtomicBool,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs")
            .field("store", &self.store.location())
            .field("workers", &self.workers)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Numbers a run's events, commits each to the store, then broadcasts it; gathers generated
/// text into `tokens` events.
struct Emitter {
    id: String,
    store: Arc<dyn RunStore>,
    live: Arc<LiveRun>,
    inner: Mutex<EmitterState>,
}

struct EmitterState {
    next_seq: i64,
    text: String,
    /// When generated text was last published (`None`: not yet).
    text_published: Option<Instant>,
}

impl Emitter {
    fn new(id: &str, store: Arc<dyn RunStore>, live: Arc<LiveRun>) -> Self {
        Self {
            id: id.to_string(),
            store,
            live,
            inner: Mutex::new(EmitterState {
                next_seq: 1,
                text: String::new(),
                text_published: None,
            }),
        }
    }

    /// The emitter of a run whose events so far end before `first_seq`.
    fn numbering_from(self, first_seq: i64) -> Self {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_seq = first_seq;
        self
    }

    fn number(&self, st: &mut EmitterState, event: &PipelineEvent) -> StoredEvent {
        let seq = st.next_seq;
        st.next_seq += 1;
        StoredEvent {
            seq,
            at_ms: now_ms(),
            kind: event.kind().to_string(),
            data: serde_json::to_string(event).unwrap_or_else(|_| "{}".into()),
        }
    }

    fn publish(&self, st: &mut EmitterState, event: &PipelineEvent) {
        let stored = self.number(st, event);
        self.live.unstored().push(stored.clone());
        self.store_unstored(st);
        let _ = self.live.events.send(Arc::new(stored));
    }

    /// Store the events not stored yet, in order, stopping at the first the store still
    /// refuses: the run goes on and live watchers get every event with its number, and the
    /// refused ones are stored before any later one, so the stored events keep the numbers
    /// watchers saw, without gaps (inserts are idempotent, so a retried write is harmless).
    ///
    /// `_st` is the emitter's state, held: one writer at a time. The list's own lock is not
    /// held while writing, so readers of it wait for no store.
    fn store_unstored(&self, _st: &mut EmitterState) {
        loop {
            let Some(first) = self.live.unstored().first().cloned() else {
                return;
            };
            if let Err(e) = with_retries(self.store.as_ref(), || {
                self.store.append_event(&self.id, &first)
            }) {
                // The store logged that it refuses writes; per event is noise.
                tracing::debug!(run = %self.id, seq = first.seq, "event not stored yet: {e}");
                return;
            }
            self.live.unstored().remove(0);
        }
    }

    fn flush_text(&self, st: &mut EmitterState) {
        if st.text.is_empty() {
            return;
        }
        let text = std::mem::take(&mut st.text);
        st.text_published = Some(Instant::now());
        self.publish(st, &PipelineEvent::Tokens { text });
    }

    fn event(&self, event: PipelineEvent) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_text(&mut st);
        self.publish(&mut st, &event);
    }

    fn text(&self, piece: &str) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.text.push_str(piece);
        // Text is held back only while some went out within the flush age: pieces that come
        // slower than that (a slow model, the first of a generation) go out as they come,
        // instead of waiting for the next piece to find them old.
        let recently = st
            .text_published
            .is_some_and(|at| at.elapsed() < TOKENS_FLUSH_AGE);
        if st.text.len() >= TOKENS_FLUSH_BYTES || !recently {
            self.flush_text(&mut st);
        }
    }

    /// The closing `done` event, committed with the run's final state and result; watchers
    /// hear it from [`Emitter::announce`], once the run has left the live table, so that a
    /// client acting on `done` finds the run ended everywhere (its queue place free too).
    ///
    /// A store that refuses the end (a database failing over, a full disk) is asked again,
    /// with growing pauses, for as long as `keep_trying` says: the run stays in the live table
    /// meanwhile (a cancel answers `RUN_001`), rather than being left `running` in the store
    /// with its result gone. Given up, the next start marks it interrupted (`RUN_002`).
    #[must_use = "the done event is announced once the run has left the live table"]
    fn finish(
        &self,
        state: RunState,
        outcome: Option<&Value>,
        error: Option<&ErrorOut>,
        keep_trying: &dyn Fn() -> bool,
    ) -> StoredEvent {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_text(&mut st);
        let done = self.number(
            &mut st,
            &PipelineEvent::Done {
                state: state.as_str().to_string(),
                error: error.cloned(),
            },
        );
        let mut pause = FIRST_END_RETRY;
        loop {
            self.store_unstored(&mut st);
            // Stored after events the store has not taken, the end would leave a gap: those
            // go first.
            let stored = if self.live.unstored().is_empty() {
                with_retries(self.store.as_ref(), || {
                    self.store
                        .finish_run(&self.id, state, outcome, error, &done)
                })
                .map_err(|e| e.to_string())
            } else {
                Err("earlier events could not be stored".to_string())
            };
            let Err(e) = stored else { break };
            if !keep_trying() {
                tracing::error!(run = %self.id, "final state not stored: {e}");
                break;
            }
            tracing::warn!(
                run = %self.id,
                retry_in_s = pause.as_secs_f64(),
                "final state not stored yet: {e}"
            );
            // In slices, so that a shutdown is not kept waiting for the pause to end.
            let until = Instant::now() + pause;
            while keep_trying() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
            pause = (pause * 2).min(LAST_END_RETRY);
        }
        done
    }

    /// Tell the run's live watchers about its end (see [`Emitter::finish`]).
    fn announce(&self, done: StoredEvent) {
        let _ = self.live.events.send(Arc::new(done));
    }
}

/// [`Runs::events_after`], for the run `live` when it runs in this process.
fn read_events(
    store: &dyn RunStore,
    live: Option<&LiveRun>,
    id: &str,
    after: i64,
) -> Result<Vec<StoredEvent>, RunsError> {
    // The events not stored yet are read first: one stored meanwhile is in the store's answer
    // then, and one published later is still in the live channel.
    let unstored: Vec<StoredEvent> = live
        .map(|live| {
            live.unstored()
                .iter()
                .filter(|e| e.seq > after)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut events = store.events_after(id, after)?;
    if !unstored.is_empty() {
        events.extend(unstored);
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
    }
    Ok(events)
}

/// How often a run waiting to start tries the store again while it refuses writes.
const STORE_WAIT: Duration = Duration::from_secs(1);

/// The message of a run the server's shutdown cancelled while it ran.
const SHUTDOWN_CANCEL: &str =
    "the run was cancelled: the server shut down while it ran (submit it again)";

/// How long a cancel waits for the run's end to be stored before it answers (see
/// [`Runs::stored_end`]); a run that takes longer to stop is answered `202` in the state it
/// is in, and stops as soon as it can.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// What [`mark_running`] found.
#[derive(Debug, PartialEq)]
enum Marked {
    /// Stored running: the run starts.
    Open,
    /// Closed in the store meanwhile (a restored store, a host taken for gone): not run.
    Closed,
    /// Cancelled, or stopped by the shutdown, while waiting for the store.
    Stopped,
}

/// Mark run `id` running in `store`, tried as every write is ([`with_retries`]) and then, while
/// the store refuses writes (a full disk, a database gone away, a store file replaced), again
/// every [`STORE_WAIT`] until it takes them or `stop` is set: a run accepted waits, queued,
/// for the store instead of failing on it.
fn mark_running(store: &dyn RunStore, id: &str, stop: &AtomicBool) -> Marked {
    let mut waiting = false;
    loop {
        let mut open = true;
        match with_retries(store, || store.set_running(id).map(|o| open = o)) {
            Ok(()) if open => return Marked::Open,
            Ok(()) => return Marked::Closed,
            Err(e) if !waiting => {
                tracing::warn!(
                    target: "agentrt::runs",
                    run = %id,
                    "run waits to start until the run store takes writes again: {e}"
                );
                waiting = true;
            }
            Err(_) => {}
        }
        let until = Instant::now() + STORE_WAIT;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Marked::Stopped;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The line a run's end leaves in the log, with its state and error code: a failed run is a
/// warning, so that `agentrt logs analyze` counts it among the problems.
fn log_run_end(id: &str, state: RunState, code: Option<&str>, took: Duration) {
    let ms = took.as_millis() as u64;
    let state = state.as_str();
    match (state, code) {
        ("failed", code) => {
            tracing::warn!(run = %id, ms, state, code = code.unwrap_or(""), "pipeline run ended")
        }
        (_, Some(code)) => tracing::info!(run = %id, ms, state, code, "pipeline run ended"),
        (_, None) => tracing::info!(run = %id, ms, state, "pipeline run ended"),
    }
}

/// `write`, tried again twice after short pauses: a store busy for a moment (a lock held by a
/// backup, a brief I/O error) must not cost a run its events or its result. Once `store` is
/// known to refuse writes (a full disk) it is tried once: pausing on every event of every run
/// would slow the runs tenfold for nothing, and what is not stored is stored later in order.
fn with_retries<E: std::fmt::Display>(
    store: &dyn RunStore,
    mut write: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let pauses: &[Duration] = if store.refusing_writes() {
        &[]
    } else {
        &[Duration::from_millis(20), Duration::from_millis(200)]
    };
    let mut pauses = pauses.iter().copied();
    loop {
        match write() {
            Ok(()) => return Ok(()),
            Err(e) => match pauses.next() {
                Some(pause) => {
                    tracing::debug!("store write failed, trying again: {e}");
                    std::thread::sleep(pause);
                }
                None => return Err(e),
            },
        }
    }
}

impl Runs {
    pub fn new(
        store: Arc<dyn RunStore>,
        pipeline: Pipeline,
        workers: usize,
        capacity: usize,
    ) -> Self {
        Self {
            store,
            pipeline,
            workers: workers.max(1),
            capacity: capacity.max(1),
            live: Mutex::new(HashMap::new()),
            slots: FifoSemaphore::new(workers.max(1)),
            closing: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
        }
    }

    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Run `id`'s events numbered above `after`, in order: those stored, and those of a run in
    /// this process that the store has refused so far (it stores them later under the same
    /// numbers). What a watcher that fell behind the live events, or starts watching while the
    /// store refuses writes, reads.
    pub fn events_after(&self, id: &str, after: i64) -> Result<Vec<StoredEvent>, RunsError> {
        let live = self.live().get(id).cloned();
        read_events(self.store.as_ref(), live.as_deref(), id, after)
    }

    /// Whether the shutdown has begun (the drain is over, this process's runs are being
    /// cancelled): streams following another host's run end then, rather than hold the
    /// server's exit until that run ends.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveRun>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs queued or running in this process.
    pub fn in_flight(&self) -> usize {
        self.live().len()
    }

    /// Runs that may be queued or running at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs that execute at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// A place for `live` among the runs waiting for a worker, its ticket noted for
    /// [`Runs::queue_position`].
    fn line_up(&self, live: &LiveRun) -> Place {
        let place = self.slots.line_up();
        if let Some(ticket) = place.ticket() {
            let _ = live.ticket.set(ticket);
        }
        place
    }

    /// Where run `id` stands among the runs of this process waiting for a worker: 1 when it is
    /// next. `None` once it has a worker, or when it is not this process's.
    pub fn queue_position(&self, id: &str) -> Option<usize> {
        let ticket = *self.live().get(id)?.ticket.get()?;
        self.slots.ahead_of(ticket).map(|ahead| ahead + 1)
    }

    /// Queue `req` (its JSON form `request` is what is stored and shown) for `submitted_by`,
    /// who may have at most `share` runs queued or running (so that one key's backlog cannot
    /// fill the queue for everyone); returns the run as recorded, `queued`. The run starts when
    /// a worker is free.
    pub fn submit(
        self: &Arc<Self>,
        req: PipelineRequest,
        request: Value,
        submitted_by: Option<&str>,
        share: usize,
    ) -> Result<RunRecord, RunsError> {
        let id = new_run_id();
        let live = Arc::new(LiveRun::of(submitted_by));
        {
            let mut runs = self.live();
            // Checked under the same lock the shutdown's sweep takes: a run is either refused
            // here or in the map the sweep cancels.
            if self.closing.load(Ordering::SeqCst) || self.refusing.load(Ordering::SeqCst) {
                return Err(RunsError::ShuttingDown);
            }
            if runs.len() >= self.capacity {
                return Err(RunsError::QueueFull { queued: runs.len() });
            }
            // Only once the queue is half full: a key alone on an idle server may use it, and
            // past half, every other key still finds room.
            if let Some(who) = submitted_by
                && runs.len() >= self.capacity.div_ceil(2)
            {
                let held = runs
                    .values()
                    .filter(|r| r.submitted_by.as_deref() == Some(who))
                    .count();
                if held >= share {
                    return Err(RunsError::KeyQueueFull { held });
                }
            }
            runs.insert(id.clone(), live.clone());
        }
        let record = match self.store.insert_run(&id, &request, submitted_by) {
            Ok(r) => r,
            Err(e) => {
                self.live().remove(&id);
                return Err(e.into());
            }
        };
        in_flight("queued").inc();
        // Its place among the runs waiting for a worker is taken here, in the order of
        // submission, not when its thread gets going.
        let place = self.line_up(&live);
        self.start(&id, req, live, 1, place);
        Ok(record)
    }

    /// Start the thread of run `id`, queued and in the live table, whose first event will be
    /// number `first_seq`, to wait at `place` for a worker.
    fn start(
        self: &Arc<Self>,
        id: &str,
        req: PipelineRequest,
        live: Arc<LiveRun>,
        first_seq: i64,
        place: Place,
    ) {
        let this = self.clone();
        let run_id = id.to_string();
        let emitter = Emitter::new(id, self.store.clone(), live.clone()).numbering_from(first_seq);
        // Log lines of the run name it, and the request that submitted it.
        let span = tracing::info_span!("run", run_id = %id);
        let spawned = std::thread::Builder::new()
            .name(format!("run-{}", id.get(..8).unwrap_or(id)))
            .spawn(move || span.in_scope(|| this.execute(&run_id, req, live, first_seq, place)));
        if let Err(e) = spawned {
            let error = ErrorOut::new(ErrorCode::Internal, format!("cannot start the run: {e}"));
            self.end_unrun(id, &emitter, RunState::Failed, error, false);
        }
    }

    /// Queue again the runs a previous process of this server accepted and stopped before
    /// they started (still `queued` in the store: a crash, or a shutdown that came first),
    /// oldest first, ahead of any new one: a restart loses no accepted run that had not
    /// begun. (Runs it was executing are failed with `RUN_002` instead, by
    /// [`RunStore::interrupt_unfinished`]: one that crashed the server must not crash it again
    /// at every start.) They are taken even past `AGENTRT_RUN_QUEUE`: they were accepted
    /// already. `request_of` reads a stored request back; a run whose request no longer reads
    /// is closed as interrupted. Everything is read before any run starts, so a store that
    /// fails meanwhile starts none (a run whose events cannot be read stays queued). Returns
    /// how many were queued again. Call once, just before the server takes requests.
    pub fn resume_queued(
        self: &Arc<Self>,
        request_of: impl Fn(&Value) -> Result<PipelineRequest, String>,
    ) -> Result<usize, RunsError> {
        let mut ready = Vec::new();
        for record in self.store.queued_runs()? {
            match self.store.events_after(&record.id, 0) {
                Ok(events) => ready.push((record, events.last().map_or(1, |e| e.seq + 1))),
                Err(e) => tracing::warn!(
                    target: "agentrt::runs",
                    run = %record.id,
                    "queued run left for the next start: its events cannot be read: {e}"
                ),
            }
        }
        let mut resumed = 0;
        for (record, first_seq) in ready {
            let live = Arc::new(LiveRun::of(record.submitted_by.as_deref()));
            self.live().insert(record.id.clone(), live.clone());
            in_flight("queued").inc();
            match request_of(&record.request) {
                Ok(req) => {
                    let place = self.line_up(&live);
                    self.start(&record.id, req, live, first_seq, place);
                    resumed += 1;
                }
                Err(why) => {
                    let emitter = Emitter::new(&record.id, self.store.clone(), live)
                        .numbering_from(first_seq);
                    let error = ErrorOut::new(
                        ErrorCode::RunInterrupted,
                        format!(
                            "the server stopped before this run started, and its stored request \
                             cannot be run again ({why}); submit it again"
                        ),
                    );
                    self.end_unrun(&record.id, &emitter, RunState::Failed, error, false);
                }
            }
        }
        if resumed > 0 {
            tracing::info!(
                target: "agentrt::runs",
                runs = resumed,
                "runs accepted before the server stopped, not yet started, queued again"
            );
        }
        Ok(resumed)
    }

    /// End a run that never ran (its thread could not start, or it was cancelled while
    /// queued): counted as every other end of a run is, stored, and announced once it has
    /// left the live table.
    /// `persist`: keep trying to store the end while the store refuses it (not on a request's
    /// own thread, which must answer).
    fn end_unrun(
        &self,
        id: &str,
        emitter: &Emitter,
        state: RunState,
        error: ErrorOut,
        persist: bool,
    ) {
        if let Some(live) = self.live().get(id) {
            let _ = live.ended_as.set(state.as_str());
        }
        in_flight("queued").dec();
        crate::metrics::count_pipeline_run(state.as_str());
        self.pipeline
            .stats
            .record_endpoint(STATS_ENDPOINT, 0, 0, Some(error.code.as_str()));
        let done = emitter.finish(state, None, Some(&error), &|| persist && !self.closing());
        log_run_end(id, state, Some(&error.code), Duration::ZERO);
        self.live().remove(id);
        emitter.announce(done);
    }

    /// Leave run `id`, which never started, queued in the store for the next start, if the
    /// shutdown parked it ([`Runs::shutdown`]): whether it did. Decided and done under the
    /// live table's lock, which a client's cancel takes to unpark it: a cancel answered is
    /// never a run kept.
    fn park(&self, id: &str, live: &LiveRun) -> bool {
        {
            let mut table = self.live();
            if !live.parked.load(Ordering::SeqCst) {
                return false;
            }
            table.remove(id);
        }
        in_flight("queued").dec();
        tracing::info!(
            target: "agentrt::runs",
            run = %id,
            "run not started before the server stopped; left queued for the next start"
        );
        true
    }

    fn execute(
        &self,
        id: &str,
        req: PipelineRequest,
        live: Arc<LiveRun>,
        first_seq: i64,
        place: Place,
    ) {
        let emitter =
            Arc::new(Emitter::new(id, self.store.clone(), live.clone()).numbering_from(first_seq));
        let Ok(slot) = place.wait(None, Some(&live.cancel)) else {
            if self.park(id, &live) {
                return;
            }
            // Cancelled before it started: counted as a run that ended so, as one cancelled
            // while running is.
            let error = ErrorOut::new(ErrorCode::Cancelled, "the run was cancelled");
            self.end_unrun(id, &emitter, RunState::Cancelled, error, true);
            return;
        };
        // A run does not start until the store shows it running: one still stored `queued`
        // would run again at the next start.
        let still_open = match mark_running(self.store.as_ref(), id, &live.cancel) {
            Marked::Open => true,
            Marked::Closed => false,
            Marked::Stopped => {
                drop(slot);
                if self.park(id, &live) {
                    return;
                }
                let error = ErrorOut::new(ErrorCode::Cancelled, "the run was cancelled");
                self.end_unrun(id, &emitter, RunState::Cancelled, error, true);
                return;
            }
        };
        if !still_open {
            // Closed meanwhile (a restored store, a host taken for gone): not this run's turn.
            tracing::warn!(run = %id, "run closed in the store before it started; not run");
            in_flight("queued").dec();
            drop(slot);
            self.live().remove(id);
            return;
        }
        in_flight("queued").dec();
        in_flight("running").inc();
        let sink = emitter.clone();
        let text = emitter.clone();
        let pipeline = self.pipeline.tracked(RunContext {
            events: Some(Arc::new(move |event| sink.event(event))),
            call: CallContext {
                cancel: Some(live.cancel.clone()),
                on_text: Some(Arc::new(move |piece| text.text(piece))),
                model: None,
            },
        });
        let started = Instant::now();
        let mut outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.run(&req)));
        // Decided, under the lock `cancel` answers under: from here a cancel is too late (see
        // `LiveRun::ended_as`), and one answered before is honoured though it came after the
        // pipeline last looked (its client was told the run stops).
        let state = {
            let _table = self.live();
            let state = match &mut outcome {
                Ok(outcome) => ended_state(
                    &mut outcome.error,
                    &mut outcome.status,
                    live.cancel.load(Ordering::Relaxed),
                ),
                Err(_) => RunState::Failed,
            };
            // Stopped by the shutdown, not by a client: the run's end says so (it is not
            // resumed at the next start, as one still queued is).
            if let (RunState::Cancelled, Ok(outcome)) = (state, &mut outcome)
                && live.parked.load(Ordering::SeqCst)
                && let Some(error) = &mut outcome.error
            {
                error.message = SHUTDOWN_CANCEL.into();
            }
            let _ = live.ended_as.set(state.as_str());
            state
        };
        drop(slot);
        in_flight("running").dec();
        let ms = started.elapsed().as_millis() as u64;
        // Runs count in /stats like the seed's endpoints: duration, tokens, failures by code.
        let stats = &self.pipeline.stats;
        let (done, code) = match outcome {
            Ok(outcome) => {
                let value = serde_json::to_value(&outcome).unwrap_or(Value::Null);
                let code = outcome.error.as_ref().map(|e| e.code.clone());
                stats.record_endpoint(STATS_ENDPOINT, ms, outcome.tokens, code.as_deref());
                let done = emitter.finish(state, Some(&value), outcome.error.as_ref(), &|| {
                    !self.closing()
                });
                (done, code)
            }
            Err(_) => {
                let error = ErrorOut::new(ErrorCode::Internal, "the run's thread panicked");
                crate::metrics::count_pipeline_run("failed");
                stats.record_endpoint(STATS_ENDPOINT, ms, 0, Some(ErrorCode::Internal.as_str()));
                let done =
                    emitter.finish(RunState::Failed, None, Some(&error), &|| !self.closing());
                (done, Some(error.code))
            }
        };
        log_run_end(id, state, code.as_deref(), started.elapsed());
        self.live().remove(id);
        emitter.announce(done);
    }

    /// Whether the run store takes writes, for `/health`.
    pub fn store_health(&self) -> crate::store::watch::StoreHealth {
        crate::store::watch::StoreHealth::of(self.store.as_ref())
    }

    /// The stored run.
    pub fn get(&self, id: &str) -> Result<RunRecord, RunsError> {
        self.store
            .run(id)?
            .ok_or_else(|| RunsError::NotFound(id.to_string()))
    }

    /// Ask a queued or running run to stop: a queued one ends before it starts, a running one
    /// at its next stage or generated token. Returns the run as stored now.
    pub fn cancel(&self, id: &str) -> Result<RunRecord, RunsError> {
        let run = self.get(id)?;
        // The stored state decides first: a run stores its end (and its `done` event) a moment
        // before it leaves the live table, and a client that saw `done` must get `RUN_001`.
        if run.state.is_final() {
            return Err(RunsError::Finished {
                id: id.to_string(),
                state: run.state.as_str(),
            });
        }
        // The end is checked and the cancel flag set under the live-runs lock (a run sets
        // `ended_as` under it), but the lock is let go before the store is read again below:
        // that read can wait on the store (a busy file, a PostgreSQL failover), and every run
        // and subscriber waits on this lock.
        let here = self.live().get(id).map(|live| match live.ended_as.get() {
            // Its end is being stored: too late to stop it.
            Some(state) => Err(RunsError::Finished {
                id: id.to_string(),
                state,
            }),
            None => {
                // A client's cancel during the shutdown is a cancel, not a run to keep.
                live.parked.store(false, Ordering::SeqCst);
                live.cancel.store(true, Ordering::Relaxed);
                Ok(())
            }
        });
        match here {
            Some(cancelled) => cancelled.map(|()| self.stored_end(id, CANCEL_WAIT).unwrap_or(run)),
            // Not here: either it ended here since the store was read, or another host (a
            // shared PostgreSQL store) runs it; the store, read again, tells which.
            // Parked by the shutdown a moment ago: this server will not act on it now.
            None if self.closing() => Err(RunsError::ShuttingDown),
            None => {
                let now = self.get(id)?;
                if now.state.is_final() {
                    Err(RunsError::Finished {
                        id: id.to_string(),
                        state: now.state.as_str(),
                    })
                } else {
                    Err(RunsError::Elsewhere(id.to_string(), now.state.as_str()))
                }
            }
        }
    }

    /// Run `id` as stored once it has left the live table with its end stored, waiting up to
    /// `wait`; `None` when it is still live then (or cannot be read). A cancel is answered
    /// after this: a run it stopped (a queued one within 50 ms, a running one at its next
    /// token or stage) is stored cancelled before the client hears so, and a crash of the
    /// server right after cannot run it again.
    fn stored_end(&self, id: &str, wait: Duration) -> Option<RunRecord> {
        let until = Instant::now() + wait;
        while self.live().contains_key(id) {
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.get(id).ok().filter(|run| run.state.is_final())
    }

    /// Live events of a run still in this process, from now on (`None` once it has ended).
    /// Subscribe before reading the stored events, so that none falls between the two.
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<NumberedEvent>> {
        self.live().get(id).map(|l| l.events.subscribe())
    }

    /// Refuse new runs from now on (`429 QUEUE_001`, "try another"): the server is about to
    /// stop, and a run taken now would wait for its next start.
    pub fn stop_taking(&self) {
        self.refusing.store(true, Ordering::SeqCst);
    }

    /// Cancel every running run in this process and wait (up to `grace`) for them to end, so
    /// each is stored as cancelled rather than found interrupted at the next start; runs still
    /// waiting for a worker leave, queued in the store, for the next start to run.
    pub fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        for live in self.live().values() {
            // Under the live table's lock, as a client's cancel: one a client asked for stays
            // a cancel; the rest that have not started stay queued for the next start.
            if !live.cancel.load(Ordering::Relaxed) {
                live.parked.store(true, Ordering::SeqCst);
            }
            live.cancel.store(true, Ordering::Relaxed);
        }
        let until = Instant::now() + grace;
        while self.in_flight() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The log message of runs closed as interrupted (`RUN_002`); `agentrt logs analyze` counts
/// its `runs` among the failed runs.
pub const INTERRUPTED_MESSAGE: &str = "unfinished runs closed as failed (RUN_002)";

/// Count `runs` runs closed as interrupted — left by a previous process of this server
/// (`whose` = "the previous server") or by a host that is gone — as failed runs like any
/// other: in the log (one line), `/stats` and `/metrics` (their time and tokens are not
/// known).
pub fn record_interrupted(runs: usize, whose: &str, store: &str, stats: &crate::stats::Stats) {
    if runs == 0 {
        return;
    }
    tracing::warn!(target: "agentrt::runs", runs, left_by = whose, store, "{INTERRUPTED_MESSAGE}");
    for _ in 0..runs {
        stats.record_endpoint_unmeasured(STATS_ENDPOINT, Some(ErrorCode::RunInterrupted.as_str()));
        crate::metrics::count_pipeline_run("failed");
    }
}

/// How often a server closes the runs of hosts gone from a shared store (a host replaced
/// under a new name never closes its own; the store waits until one has been quiet for ten
/// minutes before it takes it for gone).
const GONE_HOSTS_EVERY: Duration = Duration::from_secs(300);

/// Close the runs of hosts gone from a shared store every [`GONE_HOSTS_EVERY`], in the
/// background (for a store several hosts share: on one only this server uses there are none).
pub fn spawn_gone_hosts_sweep(
    store: Arc<dyn RunStore>,
    stats: Arc<crate::stats::Stats>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("agentrt-gone-hosts".into())
        .spawn(move || {
            loop {
                std::thread::sleep(GONE_HOSTS_EVERY);
                match store.close_gone_hosts() {
                    Ok(closed) => {
                        record_interrupted(closed, "a host that is gone", &store.location(), &stats)
                    }
                    Err(e) => tracing::warn!("cannot close the runs of hosts that are gone: {e}"),
                }
            }
        })
        .map(|_| ())
}

/// How long finished runs are kept (`AGENTRT_RUN_RETENTION_DAYS`; unset or 0: for ever).
pub fn retention_from_env() -> Option<Duration> {
    crate::settings::days("AGENTRT_RUN_RETENTION_DAYS")
        .filter(|d| *d > 0.0)
        .map(|days| Duration::from_secs_f64((days * 86_400.0).min(1e10)))
}

/// Delete runs that ended more than `keep` ago, with their events, now and every hour after,
/// on a thread of its own; a few hundred at a time, so a first prune of a large store does not
/// hold the store's lock for long.
pub fn spawn_retention(store: Arc<dyn RunStore>, keep: Duration) -> std::io::Result<()> {
    const BATCH: usize = 500;
    const EVERY: Duration = Duration::from_secs(3600);
    std::thread::Builder::new()
        .name("agentrt-retention".into())
        .spawn(move || {
            loop {
                let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
                let before = now_ms().saturating_sub(keep_ms);
                let mut deleted = 0;
                loop {
                    match store.prune_finished(before, BATCH) {
                        Ok(n) => {
                            deleted += n;
                            if n < BATCH {
                                break;
                            }
                            // Room for the server's own writes between batches.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => {
                            tracing::warn!("pruning old runs failed (tried again later): {e}");
                            break;
                        }
                    }
                }
                if deleted > 0 {
                    tracing::info!(
                        deleted,
                        days = keep.as_secs_f64() / 86_400.0,
                        "deleted runs past their retention"
                    );
                }
                std::thread::sleep(EVERY);
            }
        })
        .map(|_| ())
}

/// How a run whose pipeline ended with `error` (and `status`) ended. A cancel answered before
/// this decision (`cancel_answered`) ends it cancelled whatever the pipeline made of it, though
/// it came after the pipeline last looked: its client was told the run stops.
fn ended_state(
    error: &mut Option<ErrorOut>,
    status: &mut &'static str,
    cancel_answered: bool,
) -> RunState {
    let cancelled = |e: &ErrorOut| e.code == ErrorCode::Cancelled.as_str();
    match error {
        Some(e) if cancelled(e) => RunState::Cancelled,
        _ if cancel_answered => {
            *error = Some(ErrorOut::new(ErrorCode::Cancelled, "the run was cancelled"));
            *status = "cancelled";
            RunState::Cancelled
        }
        None => RunState::Completed,
        Some(_) => RunState::Failed,
    }
}

fn in_flight(state: &str) -> prometheus_client::metrics::gauge::Gauge {
    crate::metrics::global()
        .runs_in_flight
        .get_or_create(&crate::metrics::StateLabels {
            state: state.to_string(),
        })
        .clone()
}

/// 128 random bits as 32 hex digits: unguessable, so a run's id is its own capability.
fn new_run_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunStore, Store};

    /// An SQLite store in a file of its own, removed with its log when dropped.
    struct TempStore {
        path: std::path::PathBuf,
        store: Arc<Store>,
    }

    impl TempStore {
        fn new(label: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "agentrt-{label}-{}-{}.db",
                std::process::id(),
                rand::random::<u64>()
            ));
            let store = Arc::new(Store::open(&path).expect("store"));
            Self { path, store }
        }

        /// One holding run `r`, queued, as the emitter tests want.
        fn with_run(label: &str) -> Self {
            let temp = Self::new(label);
            temp.store
                .insert_run("r", &serde_json::json!({"task_description": "t"}), None)
                .expect("insert");
            temp
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
            }
        }
    }

    #[test]
    fn a_run_waits_to_start_while_the_store_refuses_writes() {
        let temp = TempStore::with_run("mark");
        let store = temp.store.clone();
        let never = AtomicBool::new(false);
        // The runs table is away for longer than one write's quick retries, then back.
        store
            .execute_for_test("ALTER TABLE runs RENAME TO away")
            .expect("hide");
        let marked = std::thread::scope(|scope| {
            let marking = scope.spawn(|| mark_running(store.as_ref(), "r", &never));
            std::thread::sleep(Duration::from_millis(800));
            store
                .execute_for_test("ALTER TABLE away RENAME TO runs")
                .expect("restore");
            marking.join().expect("mark")
        });
        assert_eq!(marked, Marked::Open);
        let run = store.run("r").expect("read").expect("run");
        assert_eq!(run.state, RunState::Running);
        // A run closed meanwhile is not started.
        store
            .execute_for_test("UPDATE runs SET state = 'failed' WHERE id = 'r'")
            .expect("close");
        assert_eq!(mark_running(store.as_ref(), "r", &never), Marked::Closed);
    }

    #[test]
    fn a_run_waiting_for_the_store_stops_when_cancelled_and_stays_queued() {
        let temp = TempStore::with_run("mark-stop");
        let store = temp.store.clone();
        let stop = AtomicBool::new(false);
        store
            .execute_for_test("ALTER TABLE runs RENAME TO away")
            .expect("hide");
        let marked = std::thread::scope(|scope| {
            let marking = scope.spawn(|| mark_running(store.as_ref(), "r", &stop));
            std::thread::sleep(Duration::from_millis(600));
            stop.store(true, Ordering::SeqCst);
            marking.join().expect("mark")
        });
        assert_eq!(marked, Marked::Stopped);
        store
            .execute_for_test("ALTER TABLE away RENAME TO runs")
            .expect("restore");
        let run = store.run("r").expect("read").expect("run");
        assert_eq!(run.state, RunState::Queued);
    }

    #[test]
    fn a_cancel_answered_before_the_end_is_decided_ends_the_run_cancelled() {
        let failed = || Some(ErrorOut::new(ErrorCode::GenerationFailed, "no"));
        for (error, answered, state) in [
            (None, false, RunState::Completed),
            (failed(), false, RunState::Failed),
            // The pipeline finished after its last look at the flag, then the cancel came.
            (None, true, RunState::Cancelled),
            (failed(), true, RunState::Cancelled),
        ] {
            let (mut error, mut status) = (error, "completed");
            assert_eq!(ended_state(&mut error, &mut status, answered), state);
            if answered {
                let error = error.expect("an error says why");
                assert_eq!(error.code, ErrorCode::Cancelled.as_str());
                assert_eq!(status, "cancelled");
            }
        }
    }

    #[test]
    fn an_event_the_store_refuses_for_a_while_is_stored_later_under_its_number() {
        let temp = TempStore::with_run("emitter");
        let store = temp.store.clone();
        let live = Arc::new(LiveRun::of(None));
        let emitter = Emitter::new("r", store.clone(), live);
        let started = |attempt| PipelineEvent::StageStarted {
            stage: "generate".into(),
            plugin: "generator".into(),
            attempt,
        };
        emitter.event(started(1));
        // The events table is away for one event (every retry fails), then back.
        store
            .execute_for_test("ALTER TABLE run_events RENAME TO away")
            .expect("hide");
        emitter.event(started(2));
        store
            .execute_for_test("ALTER TABLE away RENAME TO run_events")
            .expect("restore");
        emitter.event(started(3));
        let _ = emitter.finish(RunState::Completed, None, None, &|| false);
        assert_eq!(store.check_integrity().expect("check"), Ok(()));
        // Stored under the numbers live watchers saw: 1, 2 (stored late), 3, then done.
        let events = store.events_after("r", 0).expect("events");
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert!(events[1].data.contains("\"attempt\":2"), "{:?}", events[1]);
    }

    #[test]
    fn events_the_store_refuses_are_read_from_the_run_until_they_are_stored() {
        let temp = TempStore::with_run("unstored");
        let store = temp.store.clone();
        let live = Arc::new(LiveRun::of(None));
        let emitter = Emitter::new("r", store.clone(), live.clone());
        let chosen = |attempt| PipelineEvent::Chosen { attempt };
        let seqs = |live: Option<&LiveRun>, after| -> Vec<i64> {
            read_events(store.as_ref(), live, "r", after)
                .expect("read")
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        emitter.event(chosen(1));
        store
            .execute_for_test("ALTER TABLE run_events RENAME TO away")
            .expect("hide");
        emitter.event(chosen(2));
        emitter.event(chosen(3));
        store
            .execute_for_test("ALTER TABLE away RENAME TO run_events")
            .expect("restore");
        // The store has the first only; the run has the two it refused.
        assert_eq!(seqs(None, 0), [1]);
        assert_eq!(seqs(Some(&live), 0), [1, 2, 3]);
        assert_eq!(seqs(Some(&live), 2), [3]);
        // Stored with the next event, each once, under its number.
        emitter.event(chosen(4));
        assert_eq!(seqs(None, 0), [1, 2, 3, 4]);
        assert_eq!(seqs(Some(&live), 1), [2, 3, 4]);
        assert!(live.unstored.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_end_the_store_refuses_for_a_while_is_stored_once_it_is_back() {
        let temp = TempStore::with_run("end");
        let store = temp.store.clone();
        let emitter = Emitter::new("r", store.clone(), Arc::new(LiveRun::of(None)));
        emitter.event(PipelineEvent::Chosen { attempt: 1 });
        // The events table is away (the end's `done` cannot be stored) for longer than the
        // quick retries of one write, then back.
        store
            .execute_for_test("ALTER TABLE run_events RENAME TO away")
            .expect("hide");
        let done = std::thread::scope(|scope| {
            let finishing = scope.spawn(|| {
                let result = serde_json::json!({"status": "completed"});
                emitter.finish(RunState::Completed, Some(&result), None, &|| true)
            });
            std::thread::sleep(Duration::from_millis(600));
            store
                .execute_for_test("ALTER TABLE away RENAME TO run_events")
                .expect("restore");
            finishing.join().expect("finish")
        });
        assert_eq!(done.seq, 2);
        let run = store.run("r").expect("read").expect("run");
        assert_eq!(run.state, RunState::Completed, "{run:?}");
        assert!(run.outcome.is_some(), "{run:?}");
        assert_eq!(store.check_integrity().expect("check"), Ok(()));
    }

    #[test]
    fn generated_text_after_a_quiet_spell_goes_out_at_once() {
        let temp = TempStore::with_run("tokens");
        let store = temp.store.clone();
        let live = Arc::new(LiveRun::of(None));
        let mut watcher = live.events.subscribe();
        let emitter = Emitter::new("r", store.clone(), live);
        // The first piece of a generation is published as it comes, not held until a later
        // piece finds it old (a slow model's next token can be seconds away).
        emitter.text("def");
        let first = watcher.try_recv().expect("the first piece at once");
        assert!(first.data.contains("\"text\":\"def\""), "{first:?}");
        // Pieces that follow within the flush age may be gathered; none is lost.
        for piece in [" add", "(a, b)", ":"] {
            emitter.text(piece);
        }
        let _ = emitter.finish(RunState::Completed, None, None, &|| false);
        let events = store.events_after("r", 0).expect("events");
        let text: String = events
            .iter()
            .filter(|e| e.kind == "tokens")
            .map(|e| {
                let data: Value = serde_json::from_str(&e.data).expect("json");
                data["text"].as_str().expect("text").to_string()
            })
            .collect();
        assert_eq!(text, "def add(a, b):");
    }

    #[test]
    fn retention_prunes_ended_runs_in_the_background() {
        let temp = TempStore::new("retention");
        let store: Arc<dyn RunStore> = temp.store.clone();
        store
            .insert_run("old", &serde_json::json!({}), None)
            .expect("insert");
        store
            .insert_run("live", &serde_json::json!({}), None)
            .expect("insert");
        let done = StoredEvent {
            seq: 1,
            at_ms: now_ms(),
            kind: "done".into(),
            data: "{\"type\":\"done\"}".into(),
        };
        store
            .finish_run("old", RunState::Completed, None, None, &done)
            .expect("finish");
        std::thread::sleep(Duration::from_millis(20));
        spawn_retention(store.clone(), Duration::from_millis(10)).expect("spawn");
        let until = Instant::now() + Duration::from_secs(30);
        while store.run("old").expect("read").is_some() {
            assert!(Instant::now() < until, "the ended run was never pruned");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            store.run("live").expect("read").is_some(),
            "a queued run was pruned"
        );
    }

    #[test]
    fn a_store_write_is_tried_three_times() {
        let mut calls = 0;
        let temp = TempStore::new("retries");
        let store: &dyn RunStore = temp.store.as_ref();
        let flaky = with_retries(store, || {
            calls += 1;
            if calls < 3 { Err("busy") } else { Ok(()) }
        });
        assert_eq!((flaky, calls), (Ok(()), 3));
        let mut calls = 0;
        let broken: Result<(), &str> = with_retries(store, || {
            calls += 1;
            Err("broken")
        });
        assert_eq!((broken, calls), (Err("broken"), 3));
        // A store known to refuse writes (a full disk) is asked once, without pauses.
        let watched = crate::store::watch::Watched::new(temp.store.clone());
        watched
            .insert_run("a", &serde_json::json!({}), None)
            .expect("insert");
        let _ = watched.insert_run("a", &serde_json::json!({}), None);
        assert!(watched.write_failure().is_some());
        let mut calls = 0;
        let refused: Result<(), &str> = with_retries(&watched, || {
            calls += 1;
            Err("disk full")
        });
        assert_eq!((refused, calls), (Err("disk full"), 1));
    }
}
