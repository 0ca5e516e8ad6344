//! `agentrt plugin build`: turn a plugin project (from `agentrt plugin new`, or any folder laid
//! out like one) into `NAME.wasm` + `NAME.toml`, ready for a plugin folder.
//!
//! Rust projects (a `Cargo.toml`) are built by cargo for `wasm32-wasip2`, which emits a
//! component directly; Python projects (an `app.py`) by componentize-py from the project's
//! `wit/` (only the project's own `*.py` files go in, not its tests). The tools' progress goes to
//! standard error. Both files are written under a temporary name and renamed, the manifest
//! first, so a server watching the folder never loads half a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::plugin::manifest::{Manifest, World};

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    pub name: String,
    pub world: World,
    pub language: &'static str,
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub size_bytes: u64,
    pub seconds: f64,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Project(String),
    #[error("{tool} is not available: {hint}")]
    Tool { tool: &'static str, hint: String },
    #[error("{tool} failed ({status}); its output is above")]
    Failed {
        tool: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Build the project in `project` into `out` (created when missing).
pub fn build(project: &Path, out: &Path) -> Result<Built, BuildError> {
    let started = Instant::now();
    // The tools run in other folders: every path handed to them is absolute.
    let project = &std::path::absolute(project).map_err(io(format!("{}", project.display())))?;
    let manifest_path = project.join("plugin.toml");
    let manifest_text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        BuildError::Project(format!(
            "{} is not a plugin project: no plugin.toml ({e})",
            project.display()
        ))
    })?;
    let manifest = Manifest::parse(&manifest_text)
        .map_err(|e| BuildError::Project(format!("{}: {e}", manifest_path.display())))?;
    // componentize-py writes into a folder of its own, removed after the copy.
    let staging = private_staging().map_err(io("create a build folder".to_string()))?;
    let built = if project.join("Cargo.toml").is_file() {
        build_rust(project).map(|wasm| ("rust", wasm))
    } else if project.join("app.py").is_file() {
        build_python(project, &manifest, &staging).map(|wasm| ("python", wasm))
    } else {
        Err(BuildError::Project(format!(
            "{} has neither a Cargo.toml (Rust) nor an app.py (Python)",
            project.display()
        )))
    };
    let installed = built.and_then(|(language, wasm)| {
        install(&manifest, &manifest_text, &wasm, out).map(|done| (language, done))
    });
    let _ = std::fs::remove_dir_all(&staging);
    let (language, (wasm, manifest_out, size)) = installed?;
    Ok(Built {
        name: manifest.name.clone(),
        world: manifest.world,
        language,
        wasm,
        manifest: manifest_out,
        size_bytes: size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Copy the component and its manifest into `out` as NAME.wasm and NAME.toml, each written
/// under a temporary name and renamed, the manifest first.
fn install(
    manifest: &Manifest,
    manifest_text: &str,
    wasm: &Path,
    out: &Path,
) -> Result<(PathBuf, PathBuf, u64), BuildError> {
    std::fs::create_dir_all(out).map_err(io(format!("create {}", out.display())))?;
    let toml_path = out.join(format!("{}.toml", manifest.name));
    let wasm_path = out.join(format!("{}.wasm", manifest.name));
    let toml_tmp = out.join(format!(".{}.toml.tmp", manifest.name));
    let wasm_tmp = out.join(format!(".{}.wasm.tmp", manifest.name));
    std::fs::write(&toml_tmp, manifest_text)
        .map_err(io(format!("write {}", toml_tmp.display())))?;
    std::fs::rename(&toml_tmp, &toml_path).map_err(io(format!("write {}", toml_path.display())))?;
    let size =
        std::fs::copy(wasm, &wasm_tmp).map_err(io(format!("write {}", wasm_tmp.display())))?;
    std::fs::rename(&wasm_tmp, &wasm_path).map_err(io(format!("write {}", wasm_path.display())))?;
    Ok((wasm_path, toml_path, size))
}

fn run(tool: &'static str, command: &mut Command) -> Result<(), BuildError> {
    // The tool's own output is the progress report: it goes to our standard error.
    command.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = command.status().map_err(|e| BuildError::Tool {
        tool,
        hint: format!("cannot run it: {e}"),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed { tool, status })
    }
}

/// `cargo build --release --target wasm32-wasip2`; the component is the cdylib artifact.
fn build_rust(project: &Path) -> Result<PathBuf, BuildError> {
    let cargo_toml = project.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml)
        .map_err(io(format!("read {}", cargo_toml.display())))?;
    let parsed: toml::Table = toml::from_str(&text)
        .map_err(|e| BuildError::Project(format!("{}: {e}", cargo_toml.display())))?;
    let crate_name = parsed
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| {
            BuildError::Project(format!("{} has no [package] name", cargo_toml.display()))
        })?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(
        "cargo",
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&cargo_toml)
            .env("CARGO_TARGET_DIR", &target_dir),
    )
    .map_err(|e| match e {
        // The hint only where it is the cause: a missing target is one failure among many.
        BuildError::Failed { .. } if !wasm_target_installed() => BuildError::Project(format!(
            "{e} (the Rust target is not installed: rustup target add wasm32-wasip2)"
        )),
        other => other,
    })?;
    let wasm = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    if !wasm.is_file() {
        return Err(BuildError::Project(format!(
            "cargo built no component at {}: is [lib] crate-type = [\"cdylib\"] set?",
            wasm.display()
        )));
    }
    Ok(wasm)
}

