//! A server's run store, watched ([`Watched`]): the outcome of every write is kept, so `/health`
//! can say the store is failing (a full disk, a database gone away) instead of "healthy" while
//! runs lose their events; the change is logged once each way, not once per write; and a file
//! check ([`spawn_file_check`]) finds a store file deleted or replaced under the server, which
//! the SQLite store re-creates from its open database rather than keeping every later run only
//! in an unlinked file that vanishes when the server stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::{RunRecord, RunState, RunStore, StoreError, StoredEvent, WriteFailure, now_ms};
use crate::pipeline::report::ErrorOut;
use crate::stats::Counter;

/// How often the store's file is looked at.
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the store's health tracker knows.
#[derive(Debug, Default)]
struct Health {
    /// Writes failing since then (cleared by the next write that succeeds).
    writes: Option<Failing>,
    /// The file check failing since then (cleared by the next check that passes).
    file: Option<Failing>,
}

#[derive(Debug, Clone)]
struct Failing {
    since_ms: i64,
    error: String,
    /// Failures since `since_ms`.
    count: u64,
}

/// A [`RunStore`] whose writes and file are watched; reads pass straight through.
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn RunStore>,
    health: Mutex<Health>,
    /// Held across a write and the noting of its outcome, so outcomes are noted in the order
    /// the writes happened: a failed write cannot note itself after a later one that
    /// succeeded, leaving `/health` degraded with the store fine. The store behind takes one
    /// write at a time anyway (one SQLite connection); reads and `/health` never wait on it.
    write_order: Mutex<()>,
}

impl Watched {
    pub fn new(inner: Arc<dyn RunStore>) -> Self {
        Self {
            inner,
            health: Mutex::new(Health::default()),
            write_order: Mutex::new(()),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Note a write's outcome: the first failure after a success is logged as an error, the
    /// first success after failures as the recovery; the ones between only count.
    fn write<T>(&self, write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _in_order = self.write_order.lock().unwrap_or_else(|p| p.into_inner());
        let result = write();
        let mut health = self.health();
        match &result {
            Ok(_) => {
                if let Some(failing) = health.writes.take() {
                    tracing::info!(
                        store = %self.inner.location(),
                        failed_writes = failing.count,
                        failing_s = (now_ms() - failing.since_ms) as f64 / 1000.0,
                        "the run store takes writes again"
                    );
                }
            }
            Err(e) => {
                if Failing::note(&mut health.writes, e) {
                    tracing::error!(
                        store = %self.inner.location(),
                        "the run store refuses writes: {e}; runs go on, and their events are \
                         stored once it takes writes again (see /health)"
                    );
                }
            }
        }
        result
    }

    /// Look at the store's file once (see [`RunStore::check_file`]), logging what changed.
    pub fn check_file(&self) {
        let checked = self.inner.check_file();
        let mut health = self.health();
        match checked {
            Ok(note) => {
                if let Some(note) = note {
                    tracing::error!(store = %self.inner.location(), "{note}");
                }
                if health.file.take().is_some() {
                    tracing::info!(store = %self.inner.location(), "the run store's file is sound again");
                }
            }
            Err(e) => {
                if Failing::note(&mut health.file, &e) {
                    tracing::error!("{e}");
                }
            }
        }
    }
}

impl Failing {
    /// Count one more failure in `slot`, starting it if it was clear; true when it started
    /// (what the caller logs: once, not per failure).
    fn note(slot: &mut Option<Failing>, error: &StoreError) -> bool {
        match slot {
            // `/health` is open to anyone: it shows the error without the store's location
            // (the log line of the first failure has it).
            Some(failing) => {
                failing.count += 1;
                failing.error = error.public_message();
                false
            }
            None => {
                *slot = Some(Failing {
                    since_ms: now_ms(),
                    error: error.public_message(),
                    count: 1,
                });
                true
            }
        }
    }
}

/// Check `store`'s file every [`FILE_CHECK_EVERY`] on a thread of its own, for as long as the
/// process runs.
pub fn spawn_file_check(store: Arc<Watched>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("agentrt-store-check".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FILE_CHECK_EVERY);
                store.check_file();
            }
        })
        .map(|_| ())
}

