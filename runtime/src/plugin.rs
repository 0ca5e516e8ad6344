//! The plugin host: loads WebAssembly components, checks them against their world and
//! manifest, and calls them in a fresh, capped store per call.
//!
//! A plugin is loaded only if the operator's config grants what its manifest asks
//! ([`grants`]). Each call gets a new [`wasmtime::Store`] from a cached pre-instantiation, a
//! memory cap, an epoch-based wall-clock deadline, optional fuel and a WASI context holding only
//! what was granted (environment variables by name, folders, outbound hosts for `wasi:sockets`
//! and `wasi:http`). A trap, a timeout
//! or a limit hit becomes a [`PluginError`] for that call only; the host and other calls go on.

pub mod bindings;
pub mod compile_cache;
pub mod grants;
mod host_clocks;
mod host_http;
mod host_io;
mod host_llm;
mod host_log;
mod host_sandbox;
mod http_client;
pub mod manifest;
pub mod output;
mod output_tail;
mod pool;
pub mod registry;
pub mod reload;
pub mod self_test;
pub mod state;
pub mod wit_version;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Store, Trap};

use bindings::{
    CheckInfo, CodeArtifact, Finding, GenerationRequest, ModelOption, ModelRecovery, PipelineError,
    Recovery, Review, ReviewRequest,
};
use compile_cache::{CompileCache, sha256_hex};
pub use grants::HostLimits;
use grants::{Granted, TokenMeter};
use manifest::{Manifest, World};
use pool::{call_slots, instance_pool};
use state::PluginState;

use crate::config::Config;
use crate::engine::Engine;
use crate::error_code::ErrorCode;
use crate::sandbox::LazySandbox;

/// How often the epoch advances; the granularity of plugin deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Guest stack allowed by wasmtime; CPython-based plugins recurse deeply on nested expressions,
/// and the 512 KiB default turns a syntax error in deeply nested code into a stack trap.
const MAX_WASM_STACK: usize = 2 << 20;
/// Native stack of the thread a plugin call runs on: wasmtime's guest-stack check is relative to
/// where the call starts, so the thread needs the guest's allowance plus room for the host.
const PLUGIN_THREAD_STACK: usize = MAX_WASM_STACK + (8 << 20);
/// How long past its deadline a call may stay inside a host call before its caller stops
/// waiting for it (an llm or sandbox call notices the deadline within a step).
const ABANDON_GRACE: Duration = Duration::from_millis(1500);
/// Most bytes a plugin may pass to the host in one import call (strings and lists).
const HOSTCALL_FUEL: usize = 4 << 20;

/// What a running call holds ([`PluginHost::admit`]), given back when dropped.
struct Admitted {
    _slot: crate::fifo_semaphore::Permit,
    _memory: crate::fifo_semaphore::Permit,
}

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: cannot load: {message}")]
    Load { plugin: String, message: String },
    #[error(
        "plugin {plugin} asks for more than it is granted: {message} (grant it under [grants.{plugin}] in the config; a running server applies a changed config by itself)"
    )]
    NotGranted { plugin: String, message: String },
    #[error("plugin {plugin} used up its fuel budget of {fuel}")]
    Fuel { plugin: String, fuel: u64 },
    #[error("plugin {plugin} trapped: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin {plugin} ran past its {timeout_ms} ms deadline")]
    Timeout { plugin: String, timeout_ms: u64 },
    #[error("plugin {plugin}: {}", busy_text(*.waited_ms, .on))]
    Busy {
        plugin: String,
        waited_ms: u64,
        on: WaitedFor,
    },
    #[error("plugin {plugin} hit its memory cap of {limit_mb} MiB")]
    Memory { plugin: String, limit_mb: u64 },
    #[error("plugin {plugin} returned an error: {} {}", .error.code, .error.message)]
    Returned {
        plugin: String,
        error: PipelineError,
    },
    #[error("plugin {plugin} returned an unusable result: {message}")]
    Output { plugin: String, message: String },
}

/// What a call waited for in vain ([`PluginError::Busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitedFor {
    /// An instance slot (`[limits] instance-pool`).
    Slot,
    /// Room for its memory cap among the calls running (`[limits] plugin-memory-mb`).
    Memory { cap_mb: u64, total_mb: u64 },
}

fn busy_text(waited_ms: u64, on: &WaitedFor) -> String {
    match on {
        WaitedFor::Slot => format!(
            "every plugin instance slot stayed busy for {waited_ms} ms (calls still running, or \
             stuck in host calls past their deadlines); retry, or raise [limits] instance-pool"
        ),
        WaitedFor::Memory { cap_mb, total_mb } => format!(
            "its memory cap of {cap_mb} MiB did not fit for {waited_ms} ms in the {total_mb} MiB \
             the plugin calls running at once may hold (each holds its cap); retry, or raise \
             [limits] plugin-memory-mb"
        ),
    }
}

