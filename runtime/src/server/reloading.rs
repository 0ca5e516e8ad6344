//! What the server reads again while it runs, so that keys rotate and grants change without
//! a restart: the API keys file, when it changes, and on SIGHUP; the config, on SIGHUP here
//! (its changes are also picked up by the plugin reloader's poll, see
//! [`crate::plugin::reload`]).
//!
//! The keys file is polled as a [`WatchedFile`]: a change is applied once the file has looked
//! the same for two polls in a row, so an editor's half-written file is not read. SIGHUP reads
//! both at once, as daemons conventionally do (and no longer ends the server, which is
//! SIGHUP's default action). Every reload is logged; one that is refused (see
//! [`ApiKeys::reload`]) leaves what was in use as it was.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::ApiKeys;
use crate::plugin::reload::Reloader;
use crate::watched_file::WatchedFile;

/// How often the keys file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Watch the keys file of `keys` (if it has one) from a thread of its own.
pub fn watch_file(keys: Arc<ApiKeys>, interval: Duration) -> std::io::Result<()> {
    let Some(file) = keys.file().map(std::path::Path::to_path_buf) else {
        return Ok(());
    };
    let mut watched = WatchedFile::new(file, keys.applied_digest());
    std::thread::Builder::new()
        .name("api-keys-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                if watched.changed(true) {
                    watched.mark_tried();
                    reload(&keys, "the keys file changed");
                }
            }
        })?;
    Ok(())
}

/// Catch SIGHUP from now on (call it within the runtime, as early as the server starts): one
/// that comes before [`reload_on_hangup`] takes the stream over is held for it, rather than
/// ending the process while models load.
#[cfg(unix)]
pub fn catch_hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
}

/// On every SIGHUP of `hangups`, for as long as the runtime runs, read `keys` again and have
/// `plugins` read the config again. The two do not wait for each other, nor for an earlier
/// SIGHUP's work: a config reload compiles and tries plugins, which takes a while.
#[cfg(unix)]
pub fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    keys: Arc<ApiKeys>,
    plugins: Option<Arc<Mutex<Reloader>>>,
) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // File I/O and plugin compilation off the async threads.
            if keys.file().is_some() {
                let keys = keys.clone();
                tokio::task::spawn_blocking(move || reload(&keys, "SIGHUP"));
            }
            if let Some(plugins) = plugins.clone() {
                tokio::task::spawn_blocking(move || match plugins.try_lock() {
                    Ok(mut reloader) => {
                        reloader.reload_config_now();
                    }
                    Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                        poisoned.into_inner().reload_config_now();
                    }
                    // The poll is reloading now; it looks at the config again in its next
                    // rounds, so a change is not lost.
                    Err(std::sync::TryLockError::WouldBlock) => tracing::info!(
                        "SIGHUP: the plugins are being reloaded; the config is looked at again when that ends"
                    ),
                });
            }
        }
    });
}

/// Read the keys again and log the outcome.
fn reload(keys: &ApiKeys, why: &str) {
    let file = keys
        .file()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    match keys.reload() {
        Ok(counts) => tracing::info!(
            file,
            why,
            user = counts.user,
            admin = counts.admin,
            "API keys reloaded"
        ),
        Err(error) => tracing::error!(
            file,
            why,
            error,
            "API keys not reloaded; the keys in use are kept"
        ),
    }
}
