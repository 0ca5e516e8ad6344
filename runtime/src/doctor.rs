//! `agentrt doctor`: the diagnostics the replaced system's operators ran by hand, in one
//! command. Each check says `ok`, `warn` (works, but look) or `fail` (will not work); the
//! command exits non-zero when any check fails.
//!
//! Resources (CPUs, memory, disk under `$AGENTRT_HOME`), the listen port, the model files and
//! their recorded SHA-256, the GPU against the device asked for (`--device cuda` without a usable
//! GPU fails: no local model would load), the Python test sandbox's interpreter, the run store
//! (integrity, runs a stopped server left unfinished, whether a server holds it), and every
//! plugin: it must instantiate and pass its self-test ([`crate::plugin::self_test`]; generators
//! and reviewers only instantiate, as doctor loads no model).
//!
//! A failed report ends the command with the error code of its first failed check
//! ([`Report::failure`]), the code the same problem has elsewhere (`MODEL_001` for a model or a
//! device, `STORE_001`, `PLUGIN_002`, `VAL_002` for the config or the listen address).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::engine::Device;
use crate::error_code::ErrorCode;
use crate::pipeline::Pipeline;
use crate::store::{LockRole, RunState, RunStore, Store, StoreLock};

/// Below this much available memory the default model still loads, but little else fits.
const LOW_MEMORY_BYTES: u64 = 1 << 30;
/// Below this much free disk, the compile cache and the run store may not fit.
const LOW_DISK_BYTES: u64 = 2 << 30;
/// Below this free where the store lives, `serve` cannot write it.
const STORE_FULL_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

