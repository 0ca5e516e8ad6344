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
        let text = std::str::from_utf8(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut config = Self::parse(text).map_err(invalid)?;
        config.file_digest = Some(sha2::Sha256::digest(&bytes).into());
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        let l = &config.limits;
        // What the plugin host can be built with: a wasm32 memory is at most 4 GiB (and the
        // pooling allocator reserves that much address space per memory slot), the largest
        // default plugin needs 16 MiB, and every slot is address space set aside at start.
        let checks = [
            ("max-memory-mb", l.max_memory_mb, 16, 4096),
            ("max-timeout-ms", l.max_timeout_ms, 1, 3_600_000),
            ("instance-pool", u64::from(l.instance_pool), 0, 1024),
        ];
        for (name, value, least, most) in checks {
            if !(least..=most).contains(&value) {
                return Err(format!(
                    "limits.{name} = {value} is outside {least}..={most}"
                ));
            }
        }
        for (name, grant) in &config.grants {
            for folder in &grant.folders {
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
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.starts_with(named), "{text}: {err}");
        }
        Config::parse("[limits]\nmax-memory-mb = 4096\ninstance-pool = 0\n").expect("bounds");
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
