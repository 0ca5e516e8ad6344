//! The plugins the pipeline uses, by role: the embedded defaults, replaced or extended by the
//! components found in the operator's plugin folder.
//!
//! A folder holds `NAME.wasm` files, each with its manifest `NAME.toml` beside it. A folder
//! plugin whose world is generator, reviewer, error-handler or model-error-handler replaces the
//! default of that role (both error-handler worlds play the one error-handler role);
//! a quality check is added to the checks, replacing a default check of the same name.
//!
//! A component that cannot take its place is refused, alone, with the reason: one that does not
//! load, one named after a default plugin of another world (grants follow names, so it would
//! take that plugin's grants, and a check named `generator` would put the generator out), and
//! every one of two or more folder plugins that want the same role (which one the operator
//! meant is not the host's guess). The rest of the folder is used; the server starts and hot
//! reload swaps as usual, with the refusals in `GET /plugins`.
//!
//! [`LivePlugins`] holds the set in use; hot reload ([`super::reload`]) swaps it whole, so a call
//! keeps the plugin it started with and a pipeline run keeps the set it started with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::manifest::{Manifest, World};
use super::{Plugin, PluginError, PluginHost, PluginSource};
use crate::config::Config;

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

/// A component of the plugin folder that was not loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refused {
    /// The `.wasm` file.
    pub file: PathBuf,
    pub code: String,
    pub message: String,
    /// The version still in use instead, when an earlier one had loaded.
    pub keeping: Option<String>,
}

impl Refused {
    /// A refusal of `file` for `error`. The message goes into the log as it is, and it can
    /// quote the component's own manifest (a TOML error shows the line at fault), so control
    /// characters are blanked: a manifest must not be able to forge log lines.
    pub fn new(file: PathBuf, error: &PluginError, keeping: Option<String>) -> Self {
        let mut message = error.to_string();
        super::output::blank_controls(&mut message, false);
        Self {
            file,
            code: error.code().as_str().to_string(),
            message,
            keeping,
        }
    }

    /// Say in the log that the component was refused, and what is used instead.
    pub fn log(&self) {
        let instead = match &self.keeping {
            Some(_) => "plugin refused; its version in use stays",
            None => "plugin refused; it is not used",
        };
        tracing::warn!(
            target: "agentrt::plugins",
            file = %self.file.display(),
            code = %self.code,
            keeping = self.keeping.as_deref().unwrap_or("none"),
            reason = %self.message,
            "{instead}"
        );
    }
}

/// The operator's config file as the server holds it: the version in use and, while the file
/// holds an edit that was refused, why (`GET /plugins`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConfigStatus {
    /// The file (`None`: the server runs without one).
    pub file: Option<String>,
    /// The SHA-256 of the version in use.
    pub sha256: Option<String>,
    /// The edit the server refused, and why; cleared once a version is applied.
    pub refused: Option<ConfigRefusal>,
}

/// A version of the config file the server would not put in use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConfigRefusal {
    /// The SHA-256 of what the file held when it was tried (`None`: it could not be read).
    pub sha256: Option<String>,
    pub error: String,
}

/// The set in use and the folder's refused components; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct LivePlugins {
    inner: Arc<RwLock<(Arc<PluginSet>, Vec<Refused>)>>,
    config: Arc<RwLock<ConfigStatus>>,
}

