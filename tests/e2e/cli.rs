//! The CLI's one-off jobs and its errors.

use serde_json::Value;

use crate::harness::run_cli as run;

#[test]
fn check_prints_findings_as_json() {
    let sample =
        crate::harness::scratch_root().join(format!("agentrt-cli-{}.py", std::process::id()));
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
    // A quality check says what it checks; the listing for a person shows it.
    let (ok, stdout, stderr) = run(&["plugins", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("checks: python; rules: ") && l.contains("dangerous-call")),
        "{stdout}"
    );
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

/// The default model keeps its id when its file is named: adding a second model means naming
/// the first, and clients that name it must not break.
#[test]
fn the_default_model_named_by_path_keeps_its_id() {
    let model = agentrt::paths::default_model();
    let (ok, stdout, stderr) = run(&[
        "models",
        "list",
        "--json",
        "--model",
        model.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"smollm2-135m-instruct\""), "{stdout}");
    assert!(!stdout.contains("q4_1"), "{stdout}");
}

/// Settings the environment gives a value that cannot be used stop every command at once,
/// each named with what it must be, instead of quietly keeping the default.
#[test]
fn unusable_settings_in_the_environment_are_refused_by_name() {
    let (ok, _, stderr) = crate::harness::run_cli_env(
        &["plugin", "wit"],
        &[
            ("AGENTRT_MAX_BATCH", "0"),
            ("AGENTRT_REQUEST_TIMEOUT", "10m"),
            ("AGENTRT_LOG_FORMAT", "yaml"),
            ("AGENTRT_THREADS", ""),
        ],
    );
    assert!(!ok, "{stderr}");
    for expected in [
        "error VAL_002",
        "AGENTRT_MAX_BATCH=\"0\": expected a whole number of at least 1",
        "AGENTRT_REQUEST_TIMEOUT=\"10m\"",
        "AGENTRT_LOG_FORMAT=\"yaml\": expected one of json, text",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    assert!(
        !stderr.contains("AGENTRT_THREADS"),
        "empty is unset: {stderr}"
    );
}

#[test]
fn empty_variables_count_as_unset_and_a_bad_log_filter_is_said() {
    // As compose and unit files write them: the paths clap reads, the home, the log filter.
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &["plugin", "list", "--json"],
        &[
            ("AGENTRT_PLUGINS", ""),
            ("AGENTRT_CONFIG", " "),
            ("AGENTRT_HOME", ""),
            ("AGENTRT_LOG", ""),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"generator\""), "{stdout}");
    let (ok, _, stderr) =
        crate::harness::run_cli_env(&["plugin", "wit"], &[("AGENTRT_LOG", "agentrt=loud")]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("AGENTRT_LOG=\"agentrt=loud\" is not a log filter"),
        "{stderr}"
    );
}

#[test]
fn a_rate_limit_of_zero_is_refused_not_taken_for_none() {
    let (ok, _, stderr) = crate::harness::run_cli_env(&["serve"], &[("AGENTRT_RATE_LIMIT", "0")]);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("invalid value '0'"), "{stderr}");
}

