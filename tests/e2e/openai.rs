//! The OpenAI-compatible routes against a live server: shapes of non-streaming answers, the
//! event stream (same text as the non-streaming answer, finish reason, usage chunk, [DONE]),
//! OpenAI's error object with agentrt's codes and the field at fault, fields that would change
//! the answer refused rather than ignored, a prompt past the context as OpenAI words it.

use serde_json::{Value, json};

use crate::harness::{Server, default_server};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
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
    let (status, headers, raw) =
        server.exchange("POST", "/v1/chat/completions", &[], Some(&streamed));
    assert_eq!(status, 200, "{raw}");
    // nginx would otherwise hold the tokens back until its buffer fills.
    assert_eq!(
        header(&headers, "x-accel-buffering"),
        Some("no"),
        "{headers:?}"
    );
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
    // With include_usage, every chunk before the last carries `"usage": null`.
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk.get("usage"), Some(&Value::Null), "{chunk}");
    }
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
fn invalid_requests_get_openai_errors_with_agentrt_codes_and_the_field() {
    let server = default_server();
    let hi = json!([{"role": "user", "content": "hi"}]);
    let with = |extra: Value| {
        let mut body = json!({"messages": hi.clone(), "max_tokens": 1});
        for (k, v) in extra.as_object().expect("fields") {
            body[k] = v.clone();
        }
        body
    };
    let tool = json!([{"type": "function",
                       "function": {"name": "add", "parameters": {"type": "object"}}}]);
    let call = json!([{"id": "call_1", "type": "function",
                       "function": {"name": "add", "arguments": "{}"}}]);
    let cases = [
        (
            CHAT,
            json!({"messages": []}),
            400,
            "VAL_002",
            Some("messages"),
        ),
        (CHAT, with(json!({"n": 2})), 400, "VAL_002", Some("n")),
        (
            CHAT,
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "VAL_002",
            Some("messages[0].role"),
        ),
        (
            CHAT,
            with(json!({"model": "gpt-9"})),
            404,
            "MODEL_001",
            Some("model"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "", "max_tokens": 3}),
            400,
            "VAL_002",
            Some("prompt"),
        ),
        (
            CHAT,
            with(json!({"temperature": -1})),
            400,
            "VAL_002",
            Some("temperature"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "hi", "temperature": 2.5}),
            400,
            "VAL_002",
            Some("temperature"),
        ),
        (
            CHAT,
            with(json!({"max_completion_tokens": 0})),
            400,
            "VAL_002",
            Some("max_completion_tokens"),
        ),
        (
            CHAT,
            with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            "VAL_002",
            Some("stop"),
        ),
        // SmolLM2 has no fill-in-the-middle tokens.
        (
            COMPLETIONS,
            json!({"prompt": "def f(", "suffix": "\n    return x\n"}),
            400,
            "VAL_002",
            Some("suffix"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": ["a", "b"]}),
            400,
            "VAL_002",
            Some("prompt"),
        ),
        // Fields that change what the answer means are refused, not ignored.
        (
            CHAT,
            with(json!({"tools": tool})),
            400,
            "VAL_002",
            Some("tools"),
        ),
        (
            CHAT,
            with(json!({"tool_choice": "required"})),
            400,
            "VAL_002",
            Some("tool_choice"),
        ),
        (
            CHAT,
            with(json!({"functions": [{"name": "add"}]})),
            400,
            "VAL_002",
            Some("functions"),
        ),
        (
            CHAT,
            with(json!({"response_format": {"type": "json_object"}})),
            400,
            "VAL_002",
            Some("response_format"),
        ),
        (
            CHAT,
            with(json!({"logprobs": true})),
            400,
            "VAL_002",
            Some("logprobs"),
        ),
        (
            CHAT,
            with(json!({"top_logprobs": 3})),
            400,
            "VAL_002",
            Some("top_logprobs"),
        ),
        (
            CHAT,
            with(json!({"logit_bias": {"42": -100}})),
            400,
            "VAL_002",
            Some("logit_bias"),
        ),
        (
            CHAT,
            with(json!({"frequency_penalty": 0.5})),
            400,
            "VAL_002",
            Some("frequency_penalty"),
        ),
        (
            CHAT,
            with(json!({"presence_penalty": -1})),
            400,
            "VAL_002",
            Some("presence_penalty"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "hi", "logprobs": 1}),
            400,
            "VAL_002",
            Some("logprobs"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "hi", "echo": true}),
            400,
            "VAL_002",
            Some("echo"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "hi", "best_of": 2}),
            400,
            "VAL_002",
            Some("best_of"),
        ),
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ]}]}),
            400,
            "VAL_002",
            Some("messages[0].content[1].type"),
        ),
        (
            CHAT,
            json!({"messages": [
                {"role": "user", "content": "Add 2 and 3."},
                {"role": "assistant", "content": null, "tool_calls": call},
                {"role": "tool", "tool_call_id": "call_1", "content": "5"},
            ]}),
            400,
            "VAL_002",
            Some("messages[1].tool_calls"),
        ),
        (
            CHAT,
            json!({"messages": [
                {"role": "user", "content": "Add 2 and 3."},
                {"role": "tool", "tool_call_id": "call_1", "content": "5"},
            ]}),
            400,
            "VAL_002",
            Some("messages[1].role"),
        ),
        // A field OpenAI's API does not have is refused as OpenAI refuses it, not ignored.
        (
            CHAT,
            with(json!({"mirostat": 2})),
            400,
            "VAL_002",
            Some("mirostat"),
        ),
        (
            CHAT,
            with(json!({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}})),
            400,
            "VAL_002",
            Some("audio"),
        ),
        // A misnamed content field must not become an empty turn; names would be dropped.
        (
            CHAT,
            json!({"messages": [{"role": "user", "text": "hi"}]}),
            400,
            "VAL_002",
            Some("messages[0].content"),
        ),
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": "hi", "name": "alice"}]}),
            400,
            "VAL_002",
            Some("messages[0].name"),
        ),
        (
            COMPLETIONS,
            json!({"prompt": [1, 2, 3]}),
            400,
            "VAL_002",
            Some("prompt"),
        ),
        (
            CHAT,
            with(json!({"top_k": -5})),
            400,
            "VAL_002",
            Some("top_k"),
        ),
    ];
    for (path, body, want_status, want_code, want_param) in cases {
        let (status, headers, text) = server.exchange("POST", path, &[], Some(&body));
        let answer: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(status, want_status, "{path} {body}: {answer}");
        assert_eq!(openai_error(&answer), want_code, "{path} {body}: {answer}");
        assert_eq!(
            answer["error"]["param"].as_str(),
            want_param,
            "{path} {body}: {answer}"
        );
        // The official clients would send a client error again, unchanged, without this.
        assert_eq!(
            header(&headers, "x-should-retry"),
            Some("false"),
            "{path} {body}: {headers:?}"
        );
    }
}

