//! Durable storage of pipeline runs and their events ([`RunStore`]): an embedded SQLite database
//! in WAL mode by default (`$AGENTRT_HOME/agentrt.db`, or `AGENTRT_STORE=PATH`), or PostgreSQL
//! for several hosts behind one load balancer (`AGENTRT_STORE=postgres://…`, [`postgres`]).
//! Both pass the same tests (`conformance` below).
//!
//! A run is a row (`queued` → `running` → `completed` | `failed` | `cancelled`) and an ordered
//! list of events. Each event is committed as it happens, and a run's final state, result and
//! `done` event are committed in one transaction, so a crash leaves every finished run whole
//! and an unfinished one visibly unfinished; [`Store::interrupt_unfinished`] marks those failed
//! on the next start. WAL with `synchronous = NORMAL` survives a killed process (not a power
//! cut without the last transactions).

pub mod postgres;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use crate::error_code::ErrorCode;
use crate::pipeline::report::ErrorOut;
use crate::stats::Counter;

/// The schema version this build writes (SQLite: `PRAGMA user_version`; PostgreSQL: the
/// `agentrt_schema` table). 2 added `runs.submitted_by`; a store of schema 1 gains it when
/// opened (its runs have none).
pub(crate) const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    request TEXT NOT NULL,
    outcome TEXT,
    error_code TEXT,
    error_message TEXT,
    submitted_by TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_creation ON runs (created_at_ms);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs (updated_at_ms);
CREATE TABLE IF NOT EXISTS run_events (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plugin_stats (
    plugin TEXT PRIMARY KEY,
    counter TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
";

/// Writes to the store failing, since when, and the latest reason.
#[derive(Debug, Clone, Serialize)]
pub struct WriteFailure {
    pub since_ms: i64,
    pub error: String,
    pub failures: u64,
}

/// Why the store failed (`STORE_001`).
#[derive(Debug, thiserror::Error)]
#[error("run store {path}: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        ErrorCode::StoreFailed
    }

    /// The error for those outside the server (API clients, the open `/health`): without the
    /// store's folder or database address, which the log names. A message naming files
    /// beside the store (its lock file, a displaced copy) keeps their names, not where they
    /// are.
    pub fn public_message(&self) -> String {
        let message = if postgres::is_postgres_url(&self.path) {
            self.message.replace(&self.path, "the database")
        } else {
            match std::path::Path::new(&self.path).parent() {
                // A store at the root has no folder to leave out.
                Some(folder) if !folder.as_os_str().is_empty() && folder != Path::new("/") => {
                    let folder = folder.display().to_string();
                    let folder = folder.trim_end_matches('/');
                    self.message.replace(&format!("{folder}/"), "")
                }
                _ => self.message.clone(),
            }
        };
        format!("run store: {message}")
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }

    /// Whether the run has ended (nothing will change it any more).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One stored run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub state: RunState,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub request: Value,
    /// Who submitted it: the [`crate::server::auth::Caller::submitter`] of its API key, or
    /// `None` when the server took no keys (and for runs stored before schema 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The pipeline's result (`PipelineOutcome`) once the run has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorOut>,
}

/// One stored event of a run; `data` is its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub data: String,
}

/// The lock a server holds on its store (`PATH.lock`, an advisory file lock), also taken by
/// `agentrt restore` while it replaces the file. The lock file says who holds it
/// ([`LockHolder`]), so that whoever finds it held is told what to wait for.
#[derive(Debug)]
pub struct StoreLock {
    /// Locked while open; closing it (drop) releases the lock. Replaced when the lock file
    /// is deleted under the server ([`StoreLock::check`]).
    file: Mutex<std::fs::File>,
    /// `PATH.lock`, beside the file links lead to.
    path: PathBuf,
    role: LockRole,
}

/// What a process holds a store's lock for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRole {
    /// `agentrt serve`, for as long as it runs.
    Server,
    /// `agentrt restore`, while it replaces the store.
    Restore,
}

impl LockRole {
    fn word(self) -> &'static str {
        match self {
            LockRole::Server => "serve",
            LockRole::Restore => "restore",
        }
    }
}

/// Who holds a store's lock, as its lock file says (a file an older build locked says
/// nothing: a server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub role: LockRole,
    pub pid: Option<u32>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            LockRole::Server => f.write_str("another agentrt server")?,
            LockRole::Restore => f.write_str("an `agentrt restore` under way")?,
        }
        match self.pid {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

impl LockHolder {
    /// What the open lock file `lock` says.
    fn read(lock: &std::fs::File) -> Self {
        use std::io::Read;
        let mut text = String::new();
        let _ = lock.take(256).read_to_string(&mut text);
        Self::parse(&text)
    }

    /// What the lock file's text says.
    fn parse(text: &str) -> Self {
        let mut words = text.split_whitespace();
        let role = match words.next() {
            Some("restore") => LockRole::Restore,
            _ => LockRole::Server,
        };
        let pid = words.next().and_then(|p| p.parse().ok());
        Self { role, pid }
    }

    /// What whoever found the lock held should do.
    pub fn advice(&self) -> &'static str {
        match self.role {
            LockRole::Server => "set AGENTRT_STORE to give this one its own, or stop that server",
            LockRole::Restore => "wait for it to finish, then try again",
        }
    }
}

