//! Where agentrt keeps what it downloads and builds: models, the plugin cache, CPython for WASI.
//!
//! Everything lives under `AGENTRT_HOME` (default `~/.cache/agentrt`), which `scripts/setup.sh`
//! fills; nothing there is committed to the repository.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Write (and sync) a page of zeros into a new file in folder `dir`, then remove it: whether
/// the folder takes bytes, which making an empty file does not show (it succeeds on a full
/// disk too).
pub fn write_probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = dir.join(format!(".agentrt-probe-{:016x}", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(&[0; 4096])?;
            file.sync_all()
        });
    // Removed even when the write failed half-way; the write's failure is the answer.
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// Open `path` for reading if it is a regular file (a link to one is followed). A FIFO would
/// block the open until a writer comes and a device (`/dev/zero`) reads for ever: both are
/// refused before they are opened, and checked again on what was opened (opened without
/// blocking), in case the path was replaced in between.
pub fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a folder)",
        )
    };
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    match file.metadata()?.is_file() {
        true => Ok(file),
        false => Err(not_regular()),
    }
}

/// `path` with `suffix` appended to its file name (`agentrt.db` → `agentrt.db-wal`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// File name of the default model inside the models folder.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Name clients use for the default model.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// Root of agentrt's cache.
pub fn home() -> PathBuf {
    if let Some(dir) = non_empty(std::env::var_os("AGENTRT_HOME")) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(".cache").join("agentrt")
}

/// The default model file (`AGENTRT_MODEL` overrides it).
pub fn default_model() -> PathBuf {
    match non_empty(std::env::var_os("AGENTRT_MODEL")) {
        Some(p) => PathBuf::from(p),
        None => home().join("models").join(DEFAULT_MODEL_FILE),
    }
}

/// Where the run store is: `AGENTRT_STORE`, else the config's `store` (`configured`), else the
/// SQLite file [`store`]. A `postgres://` URL or a file path.
pub fn store_location(configured: Option<&str>) -> String {
    location_from(env_store(), configured, home())
}

/// The SQLite run store file: `AGENTRT_STORE`, else `$AGENTRT_HOME/agentrt.db`.
pub fn store() -> PathBuf {
    store_file(env_store(), home())
}

/// `AGENTRT_STORE`, where it says something: an empty value (`AGENTRT_STORE=` in a unit or
/// compose file) means unset, not a store at the path "".
fn env_store() -> Option<OsString> {
    non_empty(std::env::var_os("AGENTRT_STORE"))
}

fn non_empty(value: Option<OsString>) -> Option<OsString> {
    value.filter(|v| !v.is_empty())
}

/// [`store`] from `AGENTRT_STORE`'s value (already [`non_empty`]) and the home folder.
fn store_file(env: Option<OsString>, home: PathBuf) -> PathBuf {
    env.map(PathBuf::from)
        .unwrap_or_else(|| home.join("agentrt.db"))
}

/// [`store_location`] from `AGENTRT_STORE`'s value (already [`non_empty`]), the config's
/// `store` and the home folder.
fn location_from(env: Option<OsString>, configured: Option<&str>, home: PathBuf) -> String {
    match (env, configured) {
        (Some(env), _) => env.to_string_lossy().into_owned(),
        (None, Some(configured)) => configured.to_string(),
        (None, None) => store_file(None, home).display().to_string(),
    }
}

/// Folder of precompiled plugin components.
pub fn component_cache() -> PathBuf {
    home().join("components")
}

/// HumanEval's problems, fetched by scripts/setup.sh: what `agentrt eval` runs by default.
pub fn humaneval() -> PathBuf {
    home().join("benchmarks").join("HumanEval.jsonl.gz")
}

/// CPython for WASI, which runs generated tests (fetched by scripts/setup.sh;
/// `AGENTRT_PYTHON_WASM` overrides it).
pub fn python_wasm() -> PathBuf {
    match non_empty(std::env::var_os("AGENTRT_PYTHON_WASM")) {
        Some(p) => PathBuf::from(p),
        None => home().join("python").join("python.wasm"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_agentrt_store_is_unset() {
        let home = PathBuf::from("/home/agentrt");
        let empty = || non_empty(Some(OsString::new()));
        assert_eq!(empty(), None);
        assert_eq!(store_file(empty(), home.clone()), home.join("agentrt.db"));
        assert_eq!(
            location_from(empty(), None, home.clone()),
            "/home/agentrt/agentrt.db"
        );
        assert_eq!(location_from(empty(), Some("/c.db"), home.clone()), "/c.db");
        // A value that says something still wins over the config.
        let set = non_empty(Some("/e.db".into()));
        assert_eq!(
            store_file(set.clone(), home.clone()),
            PathBuf::from("/e.db")
        );
        assert_eq!(location_from(set, Some("/c.db"), home), "/e.db");
    }
}
