//! Plugin manifests: the TOML file next to each component naming it, its world and what it asks
//! to be granted.
//!
//! ```toml
//! name = "python-quality"
//! version = "0.1.0"
//! world = "quality-check"
//! description = "Syntax, docstrings, type hints and dangerous calls in Python"
//! [permissions]
//! models = ["*"]             # models it may call through `llm` ("*" = any); default none
//! max-tokens-per-call = 1024 # cap on max-tokens of one llm call
//! memory-mb = 256            # linear-memory cap
//! timeout-ms = 30000         # wall-clock deadline per call
//! tokens-per-minute = 20000  # llm tokens per minute across calls
//! fuel = 1000000000          # deterministic instruction budget per call
//! env = ["HOUSE_STYLE"]      # environment variables, by name
//! folders = [{ path = "/rules", access = "read-only" }]
//! hosts = ["lint.example.com:443"]  # outbound wasi:http requests and wasi:sockets connections
//! run-python = true          # may run Python in the test sandbox
//! ```
//!
//! Asking is not getting: the operator's grants decide (see [`super::grants`]).

use serde::{Deserialize, Serialize};

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Generator,
    Reviewer,
    QualityCheck,
    ErrorHandler,
    /// An error handler that may also move a failed stage to another model (WIT 0.1.1).
    ModelErrorHandler,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generator => "generator",
            Self::Reviewer => "reviewer",
            Self::QualityCheck => "quality-check",
            Self::ErrorHandler => "error-handler",
            Self::ModelErrorHandler => "model-error-handler",
        }
    }

    /// The pipeline role a plugin of this world plays: both error-handler worlds are the one
    /// error handler, and a plugin folder's one replaces the default whichever world it uses.
    pub fn role(self) -> World {
        match self {
            Self::ModelErrorHandler => Self::ErrorHandler,
            other => other,
        }
    }

    /// Whether the world imports the `llm` interface.
    pub fn uses_llm(self) -> bool {
        matches!(self, Self::Generator | Self::Reviewer)
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a plugin asks for. Everything absent is denied; the operator's grants (see
/// [`super::grants`]) decide whether the plugin gets it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Permissions {
    /// Models the plugin may call; `"*"` means any loaded model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Upper bound on `max-tokens` of one `llm` call.
    pub max_tokens_per_call: Option<u32>,
    /// Tokens (prompt and completion) the plugin may use per minute, across all its calls.
    pub tokens_per_minute: Option<u32>,
    /// Linear-memory cap in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline of one call in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Fuel (roughly, WebAssembly instructions) one call may burn: a deterministic budget.
    pub fuel: Option<u64>,
    /// Environment variables, by name, the plugin may read (their values come from the host).
    #[serde(default)]
    pub env: Vec<String>,
    /// Folders the plugin may open, by the path it sees them at.
    #[serde(default)]
    pub folders: Vec<FolderAccess>,
    /// Outbound `host:port` pairs the plugin may reach over `wasi:http` or `wasi:sockets`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether the plugin may run Python in the test sandbox (`sandbox.run-python`).
    #[serde(default)]
    pub run_python: bool,
}

/// A folder a plugin asks for: the absolute path it opens it at, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FolderAccess {
    pub path: String,
    #[serde(default)]
    pub access: Access,
}

/// Read-only or read-write access to a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    #[default]
    ReadOnly,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read-only",
            Self::ReadWrite => "read-write",
        }
    }
}

impl Permissions {
    /// Check the shapes of the fields: plain variable names, absolute folder paths without
    /// `..`, `host:port` pairs.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_mb == Some(0) || self.timeout_ms == Some(0) || self.fuel == Some(0) {
            return Err("memory-mb, timeout-ms and fuel must be above 0".into());
        }
        for name in &self.env {
            let plain =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(format!(
                    "env {name:?} must be a variable name (letters, digits, '_')"
                ));
            }
        }
        for folder in &self.folders {
            let path = std::path::Path::new(&folder.path);
            let clean = path.is_absolute()
                && path
                    .components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir));
            if !clean {
                return Err(format!(
                    "folder {:?} must be an absolute path without '..'",
                    folder.path
                ));
            }
        }
        for host in &self.hosts {
            parse_host(host)?;
        }
        Ok(())
    }
}

