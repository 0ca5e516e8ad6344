//! Every endpoint and error code of the default set-up: real model, embedded plugins.

use serde_json::json;

use crate::harness::{Server, default_server, error_code};

#[test]
fn health_reports_model_and_plugins_loaded() {
    let (status, body) = default_server().get("/health");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["model_loaded"], true);
    assert_eq!(body["store"], json!({"ok": true}), "{body}");
    let worlds: Vec<&str> = body["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter_map(|p| p["world"].as_str())
        .collect();
    for world in ["generator", "reviewer", "error-handler", "quality-check"] {
        assert!(worlds.contains(&world), "no {world} plugin in {body}");
    }
}

#[test]
fn pipeline_fibonacci_returns_code_tests_findings_and_a_verdict() {
    let s = default_server();
    let (status, body) = s.post(
        "/pipeline",
        &json!({"task_description": "Write a function that returns the n-th Fibonacci number"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completed");
    assert!(
        body["code"].as_str().is_some_and(|c| c.contains("def ")),
        "{body}"
    );
    assert!(
        body["tests"].as_str().is_some_and(|t| !t.trim().is_empty()),
        "{body}"
    );
    assert!(body["findings"].is_array(), "{body}");
    let verdict = body["review"]["verdict"].as_str().unwrap_or_default();
    assert!(
        ["approve", "request_changes", "reject"].contains(&verdict),
        "{body}"
    );
    let stages: Vec<&str> = body["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert!(
        stages.contains(&"generate") && stages.contains(&"check") && stages.contains(&"review"),
        "{stages:?}"
    );
    // The generated tests ran in the sandbox (a tiny model's tests may fail; they must run).
    assert!(stages.contains(&"test"), "{stages:?}");
    assert!(
        body["test_results"]["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
            || body["test_results"]["setup_error"].is_string(),
        "{body}"
    );
    assert!(
        body["tokens"].as_u64().unwrap_or(0) > 0,
        "the model must have been used: {body}"
    );

    // /stats counts it, per endpoint and per plugin.
    let (_, stats) = s.get("/stats");
    assert!(
        stats["endpoints"]["/pipeline"]["requests"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{stats}"
    );
    assert!(
        stats["plugins"]["generator"]["tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{stats}"
    );
}

#[test]
fn generate_returns_code_tests_model_and_usage() {
    let (status, body) = default_server().post(
        "/generate",
        &json!({"task_description": "Write a function that adds two integers"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["code"].as_str().is_some_and(|c| c.contains("def ")),
        "{body}"
    );
    assert!(body["tests"].is_string());
    assert_eq!(body["model"], "smollm2-135m-instruct");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn review_runs_the_tests_in_the_sandbox_and_reports_each() {
    let code = "def add(a: int, b: int) -> int:\n    \"\"\"Add.\"\"\"\n    return a + b\n";
    let tests = "def test_small():\n    assert add(1, 2) == 3\n\n\
                 def test_wrong():\n    assert add(2, 2) == 5\n\n\
                 def test_escape():\n    assert open('/etc/passwd').read()\n";
    let (status, body) = default_server().post("/review", &json!({"code": code, "tests": tests}));
    assert_eq!(status, 200, "{body}");
    let results = body["test_results"]["results"]
        .as_array()
        .expect("test results");
    let status_of = |name: &str| {
        results
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(status_of("test_small"), "passed", "{body}");
    assert_eq!(status_of("test_wrong"), "failed", "{body}");
    assert_eq!(status_of("test_escape"), "error", "{body}");
    assert!(
        !body.to_string().contains("root:"),
        "host files must not leak: {body}"
    );
    assert_ne!(
        body["verdict"], "approve",
        "failing tests must not be approved: {body}"
    );
}

#[test]
fn review_returns_a_verdict_with_the_check_findings() {
    let code = "def add(a, b):\n    return eval('a + b')\n";
    let (status, body) = default_server().post(
        "/review",
        &json!({"code": code, "tests": "assert add(1, 2) == 3\n"}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        ["approve", "request_changes", "reject"]
            .contains(&body["verdict"].as_str().unwrap_or_default())
    );
    let score = body["score"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=10.0).contains(&score), "{body}");
    let rules: Vec<&str> = body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["rule_id"].as_str())
        .collect();
    assert!(
        rules.contains(&"dangerous-call"),
        "eval must be reported: {rules:?}"
    );
    assert_ne!(
        body["verdict"], "approve",
        "code calling eval must not be approved: {body}"
    );
}

#[test]
fn check_reports_each_rule_with_line_and_column() {
    let code = "import os\n\ndef run(cmd):\n    os.system(cmd)\n";
    let (status, body) = default_server().post("/check", &json!({"code": code}));
    assert_eq!(status, 200, "{body}");
    let findings = body["findings"].as_array().expect("findings");
    let get = |rule: &str| findings.iter().find(|f| f["rule_id"] == rule).cloned();
    let danger = get("dangerous-call").unwrap_or_else(|| panic!("no dangerous-call in {body}"));
    assert_eq!(
        (danger["line"].as_u64(), danger["severity"].as_str()),
        (Some(4), Some("error"))
    );
    assert!(get("missing-docstring").is_some(), "{body}");
    assert!(get("missing-type-hints").is_some(), "{body}");

    let (_, body) = default_server().post("/check", &json!({"code": "def f(:\n    pass\n"}));
    let syntax = body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["rule_id"] == "syntax-error")
        .cloned();
    let syntax = syntax.unwrap_or_else(|| panic!("no syntax-error in {body}"));
    assert_eq!(syntax["line"], 1);
}

#[test]
fn chat_answers_with_model_text() {
    let (status, body) =
        default_server().post("/chat", &json!({"message": "Say hello.", "max_tokens": 16}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["response"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "{body}"
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn invalid_requests_get_validation_codes() {
    let s = default_server();
    let (status, body) = s.post_raw("/generate", "application/json", "{not json");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_001"),
        "{body}"
    );
    let (status, body) = s.post("/generate", &json!({"language": "python"}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_003"),
        "{body}"
    );
    assert_eq!(
        body["error"]["details"]["field"], "task_description",
        "{body}"
    );
    let (status, body) = s.post("/generate", &json!({"task_description": "   "}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
    assert_eq!(
        body["error"]["details"]["field"], "task_description",
        "{body}"
    );
    let (status, body) = s.post(
        "/generate",
        &json!({"task_description": "x", "language": "cobol"}),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
    let (status, body) = s.post("/review", &json!({"tests": "assert True"}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_003"),
        "{body}"
    );
    let (status, body) = s.post("/chat", &json!({"message": 5}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
    assert_eq!(body["error"]["details"]["field"], "message", "{body}");
    // A system prompt and tests are bounded as the message and the code are.
    let (status, body) = s.post(
        "/chat",
        &json!({"message": "hi", "system": "x".repeat(16_001)}),
    );
    assert_eq!((status, error_code(&body).as_str()), (400, "VAL_002"));
    assert_eq!(body["error"]["details"]["field"], "system", "{body}");
    let (status, body) = s.post(
        "/check",
        &json!({"code": "x = 1\n", "tests": "#".repeat(128_001)}),
    );
    assert_eq!((status, error_code(&body).as_str()), (400, "VAL_002"));
    assert_eq!(body["error"]["details"]["field"], "tests", "{body}");
    let (status, body) = s.post(
        "/check",
        &json!({"code": "x = 1", "checks": ["no-such-check"]}),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "PLUGIN_001"),
        "{body}"
    );
    let (status, body) = s.post_declaring_length("/chat", 2 << 20);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "VAL_001"),
        "{body}"
    );
    let (status, body) = s.get("/no/such/route");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "NOT_FOUND"),
        "{body}"
    );
    // A model this server does not have is the client's mistake, not an outage.
    let (status, body) = s.post("/chat", &json!({"message": "hi", "model": "gpt-9"}));
    assert_eq!(
        (status, error_code(&body).as_str()),
        (404, "MODEL_001"),
        "{body}"
    );
    let (status, body) = s.post("/tokenize", &json!({"prompt": "hi", "model": "gpt-9"}));
    assert_eq!(status, 404, "{body}");
    // A query string that does not parse is VAL_002 in the usual shape.
    for query in [
        "limit=abc",
        "foo=1",
        "limit=0",
        "limit=101",
        "before_id=run-x",
    ] {
        let (status, body) = s.get(&format!("/v1/pipeline/runs?{query}"));
        assert_eq!(
            (status, error_code(&body).as_str()),
            (400, "VAL_002"),
            "{query}: {body}"
        );
    }
    let (status, body) = s.get("/v1/pipeline/runs/no-such-run/events?after=zz");
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
}

/// A body without a `Content-Type` is read as JSON, as FastAPI (the services agentrt replaces)
/// and vLLM do (`requests.post(url, data=json.dumps(body))` sends none); a type the client does
/// name must still be JSON.
#[test]
fn a_body_without_a_content_type_is_read_as_json() {
    let s = default_server();
    let host = s.base.trim_start_matches("http://");
    for (path, body) in [
        ("/check", json!({"code": "x = 1\n"})),
        ("/tokenize", json!({"prompt": "hello there"})),
    ] {
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) =
            s.raw_exchange(request.as_bytes(), std::time::Duration::from_secs(60));
        assert_eq!(status, 200, "{path}: {answer}");
    }
    let (status, body) = s.post_raw("/check", "text/plain", r#"{"code": "x = 1"}"#);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_001"),
        "{body}"
    );
    // A browser sends `Origin`: a page elsewhere posting an untyped body (no CORS preflight
    // for it) is not read as JSON, so it cannot drive a server that runs without keys.
    let body = json!({"code": "x = 1\n"}).to_string();
    let request = format!(
        "POST /check HTTP/1.1\r\nHost: {host}\r\nOrigin: https://elsewhere.example\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = s.raw_exchange(request.as_bytes(), std::time::Duration::from_secs(60));
    assert_eq!(status, 400, "{answer}");
}

/// A server without keys on a loopback address answers only requests addressed to this machine:
/// a page whose own name was pointed at 127.0.0.1 (DNS rebinding) is same-origin to the browser,
/// and its requests name it, so they are refused, JSON body or not.
#[test]
fn a_keyless_server_refuses_requests_addressed_to_another_name() {
    let s = default_server();
    let port = s.base.rsplit(':').next().expect("port").to_string();
    let body = json!({"code": "x = 1\n"}).to_string();
    let ask = |host: &str| {
        let request = format!(
            "POST /check HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.raw_exchange(request.as_bytes(), std::time::Duration::from_secs(60))
    };
    let (status, answer) = ask(&format!("rebound.example:{port}"));
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "AUTH_002", "{answer}");
    for here in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, answer) = ask(&here);
        assert_eq!(status, 200, "{here}: {answer}");
    }
}

/// A `max_retries` above what the pipeline allows is a 400 naming the field on every route that
/// takes a task, not a silent cut down to the limit.
#[test]
fn max_retries_above_the_limit_is_refused() {
    let s = default_server();
    let (_, doc) = s.get("/openapi.json");
    let most = doc["components"]["schemas"]["Task"]["properties"]["max_retries"]["maximum"]
        .as_u64()
        .expect("documented maximum");
    for path in ["/generate", "/pipeline", "/v1/pipeline/runs"] {
        let (status, body) = s.post(
            path,
            &json!({"task_description": "Write a function that adds two integers",
                    "max_retries": most + 1}),
        );
        assert_eq!(
            (status, error_code(&body).as_str()),
            (400, "VAL_002"),
            "{path}: {body}"
        );
        assert_eq!(
            body["error"]["details"]["field"], "max_retries",
            "{path}: {body}"
        );
    }
}

/// `/health` and `/stats` answer the fields their OpenAPI schemas name: every required one,
/// and none the schema does not list.
#[test]
fn health_and_stats_answer_what_their_schemas_say() {
    let s = default_server();
    let (_, doc) = s.get("/openapi.json");
    let schemas = &doc["components"]["schemas"];
    let names = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    for (path, schema) in [("/health", "Health"), ("/stats", "Stats")] {
        let (status, body) = s.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let fields = names(&body);
        let listed = names(&schemas[schema]["properties"]);
        for required in names(&schemas[schema]["required"]) {
            assert!(
                fields.contains(&required),
                "{path} lacks {required}: {body}"
            );
        }
        for field in &fields {
            assert!(listed.contains(field), "{path}: {field} is not in {schema}");
        }
    }
    let (_, health) = s.get("/health");
    let status = health["status"].as_str().unwrap_or_default().to_string();
    let allowed = names(&schemas["Health"]["properties"]["status"]["enum"]);
    assert!(allowed.contains(&status), "{status} not in {allowed:?}");
}

#[test]
fn stats_count_failures_by_code() {
    let s = default_server();
    s.post("/generate", &json!({}));
    let (status, body) = s.get("/stats");
    assert_eq!(status, 200);
    let g = &body["endpoints"]["/generate"];
    assert!(g["failures"].as_u64().unwrap_or(0) >= 1, "{body}");
    assert!(g["errors"]["VAL_003"].as_u64().unwrap_or(0) >= 1, "{body}");
}

#[test]
fn deeply_nested_code_is_a_clear_result_not_a_crash() {
    // CPython's parser recurses on every unary minus: this drives the Python check deep into
    // its stack, which must end in a finding or a plugin error, never in a dead server.
    let code = format!("x = {}1\n", "-".repeat(20_000));
    let s = default_server();
    let (status, body) = s.post(
        "/check",
        &json!({"code": code, "checks": ["python-quality"]}),
    );
    assert_eq!(status, 200, "{body}");
    let outcome = &body["checks"][0];
    let syntax = body["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|f| f["rule_id"] == "syntax-error");
    assert!(
        syntax
            || outcome["error"]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("PLUGIN_")),
        "{body}"
    );
    let (status, _) = s.get("/health");
    assert_eq!(status, 200);
}

#[test]
fn wrong_method_gets_405_in_the_error_shape() {
    let (status, body) = default_server().get("/generate");
    assert_eq!(status, 405, "{body}");
    error_code(&body);
}

/// The value of the first sample line starting with `series` in a Prometheus exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A generation that ends on the model's end marker counts, in the metrics, the tokens its
/// `usage` counts: the marker is not one of them.
#[test]
fn generated_tokens_in_the_metrics_are_the_usage_s() {
    let s = super::harness::Server::start(&[]);
    let (status, body) = s.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 200,
                "temperature": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["finish_reason"], "stop",
        "ends on its end marker: {body}"
    );
    let generated = body["usage"]["completion_tokens"].as_f64().expect("usage");
    let (_, _, text) = s.exchange("GET", "/metrics", &[], None);
    assert_eq!(
        metric(
            &text,
            "agentrt_generated_tokens_total{model=\"smollm2-135m-instruct\"}"
        ),
        Some(generated),
        "{text}"
    );
}

#[test]
fn metrics_expose_generation_latency_tokens_requests_and_findings() {
    // A server of its own, so the counts are this test's.
    let s = super::harness::Server::start(&[]);
    let (status, body) = s.post("/chat", &json!({"message": "Say hello.", "max_tokens": 8}));
    assert_eq!(status, 200, "{body}");
    let generated = body["usage"]["completion_tokens"].as_u64().expect("usage") as f64;
    let code = "import os\n\ndef run(cmd):\n    os.system(cmd)\n";
    let (status, _) = s.post("/check", &json!({"code": code}));
    assert_eq!(status, 200);
    s.post("/chat", &json!({"message": ""}));

    let (status, headers, text) = s.exchange("GET", "/metrics", &[], None);
    assert_eq!(status, 200, "{text}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/openmetrics-text")),
        "{headers:?}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let model = "model=\"smollm2-135m-instruct\"";
    assert_eq!(
        metric(&text, &format!("agentrt_generated_tokens_total{{{model}}}")),
        Some(generated),
        "{text}"
    );
    assert!(metric(&text, &format!("agentrt_prompt_tokens_total{{{model}}}")).unwrap_or(0.0) > 0.0);
    for series in [
        "agentrt_time_to_first_token_seconds_count",
        "agentrt_queue_time_seconds_count",
    ] {
        assert_eq!(
            metric(&text, &format!("{series}{{{model}}}")),
            Some(1.0),
            "{series}"
        );
    }
    assert_eq!(
        metric(&text, &format!("agentrt_generations_running{{{model}}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "agentrt_http_requests_total{route=\"/chat\",status=\"200\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "agentrt_http_requests_total{route=\"/chat\",status=\"400\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "agentrt_http_request_duration_seconds_count{route=\"/check\"}"
        ) == Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "agentrt_findings_total{check=\"python-quality\",severity=\"error\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );

    // The first chat's keys and values were kept: the same message again starts from them.
    let reused = |text: &str| {
        metric(
            text,
            &format!("agentrt_prompt_tokens_reused_total{{{model}}}"),
        )
    };
    assert_eq!(reused(&text).unwrap_or(0.0), 0.0, "{text}");
    assert!(
        metric(&text, &format!("agentrt_prefix_cache_bytes{{{model}}}")).unwrap_or(0.0) > 0.0,
        "{text}"
    );
    let (status, again) = s.post("/chat", &json!({"message": "Say hello.", "max_tokens": 8}));
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["response"], body["response"],
        "reuse changes no answer"
    );
    let (_, _, text) = s.exchange("GET", "/metrics", &[], None);
    let prompt = metric(&text, &format!("agentrt_prompt_tokens_total{{{model}}}")).unwrap_or(0.0);
    // All of the repeated prompt but its last token (prompt tokens count both chats).
    assert_eq!(reused(&text), Some(prompt / 2.0 - 1.0), "{text}");
}

#[test]
fn every_request_has_an_id_that_its_plugin_log_lines_carry() {
    let log =
        crate::harness::scratch_root().join(format!("agentrt-log-{}.jsonl", std::process::id()));
    let s =
        super::harness::Server::start_logging(&[], &[("AGENTRT_LOG_FORMAT", "json")], Some(&log));
    let code = "import os\n\ndef run(cmd):\n    os.system(cmd)\n";
    let (status, headers, _) = s.exchange(
        "POST",
        "/check",
        &[("X-Request-Id", "req-e2e-42")],
        Some(&json!({"code": code})),
    );
    assert_eq!(status, 200);
    let echoed = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "x-request-id")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(echoed(&headers).as_deref(), Some("req-e2e-42"));
    // Without one (or with an unusable one) the server makes one up.
    let (_, headers, _) = s.exchange(
        "GET",
        "/health",
        &[("X-Request-Id", "not a usable id")],
        None,
    );
    let made = echoed(&headers).expect("an id");
    assert!(
        made.len() == 16 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    // A request after the probe, whose line is logged once the probe's would have been.
    let (status, _, _) = s.exchange("GET", "/plugins", &[("X-Request-Id", "req-e2e-43")], None);
    assert_eq!(status, 200);

    // The plugin call's audit line, written on the plugin's own thread, names the request.
    let read_log = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let finished = |lines: &[serde_json::Value], id: &str| {
        lines
            .iter()
            .any(|v| v["target"] == "agentrt::http" && v["span"]["request_id"] == id)
    };
    let mut all = Vec::new();
    for _ in 0..50 {
        all = read_log();
        if finished(&all, "req-e2e-42") && finished(&all, "req-e2e-43") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(s);
    let _ = std::fs::remove_file(&log);
    // Probes answered well come every few seconds for the server's life: not at info.
    assert!(finished(&all, "req-e2e-43"), "{all:?}");
    assert!(!finished(&all, &made), "the probe was logged: {all:?}");
    let lines: Vec<_> = all
        .into_iter()
        .filter(|v| v.to_string().contains("req-e2e-42"))
        .collect();
    let audit = lines
        .iter()
        .find(|v| v["target"] == "agentrt::audit" && v["fields"]["plugin"] == "python-quality")
        .unwrap_or_else(|| panic!("no audit line with the request id in {lines:?}"));
    assert_eq!(audit["span"]["request_id"], "req-e2e-42", "{audit}");
    let done = lines
        .iter()
        .find(|v| v["target"] == "agentrt::http")
        .expect("request finished line");
    assert_eq!(done["fields"]["status"], 200, "{done}");
}

/// `/openapi.json` is open, and every operation it documents exists on a live server (no 405,
/// and no 404 except for a resource id that does not exist).
#[test]
fn every_documented_operation_exists() {
    let s = default_server();
    let (status, doc) = s.get("/openapi.json");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{}", paths.len());
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "no-such-run")
            .replace("{file}", "console.js");
        for method in item.as_object().expect("path item").keys() {
            let body = (method == "post").then(|| json!({}));
            let (status, _, body) =
                s.exchange(&method.to_uppercase(), &concrete, &[], body.as_ref());
            assert_ne!(status, 405, "{method} {path}: {body}");
            if !path.contains("{id}") {
                assert_ne!(status, 404, "{method} {path}: {body}");
            }
        }
    }
}

#[test]
fn code_no_quality_check_understands_is_refused_by_name() {
    let (status, body) = default_server().post(
        "/check",
        &json!({"code": "let x = 1;\n", "language": "rust"}),
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "VAL_002"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("\"rust\"") && message.contains("understand: python"),
        "{body}"
    );
    // Reviews stay Python, whatever the checks understand.
    let (status, body) = default_server().post(
        "/review",
        &json!({"code": "let x = 1;\n", "language": "javascript"}),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_path_that_is_not_utf8_is_answered_in_the_error_shape_of_its_api() {
    let s = Server::start(&[]);
    for (method, path) in [
        ("GET", "/v1/pipeline/runs/%ff"),
        ("GET", "/v1/pipeline/runs/%ff/events"),
        ("DELETE", "/v1/pipeline/runs/%ff"),
        ("GET", "/console/%ff"),
    ] {
        let (status, _, text) = s.exchange(method, path, &[], None);
        assert_eq!(status, 400, "{method} {path}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"]["code"], "VAL_002", "{method} {path}: {body}");
        assert_eq!(body["error"]["type"], "validation_error", "{body}");
    }
    // The OpenAI routes answer in OpenAI's shape.
    let (status, _, text) = s.exchange("GET", "/v1/models/%ff", &[], None);
    assert_eq!(status, 400, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "VAL_002", "{body}");
}