impl LivePlugins {
    pub fn new(set: PluginSet) -> Self {
        Self::new_from(Arc::new(set), Vec::new())
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<PluginSet> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Components of the folder refused at the last reload.
    pub fn refused(&self) -> Vec<Refused> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// A handle fixed to the set in use now: later swaps do not reach it.
    pub fn pinned(&self) -> Self {
        Self::new_from(self.current(), self.refused())
    }

    /// `set` in use, with the folder's components refused when it was composed.
    pub fn with_refused(set: PluginSet, refused: Vec<Refused>) -> Self {
        Self::new_from(Arc::new(set), refused)
    }

    fn new_from(set: Arc<PluginSet>, refused: Vec<Refused>) -> Self {
        Self {
            inner: Arc::new(RwLock::new((set, refused))),
            config: Default::default(),
        }
    }

    /// The config file in use, and an edit of it that was refused.
    pub fn config_status(&self) -> ConfigStatus {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_config_status(&self, status: ConfigStatus) {
        crate::metrics::global()
            .config_refused
            .set(i64::from(status.refused.is_some()));
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Put `set` in use for every call that starts from now on.
    pub fn replace(&self, set: PluginSet, refused: Vec<Refused>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(set), refused);
    }
}

fn load_error(plugin: &str, message: impl Into<String>) -> PluginError {
    PluginError::Load {
        plugin: plugin.to_string(),
        message: message.into(),
    }
}

/// Why a plugin of `world` cannot be called `name`, if it cannot: the name is a default
/// plugin's of another world (read from the embedded manifests, without loading a component).
/// The one rule for a server's folder and for `agentrt plugin check`.
pub fn name_taken(name: &str, world: World) -> Option<String> {
    let taken_by = embedded::PLUGINS
        .iter()
        .filter_map(|(manifest_text, _)| Manifest::parse(manifest_text).ok())
        .find(|m| m.name == name)
        .map(|m| m.world)
        .filter(|default| default.role() != world.role())?;
    Some(format!(
        "the name {name:?} is the default {taken_by} plugin's; grants follow names \
         ([grants.{name}]) and a plugin replaces the one of its name, so this {world} plugin \
         needs a name of its own"
    ))
}

/// The defaults compiled into the binary.
pub fn load_embedded(host: &PluginHost) -> Result<Vec<Arc<Plugin>>, PluginError> {
    embedded::PLUGINS
        .iter()
        .map(|(manifest_text, bytes)| {
            let manifest = Manifest::parse(manifest_text)
                .map_err(|e| load_error("embedded", e.to_string()))?;
            host.load(manifest, bytes, PluginSource::Embedded)
                .map(Arc::new)
        })
        .collect()
}

/// The roles and checks from the defaults with the folder's plugins laid over them, and the
/// folder plugins refused for the place they want (see the module header).
pub fn compose(
    embedded: &[Arc<Plugin>],
    folder: impl IntoIterator<Item = Arc<Plugin>>,
) -> Result<(PluginSet, Vec<Refused>), PluginError> {
    let folder: Vec<Arc<Plugin>> = folder.into_iter().collect();
    let (usable, refused) = refuse_misplaced(folder);
    let mut loaded: Vec<Arc<Plugin>> = embedded.to_vec();
    for plugin in usable {
        let replaces = |p: &Arc<Plugin>| match plugin.manifest.world {
            World::QualityCheck => p.manifest.name == plugin.manifest.name,
            world => p.manifest.world.role() == world.role(),
        };
        loaded.retain(|p| !replaces(p));
        loaded.push(plugin);
    }
    let mut take_role = |world: World| -> Result<Arc<Plugin>, PluginError> {
        let idx = loaded
            .iter()
            .position(|p| p.manifest.world.role() == world)
            .ok_or_else(|| load_error(world.as_str(), format!("no {world} plugin is available")))?;
        Ok(loaded.remove(idx))
    };
    let generator = take_role(World::Generator)?;
    let reviewer = take_role(World::Reviewer)?;
    let error_handler = take_role(World::ErrorHandler)?;
    let checks = loaded
        .into_iter()
        .filter(|p| p.manifest.world == World::QualityCheck)
        .collect();
    let set = PluginSet {
        generator,
        reviewer,
        error_handler,
        checks,
    };
    Ok((set, refused))
}

/// Split the folder's plugins into those that can take their place and refusals of those that
/// cannot: named after a default of another world, or wanting a role another folder plugin
/// wants too.
fn refuse_misplaced(folder: Vec<Arc<Plugin>>) -> (Vec<Arc<Plugin>>, Vec<Refused>) {
    let file_of = |p: &Plugin| match &p.source {
        PluginSource::File(path) => path.clone(),
        PluginSource::Embedded => PathBuf::from(&p.manifest.name),
    };
    let refuse = |p: &Plugin, message: String| {
        Refused::new(file_of(p), &load_error(&p.manifest.name, message), None)
    };
    let mut refused = Vec::new();
    let mut named_well = Vec::new();
    for plugin in folder {
        match name_taken(&plugin.manifest.name, plugin.manifest.world) {
            Some(why) => refused.push(refuse(&plugin, why)),
            None => named_well.push(plugin),
        }
    }
    let role_of = |p: &Plugin| match p.manifest.world {
        World::QualityCheck => None,
        world => Some(world.role()),
    };
    let (contested, usable): (Vec<_>, Vec<_>) = named_well.iter().cloned().partition(|p| {
        let role = role_of(p);
        role.is_some() && named_well.iter().filter(|q| role_of(q) == role).count() > 1
    });
    for plugin in &contested {
        let role = plugin.manifest.world.role();
        let rivals: Vec<&str> = contested
            .iter()
            .filter(|q| q.manifest.world.role() == role)
            .map(|q| q.manifest.name.as_str())
            .collect();
        refused.push(refuse(
            plugin,
            format!(
                "the folder has {} plugins for the {role} role ({}); one plugin plays a role, \
                 so none of them is used (the default {role} is) until only one is left",
                rivals.len(),
                rivals.join(", ")
            ),
        ));
    }
    (usable, refused)
}

/// What [`load_plugins`] loaded, with the parts hot reload starts from.
#[derive(Debug)]
pub struct Loaded {
    pub set: PluginSet,
    pub embedded: Vec<Arc<Plugin>>,
    pub folder: FolderPlugins,
    /// The folder's components that were not loaded or could not take their place.
    pub refused: Vec<Refused>,
    /// The folder as it was when loading began (empty without one): what a watcher compares
    /// with, so that a change made while it loaded is seen.
    pub stamps: BTreeMap<PathBuf, FileStamp>,
}

/// Load the embedded defaults and then the folder's plugins over them. A folder component that
/// does not load or cannot take its place is refused, as hot reload refuses one; only a folder
/// that cannot be read is an error.
pub fn load_plugins(host: &PluginHost, dir: Option<&Path>) -> Result<Loaded, PluginError> {
    let embedded = load_embedded(host)?;
    let stamps = match dir {
        Some(dir) => folder_stamps(dir).map_err(|e| {
            load_error(
                &dir.display().to_string(),
                format!("cannot read plugin folder: {e}"),
            )
        })?,
        None => BTreeMap::new(),
    };
    // Without a folder the stamps are empty, and so is the scan.
    let scan = scan_folder(host, &stamps, &FolderPlugins::default());
    let (set, misplaced) = compose(&embedded, scan.plugins.plugins())?;
    let mut refused = scan.refused;
    refused.extend(misplaced);
    warn_of_unused_grants(host, &embedded, &scan.plugins.plugins(), &refused);
    Ok(Loaded {
        set,
        embedded,
        folder: scan.plugins,
        refused,
        stamps,
    })
}

/// Say which `[grants.NAME]` entries of the config in use name no plugin among `embedded`,
/// `folder` and the `refused` files: most likely a misspelt name, whose plugin then runs
/// without what the operator meant to grant it.
pub fn warn_of_unused_grants(
    host: &PluginHost,
    embedded: &[Arc<Plugin>],
    folder: &[Arc<Plugin>],
    refused: &[Refused],
) {
    let config = host.config();
    let plugins: Vec<Arc<Plugin>> = embedded.iter().chain(folder).cloned().collect();
    for grant in unused_grants(&config, &plugins, refused) {
        tracing::warn!(
            target: "agentrt::plugins",
            grant = %grant,
            "[grants.{grant}] in the config names no plugin (a plugin's name is the one in its manifest); nothing uses it"
        );
    }
}

/// The `[grants.NAME]` entries of `config` that name none of `plugins` nor a file of the
/// folder that was `refused` (whose manifest may not have been read).
pub fn unused_grants<'a>(
    config: &'a Config,
    plugins: &[Arc<Plugin>],
    refused: &[Refused],
) -> Vec<&'a str> {
    let names: Vec<&str> = plugins
        .iter()
        .map(|p| p.manifest.name.as_str())
        .chain(
            refused
                .iter()
                .filter_map(|r| r.file.file_stem().and_then(|s| s.to_str())),
        )
        .collect();
    naming_none(config.grants.keys().map(String::as_str), &names)
}

