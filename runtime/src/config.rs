//! The operator's config file (`--config FILE`, or `AGENTRT_CONFIG`): ceilings for every plugin
//! and what each plugin is granted.
//!
//! ```toml
//! [limits]
//! max-memory-mb = 1024       # no plugin gets more, whatever it is granted
//! max-timeout-ms = 300000
//!
//! [grants.house-style]       # the plugin named `house-style` in its manifest
//! models = ["*"]
//! tokens-per-minute = 20000
//! env = ["HOUSE_STYLE"]
//! folders = [{ path = "/rules", host = "/srv/agentrt/rules", access = "read-only" }]
//! run-python = true
//! ```
//!
//! `store = "postgres://user:password@db/agentrt"` (top level) keeps pipeline runs in PostgreSQL
//! instead of the SQLite file (`AGENTRT_STORE` overrides it).
//!
//! A plugin without a `[grants]` entry is granted no capabilities (embedded defaults excepted,
//! see [`crate::plugin::grants`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::plugin::grants::{Grant, HostLimits};
use crate::plugin::manifest::Manifest;

/// The parsed config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Where pipeline runs are stored: a `postgres://` URL or an SQLite file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default)]
    pub limits: HostLimits,
    /// Grants by plugin name.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
    /// The SHA-256 of the file this was read from (`None`: not read from a file): which
    /// version of the file is in use, for the watcher that reloads it.
    #[serde(skip)]
    pub file_digest: Option<[u8; 32]>,
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Read and check the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use sha2::Digest;
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let (line, column) = line_and_column(&bytes, e.valid_up_to());
            invalid(format!("line {line}, column {column}: not UTF-8 text"))
        })?;
        let mut config = Self::parse_in(text, path.parent()).map_err(invalid)?;
        config.file_digest = Some(sha2::Sha256::digest(&bytes).into());
        Ok(config)
    }

    /// Read and check a config's `text`, its relative paths taken from the working folder.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_in(text, None)
    }

    /// [`Config::parse`] for the text of a config file in the folder `base`: its relative
    /// paths (an SQLite `store`, grant folders' `host`) are taken from there, so that they
    /// mean the same wherever the server is started from (a unit's working folder is `/`).
    fn parse_in(text: &str, base: Option<&Path>) -> Result<Self, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if let Some(store) = &mut config.store {
            if store.trim().is_empty() {
                return Err(
                    "store is empty: leave it out for the default store, or name an SQLite file \
                     or a postgres:// URL"
                        .into(),
                );
            }
            if let Some(base) = base {
                let resolved = resolve_store(store, base);
                warn_if_left_behind(store, &resolved);
                *store = resolved;
            }
        }
        for (name, grant) in &mut config.grants {
            for folder in &mut grant.folders {
                // Joined to the config's folder, an empty host (a template's unset variable)
                // would grant that folder.
                if folder.host.as_os_str().to_string_lossy().trim().is_empty() {
                    return Err(format!(
                        "grants.{name}: folder {} has an empty host",
                        folder.path
                    ));
                }
                if let Some(base) = base {
                    folder.host = base.join(&folder.host);
                }
            }
        }
        let l = &config.limits;
        // What the plugin host can be built with: a wasm32 memory is at most 4 GiB (and the
        // pooling allocator reserves that much address space per memory slot), the largest
        // default plugin needs 16 MiB, and every slot is address space set aside at start.
        let checks = [
            ("max-memory-mb", l.max_memory_mb, 16, 4096),
            ("max-timeout-ms", l.max_timeout_ms, 1, 3_600_000),
            ("instance-pool", u64::from(l.instance_pool), 0, 1024),
            (
                "plugin-memory-mb",
                l.plugin_memory_mb.unwrap_or(16),
                16,
                1 << 20,
            ),
        ];
        for (name, value, least, most) in checks {
            if !(least..=most).contains(&value) {
                return Err(format!(
                    "limits.{name} = {value} is outside {least}..={most}"
                ));
            }
        }
        for (name, grant) in &config.grants {
            for (i, folder) in grant.folders.iter().enumerate() {
                // A plugin asking for the path gets the first; the second would never be used.
                if grant.folders[..i].iter().any(|f| f.path == folder.path) {
                    return Err(format!(
                        "grants.{name}: folder {} is granted twice",
                        folder.path
                    ));
                }
                if !folder.host.is_dir() {
                    return Err(format!(
                        "grants.{name}: folder {} is not a directory on this host",
                        folder.host.display()
                    ));
                }
            }
            for host in &grant.hosts {
                crate::plugin::manifest::parse_host(host)
                    .map_err(|e| format!("grants.{name}: {e}"))?;
            }
        }
        Ok(config)
    }

    /// The grant for `manifest`'s plugin: the operator's entry, or for an embedded default
    /// plugin without one, what its manifest asks.
    pub fn grant_for(&self, manifest: &Manifest, embedded: bool) -> Grant {
        match self.grants.get(&manifest.name) {
            Some(grant) => grant.clone(),
            None if embedded => Grant::as_asked(manifest),
            None => Grant::default(),
        }
    }
}

