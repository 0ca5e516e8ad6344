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
    let back_base = back.base.clone();
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
    // Neither the open health report nor a client's error names where the remote is.
    let address = back_base.trim_start_matches("http://");
    assert!(!health.to_string().contains(address), "{health}");
    let (status, text) = chat(&front, false);
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("MODEL_001") && !text.contains(address),
        "{text}"
    );
    let (status, ready) = front.get("/health/ready");
    assert_eq!(status, 503, "{ready}");
}

/// An OpenAI-compatible server that lists one model and never answers a generation, as one
/// reading a long prompt: it holds each generation's connection until the flag is set.
fn silent_remote(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut writer = conn;
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line);
                    }
                    let length = head
                        .iter()
                        .find_map(|h| {
                            let (name, value) = h.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if head[0].starts_with("GET") {
                        let models =
                            r#"{"object":"list","data":[{"id":"silent-model","object":"model"}]}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{models}",
                            models.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                        continue;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    return;
                }
            });
        }
    });
    base
}

/// Whether `server` has a generation of `model` waiting or running.
fn generating(server: &Server, model: &str) -> bool {
    let (_, _, metrics) = server.exchange("GET", "/metrics", &[], None);
    metrics.lines().any(|l| {
        (l.starts_with("agentrt_generations_waiting{")
            || l.starts_with("agentrt_generations_running{"))
            && l.contains(&format!("model=\"{model}\""))
            && !l.ends_with(" 0")
    })
}

/// A streamed answer from a remote that has not sent its head yet is given up when the
/// request's deadline passes or its client hangs up: the generation ends then, not when the
/// remote's stall limit (five minutes) runs out.
#[test]
fn a_stream_waiting_on_a_silent_remote_ends_at_the_deadline_or_when_its_client_leaves() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = silent_remote(stop.clone());
    let front = Server::start(&["--model", &base]);
    let body = json!({"model": "silent-model", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 8, "stream": true});
    let gone = |what: &str| {
        let ended = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            !generating(&front, "silent-model")
        });
        assert!(ended, "the generation goes on after {what}");
    };

    let (status, _, text) = front.exchange(
        "POST",
        "/v1/chat/completions",
        &[("X-Request-Timeout", "1")],
        Some(&body),
    );
    assert_eq!(status, 504, "{text}");
    gone("its deadline");

    // A client that sends its request and hangs up before any answer.
    let address = front.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&address).expect("connect");
    let payload = body.to_string();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
            payload.len()
        )
        .as_bytes(),
    )
    .expect("send");
    let started = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(25));
        generating(&front, "silent-model")
    });
    assert!(started, "the generation never started");
    drop(conn);
    gone("its client left");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `/tokenize` on a remote model asks the remote to count: that takes one of the places of
/// `AGENTRT_SYNC_REQUESTS` (a second request while it is out is `429 QUEUE_001`) and ends at
/// the request's deadline, which gives the place back.
#[test]
fn tokenize_on_a_silent_remote_holds_a_place_until_its_deadline_only() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = silent_remote(stop.clone());
    let front = Server::start_with_env(&["--model", &base], &[("AGENTRT_SYNC_REQUESTS", "1")]);
    let ask = json!({"prompt": "def add(a, b):"});
    let count = |front: &Server| {
        let (status, _, text) = front.exchange(
            "POST",
            "/tokenize",
            &[("X-Request-Timeout", "2")],
            Some(&ask),
        );
        (status, text)
    };
    std::thread::scope(|scope| {
        let first = scope.spawn(|| count(&front));
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (status, text) = count(&front);
        assert_eq!(status, 429, "{text}");
        assert!(text.contains("QUEUE_001"), "{text}");
        let (status, text) = first.join().expect("first");
        assert_eq!(status, 504, "{text}");
    });
    // The count stopped at the deadline: its place is free for the next request.
    let freed = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        count(&front).0 == 504
    });
    assert!(freed, "the place stayed taken after the deadline");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}
