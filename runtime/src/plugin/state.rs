//! The data of one plugin call's store: WASI context (empty by default), resource limits, and
//! what the host needs to serve the plugin's imports under its permissions.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::grants::{Granted, TokenMeter};
use super::host_http::HttpGate;
use super::manifest::Manifest;
use crate::engine::Engine;
use crate::sandbox::LazySandbox;

/// Most instances/tables/memories one plugin may create; components need a handful.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// Caps the linear memory of a whole plugin call (every memory of every core instance of the
/// component together, as a component may have several) and remembers whether the cap was hit,
/// so a failed allocation can be reported as a memory-limit error rather than as the trap it
/// turns into inside the guest.
#[derive(Debug)]
pub struct MemoryLimiter {
    pub max_bytes: usize,
    /// Bytes of all the call's memories together at their largest (memories never shrink).
    pub peak_bytes: usize,
    pub hit: bool,
}

/// Most elements of one table.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Host bytes per table element (a function or external reference).
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    /// Count `bytes` more against the cap: whether they fit (when not, nothing is counted and
    /// `hit` is set).
    fn charge(&mut self, bytes: usize) -> bool {
        let total = self.peak_bytes.saturating_add(bytes);
        if total > self.max_bytes {
            self.hit = true;
            return false;
        }
        self.peak_bytes = total;
        true
    }
}

