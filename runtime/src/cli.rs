//! Command-line interface: `serve` and the same jobs one-off (`generate`, `review`, `check`,
//! `chat`), listings (`plugins list`, `models list`), `eval` and `bench`.
//!
//! Output is for people by default; `--json` prints the same JSON the HTTP API returns.

mod eval;
mod progress;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;
use crate::engine::{Engine, LoadedModel, ServedModel};
use crate::error_code::ErrorCode;
use crate::pipeline::{FindingOut, Pipeline, PipelineRequest};
use crate::plugin::PluginHost;
use crate::plugin::bindings::CodeArtifact;
use crate::plugin::compile_cache::CompileCache;
use crate::plugin::registry::{LivePlugins, load_plugins};
use crate::plugin::reload::Reloader;
use crate::sandbox::FileNames;
use crate::stats::Stats;

/// A failure of a command: an error code and a message for the terminal.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CliError {
    pub code: &'static str,
    pub message: String,
}

impl CliError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_str(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "agentrt",
    version,
    about = "Local runtime for a team of code-generating agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command that loads models and plugins.
#[derive(Debug, Args, Clone)]
pub struct RuntimeOpts {
    /// Model: a GGUF file or an HF folder with safetensors weights (repeat for several; the
    /// first is the default). Default: the SmolLM2 model fetched by scripts/setup.sh.
    #[arg(long = "model", env = "AGENTRT_MODEL", global = true)]
    pub models: Vec<PathBuf>,
    /// Folder of plugins (NAME.wasm + NAME.toml) that replace or add to the defaults.
    #[arg(long, env = "AGENTRT_PLUGINS", global = true)]
    pub plugins: Option<PathBuf>,
    /// Operator config (TOML): plugin limits and what each plugin is granted.
    #[arg(long, env = "AGENTRT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Where models run: `cpu`, `cuda` (an error without a usable GPU), or `auto` (the GPU
    /// when this binary was built with the `cuda` feature and one answers).
    #[arg(long, env = "AGENTRT_DEVICE", global = true, default_value = "auto")]
    pub device: crate::engine::Device,
    /// Print JSON instead of text (every command but `serve`, `synth` and `plugin wit`).
    #[arg(long, global = true)]
    pub json: bool,
}

/// Write `text` to stderr for the person watching. A closed or full stderr must not stop the
/// work: `eval` and `run` keep SIGPIPE ignored while they work, where `eprintln!` would panic.
pub(crate) fn tell(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// A one-off command whose output is piped into `head` ends quietly when the reader goes away,
/// as Unix tools do, instead of panicking on the failed write (Rust ignores SIGPIPE). The
/// server keeps ignoring it: a client closing its socket must not stop it; so do `eval` and
/// `run` until their work is done, then call this before printing their result.
pub fn die_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal; the other threads a long command may have
    // started by now do not change signal dispositions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve {
        #[command(flatten)]
        opts: RuntimeOpts,
        /// Address to listen on: `IP:PORT`, or `HOST:PORT` with a name this machine resolves
        /// (`localhost:8080`: its first IPv4 address).
        #[arg(long, default_value = "127.0.0.1:8080", env = "AGENTRT_LISTEN", value_parser = listen_address)]
        listen: SocketAddr,
        /// File of API keys, one `SCOPE KEY` per line (scope `user` or `admin`); adds to
        /// `AGENTRT_API_KEYS` (`user:KEY,admin:KEY`). Without any key every route is open.
        #[arg(long, env = "AGENTRT_API_KEYS_FILE")]
        api_keys: Option<PathBuf>,
        /// Requests per minute each API key may make (bursts up to that many); 429 AUTH_003
        /// with Retry-After beyond it.
        /// At least 1 (no flag: no limit).
        #[arg(long, env = "AGENTRT_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
        rate_limit: Option<u32>,
    },
    /// Generate code and tests for a task.
    Generate {
        /// The task (`-`: standard input).
        task: String,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// The whole pipeline for a task: generate, check, run the tests in the sandbox (retrying
    /// with the failures as feedback), review.
    Run {
        /// The task (`-`: standard input).
        task: String,
        /// Retries after failures (generation errors or failing tests), at most 2.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=2))]
        max_retries: u32,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Run the quality checks and the reviewer on a file.
    Review {
        file: PathBuf,
        /// Python tests to run against FILE (test_* functions or top-level asserts); they
        /// may import FILE by its name (`from sol import f` for sol.py; not a name the standard
        /// library has, such as types.py) or as `solution`.
        #[arg(long)]
        tests: Option<PathBuf>,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Run only the quality checks on a file (Python unless its extension or `--language` says
    /// otherwise; no model needed). Findings print as
    /// `FILE:LINE:COL: severity [rule] message`; `--fail-on` makes them fail the command.
    Check {
        /// The code to check (`-`: standard input).
        file: PathBuf,
        /// Its tests, checked with it.
        #[arg(long)]
        tests: Option<PathBuf>,
        /// Exit non-zero (`REV_003`) when a finding is this severe or more: `error`,
        /// `warning` or `info`.
        #[arg(long, value_parser = ["error", "warning", "info"])]
        fail_on: Option<String>,
        /// The code's language (default: from the file's extension, Python for `-` and
        /// unknown ones); any that a quality check in use understands.
        #[arg(long)]
        language: Option<String>,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Continue a raw prompt with the default model, streaming the text; with `--suffix`, fill
    /// in the middle between the prompt and the suffix (StarCoder-family models).
    Complete {
        /// The text to continue (`-`: standard input).
        prompt: String,
        /// Code after the gap, for fill-in-the-middle.
        #[arg(long)]
        suffix: Option<String>,
        /// Most tokens to generate (1..=4096, as /v1/completions takes).
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::server::MAX_COMPLETION_TOKENS)))]
        max_tokens: u32,
        /// Sampling temperature, 0..=2 (0: greedy). As /v1/completions samples: no repetition
        /// penalty, top-k or top-p.
        #[arg(long, default_value_t = 0.0, value_parser = temperature)]
        temperature: f32,
        /// Seed of the sampling above temperature 0 (default: a new one every run).
        #[arg(long)]
        seed: Option<u64>,
        /// Stop sequences (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Write a random-weight checkpoint in the shape of a real model, as an HF folder
    /// (config.json, model.safetensors, tokenizer.json), for benchmarks and tests.
    Synth {
        /// tiny-starcoder or starcoderbase-1b.
        preset: String,
        /// Folder to write.
        out: PathBuf,
        /// Weight type: f32, f16 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Write into a folder that already holds files (its config.json and weights are
        /// replaced by random ones).
        #[arg(long)]
        force: bool,
    },
    /// Check this machine and set-up: resources, the listen port, model files and their
    /// checksums, the GPU, the run store, and every plugin (instantiates, passes a self-test).
    /// Exits non-zero when a check fails.
    Doctor {
        /// The address `serve` would listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "AGENTRT_LISTEN", value_parser = listen_address)]
        listen: SocketAddr,
        /// The API keys file `serve` would read (checked with `AGENTRT_API_KEYS` as serve
        /// checks them).
        #[arg(long, env = "AGENTRT_API_KEYS_FILE")]
        api_keys: Option<PathBuf>,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Logs.
    Logs {
        #[command(subcommand)]
        action: LogsAction,
    },
    /// Back up the run store (copied online: consistent while a server writes to it), the
    /// config file (`--config`) and the plugin folder (`--plugins`) into a new folder, with a
    /// manifest of SHA-256 sums.
    Backup {
        /// Folder to create (it must not exist, or be empty).
        out: PathBuf,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Restore a backup: check every file against its manifest, then replace the run store
    /// (and write the config to `--config`, the plugins to `--plugins` when given). Refused
    /// while a server uses the store.
    Restore {
        /// Folder `agentrt backup` wrote.
        from: PathBuf,
        /// Replace an existing run store.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Ask the model a question.
    Chat {
        /// The question (`-`: standard input).
        message: String,
        /// Most tokens of the answer (1..=2048, as POST /chat takes).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::server::MAX_CHAT_TOKENS)))]
        max_tokens: u32,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Plugins: list, inspect, check, and author them (new, build, wit).
    #[command(alias = "plugins")]
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Models.
    Models {
        #[command(subcommand)]
        action: ListAction,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Measure the agents on benchmark problems (HumanEval's format): each problem's prompt is
    /// one pipeline run, as `agentrt run` makes it, and the code it ends with runs against the
    /// problem's own tests in the sandbox. Prints pass@1, and how often the run's own tests and
    /// the reviewer's approval were right.
    Eval {
        #[command(flatten)]
        args: eval::EvalArgs,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
    /// Measure prefill and decode speed of the default model.
    Bench {
        /// Prompt length in tokens.
        #[arg(long, default_value_t = 128, value_parser = at_least_one)]
        prompt_tokens: usize,
        /// Tokens to decode.
        #[arg(long, default_value_t = 64, value_parser = at_least_one)]
        decode_tokens: usize,
        /// Repetitions (the best is reported).
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        runs: usize,
        #[command(flatten)]
        opts: RuntimeOpts,
    },
}

#[derive(Debug, Subcommand, Clone)]
pub enum LogsAction {
    /// Summarise a JSON log (AGENTRT_LOG_FORMAT=json): warnings and errors by frequency, slow
    /// requests with their ids, plugin calls and failures by code.
    Analyze {
        /// The log file (`-`: standard input).
        file: PathBuf,
        /// Requests taking this long or longer are listed.
        #[arg(long, default_value_t = 1000)]
        slow_ms: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand, Clone, Copy)]
pub enum ListAction {
    /// List them.
    List,
}

#[derive(Debug, Subcommand, Clone)]
pub enum PluginAction {
    /// List the plugins that would be loaded, with what each is granted; with `--server`, the
    /// plugins a running server uses now and the components its hot reload refused.
    List {
        /// Base URL of a running agentrt (its `GET /plugins`; an admin key in
        /// `AGENTRT_API_KEY` when it has keys).
        #[arg(long)]
        server: Option<String>,
    },
    /// Everything about one plugin: world, WIT version, what it asks, what it is granted, size,
    /// compile time. TARGET is a loaded plugin's name or a component file (NAME.wasm, with
    /// NAME.toml beside it).
    Inspect { target: String },
    /// Validate a component as a server would load it: its manifest, the permissions it asks
    /// for against the config's grants, the WIT version and world it was built for; then run
    /// its self-test in the sandbox (with the model for generators and reviewers). Exits
    /// non-zero when a check fails.
    Check {
        /// The component (NAME.wasm, with NAME.toml beside it).
        file: PathBuf,
    },
    /// Create a plugin project that builds and loads unchanged: manifest, source, a test and a
    /// README.
    New {
        /// Plugin name: lower-case letters, digits, '-' or '_'.
        name: String,
        #[arg(long)]
        world: crate::plugin::manifest::World,
        #[arg(long, default_value = "rust")]
        lang: crate::authoring::scaffold::Lang,
        /// Folder to create the project in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build a plugin project into NAME.wasm + NAME.toml (cargo for Rust, componentize-py for
    /// Python).
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        project: PathBuf,
        /// Where to write the component and manifest (a server's plugin folder installs it);
        /// default: the project's dist/.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the WIT this agentrt implements (agentrt:plugin), or write it to a file.
    Wit {
        /// The file to write (its folder is created); without it, standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A count of 1 or more (`bench`'s lengths and repetitions: 0 would measure nothing).
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{value:?} is not a whole number of 1 or more")),
    }
}

/// The default model of the models named in `opts`.
pub fn load_default_model(opts: &RuntimeOpts) -> Result<Arc<ServedModel>, CliError> {
    load_engine(opts)?
        .model(None)
        .map_err(|e| CliError::new(e.code(), e.to_string()))
}

/// How many tests passed, and each failure with its message.
fn print_test_report(tests: &crate::sandbox::TestReport) {
    match &tests.setup_error {
        // Nothing ran: "0 of 0 passed" would read as if there were no tests.
        Some(setup) if tests.results.is_empty() => println!("tests: did not load: {setup}"),
        Some(setup) => println!(
            "tests: {} of {} passed; stopped: {setup}",
            tests.passed(),
            tests.results.len()
        ),
        None => println!(
            "tests: {} of {} passed",
            tests.passed(),
            tests.results.len()
        ),
    }
    for r in tests.failures() {
        println!("  {} ({:?}): {}", r.name, r.status, r.message);
    }
}

/// Generate, printing text as it comes (or, with `json`, the completion at the end as
/// `as_json` shapes it: the answer of the matching HTTP route).
fn stream_completion(
    model: &ServedModel,
    prompt: &crate::engine::Prompt,
    params: &crate::engine::SamplingParams,
    json: bool,
    as_json: fn(&crate::engine::Completion) -> Value,
) -> Result<(), CliError> {
    let done = model
        .generate(prompt, params, &Default::default(), &mut |t| {
            if !json {
                use std::io::Write;
                print!("{t}");
                let _ = std::io::stdout().flush();
            }
        })
        .map_err(|e| CliError::new(e.code(), e.to_string()))?;
    emit(json, &as_json(&done), || println!());
    Ok(())
}

/// `VAL_002` for an empty `text`, as the HTTP routes refuse it, before anything loads for
/// nothing.
fn refuse_empty(what: &str, text: &str) -> Result<(), CliError> {
    if text.trim().is_empty() {
        return Err(CliError::new(
            ErrorCode::InvalidInput,
            format!("{what} must not be empty"),
        ));
    }
    Ok(())
}

/// A sampling temperature from the command line, in the range the HTTP routes take.
fn temperature(text: &str) -> Result<f32, String> {
    let t: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=crate::server::MAX_TEMPERATURE).contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "must be 0..={} (0: always the likeliest token)",
            crate::server::MAX_TEMPERATURE
        ))
    }
}

/// The id clients name a model given by path: its file name without `.gguf` (an HF folder's
/// whole name: `Qwen2.5-Coder-0.5B` keeps its dots), lowercased.
fn model_id(path: &Path, index: usize) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    match name {
        Some(n) => {
            let lower = n.to_lowercase();
            match lower.strip_suffix(".gguf") {
                Some(stem) if !path.is_dir() && !stem.is_empty() => stem.to_string(),
                _ => lower,
            }
        }
        None => format!("model-{index}"),
    }
}

/// Load every model named in `opts` (or the default), showing progress on stderr.
pub fn load_engine(opts: &RuntimeOpts) -> Result<Arc<Engine>, CliError> {
    let paths = if opts.models.is_empty() {
        vec![crate::paths::default_model()]
    } else {
        opts.models.clone()
    };
    let mut models = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let entry = path.to_string_lossy();
        if crate::engine::remote::is_remote(&entry) {
            let started = Instant::now();
            let model = ServedModel::remote(&entry, None)
                .map_err(|e| CliError::new(e.code(), e.to_string()))?;
            tell(format_args!(
                "model {} is served by {} (answered in {} ms)\n",
                model.info.id,
                model.info.device,
                started.elapsed().as_millis()
            ));
            models.push(Arc::new(model));
            continue;
        }
        if !path.exists() {
            // The set-up hint helps only with the default model; a path the user gave is
            // most likely mistyped.
            let hint = if opts.models.is_empty() {
                "run scripts/setup.sh in the agentrt source folder to fetch the default model, \
                 or name one with --model FILE (AGENTRT_MODEL)"
            } else {
                "check the path given with --model (AGENTRT_MODEL)"
            };
            return Err(CliError::new(
                ErrorCode::ModelNotAvailable,
                format!("model file {} does not exist ({hint})", path.display()),
            ));
        }
        // The default model keeps its id when named by path too (adding a second model means
        // naming the first): clients and grants that name it must not break.
        let is_default_file = path
            .file_name()
            .is_some_and(|n| n == crate::paths::DEFAULT_MODEL_FILE);
        let id = if (i == 0 && opts.models.is_empty()) || is_default_file {
            crate::paths::DEFAULT_MODEL_ID.to_string()
        } else {
            model_id(path, i)
        };
        let started = Instant::now();
        // A progress line only for a person watching: redirected or JSON logs get one line.
        let watched = std::io::stderr().is_terminal();
        let mut shown = false;
        let loaded = LoadedModel::load_on(&id, path, opts.device, &mut |p| {
            if watched {
                tell(format_args!(
                    "\rloading {id}: layer {}/{}",
                    p.layers_done, p.layers_total
                ));
                shown = true;
            }
        });
        if shown {
            tell(format_args!("\r\x1b[K"));
        }
        let model = loaded.map_err(|e| CliError::new(e.code(), e.to_string()))?;
        let ms = started.elapsed().as_millis();
        if watched {
            tell(format_args!(
                "loaded {id} ({} parameters) on {} in {ms} ms\n",
                model.info.parameters, model.info.device
            ));
        } else {
            tracing::info!(model = %id, parameters = model.info.parameters, device = %model.info.device, ms, "model loaded");
        }
        models.push(Arc::new(ServedModel::local(model)));
    }
    // A second model under an id already taken could never be reached (requests, grants and
    // plugins name models by id), so two entries that end up with one id are refused.
    for (i, model) in models.iter().enumerate() {
        if let Some(j) = models[..i].iter().position(|m| m.info.id == model.info.id) {
            return Err(CliError::new(
                ErrorCode::InvalidInput,
                format!(
                    "two models are both called {:?} ({} and {}): give one file another name, or \
                     name a remote model with #MODEL",
                    model.info.id,
                    paths[j].display(),
                    paths[i].display()
                ),
            ));
        }
    }
    Ok(Arc::new(Engine::new(models)))
}

/// Build the plugin host with the config's grants and a sandbox for `run-python`.
fn plugin_host(
    opts: &RuntimeOpts,
    engine: Option<Arc<Engine>>,
) -> Result<(PluginHost, Arc<crate::sandbox::LazySandbox>), CliError> {
    let config = match &opts.config {
        Some(path) => {
            let config = Config::load(path)
                .map_err(|e| CliError::new(ErrorCode::InvalidInput, e.to_string()))?;
            tracing::info!(config = %path.display(), grants = config.grants.len(), "config read");
            config
        }
        None => Config::default(),
    };
    // One sandbox for the pipeline's test stage and for plugins granted run-python.
    let sandbox = default_sandbox();
    let cache = CompileCache::new(Some(crate::paths::component_cache()));
    let host =
        PluginHost::new(engine, Some(sandbox.clone()), cache, Arc::new(config)).map_err(|e| {
            CliError::new(
                ErrorCode::Internal,
                format!("cannot start the plugin host: {e:#}"),
            )
        })?;
    Ok((host, sandbox))
}

/// The Python sandbox with the default interpreter, compile cache and limits.
fn default_sandbox() -> Arc<crate::sandbox::LazySandbox> {
    Arc::new(crate::sandbox::LazySandbox::new(
        crate::paths::python_wasm(),
        CompileCache::new(Some(crate::paths::component_cache())),
        crate::sandbox::SandboxLimits::default(),
    ))
}

/// Build the plugin host and load the plugins (models may be absent for `check`), for a
/// one-off command: a folder component that was refused is the error (a command asked to use
/// a plugin must not quietly run the default instead).
pub fn load_pipeline(
    opts: &RuntimeOpts,
    engine: Option<Arc<Engine>>,
) -> Result<Pipeline, CliError> {
    let (pipeline, _) = load_pipeline_with_reload(opts, engine)?;
    match refusal_error(&pipeline.plugins.refused()) {
        None => Ok(pipeline),
        Some(e) => Err(e),
    }
}

/// The error of a folder with refused components: the first one's code, every one's reason.
fn refusal_error(refused: &[crate::plugin::registry::Refused]) -> Option<CliError> {
    let first = refused.first()?;
    let code = ErrorCode::parse(&first.code).unwrap_or(ErrorCode::PluginLoad);
    let all: Vec<String> = refused
        .iter()
        .map(|r| format!("{}: {} {}", r.file.display(), r.code, r.message))
        .collect();
    Some(CliError::new(
        code,
        format!(
            "{} plugin(s) of the folder refused: {} (`agentrt plugin list` lists the folder \
             with every refusal)",
            refused.len(),
            all.join("; ")
        ),
    ))
}

/// [`load_pipeline`], with the watcher that hot-reloads the plugin folder when there is one
/// (started by the caller: `serve` does).
pub fn load_pipeline_with_reload(
    opts: &RuntimeOpts,
    engine: Option<Arc<Engine>>,
) -> Result<(Pipeline, Option<Reloader>), CliError> {
    let (host, sandbox) = plugin_host(opts, engine)?;
    let host = Arc::new(host);
    let started = Instant::now();
    let loaded = load_plugins(&host, opts.plugins.as_deref())
        .map_err(|e| CliError::new(e.code(), e.to_string()))?;
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "plugins loaded");
    let plugins = LivePlugins::with_refused(loaded.set, loaded.refused);
    // Something to watch: the plugin folder, or the config whose grants the plugins load with.
    let reloader = (opts.plugins.is_some() || opts.config.is_some()).then(|| {
        Reloader::new(
            host.clone(),
            opts.plugins.clone(),
            loaded.stamps,
            opts.config.clone(),
            loaded.embedded,
            loaded.folder,
            plugins.clone(),
        )
    });
    let pipeline = Pipeline {
        host,
        plugins,
        stats: Arc::new(Stats::default()),
        sandbox: Some(sandbox),
        run: Default::default(),
        file_names: Default::default(),
    };
    Ok((pipeline, reloader))
}

/// Where the run store is, from `AGENTRT_STORE` or the config's `store`.
fn store_location(opts: &RuntimeOpts) -> Result<String, CliError> {
    let configured = match &opts.config {
        Some(path) => {
            Config::load(path)
                .map_err(|e| CliError::new(ErrorCode::InvalidInput, e.to_string()))?
                .store
        }
        None => None,
    };
    Ok(crate::paths::store_location(configured.as_deref()))
}

/// The SQLite file `agentrt backup` and `restore` work on; a PostgreSQL store is the
/// database's to back up (BACKUP_001 says so).
fn sqlite_store_for_backup(opts: &RuntimeOpts) -> Result<std::path::PathBuf, CliError> {
    sqlite_only(store_location(opts)?)
}

/// Where `agentrt restore` puts the store. When it writes the config too (`--config`, and
/// the backup holds one), the `store` of the config it installs decides, not that of the file
/// it is about to replace, which need not exist yet (a fresh host). Otherwise the config at
/// `--config` decides when there is one. `AGENTRT_STORE` wins over both, as everywhere.
///
/// Without `--config`, a backup whose config puts the store elsewhere than where this restore
/// would is refused: the store would land where the server started with that config does not
/// look, and the restore would seem to have worked.
fn restore_store(opts: &RuntimeOpts, from: &Path) -> Result<std::path::PathBuf, CliError> {
    let configured = match &opts.config {
        None => {
            refuse_a_backed_up_store_elsewhere(from)?;
            None
        }
        Some(target) => {
            match crate::backup::config_store(from).map_err(|e| CliError::new(e.code, e.message))? {
                // Relative to the folder the restored config goes into, as the server will
                // read it.
                Some(restored) => match restored.store {
                    Some(store) if store.trim().is_empty() => {
                        return Err(CliError::new(
                            ErrorCode::BackupFailed,
                            "the backup's config has an empty store = \"\": fix it in the backup \
                             (and its manifest) or restore without --config",
                        ));
                    }
                    store => store.map(|store| {
                        crate::config::resolve_store(
                            &store,
                            target.parent().unwrap_or(Path::new("")),
                        )
                    }),
                },
                None if target.exists() => {
                    Config::load(target)
                        .map_err(|e| CliError::new(ErrorCode::InvalidInput, e.to_string()))?
                        .store
                }
                None => None,
            }
        }
    };
    sqlite_only(crate::paths::store_location(configured.as_deref()))
}

/// A restore without `--config` puts the store at the default location: refused when the
/// backup's config keeps it elsewhere (see [`restore_store`]).
fn refuse_a_backed_up_store_elsewhere(from: &Path) -> Result<(), CliError> {
    let backed_up = crate::backup::config_store(from)
        .map_err(|e| CliError::new(e.code, e.message))?
        .and_then(|c| c.store);
    let Some(theirs) = backed_up else {
        return Ok(());
    };
    let (there, here) = (
        crate::paths::store_location(Some(&theirs)),
        crate::paths::store_location(None),
    );
    // AGENTRT_STORE, when set, decides for both.
    if there == here {
        return Ok(());
    }
    // A relative path is taken from the folder of the config that says it, which this
    // restore does not install: where it leads is unknown, so it is elsewhere.
    let there =
        if Path::new(&theirs).is_relative() && !crate::store::postgres::is_postgres_url(&theirs) {
            format!("{theirs} (beside the config file)")
        } else {
            there
        };
    Err(CliError::new(
        ErrorCode::BackupFailed,
        format!(
            "the backup's config keeps the store at {there}, not at {here} where this restore \
             would put it: restore with --config FILE (the config the server starts with) so \
             that the store goes where it says, or set AGENTRT_STORE"
        ),
    ))
}

/// `location` as an SQLite file; a PostgreSQL URL is refused (BACKUP_001, naming pg_dump).
fn sqlite_only(location: String) -> Result<std::path::PathBuf, CliError> {
    if crate::store::postgres::is_postgres_url(&location) {
        return Err(CliError::new(
            ErrorCode::BackupFailed,
            format!(
                "the run store is PostgreSQL ({}): back it up with pg_dump and restore with pg_restore; agentrt backup copies the SQLite store, config and plugins",
                crate::store::postgres::redact(&location)
            ),
        ));
    }
    Ok(std::path::PathBuf::from(location))
}

/// Open the run store and close the runs a previous process left unfinished.
fn open_store(
    opts: &RuntimeOpts,
    stats: &Arc<Stats>,
) -> Result<Arc<dyn crate::store::RunStore>, CliError> {
    use crate::store::RunStore;
    let location = store_location(opts)?;
    let store = crate::store::open_for_server(&location)
        .map_err(|e| CliError::new(e.code(), e.to_string()))?;
    // Which store won (AGENTRT_STORE, the config's, the default) is in the log from the start.
    tracing::info!(store = %crate::store::postgres::redact(&location), "run store open");
    let interrupted = store
        .interrupt_unfinished()
        .map_err(|e| CliError::new(e.code(), e.to_string()))?;
    crate::runs::record_interrupted(
        interrupted,
        "the previous server or a host that is gone",
        &store.location(),
        stats,
    );
    crate::store::watch::spawn_file_check(store.clone()).map_err(|e| {
        CliError::new(
            ErrorCode::Internal,
            format!("cannot start watching the run store: {e}"),
        )
    })?;
    // Only a store several hosts share has hosts that can go.
    if crate::store::postgres::is_postgres_url(&location) {
        crate::runs::spawn_gone_hosts_sweep(store.clone(), stats.clone()).map_err(|e| {
            CliError::new(
                ErrorCode::Internal,
                format!("cannot start watching for hosts gone from the run store: {e}"),
            )
        })?;
    }
    Ok(store)
}

/// Load the Python sandbox before the server says it listens: the first load of a new build
/// compiles the interpreter snapshot (tens of seconds on a small machine), which would
/// otherwise land inside the first request's deadline. A sandbox that cannot load is only
/// logged: requests report it themselves, and everything else still works.
fn warm_sandbox(pipeline: &Pipeline) {
    let Some(sandbox) = &pipeline.sandbox else {
        return;
    };
    let started = Instant::now();
    match sandbox.get() {
        Ok(_) => tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "python sandbox ready"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "python sandbox unavailable; generated tests will not run")
        }
    }
}

/// The server's socket, bound before anything loads (it listens only once the server is
/// ready, so nothing connects to a server still loading). An address another process holds, or
/// one this user may not bind, is the operator's to change (`VAL_002`), not an internal error.
fn bind(listen: std::net::SocketAddr) -> Result<tokio::net::TcpSocket, CliError> {
    let bound = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .and_then(|socket| {
        // As std's listener does: a restart may bind while the last one's connections linger.
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        Ok(socket)
    });
    bound.map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::AddrInUse
            | std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::AddrNotAvailable => ErrorCode::InvalidInput,
            _ => ErrorCode::Internal,
        };
        CliError::new(
            code,
            format!(
                "cannot listen on {listen}: {e} (another process may hold it: agentrt doctor \
                 checks; --listen or AGENTRT_LISTEN picks another address)"
            ),
        )
    })
}

