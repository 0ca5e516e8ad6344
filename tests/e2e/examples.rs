//! The example plugins in `examples/`, each built with `agentrt plugin build`, its own tests
//! run, and exercised in a live server the way a team would deploy it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use super::harness::{Server, authoring_target, repo_root, run_cli_env};

fn fresh_dir(label: &str) -> PathBuf {
    let dir = crate::harness::scratch_root()
        .join(format!("agentrt-example-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// `agentrt plugin build examples/NAME --out OUT`.
fn build_example(name: &str, out: &Path) {
    let project = repo_root().join("examples").join(name);
    let target = authoring_target();
    let (ok, stdout, stderr) = run_cli_env(
        &[
            "plugin",
            "build",
            project.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
        ],
        &[("CARGO_TARGET_DIR", target.to_str().expect("utf-8"))],
    );
    assert!(ok, "building {name} failed:\n{stdout}\n{stderr}");
    assert!(
        out.join(format!("{name}.wasm")).is_file() && out.join(format!("{name}.toml")).is_file()
    );
}

/// The example's own tests: `python3 -m unittest` or `cargo test`.
fn run_own_tests(name: &str) {
    let project = repo_root().join("examples").join(name);
    let mut command = if project.join("Cargo.toml").is_file() {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(["test", "--quiet"])
            .env("CARGO_TARGET_DIR", authoring_target().join("host"));
        c
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "unittest", "-q"]);
        c
    };
    let out = command
        .current_dir(&project)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run the example's tests");
    assert!(
        out.status.success(),
        "{name}'s tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn findings_of<'a>(body: &'a Value, prefix: &str) -> Vec<&'a Value> {
    body["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["rule_id"].as_str().is_some_and(|r| r.starts_with(prefix)))
        .collect()
}

#[test]
fn secret_scanner_flags_leaked_keys() {
    run_own_tests("secret-scanner");
    let plugins = fresh_dir("secrets");
    build_example("secret-scanner", &plugins);
    let server = Server::start(&["--plugins", plugins.to_str().expect("utf-8")]);
    let code = "import boto3\n\n\ndef client():\n    \"\"\"S3.\"\"\"\n    return boto3.client(\"s3\", aws_access_key_id=\"AKIAIOSFODNN7EXAMPLE\", aws_secret_access_key=\"wJalrXUtnFEMI/K7MDENG\")\n";
    let (status, body) = server.post(
        "/check",
        &json!({"code": code, "checks": ["secret-scanner"]}),
    );
    assert_eq!(status, 200, "{body}");
    let found: Vec<(String, u64, String)> = findings_of(&body, "secret-scanner/")
        .iter()
        .map(|f| {
            (
                f["rule_id"].as_str().unwrap_or_default().to_string(),
                f["line"].as_u64().unwrap_or_default(),
                f["severity"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        found.contains(&("secret-scanner/aws-access-key".into(), 6, "error".into())),
        "{body}"
    );
    assert!(
        found.contains(&(
            "secret-scanner/hardcoded-credential".into(),
            6,
            "error".into()
        )),
        "{body}"
    );
    // Clean code gives nothing.
    let (_, body) = server.post(
        "/check",
        &json!({"code": "def add(a, b):\n    return a + b\n", "checks": ["secret-scanner"]}),
    );
    assert!(findings_of(&body, "secret-scanner/").is_empty(), "{body}");

    // The scanner understands every language (its describe() names none), so JavaScript can
    // be checked here; the Python check is not called for it.
    let js = "const key = \"AKIAIOSFODNN7EXAMPLE\";\n";
    let (status, body) = server.post("/check", &json!({"code": js, "language": "JavaScript"}));
    assert_eq!(status, 200, "{body}");
    assert!(
        findings_of(&body, "secret-scanner/")
            .iter()
            .any(|f| f["rule_id"] == "secret-scanner/aws-access-key" && f["line"] == 1),
        "{body}"
    );
    let status_of = |name: &str| {
        body["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["status"].clone())
    };
    assert_eq!(
        status_of("python-quality"),
        Some(json!("not_applicable")),
        "{body}"
    );
    assert_eq!(status_of("secret-scanner"), Some(json!("ok")), "{body}");
    // Asking only for checks that do not understand it is refused, not answered with nothing.
    let (status, body) = server.post(
        "/check",
        &json!({"code": js, "language": "javascript", "checks": ["python-quality"]}),
    );
    assert_eq!(status, 400, "{body}");
    // What each check covers is listed with the plugins.
    let (_, listed) = server.get("/plugins");
    let scope = |name: &str| {
        listed["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .map(|p| p["check"].clone())
    };
    assert_eq!(
        scope("python-quality").map(|c| c["languages"].clone()),
        Some(json!(["python"])),
        "{listed}"
    );
    assert_eq!(
        scope("secret-scanner").map(|c| c["languages"].clone()),
        Some(json!([])),
        "{listed}"
    );
    let _ = std::fs::remove_dir_all(&plugins);
}

#[test]
fn house_style_reviews_against_the_granted_guide() {
    run_own_tests("house-style");
    let plugins = fresh_dir("house-style");
    build_example("house-style", &plugins);
    let style = fresh_dir("house-style-guide");
    std::fs::write(
        style.join("house-style.txt"),
        "max-line-length = 40\nnaming = pep8\nforbid-import = pickle\n",
    )
    .expect("guide");
    let config = style.join("agentrt.toml");
    std::fs::write(
        &config,
        format!(
            "[grants.house-style]\nmodels = [\"*\"]\nfolders = [{{ path = \"/style\", host = {:?}, access = \"read-only\" }}]\n",
            style.display().to_string()
        ),
    )
    .expect("config");
    let server = Server::start(&[
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let code =
        "def addNumbers(first_number, second_number):\n    return first_number + second_number\n";
    let (status, body) = server.post("/review", &json!({"code": code}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["summary"]
            .as_str()
            .unwrap_or_default()
            .starts_with("house-style:"),
        "{body}"
    );
    let rules: Vec<&str> = findings_of(&body, "house-style/")
        .iter()
        .filter_map(|f| f["rule_id"].as_str())
        .collect();
    assert!(
        rules.contains(&"house-style/naming") && rules.contains(&"house-style/line-length"),
        "{body}"
    );
    assert_eq!(body["verdict"], "request_changes", "{body}");

    // The team relaxes its guide: the next review follows it, with no rebuild or restart.
    std::fs::write(
        style.join("house-style.txt"),
        "max-line-length = 120\nnaming = any\n",
    )
    .expect("guide");
    let (status, body) = server.post("/review", &json!({"code": code}));
    assert_eq!(status, 200, "{body}");
    assert!(findings_of(&body, "house-style/").is_empty(), "{body}");
    let _ = std::fs::remove_dir_all(&plugins);
    let _ = std::fs::remove_dir_all(&style);
}

#[test]
fn model_fallback_moves_a_run_off_a_dead_remote_model() {
    run_own_tests("model-fallback");
    // The team's big model is another server (here a second agentrt); the small one is local.
    let back = Server::start(&[]);
    let remote_entry = format!("{}/v1", back.base);
    let plugins = fresh_dir("model-fallback");
    // The remote serves the default model under its id, which the default model's file keeps
    // here too: the local copy goes by another name, as a team's second model would.
    let local_model = plugins.with_extension("local-small.gguf");
    let _ = std::fs::remove_file(&local_model);
    std::os::unix::fs::symlink(agentrt::paths::default_model(), &local_model).expect("symlink");
    let front = Server::start_with_env(
        &[
            "--model",
            &remote_entry,
            "--model",
            local_model.to_str().expect("utf-8"),
            "--plugins",
            plugins.to_str().expect("utf-8"),
        ],
        &[("AGENTRT_PLUGIN_POLL_MS", "200")],
    );
    let (_, listed) = front.get("/v1/models");
    let ids: Vec<String> = listed["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    let [remote, local] = ids.as_slice() else {
        panic!("two models expected: {listed}");
    };
    back.kill();
    let task = json!({"task_description": "Write a function add(a, b) that returns the sum of two numbers", "max_retries": 1});

    // The default error handler retries the dead remote and the run fails.
    let (status, body) = front.post("/pipeline", &task);
    assert_eq!(body["error"]["code"], "GEN_001", "{status} {body}");
    let outcome = &body["error"]["details"];
    assert_eq!(outcome["status"], "failed", "{body}");
    let generations: Vec<&Value> = stages_of(outcome, "generate", "generator");
    assert_eq!(generations.len(), 2, "{body}");
    for g in &generations {
        assert_eq!(g["error"]["code"], "GEN_001", "{body}");
        assert_eq!(g["models"], json!([remote]), "{body}");
    }

    // With the example installed (hot reload), the run moves to the local model and completes.
    build_example("model-fallback", &plugins);
    // Hot reload settles, compiles the component (no cache yet) and tries it first: allow a
    // loaded CI machine its time.
    let mut installed = false;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < until {
        let (_, listed) = front.get("/plugins");
        if listed
            .to_string()
            .contains("\"world\":\"model-error-handler\"")
        {
            installed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(installed, "model-fallback was not loaded");
    let (status, submitted) = front.post("/v1/pipeline/runs", &task);
    assert_eq!(status, 202, "{submitted}");
    let id = submitted["id"].as_str().expect("run id");
    let events = super::runs::events(&front, id, &[]);
    let run = super::runs::get_run(&front, id);
    assert_eq!(run["state"], "completed", "{run}");
    let result = &run["result"];
    let generations = stages_of(result, "generate", "generator");
    assert_eq!(generations[0]["error"]["code"], "GEN_001", "{run}");
    assert_eq!(generations[0]["models"], json!([remote]), "{run}");
    let last = generations.last().expect("a generation");
    assert_eq!(last["status"], "ok", "{run}");
    assert_eq!(last["models"], json!([local]), "{run}");
    assert!(
        !stages_of(result, "generate", "model-fallback").is_empty(),
        "the example decided: {run}"
    );
    let reviews = stages_of(result, "review", "reviewer");
    assert_eq!(reviews.len(), 1, "{run}");
    assert_eq!(reviews[0]["models"], json!([local]), "{run}");
    assert!(
        events.iter().any(|(_, kind, data)| kind == "retry"
            && data["stage"] == "generate"
            && data["model"] == json!(local)),
        "no retry event names the local model: {events:?}"
    );
    // /generate names the model its code came from, not the default it was moved off.
    let (status, generated) = front.post(
        "/generate",
        &json!({"task_description": "Write a function add(a, b) that returns the sum of two numbers", "max_retries": 1}),
    );
    assert_eq!(status, 200, "{generated}");
    assert_eq!(generated["model"], json!(local), "{generated}");
    let _ = std::fs::remove_dir_all(&plugins);
    let _ = std::fs::remove_file(&local_model);
}

/// The stage reports of `body` (a run result) for `stage` made by `plugin`.
fn stages_of<'a>(body: &'a Value, stage: &str, plugin: &str) -> Vec<&'a Value> {
    body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["stage"] == stage && s["plugin"] == plugin)
        .collect()
}