impl ResourceLimiter for MemoryLimiter {
    /// Called for a memory's initial size (`current` 0) and for every growth of it.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.charge(desired.saturating_sub(current)))
    }

    /// Table elements are host memory the plugin asks for as surely as linear memory (with
    /// instances allocated on demand nothing else bounds them): counted against the same cap.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            // Past the element limit is the memory cap too, as the caller will be told.
            self.hit = true;
            return Ok(false);
        }
        Ok(self.charge(
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Store data for one call.
pub struct PluginState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    /// Checks each outgoing HTTP request against the granted hosts.
    pub http_gate: HttpGate,
    pub limiter: MemoryLimiter,
    pub manifest: Arc<Manifest>,
    /// What the operator granted this plugin.
    pub granted: Arc<Granted>,
    /// The plugin's token use over the last minute, shared across its calls.
    pub tokens: Arc<TokenMeter>,
    pub models: Option<Arc<Engine>>,
    /// The Python sandbox, for plugins granted `run-python`.
    pub sandbox: Option<Arc<LazySandbox>>,
    pub deadline: Instant,
    /// Set when a timer of the plugin's was cut at the deadline and fired (see
    /// `host_clocks`): the call ran past its deadline, whatever it returns.
    pub slept_past_deadline: Arc<std::sync::atomic::AtomicBool>,
    /// Host capabilities the call used (`llm:MODEL`, `run-python`), for the audit line.
    pub used: Vec<String>,
    /// Tokens (prompt + completion) the plugin consumed in this call.
    pub tokens_used: u64,
    pub llm_calls: u32,
    /// The codes of the refusals the host gave this call that the plugin may pass on (see
    /// [`super::output::RELAYED_ONLY`]).
    pub relayable: Vec<&'static str>,
    /// What this call has logged (bounded by the log host).
    pub log_budget: super::host_log::LogBudget,
    /// The end of what the plugin wrote to stdout and stderr in this call.
    pub output: super::output_tail::OutputTail,
    /// Cancels the call's model generations (a cancelled pipeline run).
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Receives generated text as the model produces it.
    pub on_text: Option<super::TextSink>,
    /// The model for `llm` calls that name none (the host's default when `None`).
    pub default_model: Option<String>,
}

/// Most host resources one plugin call holds at once (a well-behaved plugin holds a few).
const MAX_HOST_RESOURCES: usize = 1024;
/// Most bytes of one HTTP header map a plugin builds (16 KiB: what common servers accept).
const HTTP_FIELDS_BYTES: usize = 16 << 10;

impl PluginState {
    /// A state with a WASI context built from `wasi` (what was granted, nothing more).
    pub fn new(
        manifest: Arc<Manifest>,
        granted: Arc<Granted>,
        tokens: Arc<TokenMeter>,
        models: Option<Arc<Engine>>,
        sandbox: Option<Arc<LazySandbox>>,
        wasi: WasiCtx,
        deadline: Instant,
    ) -> Self {
        let max_memory = (granted.memory_mb as usize) << 20;
        let http_gate = HttpGate::new(granted.hosts.clone(), granted.internal_hosts, deadline);
        // Host resources (streams, pollables, HTTP header maps...) live in host memory, not
        // under the plugin's memory cap: a plugin holds at most this many at once, each header
        // map at most HTTP_FIELDS_BYTES, so what it can make the host hold stays bounded.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HOST_RESOURCES);
        let mut http = wasmtime_wasi_http::WasiHttpCtx::new();
        http.set_field_size_limit(HTTP_FIELDS_BYTES);
        Self {
            wasi,
            table,
            http,
            http_gate,
            limiter: MemoryLimiter {
                max_bytes: max_memory,
                peak_bytes: 0,
                hit: false,
            },
            manifest,
            granted,
            tokens,
            models,
            sandbox,
            deadline,
            slept_past_deadline: Default::default(),
            used: Vec::new(),
            tokens_used: 0,
            llm_calls: 0,
            relayable: Vec::new(),
            log_budget: Default::default(),
            output: Default::default(),
            cancel: None,
            on_text: None,
            default_model: None,
        }
    }
}

impl PluginState {
    /// Remember that the call used `capability` (once).
    pub fn note_used(&mut self, capability: &str) {
        if !self.used.iter().any(|u| u == capability) {
            self.used.push(capability.to_string());
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.http_gate,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_call_together() {
        const MIB: usize = 1 << 20;
        let mut limiter = MemoryLimiter {
            max_bytes: 100 * MIB,
            peak_bytes: 0,
            hit: false,
        };
        // Two memories created at 40 MiB each, then one grows to 60: 100 MiB in all.
        assert!(limiter.memory_growing(0, 40 * MIB, None).expect("first"));
        assert!(limiter.memory_growing(0, 40 * MIB, None).expect("second"));
        assert!(
            limiter
                .memory_growing(40 * MIB, 60 * MIB, None)
                .expect("growth")
        );
        assert_eq!(limiter.peak_bytes, 100 * MIB);
        assert!(!limiter.hit);
        // A third memory, or any more growth, would pass the cap.
        assert!(!limiter.memory_growing(0, MIB, None).expect("third"));
        assert!(
            !limiter
                .memory_growing(40 * MIB, 41 * MIB, None)
                .expect("more")
        );
        assert!(limiter.hit);
        assert_eq!(limiter.peak_bytes, 100 * MIB);
    }

    #[test]
    fn a_table_past_the_element_limit_is_the_memory_cap() {
        let mut limiter = MemoryLimiter {
            max_bytes: 1 << 30,
            peak_bytes: 0,
            hit: false,
        };
        let grown = limiter.table_growing(0, MAX_TABLE_ELEMENTS + 1, None);
        assert!(!grown.expect("grow"));
        assert!(
            limiter.hit,
            "the caller would be told of a trap, not the cap"
        );
        assert_eq!(limiter.peak_bytes, 0);
    }

    #[test]
    fn tables_count_against_the_memory_cap() {
        let mut limiter = MemoryLimiter {
            max_bytes: 16 << 20,
            peak_bytes: 0,
            hit: false,
        };
        // 8 MB of references each: two fit under 16 MiB, a third does not.
        assert!(limiter.table_growing(0, 1_000_000, None).expect("grow"));
        assert!(limiter.table_growing(0, 1_000_000, None).expect("grow"));
        assert!(!limiter.table_growing(0, 1_000_000, None).expect("grow"));
        assert!(limiter.hit);
        // Linear memory shares what is left.
        assert!(!limiter.memory_growing(0, 1 << 20, None).expect("grow"));
        assert!(limiter.memory_growing(0, 64 << 10, None).expect("grow"));
        assert!(!limiter.table_growing(0, 2_000_000, None).expect("grow"));
    }
}
