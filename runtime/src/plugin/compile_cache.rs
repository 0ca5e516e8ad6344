//! On-disk cache of compiled components, keyed by the component's content hash and the
//! wasmtime engine's compatibility hash, so each component is compiled by Cranelift once per
//! machine and later starts load native code directly.
//!
//! Each new plugin build or wasmtime upgrade adds entries that nothing asks for again, so the
//! folder is pruned whenever an entry is stored (when it grows): entries unused for 30 days
//! go, then the least recently used until the rest fit in 1 GiB. A hit marks its entry used
//! through its modification time (access times are often not kept); the entry just stored and
//! those this process holds loaded (until the plugin version is replaced) are never removed, nor files not named as entries (a crashed
//! writer's half-written entry goes once a day old). Pruning
//! failures are logged, never returned: they cannot fail a load.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// Why `bytes` cannot be a component, read from its header before anything is compiled: a
/// plugin built for the wrong target gets the fix, not a parser's complaint.
pub fn component_header_problem(bytes: &[u8]) -> Option<&'static str> {
    if !bytes.starts_with(b"\0asm") {
        return Some("not a WebAssembly file");
    }
    // A core module's header is version 1, layer 0; a component's is layer 1.
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return Some(
            "a core WebAssembly module, not a component: build the plugin for wasm32-wasip2 \
             (wasm32-wasip1 and wasm32-unknown-unknown make core modules), as `agentrt plugin \
             build` does",
        );
    }
    None
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` (a digest) in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and hex SHA-256 of the file at `path`, read in a stream (model files are large).
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, format!("{:x}", hasher.finalize())))
}

/// How long an entry may go unused before a store removes it: a component since rebuilt, or
/// compiled for a wasmtime since upgraded, is never asked for again.
const MAX_UNUSED: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most the entries may take together; past it, the least recently used go first.
const MAX_TOTAL_BYTES: u64 = 1 << 30;

/// What the cache keeps (a type, so tests prune with small limits).
#[derive(Debug, Clone, Copy)]
struct PruneLimits {
    max_unused: Duration,
    max_total_bytes: u64,
}

impl PruneLimits {
    const DEFAULT: Self = Self {
        max_unused: MAX_UNUSED,
        max_total_bytes: MAX_TOTAL_BYTES,
    };
}

/// File names of the entries this process holds loaded, with how many loads hold each: never
/// pruned by it while held, however long ago they were stored (a long-running server's
/// plugins are in use whatever their files' age), and prunable again once the last
/// [`CacheHold`] goes (a plugin version replaced by hot reload). Names, not paths, so two
/// caches naming the same folder differently agree.
static IN_USE: Mutex<BTreeMap<OsString, usize>> = Mutex::new(BTreeMap::new());

/// A loaded entry held in use: this process does not prune it while the hold lives. Kept by
/// whatever keeps the compiled code (a plugin version, the sandbox).
#[derive(Debug)]
pub struct CacheHold {
    name: Option<OsString>,
}

impl CacheHold {
    /// A hold on the entry at `path` (`None`: nothing cached, nothing held).
    fn of(path: Option<&Path>) -> Self {
        let name = path.and_then(Path::file_name).map(OsStr::to_os_string);
        if let Some(name) = &name {
            *IN_USE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.clone())
                .or_default() += 1;
        }
        Self { name }
    }
}

impl Drop for CacheHold {
    fn drop(&mut self) {
        let Some(name) = &self.name else {
            return;
        };
        let mut held = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(name) {
            *count -= 1;
            if *count == 0 {
                held.remove(name);
            }
        }
    }
}

/// Compiles components, reusing earlier compilations found in `dir`.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// `None` disables the disk cache (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// Where the compiled form of this content for this engine is kept; `None` without a
    /// cache folder or with one this user cannot trust ([`folder_is_ours`]).
    fn entry(&self, engine: &wasmtime::Engine, content_hash: &str) -> Option<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = h.finish();
        self.dir
            .as_ref()
            .filter(|d| folder_is_ours(d))
            .map(|d| d.join(format!("{content_hash}-{engine_key:016x}.cwasm")))
    }

    /// The compiled form of `bytes`, from the cache when possible. Returns whether it was a
    /// hit, and the hold that keeps its entry from this process's pruning.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, bool, CacheHold)> {
        self.load_compiled(
            engine,
            content_hash,
            "component",
            || Component::new(engine, bytes),
            Component::serialize,
            // SAFETY: the file was written by `Component::serialize` into agentrt's own cache
            // folder (owned by this user, writable by nobody else: checked), and its name binds
            // it to this content and this engine configuration.
            |path| unsafe { Component::deserialize_file(engine, path) },
        )
    }

    /// [`CompileCache::load`] for a core module (the sandboxed interpreter).
    pub fn load_module(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(wasmtime::Module, bool, CacheHold)> {
        self.load_compiled(
            engine,
            content_hash,
            "module",
            || wasmtime::Module::new(engine, bytes),
            wasmtime::Module::serialize,
            // SAFETY: as for components: written by `Module::serialize` into agentrt's own
            // cache folder (checked as there), under a name bound to this content and engine
            // configuration.
            |path| unsafe { wasmtime::Module::deserialize_file(engine, path) },
        )
    }

    /// What [`CompileCache::load`] and [`CompileCache::load_module`] share: the entry for
    /// `content_hash` when it is ours and loads (a hit), else `compile`d, stored, and loaded
    /// back from the entry just stored, as a hit loads it: its code and data are then pages of
    /// that file, not memory of the process's own for as long as it is used.
    fn load_compiled<T>(
        &self,
        engine: &wasmtime::Engine,
        content_hash: &str,
        what: &str,
        compile: impl FnOnce() -> wasmtime::Result<T>,
        serialize: impl FnOnce(&T) -> wasmtime::Result<Vec<u8>>,
        deserialize_file: impl Fn(&Path) -> wasmtime::Result<T>,
    ) -> wasmtime::Result<(T, bool, CacheHold)> {
        let entry = self.entry(engine, content_hash);
        if let Some(path) = &entry
            && file_is_ours(path)
        {
            match deserialize_file(path) {
                Ok(compiled) => {
                    let hold = CacheHold::of(Some(path));
                    mark_used(path);
                    return Ok((compiled, true, hold));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let compiled = compile()?;
        let Some(path) = &entry else {
            return Ok((compiled, false, CacheHold::of(None)));
        };
        let hold = store(path, &serialize(&compiled)?, what);
        if hold.name.is_none() {
            return Ok((compiled, false, hold));
        }
        let compiled = deserialize_file(path).unwrap_or(compiled);
        Ok((compiled, false, hold))
    }
}

/// Write the entry at `path` (`what` was compiled: a component or a module), then prune its
/// folder: a store is when the folder grows. A failure to cache is logged: the load goes on
/// with what it compiled (and holds nothing).
fn store(path: &Path, compiled: &[u8], what: &str) -> CacheHold {
    match write_atomically(path, compiled) {
        Ok(()) => {
            let hold = CacheHold::of(Some(path));
            if let Some(dir) = path.parent() {
                prune(dir, path, PruneLimits::DEFAULT, SystemTime::now());
            }
            hold
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot cache compiled {what}: {e}");
            CacheHold::of(None)
        }
    }
}

fn in_use(name: &OsStr) -> bool {
    IN_USE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(name)
}

/// A hit: make the entry the most recently used for every process's pruning, which orders
/// entries by modification time.
fn mark_used(path: &Path) {
    let touched = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        // A read-only cache still serves; its entries just age from when they were written.
        tracing::debug!(path = %path.display(), "cannot mark cache entry used: {e}");
    }
}

/// Whether `name` is a cache entry's, `{SHA-256 hex}-{engine key hex}.cwasm` as
/// [`CompileCache::entry`] names them: nothing else in the folder is ours to remove.
fn is_entry_name(name: &str) -> bool {
    let Some((content, engine)) = name
        .strip_suffix(".cwasm")
        .and_then(|stem| stem.split_once('-'))
    else {
        return false;
    };
    is_lower_hex(content, 64) && is_lower_hex(engine, 16)
}

/// Whether `name` is a half-written entry, `{entry stem}.tmp{pid}-{write}` as
/// [`write_atomically`] names them (`.tmp{pid}` before): one a crashed process left is removed
/// once it is a day old (a live writer renames its file within seconds).
fn is_temp_name(name: &str) -> bool {
    let Some((stem, suffix)) = name.rsplit_once(".tmp") else {
        return false;
    };
    let number = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    let numbered = match suffix.split_once('-') {
        Some((pid, write)) => number(pid) && number(write),
        None => number(suffix),
    };
    numbered && is_entry_name(&format!("{stem}.cwasm"))
}

/// How old a half-written entry must be before pruning takes it for a crashed writer's.
const ABANDONED_TEMP: Duration = Duration::from_secs(24 * 3600);

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A cache entry found in the folder.
#[derive(Debug)]
struct Stored {
    path: PathBuf,
    bytes: u64,
    /// When it was last stored or hit.
    used: SystemTime,
}

/// Remove the entries of `dir` that [`victims`] picks, sparing `keep` (the entry just stored)
/// and those this process uses. Failures are logged and skipped: housekeeping never fails a
/// load.
fn prune(dir: &Path, keep: &Path, limits: PruneLimits, now: SystemTime) {
    let stored = match list_entries(dir) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot list the compile cache to prune it: {e}");
            return;
        }
    };
    let spared = |path: &Path| {
        path.file_name()
            .is_some_and(|name| Some(name) == keep.file_name() || in_use(name))
    };
    let abandoned = abandoned_temps(dir, now);
    for path in victims(stored, limits, now, spared)
        .into_iter()
        .chain(abandoned)
    {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "pruned compile cache entry"),
            // Another process pruned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot prune compile cache entry: {e}")
            }
        }
    }
}

/// Half-written entries in `dir` older than [`ABANDONED_TEMP`]; none when it cannot be read.
fn abandoned_temps(dir: &Path, now: SystemTime) -> Vec<PathBuf> {
    let Ok(items) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    items
        .flatten()
        .filter(|item| item.file_name().to_str().is_some_and(is_temp_name))
        .filter(|item| {
            item.metadata().is_ok_and(|meta| {
                meta.is_file()
                    && meta.modified().is_ok_and(|modified| {
                        now.duration_since(modified)
                            .is_ok_and(|age| age > ABANDONED_TEMP)
                    })
            })
        })
        .map(|item| item.path())
        .collect()
}

/// The entries in `dir`: plain files named as entries, with their sizes and last use. Links,
/// other files and entries whose time cannot be read are left out, so never removed.
fn list_entries(dir: &Path) -> std::io::Result<Vec<Stored>> {
    let mut stored = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if !item.file_name().to_str().is_some_and(is_entry_name) {
            continue;
        }
        // `DirEntry::metadata` does not follow links: a link is not a file here.
        let Ok(meta) = item.metadata() else { continue };
        let Ok(used) = meta.modified() else { continue };
        if meta.is_file() {
            stored.push(Stored {
                path: item.path(),
                bytes: meta.len(),
                used,
            });
        }
    }
    Ok(stored)
}

/// Which of `stored` to remove, least recently used first: every entry unused for longer than
/// `limits.max_unused`, and more until the rest fit in `limits.max_total_bytes`. `spared`
/// entries stay whatever their age, but their bytes still count towards the total.
fn victims(
    mut stored: Vec<Stored>,
    limits: PruneLimits,
    now: SystemTime,
    spared: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    stored.sort_by_key(|s| s.used);
    let mut total = stored
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.bytes));
    let mut chosen = Vec::new();
    for s in stored {
        // A time ahead of the clock (a clock set back) counts as just used.
        let unused = now.duration_since(s.used).unwrap_or_default();
        if (unused > limits.max_unused || total > limits.max_total_bytes) && !spared(&s.path) {
            total = total.saturating_sub(s.bytes);
            chosen.push(s.path);
        }
    }
    chosen
}

/// The process's effective user.
fn this_user() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether the cache folder `dir` is this user's alone, creating it (mode 0700) when missing:
/// loading an entry runs its native code, so a folder others can write into (a shared
/// temporary folder, a misconfigured `AGENTRT_HOME`) is not used at all. A folder of this
/// user's that others may write to is closed to them first.
fn folder_is_ours(dir: &Path) -> bool {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    if !meta.is_dir() || meta.uid() != this_user() {
        tracing::warn!(
            path = %dir.display(),
            "not using the compile cache: the folder is not this user's own"
        );
        return false;
    }
    if meta.mode() & 0o022 != 0 {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).is_ok();
    }
    true
}

/// Whether the entry at `path` is a file this user wrote that nobody else can change.
fn file_is_ours(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_file() && m.uid() == this_user() && m.mode() & 0o022 == 0)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Named for this process and this write: two threads storing the same entry at once must
    // not write into one file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{write}", std::process::id()));
    // A new file of our own (a crashed earlier process with our id may have left one; a link
    // planted there is removed, not followed).
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid core module: the magic number and version.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn a_core_module_is_told_apart_from_a_component_by_its_header() {
        let module = component_header_problem(EMPTY_MODULE).expect("a module is refused");
        assert!(module.contains("wasm32-wasip2"), "{module}");
        assert_eq!(
            component_header_problem(b"PK\x03\x04"),
            Some("not a WebAssembly file")
        );
        // A component's header (version 13, layer 1) goes on to be compiled.
        assert_eq!(component_header_problem(b"\0asm\x0d\0\x01\0"), None);
    }
    const DAY: Duration = Duration::from_secs(24 * 3600);

    /// A cache in `dir` and an engine, after loading the empty module (its hash) through them
    /// once: whether that load was a hit.
    fn first_load(dir: &Path) -> (CompileCache, wasmtime::Engine, String, bool) {
        let cache = CompileCache::new(Some(dir.to_path_buf()));
        let engine = wasmtime::Engine::default();
        let hash = sha256_hex(EMPTY_MODULE);
        let (_, hit, _) = cache
            .load_module(&engine, EMPTY_MODULE, &hash)
            .expect("compile");
        (cache, engine, hash, hit)
    }

    fn temp(label: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "agentrt-compile-cache-{label}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        p
    }

    /// Make the file at `path` last modified `age` ago.
    fn set_age(path: &Path, age: Duration) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(SystemTime::now() - age)
            .expect("set the modification time");
    }

    /// A file named as entry `n` (of another engine than the tests'), `bytes` long, last used
    /// `age` ago.
    fn entry_file(dir: &Path, n: u8, bytes: usize, age: Duration) -> PathBuf {
        let content = format!("{n:02x}").repeat(32);
        let path = dir.join(format!("{content}-{:016x}.cwasm", 7));
        std::fs::write(&path, vec![0u8; bytes]).expect("write an entry");
        set_age(&path, age);
        path
    }

    fn age_of(path: &Path) -> Duration {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("modification time");
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default()
    }

    #[test]
    fn a_store_removes_entries_long_unused_and_nothing_else() {
        let dir = temp("unused");
        let stale = entry_file(&dir, 0x01, 10, 60 * DAY);
        let fresh = entry_file(&dir, 0x02, 10, DAY);
        // Old files that are not entries: not ours to remove.
        let hex = "a".repeat(64);
        let foreign = [
            dir.join("notes.txt"),
            dir.join("stale.cwasm"),
            dir.join(format!("{hex}-{:016x}.cwasm.bak", 7)),
            dir.join(format!("{}-{:016x}.cwasm", "A".repeat(64), 7)),
            dir.join(format!("{hex}-{:016x}.tmpx123", 7)),
            dir.join(format!("{hex}-{:016x}.tmp123-", 7)),
        ];
        // A crashed writer's half-written entry goes once a day old (named as this version
        // names them, or as the last did); a live writer's stays.
        let abandoned = dir.join(format!("{hex}-{:016x}.tmp123-4", 7));
        let abandoned_before = dir.join(format!("{hex}-{:016x}.tmp123", 9));
        let writing = dir.join(format!("{hex}-{:016x}.tmp124-0", 8));
        for (path, age) in [
            (&abandoned, 2 * DAY),
            (&abandoned_before, 2 * DAY),
            (&writing, Duration::ZERO),
        ] {
            std::fs::write(path, b"x").expect("write");
            set_age(path, age);
        }
        for path in &foreign {
            std::fs::write(path, b"x").expect("write");
            set_age(path, 60 * DAY);
        }
        let (cache, engine, hash, hit) = first_load(&dir);
        assert!(!hit);
        let written = cache.entry(&engine, &hash).expect("a cache folder");
        assert!(written.exists(), "the entry just stored stays");
        let name = written.file_name().and_then(OsStr::to_str).expect("name");
        assert!(is_entry_name(name), "pruning must know {name} as an entry");
        assert!(!stale.exists(), "an entry unused for 60 days goes");
        assert!(fresh.exists(), "an entry used yesterday stays");
        for path in &foreign {
            assert!(path.exists(), "{} is not an entry", path.display());
        }
        assert!(!abandoned.exists(), "a day-old half-written entry goes");
        assert!(!abandoned_before.exists(), "so does one named the old way");
        assert!(writing.exists(), "a half-written entry being written stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_entries_no_one_else_can_write_are_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp("trust");
        // A folder of ours open to others is closed before use.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let (cache, engine, hash, hit) = first_load(&dir);
        assert!(!hit);
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let (_, hit, _) = cache
            .load_module(&engine, EMPTY_MODULE, &hash)
            .expect("load");
        assert!(hit, "its own entry is used");
        // An entry others could have written is compiled again, not run.
        let entry = cache.entry(&engine, &hash).expect("entry");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let (_, hit, _) = cache
            .load_module(&engine, EMPTY_MODULE, &hash)
            .expect("compile");
        assert!(!hit, "an entry writable by others was loaded");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pruning_keeps_the_total_under_the_cap_least_recently_used_first() {
        let dir = temp("cap");
        // The entry just stored, made the oldest: only being spared keeps it.
        let kept = entry_file(&dir, 0x11, 100, 4 * DAY);
        let oldest = entry_file(&dir, 0x12, 100, 3 * DAY);
        let older = entry_file(&dir, 0x13, 100, 2 * DAY);
        let newest = entry_file(&dir, 0x14, 100, DAY);
        let limits = PruneLimits {
            max_unused: 30 * DAY,
            max_total_bytes: 250,
        };
        prune(&dir, &kept, limits, SystemTime::now());
        // 400 bytes: the two least recently used of the others go, leaving 200.
        assert!(kept.exists());
        assert!(!oldest.exists());
        assert!(!older.exists());
        assert!(newest.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A plugin version replaced by hot reload lets go of its entry: a server running for
    /// weeks while plugins are rebuilt does not keep every version past the cache's cap.
    #[test]
    fn a_held_entry_is_spared_until_its_last_hold_goes() {
        let dir = temp("held");
        let held = entry_file(&dir, 0x21, 100, 60 * DAY);
        let kept = entry_file(&dir, 0x22, 10, Duration::ZERO);
        let (first, second) = (CacheHold::of(Some(&held)), CacheHold::of(Some(&held)));
        prune(&dir, &kept, PruneLimits::DEFAULT, SystemTime::now());
        assert!(held.exists(), "held: spared though long unused");
        drop(first);
        prune(&dir, &kept, PruneLimits::DEFAULT, SystemTime::now());
        assert!(held.exists(), "still held by the second load");
        drop(second);
        prune(&dir, &kept, PruneLimits::DEFAULT, SystemTime::now());
        assert!(!held.exists(), "let go: pruned as any unused entry");
        assert!(kept.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hit_marks_its_entry_used() {
        let dir = temp("hit");
        let (cache, engine, hash, _) = first_load(&dir);
        let entry = cache.entry(&engine, &hash).expect("a cache folder");
        set_age(&entry, 60 * DAY);
        let (_, hit, _) = cache
            .load_module(&engine, EMPTY_MODULE, &hash)
            .expect("load");
        assert!(hit);
        assert!(age_of(&entry) < DAY, "a hit makes the entry recently used");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