/// componentize-py: `$COMPONENTIZE_PY`, else the one `scripts/setup.sh` installs under
/// `$AGENTRT_HOME/venv`, else one on `PATH`.
fn componentize_py() -> Result<PathBuf, BuildError> {
    if let Some(path) = std::env::var_os("COMPONENTIZE_PY") {
        return Ok(PathBuf::from(path));
    }
    let installed = crate::paths::home().join("venv/bin/componentize-py");
    if installed.is_file() {
        return Ok(installed);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("componentize-py"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| BuildError::Tool {
            tool: "componentize-py",
            hint: format!(
                "not at {} nor on PATH; run scripts/setup.sh, or `pip install componentize-py==0.17.2`, or set COMPONENTIZE_PY",
                installed.display()
            ),
        })
}

/// componentize-py over the project's own modules (not `test_*.py`), from its `wit/`.
/// Whether the Rust toolchain cargo uses has the standard library for `wasm32-wasip2`.
fn wasm_target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .is_some_and(|sysroot| {
            Path::new(&sysroot)
                .join("lib/rustlib/wasm32-wasip2")
                .is_dir()
        })
}

/// A new folder only this user can enter, under a name nobody could have prepared: the
/// build's sources are copied into it and the component is written there, so another user of
/// a shared `/tmp` must be able neither to plant modules in it nor to have a folder of theirs
/// removed in its place (`create_dir` fails on a name that exists; nothing existing is used).
fn private_staging() -> std::io::Result<PathBuf> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let mut attempts = 0;
    loop {
        let path = std::env::temp_dir().join(format!(
            "agentrt-plugin-build-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match builder.create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copy the project's Python modules into `to`: the `.py` files of its top folder and of its
/// packages (folders with an `__init__.py`), leaving out tests (`test_*.py`, `tests/`), the
/// build's output and hidden folders. `top` is the project's own folder.
fn copy_python_sources(from: &Path, to: &Path, top: bool) -> Result<(), BuildError> {
    let entries = std::fs::read_dir(from).map_err(io(format!("read {}", from.display())))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_file() && name.ends_with(".py") && !name.starts_with("test_") {
            std::fs::create_dir_all(to).map_err(io(format!("create {}", to.display())))?;
            std::fs::copy(&path, to.join(&name)).map_err(io(format!("copy {}", path.display())))?;
        } else if kind.is_dir()
            && path.join("__init__.py").is_file()
            && !name.starts_with('.')
            && name != "tests"
            && !(top && matches!(name.as_str(), "dist" | "wit"))
        {
            copy_python_sources(&path, &to.join(&name), false)?;
        }
    }
    Ok(())
}

fn build_python(
    project: &Path,
    manifest: &Manifest,
    staging: &Path,
) -> Result<PathBuf, BuildError> {
    let wit = project.join("wit");
    if !wit.is_dir() {
        return Err(BuildError::Project(format!(
            "{} has no wit/ folder: `agentrt plugin wit --out {}` writes it",
            project.display(),
            wit.join("plugin.wit").display()
        )));
    }
    let tool = componentize_py()?;
    let app = staging.join("app");
    std::fs::create_dir_all(&app).map_err(io(format!("create {}", app.display())))?;
    copy_python_sources(project, &app, true)?;
    let wasm = staging.join("component.wasm");
    run(
        "componentize-py",
        Command::new(tool)
            .current_dir(staging)
            // A caller's virtualenv must not leak its packages into the component.
            .env_remove("VIRTUAL_ENV")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .arg("-d")
            .arg(&wit)
            .args(["-w", manifest.world.as_str(), "componentize", "-p"])
            .arg(&app)
            .arg("app")
            .arg("-o")
            .arg(&wasm),
    )?;
    Ok(wasm)
}
