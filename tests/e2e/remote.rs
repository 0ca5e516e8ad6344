//! Remote engines: a server whose model entry is another OpenAI-compatible server (here a second
//! agentrt) answers the same as the server that runs the model, streamed or not; its pipeline
//! and plugins work through the remote unchanged; an unreachable remote is MODEL_001 at start.

use serde_json::{Value, json};

use super::harness::{Server, default_server, run_cli_env};

fn chat(s: &Server, stream: bool) -> (u16, String) {
    let (status, _, text) = s.exchange(
        "POST",
        "/v1/chat/completions",
        &[],
        Some(&json!({
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}],
            "max_tokens": 24,
            "temperature": 0,
            "stream": stream,
        })),
    );
    (status, text)
}

/// The text of a streamed answer.
fn streamed_text(body: &str) -> String {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[test]
fn a_remote_model_answers_like_the_server_that_runs_it() {
    let local = default_server();
    let entry = format!("{}/v1", local.base);
    let remote = Server::start(&["--model", &entry]);

    let (status, direct) = chat(local, false);
    assert_eq!(status, 200, "{direct}");
    let (status, relayed) = chat(&remote, false);
    assert_eq!(status, 200, "{relayed}");
    let direct: Value = serde_json::from_str(&direct).expect("json");
    let relayed: Value = serde_json::from_str(&relayed).expect("json");
    assert_eq!(relayed["model"], "smollm2-135m-instruct");
    assert_eq!(
        relayed["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "greedy answers are the same through the remote"
    );
    assert_eq!(relayed["usage"], direct["usage"]);
    let (status, stream) = chat(&remote, true);
    assert_eq!(status, 200, "{stream}");
    assert_eq!(
        Value::String(streamed_text(&stream)),
        direct["choices"][0]["message"]["content"]
    );
    assert!(stream.trim_end().ends_with("data: [DONE]"), "{stream}");
    // The front's metrics cover its remote model as they would a local one: the server's
    // token counts, a time to first text, nothing left waiting or running.
    let (_, _, metrics) = remote.exchange("GET", "/metrics", &[], None);
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{model=\"smollm2-135m-instruct\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} for the remote model"))
    };
    let completion = direct["usage"]["completion_tokens"]
        .as_f64()
        .expect("usage");
    assert_eq!(value("agentrt_generated_tokens_total"), 2.0 * completion);
    assert_eq!(value("agentrt_time_to_first_token_seconds_count"), 2.0);
    assert_eq!(value("agentrt_generations_running"), 0.0);
    assert_eq!(value("agentrt_generations_waiting"), 0.0);

    // The remote's models list and token counts are the served model's.
    let (status, models) = remote.get("/v1/models");
    assert_eq!(status, 200, "{models}");
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct");
    let count = |s: &Server| {
        let (status, body) = s.post("/tokenize", &json!({"prompt": "def add(a, b):"}));
        assert_eq!(status, 200, "{body}");
        body["count"].as_u64().expect("count")
    };
    assert_eq!(count(&remote), count(local));

    // What the remote refuses (here a prompt longer than its context) is this server's
    // answer's status, streamed or not: not an error event inside a 200 stream.
    for stream in [false, true] {
        let (status, _, text) = remote.exchange(
            "POST",
            "/v1/completions",
            &[],
            Some(
                &json!({"model": "smollm2-135m-instruct", "prompt": "hello ".repeat(9000),
                         "max_tokens": 8, "stream": stream}),
            ),
        );
        assert_eq!(status, 400, "stream {stream}: {text}");
        let body: Value = serde_json::from_str(&text).expect("an error body");
        assert_eq!(
            body["error"]["code"], "MODEL_004",
            "stream {stream}: {text}"
        );
        assert_eq!(body["error"]["type"], "invalid_request_error", "{text}");
    }

    // The pipeline's plugins generate through the remote without knowing it.
    let (status, body) = remote.post(
        "/generate",
        &json!({"task_description": "Write a function add(a, b) that returns the sum", "max_retries": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["code"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );
}

#[test]
fn a_deadline_at_the_front_stops_the_generation_at_the_back() {
    // Its own back server: the running-generations gauge must be this test's alone.
    let back = Server::start(&[]);
    let front = Server::start(&["--model", &format!("{}/v1", back.base)]);
    let (status, _, text) = front.exchange(
        "POST",
        "/v1/completions",
        &[("X-Request-Timeout", "1")],
        Some(
            &json!({"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                     "max_tokens": 3000, "temperature": 1.0, "seed": 3}),
        ),
    );
    assert_eq!(status, 504, "{text}");
    // The front closed its stream; the back notices at its next token and frees the slot.
    let idle = "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 0";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = back.exchange("GET", "/metrics", &[], None).2;
        if metrics.lines().any(|l| l == idle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the back server still generates: {metrics}");
}

#[test]
fn an_unreachable_remote_is_model_001_at_start() {
    let (ok, _, err) = run_cli_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--model",
            "http://127.0.0.1:9/v1",
        ],
        &[],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("MODEL_001") && err.contains("cannot reach"),
        "{err}"
    );
}

/// Health asks remote models' servers (an answer serves for 2 s): one that went away makes
/// the front degraded, and not ready when it was the only model.
#[test]
fn health_reports_a_remote_model_whose_server_went_away() {
    let back = Server::start(&[]);
    let front = Server::start(&["--model", &format!("{}/v1", back.base)]);
    let (status, health) = front.get("/health");
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("healthy")),
        "{health}"
    );
    assert_eq!(health["models"][0]["reachable"], true, "{health}");
    back.kill();
    let mut health = serde_json::Value::Null;
    for _ in 0..100 {
        health = front.get("/health").1;
        if health["status"] == "degraded" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["model_loaded"], false, "{health}");
    assert_eq!(health["models"][0]["reachable"], false, "{health}");
    assert!(health["models"][0]["error"].is_string(), "{health}");
    let (status, ready) = front.get("/health/ready");
    assert_eq!(status, 503, "{ready}");
}
