//! The OpenAI-compatible routes against a live server: shapes of non-streaming answers, the
//! event stream (same text as the non-streaming answer, finish reason, usage chunk, [DONE]),
//! OpenAI's error object with agentrt's codes.

use serde_json::{Value, json};

use crate::harness::default_server;

/// The `data:` payloads of an event stream, in order.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn openai_error(body: &Value) -> String {
    let err = &body["error"];
    assert!(
        err["message"].is_string() && err["type"].is_string() && err.get("param").is_some(),
        "not OpenAI's error object: {body}"
    );
    err["code"].as_str().unwrap_or_default().to_string()
}

#[test]
fn models_are_listed() {
    let server = default_server();
    let resp = ureq::get(&server.url("/v1/models"))
        .call()
        .expect("GET /v1/models");
    let body: Value =
        serde_json::from_str(&resp.into_body().read_to_string().expect("body")).expect("json");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "model");
    assert!(body["data"][0]["id"].is_string(), "{body}");
}

#[test]
fn chat_completion_and_its_stream_say_the_same() {
    let server = default_server();
    let request = json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "system", "content": "You write Python."},
                     {"role": "user", "content": [{"type": "text", "text": "Write a function that adds two numbers."}]}],
        "max_tokens": 12,
        "temperature": 0,
    });
    let (status, body) = server.post("/v1/chat/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let text = choice["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    assert!(!text.is_empty());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap_or_default()));
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap_or(0)
                + usage["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
    assert!(
        usage["completion_tokens"]
            .as_u64()
            .is_some_and(|n| (1..=12).contains(&n))
    );

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, raw) = server.post_text("/v1/chat/completions", &streamed);
    assert_eq!(status, 200, "{raw}");
    let data = events(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{raw}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text, "the stream carries the same text");
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], *usage);
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], choice["finish_reason"]);
}

#[test]
fn completions_follow_stop_sequences_and_stream() {
    let server = default_server();
    let request = json!({
        "prompt": "def add(a, b):\n",
        "max_tokens": 20,
        "temperature": 0,
        "stop": ["\n\n"],
    });
    let (status, body) = server.post("/v1/completions", &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let text = body["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(!text.contains("\n\n"), "{text:?}");
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (status, raw) = server.post_text("/v1/completions", &streamed);
    assert_eq!(status, 200, "{raw}");
    let data = events(&raw);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let joined: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).expect("json"))
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, text);
}

#[test]
fn invalid_requests_get_openai_errors_with_agentrt_codes() {
    let server = default_server();
    let cases = [
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "VAL_002",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
            400,
            "VAL_002",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "VAL_002",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}),
            404,
            "MODEL_001",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            "VAL_002",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": 2.5}),
            400,
            "VAL_002",
        ),
        // SmolLM2 has no fill-in-the-middle tokens.
        (
            "/v1/completions",
            json!({"prompt": "def f(", "suffix": "\n    return x\n"}),
            400,
            "VAL_002",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            400,
            "VAL_002",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) = server.post(path, &body);
        assert_eq!(status, want_status, "{path} {body}: {answer}");
        assert_eq!(openai_error(&answer), want_code, "{path} {body}: {answer}");
    }
}