impl StoreLock {
    /// Who holds the lock of the store at `path` now, if anyone; looks without creating the
    /// lock file or its folder.
    pub fn held(path: &Path) -> Option<LockHolder> {
        // Read access is enough to ask for the lock: a server run as another user is seen too.
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .open(Self::lock_path(path))
            .ok()?;
        match lock.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) => Some(LockHolder::read(&lock)),
            Ok(()) | Err(std::fs::TryLockError::Error(_)) => None,
        }
    }

    /// `PATH.lock` beside the file itself, wherever links lead: a server given the real path
    /// and a restore given a link to it must meet at the same lock.
    fn lock_path(path: &Path) -> PathBuf {
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        crate::paths::beside(&real, ".lock")
    }

    /// Take the lock of the store at `path` for `role`: refused, naming who holds it, when
    /// another process does.
    pub fn take(path: &Path, role: LockRole) -> Result<Self, StoreError> {
        let fail = |message: String| StoreError {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let lock_path = Self::lock_path(path);
        let file = Self::lock_file(&lock_path, role).map_err(fail)?;
        Ok(Self {
            file: Mutex::new(file),
            path: lock_path,
            role,
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open (creating) and lock the lock file at `lock_path`, and write who holds it.
    fn lock_file(lock_path: &Path, role: LockRole) -> Result<std::fs::File, String> {
        use std::io::Write;
        // Truncated only once locked: the holder's words stay until then.
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock_path)
            .map_err(|e| format!("cannot open its lock file: {e}"))?;
        match lock.try_lock() {
            Ok(()) => {
                // What it says is advice for others, never needed for the lock itself.
                let said = format!("{} {}\n", role.word(), std::process::id());
                let _ = lock
                    .set_len(0)
                    .and_then(|()| lock.write_all(said.as_bytes()));
                Ok(lock)
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = LockHolder::read(&lock);
                Err(format!(
                    "{holder} is using this store ({})",
                    holder.advice()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock it: {e}")),
        }
    }

    /// Whether the lock file is still the one locked. One deleted under the server (`rm
    /// agentrt.db*`, a cleaner of old files) would let a second server or a restore in while
    /// this one writes: it is made and locked again, and `Ok(Some(note))` says so. `Err` when
    /// another process took the new one first.
    fn check(&self) -> Result<Option<String>, String> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let held = file.metadata().ok().map(|m| (m.dev(), m.ino()));
            if held.is_some() && held == file_identity(&self.path) {
                return Ok(None);
            }
        }
        #[cfg(not(unix))]
        if self.path.exists() {
            return Ok(None);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        match Self::lock_file(&self.path, self.role) {
            Ok(fresh) => {
                *file = fresh;
                Ok(Some(format!(
                    "the store's lock file {} was deleted while this server ran; it has been \
                     made and locked again",
                    self.path.display()
                )))
            }
            Err(why) => Err(format!(
                "the store's lock file {} was deleted while this server ran and cannot be \
                 taken again ({why}); stop the other process, and restart this server",
                self.path.display()
            )),
        }
    }
}

/// Where pipeline runs and their events are kept. Every method is one short transaction;
/// callers on async threads go through `spawn_blocking`.
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// The file or database (without a password), for messages.
    fn location(&self) -> String;
    /// Record a new run, `queued`, submitted by `submitted_by` (see [`RunRecord::submitted_by`]).
    fn insert_run(
        &self,
        id: &str,
        request: &Value,
        submitted_by: Option<&str>,
    ) -> Result<RunRecord, StoreError>;
    /// Mark a queued run `running`: whether it is (again: a repeated call is harmless), or
    /// `false` when it is no longer queued or running (something closed it meanwhile: it must
    /// not run).
    fn set_running(&self, id: &str) -> Result<bool, StoreError>;
    /// Store one event (its number must be new for the run).
    fn append_event(&self, id: &str, event: &StoredEvent) -> Result<(), StoreError>;
    /// End a run: its state, result, error and its last event, in one transaction.
    fn finish_run(
        &self,
        id: &str,
        state: RunState,
        outcome: Option<&Value>,
        error: Option<&ErrorOut>,
        done: &StoredEvent,
    ) -> Result<(), StoreError>;
    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// The newest runs first (by creation time, then id, both descending), at most `limit`;
    /// with `before` = (ms, id), only those after it in that order: created earlier, or at the
    /// same millisecond with a smaller id (`""` for none), so that paging by the last run of a
    /// page skips none created in the same millisecond. With `submitted_by`, only the runs it
    /// submitted.
    fn list_runs(
        &self,
        limit: usize,
        before: Option<(i64, &str)>,
        submitted_by: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// How many runs are in each state.
    fn count_by_state(&self) -> Result<Vec<(RunState, usize)>, StoreError>;
    /// A run's events with `seq` above `after`, in order.
    fn events_after(&self, id: &str, after: i64) -> Result<Vec<StoredEvent>, StoreError>;
    /// Mark the runs a previous process of this server left `running` (it stopped or crashed
    /// under them) as failed with `RUN_002`, each with a closing `done` event. Returns how
    /// many. Runs it left `queued` never started: they stay queued, for the server to run
    /// ([`RunStore::queued_runs`]). Call before accepting new runs.
    fn interrupt_unfinished(&self) -> Result<usize, StoreError>;
    /// This server's runs still `queued` (a previous process accepted them and stopped before
    /// they started), oldest first: what a starting server runs before new ones.
    fn queued_runs(&self) -> Result<Vec<RunRecord>, StoreError>;
    /// On a store shared by several hosts, close (as [`Self::interrupt_unfinished`] does) the
    /// unfinished runs of hosts that are gone, never this host's own; a server calls it now
    /// and then, since a host replaced under a new name never closes its own. A store only
    /// one server uses has none: `Ok(0)`.
    fn close_gone_hosts(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Delete up to `limit` runs that ended before `before_ms`, with their events (retention;
    /// runs still queued or running are never touched): how many were deleted.
    fn prune_finished(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError>;
    /// The database's own checks where it has them, plus the store's invariants: every
    /// finished run ends with one `done` event, event numbers have no gaps. `Ok(())` or the
    /// problems found.
    fn check_integrity(&self) -> Result<Result<(), Vec<String>>, StoreError>;
    /// Keep a plugin's statistics (this server's, replacing what was kept).
    fn save_plugin_stats(&self, plugin: &str, counter: &Counter) -> Result<(), StoreError>;
    /// This server's kept plugin statistics.
    fn load_plugin_stats(&self) -> Result<Vec<(String, Counter)>, StoreError>;
    /// Whether the store's file is still the one opened: `Ok(Some(note))` when it was deleted
    /// and has been re-created from the open database (what the note says), an error when it
    /// is gone for good or another file took its place. Stores without a file: `Ok(None)`.
    fn check_file(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Whether writes (or the file check) are failing now, as a [`watch::Watched`] store
    /// knows; other stores do not keep track.
    fn write_failure(&self) -> Option<WriteFailure> {
        None
    }
    /// Whether the latest write failed (the file check aside), as a [`watch::Watched`] store
    /// knows: a write is then tried once, without pauses.
    fn refusing_writes(&self) -> bool {
        false
    }
    /// Leave the store tidy at a clean shutdown, after the last write: an SQLite store folds
    /// its write-ahead log into its file, so that the file alone holds every run (a copy made
    /// by hand, not by `agentrt backup`, then misses nothing). Failures are only logged.
    fn close(&self) {}
    /// Run raw SQL (tests that damage a store on purpose).
    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError>;
}

/// Open the store a server uses, from `AGENTRT_STORE`'s value (or the config's): a
/// `postgres://` URL, else an SQLite file; exclusive (a second server on the same file, or with
/// the same instance name on the same database, is refused), watched (see [`watch`]).
pub fn open_for_server(location: &str) -> Result<Arc<watch::Watched>, StoreError> {
    open_location(location, true).map(|store| Arc::new(watch::Watched::new(store)))
}

/// Open a store for a tool (doctor): not exclusive.
pub fn open_shared(location: &str) -> Result<Arc<dyn RunStore>, StoreError> {
    open_location(location, false)
}

fn open_location(location: &str, exclusive: bool) -> Result<Arc<dyn RunStore>, StoreError> {
    if postgres::is_postgres_url(location) {
        let instance = postgres::instance_name();
        return Ok(Arc::new(postgres::PgStore::connect(
            location, &instance, exclusive,
        )?));
    }
    let path = Path::new(location);
    Ok(Arc::new(if exclusive {
        Store::open_exclusive(path)?
    } else {
        Store::open(path)?
    }))
}

/// Stored counters (JSON) as counters; one that does not parse (a damaged row) starts over.
pub(crate) fn parse_counters(rows: Vec<(String, String)>) -> Vec<(String, Counter)> {
    rows.into_iter()
        .map(|(plugin, json)| (plugin, serde_json::from_str(&json).unwrap_or_default()))
        .collect()
}

/// The error of a run closed by [`RunStore::interrupt_unfinished`] in `state` (`queued` or
/// `running`): one still waiting for its turn never started, and can simply be sent again.
pub(crate) fn interrupted_error(state: &str) -> ErrorOut {
    let message = if state == RunState::Queued.as_str() {
        "the server stopped before this run started (it was queued); submit it again"
    } else {
        "the server stopped while this run was in progress"
    };
    ErrorOut::new(ErrorCode::RunInterrupted, message)
}

/// The closing `done` event of a run [`interrupted_error`] closed.
pub(crate) fn interrupted_done(error: &ErrorOut) -> String {
    serde_json::json!({"type": "done", "state": "failed", "error": error}).to_string()
}

/// Per run: id, state, events, highest event number, `done` events, kind of the last event —
/// what [`invariant_problem`] judges. Plain SQL both databases run.
pub(crate) const INVARIANTS_QUERY: &str = "SELECT r.id, r.state,
        (SELECT COUNT(*) FROM run_events e WHERE e.run_id = r.id),
        (SELECT COALESCE(MAX(seq), 0) FROM run_events e WHERE e.run_id = r.id),
        (SELECT COUNT(*) FROM run_events e WHERE e.run_id = r.id AND e.kind = 'done'),
        (SELECT kind FROM run_events e WHERE e.run_id = r.id ORDER BY seq DESC LIMIT 1)
 FROM runs r";

/// What is wrong with one run's row of [`INVARIANTS_QUERY`], if anything.
pub(crate) fn invariant_problem(
    id: String,
    state: RunState,
    count: i64,
    max_seq: i64,
    dones: i64,
    last: Option<String>,
) -> Option<Vec<String>> {
    let mut problems = Vec::new();
    if count != max_seq {
        problems.push(format!("run {id}: {count} events numbered up to {max_seq}"));
    }
    let ends_done = last.as_deref() == Some("done") && dones == 1;
    if state.is_final() != ends_done {
        problems.push(format!(
            "run {id}: state {} but {dones} done events, last event {last:?}",
            state.as_str()
        ));
    }
    (!problems.is_empty()).then_some(problems)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// Tries of a backup step that finds the source or the copy locked (a checkpoint, a commit:
/// milliseconds) before the backup gives up, and the pause between two.
const BACKUP_TRIES: u32 = 100;
const BACKUP_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What SQLite's own consistency check (`PRAGMA integrity_check`) finds wrong with the file:
/// nothing when it is sound. Damage that stops the check itself (a page that is not one) is
/// one of the problems, not an error; other failures (memory, a lock) are errors.
fn sqlite_problems(c: &Connection, check: &str) -> rusqlite::Result<Vec<String>> {
    let mut problems = Vec::new();
    let checked = c.prepare(&format!("PRAGMA {check}")).and_then(|mut stmt| {
        for line in stmt.query_map([], |r| r.get::<_, String>(0))? {
            problems.push(line?);
        }
        Ok(())
    });
    problems.retain(|line| line != "ok");
    let damaged = |e: &rusqlite::Error| {
        matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    };
    match checked {
        Err(e) if damaged(&e) => problems.push(e.to_string()),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    Ok(problems)
}

/// Copy every page of `source` into `target` in one backup step, that is in one read
/// transaction: a consistent snapshot, and in WAL mode the server's writers go on meanwhile.
/// Not in several steps: SQLite restarts a backup from page 1 when another connection commits
/// between two steps, so under steady writes a stepwise copy never ends.
fn copy_in_one_step(source: &Connection, target: &mut Connection) -> Result<(), String> {
    use rusqlite::backup::{Backup, StepResult};
    let copy = Backup::new(source, target).map_err(|e| e.to_string())?;
    for _ in 0..BACKUP_TRIES {
        match copy.step(-1).map_err(|e| e.to_string())? {
            StepResult::Done => return Ok(()),
            // Busy or locked for a moment: the next try starts over, still in one step.
            _ => std::thread::sleep(BACKUP_RETRY_PAUSE),
        }
    }
    Err(format!(
        "the store stayed locked through {BACKUP_TRIES} tries; try again"
    ))
}

/// The settings every connection of the store runs with.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // Another process (a backup, a second reader) may hold the lock for a moment.
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "cannot use write-ahead logging (journal mode {mode})"
            )),
        ));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The write-ahead log is cut back to this after a checkpoint: a big prune or a long
    // backup would otherwise leave it at its largest for good.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    conn.pragma_update(None, "foreign_keys", "ON")
}

/// The schema version of the store `conn` opened, refused (the message says why) when a newer
/// agentrt wrote it.
fn readable_version(conn: &Connection) -> Result<i64, String> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "written by a newer agentrt (schema {version}, this build reads up to {SCHEMA_VERSION})"
        ));
    }
    Ok(version)
}

/// Bring a store written by an older agentrt (or a new one) up to this schema: schema 1
/// lacks `runs.submitted_by`; then the indexes on columns an upgrade adds, and the version.
/// In one write transaction, so that two processes opening an old store at once do not both
/// add the column, and a version written meanwhile is seen.
fn upgrade(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = (|| {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version >= SCHEMA_VERSION {
            // Another process upgraded it first (a newer one is refused at the next open).
            return Ok(());
        }
        let has_submitter: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('runs') WHERE name = 'submitted_by'",
            [],
            |r| r.get(0),
        )?;
        if !has_submitter {
            conn.execute_batch("ALTER TABLE runs ADD COLUMN submitted_by TEXT")?;
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS runs_by_submitter ON runs (submitted_by, created_at_ms)",
        )?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
    })();
    match upgraded {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Fold the write-ahead log beside the SQLite store at `path` into the file, which then holds
/// every commit alone (the log is removed as the connection closes). For a restore, which holds
/// the store's lock: until the new file takes its name, the old one stays whole by itself,
/// whatever interrupts the restore. A store without a log is left as it is.
pub fn fold_log(path: &Path) -> Result<(), String> {
    if !crate::paths::beside(path, "-wal").exists() {
        return Ok(());
    }
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let folded = fold_and_empty_log(&conn);
    conn.close().map_err(|(_, e)| e.to_string())?;
    folded
}

/// Move every page of `conn`'s write-ahead log into its database file and empty the log.
fn fold_and_empty_log(conn: &Connection) -> Result<(), String> {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    match busy {
        0 => Ok(()),
        _ => Err("another process reads it".into()),
    }
}

/// Write the database `conn` reads, whole, into the new file `target` (`VACUUM INTO`); also
/// from a connection that refuses writes (`query_only`), as a copy is not a write to the store.
fn copy_into(conn: &Connection, target: &Path) -> Result<(), String> {
    let target = target.to_str().ok_or("the path is not UTF-8")?;
    let refusing: bool = conn
        .pragma_query_value(None, "query_only", |r| r.get(0))
        .unwrap_or(false);
    if refusing {
        conn.pragma_update(None, "query_only", false)
            .map_err(|e| e.to_string())?;
    }
    let copied = conn.execute("VACUUM INTO ?1", [target]);
    if refusing {
        let _ = conn.pragma_update(None, "query_only", true);
    }
    copied.map(drop).map_err(|e| e.to_string())
}

/// What to do about a damaged store file.
const DAMAGED_ADVICE: &str =
    "restore a backup (agentrt restore) or move it aside to start with an empty store";

/// A file's device and inode: which file a path names now.
type FileIdentity = (u64, u64);

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<FileIdentity> {
    None
}

/// The SQLite run store; one connection, used under a mutex (every statement is short).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The file opened (device and inode), to tell it from another put in its place.
    identity: Mutex<Option<FileIdentity>>,
    /// Why writes are refused, while another file holds the store's name (see
    /// [`Store::step_aside`]); `None` while the file opened is in place.
    displaced: Mutex<Option<String>>,
    /// Held by a server for as long as it runs (see [`Store::open_exclusive`]).
    lock: Option<StoreLock>,
}

impl Store {
    /// Open (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(&e))?;
        // A new store gives the pages of pruned runs back to the file system (retention runs
        // `incremental_vacuum`); the mode is only chosen before the file is first written
        // (switching to write-ahead logging writes it).
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| fail(&e))?;
        if tables == 0 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(|e| fail(&e))?;
        }
        configure(&conn).map_err(|e| fail(&e))?;
        let version = readable_version(&conn).map_err(|e| fail(&e))?;
        conn.execute_batch(SCHEMA).map_err(|e| fail(&e))?;
        // A store of this schema is opened without a write (a doctor beside a busy server).
        if version < SCHEMA_VERSION {
            upgrade(&conn).map_err(|e| fail(&e))?;
        }
        Ok(Self::over(conn, path))
    }

    /// The store over the open connection `conn` to `path`, without a lock.
    fn over(conn: Connection, path: &Path) -> Self {
        Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            identity: Mutex::new(file_identity(path)),
            displaced: Mutex::new(None),
            lock: None,
        }
    }

    /// Open the existing store at `path` to look at it (`agentrt doctor`): no schema is created
    /// or upgraded, so that a tool of a newer build leaves an older build's store as it is
    /// (its server, or a rollback, still reads it). The store and its schema version; a store
    /// of a newer schema is refused, as [`Store::open`] refuses it. Its runs are not read
    /// through it: only [`RunStore::check_integrity`] and [`RunStore::count_by_state`], which
    /// every schema answers.
    pub fn open_to_examine(path: &Path) -> Result<(Self, i64), StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&e))?;
        configure(&conn).map_err(|e| fail(&e))?;
        let version = readable_version(&conn).map_err(|e| fail(&e))?;
        Ok((Self::over(conn, path), version))
    }

    /// Open the store for a server: also take `PATH.lock`, so that a second server on the same
    /// file is refused instead of marking the first one's runs interrupted.
    pub fn open_exclusive(path: &Path) -> Result<Self, StoreError> {
        let lock = StoreLock::take(path, LockRole::Server)?;
        // A file SQLite cannot even open as a database (damaged in its first pages, or not one
        // at all) gets the same advice as one the check below finds damaged.
        let mut store = Self::open(path).map_err(|e| {
            let damaged = ["malformed", "not a database"]
                .iter()
                .any(|sign| e.message.contains(sign));
            if damaged {
                StoreError {
                    message: format!("{}; {DAMAGED_ADVICE}", e.message),
                    ..e
                }
            } else {
                e
            }
        })?;
        store.lock = Some(lock);
        // A damaged file would be served as healthy while every run call failed: refused at
        // start instead. quick_check reads every page once (a second or so per GB).
        let problems = store
            .with(|c| sqlite_problems(c, "quick_check"))
            .map_err(|e| StoreError {
                message: format!("cannot check it: {}", e.message),
                ..e
            })?;
        if !problems.is_empty() {
            return Err(StoreError {
                path: path.display().to_string(),
                message: format!(
                    "the file is damaged ({}); {DAMAGED_ADVICE}",
                    problems
                        .iter()
                        .flat_map(|p| p.lines())
                        .filter(|line| !line.starts_with("***"))
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        Ok(store)
    }

    /// Copy the store at `src` into the new file `dest` with SQLite's online backup: a
    /// consistent snapshot even while a server writes to it, as one self-contained file (no
    /// write-ahead log beside it). Returns how many runs the copy holds.
    pub fn backup_online(src: &Path, dest: &Path) -> Result<usize, StoreError> {
        let fail = |e: &dyn std::fmt::Display| StoreError {
            path: src.display().to_string(),
            message: format!("backup to {}: {e}", dest.display()),
        };
        let source = Connection::open(src).map_err(|e| fail(&e))?;
        source
            .busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        let mut target = Connection::open(dest).map_err(|e| fail(&e))?;
        copy_in_one_step(&source, &mut target).map_err(|e| fail(&e))?;
        // The online backup copies damaged pages as they are: found now, not at the restore
        // that needed the backup.
        let problems = sqlite_problems(&target, "integrity_check").map_err(|e| fail(&e))?;
        if !problems.is_empty() {
            return Err(fail(&format!(
                "the store is damaged, so the copy would be too ({}); run `agentrt doctor`",
                problems.join("; ")
            )));
        }
        let _: String = target
            .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
            .map_err(|e| fail(&e))?;
        let runs: i64 = target
            .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
            .map_err(|e| fail(&e))?;
        Ok(runs as usize)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let result = f(&mut self.conn.lock().unwrap_or_else(|e| e.into_inner()));
        // The connection is released first: the file check takes `displaced` before it.
        result.map_err(|e| StoreError {
            path: self.path.display().to_string(),
            // A write refused because the file was replaced says so, not "readonly database".
            message: match &*self.displaced.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(why) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) => {
                    why.clone()
                }
                _ => e.to_string(),
            },
        })
    }

    /// [`RunStore::check_file`] for the database file itself.
    fn check_database_file(&self) -> Result<Option<String>, StoreError> {
        let fail = |message: String| StoreError {
            path: self.path.display().to_string(),
            message,
        };
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        let Some(opened) = *identity else {
            return Ok(None);
        };
        match std::fs::metadata(&self.path) {
            Ok(_) if file_identity(&self.path) == Some(opened) => self.step_back(),
            Ok(_) => {
                let mut displaced = self.displaced.lock().unwrap_or_else(|p| p.into_inner());
                let why = displaced.get_or_insert_with(|| self.step_aside());
                Err(fail(why.clone()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Whatever took the store's place is gone too: written out again, the store
                // takes writes again.
                let mut displaced = self.displaced.lock().unwrap_or_else(|p| p.into_inner());
                let written = self.write_again(&mut identity);
                if written.is_ok() {
                    *displaced = None;
                }
                written
            }
            Err(e) => Err(fail(format!("cannot look at the store's file: {e}"))),
        }
    }

    /// Another file took the store's name while this server had it open (a backup copied
    /// over it by hand). The write-ahead log and its index keep the name, so they now pair
    /// with the new file: whatever this server writes there, SQLite would lay over the new
    /// file's pages at the next open, damaging it. So the log is folded into the file this
    /// server opened (and emptied), that file is copied beside the path (nothing it stored is
    /// lost), and the connection refuses writes (`query_only`) until the file is back. Returns
    /// what `/health`, the log and every refused write say.
    fn step_aside(&self) -> String {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let folded = fold_and_empty_log(&conn);
        let copy = crate::paths::beside(&self.path, &format!(".displaced-{}", now_ms()));
        let copied = copy_into(&conn, &copy);
        if let Err(e) = conn.pragma_update(None, "query_only", true) {
            tracing::error!(store = %self.path.display(), "cannot stop writes to the store: {e}");
        }
        let kept = match copied {
            Ok(()) => format!("what it stored is kept in {}", copy.display()),
            Err(why) => {
                let _ = std::fs::remove_file(&copy);
                format!(
                    "what it stored could not be copied aside ({why}) and is lost when it \
                     stops, unless the file it opened is put back"
                )
            }
        };
        let log = match folded {
            Ok(()) => String::new(),
            Err(why) => format!(
                "; its write-ahead log could not be emptied ({why}): move {} aside before the \
                 next start",
                crate::paths::beside(&self.path, "-wal").display()
            ),
        };
        format!(
            "another file took the store's place while this server ran (a restore goes through \
             `agentrt restore`, with the server stopped); so as not to damage that file, this \
             server no longer writes to the store and {kept}{log}; restart the \
             server to use the file now in place, or put the one it opened back"
        )
    }

    /// The file opened is in place: writes go on if [`Store::step_aside`] stopped them.
    fn step_back(&self) -> Result<Option<String>, StoreError> {
        let mut displaced = self.displaced.lock().unwrap_or_else(|p| p.into_inner());
        if displaced.is_none() {
            return Ok(None);
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.pragma_update(None, "query_only", false)
            .map_err(|e| StoreError {
                path: self.path.display().to_string(),
                message: format!("cannot take writes again: {e}"),
            })?;
        *displaced = None;
        // The watcher logs the store sound again.
        Ok(None)
    }

    /// The store's file was deleted under the open connection, which still reads it: written
    /// out again whole, then used in its place, so that nothing stored is lost.
    fn write_again(
        &self,
        identity: &mut Option<FileIdentity>,
    ) -> Result<Option<String>, StoreError> {
        let fail = |message: String| StoreError {
            path: self.path.display().to_string(),
            message,
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let partial = crate::paths::beside(&self.path, ".recovering");
        let _ = std::fs::remove_file(&partial);
        let copied = (|| {
            // The whole folder may have gone (`$AGENTRT_HOME` cleaned up under it).
            if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            copy_into(&conn, &partial)?;
            std::fs::File::open(&partial)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())
        })();
        if let Err(why) = copied {
            let _ = std::fs::remove_file(&partial);
            return Err(fail(format!(
                "the store's file was deleted while this server ran and cannot be \
                 written again ({why}); runs from now on are lost when the server stops"
            )));
        }
        // The old connection closes before the copy takes the name: its write-ahead
        // log and index (left beside the path when only the file was deleted) hold
        // pages of the old file's layout, which SQLite would lay over the copy's.
        let closed = std::mem::replace(
            &mut *conn,
            Connection::open_in_memory().map_err(|e| fail(e.to_string()))?,
        );
        drop(closed);
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(crate::paths::beside(&self.path, suffix));
        }
        let installed = std::fs::rename(&partial, &self.path)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                let fresh = Connection::open(&self.path).map_err(|e| e.to_string())?;
                configure(&fresh).map_err(|e| e.to_string())?;
                Ok(fresh)
            });
        match installed {
            Ok(fresh) => {
                *conn = fresh;
                *identity = file_identity(&self.path);
                Ok(Some(
                    "the store's file was deleted while this server ran; it has been \
                     written again from the open database, with every run"
                        .into(),
                ))
            }
            // The connection left is an empty in-memory one: every call fails (no
            // tables), so /health and the log say so rather than writes vanishing.
            Err(why) => Err(fail(format!(
                "the store's file was deleted while this server ran, and its copy {} \
                 cannot be opened ({why}); restart the server once it can",
                partial.display()
            ))),
        }
    }

    fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
        let request: String = row.get(4)?;
        let outcome: Option<String> = row.get(5)?;
        let code: Option<String> = row.get(6)?;
        let message: Option<String> = row.get(7)?;
        Ok(RunRecord {
            id: row.get(0)?,
            state: RunState::parse(&row.get::<_, String>(1)?),
            created_at_ms: row.get(2)?,
            updated_at_ms: row.get(3)?,
            request: serde_json::from_str(&request).unwrap_or(Value::Null),
            submitted_by: row.get(8)?,
            outcome: outcome.and_then(|o| serde_json::from_str(&o).ok()),
            error: code.map(|code| ErrorOut {
                code,
                message: message.unwrap_or_default(),
            }),
        })
    }

    const COLUMNS: &'static str = "id, state, created_at_ms, updated_at_ms, request, outcome, \
         error_code, error_message, submitted_by";
}

