//! Request statistics: counts, failures, tokens and latency per endpoint and per plugin, as
//! served by `GET /stats`. A server's per-plugin counters persist in its run store
//! ([`Stats::persist_to`]): written with every plugin call, read back at the next start, so they
//! add up across restarts (endpoint counters and the uptime are this process's).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

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
}

impl Counter {
    /// Add `other`'s counts to these.
    fn merge(&mut self, other: &Counter) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.tokens += other.tokens;
        self.total_latency_ms += other.total_latency_ms;
        self.max_latency_ms = self.max_latency_ms.max(other.max_latency_ms);
        self.avg_latency_ms = if self.requests == 0 {
            0.0
        } else {
            self.total_latency_ms as f64 / self.requests as f64
        };
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }

    fn record(&mut self, latency_ms: u64, tokens: u64, error: Option<&str>) {
        self.requests += 1;
        self.tokens += tokens;
        self.total_latency_ms += latency_ms;
        self.max_latency_ms = self.max_latency_ms.max(latency_ms);
        self.avg_latency_ms = self.total_latency_ms as f64 / self.requests as f64;
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
    /// How many times each plugin's counter changed, so the store gets the latest of
    /// concurrent changes and never an older one after it.
    plugin_versions: BTreeMap<String, u64>,
}

/// Thread-safe statistics of one server.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    inner: Mutex<Inner>,
    /// Where plugin counters are kept across restarts, once the server has opened its store.
    store: OnceLock<Arc<dyn RunStore>>,
    /// The version of each plugin's counter last written to the store; held while writing,
    /// which happens outside `inner`'s lock (a slow store must not hold up requests).
    written: Mutex<BTreeMap<String, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
            store: OnceLock::new(),
            written: Mutex::new(BTreeMap::new()),
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

    pub fn record_plugin(&self, plugin: &str, latency_ms: u64, tokens: u64, error: Option<&str>) {
        let (counter, version) = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let counter = inner.plugins.entry(plugin.to_string()).or_default();
            counter.record(latency_ms, tokens, error);
            let counter = counter.clone();
            let version = inner.plugin_versions.entry(plugin.to_string()).or_default();
            *version += 1;
            (counter, *version)
        };
        let Some(store) = self.store.get() else {
            return;
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        // A later change already stored: this older counter must not replace it.
        if written.get(plugin).is_some_and(|w| *w >= version) {
            return;
        }
        match store.save_plugin_stats(plugin, &counter) {
            Ok(()) => {
                written.insert(plugin.to_string(), version);
            }
            Err(e) => tracing::warn!(plugin, "plugin statistics not stored: {e}"),
        }
    }

    /// Keep plugin counters in `store` from now on, adding what it holds from earlier runs of
    /// this server. Once per process; a second call changes nothing.
    pub fn persist_to(&self, store: Arc<dyn RunStore>) -> Result<(), crate::store::StoreError> {
        let earlier = store.load_plugin_stats()?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.set(store).is_err() {
            return Ok(());
        }
        for (plugin, before) in earlier {
            let now = inner.plugins.entry(plugin).or_default();
            now.merge(&before);
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
    fn plugin_counters_add_up_across_restarts_through_the_store() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-stats-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("runs.db");
        let open = || -> Arc<dyn RunStore> {
            Arc::new(crate::store::Store::open(&path).expect("open the store"))
        };
        let first = Stats::default();
        first.record_plugin("reviewer", 5, 0, None); // before the store: counted, not kept
        first.persist_to(open()).expect("attach");
        first.record_plugin("reviewer", 10, 3, None);
        first.record_plugin("reviewer", 30, 0, Some("PLUGIN_002"));
        first.record_plugin("generator", 7, 9, None);
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
}