/// The grant names in `grants` that are not in `plugins`.
fn naming_none<'a>(grants: impl Iterator<Item = &'a str>, plugins: &[&str]) -> Vec<&'a str> {
    grants.filter(|g| !plugins.contains(g)).collect()
}

/// What identifies one version of a component on disk: the sizes and modification times of
/// the `.wasm` and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    wasm: (u64, Option<SystemTime>),
    manifest: Option<(u64, Option<SystemTime>)>,
}

fn stamp_of(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}

/// The `.wasm` files of `dir` with their stamps, in name order (a stable order: later files
/// win a role).
pub fn folder_stamps(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, FileStamp>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // Hidden files are work in progress (`agentrt plugin build` writes `.NAME.wasm.tmp`).
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || path.extension().is_none_or(|x| x != "wasm") {
            continue;
        }
        if let Some(wasm) = stamp_of(&path) {
            let manifest = stamp_of(&path.with_extension("toml"));
            out.insert(path, FileStamp { wasm, manifest });
        }
    }
    Ok(out)
}

/// The folder's loaded components, by file, with the stamp of the version loaded; and the
/// files refused, with the stamp of the version refused.
#[derive(Debug, Clone, Default)]
pub struct FolderPlugins {
    by_file: BTreeMap<PathBuf, (FileStamp, Arc<Plugin>)>,
    /// Not tried again until their files change: a component whose trial runs to its deadline
    /// would otherwise hold up every reload of the folder (any file's change) that long again.
    refused: BTreeMap<PathBuf, (FileStamp, Refused)>,
}