/// Split `host:port` (port may be `*` in grants); the host part is a name or an IP address,
/// matched as written: a wildcard (`*:443`) or a URL (`https://x:443`) would be accepted and
/// never match anything, so each is refused.
pub fn parse_host(entry: &str) -> Result<(&str, Option<u16>), String> {
    let bad = || format!("host {entry:?} must be host:port");
    let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let name_like = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !name_like && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "host {entry:?} must be host:port with a host name or an IP address (no scheme, \
             path or wildcard: list each host)"
        ));
    }
    let port = match port {
        "*" => None,
        p => Some(p.parse::<u16>().map_err(|_| bad())?),
    };
    Ok((host, port))
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub world: World,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub permissions: Permissions,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Where and why, without quoting the text: a manifest that is a link to another file
    /// must not show that file's lines in a refusal.
    #[error("invalid manifest: {0}")]
    Parse(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError::Parse(crate::config::toml_error(text, &e)))?;
        let name_ok = !m.name.is_empty()
            && m.name.len() <= 64
            && m.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(ManifestError::Invalid(format!(
                "name {:?} must be 1-64 characters of letters, digits, '-' or '_'",
                m.name
            )));
        }
        // Both go into log lines and terminal listings: a newline or an escape sequence in
        // them would forge lines there or rewrite the screen.
        let version_ok = !m.version.is_empty()
            && m.version.len() <= 64
            && m.version.chars().all(|c| c.is_ascii_graphic());
        if !version_ok {
            return Err(ManifestError::Invalid(format!(
                "version {:?} must be 1-64 printable ASCII characters without spaces (e.g. 1.2.0)",
                m.version
            )));
        }
        if m.description.len() > 1024 || m.description.chars().any(char::is_control) {
            return Err(ManifestError::Invalid(
                "description must be one line of at most 1024 bytes, without control characters"
                    .into(),
            ));
        }
        if !m.world.uses_llm() && !m.permissions.models.is_empty() {
            return Err(ManifestError::Invalid(format!(
                "world {} has no llm access, so `models` must be empty",
                m.world
            )));
        }
        if !m.world.uses_llm() && m.permissions.tokens_per_minute.is_some() {
            return Err(ManifestError::Invalid(format!(
                "world {} has no llm access, so `tokens-per-minute` must be absent",
                m.world
            )));
        }
        m.permissions.validate().map_err(ManifestError::Invalid)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse(
            "name = \"python-quality\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n[permissions]\nmemory-mb = 64\ntimeout-ms = 500\n",
        )
        .expect("parse");
        assert_eq!(m.world, World::QualityCheck);
        assert_eq!(m.permissions.memory_mb, Some(64));
        assert!(m.permissions.models.is_empty());
    }

    #[test]
    fn refuses_unknown_keys_bad_names_and_llm_for_checks() {
        assert!(Manifest::parse("name=\"a\"\nversion=\"1\"\nworld=\"reviewer\"\nfoo=1").is_err());
        assert!(Manifest::parse("name=\"a b\"\nversion=\"1\"\nworld=\"reviewer\"").is_err());
        assert!(Manifest::parse("name=\"a\"\nversion=\"1\"\nworld=\"painter\"").is_err());
        // Nothing that could forge a log line or drive a terminal.
        for version in ["", "1.0 beta", "0.1.0\\u001b[31m", "0.1.0\\nforged"] {
            let text = format!("name=\"a\"\nversion=\"{version}\"\nworld=\"reviewer\"");
            assert!(Manifest::parse(&text).is_err(), "{text}");
        }
        let text = "name=\"a\"\nversion=\"1\"\nworld=\"reviewer\"\ndescription=\"ok\\nforged\"";
        assert!(Manifest::parse(text).is_err());
        assert!(
            Manifest::parse(
                "name=\"a\"\nversion=\"1.2.0+b7\"\nworld=\"reviewer\"\ndescription=\"Fine, é\""
            )
            .is_ok()
        );
        let e = Manifest::parse(
            "name=\"a\"\nversion=\"1\"\nworld=\"quality-check\"\n[permissions]\nmodels=[\"*\"]",
        );
        assert!(
            e.expect_err("must refuse")
                .to_string()
                .contains("no llm access")
        );
    }

    #[test]
    fn refuses_malformed_permissions() {
        let asks = |p: &str| {
            Manifest::parse(&format!(
                "name=\"a\"\nversion=\"1\"\nworld=\"reviewer\"\n[permissions]\n{p}"
            ))
        };
        for bad in [
            "env = [\"HOME=1\"]",
            "env = [\"\"]",
            "folders = [{ path = \"data\" }]",
            "folders = [{ path = \"/data/../etc\" }]",
            "folders = [{ path = \"/d\", access = \"everything\" }]",
            "hosts = [\"example.com\"]",
            "hosts = [\"example.com:http\"]",
            "fuel = 0",
        ] {
            assert!(asks(bad).is_err(), "accepted {bad}");
        }
        let ok = asks(
            "env = [\"A_1\"]\nfolders = [{ path = \"/d\", access = \"read-write\" }]\nhosts = [\"example.com:443\", \"10.0.0.1:*\"]\nrun-python = true",
        )
        .expect("well-formed");
        assert_eq!(ok.permissions.folders[0].access, Access::ReadWrite);
        assert!(ok.permissions.run_python);
    }
}
