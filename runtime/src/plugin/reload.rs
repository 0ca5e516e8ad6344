//! Hot reload: a thread watches the plugin folder and swaps the plugin set when a component or
//! its manifest is added, changed or removed — no restart.
//!
//! The folder is polled (sizes and modification times; no platform file-watch API to go
//! wrong on network or container file systems). A change is applied once the folder has looked
//! the same for two polls in a row, so a file still being copied is not loaded half-written.
//! Only changed files are loaded again; a component that fails to load is refused, its previous
//! version stays in use, and the reason goes to the log and to `GET /plugins`. The new set
//! replaces the old one whole: calls already running finish on the plugin they started with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::registry::{FileStamp, FolderPlugins, LivePlugins, compose, folder_stamps, scan_folder};
use super::{Plugin, PluginHost};

/// How often the folder is looked at, unless `AGENTRT_PLUGIN_POLL_MS` says otherwise.
pub const DEFAULT_POLL: Duration = Duration::from_millis(1000);

/// The watcher's state between polls.
pub struct Reloader {
    host: Arc<PluginHost>,
    dir: PathBuf,
    embedded: Vec<Arc<Plugin>>,
    folder: FolderPlugins,
    live: LivePlugins,
    /// The folder as it was when `folder` was loaded from it.
    applied: BTreeMap<PathBuf, FileStamp>,
    /// The folder at the last poll (a change is applied once it holds still).
    last_seen: BTreeMap<PathBuf, FileStamp>,
}

impl Reloader {
    /// A watcher for `dir`, whose components `folder` holds as loaded at start.
    pub fn new(
        host: Arc<PluginHost>,
        dir: PathBuf,
        embedded: Vec<Arc<Plugin>>,
        folder: FolderPlugins,
        live: LivePlugins,
    ) -> Self {
        let applied = folder_stamps(&dir).unwrap_or_default();
        Self {
            host,
            dir,
            embedded,
            folder,
            live,
            last_seen: applied.clone(),
            applied,
        }
    }

    /// Look at the folder once; reload when it changed and has held still since the last poll.
    /// Returns whether the set was swapped.
    pub fn poll(&mut self) -> bool {
        let seen = match folder_stamps(&self.dir) {
            Ok(seen) => seen,
            Err(e) => {
                tracing::warn!(target: "agentrt::plugins", folder = %self.dir.display(), error = %e, "cannot read the plugin folder; keeping the plugins in use");
                return false;
            }
        };
        let settled = seen == self.last_seen;
        self.last_seen = seen.clone();
        if seen == self.applied || !settled {
            return false;
        }
        self.reload(seen)
    }

    fn reload(&mut self, seen: BTreeMap<PathBuf, FileStamp>) -> bool {
        let mut scan = scan_folder(&self.host, &seen, &self.folder);
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
        for plugin in &scan.changed {
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
        for refused in &scan.refused {
            refused.log();
        }
        // A component refused only because every instance slot was busy for its trial is
        // tried again at the next poll, not kept refused until its file changes.
        let busy = scan
            .refused
            .iter()
            .any(|r| r.code == crate::error_code::ErrorCode::QueueFull.as_str());
        self.live.replace(set, scan.refused);
        self.folder = scan.plugins;
        if !busy {
            self.applied = seen;
        }
        true
    }

    /// Poll every `interval` on a thread of its own, for as long as the process runs.
    pub fn spawn(mut self, interval: Duration) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("agentrt-plugin-reload".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    self.poll();
                }
            })
            .map(|_| ())
    }
}