impl PluginError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Load { .. } => ErrorCode::PluginLoad,
            Self::NotGranted { .. } => ErrorCode::PluginAccessDenied,
            Self::Fuel { .. } => ErrorCode::PluginFuel,
            Self::Trap { .. } => ErrorCode::PluginTrap,
            Self::Timeout { .. } => ErrorCode::PluginTimeout,
            Self::Busy { .. } => ErrorCode::QueueFull,
            Self::Memory { .. } => ErrorCode::PluginMemory,
            Self::Output { .. } => ErrorCode::PluginOutput,
            Self::Returned { error, .. } => {
                ErrorCode::parse(&error.code).unwrap_or(ErrorCode::GenerationFailed)
            }
        }
    }

    /// The code string, keeping a plugin's own code when it is not one of ours.
    pub fn code_str(&self) -> String {
        match self {
            Self::Returned { error, .. } => error.code.clone(),
            other => other.code().as_str().to_string(),
        }
    }
}

/// The language of code only to be checked (`/check`, `agentrt check`): Python when none is
/// given, any language that a quality check among `checks` understands (a third-party linter
/// brings its language; generation, tests and reviews stay Python, what the sandbox runs), and
/// otherwise a message naming the languages they do understand.
pub fn language_for_checks(given: Option<&str>, checks: &[Arc<Plugin>]) -> Result<String, String> {
    let language = given
        .map(crate::language::canonical)
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| crate::language::PYTHON.to_owned());
    let covered = |p: &Arc<Plugin>| p.check_scope.as_ref().is_none_or(|s| s.covers(&language));
    if language == crate::language::PYTHON || checks.iter().any(covered) {
        return Ok(language);
    }
    let mut known: Vec<&str> = checks
        .iter()
        .filter_map(|p| p.check_scope.as_ref())
        .flat_map(|s| s.languages.iter().map(String::as_str))
        .chain([crate::language::PYTHON])
        .collect();
    known.sort_unstable();
    known.dedup();
    Err(format!(
        "no quality check in use understands {language:?} (they understand: {})",
        known.join(", ")
    ))
}

/// World-specific pre-instantiation: linking and type-checking done once per component.
#[derive(Clone)]
enum Pre {
    Generator(bindings::generator::GeneratorPre<PluginState>),
    Reviewer(bindings::reviewer::ReviewerPre<PluginState>),
    QualityCheck(bindings::quality_check::QualityCheckPre<PluginState>),
    ErrorHandler(bindings::error_handler::ErrorHandlerPre<PluginState>),
    ModelErrorHandler(bindings::model_error_handler::ModelErrorHandlerPre<PluginState>),
}

/// Where a plugin came from.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum PluginSource {
    Embedded,
    File(std::path::PathBuf),
}

/// A loaded, callable plugin.
pub struct Plugin {
    pub manifest: Arc<Manifest>,
    /// What the operator granted it.
    pub granted: Arc<Granted>,
    /// Its token use over the last minute, across calls.
    pub tokens: Arc<TokenMeter>,
    pub source: PluginSource,
    pub sha256: String,
    pub size_bytes: usize,
    pub compile_ms: u64,
    pub cache_hit: bool,
    /// The `agentrt:plugin` WIT version the component was built against.
    pub wit_version: semver::Version,
    /// What a quality check said it covers when it was loaded (`None` for other worlds).
    pub check_scope: Option<CheckScope>,
    pre: Pre,
    /// Keeps its compiled entry from this process's cache pruning while this version lives.
    _cache_hold: compile_cache::CacheHold,
}

/// What a quality check covers, from its `describe`: the languages it understands (by their
/// [canonical](crate::language::canonical) names; empty: every language) and the rule ids it may report.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CheckScope {
    pub languages: Vec<String>,
    pub rules: Vec<String>,
}

impl CheckScope {
    pub(crate) fn of(info: CheckInfo) -> Self {
        let mut languages: Vec<String> = info
            .languages
            .iter()
            .map(|l| crate::language::canonical(l))
            .filter(|l| !l.is_empty())
            .collect();
        languages.sort_unstable();
        languages.dedup();
        Self {
            languages,
            rules: info.rules,
        }
    }

    /// Whether code in `language` is for this check; code of no stated language is for all.
    pub fn covers(&self, language: &str) -> bool {
        let language = crate::language::canonical(language);
        self.languages.is_empty() || language.is_empty() || self.languages.contains(&language)
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("manifest", &self.manifest)
            .field("source", &self.source)
            .finish()
    }
}

impl Plugin {
    /// What `plugins list` / `inspect` and `GET /plugins` show: identity, what the manifest
    /// asks, what the operator granted, and where it came from.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.manifest.name,
            "version": self.manifest.version,
            "world": self.manifest.world,
            "description": self.manifest.description,
            "permissions": self.manifest.permissions,
            "granted": *self.granted,
            "granted_summary": self.granted.summary(),
            "source": self.source,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "compile_ms": self.compile_ms,
            "cached": self.cache_hit,
            "wit": format!("{}@{}", wit_version::PACKAGE, self.wit_version),
            "check": self.check_scope,
        })
    }
}

/// What one call cost, for statistics and audit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallStats {
    pub duration_ms: u64,
    pub memory_peak_bytes: usize,
    pub tokens: u64,
    pub llm_calls: u32,
    /// The models the call's `llm` requests ran on, in first-use order.
    pub models: Vec<String>,
}

/// An error handler's decision: what the pipeline does, and the model the retried stage runs on
/// when a `model-error-handler` moved it to another one.
#[derive(Debug, Clone)]
pub struct Decision {
    pub recovery: Recovery,
    pub model: Option<String>,
}

