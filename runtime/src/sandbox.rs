//! Sandboxed CPython for running generated tests against generated code.
//!
//! Two interpreters, both CPython for WASI, compiled once per machine into the on-disk cache:
//! - the **snapshot** ([`snapshot`]): CPython with the runner imported and the standard library
//!   preloaded, pre-initialised at build time by componentize-py and embedded in the binary; a
//!   run starts from the snapshot in a few milliseconds. Every run tries it first;
//! - **`python.wasm`** (CPython 3.12, a WASI preview 1 module with its whole standard library,
//!   fetched and checksum-verified by `scripts/setup.sh`) running the runner script, which pays
//!   CPython's start-up (~150 ms); it reruns any request that failed on a module the snapshot
//!   lacks, so results never depend on which interpreter gave them.
//!
//! Every run is a throwaway instance that gets:
//! - no host files: the code and tests arrive on stdin, results leave on stdout, and the only
//!   folder is a fresh scratch folder of its own at `/tmp` (also the working directory),
//!   deleted after the run and capped in size (a test that writes past the cap is stopped);
//! - no environment variables, no arguments but the runner's, no network (preview 1 has no
//!   sockets), a fixed clock and random source from WASI only;
//! - a memory cap (linear memory, enforced by a resource limiter) and a wall-clock deadline
//!   that also covers time blocked in WASI calls (the run is a future under a timeout; epoch
//!   ticks make running guest code yield so the timeout can fire);
//! - capped output: what the code prints stays in an in-memory buffer inside the sandbox.
//!
//! A test that hangs, crashes the interpreter or exhausts memory costs its own result
//! (`timeout` / `error`); the remaining tests are run again in a fresh instance.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmtime::{Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use crate::plugin::compile_cache::{CompileCache, sha256_hex};

mod snapshot;

/// The runner script the interpreter executes (see its header).
const RUNNER: &str = include_str!("sandbox/runner.py");
/// How often running guest code yields to the executor (the deadline's granularity).
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The interpreter's own stack needs more than wasmtime's default for Python's recursion limit.
const MAX_WASM_STACK: usize = 4 << 20;

/// Host resources (open files and directories, streams) one run may hold at once. CPython
/// needs a handful, and the WASI libc it is built with stops near 128 open files today; the
/// cap keeps that bound on the host side whatever interpreter runs, since each open file is
/// a host file descriptor shared with every client's `accept`.
pub(crate) const MAX_OPEN_RESOURCES: usize = 256;

/// Why the sandbox is not available.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot read the Python interpreter {path}: {source} (run scripts/setup.sh)")]
    Missing {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the Python interpreter: {0:#}")]
    Wasm(wasmtime::Error),
}

/// The file names the code and the tests run under: what tracebacks and failure messages show,
/// and the module the tests may import the code as (`sol` for `sol.py`, as under pytest beside
/// the file), besides `solution`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNames {
    pub code: String,
    pub tests: String,
}

impl Default for FileNames {
    fn default() -> Self {
        Self {
            code: "solution.py".into(),
            tests: "test_solution.py".into(),
        }
    }
}

impl FileNames {
    /// The names of the files at `code` and `tests`; a path without a usable `.py` name (stdin,
    /// `-`, another extension) keeps the default for that file.
    pub fn of(code: &std::path::Path, tests: Option<&std::path::Path>) -> Self {
        let default = Self::default();
        let name = |path: Option<&std::path::Path>, fallback: String| {
            path.and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .filter(|n| n.len() > 3 && n.ends_with(".py") && !n.chars().any(char::is_control))
                .map_or(fallback, str::to_string)
        };
        let names = Self {
            code: name(Some(code), default.code.clone()),
            tests: name(tests, default.tests.clone()),
        };
        // One name for both would make the tests' source stand for the code's in tracebacks,
        // and the code's own test_* functions count as tests.
        if names.code == names.tests {
            return default;
        }
        names
    }
}

