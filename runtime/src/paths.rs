//! Where agentrt keeps what it downloads and builds: models, the plugin cache, CPython for WASI.
//!
//! Everything lives under `AGENTRT_HOME` (default `~/.cache/agentrt`), which `scripts/setup.sh`
//! fills; nothing there is committed to the repository.

use std::path::PathBuf;

/// File name of the default model inside the models folder.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Name clients use for the default model.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// Root of agentrt's cache.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("AGENTRT_HOME") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(".cache").join("agentrt")
}

/// The default model file (`AGENTRT_MODEL` overrides it).
pub fn default_model() -> PathBuf {
    match std::env::var_os("AGENTRT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => home().join("models").join(DEFAULT_MODEL_FILE),
    }
}

/// Where the run store is: `AGENTRT_STORE`, else the config's `store` (`configured`), else the
/// SQLite file [`store`]. A `postgres://` URL or a file path.
pub fn store_location(configured: Option<&str>) -> String {
    std::env::var("AGENTRT_STORE")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| configured.map(str::to_string))
        .unwrap_or_else(|| store().display().to_string())
}

/// The SQLite run store file: `AGENTRT_STORE`, else `$AGENTRT_HOME/agentrt.db`.
pub fn store() -> PathBuf {
    match std::env::var_os("AGENTRT_STORE") {
        Some(p) => PathBuf::from(p),
        None => home().join("agentrt.db"),
    }
}

/// Folder of precompiled plugin components.
pub fn component_cache() -> PathBuf {
    home().join("components")
}

/// CPython for WASI, which runs generated tests (fetched by scripts/setup.sh;
/// `AGENTRT_PYTHON_WASM` overrides it).
pub fn python_wasm() -> PathBuf {
    match std::env::var_os("AGENTRT_PYTHON_WASM") {
        Some(p) => PathBuf::from(p),
        None => home().join("python").join("python.wasm"),
    }
}
