//! On-disk cache of compiled components, keyed by the component's content hash and the
//! wasmtime engine's compatibility hash, so each component is compiled by Cranelift once per
//! machine and later starts load native code directly.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and hex SHA-256 of the file at `path`, read in a stream (model files are large).
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok((bytes, format!("{:x}", hasher.finalize())))
}

/// Compiles components, reusing earlier compilations found in `dir`.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// `None` disables the disk cache (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    fn entry(&self, engine: &wasmtime::Engine, content_hash: &str) -> Option<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = h.finish();
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{content_hash}-{engine_key:016x}.cwasm")))
    }

    /// The compiled form of `bytes`, from the cache when possible. Returns whether it was a hit.
    pub fn load(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, bool)> {
        let entry = self.entry(engine, content_hash);
        if let Some(path) = &entry
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` below into agentrt's own
            // cache folder, and its name binds it to this content and this engine configuration.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = &entry
            && let Err(e) = write_atomically(path, &component.serialize()?)
        {
            tracing::warn!(path = %path.display(), "cannot cache compiled component: {e}");
        }
        Ok((component, false))
    }
}

impl CompileCache {
    /// [`CompileCache::load`] for a core module (the sandboxed interpreter).
    pub fn load_module(
        &self,
        engine: &wasmtime::Engine,
        bytes: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(wasmtime::Module, bool)> {
        let entry = self.entry(engine, content_hash);
        if let Some(path) = &entry
            && path.exists()
        {
            // SAFETY: as for components: written by `Module::serialize` below into agentrt's
            // own cache folder, under a name bound to this content and engine configuration.
            match unsafe { wasmtime::Module::deserialize_file(engine, path) } {
                Ok(m) => return Ok((m, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable cache entry: {e:#}")
                }
            }
        }
        let module = wasmtime::Module::new(engine, bytes)?;
        if let Some(path) = &entry
            && let Err(e) = write_atomically(path, &module.serialize()?)
        {
            tracing::warn!(path = %path.display(), "cannot cache compiled module: {e}");
        }
        Ok((module, false))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
