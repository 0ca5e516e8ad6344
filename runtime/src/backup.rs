//! `agentrt backup` / `agentrt restore`: the run store (copied online, consistent while a
//! server writes to it), the config file and the plugin folder, with a manifest of SHA-256
//! sums that `restore` checks before it puts anything in place.
//!
//! A backup is a folder: `manifest.json`, `store.db`, and `config.toml` / `plugins/...` when
//! they were given. Restoring stages every file beside its target (synced, the store's copy
//! checked) before it renames any into place, the store last, each rename atomic; it is
//! refused while a server holds the store, or when a target exists and `force` is not given.
//! A file it replaces is kept beside it as `NAME.pre-restore-SECONDS` (the store with its
//! write-ahead log), so a restore of the wrong backup loses nothing.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::paths::beside;
use crate::store::{LockRole, RunStore, Store, StoreLock};

/// Format of `manifest.json`.
const MANIFEST_VERSION: u32 = 1;
/// Largest plugin folder copied (a backup is not a place for stray model files).
const MAX_PLUGIN_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackupError {
    pub code: ErrorCode,
    pub message: String,
}

fn fail(code: ErrorCode, message: impl Into<String>) -> BackupError {
    BackupError {
        code,
        message: message.into(),
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BackupError {
    fail(
        ErrorCode::BackupFailed,
        format!("{what} {}: {e}", path.display()),
    )
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path inside the backup folder, `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub agentrt: String,
    pub created_at_ms: i64,
    /// Where the store was backed up from.
    pub source_store: String,
    pub runs: usize,
    pub files: Vec<FileEntry>,
}

fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    crate::plugin::compile_cache::sha256_file(path).map_err(|e| io("cannot read", path, e))
}

fn entry(root: &Path, path: &Path) -> Result<FileEntry, BackupError> {
    let (bytes, sha256) = sha256_file(path)?;
    let rel = path
        .strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/");
    Ok(FileEntry {
        path: rel,
        bytes,
        sha256,
    })
}

/// Copy the regular files under `from` into `to`. A symbolic link to a regular file of the
/// link's own owner is copied as the file (the server loads plugins through such links, so a
/// backup without them would restore a server missing plugins); any other link (to a folder,
/// to nothing, to someone else's file) fails the backup naming it, rather than being left out
/// without a word, followed into a loop, or used to copy a file its planter could not read.
fn copy_tree(from: &Path, to: &Path, budget: &mut u64) -> Result<Vec<PathBuf>, BackupError> {
    fs::create_dir_all(to).map_err(|e| io("cannot create", to, e))?;
    let mut copied = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(from)
        .map_err(|e| io("cannot list", from, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io("cannot list", from, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        // What a forced restore kept of the files it replaced is not the plugin folder's
        // (each backup would carry it, and each restore keep it again).
        if e.file_name().to_string_lossy().contains(".pre-restore-") {
            continue;
        }
        let mut kind = e
            .file_type()
            .map_err(|err| io("cannot stat", &e.path(), err))?;
        if kind.is_symlink() {
            use std::os::unix::fs::MetadataExt;
            let link_owner = fs::symlink_metadata(e.path()).map(|m| m.uid()).ok();
            kind = fs::metadata(e.path())
                .ok()
                // A link whoever may write the plugin folder planted to a file of someone
                // else's (a key of root's, for a backup run as root) is not followed.
                .filter(|m| m.is_file() && Some(m.uid()) == link_owner)
                .map(|m| m.file_type())
                .ok_or_else(|| {
                    fail(
                        ErrorCode::BackupFailed,
                        format!(
                            "{} is a link to a folder, to nothing, or to a file of another \
                             owner than the link's; replace it with what it points to, or \
                             remove it",
                            e.path().display()
                        ),
                    )
                })?;
        }
        let target = to.join(e.file_name());
        if kind.is_dir() {
            copied.extend(copy_tree(&e.path(), &target, budget)?);
        } else if kind.is_file() {
            let n =
                copy_synced(&e.path(), &target).map_err(|err| io("cannot copy", &e.path(), err))?;
            *budget = budget.checked_sub(n).ok_or_else(|| {
                fail(
                    ErrorCode::BackupFailed,
                    format!(
                        "{} holds more than {MAX_PLUGIN_BYTES} bytes",
                        from.display()
                    ),
                )
            })?;
            copied.push(target);
        }
    }
    Ok(copied)
}

/// Back up the store at `store`, and `config` / `plugins` when given, into the new folder
/// `out` (it must not exist or be empty).
pub fn backup(
    store: &Path,
    config: Option<&Path>,
    plugins: Option<&Path>,
    out: &Path,
) -> Result<Manifest, BackupError> {
    if out.exists()
        && fs::read_dir(out)
            .map_err(|e| io("cannot list", out, e))?
            .next()
            .is_some()
    {
        return Err(fail(
            ErrorCode::BackupFailed,
            format!("{} is not empty; back up into a new folder", out.display()),
        ));
    }
    if !store.exists() {
        return Err(fail(
            ErrorCode::StoreFailed,
            format!("no run store at {}", store.display()),
        ));
    }
    let existed = out.exists();
    fs::create_dir_all(out).map_err(|e| io("cannot create", out, e))?;
    let written = write_backup(store, config, plugins, out);
    if written.is_err() {
        // Nothing half-written stays behind: no folder a restore could mistake for a backup,
        // and the retry can use the same name. A folder that was there (empty) stays, with
        // its owner and mode, and so does a link to one: only what this backup wrote goes.
        if existed {
            if let Ok(entries) = fs::read_dir(out) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = match entry.file_type() {
                        Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                        _ => fs::remove_file(&path),
                    };
                }
            }
        } else {
            let _ = fs::remove_dir_all(out);
        }
    }
    written
}

/// The backup's files and then its manifest, into the empty folder `out`.
fn write_backup(
    store: &Path,
    config: Option<&Path>,
    plugins: Option<&Path>,
    out: &Path,
) -> Result<Manifest, BackupError> {
    let db = out.join("store.db");
    let runs = Store::backup_online(store, &db).map_err(|e| {
        // Reading the store takes no space: a full disk is the backup folder's. Some file
        // systems say so as an I/O error, which may also be the store's disk failing: the
        // backup's then only when its folder takes no more bytes.
        let why = ["database or disk is full", "disk I/O error"]
            .into_iter()
            .find(|why| e.message.contains(why));
        let full = match why {
            Some("disk I/O error") => crate::paths::write_probe(out).is_err(),
            found => found.is_some(),
        };
        if let Some(why) = why.filter(|_| full) {
            fail(
                ErrorCode::BackupFailed,
                format!(
                    "cannot write {} ({why}): is the backup folder's disk full? The store is \
                     untouched",
                    db.display()
                ),
            )
        } else {
            fail(e.code(), e.to_string())
        }
    })?;
    fs::File::open(&db)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", &db, e))?;
    let mut files = vec![entry(out, &db)?];
    if let Some(config) = config {
        let target = out.join("config.toml");
        copy_synced(config, &target).map_err(|e| io("cannot copy", config, e))?;
        files.push(entry(out, &target)?);
    }
    if let Some(plugins) = plugins {
        let mut budget = MAX_PLUGIN_BYTES;
        for path in copy_tree(plugins, &out.join("plugins"), &mut budget)? {
            files.push(entry(out, &path)?);
        }
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        agentrt: env!("CARGO_PKG_VERSION").to_string(),
        created_at_ms: crate::store::now_ms(),
        source_store: store.display().to_string(),
        runs,
        files,
    };
    // Every file and folder entry is on disk before the manifest that vouches for them, and
    // the manifest before the backup is reported made: after a power cut a backup is whole
    // or has no manifest (which `restore` refuses), never a manifest over missing files.
    // Every folder between a file and `out`: a folder holding only folders has entries too.
    let mut folders: Vec<PathBuf> = manifest
        .files
        .iter()
        .flat_map(|f| {
            out.join(&f.path)
                .ancestors()
                .skip(1)
                .take_while(|a| a.starts_with(out) && *a != out)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .collect();
    folders.sort();
    folders.dedup();
    for folder in &folders {
        sync_folder(folder)?;
    }
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    let path = out.join("manifest.json");
    let mut f = fs::File::create(&path).map_err(|e| io("cannot write", &path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write", &path, e))?;
    sync_folder(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_folder(parent)?;
    }
    Ok(manifest)
}

/// Copy `from` to `to` and sync the copy to disk.
fn copy_synced(from: &Path, to: &Path) -> std::io::Result<u64> {
    let n = fs::copy(from, to)?;
    fs::File::open(to)?.sync_all()?;
    Ok(n)
}

/// Sync a folder's entries (the names of the files made in it) to disk.
fn sync_folder(folder: &Path) -> Result<(), BackupError> {
    fs::File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", folder, e))
}

/// Read `from`'s manifest and check every file it lists against its size and SHA-256.
pub fn verify(from: &Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(from)?;
    for f in &manifest.files {
        check_file(from, f)?;
    }
    if !manifest.files.iter().any(|f| f.path == "store.db") {
        return Err(fail(
            ErrorCode::BackupFailed,
            "the backup holds no store.db",
        ));
    }
    Ok(manifest)
}

/// `from`'s manifest, of a format this build reads.
fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join("manifest.json");
    let text = fs::read_to_string(&path).map_err(|e| io("cannot read", &path, e))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        fail(
            ErrorCode::BackupFailed,
            format!("{} is not a backup manifest: {e}", path.display()),
        )
    })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(fail(
            ErrorCode::BackupFailed,
            format!("backup format {} is not supported", manifest.version),
        ));
    }
    Ok(manifest)
}

/// One file of the backup at `from` against its manifest entry.
fn check_file(from: &Path, f: &FileEntry) -> Result<(), BackupError> {
    if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(fail(
            ErrorCode::BackupFailed,
            format!("the manifest names {:?}, outside the backup", f.path),
        ));
    }
    let (bytes, sha256) = sha256_file(&from.join(&f.path))?;
    if bytes != f.bytes || sha256 != f.sha256 {
        return Err(fail(
            ErrorCode::BackupFailed,
            format!(
                "{} does not match the manifest (damaged or changed since the backup)",
                f.path
            ),
        ));
    }
    Ok(())
}

/// The part of a backed-up config that says where the run store is. Every other key is
/// ignored here: a config granting folders this host does not have yet must still restore.
#[derive(Debug, Default, Deserialize)]
pub struct ConfigStore {
    pub store: Option<String>,
}

/// What the backup's `config.toml` says about the store; `None` when the backup holds no
/// config. The file is checked against the manifest first: nothing unverified decides where a
/// restore writes.
pub fn config_store(from: &Path) -> Result<Option<ConfigStore>, BackupError> {
    let manifest = read_manifest(from)?;
    let Some(entry) = manifest.files.iter().find(|f| f.path == "config.toml") else {
        return Ok(None);
    };
    check_file(from, entry)?;
    let path = from.join("config.toml");
    let text = fs::read_to_string(&path).map_err(|e| io("cannot read", &path, e))?;
    toml::from_str(&text).map(Some).map_err(|e| {
        fail(
            ErrorCode::BackupFailed,
            format!("{} is not a config file: {e}", path.display()),
        )
    })
}

/// What a restore put in place.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub store: String,
    pub runs: usize,
    pub config: Option<String>,
    pub plugins: Option<String>,
    /// Where each file the restore replaced was kept (`NAME.pre-restore-SECONDS`).
    pub kept: Vec<String>,
}

/// Verify the backup at `from`, then put its store at `store` (and its config and plugins at
/// `config` / `plugins` when given and present in the backup). Everything is checked before
/// anything is replaced: the manifest's sums, that nothing existing would be overwritten
/// without `force`, and every file staged beside its target (which checks that each target can
/// be written) and synced, the store's copy passing its integrity check. Only then are the
/// staged files renamed into place, the store last. Only the files the manifest lists (and so
/// were checked) are installed.
pub fn restore(
    from: &Path,
    store: &Path,
    config: Option<&Path>,
    plugins: Option<&Path>,
    force: bool,
) -> Result<Restored, BackupError> {
    if let Some(holder) = StoreLock::held(store) {
        let what_then = match holder.role {
            LockRole::Server => {
                "stop that server first (a restore replaces the file it has open), then \
                 restore and start it again"
            }
            LockRole::Restore => holder.advice(),
        };
        return Err(fail(
            ErrorCode::StoreFailed,
            format!(
                "run store {}: {holder} uses it; {what_then}",
                store.display()
            ),
        ));
    }
    // Held until the new store is in place: no server may open it half-restored.
    let lock =
        StoreLock::take(store, LockRole::Restore).map_err(|e| fail(e.code(), e.to_string()))?;
    // A lock file made just now belongs to whoever runs the restore: given to the store's
    // owner, whose server takes it next.
    keep_ownership(lock.path(), store);
    let manifest = verify(from)?;
    let refuse = |what: &str, path: &Path| {
        fail(
            ErrorCode::BackupFailed,
            format!(
                "{what} exists at {}; pass --force to replace it",
                path.display()
            ),
        )
    };
    if store.exists() && !force {
        return Err(refuse("a run store", store));
    }
    let config = config.filter(|_| manifest.files.iter().any(|f| f.path == "config.toml"));
    if let Some(config) = config
        && config.exists()
        && !force
    {
        return Err(refuse("a config file", config));
    }
    // (backup file, where it goes) for every plugin file the manifest lists.
    let plugin_files: Vec<(PathBuf, PathBuf)> = match plugins {
        Some(dir) => manifest
            .files
            .iter()
            .filter_map(|f| f.path.strip_prefix("plugins/"))
            .map(|rel| (from.join("plugins").join(rel), dir.join(rel)))
            .collect(),
        None => Vec::new(),
    };
    if !force && let Some((_, target)) = plugin_files.iter().find(|(_, t)| t.exists()) {
        return Err(refuse("a plugin file", target));
    }

    // Every file but the store, then the store: staged, and later put in place, in this order.
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    if let Some(config) = config {
        files.push((from.join("config.toml"), config.to_path_buf()));
    }
    let plugins = plugins.filter(|_| !plugin_files.is_empty());
    files.extend(plugin_files);
    files.push((from.join("store.db"), store.to_path_buf()));
    let staged = stage_all(&files)?;
    let kept = install(
        &staged,
        &format!(".pre-restore-{}", crate::store::now_ms() / 1000),
    )?;
    // The folders the renames changed: a linked target's, not the link's.
    sync_folders(&staged, plugins);

    Ok(Restored {
        store: store.display().to_string(),
        runs: manifest.runs,
        config: config.map(|c| c.display().to_string()),
        plugins: plugins.map(|d| d.display().to_string()),
        kept: kept.iter().map(|p| p.display().to_string()).collect(),
    })
}

/// Where a file is staged before it is renamed over `target`: in the same folder, so the
/// rename is atomic and staging it proves the folder writable.
fn staging(target: &Path) -> PathBuf {
    beside(target, ".restoring")
}

/// Remove a staged file and the write-ahead log and index SQLite may have left beside it: a
/// log left by an interrupted restore would otherwise be replayed into the next one's copy.
fn discard(staged: &Path) {
    for p in [
        staged.to_path_buf(),
        beside(staged, "-wal"),
        beside(staged, "-shm"),
    ] {
        let _ = fs::remove_file(p);
    }
}

/// Stage every `(backup file, target)` beside its target, synced; the last is the store, whose
/// copy must also pass its integrity check. On any failure nothing staged is left behind and
/// no target has been touched. Returns `(staged, target)` pairs, in order.
fn stage_all(files: &[(PathBuf, PathBuf)]) -> Result<Vec<(PathBuf, PathBuf)>, BackupError> {
    let mut staged = Vec::with_capacity(files.len());
    for (i, (source, target)) in files.iter().enumerate() {
        let target = &resolve_link(target);
        let tmp = staging(target);
        let is_store = i + 1 == files.len();
        let done = stage(source, target, &tmp).and_then(|()| {
            if is_store {
                check_restored(&tmp)
            } else {
                Ok(())
            }
        });
        staged.push((tmp, target.clone()));
        if let Err(e) = done {
            staged.iter().for_each(|(tmp, _)| discard(tmp));
            return Err(e);
        }
    }
    Ok(staged)
}

/// The file a symbolic link at `target` points to (its own target when it is none): a restore
/// replaces the file an operator linked in (a config kept elsewhere), not the link.
fn resolve_link(target: &Path) -> PathBuf {
    let is_link = fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && let Ok(real) = fs::canonicalize(target) {
        return real;
    }
    target.to_path_buf()
}

/// Copy `source` to `tmp` beside `target`, synced to disk.
fn stage(source: &Path, target: &Path, tmp: &Path) -> Result<(), BackupError> {
    if target.is_dir() {
        return Err(fail(
            ErrorCode::BackupFailed,
            format!("{} is a folder; a file would replace it", target.display()),
        ));
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
    }
    discard(tmp);
    fs::copy(source, tmp).map_err(|e| io("cannot write", tmp, e))?;
    keep_ownership(tmp, target);
    fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("cannot sync", tmp, e))
}

/// Give `file` the owner, group and mode of the `target` it is to replace or, when there is
/// none, the owner and group of the folder it goes into: a restore run as root for a service
/// that runs as its own user must not leave it files it cannot open. What cannot be changed
/// (not root) is left as it is, with a warning when the owner differs.
fn keep_ownership(file: &Path, target: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let model = fs::metadata(target).ok().or_else(|| {
            target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .and_then(|p| fs::metadata(p).ok())
        });
        let (Some(model), Ok(now)) = (model, fs::metadata(file)) else {
            return;
        };
        if target.exists() {
            let _ = fs::set_permissions(file, model.permissions());
        }
        if (now.uid(), now.gid()) != (model.uid(), model.gid())
            && let Err(e) = std::os::unix::fs::chown(file, Some(model.uid()), Some(model.gid()))
        {
            tracing::warn!(
                file = %target.display(),
                error = %e,
                "restored file keeps this user's ownership, not that of what it replaces"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (file, target);
}

/// Rename every staged file over its target, in order (the store last), each existing target
/// first kept as `target` + `kept_suffix` (a second name for the same file, so nothing is
/// copied; the store's write-ahead log goes with it). Staging proved each folder writable, so a
/// failure here is the file system's; what was not yet renamed is removed and the error names
/// how far the restore got. Returns where the replaced files were kept.
fn install(staged: &[(PathBuf, PathBuf)], kept_suffix: &str) -> Result<Vec<PathBuf>, BackupError> {
    let mut kept_all = Vec::new();
    for (n, (tmp, target)) in staged.iter().enumerate() {
        let is_store = n + 1 == staged.len();
        // The old store whole in its file first: its log is then not moved on its own (a
        // restore stopped between that and the rename would leave the file without its last
        // commits). One that cannot be folded (a damaged store) goes aside with the file.
        if is_store
            && target.is_file()
            && let Err(why) = crate::store::fold_log(target)
        {
            tracing::warn!(
                store = %target.display(),
                "cannot fold the replaced store's write-ahead log into it ({why}); it is kept beside the copy"
            );
        }
        let kept = keep(target, kept_suffix);
        let aside = kept.and_then(|kept| {
            let logs = if is_store {
                set_old_log_aside(target, kept.as_deref())
            } else {
                Ok(Vec::new())
            };
            logs.inspect_err(|_| forget(kept.as_deref()))
                .map(|logs| (kept, logs))
        });
        let moved = aside.and_then(|(kept, aside)| {
            match fs::rename(tmp, target) {
                Ok(()) => {
                    // The old log stays with the kept store; only its index is dropped.
                    aside
                        .iter()
                        .filter(|(_, moved)| moved.to_string_lossy().ends_with(".replaced"))
                        .for_each(|(_, moved)| discard(moved));
                    kept_all.extend(kept);
                    Ok(())
                }
                Err(e) => {
                    // The old store keeps its log: its last commits may live only there.
                    put_back(&aside);
                    forget(kept.as_deref());
                    Err(io("cannot move into place", target, e))
                }
            }
        });
        if let Err(e) = moved {
            staged[n..].iter().for_each(|(tmp, _)| discard(tmp));
            return Err(fail(
                e.code,
                format!(
                    "{e}; {n} of {} files were replaced (what they replaced is kept as {}), the run store was not; fix the cause and restore again with --force",
                    staged.len(),
                    if kept_all.is_empty() {
                        "nothing: they were new".to_string()
                    } else {
                        kept_all
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
    }
    Ok(kept_all)
}

/// Give an existing `target` a second name, `target` + `suffix` (+ `-N` when a restore in the
/// same second kept one already: an earlier copy is never overwritten), before the restore
/// renames a new file over it: the old contents stay there. A hard link where the file system
/// has them, else a synced copy. `None` when there is no file to keep.
fn keep(target: &Path, suffix: &str) -> Result<Option<PathBuf>, BackupError> {
    if !target.is_file() {
        return Ok(None);
    }
    let cannot = |e| io("cannot keep a copy of", target, e);
    for n in 0..1000 {
        let kept = if n == 0 {
            beside(target, suffix)
        } else {
            beside(target, &format!("{suffix}-{n}"))
        };
        match fs::hard_link(target, &kept) {
            Ok(()) => return Ok(Some(kept)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(_) => {}
        }
        // No hard links here: a copy, into a name nothing holds, readable by no one else
        // until it has the original's permissions (a store holds requests, a config may hold
        // a database password).
        let copied = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kept)
            .and_then(|mut out| {
                std::io::copy(&mut fs::File::open(target)?, &mut out)?;
                out.set_permissions(fs::metadata(target)?.permissions())?;
                out.sync_all()
            });
        match copied {
            Ok(()) => return Ok(Some(kept)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = fs::remove_file(&kept);
                return Err(cannot(e));
            }
        }
    }
    Err(cannot(std::io::Error::other(
        "every name for the copy is taken",
    )))
}

/// Undo [`keep`] when the file it kept was not replaced after all.
fn forget(kept: Option<&Path>) {
    if let Some(kept) = kept {
        let _ = fs::remove_file(kept);
    }
}

/// The old store's write-ahead log and index belong to the old file: moved aside before the
/// new one takes its name (the store lock keeps servers away in between), and put back if it
/// cannot. The log goes beside the kept copy of the store (`kept` + `-wal`: SQLite finds it
/// there when that copy is opened), the index aside to be dropped. Returns each (original,
/// aside) pair.
fn set_old_log_aside(
    target: &Path,
    kept: Option<&Path>,
) -> Result<Vec<(PathBuf, PathBuf)>, BackupError> {
    let mut moved = Vec::new();
    for suffix in ["-wal", "-shm"] {
        let old = beside(target, suffix);
        if !old.exists() {
            continue;
        }
        let aside = match kept {
            Some(kept) if suffix == "-wal" => beside(kept, suffix),
            _ => beside(target, &format!("{suffix}.replaced")),
        };
        match fs::rename(&old, &aside) {
            Ok(()) => moved.push((old, aside)),
            // Gone since it was seen (folded and removed by the last connection to close).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                put_back(&moved);
                return Err(io("cannot move aside", &old, e));
            }
        }
    }
    Ok(moved)
}

/// Undo [`set_old_log_aside`].
fn put_back(moved: &[(PathBuf, PathBuf)]) {
    for (old, aside) in moved {
        if let Err(e) = fs::rename(aside, old) {
            tracing::error!(
                "cannot put {} back as {}: {e}",
                aside.display(),
                old.display()
            );
        }
    }
}

/// Sync the folders the renames changed (and the plugin folder's own entry, which may be
/// new), so the new names survive a power cut. Everything is in place by now: a folder that
/// cannot be synced is a warning, not a failed restore.
fn sync_folders(files: &[(PathBuf, PathBuf)], plugins: Option<&Path>) {
    let mut folders: Vec<&Path> = files.iter().filter_map(|(_, t)| t.parent()).collect();
    if let Some(dir) = plugins {
        folders.push(dir);
        folders.extend(dir.parent());
    }
    let mut folders: Vec<&Path> = folders
        .into_iter()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .collect();
    folders.sort();
    folders.dedup();
    for folder in folders {
        if let Err(e) = fs::File::open(folder).and_then(|f| f.sync_all()) {
            tracing::warn!(
                folder = %folder.display(),
                error = %e,
                "restored, but the folder could not be synced"
            );
        }
    }
}

/// Open the copy about to become the run store and run its integrity check; closed again
/// (its write-ahead log folded back) before it is moved into place. Its schema is left as the
/// backup has it: a backup of an older build's store restores as that build can read it, and
/// this build's server upgrades it when it starts.
fn check_restored(path: &Path) -> Result<(), BackupError> {
    let (opened, _) = Store::open_to_examine(path).map_err(|e| fail(e.code(), e.to_string()))?;
    if let Err(problems) = opened
        .check_integrity()
        .map_err(|e| fail(e.code(), e.to_string()))?
    {
        return Err(fail(
            ErrorCode::StoreFailed,
            format!(
                "the backup's store fails its check (nothing was replaced): {}",
                problems.join("; ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunState, StoredEvent};

    fn temp(label: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "agentrt-backup-{label}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(&p).expect("temp dir");
        p
    }

    fn filled_store(path: &Path) {
        let store = Store::open(path).expect("open");
        for (i, id) in ["a", "b"].iter().enumerate() {
            store
                .insert_run(id, &serde_json::json!({"task_description": id}), None)
                .expect("insert");
            let done = StoredEvent {
                seq: 1,
                at_ms: i as i64,
                kind: "done".into(),
                data: "{\"type\":\"done\"}".into(),
            };
            store
                .finish_run(id, RunState::Completed, None, None, &done)
                .expect("finish");
        }
    }

    #[test]
    fn a_backup_restores_to_the_same_runs_and_refuses_damage() {
        let dir = temp("roundtrip");
        let store = dir.join("live.db");
        filled_store(&store);
        let plugins = dir.join("plugins");
        fs::create_dir_all(plugins.join("reviewer")).expect("plugins");
        fs::write(plugins.join("reviewer/plugin.toml"), "name = \"r\"\n").expect("manifest");
        let config = dir.join("agentrt.toml");
        fs::write(&config, "[limits]\n").expect("config");

        let out = dir.join("backup");
        let manifest = backup(&store, Some(&config), Some(&plugins), &out).expect("backup");
        assert_eq!(manifest.runs, 2);
        let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["store.db", "config.toml", "plugins/reviewer/plugin.toml"]
        );
        // Backing up into the same folder again is refused rather than mixed.
        assert!(backup(&store, None, None, &out).is_err());

        let restored_store = dir.join("restored.db");
        let restored_plugins = dir.join("restored-plugins");
        let r =
            restore(&out, &restored_store, None, Some(&restored_plugins), false).expect("restore");
        assert_eq!(r.runs, 2);
        let a = Store::open(&store)
            .expect("open")
            .list_runs(10, None, None)
            .expect("runs");
        let b = Store::open(&restored_store)
            .expect("open")
            .list_runs(10, None, None)
            .expect("runs");
        assert_eq!(
            serde_json::to_value(&a).expect("json"),
            serde_json::to_value(&b).expect("json")
        );
        assert!(restored_plugins.join("reviewer/plugin.toml").is_file());
        // An existing store is only replaced with force.
        let err = restore(&out, &restored_store, None, None, false).expect_err("exists");
        assert!(err.message.contains("--force"), "{err}");
        restore(&out, &restored_store, None, None, true).expect("forced");

        // One flipped byte and the backup is refused before anything is touched.
        let mut bytes = fs::read(out.join("store.db")).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(out.join("store.db"), bytes).expect("damage");
        let err = restore(&out, &dir.join("other.db"), None, None, false).expect_err("damaged");
        assert!(err.message.contains("does not match"), "{err}");
        assert!(!dir.join("other.db").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_backup_leaves_no_folder_behind_and_can_be_retried() {
        let dir = temp("failed");
        let store = dir.join("live.db");
        filled_store(&store);
        let out = dir.join("backup");
        let missing = dir.join("no-plugins-here");
        let failed = backup(&store, None, Some(&missing), &out);
        assert!(failed.is_err(), "{failed:?}");
        assert!(!out.exists(), "a failed backup left {}", out.display());
        // Into a folder that was there and empty: it stays, empty, with its mode.
        fs::create_dir_all(&out).expect("mkdir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        assert!(backup(&store, None, Some(&missing), &out).is_err());
        assert_eq!(fs::read_dir(&out).expect("list").count(), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&out).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "the folder was made again");
        }
        // Through a link to an empty folder: the link stays a link, its folder empty.
        #[cfg(unix)]
        {
            let target = dir.join("real");
            fs::create_dir_all(&target).expect("mkdir");
            let link = dir.join("link");
            std::os::unix::fs::symlink(&target, &link).expect("symlink");
            assert!(backup(&store, None, Some(&missing), &link).is_err());
            assert!(fs::symlink_metadata(&link).expect("stat").is_symlink());
            assert_eq!(fs::read_dir(&target).expect("list").count(), 0);
        }
        let manifest = backup(&store, None, None, &out).expect("the retry");
        assert_eq!(manifest.runs, 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_linked_plugin_file_is_backed_up_and_a_linked_folder_is_refused() {
        let dir = temp("linked-plugins");
        let store = dir.join("live.db");
        filled_store(&store);
        let build = dir.join("build");
        fs::create_dir_all(&build).expect("build");
        fs::write(build.join("reviewer.wasm"), b"\0asm").expect("wasm");
        let plugins = dir.join("plugins");
        fs::create_dir_all(&plugins).expect("plugins");
        fs::write(plugins.join("reviewer.toml"), "name = \"reviewer\"\n").expect("manifest");
        std::os::unix::fs::symlink(build.join("reviewer.wasm"), plugins.join("reviewer.wasm"))
            .expect("link");
        let manifest = backup(&store, None, Some(&plugins), &dir.join("backup")).expect("backup");
        let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["store.db", "plugins/reviewer.toml", "plugins/reviewer.wasm"]
        );
        assert_eq!(
            fs::read(dir.join("backup/plugins/reviewer.wasm")).expect("copied"),
            b"\0asm"
        );
        // A link to a folder is named, not silently left out.
        std::os::unix::fs::symlink(&build, plugins.join("more")).expect("link");
        let refused = backup(&store, None, Some(&plugins), &dir.join("backup-2"));
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("more")),
            "{refused:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restore_replaces_nothing_until_everything_checks_out() {
        let dir = temp("checked");
        let live = dir.join("live.db");
        filled_store(&live);
        let live_plugins = dir.join("plugins");
        fs::create_dir_all(&live_plugins).expect("plugins");
        fs::write(live_plugins.join("mine.toml"), "name = \"mine\"\n").expect("plugin");
        let live_config = dir.join("agentrt.toml");
        fs::write(&live_config, "# hand-edited\n").expect("config");

        // A backup of a store whose run has a gap in its event numbers.
        let damaged = dir.join("damaged.db");
        filled_store(&damaged);
        Store::open(&damaged)
            .expect("open")
            .execute_for_test("UPDATE run_events SET seq = 5 WHERE run_id = 'a'")
            .expect("damage");
        let out = dir.join("backup");
        backup(&damaged, None, None, &out).expect("backup");
        let err = restore(&out, &live, None, None, true).expect_err("fails its check");
        assert_eq!(err.code, ErrorCode::StoreFailed, "{err}");
        let runs = Store::open(&live).expect("open").list_runs(10, None, None);
        assert_eq!(runs.expect("runs").len(), 2, "the live store is untouched");
        assert!(!dir.join("live.db.restoring").exists());

        // A sound backup with a config and plugins; a file added to it afterwards.
        let source_plugins = dir.join("source-plugins");
        fs::create_dir_all(&source_plugins).expect("plugins");
        fs::write(source_plugins.join("mine.toml"), "name = \"theirs\"\n").expect("plugin");
        let source_config = dir.join("source.toml");
        fs::write(&source_config, "[limits]\n").expect("config");
        let out = dir.join("backup2");
        backup(&live, Some(&source_config), Some(&source_plugins), &out).expect("backup");
        fs::write(out.join("plugins/evil.toml"), "name = \"evil\"\n").expect("planted");

        let fresh = dir.join("fresh.db");
        let err = restore(&out, &fresh, Some(&live_config), None, false).expect_err("config");
        assert!(err.message.contains("config file"), "{err}");
        let err = restore(&out, &fresh, None, Some(&live_plugins), false).expect_err("plugin");
        assert!(err.message.contains("mine.toml"), "{err}");
        assert!(!fresh.exists(), "refused before the store was written");
        assert_eq!(
            fs::read_to_string(&live_config).expect("config"),
            "# hand-edited\n"
        );

        let r =
            restore(&out, &fresh, Some(&live_config), Some(&live_plugins), true).expect("forced");
        assert_eq!(r.runs, 2);
        assert_eq!(
            fs::read_to_string(&live_config).expect("config"),
            "[limits]\n"
        );
        assert_eq!(
            fs::read_to_string(live_plugins.join("mine.toml")).expect("plugin"),
            "name = \"theirs\"\n"
        );
        assert!(
            !live_plugins.join("evil.toml").exists(),
            "a file the manifest does not list is not installed"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// A fresh folder holding the backup of a filled store (and of a `[limits]` config when
    /// `config`): the folder and the backup's.
    fn a_backup(label: &str, config: bool) -> (PathBuf, PathBuf) {
        let dir = temp(label);
        let source = dir.join("source.db");
        filled_store(&source);
        let source_config = dir.join("source.toml");
        fs::write(&source_config, "[limits]\n").expect("config");
        let out = dir.join("backup");
        backup(
            &source,
            config.then_some(source_config.as_path()),
            None,
            &out,
        )
        .expect("backup");
        (dir, out)
    }

    fn run_ids(store: &Path) -> Vec<String> {
        let mut ids: Vec<String> = Store::open(store)
            .expect("open")
            .list_runs(10, None, None)
            .expect("runs")
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids
    }

    /// A target that cannot be written is found while staging, before anything is replaced:
    /// the live store keeps its runs and nothing staged is left behind.
    #[test]
    fn a_restore_that_cannot_write_its_config_replaces_nothing() {
        let (dir, out) = a_backup("unwritable", true);
        let live = dir.join("live.db");
        Store::open(&live)
            .expect("open")
            .insert_run("mine", &serde_json::json!({}), None)
            .expect("insert");

        // The config's folder would be a regular file: it cannot be created.
        let blocker = dir.join("not-a-folder");
        fs::write(&blocker, "").expect("file");
        let config = blocker.join("agentrt.toml");
        let err = restore(&out, &live, Some(&config), None, true).expect_err("unwritable");
        assert_eq!(err.code, ErrorCode::BackupFailed, "{err}");
        assert_eq!(run_ids(&live), ["mine"], "the live store is untouched");
        let left: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".restoring"))
            .collect();
        assert!(left.is_empty(), "staged files left behind: {left:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A forced restore keeps what it replaces: the old store (runs the backup lacks) and the
    /// old config, beside them, and says where.
    #[test]
    fn a_forced_restore_keeps_the_files_it_replaces() {
        let (dir, out) = a_backup("kept", true);
        let live = dir.join("live.db");
        filled_store(&live);
        // A store whose last run is only in its write-ahead log, as a crashed server leaves
        // it: the file and its log copied while the connection is open, then put in place.
        let store = Store::open(&live).expect("open");
        store
            .insert_run("after-the-backup", &serde_json::json!({}), None)
            .expect("insert");
        let snapshot = dir.join("snapshot.db");
        fs::copy(&live, &snapshot).expect("copy the file");
        fs::copy(beside(&live, "-wal"), beside(&snapshot, "-wal")).expect("copy the log");
        drop(store);
        fs::rename(&snapshot, &live).expect("in place");
        fs::rename(beside(&snapshot, "-wal"), beside(&live, "-wal")).expect("log in place");
        let config = dir.join("agentrt.toml");
        fs::write(&config, "# edited after the backup\n").expect("config");

        let r = restore(&out, &live, Some(&config), None, true).expect("restore");
        assert_eq!(run_ids(&live), ["a", "b"]);
        assert_eq!(fs::read_to_string(&config).expect("read"), "[limits]\n");
        assert_eq!(r.kept.len(), 2, "{:?}", r.kept);
        let kept_config = PathBuf::from(&r.kept[0]);
        let kept_store = PathBuf::from(&r.kept[1]);
        assert!(
            kept_store
                .to_string_lossy()
                .starts_with(&format!("{}.pre-restore-", live.display())),
            "{kept_store:?}"
        );
        // Whole in its file: the log was folded in before anything moved.
        assert!(!beside(&kept_store, "-wal").exists());
        assert_eq!(run_ids(&kept_store), ["a", "after-the-backup", "b"]);
        assert_eq!(
            fs::read_to_string(&kept_config).expect("read"),
            "# edited after the backup\n"
        );
        // A second restore (the same second, likely) keeps the restored files under new
        // names and leaves the first copies as they were.
        let again = restore(&out, &live, Some(&config), None, true).expect("again");
        assert_eq!(again.kept.len(), 2, "{:?}", again.kept);
        assert!(again.kept.iter().all(|k| !r.kept.contains(k)), "{again:?}");
        assert_eq!(run_ids(&kept_store), ["a", "after-the-backup", "b"]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// A restore run as root for a service of its own user leaves the service files it can
    /// open: each takes the owner and mode of what it replaces (the store's lock file, made by
    /// the restore, too).
    #[cfg(unix)]
    #[test]
    fn a_restored_file_keeps_the_owner_and_mode_of_what_it_replaces() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give files to another user");
            return;
        }
        let (dir, out) = a_backup("owner", true);
        let live = dir.join("live.db");
        filled_store(&live);
        let config = dir.join("agentrt.toml");
        fs::write(&config, "# the service's\n").expect("config");
        let service = 65534; // nobody
        for file in [&live, &config] {
            std::os::unix::fs::chown(file, Some(service), Some(service)).expect("chown");
            fs::set_permissions(file, fs::Permissions::from_mode(0o640)).expect("chmod");
        }
        restore(&out, &live, Some(&config), None, true).expect("restore");
        let mut lock = live.clone().into_os_string();
        lock.push(".lock");
        for file in [live.clone(), config.clone(), PathBuf::from(lock)] {
            let m = fs::metadata(&file).expect("stat");
            assert_eq!((m.uid(), m.gid()), (service, service), "{}", file.display());
            assert_eq!(m.permissions().mode() & 0o777, 0o640, "{}", file.display());
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// A config kept elsewhere and linked in stays linked: the restore writes the file the link
    /// points to.
    #[cfg(unix)]
    #[test]
    fn a_linked_config_is_restored_through_its_link() {
        let (dir, out) = a_backup("linked-config", true);
        let managed = dir.join("managed.toml");
        fs::write(&managed, "# old\n").expect("managed");
        let link = dir.join("agentrt.toml");
        std::os::unix::fs::symlink(&managed, &link).expect("link");
        restore(&out, &dir.join("live.db"), Some(&link), None, true).expect("restore");
        assert!(
            fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&managed).expect("read"), "[limits]\n");
        let _ = fs::remove_dir_all(&dir);
    }

    /// A write-ahead log left beside `STORE.restoring` by an interrupted restore belongs to
    /// another file; SQLite would replay it into the next restore's copy.
    #[test]
    fn a_stale_log_beside_the_staged_store_is_not_replayed() {
        let (dir, out) = a_backup("stale-log", false);

        // Another store's log, taken before a checkpoint folded it back: all of its pages.
        let live = dir.join("live.db");
        let other = dir.join("other.db");
        let other_store = Store::open(&other).expect("open");
        for id in ["x", "y", "z"] {
            other_store
                .insert_run(id, &serde_json::json!({}), None)
                .expect("insert");
        }
        fs::copy(beside(&other, "-wal"), beside(&live, ".restoring-wal")).expect("plant");
        drop(other_store);
        fs::write(staging(&live), b"half a copy").expect("plant");

        restore(&out, &live, None, None, false).expect("restore");
        assert_eq!(run_ids(&live), ["a", "b"]);
        assert!(!beside(&live, ".restoring-wal").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_restore_is_refused_while_a_server_holds_the_store() {
        let dir = temp("locked");
        let store = dir.join("live.db");
        filled_store(&store);
        let out = dir.join("backup");
        backup(&store, None, None, &out).expect("backup");
        let server = Store::open_exclusive(&store).expect("server");
        let err = restore(&out, &store, None, None, true).expect_err("locked");
        assert!(
            err.message.contains("another agentrt server (pid")
                && err.message.contains("stop that server first"),
            "{err}"
        );
        // Nor through a link to the store: the lock is the real file's.
        let link = dir.join("link.db");
        std::os::unix::fs::symlink(&store, &link).expect("link");
        let err = restore(&out, &link, None, None, true).expect_err("locked through the link");
        assert!(
            err.message.contains("another agentrt server (pid")
                && err.message.contains("stop that server first"),
            "{err}"
        );
        drop(server);
        restore(&out, &store, None, None, true).expect("free");
        let _ = fs::remove_dir_all(&dir);
    }
}