/// The wasmtime engine, linkers and the model engine plugins may reach.
/// Receives text a model generates, piece by piece.
pub type TextSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What one call carries besides its arguments: a flag that cancels the model calls it makes
/// (they stop at the next token with `cancelled`), and a sink for the text those calls
/// generate, as it comes (the pipeline's token events).
#[derive(Clone, Default)]
pub struct CallContext {
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    pub on_text: Option<TextSink>,
    /// The model `llm` calls that name none run on, in place of the host's default: set when an
    /// error handler moved a run to another model. Still subject to the plugin's grant.
    pub model: Option<String>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("cancel", &self.cancel)
            .field("on_text", &self.on_text.is_some())
            .field("model", &self.model)
            .finish()
    }
}

pub struct PluginHost {
    engine: wasmtime::Engine,
    linker_llm: Linker<PluginState>,
    linker_plain: Linker<PluginState>,
    models: Option<Arc<Engine>>,
    sandbox: Option<Arc<LazySandbox>>,
    cache: CompileCache,
    /// Swapped whole when the operator's config is reloaded (grants only; see
    /// [`PluginHost::replace_config`]).
    config: std::sync::RwLock<Arc<Config>>,
    pooling: bool,
    /// Calls in flight, bounded by the instance pool so that a burst waits for a slot instead
    /// of failing to instantiate.
    slots: Arc<crate::fifo_semaphore::FifoSemaphore>,
    /// The MiB of memory the calls in flight may hold together, one permit a MiB: a call takes
    /// its whole cap before it starts. Each call's cap is enforced on its own; without this,
    /// 64 calls of an untrusted check allocating its 256 MiB would take 16 GiB of the host.
    memory: Arc<crate::fifo_semaphore::FifoSemaphore>,
    memory_total_mb: u64,
    /// Each plugin's tokens-per-minute meter, by name: a plugin loaded again (a new version,
    /// a changed grant) keeps what it spent in the last minute rather than a fresh budget.
    meters: std::sync::Mutex<std::collections::HashMap<String, Arc<TokenMeter>>>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Create the host; `models` is what `llm` imports reach (None: no model access at all),
    /// `sandbox` what `sandbox.run-python` runs in; `config` holds the operator's limits and
    /// grants.
    pub fn new(
        models: Option<Arc<Engine>>,
        sandbox: Option<Arc<LazySandbox>>,
        cache: CompileCache,
        config: Arc<Config>,
    ) -> wasmtime::Result<Self> {
        let mut wasm_config = wasmtime::Config::new();
        wasm_config
            .wasm_component_model(true)
            .epoch_interruption(true)
            // Fuel costs a counter update per block; it is what makes deterministic budgets
            // possible, and plugins without one get an unlimited tank.
            .consume_fuel(true)
            .parallel_compilation(true);
        wasm_config.max_wasm_stack(MAX_WASM_STACK);
        let pooling = config.limits.instance_pool > 0;
        let memory_total_mb = config.limits.plugin_memory_total_mb();
        if pooling {
            wasm_config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                instance_pool(&config.limits),
            ));
        }
        let engine = wasmtime::Engine::new(&wasm_config)?;
        spawn_epoch_ticker(&engine, "agentrt-epoch", EPOCH_TICK)?;
        let mut linker_plain = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker_plain)?;
        // A plugin's timers end by its deadline: asleep in a host call, it cannot be stopped.
        host_clocks::cap_timers(&mut linker_plain)?;
        // So do its other waits (a poll, a blocking read or write), whatever they wait for.
        host_io::bound_waits(&mut linker_plain)?;
        // Outgoing HTTP for plugins that import it; every request is checked against the
        // plugin's granted hosts (host_http.rs).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker_plain)?;
        bindings::log::add_to_linker::<_, HasSelf<_>>(&mut linker_plain, |s| s)?;
        bindings::sandbox::add_to_linker::<_, HasSelf<_>>(&mut linker_plain, |s| s)?;
        let mut linker_llm = linker_plain.clone();
        bindings::llm::add_to_linker::<_, HasSelf<_>>(&mut linker_llm, |s| s)?;
        Ok(Self {
            engine,
            linker_llm,
            linker_plain,
            models,
            sandbox,
            cache,
            slots: call_slots(pooling.then_some(config.limits.instance_pool)),
            memory: crate::fifo_semaphore::FifoSemaphore::new(memory_total_mb as usize),
            memory_total_mb,
            config: std::sync::RwLock::new(config),
            pooling,
            meters: Default::default(),
        })
    }

    /// The tokens-per-minute meter of the plugin named `name`.
    fn meter_for(&self, name: &str) -> Arc<TokenMeter> {
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.entry(name.to_owned()).or_default().clone()
    }

    /// The operator's config: limits and grants.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Put `config` in use for plugins loaded from now on, and return the one it replaces.
    /// Only its grants may differ: the instance pool and memory ceilings were built from
    /// `[limits]`, and the run store was opened from `store`, so a change to either is refused.
    pub fn replace_config(&self, config: Config) -> Result<Arc<Config>, String> {
        let mut current = self.config.write().unwrap_or_else(|e| e.into_inner());
        if config.limits != current.limits {
            return Err(
                "[limits] changed, which takes a restart (the plugin host is built with them)"
                    .into(),
            );
        }
        // Where the store is, not what the file says: with AGENTRT_STORE set, the config's
        // `store` is not used, and an edit to it must not hold back the grants beside it.
        let (was, now) = (
            crate::paths::store_location(current.store.as_deref()),
            crate::paths::store_location(config.store.as_deref()),
        );
        if was != now {
            return Err(format!(
                "store changed from {} to {}, which takes a restart (the run store is open)",
                crate::store::postgres::redact(&was),
                crate::store::postgres::redact(&now)
            ));
        }
        Ok(std::mem::replace(&mut *current, Arc::new(config)))
    }

    /// Put back a config [`PluginHost::replace_config`] replaced.
    pub fn restore_config(&self, config: Arc<Config>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Whether `llm` imports reach a model engine.
    pub fn has_models(&self) -> bool {
        self.models.is_some()
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compile (or fetch from the cache) and type-check a component against its manifest's world.
    pub fn load(
        &self,
        manifest: Manifest,
        bytes: &[u8],
        source: PluginSource,
    ) -> Result<Plugin, PluginError> {
        let name = manifest.name.clone();
        let fail = |message: String| PluginError::Load {
            plugin: name.clone(),
            message,
        };
        let config = self.config();
        let grant = config.grant_for(&manifest, matches!(source, PluginSource::Embedded));
        let granted =
            grants::resolve(&manifest.permissions, &grant, &config.limits).map_err(|message| {
                PluginError::NotGranted {
                    plugin: name.clone(),
                    message,
                }
            })?;
        if let Some(problem) = compile_cache::component_header_problem(bytes) {
            return Err(fail(problem.into()));
        }
        let sha256 = sha256_hex(bytes);
        let started = Instant::now();
        let (component, cache_hit, cache_hold) = self
            .cache
            .load(&self.engine, bytes, &sha256)
            .map_err(|e| fail(format!("not a valid component: {e:#}")))?;
        let compile_ms = started.elapsed().as_millis() as u64;
        let imports = wit_version::component_imports(&component, &self.engine);
        let wit_version =
            wit_version::check_imports(imports.iter().map(String::as_str)).map_err(fail)?;
        let pre = self
            .pre_instantiate(manifest.world, &component)
            .map_err(|e| {
                fail(wit_version::explain_link_failure(
                    &wit_version,
                    format!(
                        "does not implement world {} with the imports agentrt provides: {e:#}",
                        manifest.world
                    ),
                ))
            })?;
        let tokens = self.meter_for(&manifest.name);
        let plugin = Plugin {
            manifest: Arc::new(manifest),
            granted: Arc::new(granted),
            tokens,
            source,
            sha256,
            size_bytes: bytes.len(),
            compile_ms,
            cache_hit,
            wit_version,
            check_scope: None,
            pre,
            _cache_hold: cache_hold,
        };
        // One trial instantiation: a component that cannot be instantiated here (its start
        // code traps, or it needs more instances, memories or table slots than the instance
        // pool provides) is refused now rather than failing every call. A quality check also
        // says there what it covers.
        match self.trial(&plugin, true) {
            Ok(None) => Ok(plugin),
            Ok(Some(mut info)) => match output::check_info(&mut info) {
                Ok(()) => Ok(Plugin {
                    check_scope: Some(CheckScope::of(info)),
                    ..plugin
                }),
                Err(why) => Err(fail(format!("its describe() answered {why}"))),
            },
            // Every slot was busy: nothing is known against the component, and hot reload
            // tries a refusal with this code again at its next poll.
            Err(busy @ PluginError::Busy { .. }) => Err(busy),
            // A limit that does not cover the start code: PLUGIN_009, raise `fuel`;
            // PLUGIN_004, `timeout-ms`; PLUGIN_005, `memory-mb`.
            Err(
                limit @ (PluginError::Fuel { .. }
                | PluginError::Timeout { .. }
                | PluginError::Memory { .. }),
            ) => Err(limit),
            Err(PluginError::Trap { message, .. }) => Err(fail(message)),
            Err(other) => Err(fail(other.to_string())),
        }
    }

    fn pre_instantiate(&self, world: World, component: &Component) -> wasmtime::Result<Pre> {
        let linker = if world.uses_llm() {
            &self.linker_llm
        } else {
            &self.linker_plain
        };
        let pre = linker.instantiate_pre(component)?;
        Ok(match world {
            World::Generator => Pre::Generator(bindings::generator::GeneratorPre::new(pre)?),
            World::Reviewer => Pre::Reviewer(bindings::reviewer::ReviewerPre::new(pre)?),
            World::QualityCheck => {
                Pre::QualityCheck(bindings::quality_check::QualityCheckPre::new(pre)?)
            }
            World::ErrorHandler => {
                Pre::ErrorHandler(bindings::error_handler::ErrorHandlerPre::new(pre)?)
            }
            World::ModelErrorHandler => Pre::ModelErrorHandler(
                bindings::model_error_handler::ModelErrorHandlerPre::new(pre)?,
            ),
        })
    }

    fn new_store(&self, plugin: &Plugin) -> wasmtime::Result<(Store<PluginState>, Duration)> {
        let granted = &plugin.granted;
        let timeout = Duration::from_millis(granted.timeout_ms);
        let deadline = Instant::now() + timeout;
        let models = if plugin.manifest.world.uses_llm() {
            self.models.clone()
        } else {
            None
        };
        let output = output_tail::OutputTail::default();
        let mut state = PluginState::new(
            plugin.manifest.clone(),
            plugin.granted.clone(),
            plugin.tokens.clone(),
            models,
            if granted.run_python {
                self.sandbox.clone()
            } else {
                None
            },
            wasi_context(granted, deadline, &output)?,
            deadline,
        );
        state.output = output;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_fuel(granted.fuel.unwrap_or(u64::MAX))?;
        // The deadline is kept by the wall clock; the epoch only says when to look (every
        // tick). Counted in ticks alone it would stretch with the ticker's sleeps on a busy
        // machine: a 20 s deadline ran 21.7 s with both cores saturated.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| Ok(at_epoch(Instant::now(), deadline)));
        Ok((store, timeout))
    }

    /// An instance slot and room for the call's memory cap, held until the call ends. A call
    /// waits for them no longer than it may run: slots held by calls abandoned in a blocking
    /// host call must not hold up every later call for good.
    fn admit(&self, plugin: &Plugin) -> Result<Admitted, PluginError> {
        let patience = Duration::from_millis(plugin.granted.timeout_ms);
        let until = Some(Instant::now() + patience);
        let busy = |on| PluginError::Busy {
            plugin: plugin.manifest.name.clone(),
            waited_ms: patience.as_millis() as u64,
            on,
        };
        let slot = self
            .slots
            .acquire(until, None)
            .map_err(|_| busy(WaitedFor::Slot))?;
        let cap_mb = plugin.granted.memory_mb.min(self.memory_total_mb);
        let memory = self
            .memory
            .acquire_many(cap_mb as usize, until, None)
            .map_err(|_| {
                busy(WaitedFor::Memory {
                    cap_mb,
                    total_mb: self.memory_total_mb,
                })
            })?;
        Ok(Admitted {
            _slot: slot,
            _memory: memory,
        })
    }

    /// Run `f` in a fresh store and turn wasmtime failures into [`PluginError`]s.
    ///
    /// The call runs on a thread of its own. Guest code stops at the deadline (epoch
    /// interruption), and so do WASI's waits (timers, polls, blocking stream calls: see
    /// `host_clocks` and `host_io`). A plugin blocked where the host cannot reach (a filesystem
    /// call waiting in the kernel, such as opening a FIFO) is abandoned once the deadline and a
    /// grace period have passed: the caller gets `PLUGIN_004` and the thread finishes, and
    /// frees its slot, when the call returns.
    fn call<R: Send + 'static>(
        &self,
        plugin: &Arc<Plugin>,
        ctx: &CallContext,
        f: impl FnOnce(&Pre, &mut Store<PluginState>) -> wasmtime::Result<Result<R, PipelineError>>
        + Send
        + 'static,
        validate: impl FnOnce(&mut R) -> Result<(), String>,
    ) -> (Result<R, PluginError>, CallStats) {
        let slot = match self.admit(plugin) {
            Ok(slot) => slot,
            Err(error) => return (Err(error), CallStats::default()),
        };
        let started = Instant::now();
        let (mut store, timeout) = match self.new_store(plugin) {
            Ok(made) => made,
            Err(e) => {
                let error = PluginError::Load {
                    plugin: plugin.manifest.name.clone(),
                    message: format!("cannot set up the call: {e:#}"),
                };
                return (Err(error), CallStats::default());
            }
        };
        store.data_mut().cancel = ctx.cancel.clone();
        store.data_mut().on_text = ctx.on_text.clone();
        store.data_mut().default_model = ctx.model.clone();
        let worker_plugin = plugin.clone();
        // The caller's span (a request's or a run's id) goes with the call to its thread, so
        // the plugin's own log lines name the request they serve.
        let span = tracing::Span::current();
        let finished =
            on_plugin_thread(&plugin.manifest.name, timeout + ABANDON_GRACE, move || {
                let _entered = span.enter();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    f(&worker_plugin.pre, &mut store)
                }))
                .unwrap_or_else(|_| {
                    Err(wasmtime::Error::msg(
                        "the host panicked while serving the plugin",
                    ))
                });
                let state = store.data();
                let stats = CallStats {
                    duration_ms: 0,
                    memory_peak_bytes: state.limiter.peak_bytes,
                    tokens: state.tokens_used,
                    llm_calls: state.llm_calls,
                    models: state
                        .used
                        .iter()
                        .filter_map(|u| u.strip_prefix("llm:"))
                        .map(str::to_string)
                        .collect(),
                };
                let used = state.used.join(",");
                let relayable = state.relayable.clone();
                let name = worker_plugin.manifest.name.clone();
                let late = state
                    .slept_past_deadline
                    .load(std::sync::atomic::Ordering::Relaxed);
                let outcome = if late {
                    // Woken at its deadline from a longer sleep: late, whatever it returned.
                    Err(PluginError::Timeout {
                        plugin: name,
                        timeout_ms: timeout.as_millis() as u64,
                    })
                } else {
                    outcome.map_err(|e| classify_failure(e, state, name, timeout))
                };
                // The instance goes back to the pool before the slot does, so the next call
                // that takes the slot finds room for its instance.
                drop(store);
                drop(slot);
                (outcome, stats, used, relayable)
            });
        let (outcome, mut stats, used, relayable) = match finished {
            Ok(Some(done)) => done,
            Err(e) => {
                let error = PluginError::Load {
                    plugin: plugin.manifest.name.clone(),
                    message: format!("cannot start a plugin thread: {e}"),
                };
                return (Err(error), CallStats::default());
            }
            Ok(None) => {
                let error = PluginError::Timeout {
                    plugin: plugin.manifest.name.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                };
                tracing::warn!(
                    target: "agentrt::audit",
                    plugin = %plugin.manifest.name,
                    version = %plugin.manifest.version,
                    world = %plugin.manifest.world,
                    duration_ms = started.elapsed().as_millis() as u64,
                    outcome = "PLUGIN_004",
                    "plugin call abandoned: blocked in a host call past its deadline"
                );
                let stats = CallStats {
                    duration_ms: started.elapsed().as_millis() as u64,
                    ..CallStats::default()
                };
                crate::metrics::global()
                    .sandbox_timeouts
                    .get_or_create(&crate::metrics::TimeoutLabels {
                        sandbox: "plugin".into(),
                    })
                    .inc();
                return (Err(error), stats);
            }
        };
        stats.duration_ms = started.elapsed().as_millis() as u64;
        let result = match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(error)) => Err(PluginError::Returned {
                plugin: plugin.manifest.name.clone(),
                error: output::clip_error(error, &relayable),
            }),
            Err(e) => Err(e),
        };
        let result = result.and_then(|mut v| match validate(&mut v) {
            Ok(()) => Ok(v),
            Err(message) => Err(PluginError::Output {
                plugin: plugin.manifest.name.clone(),
                message,
            }),
        });
        let outcome_label = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code_str(),
        };
        if matches!(result, Err(PluginError::Timeout { .. })) {
            crate::metrics::global()
                .sandbox_timeouts
                .get_or_create(&crate::metrics::TimeoutLabels {
                    sandbox: "plugin".into(),
                })
                .inc();
        }
        tracing::info!(
            target: "agentrt::audit",
            plugin = %plugin.manifest.name,
            version = %plugin.manifest.version,
            world = %plugin.manifest.world,
            duration_ms = stats.duration_ms,
            memory_peak_bytes = stats.memory_peak_bytes,
            tokens = stats.tokens,
            used = %used,
            granted = %plugin.granted.summary(),
            // Its request cancelled it meanwhile (or the client left): whatever the outcome,
            // not a failure of the plugin (`logs analyze` and `/stats` agree on this).
            stopped_by_request = ctx
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)),
            outcome = %outcome_label,
            "plugin call"
        );
        (result, stats)
    }

    /// Instantiate `plugin` in a fresh store, as every call does before the guest runs, and
    /// drop it: the per-call set-up cost, for benchmarks and `plugin check`, and the trial
    /// run of every component loaded. The component's start code runs here, so it runs as a
    /// call does: on a plugin thread (whose stack has room for the guest's, whichever thread
    /// asked: hot reload's has not), under the plugin's deadline, abandoned when it blocks
    /// in a host call past it.
    pub fn instantiate(&self, plugin: &Plugin) -> Result<(), PluginError> {
        self.trial(plugin, false).map(drop)
    }

    /// [`Self::instantiate`], and with `describe` a quality check's answer to `describe`,
    /// asked in the same instance (once, at load).
    fn trial(&self, plugin: &Plugin, describe: bool) -> Result<Option<CheckInfo>, PluginError> {
        let name = plugin.manifest.name.clone();
        let trap = |message: String| PluginError::Trap {
            plugin: name.clone(),
            message,
        };
        let slot = self.admit(plugin)?;
        let (mut store, timeout) = self
            .new_store(plugin)
            .map_err(|e| trap(format!("cannot instantiate: {e:#}")))?;
        let pre = plugin.pre.clone();
        let worker_name = name.clone();
        let finished = on_plugin_thread(&name, timeout + ABANDON_GRACE, move || {
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &pre {
                Pre::Generator(p) => p.instantiate(&mut store).map(|_| None),
                Pre::Reviewer(p) => p.instantiate(&mut store).map(|_| None),
                Pre::QualityCheck(p) if describe => p
                    .instantiate(&mut store)
                    .and_then(|check| check.call_describe(&mut store))
                    .map(Some),
                Pre::QualityCheck(p) => p.instantiate(&mut store).map(|_| None),
                Pre::ErrorHandler(p) => p.instantiate(&mut store).map(|_| None),
                Pre::ModelErrorHandler(p) => p.instantiate(&mut store).map(|_| None),
            }));
            // Told apart as a call's failures are: a deadline, a memory cap or a fuel budget
            // too small for the start code (or `describe`) is that limit's failure, with its
            // own code and fix, not a load failure.
            let done = match done {
                Ok(done) => done.map_err(|e| {
                    match classify_failure(e, store.data(), worker_name.clone(), timeout) {
                        PluginError::Trap { plugin, message } => PluginError::Trap {
                            plugin,
                            message: format!("cannot instantiate: {message}"),
                        },
                        limit => limit,
                    }
                }),
                Err(_) => Err(PluginError::Trap {
                    plugin: worker_name,
                    message: "the host panicked while instantiating the plugin".into(),
                }),
            };
            // As after a call: the instance goes back to the pool before the slot does.
            drop(store);
            drop(slot);
            done
        });
        match finished {
            Ok(Some(done)) => done,
            Ok(None) => Err(PluginError::Timeout {
                plugin: name.clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Err(e) => Err(trap(format!("cannot start a plugin thread: {e}"))),
        }
    }

    pub fn generate(
        &self,
        plugin: &Arc<Plugin>,
        req: &GenerationRequest,
        ctx: &CallContext,
    ) -> (Result<CodeArtifact, PluginError>, CallStats) {
        let req = req.clone();
        self.call(
            plugin,
            ctx,
            move |pre, store| match pre {
                Pre::Generator(p) => p.instantiate(&mut *store)?.call_generate(&mut *store, &req),
                _ => Err(wrong_world(World::Generator)),
            },
            output::check_artifact,
        )
    }

    pub fn review(
        &self,
        plugin: &Arc<Plugin>,
        req: &ReviewRequest,
        ctx: &CallContext,
    ) -> (Result<Review, PluginError>, CallStats) {
        let req = req.clone();
        self.call(
            plugin,
            ctx,
            move |pre, store| match pre {
                Pre::Reviewer(p) => p.instantiate(&mut *store)?.call_review(&mut *store, &req),
                _ => Err(wrong_world(World::Reviewer)),
            },
            output::check_review,
        )
    }

    pub fn check(
        &self,
        plugin: &Arc<Plugin>,
        artifact: &CodeArtifact,
        ctx: &CallContext,
    ) -> (Result<Vec<Finding>, PluginError>, CallStats) {
        let artifact = artifact.clone();
        self.call(
            plugin,
            ctx,
            move |pre, store| match pre {
                Pre::QualityCheck(p) => p
                    .instantiate(&mut *store)?
                    .call_check(&mut *store, &artifact),
                _ => Err(wrong_world(World::QualityCheck)),
            },
            |f: &mut Vec<Finding>| output::check_findings(f),
        )
    }

    /// Ask an error handler of either world what to do about `error`. `models` are the models
    /// the failed stage could run on (only a `model-error-handler` sees them); a handler that
    /// picks a model not among them returned an unusable result.
    pub fn handle_error(
        &self,
        plugin: &Arc<Plugin>,
        error: &PipelineError,
        retries_left: u32,
        models: &[ModelOption],
        ctx: &CallContext,
    ) -> (Result<Decision, PluginError>, CallStats) {
        let error = error.clone();
        let offered = models.to_vec();
        let offered_ids: Vec<String> = models.iter().map(|m| m.id.clone()).collect();
        let (decided, stats) = self.call(
            plugin,
            ctx,
            move |pre, store| match pre {
                Pre::ErrorHandler(p) => {
                    let recovery =
                        p.instantiate(&mut *store)?
                            .call_handle(&mut *store, &error, retries_left)?;
                    Ok(Ok(Decision {
                        recovery,
                        model: None,
                    }))
                }
                Pre::ModelErrorHandler(p) => {
                    let answer = p.instantiate(&mut *store)?.call_handle(
                        &mut *store,
                        &error,
                        retries_left,
                        &offered,
                    )?;
                    Ok(Ok(match answer {
                        ModelRecovery::Retry(plan) => Decision {
                            recovery: Recovery::Retry(plan),
                            model: None,
                        },
                        ModelRecovery::RetryOn(to) => Decision {
                            recovery: Recovery::Retry(to.plan),
                            model: Some(to.model),
                        },
                        ModelRecovery::Fallback(why) => Decision {
                            recovery: Recovery::Fallback(why),
                            model: None,
                        },
                        ModelRecovery::Abort(why) => Decision {
                            recovery: Recovery::Abort(why),
                            model: None,
                        },
                    }))
                }
                _ => Err(wrong_world(World::ErrorHandler)),
            },
            move |d: &mut Decision| match &d.model {
                Some(m) if !offered_ids.contains(m) => Err(format!(
                    "asked to retry on model {m:?}, which was not offered (offered: {offered_ids:?})"
                )),
                _ => Ok(()),
            },
        );
        let decided = decided.map(|d| Decision {
            recovery: output::clip_recovery(d.recovery),
            ..d
        });
        (decided, stats)
    }

    /// The models a stage run by `plugin` could use, in the host's order, marking the one its
    /// `llm` calls that name no model run on (`chosen`, else the host's default). Empty for
    /// plugins without model access.
    pub fn model_options(&self, plugin: &Plugin, chosen: Option<&str>) -> Vec<ModelOption> {
        let Some(engine) = self
            .models
            .as_ref()
            .filter(|_| plugin.manifest.world.uses_llm())
        else {
            return Vec::new();
        };
        let current = engine.model(chosen).ok().map(|m| m.info.id.clone());
        engine
            .models()
            .iter()
            .filter(|m| plugin.granted.allows_model(&m.info.id))
            .map(|m| ModelOption {
                id: m.info.id.clone(),
                architecture: m.info.architecture.clone(),
                context_length: m.info.context_length,
                current: current.as_deref() == Some(m.info.id.as_str()),
            })
            .collect()
    }
}

