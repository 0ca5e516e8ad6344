//! API keys and scopes on a live server: 401 without a known key (naming the Bearer scheme),
//! 403 with a user key on an admin route, health probes open, both header forms accepted, the
//! scheme in any case, and either header holding the key when both come.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Server, error_code};

const USER: &str = "user-key-0123456789abcdef";
const ADMIN: &str = "admin-key-0123456789abcdef";

#[test]
fn keys_and_scopes_guard_the_routes() {
    let keys = format!("user:{USER},admin:{ADMIN}");
    let server = Server::start_with_env(&[], &[("AGENTRT_API_KEYS", &keys)]);
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let bearer = |k: &str| format!("Bearer {k}");

    for path in ["/health", "/health/live", "/health/ready"] {
        let (status, body) = server.request("GET", path, &[], None);
        assert_eq!(status, 200, "{path} is open: {body}");
    }
    let (_, ready) = server.request("GET", "/health/ready", &[], None);
    assert_eq!(ready["status"], "ready", "{ready}");
    // The console's page and files and the API description are open; what the console shows
    // comes from routes that are not.
    for path in [
        "/",
        "/console/console.js",
        "/console/console.css",
        "/openapi.json",
    ] {
        let (status, _, text) = server.exchange("GET", path, &[], None);
        assert_eq!(status, 200, "{path} is open: {text}");
    }
    let (status, body) = server.request("GET", "/v1/pipeline/runs", &[], None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "AUTH_001"),
        "{body}"
    );

    let (status, body) = server.request("POST", "/v1/chat/completions", &[], Some(&chat));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "AUTH_001"),
        "{body}"
    );
    let wrong = bearer("user-key-0123456789abcdeX");
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", &wrong)],
        Some(&chat),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (401, "AUTH_001"),
        "{body}"
    );

    let user = bearer(USER);
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", &user)],
        Some(&chat),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        &[("x-api-key", USER)],
        Some(&chat),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.request("GET", "/models", &[("authorization", &user)], None);
    assert_eq!(status, 200, "{body}");
    // A user key sees the model file's name; an admin key sees where it is.
    let path = |body: &serde_json::Value| body["models"][0]["path"].as_str().map(str::to_owned);
    let shown = path(&body).expect("a path");
    assert!(!shown.contains('/') && shown.ends_with(".gguf"), "{body}");
    let (status, body) = server.request("GET", "/models", &[("x-api-key", ADMIN)], None);
    assert_eq!(status, 200, "{body}");
    let full = path(&body).expect("a path");
    assert!(full.starts_with('/') && full.ends_with(&shown), "{body}");

    let (status, body) = server.request("GET", "/stats", &[("authorization", &user)], None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "AUTH_002"),
        "{body}"
    );
    let (status, body) = server.request("GET", "/plugins", &[("x-api-key", USER)], None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (403, "AUTH_002"),
        "{body}"
    );
    let admin = bearer(ADMIN);
    let (status, body) = server.request("GET", "/stats", &[("authorization", &admin)], None);
    assert_eq!(status, 200, "{body}");
    // /stats counts the routes that count their own requests: a refused key on /stats or
    // /plugins is not a failure of an endpoint whose successes are never counted.
    assert!(body["endpoints"].get("/stats").is_none(), "{body}");
    assert!(body["endpoints"].get("/plugins").is_none(), "{body}");
    // Listing runs is not a counted route either; the completions count both kinds.
    assert!(
        body["endpoints"].get("/v1/pipeline/runs").is_none(),
        "{body}"
    );
    let chat_counts = &body["endpoints"]["/v1/chat/completions"];
    assert_eq!(
        (&chat_counts["requests"], &chat_counts["errors"]["AUTH_001"]),
        (&serde_json::json!(4), &serde_json::json!(2)),
        "{body}"
    );
    let (status, body) = server.request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", &admin)],
        Some(&chat),
    );
    assert_eq!(status, 200, "an admin key also reaches user routes: {body}");

    // The scheme is case-insensitive (RFC 9110); with both headers, either may hold the key
    // (a client or proxy may add a stale one).
    let stale = "user-key-0123456789abcdeX";
    let presented = [
        vec![("authorization", format!("bearer {USER}"))],
        vec![("authorization", format!("BEARER {USER}"))],
        vec![
            ("authorization", bearer(stale)),
            ("x-api-key", USER.to_string()),
        ],
        vec![
            ("authorization", bearer(USER)),
            ("x-api-key", stale.to_string()),
        ],
    ];
    for headers in &presented {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = server.request("GET", "/models", &headers, None);
        assert_eq!(status, 200, "{headers:?}: {body}");
    }
    // Two valid keys: the wider one counts, whichever header holds it.
    let (status, body) = server.request(
        "GET",
        "/stats",
        &[("authorization", &bearer(USER)), ("x-api-key", ADMIN)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    // A 401 names the scheme it wants, in agentrt's error shape and in OpenAI's.
    for path in ["/models", "/v1/models"] {
        let (status, headers, text) = server.exchange("GET", path, &[], None);
        assert_eq!(status, 401, "{path}: {text}");
        let challenge = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
            .map(|(_, v)| v.as_str());
        assert_eq!(challenge, Some("Bearer"), "{path}: {headers:?}");
    }
}

/// Each key has its own budget of requests per minute; over it, 429 AUTH_003 with
/// Retry-After; the health probes are not counted.
#[test]
fn each_key_is_rate_limited_on_its_own() {
    let keys = format!("user:{USER},admin:{ADMIN}");
    let server = Server::start_with_env(
        &[],
        &[("AGENTRT_API_KEYS", &keys), ("AGENTRT_RATE_LIMIT", "3")],
    );
    for _ in 0..5 {
        let (status, _) = server.request("GET", "/health/ready", &[], None);
        assert_eq!(status, 200);
    }
    for i in 0..3 {
        let (status, body) = server.request("GET", "/models", &[("x-api-key", USER)], None);
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, body) = server.request("GET", "/models", &[("x-api-key", USER)], None);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (429, "AUTH_003"),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry in ")),
        "{body}"
    );
    let (status, body) = server.request("GET", "/models", &[("x-api-key", ADMIN)], None);
    assert_eq!(status, 200, "another key has its own budget: {body}");
}