/// The checks run so far.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn add(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
        });
    }

    /// One line per check: `ok  `, `WARN` or `FAIL`, its name and what it found.
    pub fn print(&self) {
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            println!("{mark} {}: {}", c.name, c.detail);
        }
    }

    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    /// What the command ends with when a check failed: the code of the first failed check
    /// (the one to fix first) and a message naming every failed check; `None` when none failed.
    pub fn failure(&self) -> Option<(ErrorCode, String)> {
        let failed: Vec<&Check> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect();
        let first = failed.first()?;
        let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
        Some((
            failure_code(&first.name),
            format!(
                "{} of {} checks failed: {}",
                failed.len(),
                self.checks.len(),
                names.join(", ")
            ),
        ))
    }

    /// CPUs, memory and free disk where agentrt keeps its files.
    pub fn resources(&mut self, home: &Path) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.add("resources.cpus", Status::Ok, format!("{cpus} available"));
        match meminfo() {
            Some((total, available)) => {
                let status = if available < LOW_MEMORY_BYTES {
                    Status::Warn
                } else {
                    Status::Ok
                };
                self.add(
                    "resources.memory",
                    status,
                    format!("{} MiB available of {} MiB", available >> 20, total >> 20),
                );
            }
            None => self.add("resources.memory", Status::Warn, "/proc/meminfo unreadable"),
        }
        match disk_free(home) {
            Some(free) => {
                let status = if free < LOW_DISK_BYTES {
                    Status::Warn
                } else {
                    Status::Ok
                };
                self.add(
                    "resources.disk",
                    status,
                    format!("{} MiB free under {}", free >> 20, home.display()),
                );
            }
            None => self.add(
                "resources.disk",
                Status::Warn,
                format!("free space under {} unknown (no df)", home.display()),
            ),
        }
    }

    /// Whether `agentrt serve` could listen on `addr`. Taken by an agentrt server that answers
    /// there (`GET /health`: already serving) is a warning — also when binding was
    /// refused for want of privilege (a port below 1024 answers `EACCES` before it says it is
    /// in use; the server may hold the capability this user lacks); any other reason `serve`
    /// could not bind — an address this host does not have, a privileged port nothing serves,
    /// a port held by a socket that does not answer — is a failure.
    pub fn port(&mut self, addr: SocketAddr) {
        use std::io::ErrorKind::{AddrInUse, PermissionDenied};
        let (status, detail) = match std::net::TcpListener::bind(addr) {
            Ok(_) => (Status::Ok, format!("{addr} is free")),
            Err(e) if matches!(e.kind(), AddrInUse | PermissionDenied) && answers(addr) => {
                if answers_as_agentrt(addr) {
                    (
                        Status::Warn,
                        format!(
                            "{addr} is taken ({e}): an agentrt server is already listening there"
                        ),
                    )
                } else {
                    (
                        Status::Fail,
                        format!(
                            "{addr} is taken ({e}) by another program (it does not answer as \
                             agentrt): agentrt serve could not listen there"
                        ),
                    )
                }
            }
            Err(e) => (
                Status::Fail,
                format!("{addr} cannot be used: {e}; agentrt serve could not listen there"),
            ),
        };
        self.add("port", status, detail);
    }

    /// Each model file exists and, where a `FILE.sha256` was recorded (by scripts/setup.sh),
    /// still has that SHA-256.
    pub fn models(&mut self, paths: &[std::path::PathBuf]) {
        for path in paths {
            let name = format!("model {}", path.display());
            let entry = path.to_string_lossy();
            if crate::engine::remote::is_remote(&entry) {
                // A model another server serves: it must answer with the model it names.
                match crate::engine::ServedModel::remote(&entry, None) {
                    Ok(m) => self.add(
                        name,
                        Status::Ok,
                        format!(
                            "served by {} ({} positions)",
                            m.info.device, m.info.context_length
                        ),
                    ),
                    Err(e) => self.add(name, Status::Fail, format!("{} {e}", e.code().as_str())),
                }
                continue;
            }
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) => {
                    self.add(
                        name,
                        Status::Fail,
                        format!("missing ({e}); scripts/setup.sh fetches the default model"),
                    );
                    continue;
                }
            };
            if meta.is_dir() {
                // The files are there, then what loading checks before the weights.
                let checked = match hf_folder_problem(path) {
                    None => crate::engine::LoadedModel::check_files(path)
                        .map_err(|e| format!("cannot be loaded: {e}")),
                    Some(why) => Err(why),
                };
                match checked {
                    Ok(architecture) => self.add(
                        name,
                        Status::Ok,
                        format!(
                            "Hugging Face folder ({architecture}: config.json, tokenizer.json, \
                             safetensors weights)"
                        ),
                    ),
                    Err(why) => self.add(name, Status::Fail, why),
                }
                continue;
            }
            // A checksum recorded by scripts/setup.sh says most: damaged or replaced.
            let checksum = match recorded_checksum(path) {
                Ok(checksum) => checksum,
                Err(why) => {
                    self.add(name, Status::Fail, why);
                    continue;
                }
            };
            // Then the header, every tensor's place in the file, the architecture, tokenizer
            // and configuration: a truncated, foreign or unsupported file fails here as it
            // would at load, without reading the weights.
            let architecture = match crate::engine::LoadedModel::check_files(path) {
                Ok(architecture) => architecture,
                Err(e) => {
                    self.add(name, Status::Fail, format!("cannot be loaded: {e}"));
                    continue;
                }
            };
            let size = meta.len() >> 20;
            self.add(
                name,
                Status::Ok,
                match checksum {
                    Some(sum) => {
                        format!("{size} MiB GGUF ({architecture}), SHA-256 {sum} as recorded")
                    }
                    None => format!(
                        "{size} MiB GGUF ({architecture}), header and tensors in place (no \
                         recorded checksum to compare)"
                    ),
                },
            );
        }
    }

    /// Whether the models can run on the device asked for (`--device` / `AGENTRT_DEVICE`).
    /// `local_models`: whether any model is loaded here (a remote model runs on its server,
    /// whatever the device says).
    pub fn gpu(&mut self, device: Device, local_models: bool) {
        let (status, detail) =
            gpu_verdict(device, local_models, cfg!(feature = "cuda"), cuda_devices());
        self.add("gpu", status, detail);
    }

    /// The interpreter the Python sandbox runs generated tests with (`python.wasm`). Without it
    /// the server still serves (it logs that generated tests will not run, and the pipeline goes
    /// on without them), so a missing or unusable file is a warning, not a failure.
    pub fn sandbox(&mut self, python_wasm: &Path) {
        let name = "python sandbox";
        let fix = "generated tests will not run and plugins granted run-python cannot run any; \
                   scripts/setup.sh fetches it (AGENTRT_PYTHON_WASM names another file)";
        let mut magic = [0u8; 4];
        let read = std::fs::File::open(python_wasm).and_then(|mut f| {
            use std::io::Read;
            f.read_exact(&mut magic)?;
            f.metadata()
        });
        match read {
            Ok(meta) if magic == *b"\0asm" => self.add(
                name,
                Status::Ok,
                format!("{} ({} MiB)", python_wasm.display(), meta.len() >> 20),
            ),
            Ok(_) => self.add(
                name,
                Status::Warn,
                format!(
                    "{} is not a WebAssembly module: {fix}",
                    python_wasm.display()
                ),
            ),
            Err(e) => self.add(
                name,
                Status::Warn,
                format!("{} unreadable ({e}): {fix}", python_wasm.display()),
            ),
        }
    }

    /// The run store (an SQLite file or a `postgres://` URL): reachable, integrity, and runs a
    /// stopped server left unfinished.
    pub fn store(&mut self, location: &str) {
        if crate::store::postgres::is_postgres_url(location) {
            match crate::store::open_shared(location) {
                // Unfinished runs are other hosts' work in progress, not a problem here.
                Ok(store) => self.store_health(&*store, None),
                Err(e) => self.add("store", Status::Fail, e.to_string()),
            }
            return;
        }
        let path = Path::new(location);
        // A restore moves the file and its log: looked at then, the store could be caught
        // between the two, and closing the look would fold a log the restore is moving.
        // Looked at, not taken: the doctor leaves no lock file beside what it examines.
        let holder = StoreLock::held(path);
        if let Some(holder) = holder.as_ref().filter(|h| h.role == LockRole::Restore) {
            self.add(
                "store",
                Status::Warn,
                format!(
                    "{}: {holder} is replacing this store; not looked at (run doctor again \
                     once it has finished)",
                    path.display()
                ),
            );
            return;
        }
        self.store_disk(path);
        if !path.exists() {
            if holder.is_some() {
                self.add(
                    "store",
                    Status::Fail,
                    format!(
                        "{}: a running server holds this store but its file is missing \
                         (deleted while it ran? the server writes it again within seconds: \
                         check again)",
                        path.display()
                    ),
                );
                return;
            }
            match can_create_in(path) {
                Ok(()) => self.add(
                    "store",
                    Status::Ok,
                    format!("none yet at {} (created by agentrt serve)", path.display()),
                ),
                Err(e) => self.add(
                    "store",
                    Status::Fail,
                    format!("cannot create the store at {}: {e}", path.display()),
                ),
            }
            return;
        }
        // The doctor leaves an older build's store as it is (upgrading it would keep that
        // build from reading it).
        let in_use = holder.is_some();
        // A warning, not a failure: doctor may run as another user than the server (one that
        // may read the store, not write it), and the integrity check below still runs.
        if let Err(e) = writable(path) {
            self.add(
                "store access",
                Status::Warn,
                format!(
                    "this user cannot write the store ({e}); serve must run as a user who can \
                     write it and its folder, on a file system mounted writable"
                ),
            );
        }
        match Store::open_to_examine(path) {
            // A file without the tables (made empty by hand): nothing to look at yet.
            Ok((_, 0)) => self.add(
                "store",
                Status::Ok,
                format!("{} holds no runs yet", path.display()),
            ),
            Ok((store, version)) => {
                self.store_health(&store, Some(in_use));
                if version < crate::store::SCHEMA_VERSION {
                    self.add(
                        "store schema",
                        Status::Warn,
                        format!(
                            "{} has schema {version}, written by an older agentrt: the next \
                             `agentrt serve` of this build upgrades it to {}, after which older \
                             builds refuse it (back it up first to keep the way back)",
                            path.display(),
                            crate::store::SCHEMA_VERSION
                        ),
                    );
                }
            }
            Err(e) => self.add("store", Status::Fail, e.to_string()),
        }
    }

    /// Free space where the SQLite store at `path` lives (which may not be `$AGENTRT_HOME`'s
    /// disk): on a full one `serve` cannot start, nor store runs.
    fn store_disk(&mut self, path: &Path) {
        let dir = existing_ancestor(path.parent().unwrap_or(Path::new("")));
        // Without `df` the resources check already says free space is unknown.
        if let Some(free) = disk_free(dir) {
            self.store_disk_with(dir, free);
        }
    }

    /// [`Report::store_disk`] for `free` bytes under `dir`.
    fn store_disk_with(&mut self, dir: &Path, free: u64) {
        let (status, advice) = if free < STORE_FULL_BYTES {
            (
                Status::Fail,
                ": serve cannot write the store there; free space on that disk",
            )
        } else if free < LOW_DISK_BYTES {
            (Status::Warn, "")
        } else {
            (Status::Ok, "")
        };
        self.add(
            "store disk",
            status,
            format!("{} MiB free under {}{advice}", free >> 20, dir.display()),
        );
    }

    /// Integrity and run counts of an open store. `in_use`: whether a server holds this file
    /// (`None` for a database several hosts share, where unfinished runs are work in
    /// progress); runs left unfinished with no server on the file are a warning (the next start
    /// fails them).
    fn store_health(&mut self, store: &dyn RunStore, in_use: Option<bool>) {
        match store.check_integrity() {
            Ok(Ok(())) => {}
            Ok(Err(problems)) => {
                self.add("store", Status::Fail, problems.join("; "));
                return;
            }
            Err(e) => {
                self.add("store", Status::Fail, e.to_string());
                return;
            }
        }
        let counts = store.count_by_state().unwrap_or_default();
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let unfinished: usize = counts
            .iter()
            .filter(|(s, _)| !s.is_final())
            .map(|(_, n)| n)
            .sum();
        let summary = counts
            .iter()
            .map(|(s, n)| format!("{n} {}", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let in_state = |state: RunState| {
            counts
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        let (status, detail) = if unfinished > 0 && in_use == Some(false) {
            let (running, queued) = (in_state(RunState::Running), in_state(RunState::Queued));
            let mut left = Vec::new();
            if running > 0 {
                left.push(format!(
                    "{running} left running by a server that stopped, to be marked failed \
                     (RUN_002) at the next start"
                ));
            }
            if queued > 0 {
                left.push(format!(
                    "{queued} accepted and not started, to run at the next start"
                ));
            }
            (
                Status::Warn,
                format!("{total} runs ({summary}); {}", left.join("; ")),
            )
        } else {
            let who = match in_use {
                Some(true) => "in use by a running server",
                Some(false) => "no server running",
                None => "shared by the hosts that use it",
            };
            (
                Status::Ok,
                format!(
                    "{}: {}; integrity ok; {who}",
                    store.location(),
                    if total == 0 {
                        "no runs yet".to_string()
                    } else {
                        format!("{total} runs ({summary})")
                    }
                ),
            )
        };
        self.add("store", status, detail);
    }

    /// Every plugin instantiates and passes its self-test ([`crate::plugin::self_test`]).
    /// The API keys `serve` would read (`AGENTRT_API_KEYS`, and the file): the same checks.
    pub fn api_keys(&mut self, file: Option<&Path>) {
        let name = "api keys";
        let from = match file {
            Some(file) => format!(" (AGENTRT_API_KEYS and {})", file.display()),
            None => " (AGENTRT_API_KEYS)".to_string(),
        };
        match crate::server::auth::ApiKeys::load(file) {
            Ok(keys) if keys.is_empty() => self.add(
                name,
                Status::Ok,
                "none: every route is open (serve --api-keys FILE or AGENTRT_API_KEYS to require keys)",
            ),
            Ok(keys) => {
                let counts = keys.counts();
                self.add(
                    name,
                    Status::Ok,
                    format!("{} user, {} admin{from}", counts.user, counts.admin),
                )
            }
            Err(e) => self.add(name, Status::Fail, format!("{e}; serve refuses to start")),
        }
    }

    pub fn plugins(&mut self, pipeline: &Pipeline) {
        let config = pipeline.host.config();
        let set = pipeline.plugins.current();
        let refused = pipeline.plugins.refused();
        for grant in crate::plugin::registry::unused_grants(&config, &set.all(), &refused) {
            self.add(
                format!("config grants.{grant}"),
                Status::Warn,
                "names no plugin (a plugin's name is the one in its manifest): nothing uses \
                 this grant, and the plugin it was meant for runs without it",
            );
        }
        for plugin in pipeline.plugins.current().all() {
            let name = format!("plugin {}", plugin.manifest.name);
            let world = plugin.manifest.world;
            let started = Instant::now();
            let outcome = crate::plugin::self_test::run(&pipeline.host, &plugin);
            let ms = started.elapsed().as_millis();
            match outcome {
                Ok(detail) => self.add(
                    name,
                    Status::Ok,
                    format!("{world}; self-test: {detail}; {ms} ms"),
                ),
                Err(e) => self.add(
                    name,
                    Status::Fail,
                    format!("{world}; self-test failed: {e}"),
                ),
            }
        }
    }
}

/// How many CUDA devices answer, or why CUDA cannot be used here (the engine's own reason, so
/// doctor and a model load agree).
fn cuda_devices() -> Result<usize, String> {
    #[cfg(feature = "cuda")]
    {
        agentrt_kernels::cuda_available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::engine::device::cuda_unavailable_reason()
            .unwrap_or_else(|| "CUDA is not available".into()))
    }
}

/// The GPU check's status and detail. `--device cuda` without a usable GPU fails when a model
/// is to be loaded here (the load would refuse it); `auto` falls back to the CPU, which is only
/// worth a warning on a build made for a GPU.
fn gpu_verdict(
    device: Device,
    local_models: bool,
    built_with_cuda: bool,
    cuda: Result<usize, String>,
) -> (Status, String) {
    match (device, cuda) {
        (Device::Cuda | Device::Auto, Ok(n)) => (
            Status::Ok,
            format!(
                "CUDA driver found, {n} device(s); models run there (--device {})",
                device.name()
            ),
        ),
        (Device::Cuda, Err(why)) if local_models => (
            Status::Fail,
            format!(
                "--device cuda, but {why}: no model will load (use --device auto or cpu to run on the CPU)"
            ),
        ),
        (Device::Cuda, Err(why)) => (
            Status::Warn,
            format!(
                "--device cuda, but {why}; only remote models are configured, so nothing runs here"
            ),
        ),
        (Device::Cpu, Ok(n)) => (
            Status::Ok,
            format!("models run on the CPU (--device cpu); {n} CUDA device(s) left unused"),
        ),
        (Device::Cpu, Err(_)) => (Status::Ok, "models run on the CPU (--device cpu)".into()),
        (Device::Auto, Err(why)) if built_with_cuda && !local_models => (
            Status::Ok,
            format!("{why}; only remote models are configured, so no GPU is needed"),
        ),
        (Device::Auto, Err(why)) if built_with_cuda => {
            (Status::Warn, format!("{why}; models run on the CPU"))
        }
        (Device::Auto, Err(why)) => (Status::Ok, format!("{why}; models run on the CPU")),
    }
}

/// The SHA-256 recorded beside a model file (`FILE.sha256`, by scripts/setup.sh), checked:
/// `None` when none was recorded, the sum when the file still has it, why not otherwise.
fn recorded_checksum(path: &Path) -> Result<Option<String>, String> {
    let mut sidecar = path.as_os_str().to_owned();
    sidecar.push(".sha256");
    let Ok(recorded) = std::fs::read_to_string(&sidecar) else {
        return Ok(None);
    };
    let want = recorded
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_lowercase();
    match crate::plugin::compile_cache::sha256_file(path).map(|(_, hex)| hex) {
        Ok(got) if got == want => Ok(Some(got)),
        Ok(got) => Err(format!(
            "checksum mismatch: SHA-256 {got}, recorded {want} (damaged or replaced; run scripts/setup.sh)"
        )),
        Err(e) => Err(format!("unreadable: {e}")),
    }
}

/// What keeps an HF folder from loading, if anything: its config, tokenizer and weights files
/// must be there (their contents are checked at load).
fn hf_folder_problem(dir: &Path) -> Option<String> {
    let config = dir.join("config.json");
    match std::fs::read_to_string(&config)
        .map(|text| serde_json::from_str::<serde_json::Value>(&text))
    {
        Err(e) => return Some(format!("no readable config.json: {e}")),
        Ok(Err(e)) => return Some(format!("config.json is not JSON: {e}")),
        Ok(Ok(_)) => {}
    }
    if !dir.join("tokenizer.json").is_file() {
        return Some("no tokenizer.json".into());
    }
    match crate::engine::weights::safetensors_files(dir) {
        Err(_) => {
            Some("no weights: neither model.safetensors nor model.safetensors.index.json".into())
        }
        Ok(files) => files
            .iter()
            .find(|f| !f.is_file())
            .map(|f| format!("weights file {} is missing", f.display())),
    }
}

/// Whether a file can be created where `path` would be: its folder, or the nearest folder
/// above that exists (`agentrt serve` creates the rest), takes a new file. Tried, not guessed
/// from permission bits: a read-only mount or a full disk say no only when asked.
fn can_create_in(path: &Path) -> std::io::Result<()> {
    crate::paths::write_probe(existing_ancestor(path.parent().unwrap_or(Path::new(""))))
}

/// Whether this user may write the existing store at `path` and create files beside it (its
/// write-ahead log): a read-only mount or another user's file is found here, not at `serve`.
#[cfg(not(unix))]
fn writable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn writable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    // Where links lead, as SQLite writes there (and its log beside the real file).
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = existing_ancestor(path.parent().unwrap_or(Path::new("")));
    for target in [path, dir] {
        let name = std::ffi::CString::new(target.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
        // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::access(name.as_ptr(), libc::W_OK) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", target.display()),
            ));
        }
    }
    Ok(())
}