/// The text of `path` (`-`: standard input), without the byte-order mark some editors put
/// first (Python reads past it; a parser given it would call line 1 broken).
fn read_file(path: &PathBuf) -> Result<String, CliError> {
    let read = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    read.map(|text| match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
    .map_err(|e| {
        CliError::new(
            ErrorCode::InvalidInput,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// `text` as given, or standard input's when it is `-` (a long task, or one written by
/// another program, is no argument to quote).
fn text_or_stdin(text: String) -> Result<String, CliError> {
    if text == "-" {
        read_file(&PathBuf::from("-"))
    } else {
        Ok(text)
    }
}

/// Standard input holds one text: the code and its tests cannot both be read from it.
fn refuse_both_from_stdin(file: &Path, tests: Option<&Path>) -> Result<(), CliError> {
    if file.as_os_str() == "-" && tests.is_some_and(|t| t.as_os_str() == "-") {
        return Err(CliError::new(
            ErrorCode::InvalidInput,
            "the code and its tests cannot both come from standard input",
        ));
    }
    Ok(())
}

/// Findings as compilers and linters print them, `FILE:LINE:COL: …`, so editors and CI jump
/// to them.
/// `all_ran`: every check ran (else "no findings" would claim a clean file the failed check
/// never looked at).
fn print_findings(file: &std::path::Path, findings: &[FindingOut], all_ran: bool) {
    if findings.is_empty() && all_ran {
        println!("no findings");
    }
    let name = if file.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        file.display().to_string()
    };
    for f in findings {
        println!(
            "{}: {} [{}] {}",
            finding_place(&name, f.line, f.column),
            f.severity,
            f.rule_id,
            indented(&f.message)
        );
    }
}

/// `text` with every line after the first indented: a plugin's message or summary cannot
/// start a line of its own that editors and CI would take for a finding (`FILE:LINE: …`).
pub fn indented(text: &str) -> String {
    text.trim_end().replace('\n', "\n    ")
}

/// Where a finding is, as compilers print it: `FILE:LINE:COL`, `FILE:LINE` without a column,
/// `FILE` alone for a finding about the whole file (line 0: a failed test, a model remark).
fn finding_place(file: &str, line: u32, column: u32) -> String {
    match (line, column) {
        (0, _) => file.to_string(),
        (line, 0) => format!("{file}:{line}"),
        (line, column) => format!("{file}:{line}:{column}"),
    }
}

/// How severe a finding's severity is, for `--fail-on` (info 0, warning 1, error 2).
fn severity_rank(severity: &str) -> u8 {
    match severity {
        "error" => 2,
        "warning" => 1,
        _ => 0,
    }
}

/// A failure as the HTTP API's error body has it: `{"code", "type", "message"}`.
pub fn error_body(e: &CliError) -> Value {
    let kind = ErrorCode::parse(e.code).map(|c| c.kind());
    json!({"code": e.code, "type": kind, "message": e.message})
}

/// Whether this command printed its JSON answer (which then carries any failure itself).
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the command printed a JSON answer on stdout: a failure it then reports needs no
/// second JSON document after it.
pub fn printed_json() -> bool {
    PRINTED_JSON.load(std::sync::atomic::Ordering::Relaxed)
}

fn emit(json_mode: bool, value: &Value, human: impl FnOnce()) {
    if json_mode {
        PRINTED_JSON.store(true, std::sync::atomic::Ordering::Relaxed);
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human();
    }
}

/// `--listen`: an `IP:PORT`, or a `HOST:PORT` whose name resolves here (a server binds one
/// address: IPv4 first, as `localhost` is meant on most machines).
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if text
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("{text:?} is not HOST:PORT (e.g. 127.0.0.1:8080)"));
    }
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("cannot resolve {text:?}: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// A running server's `GET /plugins`.
fn server_plugins(base: &str) -> Result<Value, CliError> {
    // `--server 127.0.0.1:8080` means the same server as `--server http://127.0.0.1:8080`.
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let url = format!("{}/plugins", base.trim_end_matches('/'));
    let mut request = ureq::get(&url);
    if let Ok(key) = std::env::var("AGENTRT_API_KEY") {
        request = request.header("authorization", &format!("Bearer {key}"));
    }
    let fail = |e: String| CliError::new(ErrorCode::NetworkError, format!("{url}: {e}"));
    let mut response = request.call().map_err(|e| match e {
        ureq::Error::StatusCode(401) => CliError::new(
            ErrorCode::Unauthenticated,
            format!("{url}: the server wants an API key (set AGENTRT_API_KEY)"),
        ),
        ureq::Error::StatusCode(403) => CliError::new(
            ErrorCode::Forbidden,
            format!("{url}: AGENTRT_API_KEY's scope does not cover plugins"),
        ),
        other => fail(other.to_string()),
    })?;
    response
        .body_mut()
        .read_json::<Value>()
        .map_err(|e| fail(e.to_string()))
}

/// The plugins of a listing (`{"plugins": [...], "refused": [...]}`), one block each, then the
/// refused components with their reasons, then a refused edit of a server's config file.
fn print_plugin_list(listing: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for p in listing["plugins"].as_array().into_iter().flatten() {
        let source = match p["source"]["kind"].as_str() {
            Some("file") => text(&p["source"]["path"]),
            _ => "embedded".to_string(),
        };
        println!(
            "{:<16} {:<8} {:<14} {}  ({source})",
            text(&p["name"]),
            text(&p["version"]),
            text(&p["world"]),
            text(&p["description"]),
        );
        println!("{:<16} granted: {}", "", text(&p["granted_summary"]));
        if let Some(check) = p["check"].as_object() {
            let list = |key: &str| {
                let items: Vec<String> = check[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                items.join(", ")
            };
            let languages = match list("languages") {
                all if all.is_empty() => "any".to_string(),
                some => some,
            };
            println!("{:<16} checks: {languages}; rules: {}", "", list("rules"));
        }
    }
    for r in listing["refused"].as_array().into_iter().flatten() {
        let keeping = r["keeping"]
            .as_str()
            .map(|v| format!(" (keeping version {v})"))
            .unwrap_or_default();
        println!(
            "refused {}: {} {}{keeping}",
            text(&r["file"]),
            text(&r["code"]),
            text(&r["message"])
        );
    }
    // A server's listing says whether the config file holds an edit it refused.
    if let Some(refused) = listing["config"]["refused"].as_object() {
        println!(
            "config {}: the edit was refused, the version before it is in use: {}",
            text(&listing["config"]["file"]),
            indented(refused.get("error").map(text).unwrap_or_default().as_str())
        );
    }
}

fn source_label(source: &crate::plugin::PluginSource) -> String {
    match source {
        crate::plugin::PluginSource::Embedded => "embedded".to_string(),
        crate::plugin::PluginSource::File(f) => f.display().to_string(),
    }
}

/// Run a parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    crate::settings::check().map_err(|e| CliError::new(ErrorCode::InvalidInput, e))?;
    for (name, close) in crate::settings::misspelt() {
        tracing::warn!("{name} is set, but agentrt reads no such variable: did you mean {close}?");
    }
    match cli.command {
        Command::Serve {
            opts,
            listen,
            api_keys,
            rate_limit,
        } => {
            let api_keys = Arc::new(
                crate::server::auth::ApiKeys::load(api_keys.as_deref())
                    .map_err(|e| CliError::new(ErrorCode::InvalidInput, e))?
                    .with_rate_limit(rate_limit),
            );
            if api_keys.is_empty() {
                tracing::warn!(
                    "no API keys configured: every route is open (AGENTRT_API_KEYS, --api-keys FILE)"
                );
                if rate_limit.is_some() {
                    // The limit is per key: with no keys there is nothing to count against.
                    return Err(CliError::new(
                        ErrorCode::InvalidInput,
                        "--rate-limit (AGENTRT_RATE_LIMIT) limits each API key, and no keys are \
                         configured: give keys with --api-keys, or drop the rate limit",
                    ));
                }
            }
            crate::server::reloading::watch_file(api_keys.clone(), crate::server::reloading::POLL)
                .map_err(|e| {
                    CliError::new(
                        ErrorCode::Internal,
                        format!("cannot watch the API keys file: {e}"),
                    )
                })?;
            let socket = bind(listen)?;
            let limits = crate::server::Limits::from_env();
            let rt = tokio::runtime::Runtime::new()
                .map_err(|e| CliError::new(ErrorCode::Internal, e.to_string()))?;
            // SIGHUP reads the keys and the config again; caught from here on, so that one
            // sent while the models load waits for the server rather than ending it.
            #[cfg(unix)]
            let hangups = {
                let _runtime = rt.enter();
                crate::server::reloading::catch_hangups().map_err(|e| {
                    CliError::new(ErrorCode::Internal, format!("cannot catch SIGHUP: {e}"))
                })?
            };
            let access = crate::server::startup::Access {
                api_keys: api_keys.clone(),
                loopback_only: listen.ip().is_loopback(),
            };
            let startup =
                crate::server::startup::Startup::begin(&rt, socket, limits.header_timeout, access)
                    .map_err(|e| {
                        CliError::new(
                            ErrorCode::Internal,
                            format!("cannot listen on {listen}: {e}"),
                        )
                    })?;
            startup.stage("loading models");
            let engine = load_engine(&opts)?;
            startup.stage("loading plugins");
            let (pipeline, reloader) = load_pipeline_with_reload(&opts, Some(engine.clone()))?;
            // The server runs without them, as it would after a hot reload refused them.
            for refused in pipeline.plugins.refused() {
                refused.log();
            }
            let interval = crate::settings::count("AGENTRT_PLUGIN_POLL_MS")
                .map_or(crate::plugin::reload::DEFAULT_POLL, |ms| {
                    Duration::from_millis(ms as u64)
                });
            let reloader = reloader
                .map(|reloader| reloader.spawn(interval))
                .transpose()
                .map_err(|e| {
                    CliError::new(
                        ErrorCode::Internal,
                        format!("cannot watch the plugin folder and config: {e}"),
                    )
                })?;
            startup.stage("warming the python sandbox");
            warm_sandbox(&pipeline);
            // Compiling the plugins and the interpreter (on a cold cache) is done.
            crate::heap::give_back_freed();
            startup.stage("opening the run store");
            let store = open_store(&opts, &pipeline.stats)?;
            if let Some(keep) = crate::runs::retention_from_env() {
                crate::runs::spawn_retention(store.clone(), keep).map_err(|e| {
                    CliError::new(
                        ErrorCode::Internal,
                        format!("cannot start pruning old runs: {e}"),
                    )
                })?;
            }
            pipeline
                .stats
                .persist_to(store.clone())
                .map_err(|e| CliError::new(e.code(), e.to_string()))?;
            let store_to_close = store.clone();
            let runs = Arc::new(crate::runs::Runs::new(
                store,
                pipeline.clone(),
                crate::settings::count("AGENTRT_RUN_WORKERS")
                    .unwrap_or(crate::runs::DEFAULT_WORKERS),
                crate::settings::count("AGENTRT_RUN_QUEUE")
                    .unwrap_or(crate::runs::DEFAULT_CAPACITY),
            ));
            let state = crate::server::AppState {
                engine,
                pipeline,
                api_keys,
                runs,
                sync_slots: Arc::new(tokio::sync::Semaphore::new(limits.sync_requests)),
                limits,
                draining: Default::default(),
                loopback_only: listen.ip().is_loopback(),
            };
            let stats = state.pipeline.stats.clone();
            #[cfg(unix)]
            let hangup_keys = state.api_keys.clone();
            let served = rt.block_on(async {
                #[cfg(unix)]
                crate::server::reloading::reload_on_hangup(hangups, hangup_keys, reloader);
                let listener = startup.finish().await?;
                // Once nothing can fail the start any more, and before the first request:
                // accepted runs that had not started go first. A store that cannot list them
                // now leaves them queued for the next start rather than keep this one down.
                // Blocking work (a PostgreSQL store's client runs a runtime of its own).
                let runs = state.runs.clone();
                let resumed = tokio::task::spawn_blocking(move || {
                    runs.resume_queued(crate::server::stored_run_request)
                })
                .await;
                if let Ok(Err(e)) = resumed {
                    tracing::error!(
                        target: "agentrt::runs",
                        "queued runs not resumed (they stay queued for the next start): {e}"
                    );
                }
                crate::server::serve(state, listener).await
            });
            // What the last plugin calls counted goes to the store before the process ends.
            stats.flush(std::time::Duration::from_secs(5));
            // A blocked stdin read (AGENTRT_EXIT_WITH_STDIN) or a plugin call past its
            // deadline must not hold the exit: requests and runs are already settled.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            store_to_close.close();
            served.map_err(|e| {
                CliError::new(
                    ErrorCode::Internal,
                    format!("server failed on {listen}: {e}"),
                )
            })
        }
        Command::Generate { task, opts } => {
            let task = text_or_stdin(task)?;
            refuse_empty("the task description", &task)?;
            let engine = load_engine(&opts)?;
            let default_model = engine
                .model(None)
                .map(|m| m.info.id.clone())
                .unwrap_or_default();
            let pipeline = progress::shown_unless(opts.json, load_pipeline(&opts, Some(engine))?);
            let req = PipelineRequest {
                task_description: task,
                language: "python".into(),
                max_retries: 1,
            };
            let mut stages = Vec::new();
            let artifact = pipeline.generate(&req, &mut stages).map_err(|e| CliError {
                code: ErrorCode::parse(&e.code).map_or("GEN_001", ErrorCode::as_str),
                message: e.message,
            })?;
            let value =
                crate::pipeline::report::generation_answer(&artifact, &stages, &default_model);
            emit(opts.json, &value, || {
                println!("# code\n{}\n\n# tests\n{}", artifact.code, artifact.tests);
            });
            Ok(())
        }
        Command::Run {
            task,
            max_retries,
            opts,
        } => {
            let task = text_or_stdin(task)?;
            refuse_empty("the task description", &task)?;
            let engine = load_engine(&opts)?;
            let pipeline = progress::shown_unless(opts.json, load_pipeline(&opts, Some(engine))?);
            let outcome = pipeline.run(&PipelineRequest {
                task_description: task,
                language: "python".into(),
                max_retries,
            });
            die_quietly_on_a_closed_pipe();
            let value = serde_json::to_value(&outcome).unwrap_or_default();
            if let Some(error) = &outcome.error {
                emit(opts.json, &value, || {});
                return Err(CliError {
                    code: ErrorCode::parse(&error.code).map_or("GEN_001", ErrorCode::as_str),
                    message: error.message.clone(),
                });
            }
            emit(opts.json, &value, || {
                println!(
                    "# code\n{}\n\n# tests\n{}\n",
                    outcome.code.as_deref().unwrap_or_default(),
                    outcome.tests.as_deref().unwrap_or_default()
                );
                if let Some(tests) = &outcome.test_results {
                    print_test_report(tests);
                }
                if let Some(review) = &outcome.review {
                    println!("verdict: {} (score {:.1}/10)", review.verdict, review.score);
                }
                match outcome.chosen_attempt {
                    // The code above is the best attempt's, not always the last one's.
                    Some(chosen) if chosen != outcome.attempts => {
                        println!(
                            "attempts: {} (the code is attempt {chosen}'s)",
                            outcome.attempts
                        )
                    }
                    _ => println!("attempts: {}", outcome.attempts),
                }
            });
            Ok(())
        }
        Command::Check {
            file,
            tests,
            fail_on,
            language,
            opts,
        } => {
            refuse_both_from_stdin(&file, tests.as_deref())?;
            let code = read_file(&file)?;
            let tests = tests
                .as_ref()
                .map(read_file)
                .transpose()?
                .unwrap_or_default();
            let pipeline = load_pipeline(&opts, None)?;
            let language = language.or_else(|| crate::language::of_file(&file).map(str::to_owned));
            let language = crate::plugin::language_for_checks(
                language.as_deref(),
                &pipeline.plugins.current().checks,
            )
            .map_err(|why| CliError::new(ErrorCode::InvalidInput, why))?;
            let artifact = CodeArtifact {
                language,
                code,
                tests,
            };
            let mut stages = Vec::new();
            let (findings, checks) = pipeline.check(&artifact, None, &mut stages);
            let findings: Vec<FindingOut> = findings.iter().map(FindingOut::from).collect();
            // Findings are the normal result; a check that could not run is a failure, and so
            // are findings at --fail-on or above.
            let result = match checks.iter().find_map(|c| c.error.as_ref().map(|e| (c, e))) {
                Some((c, e)) => Err(CliError {
                    code: ErrorCode::parse(&e.code).map_or("REV_003", ErrorCode::as_str),
                    message: format!("check {} failed: {}", c.name, e.message),
                }),
                None => {
                    let bar = fail_on.as_deref().map(severity_rank);
                    let failing = findings
                        .iter()
                        .filter(|f| bar.is_some_and(|bar| severity_rank(f.severity) >= bar))
                        .count();
                    if failing > 0 {
                        Err(CliError::new(
                            ErrorCode::AnalysisFailed,
                            format!(
                                "{failing} finding(s) at --fail-on {} or above",
                                fail_on.as_deref().unwrap_or_default()
                            ),
                        ))
                    } else {
                        Ok(())
                    }
                }
            };
            let mut value = json!({"findings": findings, "checks": checks});
            if let Err(e) = &result {
                // The one JSON document carries the failure too, as the error body's `error`.
                value["error"] = error_body(e);
            }
            emit(opts.json, &value, || {
                let all_ran = checks.iter().all(|c| c.error.is_none());
                print_findings(&file, &findings, all_ran);
                // The first failed check is the command's error; the others here.
                let failed = checks
                    .iter()
                    .filter_map(|c| c.error.as_ref().map(|e| (c, e)));
                for (c, e) in failed.skip(1) {
                    println!(
                        "check {} failed: {} {}",
                        c.name,
                        e.code,
                        indented(&e.message)
                    );
                }
            });
            result
        }
        Command::Review { file, tests, opts } => {
            refuse_both_from_stdin(&file, tests.as_deref())?;
            // Reviews (tests, the reviewer's reading) are of Python, as POST /review's are: a
            // file of another language is refused by name, not reviewed as broken Python.
            for given in std::iter::once(&file).chain(tests.as_ref()) {
                if let Some(other) =
                    crate::language::of_file(given).filter(|l| *l != crate::language::PYTHON)
                {
                    return Err(CliError::new(
                        ErrorCode::InvalidInput,
                        format!(
                            "{} is {other}: review takes Python code and tests (agentrt check \
                             --language {other} runs the quality checks that understand it)",
                            given.display()
                        ),
                    ));
                }
            }
            let artifact = CodeArtifact {
                language: "python".into(),
                code: read_file(&file)?,
                tests: tests
                    .as_ref()
                    .map(read_file)
                    .transpose()?
                    .unwrap_or_default(),
            };
            if artifact.code.trim().is_empty() {
                // As POST /review refuses it: there is nothing to review.
                return Err(CliError::new(
                    ErrorCode::InvalidInput,
                    format!("{} is empty: there is no code to review", file.display()),
                ));
            }
            let engine = load_engine(&opts)?;
            let pipeline = Pipeline {
                file_names: FileNames::of(&file, tests.as_deref()),
                ..load_pipeline(&opts, Some(engine))?
            };
            let mut stages = Vec::new();
            let (findings, checks) = pipeline.check(&artifact, None, &mut stages);
            let tests = pipeline.test(&artifact, 1, &mut stages);
            let review = pipeline
                .review(&artifact, &findings, tests.as_ref(), &mut stages)
                .map_err(|e| CliError {
                    code: ErrorCode::parse(&e.code).map_or("REV_001", ErrorCode::as_str),
                    message: e.message,
                })?;
            let mut value = serde_json::to_value(&review).unwrap_or_default();
            value["checks"] = json!(checks);
            if let Some(tests) = &tests {
                value["test_results"] = json!(tests);
            }
            emit(opts.json, &value, || {
                println!(
                    "verdict: {} (score {:.1}/10)\n    {}\n",
                    review.verdict,
                    review.score,
                    indented(&review.summary)
                );
                if let Some(tests) = &tests {
                    print_test_report(tests);
                }
                let all_ran = checks.iter().all(|c| c.error.is_none());
                print_findings(&file, &review.findings, all_ran);
                // The review went without what a check that could not run would have found.
                for c in &checks {
                    if let Some(e) = &c.error {
                        println!(
                            "check {} could not run ({} {}): the review went without its findings",
                            c.name, e.code, e.message
                        );
                    }
                }
            });
            Ok(())
        }
        Command::Complete {
            prompt,
            suffix,
            max_tokens,
            temperature,
            seed,
            stop,
            opts,
        } => {
            let prompt = text_or_stdin(prompt)?;
            let model = load_default_model(&opts)?;
            // What /v1/completions does with the same request (its neutral sampling), so the
            // one-off and the API answer alike.
            let params = crate::engine::SamplingParams {
                max_tokens,
                temperature,
                top_k: 0,
                top_p: 1.0,
                repeat_penalty: 1.0,
                seed: seed.unwrap_or_else(crate::engine::sampling::fresh_seed),
                stop,
                ..Default::default()
            };
            let prompt = match suffix {
                Some(suffix) => crate::engine::Prompt::Fim {
                    prefix: prompt,
                    suffix,
                },
                None => crate::engine::Prompt::Text(prompt),
            };
            stream_completion(&model, &prompt, &params, opts.json, |done| {
                serde_json::to_value(done).unwrap_or_default()
            })
        }
        Command::Doctor {
            listen,
            api_keys,
            opts,
        } => {
            let mut report = crate::doctor::Report::default();
            report.resources(&crate::paths::home());
            report.port(listen);
            report.api_keys(api_keys.as_deref());
            let models = if opts.models.is_empty() {
                vec![crate::paths::default_model()]
            } else {
                opts.models.clone()
            };
            report.models(&models);
            // The device matters only for models loaded here, not for remote ones.
            let local_models = models
                .iter()
                .any(|m| !crate::engine::remote::is_remote(&m.to_string_lossy()));
            report.gpu(opts.device, local_models);
            report.sandbox(&crate::paths::python_wasm());
            // The config's own problem is a failed check like any other, not the end of the
            // report: the plugin check below names it too.
            let config = opts.config.as_deref().map(Config::load).transpose();
            match (&opts.config, &config) {
                (Some(path), Ok(Some(config))) => report.add(
                    "config",
                    crate::doctor::Status::Ok,
                    format!(
                        "{}: {} plugin grants; relative paths from {}",
                        path.display(),
                        config.grants.len(),
                        match path.parent() {
                            Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
                            _ => ".".into(),
                        }
                    ),
                ),
                (_, Err(e)) => report.add("config", crate::doctor::Status::Fail, e.to_string()),
                _ => {}
            }
            // A config that cannot be read has its failed check above.
            if let Ok(config) = &config {
                let store = config.as_ref().and_then(|c| c.store.as_deref());
                report.store(&crate::paths::store_location(store));
            }
            match load_pipeline(&opts, None) {
                Ok(pipeline) => report.plugins(&pipeline),
                Err(e) => report.checks.push(crate::doctor::Check {
                    name: "plugins".into(),
                    status: crate::doctor::Status::Fail,
                    detail: e.to_string(),
                }),
            }
            // The first failed check's own code (MODEL_001, STORE_001, ...): a failed check is
            // a problem of this set-up, not an agentrt bug, which INTERNAL would suggest.
            let result = match report.failure() {
                None => Ok(()),
                Some((code, message)) => Err(CliError::new(code, message)),
            };
            let mut value = serde_json::to_value(&report).unwrap_or_default();
            if let Err(e) = &result {
                // The one JSON document carries the failure too, as the error body's `error`.
                value["error"] = error_body(e);
            }
            emit(opts.json, &value, || report.print());
            result
        }
        Command::Logs {
            action:
                LogsAction::Analyze {
                    file,
                    slow_ms,
                    json,
                },
        } => {
            let analysis = if file.as_os_str() == "-" {
                crate::logs::analyze(std::io::stdin().lock(), slow_ms)
            } else {
                std::fs::File::open(&file)
                    .and_then(|f| crate::logs::analyze(std::io::BufReader::new(f), slow_ms))
            }
            .map_err(|e| {
                CliError::new(
                    ErrorCode::InvalidInput,
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            // A text log parses as nothing, which must not read as a clean log.
            if let Some(why) = analysis.unusable() {
                return Err(CliError::new(
                    ErrorCode::ValidationFailed,
                    format!("{}: {why}", file.display()),
                ));
            }
            let value = serde_json::to_value(&analysis).unwrap_or_default();
            emit(json, &value, || analysis.print(slow_ms));
            Ok(())
        }
        Command::Backup { out, opts } => {
            let store = sqlite_store_for_backup(&opts)?;
            let manifest = crate::backup::backup(
                &store,
                opts.config.as_deref(),
                opts.plugins.as_deref(),
                &out,
            )
            .map_err(|e| CliError::new(e.code, e.message))?;
            let value = serde_json::to_value(&manifest).unwrap_or_default();
            emit(opts.json, &value, || {
                println!(
                    "backed up {} runs and {} files from {} into {}",
                    manifest.runs,
                    manifest.files.len(),
                    store.display(),
                    out.display()
                );
            });
            Ok(())
        }
        Command::Restore { from, force, opts } => {
            let store = restore_store(&opts, &from)?;
            let restored = crate::backup::restore(
                &from,
                &store,
                opts.config.as_deref(),
                opts.plugins.as_deref(),
                force,
            )
            .map_err(|e| CliError::new(e.code, e.message))?;
            let value = serde_json::to_value(&restored).unwrap_or_default();
            emit(opts.json, &value, || {
                println!("restored {} runs into {}", restored.runs, restored.store);
                for kept in &restored.kept {
                    println!("kept the file it replaced as {kept}");
                }
            });
            Ok(())
        }
        Command::Synth {
            preset,
            out,
            dtype,
            force,
        } => {
            use crate::engine::quant::GgmlType;
            use crate::engine::synthetic::SyntheticSpec;
            let ty = match dtype.as_str() {
                "f32" => GgmlType::F32,
                "f16" => GgmlType::F16,
                "bf16" => GgmlType::BF16,
                other => {
                    return Err(CliError::new(
                        ErrorCode::InvalidInput,
                        format!("--dtype {other}: expected f32, f16 or bf16"),
                    ));
                }
            };
            let spec = SyntheticSpec::preset(&preset, ty).ok_or_else(|| {
                CliError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "unknown preset {preset:?} (known: {})",
                        SyntheticSpec::PRESETS
                    ),
                )
            })?;
            // Random weights over a real checkpoint would be a loss nobody asked for.
            let holds_files = out.is_file()
                || std::fs::read_dir(&out).is_ok_and(|mut entries| entries.next().is_some());
            if holds_files && !force {
                return Err(CliError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "{} is not an empty folder: synth writes random weights into a new or \
                         empty one (--force to replace what is there)",
                        out.display()
                    ),
                ));
            }
            spec.write(&out).map_err(|e| {
                let code = match e.kind() {
                    std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::AlreadyExists
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::InvalidInput => ErrorCode::InvalidInput,
                    _ => ErrorCode::Internal,
                };
                CliError::new(code, format!("cannot write {}: {e}", out.display()))
            })?;
            eprintln!("wrote {preset} ({dtype}) to {}", out.display());
            Ok(())
        }
        Command::Chat {
            message,
            max_tokens,
            opts,
        } => {
            let message = text_or_stdin(message)?;
            refuse_empty("the message", &message)?;
            let model = load_default_model(&opts)?;
            let params = crate::engine::SamplingParams {
                max_tokens,
                ..Default::default()
            };
            let prompt =
                crate::engine::Prompt::Chat(vec![crate::engine::chat_template::TemplateMessage {
                    role: "user".into(),
                    content: message,
                }]);
            stream_completion(
                &model,
                &prompt,
                &params,
                opts.json,
                crate::server::chat_answer,
            )
        }
        Command::Plugin {
            action: PluginAction::List { server },
            opts,
        } => {
            let listing = match server {
                Some(base) => server_plugins(&base)?,
                None => {
                    // As a server would start on the folder: what it uses, and what it refuses
                    // (listed, and then the command's error, so a script notices).
                    let (pipeline, _) = load_pipeline_with_reload(&opts, None)?;
                    let list: Vec<Value> = pipeline
                        .plugins
                        .current()
                        .all()
                        .iter()
                        .map(|p| p.describe())
                        .collect();
                    let refused = pipeline.plugins.refused();
                    let mut listing = json!({"plugins": list, "refused": refused});
                    let result = refusal_error(&refused).map_or(Ok(()), Err);
                    if let Err(e) = &result {
                        listing["error"] = error_body(e);
                    }
                    emit(opts.json, &listing, || print_plugin_list(&listing));
                    return result;
                }
            };
            emit(opts.json, &listing, || print_plugin_list(&listing));
            Ok(())
        }
        Command::Plugin {
            action: PluginAction::Inspect { target },
            opts,
        } => {
            let plugin = if target.ends_with(".wasm") || Path::new(&target).is_file() {
                let (host, _) = plugin_host(&opts, None)?;
                match crate::authoring::load_file(&host, Path::new(&target)) {
                    Ok(plugin) => Arc::new(plugin),
                    // What a plugin asks for is what one inspects before granting it: its
                    // manifest, with what is missing.
                    Err(e @ crate::plugin::PluginError::NotGranted { .. }) => {
                        let manifest = crate::authoring::read_manifest(Path::new(&target))
                            .map_err(|m| CliError::new(ErrorCode::PluginLoad, m))?;
                        let value = json!({
                            "name": manifest.name,
                            "version": manifest.version,
                            "world": manifest.world,
                            "description": manifest.description,
                            "asks": manifest.permissions,
                            "granted": null,
                            "not_granted": e.to_string(),
                        });
                        emit(opts.json, &value, || {
                            println!(
                                "{} {} ({})",
                                manifest.name, manifest.version, manifest.world
                            );
                            println!("  {}", manifest.description);
                            println!(
                                "  asks:     {}",
                                serde_json::to_string(&manifest.permissions).unwrap_or_default()
                            );
                            println!("  granted:  not yet: {e}");
                        });
                        return Ok(());
                    }
                    Err(e) => return Err(CliError::new(e.code(), e.to_string())),
                }
            } else {
                let pipeline = load_pipeline(&opts, None)?;
                pipeline
                    .plugins
                    .current()
                    .all()
                    .into_iter()
                    .find(|p| p.manifest.name == target)
                    .ok_or_else(|| {
                        CliError::new(
                            ErrorCode::PluginNotFound,
                            format!(
                                "no plugin named {target} (give a .wasm path to inspect a file)"
                            ),
                        )
                    })?
            };
            emit(opts.json, &plugin.describe(), || {
                let m = &plugin.manifest;
                println!("{} {} ({})", m.name, m.version, m.world);
                println!(
                    "  wit:      {}@{}",
                    crate::plugin::wit_version::PACKAGE,
                    plugin.wit_version
                );
                println!("  {}", m.description);
                println!("  source:   {}", source_label(&plugin.source));
                println!(
                    "  size:     {} bytes, sha256 {}",
                    plugin.size_bytes, plugin.sha256
                );
                println!(
                    "  compile:  {} ms{}",
                    plugin.compile_ms,
                    if plugin.cache_hit {
                        " (from cache)"
                    } else {
                        ""
                    }
                );
                println!(
                    "  asks:     {}",
                    serde_json::to_string(&m.permissions).unwrap_or_default()
                );
                println!("  granted:  {}", plugin.granted.summary());
            });
            Ok(())
        }
        Command::Plugin {
            action: PluginAction::Check { file },
            opts,
        } => {
            // Generators and reviewers need the model for their self-test; without one they are
            // only instantiated, and the report says so.
            let uses_llm = crate::authoring::read_manifest(&file).is_ok_and(|m| m.world.uses_llm());
            let (engine, model_problem) = if uses_llm {
                match load_engine(&opts) {
                    Ok(engine) => (Some(engine), None),
                    Err(e) => (None, Some(e)),
                }
            } else {
                (None, None)
            };
            let (host, _) = plugin_host(&opts, engine)?;
            let crate::authoring::FileCheck {
                mut report,
                failure,
            } = crate::authoring::check_file(&host, &file);
            if let Some(e) = model_problem {
                // Without a model the self-test only instantiates the plugin: say why.
                report.checks.insert(
                    0,
                    crate::doctor::Check {
                        name: "model".into(),
                        status: crate::doctor::Status::Warn,
                        detail: format!(
                            "{} {} (the self-test cannot call the model)",
                            e.code, e.message
                        ),
                    },
                );
            }
            let result = match failure {
                None => Ok(()),
                Some(code) => {
                    let failed: Vec<&str> = report
                        .checks
                        .iter()
                        .filter(|c| c.status == crate::doctor::Status::Fail)
                        .map(|c| c.name.as_str())
                        .collect();
                    Err(CliError::new(
                        code,
                        format!(
                            "{}: failed at {} (the checks are {})",
                            file.display(),
                            failed.join(", "),
                            crate::authoring::CHECK_STEPS.join(", ")
                        ),
                    ))
                }
            };
            let mut value = serde_json::to_value(&report).unwrap_or_default();
            if let Err(e) = &result {
                value["error"] = error_body(e);
            }
            emit(opts.json, &value, || report.print());
            result
        }
        Command::Plugin {
            action:
                PluginAction::New {
                    name,
                    world,
                    lang,
                    dir,
                },
            opts,
        } => {
            let (project, files) = crate::authoring::scaffold::create(&dir, &name, world, lang)
                .map_err(|e| CliError::new(ErrorCode::InvalidInput, e.to_string()))?;
            let value = json!({"project": project, "files": files});
            emit(opts.json, &value, || {
                println!("created {} ({world}, {lang:?}):", project.display());
                for f in &files {
                    println!("  {}", f.display());
                }
                let config = if world.uses_llm() {
                    " --config agentrt.toml"
                } else {
                    ""
                };
                println!(
                    "next: cd {} && agentrt plugin build && agentrt plugin check \
                     dist/{name}.wasm{config}",
                    project.display()
                );
            });
            Ok(())
        }
        Command::Plugin {
            action: PluginAction::Build { project, out },
            opts,
        } => {
            let out = out.unwrap_or_else(|| project.join("dist"));
            let built = crate::authoring::build::build(&project, &out)
                .map_err(|e| CliError::new(ErrorCode::PluginLoad, e.to_string()))?;
            emit(
                opts.json,
                &serde_json::to_value(&built).unwrap_or_default(),
                || {
                    println!(
                        "built {} ({}, {}): {} bytes in {:.1} s, with {}",
                        built.wasm.display(),
                        built.world,
                        built.language,
                        built.size_bytes,
                        built.seconds,
                        built.manifest.display()
                    );
                },
            );
            Ok(())
        }
        Command::Plugin {
            action: PluginAction::Wit { out },
            ..
        } => {
            let text = crate::plugin::wit_version::WIT_SOURCE;
            match out {
                Some(path) => {
                    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            CliError::new(
                                ErrorCode::InvalidInput,
                                format!("{}: {e}", parent.display()),
                            )
                        })?;
                    }
                    // Where to write is the caller's choice: a folder or a read-only path
                    // named there is their mistake to fix.
                    std::fs::write(&path, text).map_err(|e| {
                        CliError::new(ErrorCode::InvalidInput, format!("{}: {e}", path.display()))
                    })
                }
                None => {
                    print!("{text}");
                    Ok(())
                }
            }
        }
        Command::Models {
            action: ListAction::List,
            opts,
        } => {
            let engine = load_engine(&opts)?;
            let list: Vec<_> = engine.models().iter().map(|m| m.info.clone()).collect();
            emit(opts.json, &json!({"models": list}), || {
                for m in &list {
                    println!(
                        "{:<24} {:<8} ctx {:<6} {:>6.1} MB  {}",
                        m.id,
                        m.architecture,
                        m.context_length,
                        m.file_bytes as f64 / 1e6,
                        m.path.display()
                    );
                }
            });
            Ok(())
        }
        Command::Eval { args, opts } => eval::run(args, &opts),
        Command::Bench {
            prompt_tokens,
            decode_tokens,
            runs,
            opts,
        } => crate::bench::run(&opts, prompt_tokens, decode_tokens, runs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_without_a_line_or_column_print_without_them() {
        assert_eq!(finding_place("sol.py", 3, 5), "sol.py:3:5");
        assert_eq!(finding_place("sol.py", 3, 0), "sol.py:3");
        assert_eq!(finding_place("sol.py", 0, 0), "sol.py");
    }

    #[test]
    fn a_message_cannot_start_a_line_that_reads_as_a_finding() {
        assert_eq!(
            indented("bad\nfake.py:9:9: error [x] forged\n"),
            "bad\n    fake.py:9:9: error [x] forged"
        );
        assert_eq!(indented("one line"), "one line");
    }

    #[test]
    fn a_model_file_is_named_without_gguf_and_a_folder_by_its_whole_name() {
        let dir = std::env::temp_dir();
        assert_eq!(
            model_id(&dir.join("Qwen2.5-Coder-0.5B.Q8_0.gguf"), 1),
            "qwen2.5-coder-0.5b.q8_0"
        );
        assert_eq!(model_id(&dir.join("weights.bin"), 1), "weights.bin");
        assert_eq!(model_id(Path::new("/"), 3), "model-3");
    }

    #[test]
    fn listen_takes_an_address_or_a_name_with_a_port() {
        let at = |text: &str| listen_address(text);
        assert_eq!(
            at("127.0.0.1:8080"),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(at("[::1]:9000"), Ok("[::1]:9000".parse().expect("addr")));
        let local = at("localhost:8080").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        for bad in ["localhost", "localhost:http", "127.0.0.1:70000", ""] {
            assert!(at(bad).is_err(), "{bad:?} was taken");
        }
    }
}