#[test]
fn a_grant_naming_no_plugin_is_warned_of() {
    let config = crate::harness::scratch_root().join(format!(
        "agentrt-misspelt-grant-{}.toml",
        std::process::id()
    ));
    std::fs::write(&config, "[grants.genrator]\nmodels = [\"*\"]\n").expect("write config");
    let (ok, _, stderr) = crate::harness::run_cli(&[
        "plugin",
        "list",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("[grants.genrator] in the config names no plugin"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}

#[test]
fn two_models_with_one_id_are_refused() {
    let model = agentrt::paths::default_model();
    let model = model.to_str().expect("utf-8");
    let (ok, _, stderr) = run(&["models", "list", "--model", model, "--model", model]);
    assert!(
        !ok && stderr.contains("VAL_") && stderr.contains("two models are both called"),
        "{stderr}"
    );
}

#[test]
fn a_model_folder_with_dots_in_its_name_keeps_them_in_its_id() {
    let dir = crate::harness::scratch_root().join(format!(
        "agentrt-ids-{}/Tiny-Coder-0.5B-v1.2",
        std::process::id()
    ));
    let (ok, _, stderr) = run(&["synth", "tiny-starcoder", dir.to_str().expect("utf-8")]);
    assert!(ok, "{stderr}");
    let default = agentrt::paths::default_model();
    let (ok, stdout, stderr) = run(&[
        "models",
        "list",
        "--model",
        default.to_str().expect("utf-8"),
        "--model",
        dir.to_str().expect("utf-8"),
    ]);
    let _ = std::fs::remove_dir_all(dir.parent().expect("parent"));
    assert!(ok, "{stderr}");
    // A folder is named by its whole name; the default model's file keeps its own id (other
    // files are named without `.gguf`: `cli::tests`).
    assert!(stdout.contains("smollm2-135m-instruct"), "{stdout}");
    assert!(!stdout.contains("smollm2-135m-instruct.q4_1"), "{stdout}");
    assert!(stdout.contains("tiny-coder-0.5b-v1.2"), "{stdout}");
    // Loading is one log line when stderr is not a terminal: no progress carriage returns.
    assert!(!stderr.contains('\r'), "{stderr:?}");
}

/// A streamed completion piped into a reader that stops early (`| head -c 5`) ends quietly.
#[test]
fn a_completion_piped_into_a_reader_that_leaves_ends_quietly() {
    use std::io::Read;
    let mut child = std::process::Command::new(crate::harness::agentrt_bin())
        .args(["complete", "def fibonacci(n):", "--max-tokens", "200"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start agentrt");
    let mut first = [0u8; 5];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("first bytes");
    // The reader is gone (dropped above); the next write must not panic.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("failed printing"),
        "{stderr}"
    );
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn missing_and_corrupt_models_are_model_errors() {
    let (ok, _, stderr) = run(&["models", "list", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok && stderr.contains("MODEL_001"), "{stderr}");
    let bad =
        crate::harness::scratch_root().join(format!("agentrt-bad-{}.gguf", std::process::id()));
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

/// The checks of a `doctor --json` report by name.
fn doctor_checks(stdout: &str) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"));
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("status"), s("detail"))
        })
        .collect()
}

#[test]
fn doctor_passes_a_healthy_set_up_and_fails_a_damaged_model() {
    let store = crate::harness::fresh_store_path();
    let store = store.to_str().expect("utf-8");
    // A port nobody listens on, so the port check says it is free.
    let port = format!("127.0.0.1:{}", closed_port());
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &["doctor", "--json", "--listen", &port],
        &[("AGENTRT_STORE", store)],
    );
    assert!(ok, "{stdout}{stderr}");
    let checks = doctor_checks(&stdout);
    let status = |prefix: &str| -> Vec<String> {
        checks
            .iter()
            .filter(|(n, _, _)| n.starts_with(prefix))
            .map(|(_, s, _)| s.clone())
            .collect()
    };
    // No GPU is a warning (the CPU engine serves), never a failure.
    let gpu = status("gpu");
    assert!(
        gpu.first().is_some_and(|s| s == "ok" || s == "warn"),
        "{checks:?}"
    );
    for name in [
        "resources.cpus",
        "port",
        "model ",
        "store",
        "python sandbox",
    ] {
        assert_eq!(
            status(name).first().map(String::as_str),
            Some("ok"),
            "{name}: {checks:?}"
        );
    }
    let model = checks
        .iter()
        .find(|(n, _, _)| n.starts_with("model "))
        .expect("model");
    assert!(model.2.contains("as recorded"), "{model:?}");
    // The four default plugins instantiate; the check and the handler answer their self-test.
    let plugins: Vec<_> = checks
        .iter()
        .filter(|(n, _, _)| n.starts_with("plugin "))
        .collect();
    assert!(plugins.len() >= 4, "{plugins:?}");
    assert!(plugins.iter().all(|(_, s, _)| s == "ok"), "{plugins:?}");
    assert!(
        plugins
            .iter()
            .any(|(_, _, d)| d.contains("self-test: decided to")),
        "{plugins:?}"
    );

    // A model file whose recorded checksum no longer matches fails, and so does the command.
    let dir = crate::harness::scratch_root().join(format!("agentrt-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fake = dir.join("damaged.gguf");
    std::fs::write(&fake, b"GGUF not really").expect("write");
    std::fs::write(
        dir.join("damaged.gguf.sha256"),
        format!("{} 15\n", "0".repeat(64)),
    )
    .expect("sidecar");
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &[
            "doctor",
            "--json",
            "--listen",
            &port,
            "--model",
            fake.to_str().expect("utf-8"),
        ],
        &[("AGENTRT_STORE", store)],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a damaged model must fail the doctor: {stdout}");
    // The failed check's own code, not INTERNAL (nothing is wrong with agentrt itself).
    assert!(
        stderr.contains("error MODEL_001") && stderr.contains("model "),
        "{stderr}"
    );
    let model = doctor_checks(&stdout)
        .into_iter()
        .find(|(n, _, _)| n.starts_with("model "))
        .expect("model check");
    assert_eq!(model.1, "fail", "{model:?}");
    assert!(model.2.contains("checksum mismatch"), "{model:?}");
}

#[test]
fn logs_analyze_summarises_a_servers_json_log() {
    let log = crate::harness::scratch_root()
        .join(format!("agentrt-analyze-{}.jsonl", std::process::id()));
    {
        let s = crate::harness::Server::start_logging(
            &[],
            &[("AGENTRT_LOG_FORMAT", "json")],
            Some(&log),
        );
        s.post("/check", &serde_json::json!({"code": "x = 1\n"}));
        s.post("/chat", &serde_json::json!({"message": ""}));
        s.get("/no/such/route");
    }
    let (ok, stdout, stderr) = run(&[
        "logs",
        "analyze",
        log.to_str().expect("utf-8"),
        "--slow-ms",
        "0",
        "--json",
    ]);
    let _ = std::fs::remove_file(&log);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert!(v["requests"].as_u64().unwrap_or(0) >= 3, "{v}");
    assert_eq!(v["requests_by_status"]["400"], 1, "{v}");
    assert_eq!(v["requests_by_status"]["404"], 1, "{v}");
    assert!(
        v["plugins"]["python-quality"]["calls"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{v}"
    );
    let routes: Vec<&str> = v["slow_requests"]
        .as_array()
        .expect("slow requests")
        .iter()
        .filter_map(|r| r["route"].as_str())
        .collect();
    assert!(routes.contains(&"/check"), "{routes:?}");
    assert!(
        v["problems"].as_array().is_some_and(|p| !p.is_empty()),
        "the no-keys warning: {v}"
    );
}

#[test]
fn a_rate_limit_without_api_keys_is_refused_at_start() {
    // The limit counts per key; with no keys it would silently limit nothing.
    let (ok, _, stderr) = run(&["serve", "--rate-limit", "5", "--listen", "127.0.0.1:0"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("VAL_002") && stderr.contains("--rate-limit"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_server_is_a_network_error() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}");
    let (ok, _, stderr) = run(&["plugins", "list", "--server", &url]);
    assert!(!ok && stderr.contains("COMM_002"), "{stderr}");
}

/// A remote model is checked by asking its server, and a broken config is one failed check in
/// a whole report, not the end of it.
#[test]
fn doctor_checks_a_remote_model_and_reports_a_broken_config() {
    let port = closed_port();
    let remote = format!("http://127.0.0.1:{port}/v1");
    let config =
        crate::harness::scratch_root().join(format!("agentrt-doctor-{}.toml", std::process::id()));
    std::fs::write(&config, "[limits]\nmax-memory-mb = 0\n").expect("write config");
    let store = crate::harness::fresh_store_path();
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &[
            "doctor",
            "--json",
            "--model",
            &remote,
            "--config",
            config.to_str().expect("utf-8"),
        ],
        &[("AGENTRT_STORE", store.to_str().expect("utf-8"))],
    );
    let _ = std::fs::remove_file(&config);
    assert!(!ok, "{stdout}{stderr}");
    let checks = doctor_checks(&stdout);
    let find = |name: &str| {
        checks
            .iter()
            .find(|(n, _, _)| n.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"))
            .clone()
    };
    let (_, status, detail) = find("model http://");
    assert_eq!(status, "fail", "{detail}");
    assert!(!detail.contains("scripts/setup.sh"), "{detail}");
    let (_, status, detail) = find("config");
    assert_eq!(status, "fail");
    assert!(detail.contains("max-memory-mb"), "{detail}");
    // The rest of the report is still there.
    find("resources");
    find("gpu");
}

/// A fresh folder for one test's files.
fn scratch(label: &str) -> std::path::PathBuf {
    let dir = crate::harness::scratch_root().join(format!(
        "agentrt-cli-{label}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Ids of the runs in the SQLite store at `path`, sorted.
fn run_ids(path: &std::path::Path) -> Vec<String> {
    use agentrt::store::RunStore;
    let mut ids: Vec<String> = agentrt::store::Store::open(path)
        .expect("open store")
        .list_runs(100, None, None)
        .expect("runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids
}

/// A store at `path` holding queued runs with these ids.
fn store_with_runs(path: &std::path::Path, ids: &[&str]) {
    use agentrt::store::RunStore;
    let store = agentrt::store::Store::open(path).expect("open store");
    for id in ids {
        store
            .insert_run(id, &serde_json::json!({}), None)
            .expect("insert");
    }
}

/// On a fresh host the config `restore --config` writes does not exist yet, and the store goes
/// where the restored config's `store =` says, not to the default.
#[test]
fn restore_with_a_config_uses_the_restored_configs_store_on_a_fresh_host() {
    let dir = scratch("restore-config");
    let source = dir.join("source.db");
    store_with_runs(&source, &["one", "two"]);
    let wanted = dir.join("runs/wanted.db");
    let config_text = format!("store = {:?}\n", wanted.to_str().expect("utf-8"));
    let source_config = dir.join("source.toml");
    std::fs::write(&source_config, &config_text).expect("config");
    let out = dir.join("backup");
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &[
            "backup",
            out.to_str().expect("utf-8"),
            "--config",
            source_config.to_str().expect("utf-8"),
        ],
        &[("AGENTRT_STORE", source.to_str().expect("utf-8"))],
    );
    assert!(ok, "{stdout}{stderr}");

    // The fresh host: no config file, not even its folder, and no store anywhere.
    let home = dir.join("home");
    let config = dir.join("etc/agentrt.toml");
    let fresh_host = [
        ("AGENTRT_STORE", ""),
        ("AGENTRT_HOME", home.to_str().expect("utf-8")),
    ];
    // Without --config the store would go to the default, where a server started with the
    // backed-up config does not look: refused, with nothing written.
    let (ok, _, stderr) =
        crate::harness::run_cli_env(&["restore", out.to_str().expect("utf-8")], &fresh_host);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("BACKUP_001") && stderr.contains("--config"),
        "{stderr}"
    );
    assert!(!home.join("agentrt.db").exists() && !wanted.exists());
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &[
            "restore",
            out.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
        ],
        // Empty means unset: the store comes from the restored config.
        &[
            ("AGENTRT_STORE", ""),
            ("AGENTRT_HOME", home.to_str().expect("utf-8")),
        ],
    );
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config written"),
        config_text
    );
    assert_eq!(run_ids(&wanted), ["one", "two"]);
    assert!(!home.join("agentrt.db").exists(), "not at the default");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `AGENTRT_STORE=` (empty) is the default store, not a store at the path "".
#[test]
fn an_empty_agentrt_store_means_the_default_store() {
    let dir = scratch("empty-store");
    store_with_runs(&dir.join("agentrt.db"), &["kept"]);
    let out = dir.join("backup");
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &["backup", out.to_str().expect("utf-8"), "--json"],
        &[
            ("AGENTRT_STORE", ""),
            ("AGENTRT_HOME", dir.to_str().expect("utf-8")),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{stdout}{stderr}");
    let manifest: Value = serde_json::from_str(&stdout).expect("manifest JSON");
    assert_eq!(manifest["runs"], 1, "{manifest}");
}

/// A command line clap refuses still answers a script that asked for JSON, in the API's
/// error shape; help is still help.
#[test]
fn a_refused_command_line_answers_in_json_when_asked() {
    let (ok, stdout, stderr) =
        crate::harness::run_cli(&["doctor", "--json", "--listen", "nonsense"]);
    assert!(!ok, "{stdout}{stderr}");
    let body: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON document");
    assert_eq!(body["error"]["code"], "VAL_002", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--listen")),
        "{body}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
    let (ok, stdout, _) = crate::harness::run_cli(&["doctor", "--help", "--json"]);
    assert!(ok && stdout.contains("Usage"), "{stdout}");
}

/// An address `serve` could not bind (TEST-NET-1 is never local) fails the doctor.
#[test]
fn doctor_fails_when_serve_could_not_listen() {
    let store = crate::harness::fresh_store_path();
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &["doctor", "--json", "--listen", "192.0.2.1:8080"],
        &[("AGENTRT_STORE", store.to_str().expect("utf-8"))],
    );
    assert!(!ok, "{stdout}{stderr}");
    let port = doctor_checks(&stdout)
        .into_iter()
        .find(|(n, _, _)| n == "port")
        .expect("port check");
    assert_eq!(port.1, "fail", "{port:?}");
    assert!(
        stderr.contains("error VAL_002") && !stderr.contains("INTERNAL"),
        "{stderr}"
    );
    // The one JSON document says the failure too, as the HTTP API's error body does.
    let report: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(report["error"]["code"], "VAL_002", "{report}");
}

/// `--device cuda` where CUDA cannot be used fails the GPU check (a model load would refuse
/// it), and a missing test interpreter is a warning: generated tests are skipped, nothing else
/// stops.
#[test]
fn doctor_checks_the_device_asked_for_and_the_test_sandbox() {
    let store = crate::harness::fresh_store_path();
    let port = format!("127.0.0.1:{}", closed_port());
    let missing = crate::harness::scratch_root().join(format!(
        "agentrt-no-python-{}/python.wasm",
        std::process::id()
    ));
    let (ok, stdout, stderr) = crate::harness::run_cli_env(
        &["doctor", "--json", "--listen", &port, "--device", "cuda"],
        &[
            ("AGENTRT_STORE", store.to_str().expect("utf-8")),
            ("AGENTRT_PYTHON_WASM", missing.to_str().expect("utf-8")),
        ],
    );
    let checks = doctor_checks(&stdout);
    let find = |name: &str| {
        checks
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} check: {checks:?}"))
            .clone()
    };
    let (_, status, detail) = find("python sandbox");
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("AGENTRT_PYTHON_WASM"), "{detail}");
    let (_, status, detail) = find("gpu");
    match agentrt::engine::device::cuda_unavailable_reason() {
        Some(why) => {
            assert_eq!(status, "fail", "{detail}");
            assert!(detail.contains(&why), "{detail}");
            assert!(!ok, "{stdout}{stderr}");
            assert!(stderr.contains("error MODEL_001"), "{stderr}");
        }
        // A machine where the GPU answers: the same run passes.
        None => {
            assert_eq!(status, "ok", "{detail}");
            assert!(ok, "{stdout}{stderr}");
        }
    }
}

/// A log in the default text format is refused with a validation code and how to get a JSON
/// log, instead of a summary that says "none" for every problem.
#[test]
fn logs_analyze_refuses_a_text_log() {
    let log =
        crate::harness::scratch_root().join(format!("agentrt-text-{}.log", std::process::id()));
    std::fs::write(
        &log,
        "2026-11-26T00:00:00.000000Z  WARN agentrt::cli: no API keys configured\n\
         2026-11-26T00:00:01.000000Z  INFO agentrt::http: request finished status=500\n",
    )
    .expect("write");
    let (ok, stdout, stderr) = run(&["logs", "analyze", log.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&log);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("error VAL_001") && stderr.contains("AGENTRT_LOG_FORMAT=json"),
        "{stderr}"
    );
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

#[test]
fn run_refuses_more_retries_than_the_pipeline_makes() {
    // As the API does (400 VAL_002): a value the pipeline would silently cut is refused.
    let (ok, _, stderr) = run(&["run", "add two numbers", "--max-retries", "7"]);
    assert!(!ok, "accepted --max-retries 7");
    assert!(stderr.contains("max-retries"), "{stderr}");
}

/// A one-off run says on standard error what it is doing as it goes (stages, test results,
/// retries, the attempt chosen), and which attempt's code it printed.
#[test]
fn run_shows_its_progress_on_stderr_and_names_the_chosen_attempt() {
    // Attempt 1 passes one of its two tests; attempt 2 carries a marker marker-check fails on,
    // and the handler aborts on a failed check: attempt 1 is chosen.
    let plugins = crate::harness::plugin_folder(
        "cli-progress",
        "scripted-generator",
        "scripted-generator",
        None,
    );
    for name in ["marker-check", "abort-check-handler"] {
        crate::harness::add_test_plugin(&plugins, name);
    }
    let dir = plugins.to_str().expect("utf-8");
    let (ok, stdout, stderr) = run(&[
        "run",
        "add two numbers",
        "--max-retries",
        "1",
        "--plugins",
        dir,
    ]);
    assert!(ok, "{stderr}");
    for line in [
        "generate: scripted-generator (attempt 1)",
        "tests of attempt 1: 1 of 2 passed",
        "retrying test after attempt 1: TEST_001",
        "generate: scripted-generator (attempt 2)",
        // The handler's decision, with its own explanation.
        "error handler: abort after check of attempt 2 failed (",
        "a failed check stops it",
        "chose attempt 1",
        "review: reviewer (attempt 1)",
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    assert!(stdout.contains("def add"), "{stdout}");
    assert!(
        stdout.contains("attempts: 2 (the code is attempt 1's)"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&plugins);
}

/// What a user's slip must not cost: a model folder overwritten, a file called broken for its
/// byte-order mark, tests dropped, JavaScript reviewed as broken Python, a benchmark of
/// nothing, a folder taken for a file.
#[test]
fn one_offs_refuse_what_would_lose_or_misjudge_the_users_work() {
    let root = crate::harness::scratch_root().join(format!("agentrt-slips-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("dir");
    let at = |name: &str| root.join(name).to_str().expect("utf-8").to_string();

    // synth into a folder that holds a model: refused, the files untouched.
    std::fs::create_dir_all(at("model")).expect("dir");
    std::fs::write(at("model/model.safetensors"), "precious").expect("write");
    let (ok, _, stderr) = run(&["synth", "tiny-starcoder", &at("model")]);
    assert!(
        !ok && stderr.contains("error VAL_002") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(at("model/model.safetensors")).expect("read"),
        "precious"
    );

    // A byte-order mark first (Windows editors) is not a syntax error.
    std::fs::write(at("bom.py"), "\u{feff}def f():\n    return 1\n").expect("write");
    let (ok, stdout, stderr) = run(&["check", &at("bom.py"), "--json"]);
    assert!(ok, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).expect("json");
    assert!(!stdout.contains("syntax-error"), "{doc}");

    // Code and tests cannot both come from standard input; another language is named.
    let (ok, _, stderr) = run(&["review", "-", "--tests", "-"]);
    assert!(
        !ok && stderr.contains("error VAL_002") && stderr.contains("standard input"),
        "{stderr}"
    );
    std::fs::write(at("app.js"), "function f() { return 1; }\n").expect("write");
    let (ok, _, stderr) = run(&["review", &at("app.js")]);
    assert!(
        !ok && stderr.contains("error VAL_002") && stderr.contains("javascript"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["review", &at("bom.py"), "--tests", &at("app.js")]);
    assert!(!ok && stderr.contains("app.js is javascript"), "{stderr}");

    // A benchmark of nothing is refused by the parser (status 2).
    let (ok, _, stderr) = run(&["bench", "--runs", "0"]);
    assert!(!ok && stderr.contains("1 or more"), "{stderr}");

    // Writing the WIT over a folder is the caller's mistake, not an internal error.
    let (ok, _, stderr) = run(&["plugin", "wit", "--out", &at("model")]);
    assert!(!ok && stderr.contains("error VAL_002"), "{stderr}");

    // `-` reads the task or message from standard input: here a blank one, refused as such
    // (a literal "-" would have been sent to the model).
    std::fs::write(at("blank.txt"), "  \n").expect("write");
    for command in ["chat", "generate", "run"] {
        let out = std::process::Command::new(crate::harness::agentrt_bin())
            .args([command, "-"])
            .stdin(std::fs::File::open(at("blank.txt")).expect("open"))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("error VAL_002") && stderr.contains("empty"),
            "{command}: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn check_reads_stdin_names_the_file_and_can_gate_on_severity() {
    use std::io::Write;
    let code = "def f(x):\n    return exec(x)\n";
    let sample = crate::harness::scratch_root().join("gate.py");
    std::fs::write(&sample, code).expect("write");
    let path = sample.to_str().expect("utf-8");
    // Findings point at the file, as a linter's do.
    let (ok, stdout, stderr) = run(&["check", path]);
    assert!(ok, "findings alone do not fail the command: {stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with(&format!("{path}:2:"))),
        "{stdout}"
    );
    // --fail-on makes them fail it: dangerous-call is an error.
    let (ok, _, stderr) = run(&["check", path, "--fail-on", "error"]);
    assert!(!ok && stderr.contains("error REV_003"), "{stderr}");
    // With --json, one document: the findings, and the failure as the error body has it.
    let (ok, stdout, _) = run(&["check", path, "--fail-on", "error", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert!(!ok);
    assert_eq!(doc["error"]["code"], "REV_003", "{doc}");
    assert!(
        doc["findings"].as_array().is_some_and(|f| !f.is_empty()),
        "{doc}"
    );
    // The file's extension names its language: no check in use understands JavaScript, so
    // it is refused by name; --language says otherwise.
    let script = crate::harness::scratch_root().join("gate.js");
    std::fs::write(&script, code).expect("write");
    let script = script.to_str().expect("utf-8");
    let (ok, _, stderr) = run(&["check", script]);
    assert!(
        !ok && stderr.contains("error VAL_002") && stderr.contains("\"javascript\""),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run(&["check", script, "--language", "python"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dangerous-call"), "{stdout}");
    // One-offs refuse what the HTTP routes refuse, before loading anything.
    let (ok, _, stderr) = run(&["chat", " "]);
    assert!(!ok && stderr.contains("error VAL_002"), "{stderr}");
    let (ok, _, stderr) = run(&["complete", "x", "--temperature", "5"]);
    assert!(!ok && stderr.contains("0..=2"), "{stderr}");
    // The same code from standard input.
    let mut child = std::process::Command::new(crate::harness::agentrt_bin())
        .args(["check", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(code.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("<stdin>:2:") && stdout.contains("dangerous-call"),
        "{stdout}"
    );
    // Standard input holds one of them, not both.
    let (ok, _, stderr) = run(&["check", "-", "--tests", "-"]);
    assert!(!ok && stderr.contains("error VAL_002"), "{stderr}");
}

#[test]
fn errors_come_as_json_too_when_json_is_asked_for() {
    let missing = crate::harness::scratch_root().join("not-there.py");
    let (ok, stdout, stderr) = run(&["check", missing.to_str().expect("utf-8"), "--json"]);
    assert!(!ok);
    assert!(stderr.contains("error VAL_002"), "{stderr}");
    let body: Value = serde_json::from_str(stdout.trim()).expect("a JSON error on stdout");
    assert_eq!(body["error"]["code"], "VAL_002", "{body}");
    assert_eq!(body["error"]["type"], "validation_error", "{body}");
}

#[test]
fn serve_refuses_a_busy_address_before_loading_anything() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = held.local_addr().expect("address").to_string();
    let (ok, _, stderr) = run(&["serve", "--listen", &address]);
    assert!(!ok);
    assert!(
        stderr.contains("error VAL_002") && stderr.contains(&address),
        "{stderr}"
    );
    // Refused at once: no model was loaded first.
    assert!(!stderr.contains("model loaded"), "{stderr}");
}

/// `agentrt complete` samples as `/v1/completions` does (no repetition penalty, top-k or
/// top-p unless asked): at temperature 0 both give the same text, and above 0 a `--seed`
/// repeats its answer.
#[test]
fn complete_answers_as_the_completions_route_does() {
    let s = crate::harness::default_server();
    let prompt = "def fibonacci(n):";
    let (status, body) = s.post(
        "/v1/completions",
        &serde_json::json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    let complete = |extra: &[&str]| -> Value {
        let mut args = vec!["complete", prompt, "--max-tokens", "24", "--json"];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{stderr}");
        serde_json::from_str(&stdout).expect("json")
    };
    assert_eq!(complete(&[])["text"], body["choices"][0]["text"], "{body}");
    let seeded = |seed: &str| complete(&["--temperature", "1", "--seed", seed])["text"].clone();
    assert_eq!(seeded("7"), seeded("7"));
    // Seeds sample: not every one gives the same text (before, every run used one fixed seed).
    let texts: std::collections::BTreeSet<String> =
        ["1", "2", "3", "4"].map(|s| seeded(s).to_string()).into();
    assert!(texts.len() > 1, "{texts:?}");
}
