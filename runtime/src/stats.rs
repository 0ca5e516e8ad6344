//! Request statistics: counts, failures, tokens and latency per endpoint and per plugin, as
//! served by `GET /stats`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Most distinct error codes one counter tracks before lumping the rest under `OTHER`.
const MAX_DISTINCT_CODES: usize = 64;

/// Counters of one endpoint or plugin.
#[derive(Debug, Clone, Default, Serialize)]
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

/// Thread-safe statistics of one server.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    inner: Mutex<Inner>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner::default()),
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
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .plugins
            .entry(plugin.to_string())
            .or_default()
            .record(latency_ms, tokens, error);
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
}
