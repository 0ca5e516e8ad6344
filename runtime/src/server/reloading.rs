//! What the server reads again while it runs, so that keys rotate and grants change without
//! a restart: the API keys file, when it changes, and on SIGHUP; the config, on SIGHUP here
//! (its changes are also picked up by the plugin reloader's poll, see
//! [`crate::plugin::reload`]).
//!
//! The keys file is polled (its contents' digest; a keys file is a few lines), and a change is
//! applied once the file has looked the same for two polls in a row, so an editor's
//! half-written file is not read. SIGHUP reads both at once, as daemons conventionally do (and
//! no longer ends the server, which is SIGHUP's default action). Every reload is logged; one
//! that is refused (see [`ApiKeys::reload`]) leaves what was in use as it was.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::auth::ApiKeys;
use crate::plugin::reload::Reloader;

/// How often the keys file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Watch the keys file of `keys` (if it has one) from a thread of its own.
pub fn watch_file(keys: Arc<ApiKeys>, interval: Duration) -> std::io::Result<()> {
    let Some(file) = keys.file().map(Path::to_path_buf) else {
        return Ok(());
    };
    let mut applied = fingerprint(&file);
    let mut last_seen = applied;
    std::thread::Builder::new()
        .name("api-keys-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let seen = fingerprint(&file);
                if seen != applied && seen == last_seen {
                    applied = seen;
                    reload(&keys, "the keys file changed");
                }
                last_seen = seen;
            }
        })?;
    Ok(())
}

/// On every SIGHUP, for as long as the runtime runs, read `keys` again and have `plugins`
/// read the config again. The handler is registered by this call, before it returns (call it
/// within the runtime).
#[cfg(unix)]
pub fn reload_on_hangup(
    keys: Arc<ApiKeys>,
    plugins: Option<Arc<Mutex<Reloader>>>,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let (keys, plugins) = (keys.clone(), plugins.clone());
            // File I/O and plugin compilation off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                if keys.file().is_some() {
                    reload(&keys, "SIGHUP");
                }
                if let Some(plugins) = plugins {
                    plugins
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .reload_config_now();
                }
            })
            .await;
        }
    });
    Ok(())
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

/// What the file holds, by digest (`None`: it cannot be read).
fn fingerprint(file: &Path) -> Option<[u8; 32]> {
    std::fs::read(file).ok().map(|b| Sha256::digest(b).into())
}