impl RunStore for Store {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn close(&self) {
        // A store stepped aside for a replacing file is left as it is (its copy is kept).
        if self
            .displaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match fold_and_empty_log(&conn) {
            Ok(()) => {
                tracing::debug!(store = %self.path.display(), "write-ahead log folded into the store file")
            }
            Err(e) => {
                tracing::warn!(store = %self.path.display(), "write-ahead log left beside the store file at shutdown: {e}")
            }
        }
    }

    fn insert_run(
        &self,
        id: &str,
        request: &Value,
        submitted_by: Option<&str>,
    ) -> Result<RunRecord, StoreError> {
        let now = now_ms();
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (id, state, created_at_ms, updated_at_ms, request, submitted_by)
                 VALUES (?1, 'queued', ?2, ?2, ?3, ?4)",
                params![id, now, request.to_string(), submitted_by],
            )
        })?;
        Ok(RunRecord {
            id: id.to_string(),
            state: RunState::Queued,
            created_at_ms: now,
            updated_at_ms: now,
            request: request.clone(),
            submitted_by: submitted_by.map(str::to_string),
            outcome: None,
            error: None,
        })
    }

    fn set_running(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET state = 'running', updated_at_ms = ?2
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![id, now_ms()],
            )
        })
        .map(|updated| updated > 0)
    }

    fn append_event(&self, id: &str, event: &StoredEvent) -> Result<(), StoreError> {
        self.with(|c| {
            let added = c.execute(
                "INSERT INTO run_events (run_id, seq, at_ms, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, seq) DO NOTHING",
                params![id, event.seq, event.at_ms, event.kind, event.data],
            )?;
            // The number taken: the same event again (a retried write whose first commit went
            // through) is fine; another event under it is refused.
            let same = added == 1
                || c.query_row(
                    "SELECT kind = ?3 AND data = ?4 FROM run_events WHERE run_id = ?1 AND seq = ?2",
                    params![id, event.seq, event.kind, event.data],
                    |r| r.get::<_, bool>(0),
                )?;
            if same {
                Ok(())
            } else {
                Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                    Some(format!("run {id} already has another event {}", event.seq)),
                ))
            }
        })
    }

    /// End a run: its state, result, error and its last event, in one transaction.
    fn finish_run(
        &self,
        id: &str,
        state: RunState,
        outcome: Option<&Value>,
        error: Option<&ErrorOut>,
        done: &StoredEvent,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE runs SET state = ?2, updated_at_ms = ?3, outcome = ?4, error_code = ?5,
                 error_message = ?6 WHERE id = ?1",
                params![
                    id,
                    state.as_str(),
                    now_ms(),
                    outcome.map(Value::to_string),
                    error.map(|e| e.code.as_str()),
                    error.map(|e| e.message.as_str()),
                ],
            )?;
            tx.execute(
                "INSERT INTO run_events (run_id, seq, at_ms, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, seq) DO NOTHING",
                params![id, done.seq, done.at_ms, done.kind, done.data],
            )?;
            tx.commit()
        })
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {} FROM runs WHERE id = ?1", Store::COLUMNS),
                params![id],
                Store::record,
            )
            .optional()
        })
    }

    fn list_runs(
        &self,
        limit: usize,
        before: Option<(i64, &str)>,
        submitted_by: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, ""));
        // Two statements rather than `?4 IS NULL OR …`, so that each can use its index.
        let whose = if submitted_by.is_some() {
            "submitted_by = ?4 AND"
        } else {
            "?4 IS NULL AND"
        };
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM runs WHERE {whose} (created_at_ms, id) < (?1, ?2)
                 ORDER BY created_at_ms DESC, id DESC LIMIT ?3",
                Store::COLUMNS
            ))?;
            let rows = stmt.query_map(
                params![before_ms, before_id, limit as i64, submitted_by],
                Store::record,
            )?;
            rows.collect()
        })
    }

    fn queued_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM runs WHERE state = 'queued' ORDER BY created_at_ms, id",
                Store::COLUMNS
            ))?;
            let rows = stmt.query_map([], Store::record)?;
            rows.collect()
        })
    }

    /// How many runs are in each state.
    fn count_by_state(&self) -> Result<Vec<(RunState, usize)>, StoreError> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT state, COUNT(*) FROM runs GROUP BY state ORDER BY state")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    RunState::parse(&r.get::<_, String>(0)?),
                    r.get::<_, i64>(1)? as usize,
                ))
            })?;
            rows.collect()
        })
    }

    /// A run's events with `seq` above `after`, in order.
    fn events_after(&self, id: &str, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, at_ms, kind, data FROM run_events WHERE run_id = ?1 AND seq > ?2
                 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![id, after], |r| {
                Ok(StoredEvent {
                    seq: r.get(0)?,
                    at_ms: r.get(1)?,
                    kind: r.get(2)?,
                    data: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn prune_finished(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Their events go with them (ON DELETE CASCADE; foreign keys are on).
        self.with(|c| {
            let deleted = c.execute(
                "DELETE FROM runs WHERE id IN (SELECT id FROM runs
                 WHERE state IN ('completed', 'failed', 'cancelled') AND updated_at_ms < ?1
                 ORDER BY updated_at_ms LIMIT ?2)",
                rusqlite::params![before_ms, limit],
            )?;
            if deleted > 0 {
                // Their pages back to the file system (a store made before incremental
                // auto-vacuum keeps them for reuse: a no-op there).
                // (It frees a page per step: stepped to the end.)
                let mut vacuum = c.prepare("PRAGMA incremental_vacuum")?;
                let mut steps = vacuum.raw_query();
                while steps.next()?.is_some() {}
            }
            Ok(deleted)
        })
    }

    /// Mark the runs a previous process left `running` (it stopped or crashed under them) as
    /// failed with `RUN_002`, each with a closing `done` event; the `queued` ones stay, for
    /// the server to run. Returns how many were closed. Call before accepting new runs.
    fn interrupt_unfinished(&self) -> Result<usize, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let runs: Vec<(String, String)> = {
                let mut stmt = tx.prepare("SELECT id, state FROM runs WHERE state = 'running'")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let now = now_ms();
            for (id, state) in &runs {
                let error = interrupted_error(state);
                let next: i64 = tx.query_row(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM run_events WHERE run_id = ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO run_events (run_id, seq, at_ms, kind, data) VALUES (?1, ?2, ?3, 'done', ?4)",
                    params![id, next, now, interrupted_done(&error)],
                )?;
                tx.execute(
                    "UPDATE runs SET state = 'failed', updated_at_ms = ?2, error_code = ?3,
                     error_message = ?4 WHERE id = ?1",
                    params![id, now, error.code, error.message],
                )?;
            }
            tx.commit()?;
            Ok(runs.len())
        })
    }

    /// SQLite's own consistency check plus the store's invariants: every finished run ends
    /// with one `done` event, event numbers have no gaps. `Ok(())` or the problems found.
    fn check_integrity(&self) -> Result<Result<(), Vec<String>>, StoreError> {
        self.with(|c| {
            let mut problems = sqlite_problems(c, "integrity_check")?;
            // A damaged file may fail the query over the runs too: what SQLite found is the
            // answer then, not the query's bare "malformed".
            if !problems.is_empty() {
                return Ok(Err(problems));
            }
            let mut stmt = c.prepare(INVARIANTS_QUERY)?;
            let rows = stmt.query_map([], |r| {
                Ok(invariant_problem(
                    r.get::<_, String>(0)?,
                    RunState::parse(&r.get::<_, String>(1)?),
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            for row in rows {
                problems.extend(row?.into_iter().flatten());
            }
            Ok(if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            })
        })
    }

    fn save_plugin_stats(&self, plugin: &str, counter: &Counter) -> Result<(), StoreError> {
        let json = serde_json::to_string(counter).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "INSERT INTO plugin_stats (plugin, counter, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (plugin) DO UPDATE SET counter = ?2, updated_at_ms = ?3",
                params![plugin, json, now_ms()],
            )
        })
        .map(drop)
    }

    fn load_plugin_stats(&self) -> Result<Vec<(String, Counter)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT plugin, counter FROM plugin_stats ORDER BY plugin")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map(parse_counters)
    }

    fn check_file(&self) -> Result<Option<String>, StoreError> {
        let fail = |message: String| StoreError {
            path: self.path.display().to_string(),
            message,
        };
        let lock_note = match &self.lock {
            Some(lock) => lock.check().map_err(fail)?,
            None => None,
        };
        let file_note = self.check_database_file()?;
        Ok(match (lock_note, file_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        })
    }

    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute_batch(sql))
    }
}