/// A config's `store` as said in a config file in the folder `base`: a relative SQLite path
/// is taken from there; a `postgres://` URL and an absolute path are as written.
pub fn resolve_store(store: &str, base: &Path) -> String {
    if crate::store::postgres::is_postgres_url(store) || Path::new(store).is_absolute() {
        return store.to_string();
    }
    base.join(store).display().to_string()
}

/// Say so when a relative `store` now names a file beside the config that is not there,
/// while the same path from the working folder (where earlier versions looked) is: an
/// upgrade would otherwise open a new, empty store without a word.
fn warn_if_left_behind(written: &str, resolved: &str) {
    let (old, new) = (Path::new(written), Path::new(resolved));
    if old != new && old.is_relative() && old.exists() && !new.exists() {
        tracing::warn!(
            "the config's store {written:?} is taken from the config file's folder ({resolved}), \
             where there is none yet; the store at {written} in the working folder is not used: \
             move it there, or write its absolute path in the config"
        );
    }
}

/// A TOML error as one line, "line L, column C: what was wrong". The offending line is not
/// quoted, as the toml crate's own message does: it may hold a password (a misspelt `store`
/// key's URL), and a log entry stays one line.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let (line, column) = line_and_column(text.as_bytes(), span.start);
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// The 1-based line and column (in characters) of the byte `offset` of `bytes`.
fn line_and_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_plugin_host_cannot_be_built_with_are_refused_by_name() {
        for (text, named) in [
            (
                "[limits]\nmax-memory-mb = 4097\n",
                "limits.max-memory-mb = 4097",
            ),
            ("[limits]\nmax-memory-mb = 0\n", "limits.max-memory-mb = 0"),
            (
                "[limits]\nmax-timeout-ms = 0\n",
                "limits.max-timeout-ms = 0",
            ),
            (
                "[limits]\ninstance-pool = 5000\n",
                "limits.instance-pool = 5000",
            ),
            (
                "[limits]\nplugin-memory-mb = 8\n",
                "limits.plugin-memory-mb = 8",
            ),
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.starts_with(named), "{text}: {err}");
        }
        Config::parse("[limits]\nmax-memory-mb = 4096\ninstance-pool = 0\n").expect("bounds");
        let limits = Config::parse("[limits]\nplugin-memory-mb = 64\n")
            .expect("bounds")
            .limits;
        assert_eq!(limits.plugin_memory_total_mb(), 64);
        // Unset: at most half of this machine's memory (less in a container with a limit).
        let (total, _) = crate::doctor::meminfo().expect("/proc/meminfo");
        let default = HostLimits::default().plugin_memory_total_mb();
        assert!((16..=(total / 2) >> 20).contains(&default), "{default}");
    }

    #[test]
    fn parses_limits_and_grants() {
        let dir = std::env::temp_dir();
        let text = format!(
            "[limits]\nmax-memory-mb = 64\n[grants.a]\nenv = [\"X\"]\nfolders = [{{ path = \"/d\", host = {:?} }}]\n",
            dir.display().to_string()
        );
        let c = Config::parse(&text).expect("parse");
        assert_eq!(c.limits.max_memory_mb, 64);
        assert_eq!(
            c.limits.max_timeout_ms,
            HostLimits::default().max_timeout_ms
        );
        assert_eq!(c.grants["a"].env, ["X"]);
    }

    #[test]
    fn refuses_unknown_keys_missing_folders_and_bad_hosts() {
        assert!(Config::parse("[grants.a]\nenvs = [\"X\"]").is_err());
        assert!(Config::parse("[limit]\nmax-memory-mb = 1").is_err());
        let e = Config::parse(
            "[grants.a]\nfolders = [{ path = \"/d\", host = \"/no/such/folder/anywhere\" }]",
        )
        .expect_err("missing folder");
        assert!(e.contains("not a directory"), "{e}");
        assert!(Config::parse("[grants.a]\nhosts = [\"no-port\"]").is_err());
        for never_matches in ["*:*", "*.example.com:443", "https://x.example:443"] {
            let text = format!("[grants.a]\nhosts = [{never_matches:?}]");
            let e = Config::parse(&text).expect_err(never_matches);
            assert!(e.contains("no scheme, path or wildcard"), "{e}");
        }
        for fine in ["x.example:*", "127.0.0.1:80", "[::1]:8080", "my_host-1:443"] {
            Config::parse(&format!("[grants.a]\nhosts = [{fine:?}]")).expect(fine);
        }
        let dir = std::env::temp_dir().display().to_string();
        let e = Config::parse(&format!(
            "[grants.a]\nfolders = [{{ path = \"/d\", host = {dir:?} }}, {{ path = \"/d\", host = {dir:?} }}]"
        ))
        .expect_err("twice");
        assert!(e.contains("folder /d is granted twice"), "{e}");
    }

    /// A parse error says where, on one line, without quoting the line: a misspelt `store`
    /// key's URL holds a password, and the error goes to terminals and logs.
    #[test]
    fn a_parse_error_names_its_line_and_quotes_nothing() {
        for text in [
            "# ops\nstor = \"postgres://u:s3cretpw@db/agentrt\"\n",
            "# ops\nstore = \"postgres://u:s3cretpw@db/agentrt\n",
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.starts_with("line 2, column "), "{err}");
            assert!(!err.contains("s3cretpw") && !err.contains('\n'), "{err}");
        }
        let err = Config::parse("[grants.a]\nenvs = [\"X\"]\n").expect_err("misspelt");
        assert!(
            err.starts_with("line 2, column 1: unknown field `envs`"),
            "{err}"
        );
    }

    /// Paths in a config file are taken from the file's folder, not from wherever the server
    /// or a tool happens to be started (`doctor`, `backup` and `serve` from three folders
    /// must find the same store).
    #[test]
    fn relative_paths_are_taken_from_the_config_files_folder() {
        let dir = std::env::temp_dir().join(format!("agentrt-config-rel-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rules")).expect("folders");
        let file = dir.join("agentrt.toml");
        std::fs::write(
            &file,
            "store = \"runs.db\"\n[grants.a]\nfolders = [{ path = \"/rules\", host = \"rules\" }]\n",
        )
        .expect("write");
        let config = Config::load(&file).expect("load");
        assert_eq!(
            config.store,
            Some(dir.join("runs.db").display().to_string())
        );
        assert_eq!(config.grants["a"].folders[0].host, dir.join("rules"));
        for kept in ["postgres://u:p@db/agentrt", "/srv/agentrt/runs.db"] {
            std::fs::write(&file, format!("store = {kept:?}\n")).expect("write");
            assert_eq!(
                Config::load(&file).expect("load").store.as_deref(),
                Some(kept)
            );
        }
        std::fs::write(
            &file,
            "[grants.a]\nfolders = [{ path = \"/data\", host = \"\", access = \"read-write\" }]\n",
        )
        .expect("write");
        let err = Config::load(&file).expect_err("an empty host: not the config's folder");
        assert!(
            err.to_string().contains("folder /data has an empty host"),
            "{err}"
        );
        std::fs::write(&file, "store = \"\"\n").expect("write");
        let err = Config::load(&file).expect_err("an empty store");
        assert!(err.to_string().contains("store is empty"), "{err}");
        std::fs::write(&file, b"[limits]\nmax-memory-mb = 64 # \xff\n").expect("write");
        let err = Config::load(&file).expect_err("not UTF-8");
        assert!(
            err.to_string()
                .ends_with("line 2, column 22: not UTF-8 text"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn embedded_plugins_get_what_they_ask_unless_the_operator_says_otherwise() {
        let m = Manifest::parse(
            "name=\"gen\"\nversion=\"1\"\nworld=\"generator\"\n[permissions]\nmodels=[\"*\"]",
        )
        .expect("manifest");
        let empty = Config::default();
        assert_eq!(empty.grant_for(&m, true).models, ["*"]);
        assert!(empty.grant_for(&m, false).models.is_empty());
        let strict = Config::parse("[grants.gen]\nmodels = [\"other\"]").expect("parse");
        assert_eq!(strict.grant_for(&m, true).models, ["other"]);
    }
}
