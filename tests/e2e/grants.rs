//! Operator grants: a plugin gets exactly what its manifest asked for and the operator's config
//! granted. The snoop plugin (tests/plugins/snoop-check) tries files, a `..` escape, environment
//! variables and sockets; granted some of them, exactly those work. A plugin asking for more
//! than it is granted fails to load with a message naming the permission; a fuel budget stops a
//! plugin deterministically.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Server, plugin_folder, run_cli, test_plugin_manifest_with};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The snoop plugin's attempts as (what, outcome) pairs.
fn attempts(body: &Value) -> Vec<(String, String)> {
    body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| {
            let rule = f["rule_id"].as_str()?.strip_prefix("snoop-")?;
            Some((rule.to_string(), f["message"].as_str()?.to_string()))
        })
        .collect()
}

fn outcome<'a>(attempts: &'a [(String, String)], what: &str) -> &'a str {
    attempts
        .iter()
        .find(|(w, _)| w == what)
        .map(|(_, o)| o.as_str())
        .unwrap_or_else(|| panic!("no attempt {what}: {attempts:?}"))
}

/// A folder the operator grants, holding one file.
fn granted_folder(label: &str) -> PathBuf {
    let dir =
        crate::harness::scratch_root().join(format!("agentrt-{label}-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("visible.txt"), "hello from the granted folder").expect("write");
    dir
}

/// The snoop plugin's manifest asking for two variables, a folder and `host`.
fn snoop_asks(host: &str) -> String {
    format!(
        "name = \"snoop-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
         [permissions]\nmemory-mb = 16\ntimeout-ms = 5000\n\
         env = [\"SNOOP_VISIBLE\", \"SNOOP_TCP\", \"SNOOP_HTTP\"]\n\
         folders = [{{ path = \"/granted\", access = \"read-only\" }}]\nhosts = [\"{host}\"]\n"
    )
}

#[test]
fn granted_env_folders_and_hosts_reach_exactly_what_was_granted() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    // Answers every HTTP request on the granted port; bare connections just close.
    let responder = listener.try_clone().expect("clone listener");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in responder.incoming().flatten() {
            let mut buf = [0u8; 4096];
            if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        }
    });
    // It asks for one port; the snoop's other connection (to port 22) must be refused by the
    // sandbox even though the operator would grant any port.
    let asks = snoop_asks(&format!("127.0.0.1:{port}"));
    let plugins = plugin_folder("granted", "snoop-check", "snoop-check", Some(&asks));
    let data = granted_folder("granted");
    let config = plugins.join("agentrt.toml");
    // The operator grants more than the plugin asks (read-write, any port): it still gets only
    // what it asked for (read-only, one port).
    std::fs::write(
        &config,
        format!(
            "[grants.snoop-check]\nenv = [\"SNOOP_VISIBLE\", \"SNOOP_TCP\", \"SNOOP_HTTP\"]\n\
             folders = [{{ path = \"/granted\", host = {:?}, access = \"read-write\" }}]\n\
             hosts = [\"127.0.0.1:*\"]\n",
            path_str(&data)
        ),
    )
    .expect("write config");
    let tcp_target = format!("127.0.0.1:{port}");
    let server = Server::start_with_env(
        &[
            "--plugins",
            path_str(&plugins),
            "--config",
            path_str(&config),
        ],
        &[
            ("SNOOP_VISIBLE", "yes"),
            ("SNOOP_HIDDEN", "host-secret-value"),
            ("SNOOP_TCP", &tcp_target),
            ("SNOOP_HTTP", &format!("http://{tcp_target}/hello")),
        ],
    );
    let (status, body) = server.post(
        "/check",
        &json!({"code": "x = 1\n", "checks": ["snoop-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    let got = attempts(&body);
    for (what, outcome) in &got {
        println!("{what}: {outcome}");
    }
    assert_eq!(
        outcome(&got, "env"),
        "got: SNOOP_VISIBLE,SNOOP_TCP,SNOOP_HTTP"
    );
    assert_eq!(outcome(&got, "granted-http"), "got: status 200");
    assert_eq!(
        outcome(&got, "granted-read"),
        "got: hello from the granted folder"
    );
    assert_eq!(outcome(&got, "granted-tcp"), "got: connected");
    for denied in [
        "http",
        "granted-write",
        "granted-escape",
        "passwd",
        "escape",
        "root",
        "tcp",
        "udp",
    ] {
        assert!(
            outcome(&got, denied).starts_with("denied"),
            "{denied} got through: {}",
            outcome(&got, denied)
        );
    }
    assert!(
        !data.join("written.txt").exists(),
        "a read-only grant was written to"
    );
    let text = body.to_string();
    assert!(!text.contains("host-secret-value"), "{text}");
    assert!(!text.contains("root:x:0:0"), "{text}");

    let (ok, stdout, stderr) = run_cli(&[
        "plugins",
        "inspect",
        "snoop-check",
        "--json",
        "--plugins",
        path_str(&plugins),
        "--config",
        path_str(&config),
    ]);
    assert!(ok, "{stderr}");
    let inspected: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(
        inspected["granted"]["env"],
        json!(["SNOOP_VISIBLE", "SNOOP_TCP", "SNOOP_HTTP"])
    );
    assert_eq!(inspected["granted"]["folders"][0]["access"], "read-only");
    assert_eq!(inspected["granted"]["folders"][0]["host"], path_str(&data));
    assert_eq!(inspected["granted"]["memory-mb"], 16);
    drop(listener);
    let _ = std::fs::remove_dir_all(plugins);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn a_plugin_asking_for_more_than_it_is_granted_fails_to_load_naming_the_permission() {
    let asks = snoop_asks("127.0.0.1:*");
    let plugins = plugin_folder("ungranted", "snoop-check", "snoop-check", Some(&asks));
    let data = granted_folder("ungranted");
    let config = plugins.join("agentrt.toml");
    let cases = [
        ("", "env \"SNOOP_VISIBLE\" is not granted"),
        (
            "[grants.snoop-check]\nenv = [\"SNOOP_VISIBLE\", \"SNOOP_TCP\", \"SNOOP_HTTP\"]\n",
            "folder \"/granted\" is not granted",
        ),
        (
            &*format!(
                "[grants.snoop-check]\nenv = [\"SNOOP_VISIBLE\", \"SNOOP_TCP\", \"SNOOP_HTTP\"]\n\
                 folders = [{{ path = \"/granted\", host = {:?} }}]\nhosts = [\"127.0.0.1:80\"]\n",
                path_str(&data)
            ),
            "host \"127.0.0.1:*\" is not granted",
        ),
        (
            &*format!(
                "[grants.snoop-check]\nenv = [\"SNOOP_VISIBLE\", \"SNOOP_TCP\", \"SNOOP_HTTP\"]\nmemory-mb = 8\n\
                 folders = [{{ path = \"/granted\", host = {:?} }}]\nhosts = [\"127.0.0.1:*\"]\n",
                path_str(&data)
            ),
            "memory-mb 16 is above the 8 granted",
        ),
    ];
    for (grants, expected) in cases {
        std::fs::write(&config, grants).expect("write config");
        let (ok, _, stderr) = run_cli(&[
            "plugins",
            "list",
            "--plugins",
            path_str(&plugins),
            "--config",
            path_str(&config),
        ]);
        assert!(!ok, "loaded with grants {grants:?}");
        assert!(
            stderr.contains("PLUGIN_006") && stderr.contains(expected),
            "grants {grants:?}: {stderr}"
        );
        println!("refused: {}", stderr.trim());
    }
    // Every shortfall is named at once, and `inspect` shows what the file asks for before it
    // is granted anything.
    std::fs::write(&config, "").expect("write config");
    let wasm = plugins.join("snoop-check.wasm");
    let (ok, stdout, stderr) = run_cli(&[
        "plugin",
        "inspect",
        path_str(&wasm),
        "--config",
        path_str(&config),
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let inspected: Value = serde_json::from_str(&stdout).expect("json");
    let missing = inspected["not_granted"].as_str().unwrap_or_default();
    for expected in [
        "env \"SNOOP_VISIBLE\" is not granted",
        "folder \"/granted\" is not granted",
        "host \"127.0.0.1:*\" is not granted",
    ] {
        assert!(missing.contains(expected), "{expected}: {inspected}");
    }
    assert!(inspected["asks"]["hosts"].is_array(), "{inspected}");
    // A server starts without it, as hot reload would refuse it, and says so: a folder a
    // running server took must not keep it from starting again.
    let server = Server::start(&[
        "--plugins",
        path_str(&plugins),
        "--config",
        path_str(&config),
    ]);
    let (_, body) = server.get("/plugins");
    assert_eq!(body["refused"][0]["code"], "PLUGIN_006", "{body}");
    assert!(
        body["refused"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("env \"SNOOP_VISIBLE\" is not granted")),
        "{body}"
    );
    assert!(
        !body["plugins"].to_string().contains("snoop-check"),
        "{body}"
    );
    let (_, health) = server.get("/health");
    assert_eq!(health["plugins_refused"], 1, "{health}");
    drop(server);
    let _ = std::fs::remove_dir_all(plugins);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn a_fuel_budget_stops_an_endless_loop_before_its_deadline() {
    let plugins = plugin_folder(
        "fuel",
        "spin-check",
        "spin-check",
        Some(
            "name = \"spin-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
         [permissions]\nmemory-mb = 16\ntimeout-ms = 20000\nfuel = 5000000\n",
        ),
    );
    let server = Server::start(&["--plugins", path_str(&plugins)]);
    let started = std::time::Instant::now();
    let (status, body) = server.post(
        "/check",
        &json!({"code": "x = 1\n", "checks": ["spin-check"]}),
    );
    let elapsed = started.elapsed();
    println!(
        "fuel budget stopped the loop after {} ms",
        elapsed.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    let outcome = &body["checks"][0];
    assert_eq!(outcome["error"]["code"], "PLUGIN_009", "{body}");
    assert!(
        outcome["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fuel")),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(plugins);
}

/// Findings of `sandbox-check` on `code` and `tests`, as (rule, message) pairs.
fn sandbox_findings(server: &Server, code: &str, tests: &str) -> Vec<(String, String)> {
    let (status, body) = server.post(
        "/check",
        &json!({"code": code, "tests": tests, "checks": ["sandbox-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][0]["status"], "ok", "{body}");
    body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| {
            Some((
                f["rule_id"].as_str()?.to_string(),
                f["message"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn run_python_answers_only_plugins_granted_it() {
    let code = "def add(a, b):\n    return a + b\n";
    let tests = "def test_add():\n    assert add(2, 3) == 5\n\n\
                 def test_wrong():\n    assert add(2, 2) == 5, 'two and two'\n\n\
                 def test_snoop():\n    open('/etc/passwd').read()\n\n\
                 def test_spin():\n    while True:\n        pass\n";

    // Not asked for, so not granted: the call is refused, the plugin carries on.
    let plain = plugin_folder("sandbox-plain", "sandbox-check", "sandbox-check", None);
    let server = Server::start(&["--plugins", path_str(&plain)]);
    let got = sandbox_findings(&server, code, tests);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "sandbox-refused");
    assert!(got[0].1.contains("not granted run-python"), "{got:?}");
    drop(server);

    // Asked for and granted: the tests run, each failure reported on its own.
    let granted = plugin_folder(
        "sandbox-granted",
        "sandbox-check",
        "sandbox-check",
        Some(
            "name = \"sandbox-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
             [permissions]\nmemory-mb = 16\ntimeout-ms = 30000\nrun-python = true\n",
        ),
    );
    let config = granted.join("agentrt.toml");
    std::fs::write(&config, "[grants.sandbox-check]\nrun-python = true\n").expect("config");
    let server = Server::start(&[
        "--plugins",
        path_str(&granted),
        "--config",
        path_str(&config),
    ]);
    let started = std::time::Instant::now();
    let got = sandbox_findings(&server, code, tests);
    println!(
        "run-python through a plugin took {} ms: {got:?}",
        started.elapsed().as_millis()
    );
    let rules: Vec<&str> = got.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        rules,
        ["test-failed", "test-error", "test-timeout"],
        "{got:?}"
    );
    assert!(got[0].1.starts_with("test_wrong:") && got[0].1.contains("two and two"));
    assert!(got[1].1.starts_with("test_snoop:"), "{got:?}");
    assert!(got[2].1.starts_with("test_spin:"), "{got:?}");
    assert!(!format!("{got:?}").contains("root:x:0:0"));
    let got = sandbox_findings(
        &server,
        code,
        "def test_add():\n    assert add(1, 1) == 2\n",
    );
    assert_eq!(
        got,
        [("tests-passed".to_string(), "1 tests passed".to_string())]
    );
    let _ = std::fs::remove_dir_all(plain);
    let _ = std::fs::remove_dir_all(granted);
}

#[test]
fn more_concurrent_calls_than_instance_slots_wait_their_turn() {
    // Waiting for a slot counts against a call's deadline: a long one, so that a call that
    // keeps losing the race for a freed slot on a loaded machine still gets one.
    let manifest =
        test_plugin_manifest_with("echo-check", "timeout-ms = 1000", "timeout-ms = 30000");
    let plugins = plugin_folder("slots", "echo-check", "echo-check", Some(&manifest));
    let config = plugins.join("agentrt.toml");
    std::fs::write(&config, "[limits]\ninstance-pool = 2\n").expect("config");
    let server = Server::start(&[
        "--plugins",
        path_str(&plugins),
        "--config",
        path_str(&config),
    ]);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let server = &server;
                scope.spawn(move || {
                    server.post("/check", &json!({"code": format!("x = {i}  # TODO\n")}))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().expect("join")).collect()
    });
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
        let checks = body["checks"].as_array().expect("checks");
        assert!(
            checks.iter().all(|c| c["status"] == "ok"),
            "every check ran: {body}"
        );
        assert_eq!(checks.len(), 2, "python-quality and echo-check: {body}");
    }
    let _ = std::fs::remove_dir_all(plugins);
}