/// The store tests, run against SQLite always and against PostgreSQL when
/// `AGENTRT_TEST_POSTGRES_URL` names a server (`scripts/test.sh` starts one; with
/// `AGENTRT_REQUIRE_POSTGRES=1` a missing server fails instead of skipping).
#[cfg(test)]
mod conformance {
    use super::*;

    /// Opens the harness's store (exclusively: as a server).
    type Opener = Box<dyn Fn(bool) -> Result<Box<dyn RunStore>, StoreError>>;

    /// Stores of one kind: each `open` is another connection to the same store.
    pub struct Harness {
        open: Opener,
        /// The PostgreSQL URL (its schema chosen), for tests that play other hosts.
        pub(super) postgres_url: Option<String>,
        /// SQL that makes the store look written by a newer agentrt.
        newer_schema: &'static str,
        /// SQL that makes the store look written by a build of schema 1.
        schema_1: &'static str,
        cleanup: Option<Box<dyn FnOnce()>>,
    }

    impl Harness {
        fn open(&self) -> Box<dyn RunStore> {
            (self.open)(false).expect("open the store")
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            if let Some(f) = self.cleanup.take() {
                f();
            }
        }
    }

    pub fn sqlite() -> Harness {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-store-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("runs.db");
        Harness {
            open: Box::new(move |exclusive| {
                Ok(if exclusive {
                    Box::new(Store::open_exclusive(&path)?)
                } else {
                    Box::new(Store::open(&path)?)
                })
            }),
            postgres_url: None,
            newer_schema: "PRAGMA user_version = 99",
            schema_1: "DROP INDEX runs_by_submitter; ALTER TABLE runs DROP COLUMN submitted_by;
                       PRAGMA user_version = 1",
            cleanup: Some(Box::new(move || {
                let _ = std::fs::remove_dir_all(&dir);
            })),
        }
    }

