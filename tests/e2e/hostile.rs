//! Plugins that trap (in their own code or in the middle of a host call), loop forever, allocate
//! or recurse without bound, snoop on the host, flood the host with output, or call the model
//! in a loop past their token budget: each call is a clear `PLUGIN_*` error (or, for the snoop,
//! a result that shows it got nothing), and the server keeps answering other requests meanwhile
//! and afterwards. A corrupted component is refused at load with `PLUGIN_002`; a plugin asking
//! for what it is not granted is refused with `PLUGIN_006` (see `grants`).

use std::sync::OnceLock;

use serde_json::json;

use crate::harness::{Server, error_code, plugin_folder, test_plugin_dir};

fn hostile_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = test_plugin_dir().to_str().expect("utf-8 path").to_string();
        Server::start(&["--plugins", &dir])
    })
}

fn check_with(plugin: &str) -> serde_json::Value {
    let (status, body) = hostile_server().post(
        "/check",
        &json!({"code": "x = 1  # TODO\n", "checks": [plugin]}),
    );
    assert_eq!(status, 200, "{body}");
    body["checks"][0].clone()
}

fn still_serving() {
    let (status, body) = hostile_server().get("/health");
    assert_eq!(status, 200, "{body}");
    let outcome = check_with("echo-check");
    assert_eq!(
        outcome["status"], "ok",
        "a well-behaved check must still work: {outcome}"
    );
}

#[test]
fn endless_loop_hits_the_deadline() {
    let outcome = check_with("spin-check");
    assert_eq!(outcome["status"], "skipped", "{outcome}");
    assert_eq!(outcome["error"]["code"], "PLUGIN_004", "{outcome}");
    still_serving();
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let outcome = check_with("hog-check");
    assert_eq!(outcome["error"]["code"], "PLUGIN_005", "{outcome}");
    still_serving();
}

#[test]
fn trapping_reviewer_is_a_plugin_error() {
    let (status, body) = hostile_server().post(
        "/review",
        &json!({"code": "x = 1\n", "checks": ["echo-check"]}),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (502, "PLUGIN_003"),
        "{body}"
    );
    // The plugin's own account of the trap (its panic message, written to stderr) comes with
    // it, on one line.
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the plugin's output ended with:")
            && message.contains("trap-reviewer panics on purpose (asked to review 6 bytes")
            && !message.contains('\n'),
        "{body}"
    );
    still_serving();
}

#[test]
fn hostile_calls_do_not_block_concurrent_requests() {
    let spinner = std::thread::spawn(|| check_with("spin-check"));
    // While the spinning check holds one worker, other requests are answered.
    for _ in 0..3 {
        still_serving();
    }
    let outcome = spinner.join().expect("join");
    assert_eq!(outcome["error"]["code"], "PLUGIN_004");
}

#[test]
fn folder_plugins_replace_and_extend_the_defaults() {
    let (status, body) = hostile_server().get("/plugins");
    assert_eq!(status, 200);
    let names: Vec<&str> = body["plugins"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"trap-reviewer") && !names.contains(&"reviewer"),
        "{names:?}"
    );
    assert!(
        names.contains(&"python-quality") && names.contains(&"echo-check"),
        "{names:?}"
    );
    let outcome = check_with("echo-check");
    assert_eq!(outcome["findings"], 1, "{outcome}");
}

