//! Hot reload: a thread watches the plugin folder and swaps the plugin set when a component or
//! its manifest is added, changed or removed — no restart.
//!
//! The folder is polled (sizes and modification times; no platform file-watch API to go
//! wrong on network or container file systems). A change is applied once the folder has looked
//! the same for two polls in a row, so a file still being copied is not loaded half-written.
//! Only changed files are loaded again; a component that fails to load is refused, its previous
//! version stays in use, and the reason goes to the log and to `GET /plugins`. The new set
//! replaces the old one whole: calls already running finish on the plugin they started with.
//!
//! The operator's config file is watched the same way (by its contents' digest). Its grants
//! are bound into each plugin when it loads, so a changed config reloads every plugin, the
//! embedded ones too, under the new grants; one the new grants refuse is dropped, not kept
//! with the grants it had. A config that does not parse, that changes `[limits]` or `store`
//! (the plugin host and the run store are built with them: those take a restart), or under
//! which an embedded default cannot load, is refused as a whole and the config in use stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::compile_cache::hex;
use super::registry::{
    ConfigRefusal, ConfigStatus, FileStamp, FolderPlugins, LivePlugins, compose, folder_stamps,
    load_embedded, scan_folder,
};
use super::{Plugin, PluginHost, PluginSource};
use crate::config::Config;
use crate::watched_file::WatchedFile;

/// Why a config file's version was not put in use.
enum NotInUse {
    /// Every instance slot was busy for a default plugin's trial: tried again at the next poll.
    Busy(super::PluginError),
    /// The version itself is refused: tried again when the file changes, or on SIGHUP.
    Refused(String),
}

/// How often the folder is looked at, unless `AGENTRT_PLUGIN_POLL_MS` says otherwise.
pub const DEFAULT_POLL: Duration = Duration::from_millis(1000);

/// The watcher's state between polls.
pub struct Reloader {
    host: Arc<PluginHost>,
    /// The plugin folder (`None`: the embedded plugins only).
    dir: Option<PathBuf>,
    /// The config file, and its contents' digest as applied and as last seen.
    config: Option<WatchedFile>,
    embedded: Vec<Arc<Plugin>>,
    folder: FolderPlugins,
    live: LivePlugins,
    /// The folder as it was when `folder` was loaded from it.
    applied: BTreeMap<PathBuf, FileStamp>,
    /// The folder at the last poll (a change is applied once it holds still).
    last_seen: BTreeMap<PathBuf, FileStamp>,
    /// Why the folder could not be read at the last poll (said once, until it changes).
    folder_unreadable: Option<String>,
}

impl Reloader {
    /// A watcher for the plugin folder `dir`, whose components `folder` holds as loaded at
    /// start from the folder as `applied` saw it (its stamps taken before loading, so that a
    /// change made while a slow start loaded is seen at the first polls), and for the config
    /// file `config`.
    pub fn new(
        host: Arc<PluginHost>,
        dir: Option<PathBuf>,
        applied: BTreeMap<PathBuf, FileStamp>,
        config: Option<PathBuf>,
        embedded: Vec<Arc<Plugin>>,
        folder: FolderPlugins,
        live: LivePlugins,
    ) -> Self {
        let config = config.map(|path| WatchedFile::new(path, host.config().file_digest));
        live.set_config_status(ConfigStatus {
            file: config.as_ref().map(|c| c.path.display().to_string()),
            sha256: host.config().file_digest.map(|d| hex(&d)),
            refused: None,
        });
        Self {
            host,
            dir,
            config,
            embedded,
            folder,
            live,
            last_seen: applied.clone(),
            applied,
            folder_unreadable: None,
        }
    }

    /// Look at the config and the folder once; reload when one changed and has held still
    /// since the last poll. Returns whether the set was swapped.
    pub fn poll(&mut self) -> bool {
        if self.config.as_mut().is_some_and(|c| c.changed(true)) {
            return self.regrant("the config changed");
        }
        let Some(dir) = &self.dir else {
            return false;
        };
        let seen = match folder_stamps(dir) {
            Ok(seen) => {
                if self.folder_unreadable.take().is_some() {
                    tracing::info!(target: "agentrt::plugins", folder = %dir.display(), "the plugin folder can be read again");
                }
                seen
            }
            Err(e) => {
                // Said once, not at every poll for as long as the folder is away.
                let error = e.to_string();
                if self.folder_unreadable.as_ref() != Some(&error) {
                    tracing::warn!(target: "agentrt::plugins", folder = %dir.display(), error = %error, "cannot read the plugin folder; keeping the plugins in use");
                    self.folder_unreadable = Some(error);
                }
                return false;
            }
        };
        let settled = seen == self.last_seen;
        self.last_seen = seen.clone();
        if seen == self.applied || !settled {
            return false;
        }
        self.reload(seen, false)
    }

    /// Read the config again at once if it changed, or if the version it holds was refused
    /// (what it needed, a folder say, may be there by now) (SIGHUP). Returns whether the set
    /// was swapped.
    pub fn reload_config_now(&mut self) -> bool {
        let Some(config) = self.config.as_mut() else {
            return false;
        };
        let changed = config.changed(false);
        if changed || self.live.config_status().refused.is_some() {
            return self.regrant("SIGHUP");
        }
        tracing::info!(target: "agentrt::plugins", "SIGHUP: the config has not changed; nothing to reload");
        false
    }