    /// A fresh schema on the test server, dropped afterwards; `None` (skipped) without one.
    pub fn postgres() -> Option<Harness> {
        let Ok(url) = std::env::var("AGENTRT_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("AGENTRT_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "AGENTRT_REQUIRE_POSTGRES=1 but AGENTRT_TEST_POSTGRES_URL is not set"
            );
            eprintln!(
                "skipped: AGENTRT_TEST_POSTGRES_URL is not set (scripts/test.sh starts a server)"
            );
            return None;
        };
        let schema = format!("agentrt_test_{}", rand::random::<u32>());
        let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls)
            .expect("connect to the test PostgreSQL server");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create a schema");
        let scoped = postgres::with_search_path(&url, &schema);
        Some(Harness {
            postgres_url: Some(scoped.clone()),
            open: Box::new(move |exclusive| {
                Ok(Box::new(postgres::PgStore::connect(
                    &scoped,
                    "test-instance",
                    exclusive,
                )?))
            }),
            newer_schema: "UPDATE agentrt_schema SET version = 99",
            schema_1: "DROP INDEX runs_by_submitter; ALTER TABLE runs DROP COLUMN submitted_by;
                       DELETE FROM agentrt_schema; INSERT INTO agentrt_schema VALUES (1)",
            cleanup: Some(Box::new(move || {
                let _ = admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            })),
        })
    }

    fn event(seq: i64, kind: &str) -> StoredEvent {
        StoredEvent {
            seq,
            at_ms: now_ms(),
            kind: kind.into(),
            data: format!("{{\"type\":\"{kind}\"}}"),
        }
    }

    pub fn a_run_goes_from_queued_to_completed_with_its_events(h: &Harness) {
        let store = h.open();
        let request = serde_json::json!({"task_description": "add two numbers"});
        store.insert_run("r1", &request, None).expect("insert");
        assert_eq!(
            store.run("r1").expect("read").expect("run").state,
            RunState::Queued
        );
        store.set_running("r1").expect("running");
        store
            .append_event("r1", &event(1, "stage_started"))
            .expect("event");
        store
            .append_event("r1", &event(2, "tokens"))
            .expect("event");
        let outcome = serde_json::json!({"status": "completed"});
        store
            .finish_run(
                "r1",
                RunState::Completed,
                Some(&outcome),
                None,
                &event(3, "done"),
            )
            .expect("finish");
        let run = store.run("r1").expect("read").expect("run");
        assert_eq!(run.state, RunState::Completed);
        assert_eq!(run.request, request);
        assert_eq!(run.outcome, Some(outcome));
        let kinds: Vec<String> = store
            .events_after("r1", 0)
            .expect("events")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["stage_started", "tokens", "done"]);
        assert_eq!(store.events_after("r1", 2).expect("events").len(), 1);
        assert_eq!(store.check_integrity().expect("check"), Ok(()));
        assert!(store.run("nobody").expect("read").is_none());
        // Another event under a number taken is refused; the same event again (a retried
        // write) is kept once.
        let mut other = event(3, "done");
        other.data = "{\"type\":\"other\"}".into();
        assert!(store.append_event("r1", &other).is_err());
        let stored = store.events_after("r1", 2).expect("events");
        store
            .append_event("r1", &stored[0])
            .expect("the same event again");
        assert_eq!(store.events_after("r1", 0).expect("events").len(), 3);
        // A failed run keeps its error.
        store.insert_run("r3", &Value::Null, None).expect("insert");
        let error = ErrorOut::new(ErrorCode::GenerationFailed, "the model failed");
        store
            .finish_run(
                "r3",
                RunState::Failed,
                None,
                Some(&error),
                &event(1, "done"),
            )
            .expect("finish");
        let failed = store.run("r3").expect("read").expect("run");
        assert_eq!(failed.error.expect("error").code, error.code);
        // The check sees a finished run without its last event, and a gap in the numbers.
        store.insert_run("r2", &Value::Null, None).expect("insert");
        store
            .append_event("r2", &event(2, "tokens"))
            .expect("event");
        store
            .execute_for_test("UPDATE runs SET state = 'completed' WHERE id = 'r2'")
            .expect("corrupt");
        let problems = store
            .check_integrity()
            .expect("check")
            .expect_err("problems");
        assert_eq!(problems.len(), 2, "{problems:?}");
        let counts = store.count_by_state().expect("counts");
        assert!(counts.contains(&(RunState::Completed, 2)), "{counts:?}");
        assert!(counts.contains(&(RunState::Failed, 1)), "{counts:?}");
    }

    pub fn unfinished_runs_are_marked_interrupted_on_the_next_open(h: &Harness) {
        {
            let store = h.open();
            store
                .insert_run("done", &Value::Null, None)
                .expect("insert");
            store
                .finish_run("done", RunState::Completed, None, None, &event(1, "done"))
                .expect("finish");
            store
                .insert_run("midway", &Value::Null, None)
                .expect("insert");
            store.set_running("midway").expect("running");
            store
                .append_event("midway", &event(1, "stage_started"))
                .expect("event");
            store
                .insert_run("waiting", &Value::Null, None)
                .expect("insert");
        }
        let store = h.open();
        assert_eq!(store.interrupt_unfinished().expect("interrupt"), 1);
        let run = store.run("midway").expect("read").expect("run");
        assert_eq!(run.state, RunState::Failed);
        let error = run.error.expect("error");
        assert_eq!(error.code, "RUN_002");
        assert!(error.message.contains("in progress"), "{}", error.message);
        let last = store
            .events_after("midway", 0)
            .expect("events")
            .pop()
            .expect("event");
        assert_eq!(last.kind, "done");
        // The run that never started stays queued, for the server to run.
        let queued: Vec<String> = store
            .queued_runs()
            .expect("queued")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(queued, ["waiting"]);
        assert_eq!(
            store.run("done").expect("read").expect("run").state,
            RunState::Completed
        );
        assert_eq!(store.check_integrity().expect("check"), Ok(()));
        assert_eq!(store.interrupt_unfinished().expect("again"), 0);
    }

    pub fn runs_list_newest_first(h: &Harness) {
        let store = h.open();
        for id in ["a", "b", "c"] {
            store.insert_run(id, &Value::Null, None).expect("insert");
            std::thread::sleep(Duration::from_millis(3));
        }
        let ids: Vec<String> = store
            .list_runs(2, None, None)
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["c", "b"]);
        let created_b = store.run("b").expect("read").expect("run").created_at_ms;
        let older: Vec<String> = store
            .list_runs(10, Some((created_b, "")), None)
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(older, ["a"]);
    }

    pub fn runs_list_by_submitter(h: &Harness) {
        let store = h.open();
        for (id, by) in [("k1-a", Some("k1")), ("k2-a", Some("k2")), ("anon", None)] {
            store.insert_run(id, &Value::Null, by).expect("insert");
            std::thread::sleep(Duration::from_millis(3));
        }
        store
            .insert_run("k1-b", &Value::Null, Some("k1"))
            .expect("insert");
        let ids = |by: Option<&str>, before: Option<(i64, &str)>| -> Vec<String> {
            store
                .list_runs(10, before, by)
                .expect("list")
                .into_iter()
                .map(|r| r.id)
                .collect()
        };
        assert_eq!(ids(Some("k1"), None), ["k1-b", "k1-a"]);
        assert_eq!(ids(Some("k2"), None), ["k2-a"]);
        assert!(ids(Some("nobody"), None).is_empty());
        assert_eq!(ids(None, None), ["k1-b", "anon", "k2-a", "k1-a"]);
        let b = store.run("k1-b").expect("read").expect("run");
        assert_eq!(b.submitted_by.as_deref(), Some("k1"));
        assert_eq!(ids(Some("k1"), Some((b.created_at_ms, &b.id))), ["k1-a"]);
        let anon = store.run("anon").expect("read").expect("run");
        assert_eq!(anon.submitted_by, None);
    }

    /// A store written by a build of schema 1 (no `submitted_by`) is upgraded when a server
    /// opens it: its runs are kept, with no submitter, and new runs record theirs. On a
    /// database that hosts share, a tool's open does not upgrade it (hosts of the older build
    /// may still be running).
    pub fn a_store_of_schema_1_is_upgraded_when_opened(h: &Harness) {
        {
            let store = h.open();
            store.insert_run("old", &Value::Null, None).expect("insert");
            store
                .execute_for_test(h.schema_1)
                .expect("back to schema 1");
        }
        if h.postgres_url.is_some() {
            let refused = (h.open)(false).expect_err("a tool does not upgrade");
            assert!(refused.message.contains("older agentrt"), "{refused}");
        }
        let store = (h.open)(true).expect("a server upgrades it");
        let old = store.run("old").expect("read").expect("run");
        assert_eq!((old.id.as_str(), old.submitted_by), ("old", None));
        store
            .insert_run("new", &Value::Null, Some("k1"))
            .expect("insert");
        let mine: Vec<String> = store
            .list_runs(10, None, Some("k1"))
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(mine, ["new"]);
        drop(store);
        // Opened again: upgraded already, nothing to do.
        let again = h.open();
        assert_eq!(again.list_runs(10, None, None).expect("list").len(), 2);
    }

    pub fn paging_skips_no_run_created_in_the_same_millisecond(h: &Harness) {
        let store = h.open();
        for id in ["p1", "p2", "p3", "p4", "p5"] {
            store.insert_run(id, &Value::Null, None).expect("insert");
        }
        // A burst: every run in one millisecond, as a script submitting many can make them.
        store
            .execute_for_test("UPDATE runs SET created_at_ms = 1000")
            .expect("same millisecond");
        let mut seen = Vec::new();
        let mut before: Option<(i64, String)> = None;
        loop {
            let page = store
                .list_runs(2, before.as_ref().map(|(ms, id)| (*ms, id.as_str())), None)
                .expect("page");
            seen.extend(page.iter().map(|r| r.id.clone()));
            match page.last() {
                Some(last) if page.len() == 2 => {
                    before = Some((last.created_at_ms, last.id.clone()))
                }
                _ => break,
            }
        }
        assert_eq!(seen, ["p5", "p4", "p3", "p2", "p1"]);
    }

    #[test]
    fn a_restore_holding_the_store_is_named_to_whoever_finds_it_held() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-lock-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("agentrt.db");
        assert_eq!(StoreLock::held(&path), None);
        let restoring = StoreLock::take(&path, LockRole::Restore).expect("restore's lock");
        let holder = StoreLock::held(&path).expect("held");
        assert_eq!(holder.role, LockRole::Restore);
        assert_eq!(holder.pid, Some(std::process::id()));
        let refused = Store::open_exclusive(&path).expect_err("a server waits for the restore");
        assert!(
            refused.message.contains("agentrt restore")
                && refused.message.contains("wait for it to finish"),
            "{refused}"
        );
        drop(restoring);
        let server = Store::open_exclusive(&path).expect("free again");
        assert_eq!(
            StoreLock::held(&path).map(|h| h.role),
            Some(LockRole::Server)
        );
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }

    pub fn a_second_server_on_the_same_store_is_refused(h: &Harness) {
        let first = (h.open)(true).expect("first");
        let err = (h.open)(true).expect_err("second");
        assert!(err.message.contains("another agentrt server"), "{err}");
        assert_eq!(err.code(), ErrorCode::StoreFailed);
        drop(first);
        (h.open)(true).expect("free again");
    }

    pub fn plugin_statistics_are_kept(h: &Harness) {
        let store = h.open();
        assert!(store.load_plugin_stats().expect("load").is_empty());
        let mut counter = Counter {
            requests: 3,
            failures: 1,
            tokens: 40,
            total_latency_ms: 90,
            max_latency_ms: 50,
            avg_latency_ms: 30.0,
            ..Counter::default()
        };
        counter.errors.insert("PLUGIN_002".into(), 1);
        store.save_plugin_stats("reviewer", &counter).expect("save");
        counter.requests = 4;
        store
            .save_plugin_stats("reviewer", &counter)
            .expect("save again");
        store
            .save_plugin_stats("generator", &Counter::default())
            .expect("save");
        let kept = h.open().load_plugin_stats().expect("load");
        assert_eq!(
            kept,
            vec![
                ("generator".to_string(), Counter::default()),
                ("reviewer".to_string(), counter)
            ]
        );
    }

    pub fn retention_deletes_old_finished_runs_only(h: &Harness) {
        let store = h.open();
        for id in ["old-done", "old-failed", "running", "fresh"] {
            store.insert_run(id, &Value::Null, None).expect("insert");
            store
                .append_event(id, &event(1, "stage_started"))
                .expect("event");
        }
        store.set_running("running").expect("running");
        for (id, state) in [
            ("old-done", RunState::Completed),
            ("old-failed", RunState::Failed),
        ] {
            store
                .finish_run(id, state, None, None, &event(2, "done"))
                .expect("finish");
        }
        let cut = now_ms() + 1;
        // A run that ends after the cut is kept, however long ago it started.
        std::thread::sleep(std::time::Duration::from_millis(5));
        store
            .finish_run("fresh", RunState::Completed, None, None, &event(2, "done"))
            .expect("finish");
        // One at a time, as asked; then the rest.
        assert_eq!(store.prune_finished(cut, 1).expect("prune"), 1);
        assert_eq!(store.prune_finished(cut, 100).expect("prune"), 1);
        assert_eq!(store.prune_finished(cut, 100).expect("prune"), 0);
        for gone in ["old-done", "old-failed"] {
            assert!(store.run(gone).expect("read").is_none(), "{gone} kept");
            assert!(store.events_after(gone, 0).expect("events").is_empty());
        }
        for kept in ["running", "fresh"] {
            assert!(store.run(kept).expect("read").is_some(), "{kept} pruned");
        }
        assert_eq!(store.check_integrity().expect("check"), Ok(()));
    }

    pub fn a_store_from_a_newer_schema_is_refused(h: &Harness) {
        h.open()
            .execute_for_test(h.newer_schema)
            .expect("bump the schema");
        let err = (h.open)(false).expect_err("newer schema");
        assert!(err.message.contains("newer agentrt"), "{err}");
    }

    /// Both backends, one `#[test]` each per case.
    macro_rules! both {
        ($($case:ident),* $(,)?) => {
            mod sqlite_store {
                $(#[test] fn $case() { super::$case(&super::sqlite()); })*
            }
            mod postgres_store {
                $(#[test] fn $case() {
                    if let Some(h) = super::postgres() { super::$case(&h); }
                })*
            }
        };
    }

    both!(
        a_run_goes_from_queued_to_completed_with_its_events,
        unfinished_runs_are_marked_interrupted_on_the_next_open,
        runs_list_newest_first,
        runs_list_by_submitter,
        a_store_of_schema_1_is_upgraded_when_opened,
        paging_skips_no_run_created_in_the_same_millisecond,
        a_second_server_on_the_same_store_is_refused,
        plugin_statistics_are_kept,
        retention_deletes_old_finished_runs_only,
        a_store_from_a_newer_schema_is_refused,
    );

    /// Several hosts share one PostgreSQL database: a host's restart closes its own unfinished
    /// runs and leaves the others' running.
    #[test]
    fn postgres_hosts_interrupt_their_own_runs_and_those_of_hosts_gone() {
        let Some(h) = postgres() else { return };
        // The harness's connections are instance "test-instance". Another host, alive (it
        // holds its instance lock), one gone (a pod replaced under a new name, quiet for long)
        // and one without its lock but active a moment ago (its session dropped, it is
        // reconnecting) each left a run beside this one's.
        let url = h.postgres_url.clone().expect("a PostgreSQL harness");
        let other = postgres::PgStore::connect(&url, "other-host", true).expect("the other host");
        let store = h.open();
        store
            .insert_run("mine", &Value::Null, None)
            .expect("insert");
        store.set_running("mine").expect("running");
        store
            .execute_for_test(
                "INSERT INTO runs (id, state, created_at_ms, updated_at_ms, request, owner)
                 VALUES ('theirs', 'running', 1, 1, 'null', 'other-host'),
                        ('orphan', 'running', 1, 1, 'null', 'gone-host')",
            )
            .expect("the other hosts' runs");
        store
            .execute_for_test(&format!(
                "INSERT INTO runs (id, state, created_at_ms, updated_at_ms, request, owner)
                 VALUES ('blip', 'running', 1, {}, 'null', 'blipped-host')",
                now_ms()
            ))
            .expect("a reconnecting host's run");
        drop(store);
        let store = h.open();
        let state = |id: &str| store.run(id).expect("read").expect("run").state;
        // The sweep a running server repeats closes the gone host's run, never its own.
        assert_eq!(store.close_gone_hosts().expect("sweep"), 1);
        assert_eq!(state("orphan"), RunState::Failed);
        assert_eq!(state("mine"), RunState::Running);
        assert_eq!(store.interrupt_unfinished().expect("interrupt"), 1);
        assert_eq!(state("mine"), RunState::Failed);
        assert_eq!(state("orphan"), RunState::Failed);
        assert_eq!(state("theirs"), RunState::Running);
        assert_eq!(state("blip"), RunState::Running);
        drop(other);
    }
}

