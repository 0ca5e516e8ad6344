//! Hot reload of the plugin folder under load: a check replaced, refused when broken (the old
//! version stays, the reason in `/plugins` and the log), restored, added and removed — while
//! clients keep calling it, none of them failing because of a swap.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness::{Server, plugin_folder, run_cli, test_plugin_wasm};

/// Write `bytes` to `path` the way an installer should: a temporary name, then a rename.
fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().expect("file name").to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Wait (bounded) until `/plugins` satisfies `done`.
/// A server on the plugin folder `dir` that looks at it every 100 ms, logging to a file
/// beside it (returned).
fn watching_server(dir: &std::path::Path) -> (Server, std::path::PathBuf) {
    let log = dir.with_extension("log");
    let server = Server::start_logging(
        &["--plugins", dir.to_str().expect("utf-8")],
        &[("AGENTRT_PLUGIN_POLL_MS", "100")],
        Some(&log),
    );
    (server, log)
}

fn wait_for_plugins(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = server.get("/plugins");
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn version_of(body: &Value, name: &str) -> Option<String> {
    body["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["version"].as_str())
        .map(str::to_string)
}

#[test]
fn plugins_are_swapped_under_load_without_failing_a_request() {
    let manifest = |version: &str| {
        std::fs::read_to_string(
            super::harness::repo_root().join("tests/plugins/echo-check/plugin.toml"),
        )
        .expect("manifest")
        .replace("version = \"0.1.0\"", &format!("version = \"{version}\""))
    };
    let dir = plugin_folder(
        "reload",
        "echo-check",
        "echo-check",
        Some(&manifest("0.1.0")),
    );
    let log = dir.with_extension("log");
    let server = Arc::new(Server::start_logging(
        &["--plugins", dir.to_str().expect("utf-8")],
        &[
            ("AGENTRT_PLUGIN_POLL_MS", "100"),
            ("AGENTRT_LOG_FORMAT", "json"),
        ],
        Some(&log),
    ));
    let wasm = std::fs::read(test_plugin_wasm("echo-check")).expect("component");

    // Clients call the check without pause for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let server = server.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = server.post(
                        "/check",
                        &json!({"code": "x = 1  # TODO: tidy\n", "checks": ["echo-check"]}),
                    );
                    answers.push((status, body));
                }
                answers
            })
        })
        .collect();

    // A new version (new manifest and component) replaces the old for new calls.
    install(&dir.join("echo-check.toml"), manifest("0.1.1").as_bytes());
    install(&dir.join("echo-check.wasm"), &wasm);
    wait_for_plugins(&server, "version 0.1.1", |b| {
        version_of(b, "echo-check").as_deref() == Some("0.1.1")
    });

    // A broken version is refused; 0.1.1 stays in use and the reason is reported.
    install(
        &dir.join("echo-check.wasm"),
        b"\0asm\x0d\0\x01\0not a component",
    );
    let body = wait_for_plugins(&server, "the broken version refused", |b| {
        b["refused"].as_array().is_some_and(|r| !r.is_empty())
    });
    let refused = &body["refused"][0];
    assert!(
        refused["file"]
            .as_str()
            .unwrap_or_default()
            .ends_with("echo-check.wasm"),
        "{body}"
    );
    assert_eq!(refused["code"], "PLUGIN_002", "{body}");
    assert_eq!(refused["keeping"], "0.1.1", "{body}");
    assert_eq!(
        version_of(&body, "echo-check").as_deref(),
        Some("0.1.1"),
        "{body}"
    );
    // `agentrt plugin list --server` shows the same, for an operator at a terminal.
    let (ok, out, err) = run_cli(&["plugin", "list", "--server", &server.base]);
    assert!(ok, "{err}");
    assert!(
        out.contains("echo-check")
            && out.contains("0.1.1")
            && out.contains("refused ")
            && out.contains("PLUGIN_002")
            && out.contains("(keeping version 0.1.1)"),
        "{out}"
    );

    // Fixed: the next version loads and the refusal is gone.
    install(&dir.join("echo-check.toml"), manifest("0.1.2").as_bytes());
    install(&dir.join("echo-check.wasm"), &wasm);
    wait_for_plugins(&server, "version 0.1.2", |b| {
        version_of(b, "echo-check").as_deref() == Some("0.1.2") && b["refused"] == json!([])
    });

    // A check added to the folder joins; removed, it leaves.
    let second = manifest("0.1.0").replace("name = \"echo-check\"", "name = \"echo-two\"");
    install(&dir.join("echo-two.toml"), second.as_bytes());
    install(&dir.join("echo-two.wasm"), &wasm);
    wait_for_plugins(&server, "echo-two added", |b| {
        version_of(b, "echo-two").is_some()
    });
    std::fs::remove_file(dir.join("echo-two.wasm")).expect("rm");
    wait_for_plugins(&server, "echo-two removed", |b| {
        version_of(b, "echo-two").is_none()
    });

    stop.store(true, Ordering::Relaxed);
    let answers: Vec<(u16, Value)> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert!(answers.len() >= 10, "only {} requests made", answers.len());
    for (status, body) in &answers {
        assert_eq!(*status, 200, "a request failed during the swaps: {body}");
        let rules: Vec<&str> = body["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["rule_id"].as_str())
            .collect();
        assert_eq!(rules, ["todo-comment"], "{body}");
    }

    // The log says what happened, with the reason for the refusal.
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let refusal = lines
        .iter()
        .find(|l| l["target"] == "agentrt::plugins" && l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no refusal in the log:\n{text}"));
    assert_eq!(refusal["fields"]["keeping"], "0.1.1", "{refusal}");
    assert!(
        refusal["fields"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid component"),
        "{refusal}"
    );
    assert!(
        lines.iter().any(|l| l["target"] == "agentrt::plugins"
            && l["fields"]["plugin"] == "echo-check"
            && l["fields"]["version"] == "0.1.2"),
        "no load line for 0.1.2:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new version whose trial instantiation finds every instance slot busy (a plugin asleep in
/// a host call holds the only one) is refused as busy (`QUEUE_001`), which hot reload tries
/// again at its next poll, not as a broken component (`PLUGIN_002`) kept refused until its
/// files change again.
#[test]
fn a_version_refused_only_because_the_slots_were_busy_is_reported_as_busy() {
    // The sleeping check holds the only slot for its whole 10 s deadline, long past the trial
    // instantiation's patience (echo-check's 1 s deadline).
    let asleep = super::harness::test_plugin_manifest_with(
        "sleep-check",
        "timeout-ms = 1000",
        "timeout-ms = 10000",
    );
    let dir = plugin_folder("reload-busy", "sleep-check", "sleep-check", Some(&asleep));
    std::fs::copy(test_plugin_wasm("echo-check"), dir.join("echo-check.wasm")).expect("copy");
    let manifest = std::fs::read_to_string(
        super::harness::repo_root().join("tests/plugins/echo-check/plugin.toml"),
    )
    .expect("manifest");
    std::fs::write(dir.join("echo-check.toml"), &manifest).expect("write manifest");
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[limits]\ninstance-pool = 1\n").expect("write config");
    let server = Server::start_with_env(
        &[
            "--plugins",
            dir.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
        ],
        &[("AGENTRT_PLUGIN_POLL_MS", "100")],
    );
    std::thread::scope(|scope| {
        let sleeping = scope.spawn(|| {
            server.post(
                "/check",
                &json!({"code": "x = 1\n", "checks": ["sleep-check"]}),
            )
        });
        // Once its call holds the slot (an echo-check call is then refused as busy)...
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = server.post(
                "/check",
                &json!({"code": "x = 1\n", "checks": ["echo-check"]}),
            );
            assert_eq!(status, 200, "{body}");
            if body["checks"][0]["error"]["code"] == "QUEUE_001" {
                break;
            }
            assert!(
                Instant::now() < until,
                "the sleeping check never took the slot"
            );
        }
        // ...a new version arrives.
        install(
            &dir.join("echo-check.toml"),
            manifest
                .replace("version = \"0.1.0\"", "version = \"0.2.0\"")
                .as_bytes(),
        );
        let body = wait_for_plugins(&server, "the new version refused", |b| {
            b["refused"].as_array().is_some_and(|r| !r.is_empty())
        });
        assert_eq!(body["refused"][0]["code"], "QUEUE_001", "{body}");
        assert_eq!(version_of(&body, "echo-check").as_deref(), Some("0.1.0"));
        let (status, body) = sleeping.join().expect("the sleeping call");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"][0]["error"]["code"], "PLUGIN_004", "{body}");
    });
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}

/// A folder with components that cannot take their place still serves the rest: the server
/// starts without them and says which and why (in `/plugins` and `/health`), where it used to
/// refuse to start on the first, and a later restart on a folder hot reload had accepted could
/// crash-loop. A one-off command asked to use the folder fails on them instead.
#[test]
fn a_server_starts_without_the_folder_plugins_that_cannot_take_their_place() {
    let dir = plugin_folder("misplaced", "echo-check", "echo-check", None);
    let add = |wasm_of: &str, name: &str, manifest: String| {
        std::fs::copy(test_plugin_wasm(wasm_of), dir.join(format!("{name}.wasm"))).expect("copy");
        std::fs::write(dir.join(format!("{name}.toml")), manifest).expect("write manifest");
    };
    // Two error handlers: which one the operator meant is not the host's guess.
    for handler in ["retry-handler", "abort-check-handler"] {
        add(
            handler,
            handler,
            super::harness::test_plugin_manifest(handler),
        );
    }
    // A check named after the default generator would put the generator out (and take its
    // grants); a reviewer named after the default check would take that check's grants.
    add(
        "echo-check",
        "generator",
        super::harness::test_plugin_manifest_with(
            "echo-check",
            "name = \"echo-check\"",
            "name = \"generator\"",
        ),
    );
    add(
        "trap-reviewer",
        "python-quality",
        super::harness::test_plugin_manifest_with(
            "trap-reviewer",
            "name = \"trap-reviewer\"",
            "name = \"python-quality\"",
        ),
    );
    // A manifest that would forge a log line if its parse error were logged as it is.
    std::fs::write(dir.join("broken.wasm"), b"\0asm\x0d\0\x01\0not a component").expect("write");
    std::fs::write(
        dir.join("broken.toml"),
        "\"\\nFORGED INFO agentrt: plugin call outcome=ok\" = 1\n",
    )
    .expect("write manifest");
    let folder = dir.to_str().expect("utf-8");

    let server = Server::start(&["--plugins", folder]);
    let (status, body) = server.get("/plugins");
    assert_eq!(status, 200, "{body}");
    let refused: Vec<(String, String, String)> = body["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .map(|r| {
            let file = r["file"].as_str().expect("file");
            let stem = Path::new(file).file_stem().expect("stem");
            (
                stem.to_string_lossy().into_owned(),
                r["code"].as_str().expect("code").to_string(),
                r["message"].as_str().expect("message").to_string(),
            )
        })
        .collect();
    let mut names: Vec<&str> = refused.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "abort-check-handler",
            "broken",
            "generator",
            "python-quality",
            "retry-handler"
        ],
        "{body}"
    );
    for (name, code, message) in &refused {
        assert_eq!(code, "PLUGIN_002", "{name}: {message}");
        assert!(!message.contains('\n'), "{name}: {message:?}");
        let why = match name.as_str() {
            "generator" => "is the default generator plugin's",
            "python-quality" => "is the default quality-check plugin's",
            "broken" => "broken.toml",
            _ => "the folder has 2 plugins for the error-handler role",
        };
        assert!(message.contains(why), "{name}: {message}");
    }
    // What could take its place is in use; the defaults keep the rest.
    let in_use: Vec<(String, String)> = body["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().expect("name").to_string(),
                p["source"]["kind"].as_str().expect("source").to_string(),
            )
        })
        .collect();
    for (name, source) in [
        ("generator", "embedded"),
        ("reviewer", "embedded"),
        ("error-handler", "embedded"),
        ("python-quality", "embedded"),
        ("echo-check", "file"),
    ] {
        assert!(
            in_use.contains(&(name.to_string(), source.to_string())),
            "{name} ({source}) not in use: {body}"
        );
    }
    let (_, health) = server.get("/health");
    assert_eq!(health["plugins_refused"], 5, "{health}");
    let (status, body) = server.post(
        "/check",
        &json!({"code": "x = 1  # TODO: tidy\n", "checks": ["echo-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["findings"][0]["rule_id"], "todo-comment", "{body}");
    drop(server);

    // `plugin list` shows the folder as a server would use it; a one-off check fails on it.
    let (ok, stdout, stderr) = run_cli(&["plugin", "list", "--plugins", folder, "--json"]);
    assert!(!ok && stderr.contains("PLUGIN_002"), "{stderr}");
    let listing: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        listing["refused"].as_array().map(Vec::len),
        Some(5),
        "{listing}"
    );
    assert_eq!(listing["error"]["code"], "PLUGIN_002", "{listing}");
    let code_file = dir.with_extension("py");
    std::fs::write(&code_file, "x = 1\n").expect("write code");
    let (ok, _, stderr) = run_cli(&[
        "check",
        code_file.to_str().expect("utf-8"),
        "--plugins",
        folder,
    ]);
    assert!(!ok, "a one-off command ran with refused plugins");
    assert!(
        stderr.contains("error PLUGIN_002: 5 plugin(s) of the folder refused"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&code_file);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second error handler dropped into a running server's folder puts both out of use (the
/// default plays the role), and the log says so: the newcomer is refused, not "loaded".
#[test]
fn a_plugin_added_for_a_taken_role_is_logged_refused_not_loaded() {
    let dir = plugin_folder("contested", "retry-handler", "retry-handler", None);
    let (server, log) = watching_server(&dir);
    let (_, body) = server.get("/plugins");
    assert!(version_of(&body, "retry-handler").is_some(), "{body}");

    super::harness::add_test_plugin(&dir, "abort-check-handler");
    let body = wait_for_plugins(&server, "both handlers refused", |body| {
        body["refused"].as_array().map(Vec::len) == Some(2)
    });
    assert!(version_of(&body, "retry-handler").is_none(), "{body}");
    assert!(version_of(&body, "error-handler").is_some(), "{body}");
    drop(server);

    let text = std::fs::read_to_string(&log).expect("log");
    let newcomer: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("abort-check-handler"))
        .collect();
    assert!(
        newcomer.iter().any(|line| line.contains("plugin refused")),
        "{text}"
    );
    assert!(
        !newcomer.iter().any(|line| line.contains("plugin loaded")),
        "a refused plugin was logged as loaded:\n{text}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A component whose load runs to its deadline (a `describe` that never returns) is refused
/// with the deadline's code, and not tried again while its files stay as they are: another
/// file's arrival reloads the folder without waiting on it a second time.
#[test]
fn a_plugin_that_never_describes_itself_is_refused_once_not_at_every_reload() {
    let dir = plugin_folder(
        "slow-describe",
        "slow-describe-check",
        "slow-describe-check",
        None,
    );
    let (server, log) = watching_server(&dir);
    let (_, body) = server.get("/plugins");
    let refused = &body["refused"][0];
    assert_eq!(refused["code"], "PLUGIN_004", "{body}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("500 ms")),
        "{body}"
    );

    super::harness::add_test_plugin(&dir, "echo-check");
    let body = wait_for_plugins(&server, "the new check loaded", |body| {
        version_of(body, "echo-check").is_some()
    });
    assert_eq!(
        body["refused"][0]["code"], "PLUGIN_004",
        "still listed: {body}"
    );
    drop(server);

    let text = std::fs::read_to_string(&log).expect("log");
    let tries = text
        .lines()
        .filter(|line| line.contains("slow-describe-check") && line.contains("plugin refused"))
        .count();
    assert_eq!(tries, 1, "tried again at the reload:\n{text}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A changed config takes effect without a restart: every plugin loads again under its new
/// grants (one the new grants refuse is dropped, not kept with the grants it had); a config
/// that changes `[limits]`, or under which a default plugin cannot load, is refused whole and
/// the plugins in use stay; SIGHUP reads it at once.
#[test]
fn a_changed_config_regrants_the_plugins_without_a_restart() {
    let asks = "name = \"snoop-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
                [permissions]\nmemory-mb = 16\ntimeout-ms = 5000\nenv = [\"SNOOP_VISIBLE\"]\n";
    let plugins = plugin_folder("regrant", "snoop-check", "snoop-check", Some(asks));
    let dir = super::harness::scratch_root()
        .join(format!("agentrt-regrant-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agentrt.toml");
    let log = dir.join("server.log");
    let granted = "[grants.snoop-check]\nenv = [\"SNOOP_VISIBLE\"]\n";
    std::fs::write(&config, granted).expect("config");
    let server = Server::start_logging(
        &[
            "--plugins",
            plugins.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
        ],
        &[("SNOOP_VISIBLE", "yes"), ("AGENTRT_PLUGIN_POLL_MS", "100")],
        Some(&log),
    );
    let snoop_env = || {
        let (status, body) = server.post(
            "/check",
            &json!({"code": "x = 1\n", "checks": ["snoop-check"]}),
        );
        (status == 200).then(|| {
            body["findings"]
                .as_array()
                .and_then(|f| f.iter().find(|f| f["rule_id"] == "snoop-env"))
                .map(|f| f["message"].clone())
                .unwrap_or(Value::Null)
        })
    };
    assert_eq!(snoop_env(), Some(json!("got: SNOOP_VISIBLE")));

    // The grant withdrawn: the plugin asks for what it no longer has, so it goes.
    std::fs::write(&config, "# nothing granted\n").expect("config");
    let body = wait_for_plugins(&server, "snoop-check refused", |b| {
        b["refused"].as_array().is_some_and(|r| !r.is_empty())
    });
    assert_eq!(version_of(&body, "snoop-check"), None, "{body}");
    assert!(
        body["refused"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("SNOOP_VISIBLE")),
        "{body}"
    );
    assert_eq!(snoop_env(), None, "a refused check still ran");

    // Refused whole: a limit changed, or a default plugin that cannot load under the grants.
    let logged = |words: &[&str]| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| words.iter().all(|w| l.contains(w)))
    };
    std::fs::write(&config, format!("{granted}[limits]\nmax-memory-mb = 512\n")).expect("config");
    super::harness::wait_until("the limits refused", Duration::from_secs(30), || {
        logged(&["config not reloaded", "takes a restart"])
    });
    std::fs::write(
        &config,
        format!("{granted}[grants.generator]\nmodels = []\n"),
    )
    .expect("config");
    super::harness::wait_until(
        "the generator's grant refused",
        Duration::from_secs(30),
        || logged(&["config not reloaded", "default plugin cannot load"]),
    );
    assert_eq!(snoop_env(), None, "a refused config was applied");
    let (_, body) = server.get("/plugins");
    assert!(version_of(&body, "generator").is_some(), "{body}");
    assert_eq!(version_of(&body, "snoop-check"), None, "{body}");
    // The refusal is in the API too, not only in the log.
    let in_use = body["config"]["sha256"].clone();
    assert!(in_use.is_string(), "{body}");
    assert!(
        body["config"]["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("default plugin cannot load")),
        "{body}"
    );
    assert_ne!(body["config"]["refused"]["sha256"], in_use, "{body}");
    assert_eq!(server.get("/health").1["config_refused"], json!(true));
    let config_refused = |server: &Server| {
        let (_, _, metrics) = server.exchange("GET", "/metrics", &[], None);
        metrics
            .lines()
            .find(|l| l.starts_with("agentrt_config_refused "))
            .map(str::to_owned)
    };
    assert_eq!(
        config_refused(&server).as_deref(),
        Some("agentrt_config_refused 1")
    );

    // Granted again: back in use.
    std::fs::write(&config, granted).expect("config");
    let body = wait_for_plugins(&server, "snoop-check back", |b| {
        version_of(b, "snoop-check").is_some() && b["refused"] == json!([])
    });
    assert_eq!(body["config"]["refused"], Value::Null, "{body}");
    assert_eq!(server.get("/health").1["config_refused"], json!(false));
    assert_eq!(
        config_refused(&server).as_deref(),
        Some("agentrt_config_refused 0")
    );
    assert_eq!(snoop_env(), Some(json!("got: SNOOP_VISIBLE")));
    drop(server);

    // SIGHUP applies it at once, on a server that would not look for an hour.
    let server = Server::start_logging(
        &[
            "--plugins",
            plugins.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
        ],
        &[
            ("SNOOP_VISIBLE", "yes"),
            ("AGENTRT_PLUGIN_POLL_MS", "3600000"),
        ],
        Some(&log),
    );
    std::fs::write(&config, "# nothing granted\n").expect("config");
    server.hang_up();
    wait_for_plugins(&server, "snoop-check refused after SIGHUP", |b| {
        version_of(b, "snoop-check").is_none()
    });
    assert!(
        logged(&["config reloaded", "SIGHUP"]),
        "no SIGHUP reload in the log"
    );

    // A config refused for what the host lacks (a folder, named relative to the config's
    // own folder) is tried again by SIGHUP once it is there, though the file is unchanged.
    std::fs::write(
        &config,
        format!("{granted}folders = [{{ path = \"/later\", host = \"later\" }}]\n"),
    )
    .expect("config");
    server.hang_up();
    let body = wait_for_plugins(&server, "the missing folder refused", |b| {
        !b["config"]["refused"].is_null()
    });
    let error = body["config"]["refused"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("is not a directory"), "{body}");
    std::fs::create_dir_all(dir.join("later")).expect("folder");
    server.hang_up();
    wait_for_plugins(&server, "the config applied at the second SIGHUP", |b| {
        b["config"]["refused"].is_null() && version_of(b, "snoop-check").is_some()
    });
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
