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
//! ```

use serde::{Deserialize, Serialize};

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Generator,
    Reviewer,
    QualityCheck,
    ErrorHandler,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generator => "generator",
            Self::Reviewer => "reviewer",
            Self::QualityCheck => "quality-check",
            Self::ErrorHandler => "error-handler",
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

/// What a plugin asks for. Everything absent is denied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Permissions {
    /// Models the plugin may call; `"*"` means any loaded model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Upper bound on `max-tokens` of one `llm` call.
    pub max_tokens_per_call: Option<u32>,
    /// Linear-memory cap in MiB.
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline of one call in milliseconds.
    pub timeout_ms: Option<u64>,
}

impl Permissions {
    /// Whether the plugin may call `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
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
    #[error("invalid manifest: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text)?;
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
        if m.version.is_empty() {
            return Err(ManifestError::Invalid("version must not be empty".into()));
        }
        if !m.world.uses_llm() && !m.permissions.models.is_empty() {
            return Err(ManifestError::Invalid(format!(
                "world {} has no llm access, so `models` must be empty",
                m.world
            )));
        }
        if m.permissions.memory_mb == Some(0) || m.permissions.timeout_ms == Some(0) {
            return Err(ManifestError::Invalid(
                "memory-mb and timeout-ms must be above 0".into(),
            ));
        }
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
        assert!(!m.permissions.allows_model("x"));
    }

    #[test]
    fn refuses_unknown_keys_bad_names_and_llm_for_checks() {
        assert!(Manifest::parse("name=\"a\"\nversion=\"1\"\nworld=\"reviewer\"\nfoo=1").is_err());
        assert!(Manifest::parse("name=\"a b\"\nversion=\"1\"\nworld=\"reviewer\"").is_err());
        assert!(Manifest::parse("name=\"a\"\nversion=\"1\"\nworld=\"painter\"").is_err());
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
    fn wildcard_and_named_models() {
        let p = Permissions {
            models: vec!["a".into()],
            ..Default::default()
        };
        assert!(p.allows_model("a") && !p.allows_model("b"));
        let p = Permissions {
            models: vec!["*".into()],
            ..Default::default()
        };
        assert!(p.allows_model("anything"));
    }
}
