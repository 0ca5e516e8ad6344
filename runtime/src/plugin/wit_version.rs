//! Which version of the `agentrt:plugin` WIT package a component was built against, and whether
//! this host runs it.
//!
//! A component names the package version in every interface it imports
//! (`agentrt:plugin/types@0.1.0`); that, not the manifest, is what the plugin was compiled
//! against. The policy (docs/WIT.md) is semver's: within one compatible line (`0.1.x` while the
//! major version is 0, `N.x` after) items are only added, so a component built for an older or
//! equal version of the line runs here unchanged; one built for another line is refused with a
//! message that says which version it needs. A component built for a newer version of the same
//! line loads when everything it uses exists here (wasmtime links semver-compatible names), and
//! when something is missing the load error names both versions.

use semver::Version;

/// The WIT the host implements: the same file plugins are built from.
pub const WIT_SOURCE: &str = include_str!("../../../wit/plugin.wit");

/// The WIT package plugins import.
pub const PACKAGE: &str = "agentrt:plugin";

/// The version of [`PACKAGE`] this host implements, from the `package` line of [`WIT_SOURCE`].
pub fn host_version() -> Version {
    package_version(WIT_SOURCE).expect("wit/plugin.wit declares `package agentrt:plugin@X.Y.Z;`")
}

/// The version on the `package NAME@VERSION;` line of a WIT document.
pub fn package_version(wit: &str) -> Option<Version> {
    let line = wit
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("package "))?;
    let spec = line.strip_prefix("package ")?.trim_end_matches(';').trim();
    let (name, version) = spec.split_once('@')?;
    (name == PACKAGE).then_some(())?;
    Version::parse(version).ok()
}

/// The `agentrt:plugin` version in one import name, e.g. `agentrt:plugin/llm@0.1.0`; `None` for
/// other packages (WASI) and unversioned names.
pub fn import_version(import: &str) -> Option<Result<Version, String>> {
    let rest = import.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    let (_, version) = rest.split_once('@')?;
    Some(Version::parse(version).map_err(|e| format!("import {import}: bad version: {e}")))
}

/// Whether a component built for `built_for` belongs to the same compatible line as `host`.
pub fn same_line(built_for: &Version, host: &Version) -> bool {
    built_for.major == host.major && (host.major > 0 || built_for.minor == host.minor)
}

/// The version a component with these import names was built for, or why the host refuses it.
pub fn check_imports<'a>(imports: impl IntoIterator<Item = &'a str>) -> Result<Version, String> {
    let host = host_version();
    let mut found: Option<Version> = None;
    for name in imports {
        let Some(version) = import_version(name) else {
            continue;
        };
        let version = version?;
        if let Some(seen) = &found
            && *seen != version
        {
            return Err(format!(
                "imports two versions of {PACKAGE} ({seen} and {version}); build it from one WIT"
            ));
        }
        found = Some(version);
    }
    let built_for = found.ok_or_else(|| {
        format!(
            "imports nothing from {PACKAGE}: it was not built from agentrt's WIT (`agentrt plugin wit` prints the {host} WIT this host runs)"
        )
    })?;
    if !same_line(&built_for, &host) {
        let line = if host.major > 0 {
            format!("{}.x", host.major)
        } else {
            format!("{}.{}.x", host.major, host.minor)
        };
        return Err(format!(
            "was built for {PACKAGE}@{built_for}, but this agentrt runs plugins built for {PACKAGE}@{line} (it implements {host}); rebuild the plugin against this WIT (`agentrt plugin wit`) or run an agentrt that implements {built_for}"
        ));
    }
    Ok(built_for)
}

/// The versioned import names of a compiled component.
pub fn component_imports(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Explains a link failure of a component newer than the host: what it uses may not exist yet.
pub fn explain_link_failure(built_for: &Version, error: String) -> String {
    let host = host_version();
    if *built_for > host {
        format!(
            "{error} (it was built for {PACKAGE}@{built_for}, newer than the {host} this agentrt implements; upgrade agentrt or rebuild against `agentrt plugin wit`)"
        )
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_version_comes_from_the_wit_file() {
        let v = host_version();
        assert_eq!(
            WIT_SOURCE
                .lines()
                .find(|l| l.starts_with("package "))
                .expect("test value"),
            format!("package agentrt:plugin@{v};")
        );
    }

    #[test]
    fn import_names_are_parsed() {
        assert_eq!(
            import_version("agentrt:plugin/llm@0.1.0"),
            Some(Ok(Version::new(0, 1, 0)))
        );
        assert_eq!(import_version("wasi:cli/stdout@0.2.0"), None);
        assert_eq!(import_version("agentrt:plugin/llm"), None);
        assert!(matches!(
            import_version("agentrt:plugin/llm@zero"),
            Some(Err(_))
        ));
    }

    #[test]
    fn compatibility_follows_semver_lines() {
        let host = Version::new(0, 1, 3);
        assert!(same_line(&Version::new(0, 1, 0), &host));
        assert!(same_line(&Version::new(0, 1, 9), &host));
        assert!(!same_line(&Version::new(0, 2, 0), &host));
        assert!(!same_line(&Version::new(1, 1, 0), &host));
        let host = Version::new(1, 4, 0);
        assert!(same_line(&Version::new(1, 0, 0), &host));
        assert!(same_line(&Version::new(1, 9, 2), &host));
        assert!(!same_line(&Version::new(2, 0, 0), &host));
    }

    #[test]
    fn imports_decide_the_built_for_version() {
        let host = host_version();
        let current = format!("agentrt:plugin/types@{host}");
        assert_eq!(
            check_imports(["wasi:cli/stdout@0.2.0", current.as_str()]).expect("test value"),
            host
        );
        let other_line = format!("agentrt:plugin/types@{}.{}.0", host.major + 1, host.minor);
        let err = check_imports([other_line.as_str()]).expect_err("refused");
        assert!(err.contains("was built for agentrt:plugin@"), "{err}");
        assert!(err.contains("agentrt plugin wit"), "{err}");
        let err = check_imports(["wasi:cli/stdout@0.2.0"]).expect_err("refused");
        assert!(err.contains("imports nothing from agentrt:plugin"), "{err}");
        let mixed = format!("agentrt:plugin/log@{}.{}.99", host.major, host.minor);
        let err = check_imports([current.as_str(), mixed.as_str()]).expect_err("refused");
        assert!(err.contains("two versions"), "{err}");
    }
}