#[test]
fn snooping_on_files_environment_and_network_gets_nothing() {
    let (status, body) = hostile_server().post(
        "/check",
        &json!({"code": "x = 1\n", "checks": ["snoop-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    let findings = body["findings"].as_array().expect("findings");
    let attempts: Vec<(&str, &str)> = findings
        .iter()
        .filter_map(|f| Some((f["rule_id"].as_str()?, f["message"].as_str()?)))
        .collect();
    for (what, outcome) in &attempts {
        println!("{what}: {outcome}");
    }
    for what in [
        "passwd",
        "escape",
        "root",
        "env",
        "tcp",
        "udp",
        "granted-read",
        "granted-write",
        "granted-escape",
        "granted-tcp",
        "http",
        "granted-http",
    ] {
        let outcome = attempts
            .iter()
            .find(|(rule, _)| *rule == format!("snoop-{what}"))
            .map(|(_, o)| *o)
            .unwrap_or_else(|| panic!("no attempt {what}: {body}"));
        assert!(
            outcome.starts_with("denied"),
            "{what} got through: {outcome}"
        );
    }
    let text = body.to_string();
    assert!(!text.contains("root:x:0:0"), "host files leaked: {text}");
    if let Some(home) = std::env::var_os("HOME") {
        let home = home.to_string_lossy().to_string();
        assert!(
            home.len() < 2 || !text.contains(&home),
            "host environment leaked: {text}"
        );
    }
    still_serving();
}

#[test]
fn unbounded_recursion_is_that_calls_trap() {
    let started = std::time::Instant::now();
    let outcome = check_with("recurse-check");
    println!(
        "stack exhaustion stopped after {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(outcome["error"]["code"], "PLUGIN_003", "{outcome}");
    still_serving();
}

#[test]
fn a_sleep_inside_a_host_call_still_answers_at_the_deadline() {
    // The plugin sleeps 120 s in one WASI call, which the epoch cannot interrupt; its caller
    // must get PLUGIN_004 around the 1 s deadline (plus the host's grace), not after the sleep.
    let started = std::time::Instant::now();
    let outcome = check_with("sleep-check");
    println!(
        "a plugin asleep in a host call was answered for after {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(outcome["error"]["code"], "PLUGIN_004", "{outcome}");
    still_serving();
}

#[test]
fn a_trap_inside_a_host_call_is_that_calls_error() {
    let started = std::time::Instant::now();
    let outcome = check_with("hostcall-trap-check");
    println!(
        "trap inside a host call reported after {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(outcome["error"]["code"], "PLUGIN_003", "{outcome}");
    still_serving();
}

#[test]
fn an_llm_loop_stops_at_its_token_budget_while_others_are_served() {
    let plugins = plugin_folder(
        "token-loop",
        "token-loop-reviewer",
        "token-loop-reviewer",
        None,
    );
    let config = plugins.join("agentrt.toml");
    std::fs::write(
        &config,
        "[grants.token-loop-reviewer]\nmodels = [\"*\"]\nmax-tokens-per-call = 16\ntokens-per-minute = 200\n",
    )
    .expect("write config");
    let server = Server::start(&[
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let (status, body, elapsed) = std::thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let started = std::time::Instant::now();
            let (status, body) = server.post(
                "/review",
                &json!({"code": "def add(a, b):\n    return a + b\n"}),
            );
            (status, body, started.elapsed())
        });
        // Ordinary requests go on while the loop runs.
        for _ in 0..3 {
            let (status, body) = server.post("/check", &json!({"code": "x = 1\n"}));
            assert_eq!(status, 200, "{body}");
            let (status, body) = server.get("/health");
            assert_eq!(status, 200, "{body}");
        }
        looping.join().expect("join")
    });
    println!(
        "token loop stopped after {} ms: {status} {body}",
        elapsed.as_millis()
    );
    assert_eq!(error_code(&body), "PLUGIN_007", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    let tokens: u64 = message
        .split_once(" calls and ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token count in {message}"));
    // The budget may be overshot by at most one call's prompt (generation is capped to what
    // is left), and the loop must have been allowed to spend most of it.
    assert!((150..=216).contains(&tokens), "{tokens} tokens: {message}");
    // The failed request still counts the tokens its stages spent.
    let (_, stats) = server.get("/stats");
    assert!(
        stats["endpoints"]["/review"]["tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{stats}"
    );
    let (status, _) = server.get("/health");
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(plugins);
}

#[test]
fn a_flood_of_output_is_refused() {
    let started = std::time::Instant::now();
    let outcome = check_with("flood-check");
    println!(
        "oversized output refused after {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(outcome["error"]["code"], "PLUGIN_008", "{outcome}");
    still_serving();
}

#[test]
fn ordinary_requests_succeed_while_every_hostile_plugin_runs() {
    let hostile = [
        "spin-check",
        "hog-check",
        "recurse-check",
        "flood-check",
        "snoop-check",
        "hostcall-trap-check",
        "sleep-check",
        "body-stall-check",
    ];
    let handles: Vec<_> = hostile
        .iter()
        .map(|&name| std::thread::spawn(move || check_with(name)))
        .collect();
    for _ in 0..5 {
        still_serving();
    }
    for (name, handle) in hostile.iter().zip(handles) {
        let outcome = handle.join().expect("join");
        let expected = match *name {
            "spin-check" => "PLUGIN_004",
            "hog-check" => "PLUGIN_005",
            "recurse-check" => "PLUGIN_003",
            "flood-check" => "PLUGIN_008",
            "hostcall-trap-check" => "PLUGIN_003",
            "sleep-check" | "body-stall-check" => "PLUGIN_004",
            _ => {
                assert_eq!(outcome["status"], "ok", "{name}: {outcome}");
                continue;
            }
        };
        assert_eq!(outcome["error"]["code"], expected, "{name}: {outcome}");
    }
    still_serving();
}

#[test]
fn a_corrupted_component_is_refused_at_load() {
    let dir =
        crate::harness::scratch_root().join(format!("agentrt-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let manifest = "name = \"broken-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n";
    for (bytes, what) in [
        (
            b"\0asm\x01\0\0\0garbage".to_vec(),
            "a core module header with garbage",
        ),
        (b"not wasm at all".to_vec(), "not wasm"),
    ] {
        std::fs::write(dir.join("broken-check.wasm"), &bytes).expect("write wasm");
        std::fs::write(dir.join("broken-check.toml"), manifest).expect("write manifest");
        let out = std::process::Command::new(crate::harness::agentrt_bin())
            .args(["plugins", "list", "--plugins"])
            .arg(&dir)
            .output()
            .expect("run agentrt");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: loaded");
        assert!(stderr.contains("PLUGIN_002"), "{what}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_plugin_asleep_in_a_host_call_is_stopped_at_its_deadline_and_frees_its_slot() {
    // One instance slot. The check asks WASI for a two-minute sleep, a host call the epoch
    // deadline cannot interrupt; its timer is cut at the call's deadline, so the call ends
    // then (PLUGIN_004) and gives the slot back, instead of holding it for the whole sleep
    // (or for ever, for a sleep of u64::MAX nanoseconds) while every later call is refused.
    let config = crate::harness::scratch_root()
        .join(format!("agentrt-one-slot-{}.toml", std::process::id()));
    std::fs::write(&config, "[limits]\ninstance-pool = 1\n").expect("write config");
    let dir = test_plugin_dir().to_str().expect("utf-8 path").to_string();
    let server = Server::start(&[
        "--plugins",
        &dir,
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let check = |plugin: &str| {
        let (status, body) = server.post("/check", &json!({"code": "x = 1\n", "checks": [plugin]}));
        assert_eq!(status, 200, "{body}");
        body["checks"][0].clone()
    };
    let asleep = check("sleep-check");
    assert_eq!(asleep["error"]["code"], "PLUGIN_004", "{asleep}");
    let next = check("echo-check");
    assert_eq!(next["status"], "ok", "{next}");
    let _ = std::fs::remove_file(&config);
}

/// A server with one instance slot serving the plugins in `dir` under `config`, and a `/check`
/// of one plugin at a time.
fn one_slot_server(dir: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Server {
    limited_server(dir, "instance-pool = 1", config, env)
}

/// A server serving the plugins in `dir` under `config` with `limits` (lines of `[limits]`).
fn limited_server(
    dir: &std::path::Path,
    limits: &str,
    config: &str,
    env: &[(&str, &str)],
) -> Server {
    let config_path = dir.join("agentrt.toml");
    std::fs::write(&config_path, format!("[limits]\n{limits}\n\n{config}")).expect("write config");
    Server::start_with_env(
        &[
            "--plugins",
            dir.to_str().expect("utf-8 path"),
            "--config",
            config_path.to_str().expect("utf-8"),
        ],
        env,
    )
}

fn check_on(server: &Server, plugin: &str) -> serde_json::Value {
    let (status, body) = server.post("/check", &json!({"code": "x = 1\n", "checks": [plugin]}));
    assert_eq!(status, 200, "{body}");
    body["checks"][0].clone()
}

/// With one instance slot, sleep-check granted a connection to a peer that accepts it and then
/// neither reads nor writes, its address in the variable `mode`: the check's call ends at its
/// deadline (PLUGIN_004), and the slot is free for the next call at once, while the
/// connection is still open.
fn a_silent_peer_costs_the_call_its_deadline_not_its_slot(mode: &str, label: &str) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let address = listener.local_addr().expect("address").to_string();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let (connection, _) = listener.accept().expect("accept");
        let _ = released.recv();
        drop(connection);
    });
    let manifest = format!(
        "name = \"sleep-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
         [permissions]\nmemory-mb = 16\ntimeout-ms = 1000\nenv = [\"{mode}\"]\n\
         hosts = [\"{address}\"]\n"
    );
    let dir = plugin_folder(label, "sleep-check", "sleep-check", Some(&manifest));
    crate::harness::add_test_plugin(&dir, "echo-check");
    let server = one_slot_server(
        &dir,
        &format!("[grants.sleep-check]\nenv = [\"{mode}\"]\nhosts = [\"{address}\"]\n"),
        &[(mode, address.as_str())],
    );
    let stuck = check_on(&server, "sleep-check");
    assert_eq!(stuck["error"]["code"], "PLUGIN_004", "{stuck}");
    let next = check_on(&server, "echo-check");
    assert_eq!(next["status"], "ok", "the slot was not freed: {next}");
    release.send(()).expect("release the connection");
    holder.join().expect("holder");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plugin_waiting_on_a_silent_connection_is_cut_at_its_deadline_and_frees_its_slot() {
    // The check waits for a byte that never comes, inside a host call (a blocking read or
    // poll) the epoch cannot interrupt.
    a_silent_peer_costs_the_call_its_deadline_not_its_slot("SLEEP_TCP", "silent");
}

#[test]
fn closing_a_connection_whose_peer_never_reads_ends_at_the_deadline_and_frees_its_slot() {
    // The check fills the connection and closes it: the close waits for the write in
    // flight, which never finishes.
    a_silent_peer_costs_the_call_its_deadline_not_its_slot("SLEEP_FLOOD", "flood-close");
}

#[test]
fn a_write_that_waits_for_ever_in_a_host_call_ends_at_the_deadline_and_frees_its_slot() {
    // One instance slot. The check, granted nothing, fills the body of an HTTP request it
    // never sends; its next blocking write waits for room that never comes. Before the host
    // bounded such waits, the call was abandoned at its deadline but kept its slot for good, and
    // every later call on the server was refused (QUEUE_001).
    let dir = plugin_folder("stall", "body-stall-check", "body-stall-check", None);
    crate::harness::add_test_plugin(&dir, "echo-check");
    let server = one_slot_server(&dir, "", &[]);
    for _ in 0..2 {
        let stalled = check_on(&server, "body-stall-check");
        assert_eq!(stalled["error"]["code"], "PLUGIN_004", "{stalled}");
        let next = check_on(&server, "echo-check");
        assert_eq!(next["status"], "ok", "the slot was not freed: {next}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_call_gives_up_on_slots_held_by_a_plugin_stuck_in_the_kernel() {
    // One instance slot.
    a_call_gives_up_on_what_a_plugin_stuck_in_the_kernel_holds(
        "instance-pool = 1",
        "instance slot stayed busy",
    );
}

#[test]
fn a_call_gives_up_on_memory_held_by_a_plugin_stuck_in_the_kernel() {
    // Slots enough, but the calls in flight may hold 16 MiB together: the stuck call's cap.
    a_call_gives_up_on_what_a_plugin_stuck_in_the_kernel_holds(
        "instance-pool = 8\nplugin-memory-mb = 16",
        "its memory cap of 16 MiB did not fit",
    );
}

/// The check opens a FIFO in its granted folder that no one writes to: the open waits in the
/// kernel, which nothing in the host can cut short. Its caller is answered at the deadline
/// (PLUGIN_004) and the call abandoned, but the thread keeps what it holds (its slot, its
/// memory) until the open returns. The next call must be told so (QUEUE_001, saying `held`)
/// after its own deadline, not wait for ever; once a writer comes and goes, it runs again.
fn a_call_gives_up_on_what_a_plugin_stuck_in_the_kernel_holds(limits: &str, held: &str) {
    // Each test of its own folder: they run at once.
    let data = crate::harness::scratch_root().join(format!(
        "agentrt-fifo-data-{}-{}",
        std::process::id(),
        limits.len()
    ));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("mkdir");
    let fifo = data.join("never-written");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let manifest = "name = \"sleep-check\"\nversion = \"0.1.0\"\nworld = \"quality-check\"\n\
         [permissions]\nmemory-mb = 16\ntimeout-ms = 1000\nenv = [\"SLEEP_FILE\"]\n\
         folders = [{ path = \"/data\", access = \"read-only\" }]\n";
    let dir = plugin_folder(
        &format!("kernel-{}", limits.len()),
        "sleep-check",
        "sleep-check",
        Some(manifest),
    );
    crate::harness::add_test_plugin(&dir, "echo-check");
    let server = limited_server(
        &dir,
        limits,
        &format!(
            "[grants.sleep-check]\nenv = [\"SLEEP_FILE\"]\n\
             folders = [{{ path = \"/data\", host = {:?}, access = \"read-only\" }}]\n",
            data.to_str().expect("utf-8 path")
        ),
        &[("SLEEP_FILE", "/data/never-written")],
    );
    let stuck = check_on(&server, "sleep-check");
    assert_eq!(stuck["error"]["code"], "PLUGIN_004", "{stuck}");
    let next = check_on(&server, "echo-check");
    assert_eq!(next["error"]["code"], "QUEUE_001", "{next}");
    assert!(
        next["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(held)),
        "{next}"
    );
    // A writer that comes and goes ends the plugin's open and read (end of file). Opened
    // without blocking, so the test fails rather than hangs if no reader is waiting.
    let writer = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
    };
    drop(writer.expect("the plugin is not waiting on the FIFO"));
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let next = check_on(&server, "echo-check");
        if next["status"] == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the slot never came back: {next}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&data);
}

/// An error handler that answers `retry` to a failed check gets the check run again (up to two
/// more times); a retry past them skips the check: before, a check was never run again and a
/// `retry` for it ended the whole run.
#[test]
fn a_check_the_error_handler_retries_runs_again() {
    let dir = plugin_folder("check-retry", "retry-handler", "retry-handler", None);
    crate::harness::add_test_plugin(&dir, "hostcall-trap-check");
    let server = Server::start(&["--plugins", dir.to_str().expect("utf-8 path")]);
    let (status, body) = server.post(
        "/check",
        &json!({"code": "x = 1\n", "checks": ["hostcall-trap-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    let runs: Vec<&serde_json::Value> = body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s["plugin"] == "hostcall-trap-check")
        .collect();
    assert_eq!(runs.len(), 3, "the check and two retries: {body}");
    assert!(
        runs.iter().all(|s| s["error"]["code"] == "PLUGIN_003"),
        "{body}"
    );
    // Out of retries, the pipeline goes on without it.
    assert_eq!(body["checks"][0]["status"], "skipped", "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reviewer that keeps failing, with a handler that keeps asking for a retry, ends the run
/// without a review once the retries are spent: the code, its tests and their results are
/// answered, not thrown away with a failed run.
#[test]
fn a_review_retried_past_the_budget_completes_the_run_without_a_review() {
    let dir = plugin_folder("review-retry", "retry-handler", "retry-handler", None);
    for name in ["scripted-generator", "trap-reviewer"] {
        crate::harness::add_test_plugin(&dir, name);
    }
    let server = Server::start(&["--plugins", dir.to_str().expect("utf-8 path")]);
    let (status, body) = server.post(
        "/pipeline",
        &json!({"task_description": "Write add(a, b)", "max_retries": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["code"].as_str().is_some_and(|c| c.contains("def add")),
        "{body}"
    );
    assert_eq!(body["status"], "completed", "{body}");
    assert!(body["test_results"]["results"].is_array(), "{body}");
    assert!(body.get("review").is_none(), "{body}");
    let reviews = body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter(|s| s["plugin"] == "trap-reviewer")
        .count();
    assert_eq!(
        reviews, 1,
        "no retries were left for a second review: {body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host resources a plugin creates (here `wasi:http` header maps, 8 KiB each) live in the
/// host's memory, outside the plugin's memory cap: a plugin that keeps making them is stopped
/// at a bounded number, long before its deadline, instead of growing the server for as long
/// as it runs.
#[test]
fn a_plugin_cannot_make_the_host_hold_unbounded_resources() {
    let dir = plugin_folder("header-hog", "header-hog-check", "header-hog-check", None);
    let server = Server::start(&["--plugins", dir.to_str().expect("utf-8 path")]);
    let before = server.resident_bytes();
    let (status, body) = server.post(
        "/check",
        &json!({"code": "x = 1\n", "checks": ["header-hog-check"]}),
    );
    assert_eq!(status, 200, "{body}");
    let grown = server.resident_bytes().saturating_sub(before);
    println!(
        "the server grew by {} MiB: {}",
        grown >> 20,
        body["checks"][0]
    );
    let code = body["checks"][0]["error"]["code"]
        .as_str()
        .unwrap_or_default();
    assert!(
        ["PLUGIN_003", "HOG_001"].contains(&code),
        "stopped by the host, not by its deadline: {body}"
    );
    assert!(grown < 128 << 20, "the server grew by {} MiB", grown >> 20);
    let _ = std::fs::remove_dir_all(&dir);
}
