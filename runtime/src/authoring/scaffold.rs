//! `agentrt plugin new`: a ready plugin project for any world, in Rust or Python, that builds
//! and loads unchanged — manifest, source with a small working policy, its tests and a README.
//!
//! Projects are self-contained: a Rust project gets a copy of the plugin SDK and the WIT it was
//! generated from (`sdk/`), a Python project the WIT (`wit/`), both from this binary, so what a
//! project builds against is exactly the `agentrt:plugin` version of the agentrt that made it.

use std::path::{Path, PathBuf};

use crate::plugin::manifest::World;
use crate::plugin::wit_version;

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

/// The SDK's sources, copied into Rust projects.
const SDK_FILES: &[(&str, &str)] = &[
    (
        "bindings.rs",
        include_str!("../../../plugins/sdk/src/bindings.rs"),
    ),
    (
        "export.rs",
        include_str!("../../../plugins/sdk/src/export.rs"),
    ),
    ("lib.rs", include_str!("../../../plugins/sdk/src/lib.rs")),
    ("llm.rs", include_str!("../../../plugins/sdk/src/llm.rs")),
    ("log.rs", include_str!("../../../plugins/sdk/src/log.rs")),
    (
        "roles.rs",
        include_str!("../../../plugins/sdk/src/roles.rs"),
    ),
    (
        "sandbox.rs",
        include_str!("../../../plugins/sdk/src/sandbox.rs"),
    ),
    (
        "types.rs",
        include_str!("../../../plugins/sdk/src/types.rs"),
    ),
];

/// Where the SDK finds the WIT inside the agentrt repository, and inside a project.
const SDK_WIT_PATH_IN_REPO: &str = "path: \"../../wit\"";
const SDK_WIT_PATH_IN_PROJECT: &str = "path: \"wit\"";

const README: &str = include_str!("templates/README.md.tmpl");
/// The operator's grant a plugin that calls the model needs, as a config of its own project.
const DEV_CONFIG: &str = "# The grant this plugin needs from a server's operator, for\n\
# `agentrt plugin check dist/{{name}}.wasm --config agentrt.toml`.\n\
[grants.{{name}}]\n\
models = [\"*\"]\n";
const GITIGNORE: &str = include_str!("templates/rust/gitignore.tmpl");
const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml.tmpl");
const RUST_SDK_CARGO: &str = include_str!("templates/rust/sdk-Cargo.toml.tmpl");

fn rust_source(world: World) -> &'static str {
    match world {
        World::Generator => include_str!("templates/rust/generator.rs.tmpl"),
        World::Reviewer => include_str!("templates/rust/reviewer.rs.tmpl"),
        World::QualityCheck => include_str!("templates/rust/quality-check.rs.tmpl"),
        World::ErrorHandler => include_str!("templates/rust/error-handler.rs.tmpl"),
        World::ModelErrorHandler => include_str!("templates/rust/model-error-handler.rs.tmpl"),
    }
}

/// (app.py, policy.py, test_policy.py) of a world.
fn python_sources(world: World) -> [&'static str; 3] {
    match world {
        World::Generator => [
            include_str!("templates/python/generator.app.py.tmpl"),
            include_str!("templates/python/generator.policy.py.tmpl"),
            include_str!("templates/python/generator.test.py.tmpl"),
        ],
        World::Reviewer => [
            include_str!("templates/python/reviewer.app.py.tmpl"),
            include_str!("templates/python/reviewer.policy.py.tmpl"),
            include_str!("templates/python/reviewer.test.py.tmpl"),
        ],
        World::QualityCheck => [
            include_str!("templates/python/quality-check.app.py.tmpl"),
            include_str!("templates/python/quality-check.policy.py.tmpl"),
            include_str!("templates/python/quality-check.test.py.tmpl"),
        ],
        World::ErrorHandler => [
            include_str!("templates/python/error-handler.app.py.tmpl"),
            include_str!("templates/python/error-handler.policy.py.tmpl"),
            include_str!("templates/python/error-handler.test.py.tmpl"),
        ],
        World::ModelErrorHandler => [
            include_str!("templates/python/model-error-handler.app.py.tmpl"),
            include_str!("templates/python/model-error-handler.policy.py.tmpl"),
            include_str!("templates/python/model-error-handler.test.py.tmpl"),
        ],
    }
}