/// When a report's runs must stop early, checked before each interpreter run (one run is
/// bounded by [`SandboxLimits::run_timeout`] itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct Until<'a> {
    pub deadline: Option<Instant>,
    /// Set by the caller to stop (a cancelled run, a request past its deadline).
    pub cancel: Option<&'a std::sync::atomic::AtomicBool>,
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Linear memory cap of the interpreter.
    pub memory_bytes: usize,
    /// Wall-clock time for one interpreter run (start-up plus the tests it runs).
    pub run_timeout: Duration,
    /// Wall-clock time for all of a report's runs together: a hanging test costs a run of its
    /// own, so without it N hanging tests would take N run timeouts.
    pub total_timeout: Duration,
    /// Bytes of runner output kept; beyond it the run ends.
    pub output_bytes: usize,
    /// Bytes the tests may write to their scratch folder.
    pub scratch_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            run_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(30),
            output_bytes: 256 << 10,
            scratch_bytes: 64 << 20,
        }
    }
}

/// Outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    /// An assertion failed.
    Failed,
    /// Any other exception, or the interpreter died in the test.
    Error,
    /// The test ran past the deadline.
    Timeout,
}

/// One test's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    pub name: String,
    pub status: TestStatus,
    /// Assertion or error message (with the failing line); empty when passed.
    pub message: String,
}

/// Everything a test run found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    /// The code or the tests could not even be loaded (syntax error, import failure).
    pub setup_error: Option<String>,
    /// Interpreter instances used (1 unless a test hung or crashed it).
    pub runs: u32,
    /// Which interpreter gave these results.
    pub interpreter: Interpreter,
    pub duration_ms: u64,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.status == TestStatus::Passed)
            .count()
    }

    /// Tests that did not pass.
    pub fn failures(&self) -> impl Iterator<Item = &TestResult> {
        self.results
            .iter()
            .filter(|r| r.status != TestStatus::Passed)
    }

    /// Whether there were tests and all passed.
    pub fn all_passed(&self) -> bool {
        self.setup_error.is_none()
            && !self.results.is_empty()
            && self.passed() == self.results.len()
    }
}

struct RunState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    /// Set when the scratch folder grew past its cap.
    scratch_overflow: bool,
}

/// What [`drive`] needs from a run's store data, whichever runner it is.
trait RunData: Send + 'static {
    fn limits(&mut self) -> &mut StoreLimits;
    fn scratch_overflow(&mut self) -> &mut bool;
}

impl RunData for RunState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    fn scratch_overflow(&mut self) -> &mut bool {
        &mut self.scratch_overflow
    }
}

/// Run `run` on `store` under the limits: memory cap, `stop` (also covering time blocked in
/// WASI calls: the run is a future raced against the timeout and the cancel, and epoch ticks
/// make running guest code yield so either can win), and the scratch folder's cap (measured
/// every tenth tick).
fn drive<T: RunData>(
    mut store: Store<T>,
    scratch: &Path,
    limits: &SandboxLimits,
    stop: RunStop<'_>,
    run: impl AsyncFnOnce(&mut Store<T>) -> wasmtime::Result<()>,
) -> RunEnd {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(e) => return RunEnd::Crashed(format!("no runtime for the sandbox: {e}")),
    };
    store.limiter(|s| s.limits());
    store.set_epoch_deadline(1);
    let (scratch, cap) = (scratch.to_path_buf(), limits.scratch_bytes);
    // Measured at most every SCRATCH_CHECK of the run's time, but at every chance after a long
    // host call: a test writing hundreds of MB per call gives few chances, and each must
    // count, or it writes gigabytes past the cap between two looks.
    let mut checked = Instant::now();
    store.epoch_deadline_callback(move |mut ctx| {
        let due = checked.elapsed() >= SCRATCH_CHECK;
        if due {
            checked = Instant::now();
        }
        if due && folder_bytes(&scratch).saturating_add(unlinked_bytes(&scratch)) > cap {
            *ctx.data_mut().scratch_overflow() = true;
            return Err(wasmtime::Error::msg("scratch folder over its cap"));
        }
        Ok(wasmtime::UpdateDeadline::Yield(1))
    });
    let outcome = runtime.block_on(async {
        tokio::select! {
            ran = tokio::time::timeout(stop.timeout, run(&mut store)) => Some(ran),
            () = cancelled(stop.cancel) => None,
        }
    });
    let Some(outcome) = outcome else {
        return RunEnd::Cancelled;
    };
    if *store.data_mut().scratch_overflow() {
        return RunEnd::Crashed(format!(
            "the test wrote more than the {} MiB its scratch folder allows (or deeper than \
             the host can measure)",
            limits.scratch_bytes >> 20
        ));
    }
    match outcome {
        Err(_) => RunEnd::Timeout,
        Ok(Ok(())) => RunEnd::Exited,
        Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(_) => RunEnd::Exited,
            None => RunEnd::Crashed(crash_message(&e)),
        },
    }
}

