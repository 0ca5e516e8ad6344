//! Plugin authoring: what `agentrt plugin check | inspect | new | build | wit` do with a
//! component file or a plugin project, as opposed to the plugins a server has loaded.
//!
//! `check` validates one built component the way a server would load it — manifest, the
//! permissions it asks for against the operator's grants, the WIT version and world it was built
//! for — and then runs its self-test in the sandbox. `inspect` describes it. [`scaffold`] writes
//! new projects and [`build`] turns a project into `NAME.wasm` + `NAME.toml`.

pub mod build;
pub mod scaffold;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::doctor::{Report, Status};
use crate::error_code::ErrorCode;
pub use crate::plugin::registry::{load_file, read_manifest};
use crate::plugin::{PluginHost, grants, self_test};

/// The steps of [`check_file`], in order.
pub const CHECK_STEPS: [&str; 4] = ["manifest", "permissions", "component", "self-test"];

/// What [`check_file`] found, and the code of the failure a server would meet first.
pub struct FileCheck {
    pub report: Report,
    /// `PLUGIN_002` for a manifest or component that does not load (or a name a server
    /// refuses), the limit's code for start code that runs past one (`PLUGIN_004`, `005`,
    /// `009`), `PLUGIN_006` for permissions not granted, the self-test's own code.
    pub failure: Option<ErrorCode>,
}

/// Check a component file step by step; the report fails at the first step that does, and
/// carries on only while later steps still mean something.
pub fn check_file(host: &PluginHost, wasm: &Path) -> FileCheck {
    let mut report = Report::default();
    let failure = check_steps(host, wasm, &mut report).err();
    FileCheck { report, failure }
}

fn check_steps(host: &PluginHost, wasm: &Path, report: &mut Report) -> Result<(), ErrorCode> {
    let manifest = match read_manifest(wasm) {
        Ok(m) => m,
        Err(e) => {
            report.add("manifest", Status::Fail, e);
            return Err(ErrorCode::PluginLoad);
        }
    };
    if let Some(why) = crate::plugin::registry::name_taken(&manifest.name, manifest.world) {
        let fix = "a server refuses it: rename it in plugin.toml";
        report.add("manifest", Status::Fail, format!("{why}; {fix}"));
        return Err(ErrorCode::PluginLoad);
    }
    report.add(
        "manifest",
        Status::Ok,
        format!(
            "{} {} ({}) — {}",
            manifest.name, manifest.version, manifest.world, manifest.description
        ),
    );
    if !manifest.world.uses_llm()
        && (!manifest.permissions.models.is_empty()
            || manifest.permissions.max_tokens_per_call.is_some()
            || manifest.permissions.tokens_per_minute.is_some())
    {
        report.add(
            "permissions.models",
            Status::Warn,
            format!(
                "asks for model access, but the {} world cannot call the model: drop `models` and the token limits",
                manifest.world
            ),
        );
    }
    let config = host.config();
    let grant = config.grant_for(&manifest, false);
    match grants::resolve(&manifest.permissions, &grant, &config.limits) {
        Ok(granted) => report.add(
            "permissions",
            Status::Ok,
            format!("granted: {}", granted.summary()),
        ),
        Err(e) => {
            report.add(
                "permissions",
                Status::Fail,
                format!(
                    "{e}: the operator's config must grant it under [grants.{}] (asks {})",
                    manifest.name,
                    asked(&manifest.permissions)
                ),
            );
            return Err(ErrorCode::PluginAccessDenied);
        }
    }
    let started = Instant::now();
    let plugin = match load_file(host, wasm) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            report.add("component", Status::Fail, e.to_string());
            return Err(e.code());
        }
    };
    report.add(
        "component",
        Status::Ok,
        format!(
            "implements world {} of {}@{}; {} bytes; compiled in {} ms",
            plugin.manifest.world,
            crate::plugin::wit_version::PACKAGE,
            plugin.wit_version,
            plugin.size_bytes,
            started.elapsed().as_millis()
        ),
    );
    let started = Instant::now();
    match self_test::run(host, &plugin) {
        Ok(detail) => report.add(
            "self-test",
            Status::Ok,
            format!("{detail}; {} ms", started.elapsed().as_millis()),
        ),
        Err(e) => {
            report.add("self-test", Status::Fail, format!("{} {e}", e.code_str()));
            return Err(e.code());
        }
    }
    Ok(())
}

/// The permissions a manifest asks for, without the fields it leaves out.
fn asked(permissions: &crate::plugin::manifest::Permissions) -> String {
    let value = serde_json::to_value(permissions).unwrap_or_default();
    let fields: serde_json::Map<_, _> = value
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| {
            !(v.is_null() || v.as_array().is_some_and(Vec::is_empty) || v.as_bool() == Some(false))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::Value::Object(fields).to_string()
}