impl RunStore for Watched {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn close(&self) {
        self.inner.close()
    }
    fn insert_run(
        &self,
        id: &str,
        request: &Value,
        submitted_by: Option<&str>,
    ) -> Result<RunRecord, StoreError> {
        self.write(|| self.inner.insert_run(id, request, submitted_by))
    }
    fn set_running(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|| self.inner.set_running(id))
    }
    // Not a write the health tracks: on a store without other hosts it writes nothing, and
    // its success must not clear a failure that real writes still meet.
    fn close_gone_hosts(&self) -> Result<usize, StoreError> {
        self.inner.close_gone_hosts()
    }
    fn append_event(&self, id: &str, event: &StoredEvent) -> Result<(), StoreError> {
        self.write(|| self.inner.append_event(id, event))
    }
    fn finish_run(
        &self,
        id: &str,
        state: RunState,
        outcome: Option<&Value>,
        error: Option<&ErrorOut>,
        done: &StoredEvent,
    ) -> Result<(), StoreError> {
        self.write(|| self.inner.finish_run(id, state, outcome, error, done))
    }
    fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.inner.run(id)
    }
    fn list_runs(
        &self,
        limit: usize,
        before: Option<(i64, &str)>,
        submitted_by: Option<&str>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.list_runs(limit, before, submitted_by)
    }
    fn count_by_state(&self) -> Result<Vec<(RunState, usize)>, StoreError> {
        self.inner.count_by_state()
    }
    fn events_after(&self, id: &str, after: i64) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.events_after(id, after)
    }
    fn interrupt_unfinished(&self) -> Result<usize, StoreError> {
        self.write(|| self.inner.interrupt_unfinished())
    }
    fn queued_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.queued_runs()
    }
    fn prune_finished(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        self.write(|| self.inner.prune_finished(before_ms, limit))
    }
    fn check_integrity(&self) -> Result<Result<(), Vec<String>>, StoreError> {
        self.inner.check_integrity()
    }
    fn check_file(&self) -> Result<Option<String>, StoreError> {
        self.inner.check_file()
    }
    fn save_plugin_stats(&self, plugin: &str, counter: &Counter) -> Result<(), StoreError> {
        self.write(|| self.inner.save_plugin_stats(plugin, counter))
    }
    fn load_plugin_stats(&self) -> Result<Vec<(String, Counter)>, StoreError> {
        self.inner.load_plugin_stats()
    }
    fn refusing_writes(&self) -> bool {
        self.health().writes.is_some()
    }
    fn write_failure(&self) -> Option<WriteFailure> {
        let health = self.health();
        // The file first: writes into a replaced file succeed, and would hide it.
        health
            .file
            .as_ref()
            .or(health.writes.as_ref())
            .map(|f| WriteFailure {
                since_ms: f.since_ms,
                error: f.error.clone(),
                failures: f.count,
            })
    }
    #[cfg(test)]
    fn execute_for_test(&self, sql: &str) -> Result<(), StoreError> {
        self.inner.execute_for_test(sql)
    }
}

/// The store's part of `/health`.
#[derive(Debug, Serialize)]
pub struct StoreHealth {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<WriteFailure>,
}

