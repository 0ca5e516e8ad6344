//! The plugins the pipeline uses, by role: the embedded defaults, replaced or extended by the
//! components found in the operator's plugin folder.
//!
//! A folder holds `NAME.wasm` files, each with its manifest `NAME.toml` beside it. A folder
//! plugin whose world is generator, reviewer or error-handler replaces the default of that role;
//! a quality check is added to the checks, replacing a default check of the same name.

use std::path::Path;
use std::sync::Arc;

use super::manifest::{Manifest, World};
use super::{Plugin, PluginError, PluginHost, PluginSource};

/// Default plugins compiled into the binary: `(manifest TOML, component bytes)`.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));
}

/// The active plugins.
#[derive(Debug, Clone)]
pub struct PluginSet {
    pub generator: Arc<Plugin>,
    pub reviewer: Arc<Plugin>,
    pub error_handler: Arc<Plugin>,
    pub checks: Vec<Arc<Plugin>>,
}

impl PluginSet {
    /// Every plugin, roles first, then checks.
    pub fn all(&self) -> Vec<Arc<Plugin>> {
        let mut v = vec![
            self.generator.clone(),
            self.reviewer.clone(),
            self.error_handler.clone(),
        ];
        v.extend(self.checks.iter().cloned());
        v
    }
}

fn load_error(plugin: &str, message: impl Into<String>) -> PluginError {
    PluginError::Load {
        plugin: plugin.to_string(),
        message: message.into(),
    }
}

/// Load the embedded defaults and then the folder's plugins over them.
pub fn load_plugins(host: &PluginHost, dir: Option<&Path>) -> Result<PluginSet, PluginError> {
    let mut loaded: Vec<Plugin> = Vec::new();
    for (manifest_text, bytes) in embedded::PLUGINS {
        let manifest =
            Manifest::parse(manifest_text).map_err(|e| load_error("embedded", e.to_string()))?;
        loaded.push(host.load(manifest, bytes, PluginSource::Embedded)?);
    }
    if let Some(dir) = dir {
        for plugin in load_folder(host, dir)? {
            let replaces = |p: &Plugin| match plugin.manifest.world {
                World::QualityCheck => p.manifest.name == plugin.manifest.name,
                world => p.manifest.world == world,
            };
            loaded.retain(|p| !replaces(p));
            loaded.push(plugin);
        }
    }
    let mut take_role = |world: World| -> Result<Arc<Plugin>, PluginError> {
        let idx = loaded
            .iter()
            .position(|p| p.manifest.world == world)
            .ok_or_else(|| load_error(world.as_str(), format!("no {world} plugin is available")))?;
        Ok(Arc::new(loaded.remove(idx)))
    };
    let generator = take_role(World::Generator)?;
    let reviewer = take_role(World::Reviewer)?;
    let error_handler = take_role(World::ErrorHandler)?;
    let checks = loaded
        .into_iter()
        .filter(|p| p.manifest.world == World::QualityCheck)
        .map(Arc::new)
        .collect();
    Ok(PluginSet {
        generator,
        reviewer,
        error_handler,
        checks,
    })
}

/// Load every `*.wasm` of `dir` with its manifest, in name order.
pub fn load_folder(host: &PluginHost, dir: &Path) -> Result<Vec<Plugin>, PluginError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        load_error(
            &dir.display().to_string(),
            format!("cannot read plugin folder: {e}"),
        )
    })?;
    let mut wasm_files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    wasm_files.sort();
    let mut out = Vec::new();
    for path in wasm_files {
        let label = path.display().to_string();
        let manifest_path = path.with_extension("toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
            load_error(
                &label,
                format!("missing manifest {}: {e}", manifest_path.display()),
            )
        })?;
        let manifest = Manifest::parse(&text).map_err(|e| load_error(&label, e.to_string()))?;
        let bytes = std::fs::read(&path).map_err(|e| load_error(&label, e.to_string()))?;
        out.push(host.load(manifest, &bytes, PluginSource::File(path.clone()))?);
    }
    Ok(out)
}