/// The WASI context of one call: only the granted environment variables, folders and hosts.
fn wasi_context(
    granted: &Granted,
    deadline: Instant,
    output: &output_tail::OutputTail,
) -> wasmtime::Result<wasmtime_wasi::WasiCtx> {
    let mut builder = wasmtime_wasi::WasiCtx::builder();
    builder.monotonic_clock(host_clocks::CallClock);
    // Kept for the message of a trap (a traceback, a panic message), nowhere else.
    builder.stdout(output.clone()).stderr(output.clone());
    for name in &granted.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for folder in &granted.folders {
        let perms = match folder.access {
            manifest::Access::ReadOnly => wasmtime_wasi::FsPerms::ReadOnly,
            manifest::Access::ReadWrite => wasmtime_wasi::FsPerms::ReadWrite,
        };
        builder.preopened_dir(&folder.host, &folder.path, perms)?;
    }
    // No name lookups, granted hosts or not: WASI's lookup cannot be limited to the granted
    // names, and a lookup of any name reaches the DNS resolver (a channel out of the sandbox).
    // wasi:http requests are resolved by the host after their name is checked.
    builder.allow_udp(false).allow_ip_name_lookup(false);
    if granted.hosts.is_empty() {
        builder.allow_tcp(false);
    } else {
        let allowed = Arc::new(grants::GrantedHosts::new(
            &granted.hosts,
            granted.internal_hosts,
            deadline,
        ));
        builder
            .allow_tcp(true)
            .socket_addr_check(move |addr, use_| {
                let allowed = allowed.clone();
                Box::pin(async move { allowed.allow(addr, use_).await })
            });
    }
    Ok(builder.build())
}