impl StoreHealth {
    pub fn of(store: &dyn RunStore) -> Self {
        let failing = store.write_failure();
        Self {
            ok: failing.is_none(),
            failing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own, removed when the test ends.
    struct Folder(std::path::PathBuf);

    impl Folder {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A `tokens` event numbered `seq` carrying `len` bytes of text.
    fn tokens_event(seq: i64, len: usize) -> StoredEvent {
        StoredEvent {
            seq,
            at_ms: now_ms(),
            kind: "tokens".into(),
            data: format!("{{\"text\":\"{}\"}}", "x".repeat(len)),
        }
    }

    fn watched() -> (Folder, Watched) {
        let dir = Folder(std::env::temp_dir().join(format!(
            "agentrt-watch-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        )));
        std::fs::create_dir_all(dir.path()).expect("temp dir");
        let store =
            super::super::Store::open_exclusive(&dir.path().join("agentrt.db")).expect("store");
        (dir, Watched::new(Arc::new(store)))
    }

    #[test]
    fn failing_writes_show_until_one_succeeds() {
        let (_dir, store) = watched();
        store
            .insert_run("a", &serde_json::json!({}), None)
            .expect("insert");
        assert!(store.write_failure().is_none());
        // A second insert of the same id breaks the primary key: a write the store refuses.
        for _ in 0..3 {
            store
                .insert_run("a", &serde_json::json!({}), None)
                .expect_err("duplicate");
        }
        let failing = store.write_failure().expect("failing");
        assert_eq!(failing.failures, 3);
        assert!(failing.error.contains("UNIQUE"), "{}", failing.error);
        assert!(!StoreHealth::of(&store).ok);
        // Reads do not clear it; a write that succeeds does.
        store.run("a").expect("read");
        assert!(store.write_failure().is_some());
        store.set_running("a").expect("running");
        assert!(store.write_failure().is_none());
        assert!(StoreHealth::of(&store).ok);
    }

    #[test]
    fn a_write_that_failed_before_a_later_one_succeeded_leaves_the_store_healthy() {
        let (_dir, store) = watched();
        let store = Arc::new(store);
        let (started, has_started) = std::sync::mpsc::channel();
        let failing = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.write(|| {
                    started.send(()).expect("send");
                    // Long enough that the write below, started now, would otherwise note its
                    // success first and be overwritten by this failure.
                    std::thread::sleep(Duration::from_millis(100));
                    Err::<(), _>(StoreError {
                        path: "test".into(),
                        message: "disk full".into(),
                    })
                })
            })
        };
        has_started.recv().expect("started");
        store.write(|| Ok(())).expect("the later write");
        failing
            .join()
            .expect("thread")
            .expect_err("the earlier write");
        assert!(
            store.write_failure().is_none(),
            "{:?}",
            store.write_failure()
        );
    }

    #[test]
    fn a_deleted_store_file_is_recreated_with_every_run_and_writes_go_on_into_it() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        store
            .insert_run("before", &serde_json::json!({"n": 1}), None)
            .expect("insert");
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        assert!(!path.exists());
        store.check_file();
        assert!(path.exists(), "re-created");
        assert!(store.write_failure().is_none());
        store
            .insert_run("after", &serde_json::json!({"n": 2}), None)
            .expect("insert after");
        // What a restarted server (or a backup) reads from the path holds both runs.
        let reopened = super::super::Store::open(&path).expect("reopen");
        assert!(reopened.run("before").expect("read").is_some());
        assert!(reopened.run("after").expect("read").is_some());
    }

    #[test]
    fn a_deleted_store_folder_is_made_again_with_the_file_and_its_lock() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        store
            .insert_run("before", &serde_json::json!({}), None)
            .expect("insert");
        std::fs::remove_dir_all(dir.path()).expect("delete the folder");
        assert!(super::super::StoreLock::held(&path).is_none());
        store.check_file();
        assert!(
            store.write_failure().is_none(),
            "{:?}",
            store.write_failure()
        );
        assert!(path.exists(), "re-created");
        assert!(
            super::super::StoreLock::held(&path).is_some(),
            "a second server or a restore is kept out again"
        );
        let reopened = super::super::Store::open(&path).expect("reopen");
        assert!(reopened.run("before").expect("read").is_some());
    }

    #[test]
    fn a_deleted_lock_file_is_made_and_locked_again() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        assert!(super::super::StoreLock::held(&path).is_some());
        std::fs::remove_file(dir.path().join("agentrt.db.lock")).expect("delete the lock");
        assert!(super::super::StoreLock::held(&path).is_none());
        store.check_file();
        assert!(super::super::StoreLock::held(&path).is_some());
        assert!(super::super::StoreLock::take(&path, super::super::LockRole::Server).is_err());
        assert!(store.write_failure().is_none());
    }

    #[test]
    fn a_store_file_deleted_alone_is_recreated_whole_beside_its_stale_log() {
        // Only the file goes: its write-ahead log and index stay, holding pages of the old
        // layout, which the copy (compacted: another layout) must not be read through.
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        let event = |seq| tokens_event(seq, 500);
        for run in 0..40 {
            let id = format!("r{run}");
            store
                .insert_run(&id, &serde_json::json!({}), None)
                .expect("insert");
            for seq in 1..=10 {
                store.append_event(&id, &event(seq)).expect("event");
            }
        }
        // Gaps in the old file, so that the copy's pages are laid out otherwise.
        store
            .execute_for_test("DELETE FROM runs WHERE id IN ('r1','r3','r5','r7','r9','r11')")
            .expect("delete some");
        std::fs::remove_file(&path).expect("delete the file alone");
        store.check_file();
        assert!(
            store.write_failure().is_none(),
            "{:?}",
            store.write_failure()
        );
        store
            .insert_run("after", &serde_json::json!({}), None)
            .expect("insert after");
        drop(store);
        let reopened = super::super::Store::open_exclusive(&path).expect("sound on reopening");
        assert_eq!(reopened.check_integrity().expect("check"), Ok(()));
        let runs: usize = reopened
            .count_by_state()
            .expect("count")
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(runs, 35);
        assert_eq!(reopened.events_after("r2", 0).expect("events").len(), 10);
    }