/// The official `openai` Python client (scripts/test.sh installs it, pinned) against a live
/// server: chat, streamed chat with usage, completions, and its NotFoundError.
#[test]
fn the_official_openai_client_works_against_the_server() {
    let python = agentrt::paths::home().join("venv-openai/bin/python");
    if !python.exists() {
        assert!(
            std::env::var_os("AGENTRT_REQUIRE_OPENAI").is_none(),
            "AGENTRT_REQUIRE_OPENAI is set but {} is missing",
            python.display()
        );
        eprintln!(
            "skipped: the openai client is not installed ({})",
            python.display()
        );
        return;
    }
    let server = default_server();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/openai_client.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&server.base)
        .output()
        .expect("run the openai client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("ok"),
        "openai client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A streaming client that hangs up stops its generation: the next request on the model
/// (which waits for the model) gets its answer, and the stream is counted as cancelled
/// (COMM_004) in `/stats`, not as a 4000-token success.
#[test]
fn a_client_that_disconnects_stops_its_generation() {
    use std::io::{BufRead, BufReader, Write};
    let server = crate::harness::Server::start(&[]);
    let body = json!({
        "prompt": "1, 2, 3, 4, 5,",
        "max_tokens": 4000,
        "temperature": 0,
        "stream": true,
    })
    .to_string();
    let host = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&host).expect("connect");
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut events = 0;
    let mut line = String::new();
    while events < 3 {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("read") > 0,
            "stream ended early"
        );
        if line.starts_with("data: ") {
            events += 1;
        }
    }
    stream.shutdown(std::net::Shutdown::Both).expect("hang up");
    drop(reader);
    drop(stream);

    let (status, answer) = server.post("/v1/completions", &json!({"prompt": "x", "max_tokens": 1}));
    assert_eq!(status, 200, "{answer}");
    // The stream's record is written as its generation returns; give it a few polls.
    let mut counter = Value::Null;
    for _ in 0..50 {
        let resp = ureq::get(&server.url("/stats")).call().expect("stats");
        let stats: Value =
            serde_json::from_str(&resp.into_body().read_to_string().expect("body")).expect("json");
        counter = stats["endpoints"]["/v1/completions"].clone();
        if counter["requests"] == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(counter["requests"], 2, "{counter}");
    assert_eq!(
        counter["errors"]["COMM_004"], 1,
        "the stream was not cancelled: {counter}"
    );
}

/// Errors a layer answers before any handler (a deadline, a wrong method) keep OpenAI's shape
/// on the OpenAI routes, and a request cut off at its deadline is counted in /stats.
#[test]
fn errors_from_the_server_layers_take_openai_shape_and_are_counted() {
    let server = crate::harness::Server::start(&[]);
    let (status, _, text) = server.exchange(
        "POST",
        "/v1/chat/completions",
        &[("X-Request-Timeout", "0.3")],
        Some(
            &json!({"messages": [{"role": "user", "content": "Write a long essay"}],
                     "max_tokens": 400}),
        ),
    );
    assert_eq!(status, 504, "{text}");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(openai_error(&body), "COMM_003", "{body}");
    let (_, stats) = server.get("/stats");
    let chat = &stats["endpoints"]["/v1/chat/completions"];
    assert!(
        chat["errors"]["COMM_003"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );

    for path in ["/v1/chat/completions", "/tokenize"] {
        let (status, _, text) = server.exchange("GET", path, &[], None);
        assert_eq!(status, 405, "{path}: {text}");
        openai_error(&serde_json::from_str(&text).expect("json"));
    }

    let (status, model) = server.get("/v1/models/smollm2-135m-instruct");
    assert_eq!(
        (status, model["object"].as_str()),
        (200, Some("model")),
        "{model}"
    );
    let (status, body) = server.get("/v1/models/gpt-9");
    assert_eq!(
        (status, openai_error(&body).as_str()),
        (404, "MODEL_001"),
        "{body}"
    );
}

/// /tokenize counts a chat the way the model will see it: the template's tokens included.
#[test]
fn tokenize_counts_a_prompt_or_a_whole_chat() {
    let server = default_server();
    let (status, plain) = server.post("/tokenize", &json!({"prompt": "hello there"}));
    assert_eq!(status, 200, "{plain}");
    let (status, chat) = server.post(
        "/tokenize",
        &json!({"messages": [{"role": "user", "content": "hello there"}]}),
    );
    assert_eq!(status, 200, "{chat}");
    let (plain, chat) = (
        plain["count"].as_u64().expect("count"),
        chat["count"].as_u64().expect("count"),
    );
    assert!(
        chat > plain,
        "the chat's {chat} tokens include the template's: {plain}"
    );
    let (status, body) = server.post("/tokenize", &json!({}));
    assert_eq!(
        (status, openai_error(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
}