/// `path` if it exists, else the closest folder above it that does (the current folder for a
/// relative path none of whose folders exist).
fn existing_ancestor(path: &Path) -> &Path {
    let mut at = path;
    while !at.as_os_str().is_empty() && !at.exists() {
        at = at.parent().unwrap_or(Path::new(""));
    }
    if at.as_os_str().is_empty() {
        Path::new(".")
    } else {
        at
    }
}

/// The code of a failed check, by its name: the code the same problem gets where it bites
/// (a model load, the store, a plugin load, the config). A listen address `serve` cannot use
/// is the operator's invalid value, as a bad config is.
fn failure_code(check: &str) -> ErrorCode {
    match check.split(' ').next().unwrap_or(check) {
        "model" | "gpu" => ErrorCode::ModelNotAvailable,
        "store" => ErrorCode::StoreFailed,
        "plugin" | "plugins" => ErrorCode::PluginLoad,
        "config" | "port" | "api" => ErrorCode::InvalidInput,
        _ => ErrorCode::Internal,
    }
}

/// Whether something accepts connections at `addr`.
fn answers(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)).is_ok()
}

/// Whether what listens at `addr` answers `GET /health` as agentrt does (a JSON body with
/// `status` and `uptime_seconds`, while starting too).
fn answers_as_agentrt(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(1);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request =
        format!("GET /health HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.take(64 << 10).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let Some((_, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v["status"].is_string() && v["uptime_seconds"].is_u64())
}

/// (total, available) bytes from /proc/meminfo.
pub(crate) fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Free bytes on the file system holding `path` (or its closest existing parent), from `df`.
fn disk_free(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-Pk"])
        .arg(existing_ancestor(path))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_check(addr: SocketAddr) -> Check {
        let mut report = Report::default();
        report.port(addr);
        report.checks.pop().expect("a port check")
    }

    /// Listen on a free port and answer every connection with `body` as `GET /health` would.
    fn fake_server(body: &'static str) -> SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        addr
    }

    #[test]
    fn a_port_an_agentrt_server_answers_on_is_a_warning_and_another_programs_a_failure() {
        let agentrt = fake_server(r#"{"status":"healthy","uptime_seconds":3,"version":"0.1.0"}"#);
        let check = port_check(agentrt);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.detail.contains("an agentrt server"), "{check:?}");
        let other = fake_server("<html>hello</html>");
        let check = port_check(other);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.detail.contains("another program"), "{check:?}");
    }

    fn store_check(path: &Path) -> Check {
        let mut report = Report::default();
        report.store(path.to_str().expect("utf-8 path"));
        report.checks.pop().expect("a store check")
    }

    /// A new empty folder under the temporary folder.
    fn temp_folder(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-doctor-{label}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_full_disk_where_the_store_lives_fails_with_the_stores_code() {
        let dir = temp_folder("disk");
        let mut report = Report::default();
        report.store_disk_with(&dir, 300 << 10);
        report.store_disk_with(&dir, 1 << 30);
        report.store_disk_with(&dir, 50 << 30);
        let statuses: Vec<_> = report.checks.iter().map(|c| c.status).collect();
        assert_eq!(statuses, [Status::Fail, Status::Warn, Status::Ok]);
        let full = &report.checks[0];
        assert!(
            full.detail.contains("free space on that disk")
                && full.detail.contains(&dir.display().to_string()),
            "{full:?}"
        );
        assert_eq!(failure_code(&full.name), ErrorCode::StoreFailed);
        // A store this user can write passes the writability probe; the probe of a folder
        // writes a page, and leaves nothing behind.
        let path = dir.join("agentrt.db");
        std::fs::write(&path, b"").expect("file");
        writable(&path).expect("writable");
        can_create_in(&dir.join("new/agentrt.db")).expect("can create");
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_store_passes_where_it_can_be_created_and_fails_while_a_server_holds_it() {
        let dir = temp_folder("store");
        // Folders still to create are fine: serve creates them. Nothing is left behind.
        let nested = dir.join("a/b/agentrt.db");
        assert_eq!(store_check(&nested).status, Status::Ok);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
        // A server's lock without its file: the file was deleted under it.
        let path = dir.join("agentrt.db");
        let lock = StoreLock::take(&path, crate::store::LockRole::Server).expect("lock");
        let check = store_check(&path);
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.detail.contains("file is missing"), "{check:?}");
        drop(lock);
        assert_eq!(store_check(&path).status, Status::Ok);
        // A restore under way: not looked at (the look could fold a log it is moving).
        let restoring = StoreLock::take(&path, crate::store::LockRole::Restore).expect("lock");
        let check = store_check(&path);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(check.detail.contains("agentrt restore"), "{check:?}");
        assert!(!path.exists(), "nothing opened or created");
        drop(restoring);
        // A folder that takes no file (a file where the folder should be).
        std::fs::write(dir.join("plain"), b"").expect("file");
        let check = store_check(&dir.join("plain/agentrt.db"));
        assert_eq!(check.status, Status::Fail, "{check:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn runs_a_stopped_server_left_are_told_apart_by_what_the_next_start_does_with_them() {
        let dir = temp_folder("unfinished");
        let path = dir.join("agentrt.db");
        {
            let store = Store::open(&path).expect("store");
            for id in ["running", "queued-1", "queued-2"] {
                store
                    .insert_run(id, &serde_json::Value::Null, None)
                    .expect("insert");
            }
            store.set_running("running").expect("running");
        }
        let check = store_check(&path);
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert!(
            check.detail.contains("1 left running") && check.detail.contains("marked failed"),
            "{check:?}"
        );
        assert!(
            check
                .detail
                .contains("2 accepted and not started, to run at the next start"),
            "{check:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_of_an_older_schema_is_examined_as_it_is() {
        let dir = temp_folder("old-schema");
        let path = dir.join("agentrt.db");
        {
            let store = Store::open(&path).expect("store");
            store
                .insert_run("old", &serde_json::Value::Null, None)
                .expect("insert");
            store
                .execute_for_test(
                    "DROP INDEX runs_by_submitter; ALTER TABLE runs DROP COLUMN submitted_by; \
                     PRAGMA user_version = 1",
                )
                .expect("back to schema 1");
        }
        let mut report = Report::default();
        report.store(path.to_str().expect("utf-8"));
        let statuses: Vec<(&str, Status)> = report
            .checks
            .iter()
            .filter(|c| c.name != "store disk")
            .map(|c| (c.name.as_str(), c.status))
            .collect();
        assert_eq!(
            statuses,
            [("store", Status::Warn), ("store schema", Status::Warn)],
            "{:?}",
            report.checks
        );
        // Left as it was: schema 1, no column added.
        let conn = rusqlite::Connection::open(&path).expect("open");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, 1);
        assert!(conn.prepare("SELECT submitted_by FROM runs").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A GGUF file of one 32-wide f32 tensor, whole or cut before the tensor's data.
    fn one_tensor_gguf(whole: bool) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(0u64.to_le_bytes()); // metadata keys
        b.extend(1u64.to_le_bytes());
        b.extend(b"w");
        b.extend(1u32.to_le_bytes()); // dimensions
        b.extend(32u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // f32
        b.extend(0u64.to_le_bytes()); // offset in the data
        if whole {
            b.resize(b.len().div_ceil(32) * 32 + 32 * 4, 0);
        }
        b
    }

    #[test]
    fn model_files_that_cannot_load_fail_without_a_recorded_checksum() {
        let dir = temp_folder("models");
        let whole = dir.join("whole.gguf");
        let cut = dir.join("cut.gguf");
        let garbage = dir.join("garbage.gguf");
        let hf = dir.join("hf");
        std::fs::write(&whole, one_tensor_gguf(true)).expect("write");
        std::fs::write(&cut, one_tensor_gguf(false)).expect("write");
        std::fs::write(&garbage, b"garbage\n").expect("write");
        std::fs::create_dir_all(&hf).expect("hf");
        std::fs::write(hf.join("config.json"), b"{}").expect("config");
        let mut report = Report::default();
        report.models(&[whole, cut, garbage, hf.clone()]);
        let statuses: Vec<Status> = report.checks.iter().map(|c| c.status).collect();
        // A whole file that is not a model (one tensor, no tokenizer or configuration) fails
        // as loading it would.
        assert_eq!(
            statuses,
            [Status::Fail, Status::Fail, Status::Fail, Status::Fail],
            "{:?}",
            report.checks
        );
        assert!(
            report.checks[0].detail.contains("cannot be loaded"),
            "{:?}",
            report.checks[0]
        );
        assert!(
            report.checks[1].detail.contains("lies outside the file"),
            "{:?}",
            report.checks[1]
        );
        assert!(
            report.checks[3].detail.contains("tokenizer.json"),
            "{:?}",
            report.checks[3]
        );
        // Files by the right names are not enough: their contents are checked as loading
        // checks them, short of reading the weights.
        std::fs::write(hf.join("tokenizer.json"), b"{}").expect("tokenizer");
        std::fs::write(hf.join("model.safetensors"), b"").expect("weights");
        let mut report = Report::default();
        report.models(std::slice::from_ref(&hf));
        assert_eq!(report.checks[0].status, Status::Fail, "{:?}", report.checks);
        // A real checkpoint passes; the same with an architecture the engine lacks fails.
        let _ = std::fs::remove_dir_all(&hf);
        crate::engine::synthetic::SyntheticSpec {
            arch: crate::engine::models::Architecture::Llama,
            n_layer: 1,
            dim: 64,
            n_head: 4,
            n_kv_head: 2,
            ffn_dim: 128,
            vocab: 320,
            context: 128,
            dtype: crate::engine::quant::GgmlType::F32,
            separate_head: false,
            seed: 3,
        }
        .write(&hf)
        .expect("checkpoint");
        let mut report = Report::default();
        report.models(std::slice::from_ref(&hf));
        assert_eq!(report.checks[0].status, Status::Ok, "{:?}", report.checks);
        let config = hf.join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).expect("read")).expect("json");
        json["model_type"] = "mamba".into();
        std::fs::write(&config, json.to_string()).expect("write");
        let mut report = Report::default();
        report.models(&[hf]);
        assert_eq!(report.checks[0].status, Status::Fail, "{:?}", report.checks);
        assert!(
            report.checks[0].detail.contains("\"mamba\"")
                && report.checks[0].detail.contains("in "),
            "{:?}",
            report.checks[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// 192.0.2.1 is TEST-NET-1, never an address of this host: `serve` could not bind it.
    #[test]
    fn an_address_this_host_does_not_have_is_a_failure() {
        let check = port_check("192.0.2.1:8080".parse().expect("address"));
        assert_eq!(check.status, Status::Fail, "{check:?}");
    }

    fn gpu_check(device: Device, local_models: bool) -> Check {
        let mut report = Report::default();
        report.gpu(device, local_models);
        report.checks.pop().expect("a gpu check")
    }

    /// `--device cuda` where CUDA cannot be used fails, as loading a model would; this build
    /// and machine decide which way it goes, and the check agrees with the engine.
    #[test]
    fn device_cuda_without_cuda_fails_the_gpu_check() {
        let check = gpu_check(Device::Cuda, true);
        match crate::engine::device::cuda_unavailable_reason() {
            Some(why) => {
                assert_eq!(check.status, Status::Fail, "{check:?}");
                assert!(check.detail.contains(&why), "{check:?}");
            }
            None => assert_eq!(check.status, Status::Ok, "{check:?}"),
        }
        assert_ne!(gpu_check(Device::Cpu, true).status, Status::Fail);
        assert_ne!(gpu_check(Device::Auto, true).status, Status::Fail);
        assert_ne!(gpu_check(Device::Cuda, false).status, Status::Fail);
    }

    #[test]
    fn the_gpu_verdict_follows_the_device_asked_for() {
        let none = || Err::<usize, String>("no CUDA driver library".into());
        let verdict = |device: Device, local: bool, built: bool, cuda: Result<usize, String>| {
            gpu_verdict(device, local, built, cuda).0
        };
        assert_eq!(verdict(Device::Cuda, true, true, none()), Status::Fail);
        assert_eq!(verdict(Device::Cuda, true, false, none()), Status::Fail);
        assert_eq!(verdict(Device::Cuda, false, true, none()), Status::Warn);
        assert_eq!(verdict(Device::Cuda, true, true, Ok(1)), Status::Ok);
        assert_eq!(verdict(Device::Auto, true, true, none()), Status::Warn);
        assert_eq!(verdict(Device::Auto, true, false, none()), Status::Ok);
        // Remote models alone need no GPU, whatever the build.
        assert_eq!(verdict(Device::Auto, false, true, none()), Status::Ok);
        assert_eq!(verdict(Device::Cpu, true, true, none()), Status::Ok);
    }

    #[test]
    fn a_missing_or_bogus_python_wasm_is_a_warning() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-doctor-sandbox-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let sandbox_check = |path: &Path| {
            let mut report = Report::default();
            report.sandbox(path);
            report.checks.pop().expect("a sandbox check")
        };
        let missing = sandbox_check(&dir.join("python.wasm"));
        assert_eq!(missing.status, Status::Warn, "{missing:?}");
        assert!(missing.detail.contains("scripts/setup.sh"), "{missing:?}");
        let bogus = dir.join("bogus.wasm");
        std::fs::write(&bogus, b"not wasm at all").expect("write");
        assert_eq!(sandbox_check(&bogus).status, Status::Warn);
        let module = dir.join("module.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").expect("write");
        let found = sandbox_check(&module);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.status, Status::Ok, "{found:?}");
    }

    /// The keys file is checked as `serve` reads it: a key `serve` would refuse fails the
    /// doctor (with the config's code), instead of the server failing at its start.
    #[test]
    fn api_keys_are_checked_as_serve_reads_them() {
        let file = std::env::temp_dir().join(format!("agentrt-doctor-keys-{}", std::process::id()));
        std::fs::write(&file, "user aaaaaaaaaaaaaaaa\nuser short\n").expect("write");
        let mut report = Report::default();
        report.api_keys(Some(&file));
        let check = &report.checks[0];
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(
            check
                .detail
                .contains("line 2: keys must be at least 16 characters"),
            "{check:?}"
        );
        assert_eq!(report.failure().map(|f| f.0), Some(ErrorCode::InvalidInput));
        std::fs::write(
            &file,
            "user aaaaaaaaaaaaaaaa # alice\nadmin bbbbbbbbbbbbbbbb\n",
        )
        .expect("write");
        let mut report = Report::default();
        report.api_keys(Some(&file));
        assert_eq!(report.checks[0].status, Status::Ok, "{:?}", report.checks);
        assert!(report.checks[0].detail.starts_with("1 user, 1 admin"));
        let _ = std::fs::remove_file(&file);
    }

    /// A failed report ends with the code of its first failed check, not `INTERNAL`.
    #[test]
    fn a_failed_report_carries_the_first_failed_checks_code() {
        let mut report = Report::default();
        report.add("resources.cpus", Status::Ok, "4 available");
        report.add("gpu", Status::Warn, "no driver");
        assert!(report.failure().is_none());
        report.add("port", Status::Fail, "192.0.2.1:8080 cannot be used");
        report.add("model /m.gguf", Status::Fail, "missing");
        let (code, message) = report.failure().expect("failed");
        assert_eq!(code, ErrorCode::InvalidInput);
        assert!(
            message.contains("2 of 4 checks failed: port, model /m.gguf"),
            "{message}"
        );
        for (name, code) in [
            ("model /m.gguf", ErrorCode::ModelNotAvailable),
            ("gpu", ErrorCode::ModelNotAvailable),
            ("store", ErrorCode::StoreFailed),
            ("plugin generator", ErrorCode::PluginLoad),
            ("plugins", ErrorCode::PluginLoad),
            ("config", ErrorCode::InvalidInput),
        ] {
            assert_eq!(failure_code(name), code, "{name}");
        }
    }
}