    #[test]
    fn a_replaced_store_file_is_reported_until_it_is_back() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        let aside = dir.path().join("aside.db");
        std::fs::rename(&path, &aside).expect("move aside");
        std::fs::write(&path, b"someone else's file").expect("write");
        store.check_file();
        let failing = store.write_failure().expect("reported");
        assert!(
            failing.error.contains("took the store's place"),
            "{}",
            failing.error
        );
        // Writes are refused (the log beside the path now pairs with the other file), saying
        // why; reads go on.
        let refused = store
            .insert_run("x", &serde_json::json!({}), None)
            .expect_err("refused");
        assert!(refused.message.contains("no longer writes"), "{refused}");
        assert!(store.run("x").expect("read").is_none());
        std::fs::rename(&aside, &path).expect("put back");
        store.check_file();
        store
            .insert_run("x", &serde_json::json!({}), None)
            .expect("writes go on once the file is back");
        assert!(store.write_failure().is_none());
    }

    #[test]
    fn a_store_copied_over_the_open_one_is_left_sound_and_what_the_server_stored_is_kept() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        let event = |seq| tokens_event(seq, 300);
        // A backup, as `agentrt backup` writes it: one file, no log.
        let backup = dir.path().join("backup.db");
        {
            let other = super::super::Store::open(&backup).expect("backup store");
            for run in 0..20 {
                let id = format!("backed-up-{run}");
                other
                    .insert_run(&id, &serde_json::json!({}), None)
                    .expect("insert");
                other.append_event(&id, &event(1)).expect("event");
            }
        }
        // The server's own runs live in its write-ahead log when the copy lands.
        for run in 0..20 {
            let id = format!("served-{run}");
            store
                .insert_run(&id, &serde_json::json!({}), None)
                .expect("insert");
            for seq in 1..=5 {
                store.append_event(&id, &event(seq)).expect("event");
            }
        }
        let copy = dir.path().join("copy.db");
        std::fs::copy(&backup, &copy).expect("copy");
        std::fs::rename(&copy, &path).expect("copied over the store by hand");
        store.check_file();
        assert!(store.write_failure().is_some());
        let _ = store.append_event("served-0", &event(6));
        // The server is killed: its connection never closes (no last checkpoint), its log
        // and index stay beside the path.
        std::mem::forget(store);
        // The next start finds the copied store whole, and the server's runs were set aside.
        let reopened = super::super::Store::open(&path).expect("sound on reopening");
        assert_eq!(reopened.check_integrity().expect("check"), Ok(()));
        assert!(reopened.run("backed-up-7").expect("read").is_some());
        assert!(reopened.run("served-7").expect("read").is_none());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains(".displaced-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let aside = super::super::Store::open(&kept[0]).expect("the copy set aside");
        assert_eq!(aside.events_after("served-7", 0).expect("events").len(), 5);
    }

    #[test]
    fn a_store_stepped_aside_whose_replacement_is_removed_is_written_out_again() {
        let (dir, store) = watched();
        let path = dir.path().join("agentrt.db");
        store
            .insert_run("before", &serde_json::json!({}), None)
            .expect("insert");
        std::fs::rename(&path, dir.path().join("aside.db")).expect("move aside");
        std::fs::write(&path, b"someone else's file").expect("write");
        store.check_file();
        assert!(store.write_failure().is_some());
        // The operator takes the other file away again.
        std::fs::remove_file(&path).expect("remove it");
        store.check_file();
        assert!(path.exists(), "written again");
        store
            .insert_run("after", &serde_json::json!({}), None)
            .expect("writes go on");
        assert!(
            store.write_failure().is_none(),
            "{:?}",
            store.write_failure()
        );
        drop(store);
        let reopened = super::super::Store::open(&path).expect("reopen");
        assert!(reopened.run("before").expect("read").is_some());
        assert!(reopened.run("after").expect("read").is_some());
    }
}