    /// Put the changed config in use and load every plugin again under its grants; `trigger`
    /// says why, for the log.
    fn regrant(&mut self, trigger: &str) -> bool {
        let Some(watched) = self.config.as_mut() else {
            return false;
        };
        // Whatever comes of it, this version of the file has been tried: the next change is
        // the next try (no error in the log every second).
        let untried = watched.mark_tried();
        let path = watched.path.clone();
        let (read, outcome) = self.put_config_in_use(&path);
        let Some(watched) = self.config.as_mut() else {
            return false;
        };
        // What was read, which may be newer than what the poll saw.
        if read.is_some() {
            watched.applied = read;
        }
        match outcome {
            Ok(()) => {
                self.live.set_config_status(ConfigStatus {
                    file: Some(path.display().to_string()),
                    sha256: read.map(|d| hex(&d)),
                    refused: None,
                });
            }
            Err(NotInUse::Busy(e)) => {
                // Every instance slot was taken for the trial call: not the config's fault,
                // so the next poll tries it again.
                watched.applied = untried;
                tracing::warn!(target: "agentrt::plugins", config = %path.display(), error = %e, "config not reloaded yet: the plugins are busy; trying again");
                return false;
            }
            Err(NotInUse::Refused(why)) => {
                tracing::error!(target: "agentrt::plugins", config = %path.display(), why = trigger, error = %why, "config not reloaded; the config in use is kept");
                let mut status = self.live.config_status();
                status.refused = Some(ConfigRefusal {
                    sha256: watched.applied.map(|d| hex(&d)),
                    error: why,
                });
                self.live.set_config_status(status);
                return false;
            }
        }
        let seen = match &self.dir {
            Some(dir) => folder_stamps(dir).unwrap_or_else(|_| self.applied.clone()),
            None => BTreeMap::new(),
        };
        let swapped = self.reload(seen, true);
        if swapped {
            tracing::info!(target: "agentrt::plugins", config = %path.display(), why = trigger, "config reloaded; every plugin loaded again under its grants");
        }
        swapped
    }

    /// Read the config at `path` and put it in use with the default plugins loaded again
    /// under it (the folder's are the caller's); the config in use stays when that fails.
    /// Returns the digest of what was read, if it was.
    fn put_config_in_use(
        &mut self,
        path: &std::path::Path,
    ) -> (Option<[u8; 32]>, Result<(), NotInUse>) {
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(e) => return (None, Err(NotInUse::Refused(e.to_string()))),
        };
        let read = config.file_digest;
        let previous = match self.host.replace_config(config) {
            Ok(previous) => previous,
            Err(why) => return (read, Err(NotInUse::Refused(why))),
        };
        match load_embedded(&self.host) {
            Ok(embedded) => {
                self.embedded = embedded;
                (read, Ok(()))
            }
            Err(e) => {
                self.host.restore_config(previous);
                let why = match e {
                    super::PluginError::Busy { .. } => NotInUse::Busy(e),
                    e => NotInUse::Refused(format!("a default plugin cannot load under it: {e}")),
                };
                (read, Err(why))
            }
        }
    }

    /// Load the folder as `seen`: only its changed files, or with `all` every one (a refused
    /// file then keeps no earlier version).
    fn reload(&mut self, seen: BTreeMap<PathBuf, FileStamp>, all: bool) -> bool {
        let none = FolderPlugins::default();
        let previous = if all { &none } else { &self.folder };
        let mut scan = scan_folder(&self.host, &seen, previous);
        let set = match compose(&self.embedded, scan.plugins.plugins()) {
            Ok((set, misplaced)) => {
                scan.refused.extend(misplaced);
                set
            }
            Err(e) => {
                tracing::warn!(target: "agentrt::plugins", error = %e, "plugin folder not reloaded");
                return false;
            }
        };
        // A component that loaded but cannot take its place (two for one role) is refused, not
        // in use: the log must not say both.
        let in_use = scan.changed.iter().filter(|plugin| {
            !matches!(&plugin.source, PluginSource::File(file)
                if scan.refused.iter().any(|refused| &refused.file == file))
        });
        for plugin in in_use {
            tracing::info!(
                target: "agentrt::plugins",
                plugin = %plugin.manifest.name,
                version = %plugin.manifest.version,
                world = %plugin.manifest.world,
                sha256 = %plugin.sha256,
                "plugin loaded; new calls use this version"
            );
        }
        for file in &scan.removed {
            tracing::info!(target: "agentrt::plugins", file = %file.display(), "plugin removed from the folder");
        }
        // Refusals of files that did not change were logged when they were made.
        for refused in &scan.refused {
            refused.log();
        }
        let busy = scan
            .refused
            .iter()
            .any(|r| r.code == crate::error_code::ErrorCode::QueueFull.as_str());
        let mut refused = scan.refused;
        refused.extend(scan.still_refused);
        if all || !scan.changed.is_empty() || !scan.removed.is_empty() {
            super::registry::warn_of_unused_grants(
                &self.host,
                &self.embedded,
                &scan.plugins.plugins(),
                &refused,
            );
        }
        // A component refused only because every instance slot was busy for its trial is
        // tried again at the next poll, not kept refused until its file changes.
        self.live.replace(set, refused);
        self.folder = scan.plugins;
        // What compiling the changed components took is free again.
        crate::heap::give_back_freed();
        if !busy {
            self.applied = seen;
        }
        true
    }

    /// Poll every `interval` on a thread of its own, for as long as the process runs; the
    /// reloader stays reachable (for SIGHUP) through the returned handle.
    pub fn spawn(self, interval: Duration) -> std::io::Result<Arc<Mutex<Self>>> {
        let shared = Arc::new(Mutex::new(self));
        let polled = shared.clone();
        std::thread::Builder::new()
            .name("agentrt-plugin-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    polled.lock().unwrap_or_else(|e| e.into_inner()).poll();
                }
            })?;
        Ok(shared)
    }
}
