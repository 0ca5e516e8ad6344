//! Plugin authoring: the guide (docs/PLUGINS.md) run as written — a Python reviewer and a Rust
//! quality check created, tested, built, checked and dropped into a running server's plugin
//! folder, which then reviews differently — and the WIT version check on components built for
//! other versions of `agentrt:plugin`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::{Server, agentrt_bin, authoring_target, repo_root, run_cli, test_plugin_wasm};

/// A fenced block of the guide: `sh` blocks are run, `console` blocks are what the test does
/// itself (start the server, make the requests).
struct Block {
    runnable: bool,
    body: String,
}

fn guide_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in text.lines() {
        if let Some(block) = current.as_mut() {
            if line.trim_start() == "```" {
                blocks.push(current.take().expect("open block"));
            } else {
                block.body.push_str(line);
                block.body.push('\n');
            }
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            current = Some(Block {
                runnable: lang.trim() == "sh",
                body: String::new(),
            });
        }
    }
    blocks
}

fn run_sh(workdir: &Path, script: &str) {
    let bin_dir = Path::new(agentrt_bin()).parent().expect("bin folder");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(workdir)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", authoring_target())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "guide step failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON body of a `curl ... -d '{...}'` in the guide.
fn curl_body(block: &str) -> Value {
    let start = block.find("-d '").expect("curl -d") + 4;
    let end = start + block[start..].find('\'').expect("closing quote");
    serde_json::from_str(&block[start..end]).expect("JSON body")
}

fn rules(review: &Value) -> Vec<String> {
    review["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["rule_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn names(plugins: &Value) -> Vec<String> {
    plugins["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_plugin_guide_works_as_written() {
    let guide = std::fs::read_to_string(repo_root().join("docs/PLUGINS.md")).expect("guide");
    let workdir =
        crate::harness::scratch_root().join(format!("agentrt-guide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).expect("workdir");
    let mut server: Option<Server> = None;
    let mut reviews_asked = 0;
    let mut ran = 0;
    for block in guide_blocks(&guide) {
        if block.runnable {
            run_sh(&workdir, &block.body);
            ran += 1;
            continue;
        }
        let line = block.body.trim().trim_start_matches("$ ");
        if let Some(args) = line.strip_prefix("agentrt serve ") {
            // The guide's arguments, its relative paths taken from the guide's folder.
            let args: Vec<String> = args
                .split_whitespace()
                .map(|a| {
                    let in_workdir = workdir.join(a);
                    if in_workdir.exists() {
                        in_workdir.display().to_string()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server = Some(Server::start_with_env(
                &args,
                &[("AGENTRT_PLUGIN_POLL_MS", "200")],
            ));
        } else if line.contains("localhost:8080/review") {
            let s = server.as_ref().expect("the guide starts the server first");
            let (status, review) = s.post("/review", &curl_body(line));
            assert_eq!(status, 200, "{review}");
            let summary = review["summary"].as_str().unwrap_or_default();
            let ours = summary.starts_with("strict-review:")
                && rules(&review).contains(&"no-print/print-call".to_string());
            if reviews_asked == 0 {
                assert!(!ours, "before the plugins are installed: {review}");
                assert!(
                    !rules(&review).iter().any(|r| r.starts_with("no-print/")),
                    "{review}"
                );
            } else {
                assert!(ours, "after the plugins are installed: {review}");
                let finding = review["findings"]
                    .as_array()
                    .and_then(|f| f.iter().find(|f| f["rule_id"] == "no-print/print-call"))
                    .expect("print-call finding")
                    .clone();
                assert_eq!(finding["line"], 2, "{finding}");
                assert_eq!(review["verdict"], "request_changes", "{review}");
            }
            reviews_asked += 1;
        } else if line.contains("localhost:8080/plugins") {
            // Hot reload: wait (bounded) until the server uses both new plugins.
            let s = server.as_ref().expect("server");
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let (status, plugins) = s.get("/plugins");
                assert_eq!(status, 200, "{plugins}");
                let names = names(&plugins);
                if names.contains(&"strict-review".into()) && names.contains(&"no-print".into()) {
                    assert_eq!(plugins["refused"], serde_json::json!([]), "{plugins}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "plugins never reloaded: {plugins}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert!(ran >= 5, "the guide's runnable steps were not found");
    assert_eq!(
        reviews_asked, 2,
        "the guide asks for a review before and after"
    );
    let _ = std::fs::remove_dir_all(&workdir);
}

/// A copy of a test component whose `agentrt:plugin` imports name `version` instead of the
/// version it was built for (same length, so the binary stays well-formed).
fn with_wit_version(wasm: &Path, version: &str, out: &Path) {
    let host = agentrt::plugin::wit_version::host_version().to_string();
    assert_eq!(host.len(), version.len(), "same-length versions only");
    let mut bytes = std::fs::read(wasm).expect("read component");
    let mut replaced = 0;
    // Every interface of the package, as the WIT declares them.
    let interfaces = agentrt::plugin::wit_version::WIT_SOURCE
        .lines()
        .filter_map(|l| l.strip_prefix("interface "))
        .filter_map(|l| l.split_whitespace().next());
    for interface in interfaces {
        let from = format!("agentrt:plugin/{interface}@{host}");
        let to = format!("agentrt:plugin/{interface}@{version}");
        let mut at = 0;
        while let Some(pos) = bytes[at..]
            .windows(from.len())
            .position(|w| w == from.as_bytes())
        {
            let start = at + pos;
            bytes[start..start + to.len()].copy_from_slice(to.as_bytes());
            at = start + to.len();
            replaced += 1;
        }
    }
    assert!(replaced > 0, "no agentrt:plugin import found");
    std::fs::write(out, bytes).expect("write component");
}

#[test]
fn a_component_built_for_another_wit_line_is_refused() {
    let dir = crate::harness::scratch_root().join(format!("agentrt-witver-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let manifest =
        std::fs::read_to_string(repo_root().join("tests/plugins/echo-check/plugin.toml"))
            .expect("manifest");
    let host = agentrt::plugin::wit_version::host_version();
    let other_line = format!("{}.{}.0", host.major, host.minor + 8);
    let newer_patch = format!("{}.{}.9", host.major, host.minor);

    // Named as its manifest names it (echo-check), as every component must be.
    let far = dir.join("echo-check.wasm");
    with_wit_version(&test_plugin_wasm("echo-check"), &other_line, &far);
    std::fs::write(dir.join("echo-check.toml"), &manifest).expect("manifest");
    let (ok, out, err) = run_cli(&["plugin", "check", far.to_str().expect("utf-8")]);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains(&format!("was built for agentrt:plugin@{other_line}"))
            && out.contains(&format!("{}.{}.x", host.major, host.minor)),
        "{out}{err}"
    );
    // As JSON, the report carries the failure as the error body's `error`.
    let (ok, out, err) = run_cli(&["plugin", "check", far.to_str().expect("utf-8"), "--json"]);
    assert!(!ok, "{out}{err}");
    let report: Value = serde_json::from_str(&out).expect("json");
    assert!(report["error"]["code"].is_string(), "{report}");
    // A server leaves it out at start, with the same reason (`plugin list` shows it so).
    let (ok, _, err) = run_cli(&["plugin", "list", "--plugins", dir.to_str().expect("utf-8")]);
    assert!(
        !ok && err.contains(&format!("agentrt:plugin@{other_line}")),
        "{err}"
    );

    // A later version of the same line loads when it uses nothing this host lacks.
    std::fs::remove_file(&far).expect("rm");
    let near = dir.join("echo-check.wasm");
    with_wit_version(&test_plugin_wasm("echo-check"), &newer_patch, &near);
    let (ok, out, err) = run_cli(&["plugin", "check", near.to_str().expect("utf-8")]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run_cli(&["plugin", "inspect", near.to_str().expect("utf-8"), "--json"]);
    assert!(ok, "{err}");
    let described: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(described["wit"], format!("agentrt:plugin@{newer_patch}"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `agentrt plugin new` promises a project that builds and loads unchanged: every world in both
/// languages is created, built, and passes `agentrt plugin check` (its self-test in the
/// sandbox, with the model for generators and reviewers).
#[test]
fn every_template_builds_loads_and_passes_its_self_test() {
    let workdir =
        crate::harness::scratch_root().join(format!("agentrt-templates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).expect("workdir");
    let worlds = [
        "generator",
        "reviewer",
        "quality-check",
        "error-handler",
        "model-error-handler",
    ];
    let mut grants = String::new();
    for lang in ["rust", "python"] {
        for world in worlds {
            grants.push_str(&format!("[grants.{world}-{lang}]\nmodels = [\"*\"]\n"));
        }
    }
    std::fs::write(workdir.join("agentrt.toml"), grants).expect("config");
    let mut script = String::new();
    for lang in ["rust", "python"] {
        for world in worlds {
            let name = format!("{world}-{lang}");
            script.push_str(&format!(
                "agentrt plugin new {name} --world {world} --lang {lang}\n\
                 agentrt plugin build {name}\n\
                 agentrt plugin check {name}/dist/{name}.wasm --config agentrt.toml\n"
            ));
        }
    }
    run_sh(&workdir, &script);
    let _ = std::fs::remove_dir_all(&workdir);
}
