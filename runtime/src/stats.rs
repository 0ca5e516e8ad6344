//! Request statistics: counts, failures, tokens and latency per endpoint and per plugin, as
//! served by `GET /stats`. A server's per-plugin counters persist in its run store
//! ([`Stats::persist_to`]): written after every plugin call by a thread of their own (a slow or
//! hung store must not hold up the calls), read back at the next start, so they add up across
//! restarts (endpoint counters and the uptime are this process's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::RunStore;

/// Most distinct error codes one counter tracks before lumping the rest under `OTHER`.
const MAX_DISTINCT_CODES: usize = 64;

/// Counters of one endpoint or plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub requests: u64,
    pub failures: u64,
    pub tokens: u64,
    pub total_latency_ms: u64,
    pub max_latency_ms: u64,
    pub avg_latency_ms: f64,
    /// Failures by error code.
    pub errors: BTreeMap<String, u64>,
    /// Requests counted without a latency (runs a crash ended): left out of the average.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmeasured: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counter {
    /// Add `other`'s counts to these.
    fn merge(&mut self, other: &Counter) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.tokens += other.tokens;
        self.total_latency_ms += other.total_latency_ms;
        self.max_latency_ms = self.max_latency_ms.max(other.max_latency_ms);
        self.unmeasured += other.unmeasured;
        self.update_average();
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }

    fn update_average(&mut self) {
        let measured = self.requests.saturating_sub(self.unmeasured);
        self.avg_latency_ms = if measured == 0 {
            0.0
        } else {
            self.total_latency_ms as f64 / measured as f64
        };
    }

    fn record(&mut self, latency_ms: u64, tokens: u64, error: Option<&str>) {
        self.requests += 1;
        self.tokens += tokens;
        self.total_latency_ms += latency_ms;
        self.max_latency_ms = self.max_latency_ms.max(latency_ms);
        self.update_average();
        self.count_error(error);
    }

    /// One request whose latency is not known (a run the previous process left unfinished).
    fn record_unmeasured(&mut self, error: Option<&str>) {
        self.requests += 1;
        self.unmeasured += 1;
        self.update_average();
        self.count_error(error);
    }

    fn count_error(&mut self, error: Option<&str>) {
        if let Some(code) = error {
            self.failures += 1;
            // Codes can come from plugins; bound how many distinct keys one counter keeps.
            let key = if self.errors.len() < MAX_DISTINCT_CODES || self.errors.contains_key(code) {
                code
            } else {
                "OTHER"
            };
            *self.errors.entry(key.to_string()).or_default() += 1;
        }
    }
}

/// Routes (all `POST`) whose handlers count every request they answer. Errors a layer answers
/// before the handler (a refused key, a body over the limit, a deadline) are counted for these
/// only: a route whose successes are never counted must not show only failures.
pub const COUNTED_ROUTES: &[&str] = &[
    "/generate",
    "/review",
    "/check",
    "/pipeline",
    "/chat",
    "/v1/chat/completions",
    "/v1/completions",
    crate::runs::STATS_ENDPOINT,
];

/// A snapshot for `GET /stats`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub uptime_seconds: u64,
    pub totals: Counter,
    pub endpoints: BTreeMap<String, Counter>,
    pub plugins: BTreeMap<String, Counter>,
}

#[derive(Debug, Default)]
struct Inner {
    totals: Counter,
    endpoints: BTreeMap<String, Counter>,
    plugins: BTreeMap<String, Counter>,
}

/// Plugins whose counters changed since the writer last stored them.
#[derive(Debug, Default)]
struct Unsaved {
    state: Mutex<UnsavedState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct UnsavedState {
    plugins: BTreeSet<String>,
    /// The writer is storing counters it took from `plugins`.
    writing: bool,
}

impl Unsaved {
    fn lock(&self) -> std::sync::MutexGuard<'_, UnsavedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Thread-safe statistics of one server.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    inner: Arc<Mutex<Inner>>,
    /// Where plugin counters are kept across restarts, once the server has opened its store.
    store: OnceLock<Arc<dyn RunStore>>,
    /// What the writer thread has still to store (see [`Stats::persist_to`]).
    unsaved: Arc<Unsaved>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inner: Arc::default(),
            store: OnceLock::new(),
            unsaved: Arc::default(),
        }
    }
}