#[cfg(test)]
mod space {
    use super::*;

    /// Pruning old runs shrinks the file: retention is how an operator gets disk back.
    #[test]
    fn pruned_runs_give_their_space_back() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-space-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let store = Store::open(&dir.join("agentrt.db")).expect("open");
        let pages = |store: &Store| -> i64 {
            store
                .with(|c| c.pragma_query_value(None, "page_count", |r| r.get(0)))
                .expect("page count")
        };
        let event = |seq: i64, kind: &str| StoredEvent {
            seq,
            at_ms: now_ms(),
            kind: kind.into(),
            data: format!("{{\"text\":\"{}\"}}", "x".repeat(8000)),
        };
        for run in 0..100 {
            let id = format!("r{run}");
            store.insert_run(&id, &Value::Null, None).expect("insert");
            store.append_event(&id, &event(1, "tokens")).expect("event");
            store
                .finish_run(&id, RunState::Completed, None, None, &event(2, "done"))
                .expect("finish");
        }
        let full = pages(&store);
        assert_eq!(
            store.prune_finished(now_ms() + 1, 1000).expect("prune"),
            100
        );
        let pruned = pages(&store);

        assert!(
            pruned * 10 < full,
            "{full} pages before pruning, {pruned} after"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `agentrt backup` against a store that a server keeps writing to.
#[cfg(test)]
mod online_backup {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    /// SQLite restarts a stepwise backup whenever another connection commits between steps;
    /// a server committing every few milliseconds must not keep the backup from finishing.
    #[test]
    fn a_backup_finishes_while_another_connection_keeps_committing() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-online-backup-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let src = dir.join("live.db");
        let live = Arc::new(Store::open(&src).expect("open"));
        // About 8 MiB: some two thousand pages.
        let filler = "x".repeat(64 * 1024);
        for i in 0..128 {
            live.insert_run(
                &format!("big-{i}"),
                &serde_json::json!({ "t": filler }),
                None,
            )
            .expect("insert");
        }
        // Steady commits: no checkpoint (and its fsync) pausing the writer now and then,
        // which would give a stepwise copy the quiet moment it needs to finish by luck.
        live.execute_for_test("PRAGMA wal_autocheckpoint = 0")
            .expect("no checkpoints");
        let stop = Arc::new(AtomicBool::new(false));
        let (committing, first_commit) = mpsc::channel();
        let writer = {
            let (live, stop) = (live.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut commits = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    live.insert_run(&format!("w-{commits}"), &Value::Null, None)
                        .expect("commit");
                    commits += 1;
                    let _ = committing.send(());
                    std::thread::sleep(Duration::from_millis(1));
                }
                commits
            })
        };
        // The backup starts once the writer is committing, however late a loaded machine
        // schedules it.
        first_commit
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer committed");
        let dest = dir.join("copy.db");
        let (done, finished) = mpsc::channel();
        {
            let (src, dest) = (src.clone(), dest.clone());
            std::thread::spawn(move || done.send(Store::backup_online(&src, &dest)));
        }
        // Generous: the copy takes well under a second; a restarting one never ends.
        let outcome = finished.recv_timeout(Duration::from_secs(120));
        stop.store(true, Ordering::Relaxed);
        let commits = writer.join().expect("writer");
        let runs = outcome
            .expect("the backup finished while the writer committed")
            .expect("backup");
        assert!(runs >= 128, "{runs} runs copied");
        assert!(commits > 0, "the writer committed during the backup");
        let copy = Store::open(&dest).expect("open the copy");
        assert_eq!(copy.check_integrity().expect("check"), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The online backup copies pages as they are: a damaged store must fail its backup (the
    /// copy checked), not yield a backup that fails at the restore that needs it.
    #[test]
    fn a_backup_of_a_damaged_store_fails_instead_of_copying_the_damage() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-damaged-backup-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("live.db");
        {
            let store = Store::open(&src).expect("open");
            for i in 0..50 {
                store
                    .insert_run(&format!("r{i}"), &Value::Null, None)
                    .expect("insert");
            }
        } // Closed: the log is checkpointed into the file.
        // Zero one index's root page; the tables, and so the file's opening, are unharmed.
        let (page_size, root): (i64, i64) = {
            let c = Connection::open(&src).expect("open");
            let page_size = c
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page size");
            let root = c
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'runs_by_creation'",
                    [],
                    |r| r.get(0),
                )
                .expect("the index's root page");
            (page_size, root)
        };
        let mut bytes = std::fs::read(&src).expect("read");
        let start = usize::try_from((root - 1) * page_size).expect("offset");
        let end = start + usize::try_from(page_size).expect("size");
        bytes[start..end].fill(0);
        std::fs::write(&src, bytes).expect("damage");

        let err = Store::backup_online(&src, &dir.join("copy.db")).expect_err("damaged");
        assert!(err.message.contains("damaged"), "{err}");
        assert_eq!(err.code(), ErrorCode::StoreFailed);
        // Nor does a server start on it, to answer every run call with a 500 while /health
        // says healthy.
        let err = Store::open_exclusive(&src).expect_err("damaged");
        assert!(
            err.message.contains("the file is damaged") && err.message.contains("agentrt restore"),
            "{err}"
        );
        assert!(!err.message.contains('\n'), "one line: {err}");
        // What a tool examining it reports says what SQLite found, not only "malformed".
        let (examined, _) = Store::open_to_examine(&src).expect("examined");
        let problems = examined
            .check_integrity()
            .expect("checked")
            .expect_err("damage found");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("runs_by_creation") || p.contains("Page")),
            "{problems:?}"
        );
        drop(examined);
        // A file that is no database at all gets the same advice.
        std::fs::write(&src, vec![0x5a; 8192]).expect("garbage");
        let err = Store::open_exclusive(&src).expect_err("not a database");
        assert!(err.message.contains("agentrt restore"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod public {
    use super::*;

    /// After a clean shutdown the store file alone holds every run: its log is folded in and
    /// emptied, so a copy of `agentrt.db` made by hand is whole.
    #[test]
    fn closing_folds_the_log_into_the_file() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-close-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("agentrt.db");
        let store = Store::open(&path).expect("open");
        store.insert_run("r1", &Value::Null, None).expect("insert");
        let wal = crate::paths::beside(&path, "-wal");
        assert!(
            std::fs::metadata(&wal).expect("log").len() > 0,
            "written to the log"
        );
        store.close();
        assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
        let copy = dir.join("copy.db");
        std::fs::copy(&path, &copy).expect("copy the file alone");
        drop(store);
        let copied = Store::open(&copy).expect("open the copy");
        assert!(
            copied.run("r1").expect("read").is_some(),
            "the copy misses a run"
        );
        drop(copied);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What clients see of a store failure names no folder nor database address, only the
    /// names of the files an operator would look for.
    #[test]
    fn a_public_message_names_no_folder_or_address() {
        let e = StoreError {
            path: "/srv/agentrt/agentrt.db".into(),
            message: "another file took the store's place; what it stored is kept in \
                      /srv/agentrt/agentrt.db.displaced-17; the lock file \
                      /srv/agentrt/agentrt.db.lock was deleted"
                .into(),
        };
        let public = e.public_message();
        assert!(!public.contains("/srv/agentrt"), "{public}");
        assert!(public.contains("agentrt.db.displaced-17") && public.contains("agentrt.db.lock"));
        let e = StoreError {
            path: "postgres://u:***@db.internal/agentrt".into(),
            message: "cannot reach postgres://u:***@db.internal/agentrt: refused".into(),
        };
        assert_eq!(
            e.public_message(),
            "run store: cannot reach the database: refused"
        );
    }
}