fn wrong_world(expected: World) -> wasmtime::Error {
    wasmtime::Error::msg(format!("plugin does not implement the {expected} world"))
}

/// Advance `engine`'s epoch every `tick` on a thread of its own, the clock epoch deadlines
/// count in. The thread holds only a weak handle, so it ends when the engine is dropped.
/// Run `work` on a plugin thread (its stack has room for the guest's, whichever thread asks)
/// and wait at most `wait` for it: `Ok(None)` when it has not finished by then, the thread
/// abandoned to finish on its own (a plugin blocked in a host call the epoch cannot interrupt).
fn on_plugin_thread<T: Send + 'static>(
    name: &str,
    wait: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Option<T>> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("plugin-{name}"))
        .stack_size(PLUGIN_THREAD_STACK)
        .spawn(move || {
            let _ = done_tx.send(work());
        })?;
    Ok(done_rx.recv_timeout(wait).ok())
}

/// What a plugin's epoch check does at `now`: stop it past its `deadline`, else look again at
/// the next tick.
fn at_epoch(now: Instant, deadline: Instant) -> wasmtime::UpdateDeadline {
    if now >= deadline {
        wasmtime::UpdateDeadline::Interrupt
    } else {
        wasmtime::UpdateDeadline::Continue(1)
    }
}