/// What the new plugin does, for its manifest and Cargo.toml.
fn description(world: World) -> &'static str {
    match world {
        World::Generator => "Writes code and tests for a task with the model",
        World::Reviewer => {
            "Rejects code with error findings, requests changes for warnings or failed tests, and asks the model for an opinion"
        }
        World::QualityCheck => "Reports print() calls left in Python code",
        World::ErrorHandler => {
            "Retries generation and review failures, skips broken checks, stops on the rest"
        }
        World::ModelErrorHandler => {
            "Retries failed generations and reviews on the next model, skips broken checks, stops on the rest"
        }
    }
}

/// The manifest: what the template's code needs, no more. Python components carry an
/// interpreter and need more memory and a longer first call.
fn manifest(name: &str, world: World, lang: Lang) -> String {
    let python = lang == Lang::Python;
    let memory = if python { 256 } else { 64 };
    let (timeout, model_lines) = match world {
        World::Generator => (60_000, "models = [\"*\"]\nmax-tokens-per-call = 384\n"),
        World::Reviewer => (60_000, "models = [\"*\"]\nmax-tokens-per-call = 96\n"),
        World::QualityCheck | World::ErrorHandler | World::ModelErrorHandler => {
            (if python { 30_000 } else { 10_000 }, "")
        }
    };
    format!(
        "# What this plugin is and what it asks to be granted; see docs/PERMISSIONS.md.\n\
         name = \"{name}\"\n\
         version = \"0.1.0\"\n\
         world = \"{world}\"\n\
         description = \"{}\"\n\
         \n\
         [permissions]\n\
         {model_lines}\
         memory-mb = {memory}\n\
         timeout-ms = {timeout}\n",
        description(world)
    )
}

fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_string(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "plugin name {0:?} must be 1-64 characters of lower-case letters, digits, '-' or '_', starting with a letter"
    )]
    BadName(String),
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A valid plugin name is also a valid crate and Python-friendly folder name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Create project `name` in `parent/name`; returns the project folder and the files written.
pub fn create(
    parent: &Path,
    name: &str,
    world: World,
    lang: Lang,
) -> Result<(PathBuf, Vec<PathBuf>), ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_string()));
    }
    let dir = parent.join(name);
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ScaffoldError::Exists(dir));
    }
    let version = wit_version::host_version().to_string();
    let crate_name = name.replace('-', "_");
    let mut files: Vec<(PathBuf, String)> = vec![
        ("plugin.toml".into(), manifest(name, world, lang)),
        (".gitignore".into(), GITIGNORE.to_string()),
    ];
    // Copied as they are (the SDK and the WIT), not filled in like the templates.
    let mut copies: Vec<(PathBuf, String)> = Vec::new();
    let (lang_name, test_command, listing) = match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), RUST_CARGO.to_string()));
            files.push(("src/lib.rs".into(), rust_source(world).to_string()));
            files.push(("sdk/Cargo.toml".into(), RUST_SDK_CARGO.to_string()));
            copies.push((
                "sdk/wit/plugin.wit".into(),
                wit_version::WIT_SOURCE.to_string(),
            ));
            for (file, text) in SDK_FILES {
                let text = text.replace(SDK_WIT_PATH_IN_REPO, SDK_WIT_PATH_IN_PROJECT);
                copies.push((Path::new("sdk/src").join(file), text));
            }
            (
                "Rust",
                "cargo test",
                "| `src/lib.rs` | the plugin and its unit tests |\n\
                 | `sdk/` | the agentrt plugin SDK and the WIT it is generated from |\n\
                 | `Cargo.toml` | a `cdylib` for `wasm32-wasip2` |\n",
            )
        }
        Lang::Python => {
            let [app, policy, test] = python_sources(world);
            files.push(("app.py".into(), app.to_string()));
            files.push(("policy.py".into(), policy.to_string()));
            files.push(("test_policy.py".into(), test.to_string()));
            copies.push(("wit/plugin.wit".into(), wit_version::WIT_SOURCE.to_string()));
            (
                "Python",
                "python3 -m unittest",
                "| `app.py` | the WIT glue: the world's exports |\n\
                 | `policy.py` | what the plugin decides, in plain Python |\n\
                 | `test_policy.py` | its tests |\n\
                 | `wit/plugin.wit` | the interfaces, from the agentrt that created the project |\n",
            )
        }
    };
    // A plugin that calls the model needs the operator's grant, for `plugin check` as for a
    // server: the project carries one, so the commands its README gives work as written.
    let (grant_note, check_args) = if world.uses_llm() {
        files.push(("agentrt.toml".into(), DEV_CONFIG.to_string()));
        (
            format!(
                "\nIt calls the model, so the server's operator must grant that in the config (`--config`):\n\n\
                 ```toml\n[grants.{name}]\nmodels = [\"*\"]\n```\n\n\
                 `agentrt.toml` in this project holds that grant, for `agentrt plugin check`.\n"
            ),
            " --config agentrt.toml",
        )
    } else {
        (String::new(), "")
    };
    let world_name = world.to_string();
    let values = [
        ("name", name),
        ("crate", crate_name.as_str()),
        ("world", world_name.as_str()),
        ("wit_version", version.as_str()),
        ("description", description(world)),
        ("lang_name", lang_name),
        ("test_command", test_command),
        ("files", listing),
        ("grant_note", grant_note.as_str()),
        ("check_args", check_args),
    ];
    files.push(("README.md".into(), README.to_string()));
    let filled = files
        .into_iter()
        .map(|(path, text)| (path, fill(&text, &values)));
    let mut written = Vec::new();
    for (relative, text) in filled.chain(copies) {
        let path = dir.join(&relative);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)?;
            }
            std::fs::write(path, &text)
        };
        write(&path).map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(relative);
    }
    Ok((dir, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_and_language_gets_a_complete_project() {
        let parent = std::env::temp_dir().join(format!("agentrt-scaffold-{}", std::process::id()));
        for lang in [Lang::Rust, Lang::Python] {
            for world in [
                World::Generator,
                World::Reviewer,
                World::QualityCheck,
                World::ErrorHandler,
                World::ModelErrorHandler,
            ] {
                let name = format!("my-{}-{:?}", world, lang).to_lowercase();
                let (dir, files) = create(&parent, &name, world, lang).expect("created");
                let manifest =
                    std::fs::read_to_string(dir.join("plugin.toml")).expect("test value");
                let parsed =
                    crate::plugin::manifest::Manifest::parse(&manifest).expect("valid manifest");
                assert_eq!((parsed.name.as_str(), parsed.world), (name.as_str(), world));
                assert_eq!(!parsed.permissions.models.is_empty(), world.uses_llm());
                // The SDK and WIT copies are written as they are; the rest is filled in.
                let filled = files
                    .iter()
                    .filter(|f| !f.starts_with("sdk") && !f.starts_with("wit"));
                for file in filled {
                    let text = std::fs::read_to_string(dir.join(file)).expect("test value");
                    assert!(
                        !text.contains("{{"),
                        "{} keeps a placeholder",
                        file.display()
                    );
                }
                let readme = std::fs::read_to_string(dir.join("README.md")).expect("test value");
                assert!(readme.contains(&format!("agentrt plugin check dist/{name}.wasm")));
                assert_eq!(
                    readme.contains(&format!("[grants.{name}]")),
                    world.uses_llm()
                );
                if lang == Lang::Rust {
                    let bindings = std::fs::read_to_string(dir.join("sdk/src/bindings.rs"))
                        .expect("test value");
                    assert!(bindings.contains(SDK_WIT_PATH_IN_PROJECT));
                    assert!(!bindings.contains(SDK_WIT_PATH_IN_REPO));
                    assert!(dir.join("sdk/wit/plugin.wit").is_file());
                } else {
                    assert!(dir.join("wit/plugin.wit").is_file());
                }
                assert!(matches!(
                    create(&parent, &name, world, lang),
                    Err(ScaffoldError::Exists(_))
                ));
            }
        }
        assert!(matches!(
            create(&parent, "Bad Name", World::Reviewer, Lang::Rust),
            Err(ScaffoldError::BadName(_))
        ));
        std::fs::remove_dir_all(&parent).expect("test value");
    }

    #[test]
    fn the_sdk_copy_finds_its_wit() {
        let (_, bindings) = SDK_FILES[0];
        let worlds = crate::plugin::wit_version::WIT_SOURCE
            .lines()
            .filter(|l| l.starts_with("world "))
            .count();
        assert_eq!(bindings.matches(SDK_WIT_PATH_IN_REPO).count(), worlds);
    }
}
