//! A file watched by polling the digest of what it holds (the API keys file, the operator's
//! config): small files, read whole at each look, so a rewrite within the same second or a
//! symlink swapped under it (a Kubernetes secret) is seen as well as any other change.
//!
//! A change counts once the file has held it for two looks in a row, so an editor's
//! half-written file is not read.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A watched file: the digest of the version in use and of what the last look saw (`None`:
/// the file could not be read).
pub(crate) struct WatchedFile {
    pub path: PathBuf,
    pub applied: Option<[u8; 32]>,
    pub last_seen: Option<[u8; 32]>,
}

impl WatchedFile {
    /// `path`, whose version `applied` is in use (the digest of what was read, not of what
    /// the file holds by now: a change made while the server started is still a change).
    pub fn new(path: PathBuf, applied: Option<[u8; 32]>) -> Self {
        Self {
            path,
            applied,
            last_seen: applied,
        }
    }

    /// Look at the file: whether it holds something other than what was applied, with
    /// `settled` only once it has held it for two looks in a row.
    pub fn changed(&mut self, settled: bool) -> bool {
        let seen = digest_of(&self.path);
        let still = seen == self.last_seen;
        self.last_seen = seen;
        seen != self.applied && (still || !settled)
    }

    /// Take what the last look saw as tried, whatever comes of applying it (the next try is
    /// the next change, not every poll); returns the version that was in use.
    pub fn mark_tried(&mut self) -> Option<[u8; 32]> {
        std::mem::replace(&mut self.applied, self.last_seen)
    }
}

/// The SHA-256 of what `file` holds (`None`: it cannot be read).
pub(crate) fn digest_of(file: &Path) -> Option<[u8; 32]> {
    std::fs::read(file).ok().map(|b| Sha256::digest(b).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_once_it_holds_still() {
        let file = std::env::temp_dir().join(format!("agentrt-watched-{}", std::process::id()));
        std::fs::write(&file, "one").expect("write");
        let mut watched = WatchedFile::new(file.clone(), digest_of(&file));
        assert!(!watched.changed(true));
        std::fs::write(&file, "two").expect("write");
        assert!(!watched.changed(true), "seen once: maybe half-written");
        assert!(watched.changed(true), "held still");
        let before = watched.mark_tried();
        assert_ne!(before, watched.applied);
        assert!(!watched.changed(true), "tried: no retry every poll");
        // Unsettled (SIGHUP): at once.
        std::fs::write(&file, "three").expect("write");
        assert!(watched.changed(false));
        let _ = std::fs::remove_file(&file);
    }
}