#[test]
fn a_malformed_key_file_stops_the_server_with_a_clear_error() {
    let dir = crate::harness::scratch_root().join(format!("agentrt-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys");
    std::fs::write(&file, "root some-key-0123456789abcdef\n").expect("write");
    let (ok, _out, err) = crate::harness::run_cli(&[
        "serve",
        "--api-keys",
        file.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok, "serve must refuse the key file");
    assert!(err.contains("scope must be user or admin"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Keys rotate without a restart: a changed keys file is read again (a removed key stops
/// working, a new one starts); a file with a bad line is refused and the keys in use are kept;
/// SIGHUP reads the file at once and does not end the server.
#[test]
fn keys_rotate_without_a_restart() {
    const OLD: &str = "rotation-key-old-0123456789";
    const NEW: &str = "rotation-key-new-0123456789";
    let dir = crate::harness::scratch_root().join(format!("agentrt-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("keys");
    let log = dir.join("server.log");
    std::fs::write(&file, format!("user {OLD}\n")).expect("write");
    let server = Server::start_logging(
        &["--api-keys", file.to_str().expect("utf-8")],
        &[],
        Some(&log),
    );
    let status_with = |key: &str| {
        server
            .request("GET", "/models", &[("x-api-key", key)], None)
            .0
    };
    assert_eq!(status_with(OLD), 200);
    assert_eq!(status_with(NEW), 401);

    std::fs::write(&file, format!("# rotated\nuser {NEW}\n")).expect("write");
    crate::harness::wait_until("the new key to be read", Duration::from_secs(20), || {
        status_with(NEW) == 200
    });
    assert_eq!(status_with(OLD), 401, "a removed key still works");

    let logged = |words: &[&str]| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().any(|l| words.iter().all(|w| l.contains(w)))
    };
    std::fs::write(&file, format!("user {OLD}\nuser short\n")).expect("write");
    server.hang_up();
    crate::harness::wait_until(
        "the refused reload in the log",
        Duration::from_secs(20),
        || logged(&["SIGHUP", "API keys not reloaded", "line 2"]),
    );
    assert_eq!(
        status_with(NEW),
        200,
        "a refused file changed the keys in use"
    );
    assert_eq!(status_with(OLD), 401);

    std::fs::write(&file, format!("admin {OLD}\n")).expect("write");
    server.hang_up();
    crate::harness::wait_until(
        "the SIGHUP reload in the log",
        Duration::from_secs(20),
        || logged(&["SIGHUP", "API keys reloaded"]),
    );
    let (status, _) = server.request("GET", "/stats", &[("x-api-key", OLD)], None);
    assert_eq!(status, 200, "the reloaded admin key");
    assert_eq!(status_with(NEW), 401);
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn metrics_need_an_admin_key() {
    let s = Server::start_with_env(
        &[],
        &[(
            "AGENTRT_API_KEYS",
            "user:metricsuserkey01,admin:metricsadminkey1",
        )],
    );
    let (status, _, _) = s.exchange(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer metricsuserkey01")],
        None,
    );
    assert_eq!(status, 403);
    let (status, _, text) = s.exchange(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer metricsadminkey1")],
        None,
    );
    assert_eq!(status, 200);
    assert!(text.contains("agentrt_http_requests_total"), "{text}");
}

/// A run belongs to the key that submitted it: another user key cannot list, read, follow or
/// cancel it (404, as for a run that does not exist); an admin key reaches it.
#[test]
fn a_user_key_reaches_the_runs_it_submitted_only() {
    const OWNER: &str = "runs-owner-key-0123456789";
    const OTHER: &str = "runs-other-key-0123456789";
    const ADMIN: &str = "runs-admin-key-0123456789";
    let keys = format!("user:{OWNER},user:{OTHER},admin:{ADMIN}");
    let s = Server::start_with_env(&[], &[("AGENTRT_API_KEYS", &keys)]);
    let bearer = |k: &str| format!("Bearer {k}");
    let (owner, other, admin) = (bearer(OWNER), bearer(OTHER), bearer(ADMIN));

    let task = json!({"task_description": "Write a function add(a, b)", "max_retries": 0});
    let (status, run) = s.request(
        "POST",
        "/v1/pipeline/runs",
        &[("authorization", &owner)],
        Some(&task),
    );
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    let path = format!("/v1/pipeline/runs/{id}");
    let listed = |key: &str| -> Vec<String> {
        let (status, list) = s.request("GET", "/v1/pipeline/runs", &[("authorization", key)], None);
        assert_eq!(status, 200, "{list}");
        list["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect()
    };

    // Another user's key: the run is nowhere to be seen.
    assert!(!listed(&other).contains(&id));
    for (method, route) in [
        ("GET", path.clone()),
        ("GET", format!("{path}/events")),
        ("DELETE", path.clone()),
    ] {
        let (status, body) = s.request(method, &route, &[("authorization", &other)], None);
        assert_eq!(
            (status, error_code(&body).as_str()),
            (404, "NOT_FOUND"),
            "{method} {route}: {body}"
        );
    }
    // Its own key and an admin's see it.
    assert!(listed(&owner).contains(&id));
    assert!(listed(&admin).contains(&id));
    for key in [&owner, &admin] {
        let (status, body) = s.request("GET", &path, &[("authorization", key)], None);
        assert_eq!(
            (status, body["id"].as_str()),
            (200, Some(id.as_str())),
            "{body}"
        );
        // The other key's DELETE was refused before it could cancel anything.
        assert_ne!(body["state"], "cancelled", "{body}");
    }
    // Its own key may cancel it.
    let (status, body) = s.request("DELETE", &path, &[("authorization", &owner)], None);
    assert!(
        status == 202 || error_code(&body) == "RUN_001",
        "{status} {body}"
    );
}

/// One key's backlog cannot fill the run queue for everyone: once the queue is half full, each
/// key may have its share of it (`AGENTRT_RUN_QUEUE` over the keys, at least the workers)
/// queued or running, and an admin sees whose runs are whose.
#[test]
fn one_key_cannot_fill_the_run_queue() {
    const ALICE: &str = "share-alice-key-0123456789";
    const BOB: &str = "share-bob-key-0123456789";
    const ADMIN: &str = "share-admin-key-0123456789";
    let keys = format!("user:{ALICE},user:{BOB},admin:{ADMIN}");
    // Three keys, four places: half of them free for all, then one each.
    let s = Server::start_with_env(
        &[],
        &[
            ("AGENTRT_API_KEYS", &keys),
            ("AGENTRT_RUN_QUEUE", "4"),
            ("AGENTRT_RUN_WORKERS", "1"),
        ],
    );
    let bearer = |k: &str| format!("Bearer {k}");
    let (alice, bob, admin) = (bearer(ALICE), bearer(BOB), bearer(ADMIN));
    let task = json!({"task_description": "Write a function add(a, b)", "max_retries": 0});
    let submit = |key: &str| {
        s.request(
            "POST",
            "/v1/pipeline/runs",
            &[("authorization", key)],
            Some(&task),
        )
    };
    let (status, first) = submit(&alice);
    assert_eq!(status, 202, "{first}");
    let (status, second) = submit(&alice);
    assert_eq!(status, 202, "the queue was not half full: {second}");
    let (status, refused) = submit(&alice);
    assert_eq!(
        (status, error_code(&refused).as_str()),
        (429, "QUEUE_001"),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("this API key has 2 pipeline runs")),
        "{refused}"
    );
    // Room was left for the others: Bob's run waits behind Alice's second.
    let (status, theirs) = submit(&bob);
    assert_eq!(status, 202, "{theirs}");
    assert_eq!(theirs["queue_position"], 2, "{theirs}");
    assert!(
        first.get("queue_position").is_none(),
        "it had a worker: {first}"
    );
    // Whose is whose, as an admin lists them; each owner sees its own id on its runs.
    let (_, list) = s.request(
        "GET",
        "/v1/pipeline/runs",
        &[("authorization", &admin)],
        None,
    );
    let submitter = |id: &serde_json::Value| {
        list["data"]
            .as_array()
            .expect("data")
            .iter()
            .find(|r| r["id"] == *id)
            .map(|r| r["submitted_by"].clone())
            .expect("listed")
    };
    let (alices, bobs) = (submitter(&first["id"]), submitter(&theirs["id"]));
    assert!(alices.is_string() && bobs.is_string(), "{list}");
    assert_ne!(alices, bobs);
    assert_eq!(first["submitted_by"], alices, "{first}");
    for (run, key) in [(&second, &alice), (&first, &alice), (&theirs, &bob)] {
        let path = format!("/v1/pipeline/runs/{}", run["id"].as_str().expect("id"));
        let _ = s.request("DELETE", &path, &[("authorization", key)], None);
    }
}
