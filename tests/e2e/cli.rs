//! The CLI's one-off jobs and its errors.

use serde_json::Value;

use crate::harness::run_cli as run;

#[test]
fn check_prints_findings_as_json() {
    let sample = std::env::temp_dir().join(format!("agentrt-cli-{}.py", std::process::id()));
    std::fs::write(&sample, "def f(x):\n    return exec(x)\n").expect("write");
    let (ok, stdout, stderr) = run(&["check", sample.to_str().expect("utf-8"), "--json"]);
    let _ = std::fs::remove_file(&sample);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json output");
    let rules: Vec<&str> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["rule_id"].as_str())
        .collect();
    assert!(rules.contains(&"dangerous-call"), "{rules:?}");
}

#[test]
fn plugins_list_shows_the_four_default_roles_compiled_once() {
    // The first run may compile (or find another test's compilation); the second must load
    // every component from the on-disk cache.
    run(&["plugins", "list", "--json"]);
    let (ok, stdout, stderr) = run(&["plugins", "list", "--json"]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let plugins = v["plugins"].as_array().expect("list");
    assert!(
        plugins.iter().all(|p| p["cached"] == true),
        "not all from the cache: {v}"
    );
    let names: Vec<&str> = v["plugins"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for n in ["generator", "reviewer", "error-handler", "python-quality"] {
        assert!(names.contains(&n), "{names:?}");
    }
}

#[test]
fn models_list_names_the_default_model() {
    let (ok, stdout, stderr) = run(&["models", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("smollm2-135m-instruct") && stdout.contains("llama"),
        "{stdout}"
    );
}

#[test]
fn missing_and_corrupt_models_are_model_errors() {
    let (ok, _, stderr) = run(&["models", "list", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok && stderr.contains("MODEL_001"), "{stderr}");
    let bad = std::env::temp_dir().join(format!("agentrt-bad-{}.gguf", std::process::id()));
    // A real header cut short: the magic and version, then nothing.
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00\x10").expect("write");
    let (ok, _, stderr) = run(&["models", "list", "--model", bad.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&bad);
    assert!(
        !ok && stderr.contains("MODEL_001") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