impl Stats {
    pub fn record_endpoint(
        &self,
        endpoint: &str,
        latency_ms: u64,
        tokens: u64,
        error: Option<&str>,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.totals.record(latency_ms, tokens, error);
        inner
            .endpoints
            .entry(endpoint.to_string())
            .or_default()
            .record(latency_ms, tokens, error);
    }

    /// One request of `endpoint` that ended without a latency to count: a pipeline run the
    /// previous process left unfinished, marked failed at this start.
    pub fn record_endpoint_unmeasured(&self, endpoint: &str, error: Option<&str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.totals.record_unmeasured(error);
        inner
            .endpoints
            .entry(endpoint.to_string())
            .or_default()
            .record_unmeasured(error);
    }

    pub fn record_plugin(&self, plugin: &str, latency_ms: u64, tokens: u64, error: Option<&str>) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let counter = inner.plugins.entry(plugin.to_string()).or_default();
            counter.record(latency_ms, tokens, error);
        }
        if self.store.get().is_some() {
            self.unsaved.lock().plugins.insert(plugin.to_string());
            self.unsaved.changed.notify_all();
        }
    }

    /// Wait, at most `patience`, until every plugin counter changed so far is in the store
    /// (a server stopping keeps what its last calls counted).
    pub fn flush(&self, patience: Duration) {
        let until = Instant::now() + patience;
        let mut state = self.unsaved.lock();
        while !state.plugins.is_empty() || state.writing {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                tracing::warn!("plugin statistics not all stored before the deadline");
                return;
            };
            state = self
                .unsaved
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Keep plugin counters in `store` from now on, adding what it holds from earlier runs of
    /// this server. Once per process; a second call changes nothing.
    pub fn persist_to(&self, store: Arc<dyn RunStore>) -> Result<(), crate::store::StoreError> {
        let earlier = store.load_plugin_stats()?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.set(store.clone()).is_err() {
            return Ok(());
        }
        for (plugin, before) in earlier {
            let now = inner.plugins.entry(plugin).or_default();
            now.merge(&before);
        }
        let (counters, unsaved) = (Arc::downgrade(&self.inner), self.unsaved.clone());
        if let Err(e) = std::thread::Builder::new()
            .name("agentrt-stats".into())
            .spawn(move || store_plugin_counters(store, counters, unsaved))
        {
            tracing::warn!("plugin statistics will not be stored: {e}");
        }
        Ok(())
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        StatsSnapshot {
            uptime_seconds: self.started.elapsed().as_secs(),
            totals: inner.totals.clone(),
            endpoints: inner.endpoints.clone(),
            plugins: inner.plugins.clone(),
        }
    }
}

