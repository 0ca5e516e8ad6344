//! Plugins that trap, loop forever, or allocate without bound: each call is a clear `PLUGIN_*`
//! error, and the server keeps answering other requests meanwhile and afterwards.

use std::sync::OnceLock;

use serde_json::json;

use crate::harness::{Server, error_code, test_plugin_dir};

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
