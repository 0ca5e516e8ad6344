//! Builds the default plugins and embeds them in the binary.
//!
//! The Rust plugins under `plugins/` are a separate cargo workspace built for `wasm32-wasip2`
//! into `<target>/wasm-plugins`; the Python quality check is built by componentize-py through
//! `plugins/python-quality/build.sh`, and the pre-initialised test runner of the Python sandbox by
//! `runtime/src/sandbox/build-runner.sh`. All need what `scripts/setup.sh` installs; when something
//! is missing the build stops with a message that says what to run.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Rust plugins: (folder under plugins/, cargo artifact name).
const RUST_PLUGINS: &[(&str, &str)] = &[
    ("generator", "agentrt_plugin_generator"),
    ("reviewer", "agentrt_plugin_reviewer"),
    ("error-handler", "agentrt_plugin_error_handler"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let plugins = root.join("plugins");
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=AGENTRT_HOME");

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is inside the target folder")
        .to_path_buf();
    let wasm_target = target_dir.join("wasm-plugins");
    build_rust_plugins(&plugins, &wasm_target);

    let mut entries = Vec::new();
    for (folder, artifact) in RUST_PLUGINS {
        let wasm = wasm_target
            .join("wasm32-wasip2/release")
            .join(format!("{artifact}.wasm"));
        entries.push((plugins.join(folder).join("plugin.toml"), wasm));
    }
    let sandbox_dir = manifest_dir.join("src/sandbox");
    println!("cargo:rerun-if-changed={}", sandbox_dir.display());
    run_build_script(
        &sandbox_dir.join("build-runner.sh"),
        &out_dir.join("python-runner.wasm"),
        "the pre-initialised Python test runner",
    );

    let python_wasm = out_dir.join("python-quality.wasm");
    run_build_script(
        &plugins.join("python-quality/build.sh"),
        &python_wasm,
        "the Python quality-check plugin",
    );
    entries.push((plugins.join("python-quality/plugin.toml"), python_wasm));

    let mut code = String::from(
        "/// (manifest, component) of every default plugin.\npub static PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for (manifest, wasm) in &entries {
        writeln!(
            code,
            "    (include_str!({:?}), include_bytes!({:?})),",
            manifest, wasm
        )
        .expect("write to String");
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("embedded_plugins.rs"), code).expect("write embedded_plugins.rs");
}

fn cargo_command() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The host build's flags must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn build_rust_plugins(plugins: &Path, target: &Path) {
    let status = cargo_command()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target)
        .status()
        .expect("run cargo for the guest plugins");
    if !status.success() {
        panic!(
            "building the default plugins for wasm32-wasip2 failed; is the target installed? \
             Run scripts/setup.sh (or `rustup target add wasm32-wasip2`)."
        );
    }
}

/// Run a componentize-py build script that writes `out`.
fn run_build_script(script: &Path, out: &Path, what: &str) {
    let status = Command::new("bash")
        .arg(script)
        .arg(out)
        .status()
        .expect("run bash");
    if !status.success() {
        panic!(
            "building {what} failed ({}); run scripts/setup.sh to install componentize-py",
            script.display()
        );
    }
}
