//! The pre-initialised test runner: CPython with `runner.py` imported and the standard library
//! preloaded, snapshotted at build time by componentize-py (`build-runner.sh`, world
//! `test-runner` of `runner.wit`) and embedded in the binary.
//!
//! A run instantiates the snapshot (copy-on-write memory, no interpreter start-up) and calls
//! `run(request, nonce)`; isolation, limits, scratch folder and events are those of the script
//! runner (see the parent module). What the snapshot lacks is a module that was not preloaded:
//! such a run is repeated in the full interpreter by the caller.

use std::path::Path;

use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{RunData, RunEnd, SandboxLimits};
use crate::plugin::compile_cache::{CacheHold, CompileCache, sha256_hex};

/// The runner component built by `build.rs`.
static RUNNER_COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/python-runner.wasm"));

/// Core instances, tables and memories a CPython component creates (a dozen of each, at most).
const COMPONENT_PARTS: usize = 64;

struct SnapshotState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    scratch_overflow: bool,
}

impl WasiView for SnapshotState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl RunData for SnapshotState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    fn scratch_overflow(&mut self) -> &mut bool {
        &mut self.scratch_overflow
    }
}

/// The compiled snapshot, linked and ready to instantiate.
pub(super) struct SnapshotRunner {
    pre: InstancePre<SnapshotState>,
    /// Keeps its compiled entry from this process's cache pruning.
    _cache_hold: CacheHold,
}

impl SnapshotRunner {
    /// Compile the embedded component (or load its compilation from `cache`) and link it.
    pub(super) fn load(engine: &Engine, cache: &CompileCache) -> wasmtime::Result<Self> {
        let (component, _, hold) =
            cache.load(engine, RUNNER_COMPONENT, &sha256_hex(RUNNER_COMPONENT))?;
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Ok(Self {
            pre: linker.instantiate_pre(&component)?,
            _cache_hold: hold,
        })
    }

    /// One run of `request` in a fresh instance, events to `stdout`.
    pub(super) fn execute(
        &self,
        request: &str,
        nonce: &str,
        stdout: MemoryOutputPipe,
        scratch: &Path,
        stop: super::RunStop<'_>,
        limits: &SandboxLimits,
    ) -> RunEnd {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout)
            .stderr(MemoryOutputPipe::new(16 << 10))
            .env("TMPDIR", "/tmp")
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Err(e) = builder.preopened_dir(scratch, "/tmp", wasmtime_wasi::FsPerms::ReadWrite) {
            return RunEnd::Crashed(format!("no scratch folder: {e:#}"));
        }
        let state = SnapshotState {
            wasi: builder.build(),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(super::MAX_OPEN_RESOURCES);
                table
            },
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(COMPONENT_PARTS)
                .tables(COMPONENT_PARTS)
                .memories(COMPONENT_PARTS)
                .build(),
            scratch_overflow: false,
        };
        let store = Store::new(self.pre.engine(), state);
        super::drive(store, scratch, limits, stop, async |store| {
            let instance = self.pre.instantiate_async(&mut *store).await?;
            let run = instance.get_typed_func::<(&str, &str), ()>(&mut *store, "run")?;
            run.call_async(&mut *store, (request, nonce)).await
        })
    }
}