impl FolderPlugins {
    /// The loaded plugins in file-name order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.by_file.values().map(|(_, p)| p.clone()).collect()
    }
}

/// The result of reading a plugin folder.
#[derive(Debug, Default)]
pub struct FolderScan {
    pub plugins: FolderPlugins,
    /// Refused in this scan.
    pub refused: Vec<Refused>,
    /// Refused before, and not tried again: their files did not change.
    pub still_refused: Vec<Refused>,
    /// Files loaded anew (added or changed) in this scan.
    pub changed: Vec<Arc<Plugin>>,
    /// Files that disappeared since `previous`.
    pub removed: Vec<PathBuf>,
}

/// Load the folder whose `.wasm` files are `stamps` (as [`folder_stamps`] read them), reusing
/// from `previous` every component whose files did not change. A component that fails to load
/// keeps its previous version, if it had one.
pub fn scan_folder(
    host: &PluginHost,
    stamps: &BTreeMap<PathBuf, FileStamp>,
    previous: &FolderPlugins,
) -> FolderScan {
    let removed = previous
        .by_file
        .keys()
        .filter(|p| !stamps.contains_key(*p))
        .cloned()
        .collect();
    let mut plugins = FolderPlugins::default();
    let mut refused = Vec::new();
    let mut still_refused = Vec::new();
    let mut changed = Vec::new();
    for (path, stamp) in stamps {
        let before = previous.by_file.get(path);
        if let Some((old_stamp, plugin)) = before
            && old_stamp == stamp
        {
            plugins
                .by_file
                .insert(path.clone(), (stamp.clone(), plugin.clone()));
            continue;
        }
        if let Some((refused_stamp, refusal)) = previous.refused.get(path)
            && refused_stamp == stamp
        {
            if let Some((old_stamp, plugin)) = before {
                plugins
                    .by_file
                    .insert(path.clone(), (old_stamp.clone(), plugin.clone()));
            }
            plugins
                .refused
                .insert(path.clone(), (stamp.clone(), refusal.clone()));
            still_refused.push(refusal.clone());
            continue;
        }
        match load_file(host, path) {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                changed.push(plugin.clone());
                plugins
                    .by_file
                    .insert(path.clone(), (stamp.clone(), plugin));
            }
            Err(e) => {
                let keeping = before.map(|(_, p)| p.manifest.version.clone());
                let refusal = Refused::new(path.clone(), &e, keeping);
                // Refused only because every instance slot (or the plugin memory) was busy for
                // its trial: tried again at the next poll.
                if !matches!(e, PluginError::Busy { .. }) {
                    plugins
                        .refused
                        .insert(path.clone(), (stamp.clone(), refusal.clone()));
                }
                refused.push(refusal);
                if let Some((old_stamp, plugin)) = before {
                    // The old version stays, under its old stamp, so that the next change of
                    // the files is tried again.
                    plugins
                        .by_file
                        .insert(path.clone(), (old_stamp.clone(), plugin.clone()));
                }
            }
        }
    }
    FolderScan {
        plugins,
        refused,
        still_refused,
        changed,
        removed,
    }
}