/// How often a run's scratch folder is measured against its cap.
const SCRATCH_CHECK: Duration = Duration::from_millis(100);

/// A run's scratch folder on the host, deleted when dropped. Its name carries the process id
/// and its PID namespace, so folders a killed server left behind are found and removed
/// ([`sweep_orphaned_scratch`]) by a later one that can tell they are dead.
struct Scratch(std::path::PathBuf);

const SCRATCH_PREFIX: &str = "agentrt-scratch-";

impl Scratch {
    fn create(nonce: &str) -> std::io::Result<Self> {
        let namespace = pid_namespace().unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{SCRATCH_PREFIX}{namespace}-{}-{nonce}",
            std::process::id()
        ));
        // In the shared temp folder: the run's files are no other user's to read, and a
        // folder already there (made by someone else) is not taken.
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(Self(path))
    }
}

/// The id of this process's PID namespace (Linux): process ids only say who lives within one.
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    link.to_str()?
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Remove the scratch folders of ended processes of this PID namespace (a server killed
/// mid-run cannot delete its own); folders of other namespaces (another container sharing the
/// temp folder) are left alone, as is everything where the namespace cannot be read.
fn sweep_orphaned_scratch() {
    let Some(ours) = pid_namespace() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let mut parts = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .into_iter()
            .flat_map(|rest| rest.splitn(3, '-'));
        let (Some(namespace), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(namespace), Ok(pid)) = (namespace.parse::<u64>(), pid.parse::<u32>()) else {
            continue;
        };
        if namespace == ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes under `dir` (entries counted as 4 KiB each too, so a flood of empty files counts),
/// not following links. A part the test made too deep to measure (a path past the host's
/// length limit, reached by nesting long names) counts as `u64::MAX`, over any cap; a part
/// the host fails to read for its own reasons (out of descriptors) is left for the next look,
/// not blamed on the test.
fn folder_bytes(dir: &Path) -> u64 {
    let mut total: u64 = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if made_by_the_test(&e) => return u64::MAX,
            // Removed meanwhile (the test's own cleanup), or not readable now.
            Err(_) => continue,
        };
        for entry in entries {
            let measured = entry.and_then(|entry| {
                let path = entry.path();
                path.symlink_metadata().map(|meta| (path, meta))
            });
            let (path, meta) = match measured {
                Ok(measured) => measured,
                Err(e) if made_by_the_test(&e) => return u64::MAX,
                Err(_) => continue,
            };
            total = total.saturating_add(meta.len() + 4096);
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    total
}

/// Whether reading the scratch folder failed in a way the test can cause: a path too long
/// for the host, or too many links in it.
fn made_by_the_test(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::ELOOP))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Bytes of the files under `dir` that were removed while this process holds them open (a
/// test writing on through an unlinked file; Linux names them `PATH (deleted)` in
/// `/proc/self/fd`). One whose old name is too long for the host to say is counted as
/// `u64::MAX`, as [`folder_bytes`] counts a folder too deep; 0 where `/proc` cannot be read.
fn unlinked_bytes(dir: &Path) -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let prefix = dir.as_os_str().to_string_lossy().into_owned() + "/";
    let mut total: u64 = 0;
    for fd in fds.flatten() {
        let target = match std::fs::read_link(fd.path()) {
            Ok(target) => target,
            Err(e) if made_by_the_test(&e) => return u64::MAX,
            // Closed meanwhile.
            Err(_) => continue,
        };
        let target = target.to_string_lossy();
        if target.starts_with(&prefix) && target.ends_with(" (deleted)") {
            // Through the descriptor's link: the file itself, though no name leads to it.
            let bytes = std::fs::metadata(fd.path()).map_or(0, |meta| meta.len());
            total = total.saturating_add(bytes);
        }
    }
    total
}

/// How one interpreter run ended.
enum RunEnd {
    Exited,
    Timeout,
    /// Stopped because the request or run was cancelled ([`RunStop::cancel`]).
    Cancelled,
    Crashed(String),
}

/// When one interpreter run stops: after `timeout`, or as soon as `cancel` is set (looked at
/// every [`CANCEL_POLL`], also while a test hangs).
#[derive(Debug, Clone, Copy)]
struct RunStop<'a> {
    timeout: Duration,
    cancel: Option<&'a std::sync::atomic::AtomicBool>,
}