/// vLLM's `top_k` and `repetition_penalty` (the SDKs' `extra_body`) are applied: `top_k: 1`
/// at temperature 1 answers what greedy decoding answers, whatever the seed.
#[test]
fn vllm_sampling_extensions_are_applied() {
    let server = default_server();
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "Write a short poem about the sea."}],
                              "max_tokens": 24});
        for (k, v) in extra.as_object().expect("fields") {
            body[k] = v.clone();
        }
        let (status, answer) = server.post(CHAT, &body);
        assert_eq!(status, 200, "{body}: {answer}");
        answer["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .to_string()
    };
    let greedy = ask(json!({"temperature": 0}));
    for seed in [3, 4] {
        assert_eq!(
            ask(json!({"temperature": 1, "seed": seed, "top_k": 1})),
            greedy,
            "seed {seed}"
        );
    }
    let penalized = ask(json!({"temperature": 0, "repetition_penalty": 1.8}));
    assert_ne!(penalized, greedy, "the repetition penalty changed nothing");
}

/// What SDKs send by default (empty tool lists, zero penalties, `logprobs: false`, a text
/// response format, `user`, ...) changes nothing and is accepted.
#[test]
fn the_neutral_values_sdks_send_are_accepted() {
    let server = default_server();
    let tool = json!([{"type": "function",
                       "function": {"name": "add", "parameters": {"type": "object"}}}]);
    let requests = [
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                   "tools": [], "tool_choice": "auto", "functions": [], "frequency_penalty": 0,
                   "presence_penalty": 0.0, "user": "u-1", "logprobs": false,
                   "top_logprobs": 0, "response_format": {"type": "text"}, "logit_bias": {},
                   "parallel_tool_calls": true, "stream_options": {"include_usage": false}}),
        ),
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "Hello.", "tool_calls": []},
                                {"role": "user", "content": [{"type": "text", "text": "Again"}]}],
                   "max_tokens": 1, "tools": tool, "tool_choice": "none"}),
        ),
        (
            COMPLETIONS,
            json!({"prompt": "x", "max_tokens": 1, "echo": false, "best_of": 1,
                   "logprobs": null, "frequency_penalty": 0, "logit_bias": {}, "user": "u-1"}),
        ),
    ];
    for (path, body) in requests {
        let (status, answer) = server.post(path, &body);
        assert_eq!(status, 200, "{path} {body}: {answer}");
    }
}