pub(crate) fn spawn_epoch_ticker(
    engine: &wasmtime::Engine,
    name: &str,
    tick: Duration,
) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(tick);
            }
        })
        .map(|_| ())
}

/// Name what went wrong: the deadline, the memory cap, an oversized result, or a trap with its
/// message.
fn classify_failure(
    e: wasmtime::Error,
    state: &PluginState,
    plugin: String,
    timeout: Duration,
) -> PluginError {
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PluginError::Timeout {
            plugin,
            timeout_ms: timeout.as_millis() as u64,
        };
    }
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
        return PluginError::Fuel {
            plugin,
            fuel: state.granted.fuel.unwrap_or(u64::MAX),
        };
    }
    if state.limiter.hit {
        return PluginError::Memory {
            plugin,
            limit_mb: (state.limiter.max_bytes >> 20) as u64,
        };
    }
    let message = match e.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}"),
        None => format!("{e:#}"),
    };
    // wasmtime stops data too large to copy out of the guest (its host-call fuel) before our
    // own limits see it: a result, or the arguments of a host call; which, it does not say.
    if message.contains("too much data is being copied") {
        return PluginError::Output {
            plugin,
            message: format!(
                "the plugin handed the host more than it accepts at once ({} MiB): a result, \
                 or the arguments of one host call",
                HOSTCALL_FUEL >> 20
            ),
        };
    }
    // The plugin's own last words: a Python traceback, a Rust panic message.
    let message = match state.output.text() {
        Some(said) => format!("{message}; the plugin's output ended with: {said}"),
        None => message,
    };
    PluginError::Trap { plugin, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_is_stopped_by_the_clock_however_many_ticks_passed() {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(20);
        // Before the deadline: look again at the next tick, whether the ticker ran late or not.
        assert!(matches!(
            at_epoch(start, deadline),
            wasmtime::UpdateDeadline::Continue(1)
        ));
        assert!(matches!(
            at_epoch(deadline - Duration::from_millis(1), deadline),
            wasmtime::UpdateDeadline::Continue(1)
        ));
        // At or past it: stopped, on the first tick that looks.
        for now in [deadline, deadline + Duration::from_millis(1700)] {
            assert!(matches!(
                at_epoch(now, deadline),
                wasmtime::UpdateDeadline::Interrupt
            ));
        }
    }
}