/// How often a running test's cancellation flag is looked at.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Resolves once `flag` is set; never without one.
async fn cancelled(flag: Option<&std::sync::atomic::AtomicBool>) {
    let Some(flag) = flag else {
        return std::future::pending().await;
    };
    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// The sandbox, prepared on first use (compiling CPython takes seconds the first time on a
/// machine; a server that never runs tests never pays it).
pub struct LazySandbox {
    path: std::path::PathBuf,
    cache: CompileCache,
    limits: SandboxLimits,
    cell: std::sync::OnceLock<PythonSandbox>,
    /// The last failure to prepare it, and when: repeated for [`SANDBOX_RETRY`], then tried
    /// again (an interpreter installed, or a full disk freed, while the server runs).
    failed: std::sync::Mutex<Option<(Instant, String)>>,
    /// Held while it is being prepared (seconds, compiling CPython).
    preparing: std::sync::Mutex<()>,
    retry_after: Duration,
}

/// How long a failure to prepare the sandbox is reported without trying again: a missing
/// interpreter costs one look per request at most, not one per test.
const SANDBOX_RETRY: Duration = Duration::from_secs(30);

impl std::fmt::Debug for LazySandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySandbox")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LazySandbox {
    pub fn new(path: std::path::PathBuf, cache: CompileCache, limits: SandboxLimits) -> Self {
        Self {
            path,
            cache,
            limits,
            cell: std::sync::OnceLock::new(),
            failed: std::sync::Mutex::new(None),
            preparing: std::sync::Mutex::new(()),
            retry_after: SANDBOX_RETRY,
        }
    }

    /// The sandbox, or why it cannot run. Prepared once; a failure is remembered for a while
    /// (see [`SANDBOX_RETRY`]) and then tried again, rather than kept until a restart.
    pub fn get(&self) -> Result<&PythonSandbox, String> {
        if let Some(ready) = self.cell.get() {
            return Ok(ready);
        }
        let last_failure = || {
            let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.clone()
        };
        // One caller prepares it. The others wait for its answer the first time; while it
        // tries again after a failure, they get that failure rather than wait for the retry.
        let _preparing = match self.preparing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if let Some((_, why)) = last_failure() {
                    return Err(why);
                }
                self.preparing.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        if let Some(ready) = self.cell.get() {
            return Ok(ready);
        }
        if let Some((at, why)) = last_failure()
            && at.elapsed() < self.retry_after
        {
            return Err(why);
        }
        let prepared = PythonSandbox::load(&self.path, &self.cache, self.limits);
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match prepared {
            Ok(sandbox) => {
                *failed = None;
                Ok(self.cell.get_or_init(|| sandbox))
            }
            Err(e) => {
                let why = e.to_string();
                *failed = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// The compiled interpreter, ready to instantiate.
pub struct PythonSandbox {
    engine: Engine,
    module: Module,
    linker: Linker<RunState>,
    /// The pre-initialised runner, tried first; `None` if it failed to load (logged).
    snapshot: Option<snapshot::SnapshotRunner>,
    limits: SandboxLimits,
    /// Keeps the interpreter's compiled entry from this process's cache pruning.
    _cache_hold: crate::plugin::compile_cache::CacheHold,
}

impl std::fmt::Debug for PythonSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonSandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PythonSandbox {
    /// Compile `python.wasm` (or load its compilation from `cache`).
    pub fn load(
        python_wasm: &Path,
        cache: &CompileCache,
        limits: SandboxLimits,
    ) -> Result<Self, SandboxError> {
        sweep_orphaned_scratch();
        let bytes = std::fs::read(python_wasm).map_err(|source| SandboxError::Missing {
            path: python_wasm.to_path_buf(),
            source,
        })?;
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .async_stack_size(MAX_WASM_STACK + (1 << 20))
            .max_wasm_stack(MAX_WASM_STACK);
        let engine = Engine::new(&config).map_err(SandboxError::Wasm)?;
        crate::plugin::spawn_epoch_ticker(&engine, "agentrt-sandbox-epoch", EPOCH_TICK)
            .map_err(|e| SandboxError::Wasm(e.into()))?;
        let (module, _, cache_hold) = cache
            .load_module(&engine, &bytes, &sha256_hex(&bytes))
            .map_err(SandboxError::Wasm)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut RunState| &mut s.wasi)
            .map_err(SandboxError::Wasm)?;
        let snapshot = match snapshot::SnapshotRunner::load(&engine, cache) {
            Ok(runner) => Some(runner),
            Err(e) => {
                tracing::warn!(
                    "the pre-initialised test runner is unusable, every run starts CPython: {e:#}"
                );
                None
            }
        };
        Ok(Self {
            engine,
            module,
            linker,
            snapshot,
            limits,
            _cache_hold: cache_hold,
        })
    }

    /// Run `tests` against `code`, each test at most once.
    pub fn run_tests(&self, code: &str, tests: &str) -> TestReport {
        self.run_tests_until(code, tests, &FileNames::default(), Until::default())
    }

    /// As [`Self::run_tests`], ending early at `until` too: a plugin's call into the sandbox
    /// must not outlive the plugin's own deadline, nor a request's tests its deadline.
    pub fn run_tests_until(
        &self,
        code: &str,
        tests: &str,
        names: &FileNames,
        until: Until<'_>,
    ) -> TestReport {
        // One time budget for the report, however many interpreters it takes.
        let budget_end = Instant::now() + self.limits.total_timeout;
        if self.snapshot.is_some() {
            let report =
                self.run_tests_within(Interpreter::Snapshot, code, tests, names, until, budget_end);
            // Nothing left of the budget for a second interpreter: the snapshot's answer is
            // the report (a rerun could only say that no test was run).
            if !missing_module(&report) || Instant::now() >= budget_end {
                return report;
            }
            tracing::debug!("a module is not in the runner snapshot; running in python.wasm");
        }
        self.run_tests_within(Interpreter::Script, code, tests, names, until, budget_end)
    }

    /// Run `tests` against `code` in the given interpreter only (the snapshot falls back to the
    /// script runner when it is unavailable).
    pub fn run_tests_in(
        &self,
        runner: Interpreter,
        code: &str,
        tests: &str,
        names: &FileNames,
        until: Until<'_>,
    ) -> TestReport {
        let budget_end = Instant::now() + self.limits.total_timeout;
        self.run_tests_within(runner, code, tests, names, until, budget_end)
    }

    /// [`Self::run_tests_in`] with the time budget ending at `budget_end`.
    fn run_tests_within(
        &self,
        runner: Interpreter,
        code: &str,
        tests: &str,
        names: &FileNames,
        until: Until<'_>,
        budget_end: Instant,
    ) -> TestReport {
        let started = Instant::now();
        let (deadline, why) = match until.deadline {
            Some(d) if d <= budget_end => (d, "the caller's deadline passed".to_string()),
            _ => (
                budget_end,
                format!(
                    "the tests' {} ms time budget ran out",
                    self.limits.total_timeout.as_millis()
                ),
            ),
        };
        let cancelled = || {
            until
                .cancel
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        };
        // Why the runs stopped before every test had a result, if they did.
        let mut cut_short: Option<String> = None;
        let mut report = TestReport {
            interpreter: runner,
            ..TestReport::default()
        };
        let mut collected: Option<Vec<String>> = None;
        let mut only: Option<Vec<String>> = None;
        loop {
            let time_left = deadline.saturating_duration_since(Instant::now());
            let stop = if cancelled() {
                Some("the request or run was cancelled".to_string())
            } else {
                time_left.is_zero().then(|| why.clone())
            };
            if let Some(why) = stop {
                if collected.is_none() {
                    report.setup_error.get_or_insert(why);
                } else {
                    cut_short = Some(why);
                }
                break;
            }
            report.runs += 1;
            let timeout = time_left.min(self.limits.run_timeout);
            let stop = RunStop {
                timeout,
                cancel: until.cancel,
            };
            let (events, end) = self.run_once(runner, code, tests, names, only.as_deref(), stop);
            let mut running: Option<String> = None;
            for event in events {
                match event {
                    Event::Setup(message) => report.setup_error = Some(message),
                    Event::Collected(names) => {
                        collected.get_or_insert(names);
                    }
                    Event::Start(name) => running = Some(name),
                    Event::Result(result) => {
                        running = None;
                        report.results.push(result);
                    }
                }
            }
            let culprit = |status, message: String| TestResult {
                name: running.clone().unwrap_or_default(),
                status,
                message,
            };
            match end {
                RunEnd::Exited if running.is_some() => {
                    report.results.push(culprit(
                        TestStatus::Error,
                        "the test ended the interpreter (exit)".into(),
                    ));
                }
                // Every test should have its result now; any without one is run again below
                // (and reported if it never gets one): a result is never taken as a pass.
                RunEnd::Exited => {}
                // The test running (if any) and the rest were not finished: reported below as
                // not run, with the reason.
                RunEnd::Cancelled => {
                    let why = "the request or run was cancelled".to_string();
                    if collected.is_none() {
                        report.setup_error.get_or_insert(why);
                    } else {
                        cut_short = Some(why);
                    }
                    break;
                }
                RunEnd::Timeout if running.is_some() => report.results.push(culprit(
                    TestStatus::Timeout,
                    format!("ran past the {} ms limit", timeout.as_millis()),
                )),
                RunEnd::Crashed(why) if running.is_some() => {
                    report.results.push(culprit(TestStatus::Error, why))
                }
                // A run the budget cut short before its next test began: that test and the rest
                // were not reached, not a failure of the code to load.
                RunEnd::Timeout if collected.is_some() && timeout < self.limits.run_timeout => {
                    cut_short = Some(why.clone());
                    break;
                }
                // The interpreter died before or between tests: nothing is left to blame.
                RunEnd::Timeout => {
                    report.setup_error.get_or_insert_with(|| {
                        format!(
                            "loading the code ran past the {} ms limit",
                            timeout.as_millis()
                        )
                    });
                    break;
                }
                RunEnd::Crashed(why) => {
                    report.setup_error.get_or_insert(why);
                    break;
                }
            }
            // Run the tests without a result yet in a fresh interpreter.
            let Some(all) = &collected else { break };
            let remaining: Vec<String> = all
                .iter()
                .filter(|n| !report.results.iter().any(|r| &r.name == *n))
                .cloned()
                .collect();
            if remaining.is_empty() || report.runs as usize > all.len() {
                break;
            }
            only = Some(remaining);
        }
        if let Some(all) = &collected {
            // Tests never reached, or whose result never came back, are reported, not
            // silently dropped.
            for name in all {
                if !report.results.iter().any(|r| &r.name == name) {
                    let (status, message) = match &cut_short {
                        Some(why) => (TestStatus::Timeout, format!("not run: {why}")),
                        None => (
                            TestStatus::Error,
                            "its result never came back from the interpreter (output the \
                             test or the code wrote over it?)"
                                .to_string(),
                        ),
                    };
                    report.results.push(TestResult {
                        name: name.clone(),
                        status,
                        message,
                    });
                }
            }
        }
        if let Some(all) = &collected {
            // Keep the tests' own order.
            report
                .results
                .sort_by_key(|r| all.iter().position(|n| *n == r.name).unwrap_or(usize::MAX));
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        report
    }

    /// One interpreter instance over `code` and `tests` (only the tests named in `only`).
    fn run_once(
        &self,
        runner: Interpreter,
        code: &str,
        tests: &str,
        names: &FileNames,
        only: Option<&[String]>,
        stop: RunStop<'_>,
    ) -> (Vec<Event>, RunEnd) {
        let nonce = nonce();
        let payload = serde_json::json!({
            "code": code,
            "tests": tests,
            "only": only,
            "code_file": names.code,
            "tests_file": names.tests,
        })
        .to_string();
        let stdout = MemoryOutputPipe::new(self.limits.output_bytes);
        let scratch = match Scratch::create(&nonce) {
            Ok(s) => s,
            Err(e) => {
                return (
                    Vec::new(),
                    RunEnd::Crashed(format!("no scratch folder: {e}")),
                );
            }
        };
        let end = std::thread::scope(|scope| {
            scope
                .spawn(|| match (runner, &self.snapshot) {
                    (Interpreter::Snapshot, Some(snapshot)) => snapshot.execute(
                        &payload,
                        &nonce,
                        stdout.clone(),
                        &scratch.0,
                        stop,
                        &self.limits,
                    ),
                    _ => self.execute_script(&payload, &nonce, stdout.clone(), &scratch.0, stop),
                })
                .join()
                .unwrap_or_else(|_| RunEnd::Crashed("the sandbox thread panicked".into()))
        });
        (parse_events(&stdout.contents(), &nonce), end)
    }

    /// One run of `python.wasm` with the runner script.
    fn execute_script(
        &self,
        payload: &str,
        nonce: &str,
        stdout: MemoryOutputPipe,
        scratch: &Path,
        stop: RunStop<'_>,
    ) -> RunEnd {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdin(MemoryInputPipe::new(payload.to_string()))
            .stdout(stdout)
            .stderr(MemoryOutputPipe::new(16 << 10))
            .args(&["python", "-I", "-S", "-X", "utf8", "-c", RUNNER, nonce])
            .env("TMPDIR", "/tmp");
        if let Err(e) = builder.preopened_dir(scratch, "/tmp", wasmtime_wasi::FsPerms::ReadWrite) {
            return RunEnd::Crashed(format!("no scratch folder: {e:#}"));
        }
        let mut wasi = builder.build_p1();
        {
            use wasmtime_wasi::WasiView;
            wasi.ctx().table.set_max_capacity(MAX_OPEN_RESOURCES);
        }
        let state = RunState {
            wasi,
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .instances(1)
                .build(),
            scratch_overflow: false,
        };
        self.execute(state, stop, scratch)
    }

    fn execute(&self, state: RunState, stop: RunStop<'_>, scratch: &Path) -> RunEnd {
        let store = Store::new(&self.engine, state);
        drive(store, scratch, &self.limits, stop, async |store| {
            let instance = self
                .linker
                .instantiate_async(&mut *store, &self.module)
                .await?;
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await
        })
    }
}

/// Which interpreter runs the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpreter {
    /// The pre-initialised snapshot (fast start, preloaded standard library only).
    Snapshot,
    /// `python.wasm` running the runner script (CPython's full start-up, whole library).
    #[default]
    Script,
}

/// Whether a run failed on an import the snapshot could not satisfy.
fn missing_module(report: &TestReport) -> bool {
    let missing = |m: &str| m.contains("ModuleNotFoundError");
    report.setup_error.as_deref().is_some_and(missing)
        || report.results.iter().any(|r| missing(&r.message))
}

/// A short, host-free description of why the interpreter stopped.
fn crash_message(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::StackOverflow => "the interpreter ran out of stack".into(),
            wasmtime::Trap::UnreachableCodeReached => {
                "the interpreter aborted (out of memory or a fatal error)".into()
            }
            other => format!("the interpreter crashed ({other})"),
        };
    }
    let text = format!("{e:#}");
    if text.contains("beyond capacity") {
        "the test printed more than the output limit".into()
    } else {
        "the interpreter stopped unexpectedly".into()
    }
}

enum Event {
    Setup(String),
    Collected(Vec<String>),
    Start(String),
    Result(TestResult),
}

/// The runner's events in `stdout`; lines without the nonce are ignored. An event may follow
/// text on its line: code or a test that printed without a newline must not hide it.
fn parse_events(stdout: &[u8], nonce: &str) -> Vec<Event> {
    let text = String::from_utf8_lossy(stdout);
    let prefix = format!("\u{1e}{nonce} ");
    let mut events = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.find(&prefix).map(|at| &line[at + prefix.len()..]) else {
            continue;
        };
        let Some((kind, json)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
            continue;
        };
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        events.push(match kind {
            "setup" => Event::Setup(format!("{}: {}", text("stage"), text("message"))),
            "collected" => Event::Collected(
                v["tests"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|n| n.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            "start" => Event::Start(text("test")),
            "result" => Event::Result(TestResult {
                name: text("test"),
                status: match v["outcome"].as_str() {
                    Some("passed") => TestStatus::Passed,
                    Some("failed") => TestStatus::Failed,
                    _ => TestStatus::Error,
                },
                message: text("message"),
            }),
            _ => continue,
        });
    }
    events
}

/// A fresh token per run, so text the code and tests print cannot pose as the runner's events
/// by accident or by guessing: a hash of the time, the process, a counter and a stack address.
/// It is not a secret from the code under test, which shares the runner's interpreter and can
/// reach its frames; no in-interpreter channel can be (see the README on what test results
/// prove).
fn nonce() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let marker = 0u8;
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}{}{}{:p}",
        std::time::SystemTime::now(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        &marker
    ));
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_that_cannot_be_prepared_is_tried_again_later() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-lazy-sandbox-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let interpreter = dir.join("python.wasm");
        let mut lazy = LazySandbox::new(
            interpreter.clone(),
            CompileCache::new(None),
            SandboxLimits::default(),
        );
        let missing = lazy.get().map(|_| ()).expect_err("no interpreter yet");
        // Within the retry interval the failure is repeated, not looked into again.
        std::fs::write(&interpreter, b"not wasm").expect("write");
        assert_eq!(lazy.get().map(|_| ()).expect_err("remembered"), missing);
        // Past it, the interpreter is looked at again: now there, though not usable.
        lazy.retry_after = Duration::ZERO;
        let unusable = lazy.get().map(|_| ()).expect_err("not an interpreter");
        assert_ne!(unusable, missing, "the failure was kept, not tried again");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_names_come_from_python_paths_and_default_otherwise() {
        use std::path::Path;
        let names = FileNames::of(Path::new("/a/b/sol.py"), Some(Path::new("t/test_sol.py")));
        assert_eq!(
            (names.code.as_str(), names.tests.as_str()),
            ("sol.py", "test_sol.py")
        );
        // Standard input, other extensions and a bare ".py" keep the defaults.
        let names = FileNames::of(Path::new("-"), Some(Path::new("tests.txt")));
        assert_eq!(names, FileNames::default());
        let names = FileNames::of(Path::new(".py"), None);
        assert_eq!(names, FileNames::default());
        // One name for both files (or the code named as the default tests are) is the defaults.
        let names = FileNames::of(Path::new("src/calc.py"), Some(Path::new("tests/calc.py")));
        assert_eq!(names, FileNames::default());
        let names = FileNames::of(Path::new("test_solution.py"), None);
        assert_eq!(names, FileNames::default());
    }

    /// A folder nested past the host's path limit is over any cap (what is under it cannot be
    /// measured); a file removed but held open still counts.
    #[test]
    fn scratch_measures_count_what_a_test_hides() {
        let dir = std::env::temp_dir().join(format!("agentrt-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut held = std::fs::File::create(dir.join("hidden.bin")).expect("create");
        std::io::Write::write_all(&mut held, &vec![b'x'; 1 << 20]).expect("write");
        std::fs::remove_file(dir.join("hidden.bin")).expect("unlink");
        assert_eq!(folder_bytes(&dir), 0, "no name is left");
        assert!(
            unlinked_bytes(&dir) >= 1 << 20,
            "the open file still counts"
        );
        drop(held);
        assert_eq!(unlinked_bytes(&dir), 0);
        // Nested one name at a time, as a test's relative calls do, past PATH_MAX.
        let name = std::ffi::CString::new("d".repeat(250)).expect("name");
        let top = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: plain descriptor calls on C strings that outlive them; every descriptor
        // opened is closed.
        unsafe {
            let mut fd = libc::open(top.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(fd >= 0, "open the folder");
            for _ in 0..20 {
                assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o700), 0, "mkdirat");
                let next = libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                libc::close(fd);
                assert!(next >= 0, "openat");
                fd = next;
            }
            libc::close(fd);
        }
        assert_eq!(
            folder_bytes(&dir),
            u64::MAX,
            "too deep to measure: over the cap"
        );
        let _ = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&dir)
            .status();
    }

    #[test]
    fn scratch_folders_of_ended_processes_are_swept_and_live_ones_kept() {
        let nonce = rand::random::<u64>();
        let namespace = pid_namespace().unwrap_or(0);
        // No process has this id (Linux's pid_max is at most 2^22).
        let orphan =
            std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{namespace}-4000000000-{nonce}"));
        // The same dead id in another namespace: another container's, not ours to judge.
        let elsewhere = std::env::temp_dir().join(format!(
            "{SCRATCH_PREFIX}{}-4000000000-{nonce}",
            namespace.wrapping_add(1)
        ));
        let ours = Scratch::create(&format!("{nonce}")).expect("scratch");
        std::fs::create_dir_all(orphan.join("deep")).expect("orphan");
        std::fs::create_dir_all(&elsewhere).expect("elsewhere");
        sweep_orphaned_scratch();
        if pid_namespace().is_some() {
            assert!(!orphan.exists(), "{} was left", orphan.display());
        }
        assert!(elsewhere.exists(), "another namespace's folder was swept");
        assert!(ours.0.exists(), "a live process's folder was swept");
        let _ = std::fs::remove_dir_all(&orphan);
        let _ = std::fs::remove_dir_all(&elsewhere);
    }
}