/// A prompt longer than the context is OpenAI's 400 (the SDKs raise BadRequestError only for
/// a 400), in OpenAI's words with the context length, naming the prompt's field; the code
/// stays agentrt's.
#[test]
fn a_prompt_past_the_context_is_a_400_in_openais_words() {
    let server = default_server();
    let (_, models) = server.get("/v1/models");
    let context = models["data"][0]["max_model_len"]
        .as_u64()
        .expect("max_model_len");
    let long = prompt_longer_than(server, context);
    let cases = [
        (
            CHAT,
            json!({"messages": [{"role": "user", "content": long}], "max_tokens": 8}),
            "messages",
        ),
        (
            COMPLETIONS,
            json!({"prompt": long, "max_tokens": 8}),
            "prompt",
        ),
        // Without max_tokens the answer is cut to the room left, and there is none.
        (COMPLETIONS, json!({"prompt": long}), "prompt"),
    ];
    for (path, body, param) in cases {
        let (status, answer) = server.post(path, &body);
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(openai_error(&answer), "MODEL_004", "{path}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!(
                "This model's maximum context length is {context} tokens."
            )),
            "{path}: {message}"
        );
    }
}

/// A prompt of more than `tokens` tokens, as /tokenize counts them.
fn prompt_longer_than(server: &Server, tokens: u64) -> String {
    let mut words = tokens as usize + 16;
    loop {
        let prompt = "hello ".repeat(words);
        let (status, counted) = server.post("/tokenize", &json!({"prompt": prompt}));
        assert_eq!(status, 200, "{}", counted["error"]);
        if counted["count"].as_u64().is_some_and(|n| n > tokens) {
            return prompt;
        }
        words *= 2;
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
/// on the OpenAI routes, with the headers they carry (`Allow`), and a request cut off at its
/// deadline is counted in /stats and tells the official clients not to run it again. Every
/// `/v1/` path but the pipeline runs is OpenAI's, routes this server lacks included.
#[test]
fn errors_from_the_server_layers_take_openai_shape_and_are_counted() {
    let server = crate::harness::Server::start(&[]);
    let (status, headers, text) = server.exchange(
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
    assert_eq!(
        header(&headers, "x-should-retry"),
        Some("false"),
        "{headers:?}"
    );
    let (_, stats) = server.get("/stats");
    let chat = &stats["endpoints"]["/v1/chat/completions"];
    assert!(
        chat["errors"]["COMM_003"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );

    for path in ["/v1/chat/completions", "/tokenize"] {
        let (status, headers, text) = server.exchange("GET", path, &[], None);
        assert_eq!(status, 405, "{path}: {text}");
        openai_error(&serde_json::from_str(&text).expect("json"));
        assert_eq!(
            header(&headers, "allow"),
            Some("POST"),
            "{path}: {headers:?}"
        );
    }
    for path in ["/v1/embeddings", "/v1/responses"] {
        let (status, text) = server.post_text(path, &json!({"input": "hi"}));
        assert_eq!(status, 404, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(openai_error(&body), "NOT_FOUND", "{path}: {body}");
    }
    // The pipeline runs keep agentrt's own shape.
    let (status, body) = server.get("/v1/pipeline/runs/0123456789abcdef0123456789abcdef");
    assert_eq!(status, 404, "{body}");
    assert_eq!(crate::harness::error_code(&body), "NOT_FOUND", "{body}");
    assert!(body["error"].get("param").is_none(), "{body}");

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
    // A prompt counts what generation reads (a BOS the model adds included).
    let (status, done) = server.post(
        "/v1/completions",
        &json!({"prompt": "hello there", "max_tokens": 1}),
    );
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        done["usage"]["prompt_tokens"].as_u64(),
        Some(plain),
        "{done}"
    );
    let (status, body) = server.post("/tokenize", &json!({}));
    assert_eq!(
        (status, openai_error(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
}

/// A value of the wrong type is refused naming its field (`param`), also for the fields both
/// routes share; a body that is not an object is refused as such, on the native routes too
/// (serde would read an array as the fields in order).
#[test]
fn a_field_of_the_wrong_type_is_named_and_an_array_is_not_a_body() {
    let server = default_server();
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            CHAT,
            json!({"messages": hi, "max_tokens": "3"}),
            "max_tokens",
        ),
        (
            CHAT,
            json!({"messages": hi, "temperature": "hot"}),
            "temperature",
        ),
        (CHAT, json!({"messages": hi, "stop": 5}), "stop"),
        (
            COMPLETIONS,
            json!({"prompt": "x", "max_tokens": "2"}),
            "max_tokens",
        ),
        (COMPLETIONS, json!({"prompt": [1, 2, 3]}), "prompt"),
    ];
    for (path, body, param) in cases {
        let (status, answer) = server.post(path, &body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(openai_error(&answer), "VAL_002", "{path} {body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{path} {body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.contains("enum"), "{message}");
    }
    for path in ["/chat", "/generate", CHAT] {
        let (status, answer) = server.post(path, &json!(["hi", null, null, 2, null, null]));
        assert_eq!(status, 400, "{path}: {answer}");
        let text = answer.to_string();
        assert!(
            text.contains("VAL_001") && text.contains("not an array"),
            "{path}: {answer}"
        );
    }
    // /chat's temperature is OpenAI's range too.
    let (status, answer) = server.post("/chat", &json!({"message": "hi", "temperature": 5}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"]["details"]["field"], "temperature",
        "{answer}"
    );
}