/// Most bytes of a manifest (a real one is some hundreds).
const MAX_MANIFEST_BYTES: u64 = 64 << 10;
/// Most bytes of a component (a CPython-based one is some 40 MB).
const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// The bytes of the plugin file at `path`, a regular file (or a link to one) of at most `most`
/// bytes: a FIFO there would stall every later scan of the folder, and a device such as
/// `/dev/zero` would fill memory.
fn read_plugin_file(path: &Path, most: u64) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    let file = crate::paths::open_regular_file(path)?;
    let meta = file.metadata()?;
    if meta.len() > most {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than a plugin file may hold ({most})",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while read stops at the cap too.
    file.take(most + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > most {
        return Err(std::io::Error::other(format!(
            "more than a plugin file may hold ({most} bytes)"
        )));
    }
    Ok(bytes)
}

/// The manifest of a component file: `NAME.toml` beside `NAME.wasm`, parsed.
pub fn read_manifest(wasm: &Path) -> Result<Manifest, String> {
    let path = wasm.with_extension("toml");
    let text = read_plugin_file(&path, MAX_MANIFEST_BYTES)
        .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
        .map_err(|e| {
            format!(
                "cannot read the manifest {} ({e}); a component's manifest is NAME.toml beside NAME.wasm",
                path.display()
            )
        })?;
    let manifest = Manifest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // The operator's grants (`[grants.NAME]`) follow the name: a component must not take
    // another plugin's grants, or its place, by naming itself after it in its own manifest.
    let stem = wasm.file_stem().map(|s| s.to_string_lossy());
    if stem.as_deref() != Some(manifest.name.as_str()) {
        return Err(format!(
            "{} names the plugin {:?}, but its component is {}; grants and roles follow the \
             name, so the file must be {}.wasm",
            path.display(),
            manifest.name,
            wasm.display(),
            manifest.name
        ));
    }
    Ok(manifest)
}

/// Load one `NAME.wasm` with its `NAME.toml`.
pub fn load_file(host: &PluginHost, path: &Path) -> Result<Plugin, PluginError> {
    let label = path.display().to_string();
    let manifest = read_manifest(path).map_err(|e| load_error(&label, e))?;
    // Before its grants are looked at: granting what it asks would only lead to this refusal.
    if let Some(why) = name_taken(&manifest.name, manifest.world) {
        return Err(load_error(&label, why));
    }
    let bytes = read_plugin_file(path, MAX_COMPONENT_BYTES)
        .map_err(|e| load_error(&label, format!("cannot read it: {e}")))?;
    host.load(manifest, &bytes, PluginSource::File(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_naming_no_plugin_are_found() {
        let grants = ["house-style", "huose-style", "generator"];
        let plugins = ["generator", "reviewer", "house-style"];
        assert_eq!(naming_none(grants.into_iter(), &plugins), ["huose-style"]);
        assert!(naming_none(std::iter::empty(), &plugins).is_empty());
    }

    #[test]
    fn a_component_cannot_take_another_plugins_name_and_grants() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-registry-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let manifest =
            "name = \"secret-scanner\"\nversion = \"1.0.0\"\nworld = \"quality-check\"\n";
        std::fs::write(dir.join("secret-scanner.toml"), manifest).expect("write");
        std::fs::write(dir.join("zz-lint.toml"), manifest).expect("write");
        let own = read_manifest(&dir.join("secret-scanner.wasm")).expect("its own name");
        assert_eq!(own.name, "secret-scanner");
        let taken = read_manifest(&dir.join("zz-lint.wasm"));
        assert!(
            taken
                .as_ref()
                .is_err_and(|e| e.contains("the file must be secret-scanner.wasm")),
            "{taken:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_regular_files_are_read_as_plugins_and_a_refusal_quotes_none_of_them() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-registry-files-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A FIFO no one writes to: refused at once (before, the scan waited for a writer).
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.toml"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let fifo = read_manifest(&dir.join("fifo.wasm"));
        assert!(
            fifo.as_ref()
                .is_err_and(|e| e.contains("not a regular file")),
            "{fifo:?}"
        );
        // A link to a device: refused before a byte is read (before, /dev/zero filled memory).
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.toml")).expect("link");
        let zero = read_manifest(&dir.join("zero.wasm"));
        assert!(
            zero.as_ref()
                .is_err_and(|e| e.contains("not a regular file")),
            "{zero:?}"
        );
        assert!(read_plugin_file(Path::new("/dev/zero"), MAX_COMPONENT_BYTES).is_err());
        // Too large: refused by its size.
        let big = dir.join("big.toml");
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(MAX_MANIFEST_BYTES + 1))
            .expect("sparse file");
        let too_big = read_manifest(&dir.join("big.wasm"));
        assert!(
            too_big
                .as_ref()
                .is_err_and(|e| e.contains("more than a plugin file")),
            "{too_big:?}"
        );
        // A link to a file of the host that is not TOML: where it fails, not what it says.
        let secret = dir.join("creds.txt");
        std::fs::write(&secret, "user = \"me\"\npassword = hunter2-SECRET\n").expect("write");
        std::os::unix::fs::symlink(&secret, dir.join("leak.toml")).expect("link");
        let leak = read_manifest(&dir.join("leak.wasm")).expect_err("not a manifest");
        assert!(leak.contains("line 2"), "{leak}");
        assert!(!leak.contains("SECRET"), "{leak}");
        // A link to a regular file is followed, as an operator's deployment may use them.
        let real = dir.join("elsewhere.toml");
        std::fs::write(
            &real,
            "name = \"linked\"\nversion = \"1.0.0\"\nworld = \"quality-check\"\n",
        )
        .expect("write");
        std::os::unix::fs::symlink(&real, dir.join("linked.toml")).expect("link");
        assert_eq!(
            read_manifest(&dir.join("linked.wasm")).expect("read").name,
            "linked"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_component_named_after_a_default_plugin_of_another_world_is_refused_before_its_grants() {
        let dir = std::env::temp_dir().join(format!(
            "agentrt-registry-name-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("mkdir");
        // A reviewer asking for every model, with no grant of its own: the name is what is
        // wrong, and what the refusal says.
        let manifest = "name = \"generator\"\nversion = \"1.0.0\"\nworld = \"reviewer\"\n\
                        [permissions]\nmodels = [\"*\"]\n";
        std::fs::write(dir.join("generator.toml"), manifest).expect("write");
        std::fs::write(dir.join("generator.wasm"), b"not yet looked at").expect("write");
        let host = PluginHost::new(
            None,
            None,
            crate::plugin::compile_cache::CompileCache::new(None),
            Arc::new(crate::config::Config::default()),
        )
        .expect("host");
        let refused = load_file(&host, &dir.join("generator.wasm")).expect_err("refused");
        assert_eq!(refused.code(), crate::error_code::ErrorCode::PluginLoad);
        assert!(
            refused.to_string().contains("needs a name of its own"),
            "{refused}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_plugin_loaded_again_keeps_its_token_meter() {
        let host = PluginHost::new(
            None,
            None,
            crate::plugin::compile_cache::CompileCache::new(Some(crate::paths::component_cache())),
            Arc::new(crate::config::Config::default()),
        )
        .expect("host");
        let first = load_embedded(&host).expect("load");
        let again = load_embedded(&host).expect("load again");
        assert!(first.len() > 1);
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.manifest.name, b.manifest.name);
            assert!(
                Arc::ptr_eq(&a.tokens, &b.tokens),
                "{} got a fresh budget",
                a.manifest.name
            );
        }
        assert!(!Arc::ptr_eq(&first[0].tokens, &first[1].tokens));
    }
}