/// The writer thread: stores each changed plugin's latest counter, until the statistics are
/// dropped. A store that is slow or hangs delays only this thread; calls go on counting.
fn store_plugin_counters(
    store: Arc<dyn RunStore>,
    counters: Weak<Mutex<Inner>>,
    unsaved: Arc<Unsaved>,
) {
    loop {
        let plugins = {
            let mut state = unsaved.lock();
            while state.plugins.is_empty() {
                if counters.strong_count() == 0 {
                    return;
                }
                state = unsaved
                    .changed
                    .wait_timeout(state, Duration::from_secs(1))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            state.writing = true;
            std::mem::take(&mut state.plugins)
        };
        let Some(counters) = counters.upgrade() else {
            return;
        };
        let mut failed = Vec::new();
        for plugin in plugins {
            let counter = counters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .plugins
                .get(&plugin)
                .cloned();
            if let Some(counter) = counter
                && let Err(e) = store.save_plugin_stats(&plugin, &counter)
            {
                // The store logs that it refuses writes once; per plugin and second is noise.
                tracing::debug!(
                    plugin,
                    "plugin statistics not stored (tried again shortly): {e}"
                );
                failed.push(plugin);
            }
        }
        drop(counters);
        let retry = !failed.is_empty();
        {
            let mut state = unsaved.lock();
            // Still to store: a flush keeps waiting for them (up to its deadline).
            state.plugins.extend(failed);
            state.writing = false;
        }
        unsaved.changed.notify_all();
        if retry {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_by_code_and_averages_latency() {
        let s = Stats::default();
        s.record_endpoint("/generate", 10, 5, None);
        s.record_endpoint("/generate", 30, 0, Some("GEN_003"));
        let snap = s.snapshot();
        let g = &snap.endpoints["/generate"];
        assert_eq!(
            (g.requests, g.failures, g.tokens, g.max_latency_ms),
            (2, 1, 5, 30)
        );
        assert_eq!(g.avg_latency_ms, 20.0);
        assert_eq!(g.errors["GEN_003"], 1);
        assert_eq!(snap.totals.requests, 2);
    }

    #[test]
    fn runs_a_crash_ended_count_as_failures_without_moving_the_average() {
        let s = Stats::default();
        s.record_endpoint("/v1/pipeline/runs", 40, 0, None);
        s.record_endpoint_unmeasured("/v1/pipeline/runs", Some("RUN_002"));
        s.record_endpoint_unmeasured("/v1/pipeline/runs", Some("RUN_002"));
        let snap = s.snapshot();
        let runs = &snap.endpoints["/v1/pipeline/runs"];
        assert_eq!((runs.requests, runs.failures), (3, 2));
        assert_eq!(runs.errors["RUN_002"], 2);
        assert_eq!(runs.avg_latency_ms, 40.0);
        assert_eq!(snap.totals.avg_latency_ms, 40.0);
    }

    /// A folder for a store of its own, and the path of that store.
    fn store_path(label: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-stats-{label}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("runs.db");
        (dir, path)
    }

    fn open_store(path: &std::path::Path) -> Arc<dyn RunStore> {
        Arc::new(crate::store::Store::open(path).expect("open the store"))
    }

    #[test]
    fn plugin_counters_add_up_across_restarts_through_the_store() {
        let (dir, path) = store_path("restarts");
        let open = || open_store(&path);
        let first = Stats::default();
        first.record_plugin("reviewer", 5, 0, None); // before the store: counted, not kept
        first.persist_to(open()).expect("attach");
        first.record_plugin("reviewer", 10, 3, None);
        first.record_plugin("reviewer", 30, 0, Some("PLUGIN_002"));
        first.record_plugin("generator", 7, 9, None);
        first.flush(Duration::from_secs(60));
        let second = Stats::default();
        second.persist_to(open()).expect("attach");
        second.record_plugin("reviewer", 20, 1, None);
        let snap = second.snapshot();
        let r = &snap.plugins["reviewer"];
        assert_eq!((r.requests, r.failures, r.tokens), (4, 1, 4), "{r:?}");
        assert_eq!((r.total_latency_ms, r.max_latency_ms), (65, 30));
        assert_eq!(r.errors["PLUGIN_002"], 1);
        assert_eq!(snap.plugins["generator"].requests, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_busy_store_holds_up_no_plugin_call_and_loses_no_count() {
        let (dir, path) = store_path("busy");
        let open = || open_store(&path);
        let stats = Stats::default();
        stats.persist_to(open()).expect("attach");
        // Another writer holds the database: the call is counted and returns; its count is
        // stored once the database is free (a write from the call itself failed when busy).
        let blocker = rusqlite::Connection::open(&path).expect("open");
        blocker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        stats.record_plugin("reviewer", 10, 1, None);
        assert_eq!(stats.snapshot().plugins["reviewer"].requests, 1);
        blocker.execute_batch("COMMIT").expect("unlock");
        stats.flush(Duration::from_secs(60));
        let again = Stats::default();
        again.persist_to(open()).expect("attach");
        assert_eq!(again.snapshot().plugins["reviewer"].requests, 1);
        drop((stats, again));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
