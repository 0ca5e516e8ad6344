//! When the API keys are read again, so that they rotate without a restart: when the keys file
//! changes, and on SIGHUP.
//!
//! The file is polled (its contents' digest; a keys file is a few lines), and a change is
//! applied once the file has looked the same for two polls in a row, so an editor's
//! half-written file is not read. SIGHUP reads it at once, as daemons conventionally do (and
//! no longer ends the server, which is SIGHUP's default action). Every reload is logged; one
//! that is refused (see [`ApiKeys::reload`]) leaves the keys in use as they were.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::auth::ApiKeys;

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

/// Reload `keys` on every SIGHUP, for as long as the runtime runs. The handler is registered
/// by this call, before it returns.
#[cfg(unix)]
pub fn reload_on_hangup(keys: Arc<ApiKeys>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if keys.file().is_none() {
                tracing::info!(
                    "SIGHUP: no keys file to read again (keys that rotate come from --api-keys FILE)"
                );
                continue;
            }
            let keys = keys.clone();
            // File I/O off the async threads.
            let _ = tokio::task::spawn_blocking(move || reload(&keys, "SIGHUP")).await;
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
