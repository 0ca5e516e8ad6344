//! Request deadlines (504 past the deadline, 408 for a body that does not arrive), a client that
//! disconnects before its answer (its generation stops), the graceful shutdown (ready answers 503 while the server drains, then it exits cleanly), and the bounded
//! generation queue (429 QUEUE_001 with Retry-After, streamed or not).

use std::time::Duration;

use serde_json::json;

use super::harness::{Server, error_code};

#[test]
fn a_request_past_its_deadline_is_504_and_a_body_that_never_arrives_is_408() {
    let s = Server::start_with_env(
        &[],
        &[
            ("AGENTRT_BODY_TIMEOUT", "1"),
            ("AGENTRT_HEADER_TIMEOUT", "1"),
        ],
    );
    // A long generation with a client deadline of 0.3 s.
    let (status, _, text) = s.exchange(
        "POST",
        "/v1/completions",
        &[("X-Request-Timeout", "0.3")],
        Some(
            &json!({"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                     "max_tokens": 2000, "temperature": 1.0, "seed": 7}),
        ),
    );
    assert_eq!(status, 504, "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(error_code(&body), "COMM_003", "{body}");
    // A deadline longer than the clock can hold is the server's own limit, not a crash; one
    // that is no deadline is the client's mistake, not a deadline quietly not kept.
    for asked in ["1e300", "inf"] {
        let (status, _, text) = s.exchange("GET", "/health", &[("X-Request-Timeout", asked)], None);
        assert_eq!(status, 200, "X-Request-Timeout: {asked}: {text}");
    }
    for asked in ["-1", "soon", "0"] {
        let (status, _, text) = s.exchange("GET", "/health", &[("X-Request-Timeout", asked)], None);
        assert_eq!(status, 400, "X-Request-Timeout: {asked}: {text}");
        assert!(
            text.contains("VAL_002") && text.contains("X-Request-Timeout"),
            "{text}"
        );
    }
    // The generation was stopped, so the model serves the next request at once.
    let (status, body) = s.post("/chat", &json!({"message": "Say hi.", "max_tokens": 4}));
    assert_eq!(status, 200, "{body}");
    let (_, _, metrics) = s.exchange("GET", "/metrics", &[], None);
    assert!(
        metrics.contains("agentrt_generations_running{model=\"smollm2-135m-instruct\"} 0"),
        "{metrics}"
    );

    // Headers promising 64 bytes of body, 10 sent, then silence.
    let cut_short = b"POST /chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
Content-Length: 64\r\nConnection: close\r\n\r\n{\"message\"";
    let (status, body) = s.raw_exchange(cut_short, Duration::from_secs(30));
    assert_eq!(status, 408, "{body}");
    assert_eq!(error_code(&body), "COMM_003", "{body}");

    // Headers that never finish: the server closes the connection after its header timeout
    // (a read that times out here means the socket was still held open).
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(s.base.trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
        .write_all(b"POST /chat HTTP/1.1\r\nHost: localhost\r\n")
        .expect("send");
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    assert!(closed.is_ok(), "the connection was still open: {closed:?}");
}

#[test]
fn a_terminated_server_reports_draining_then_exits_cleanly() {
    let s = Server::start_with_env(&[], &[("AGENTRT_DRAIN_SECONDS", "3")]);
    let (status, body) = s.get("/health/ready");
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
    s.terminate();
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..40 {
        answer = s.get("/health/ready");
        if answer.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert_eq!(answer.1["status"], "draining");
    let (status, _) = s.get("/health/live");
    assert_eq!(status, 200, "still answering while draining");
    let exit = s
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_starting_server_answers_health_probes_and_says_what_it_loads() {
    // A run store that accepts the connection and never answers holds the start at its last
    // stage until the connection closes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let store = format!(
        "postgres://agentrt@{}/agentrt?connect_timeout=60",
        silent.local_addr().expect("address")
    );
    let key = "user-key-0123456789abcdef";
    let s = Server::start_answering_early(
        &[],
        &[
            ("AGENTRT_STORE", &store),
            ("AGENTRT_API_KEYS", &format!("user:{key}")),
        ],
    );
    let bearer = format!("Bearer {key}");
    let (held, _) = silent.accept().expect("the server connects to its store");
    let (status, body) = s.get("/health/live");
    assert_eq!((status, &body["status"]), (200, &json!("alive")), "{body}");
    // Ready says not yet; /health, for people, is 200 whatever it says, as when running.
    for (probe, answer) in [("/health/ready", 503), ("/health", 200)] {
        let (status, body) = s.get(probe);
        assert_eq!(status, answer, "{probe}: {body}");
        assert_eq!(body["status"], "starting", "{probe}: {body}");
        assert_eq!(body["stage"], "opening the run store", "{probe}: {body}");
    }
    let (status, headers, text) = s.exchange(
        "POST",
        "/generate",
        &[("X-Request-Id", "client-7"), ("Authorization", &bearer)],
        Some(&json!({})),
    );
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("MODEL_001") && text.contains("starting"),
        "{text}"
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("retry-after"), Some("5"));
    assert_eq!(header("connection"), Some("close"), "no client stays on it");
    // As the running server's answers: the client's id echoed, and never sniffed.
    assert_eq!(header("x-request-id"), Some("client-7"));
    assert_eq!(header("x-content-type-options"), Some("nosniff"));
    // The console's page loads, to say the server is starting, instead of a JSON error.
    for page in ["/", "/console/console.js"] {
        let (status, headers, text) = s.exchange("GET", page, &[], None);
        assert_eq!(status, 200, "{page}: {text}");
        assert!(!text.contains("MODEL_001"), "{page}: {text}");
        let id = headers.iter().find(|(k, _)| k == "x-request-id");
        assert!(id.is_some_and(|(_, v)| v.len() == 16), "{page}: a new id");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "x-content-type-options" && v == "nosniff"),
            "{page}"
        );
    }
    // OpenAI's clients read their own error shape.
    let completion = json!({"prompt": "x"});
    let auth = [("Authorization", bearer.as_str())];
    let (status, body) = s.request("POST", "/v1/completions", &auth, Some(&completion));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "MODEL_001", "{body}");
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    // Keys hold as once running: without one a client learns that, not how far the start is.
    let (status, headers, text) = s.exchange("POST", "/generate", &[], Some(&json!({})));
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("AUTH_001") && !text.contains("starting"),
        "{text}"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v == "Bearer")
    );
    let (status, body) = s.request("POST", "/v1/completions", &[], Some(&completion));
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error"]["code"], "AUTH_001",
        "in OpenAI's shape: {body}"
    );
    // A start that fails still ends the process with the failure.
    drop(held);
    let exit = s
        .wait_exit(Duration::from_secs(60))
        .expect("the server exits when its store cannot be opened");
    assert!(!exit.success(), "{exit:?}");
}

/// Poll `/metrics` until `line` appears (a gauge reaching a value).
fn wait_for_metric(s: &Server, line: &str) {
    for _ in 0..200 {
        let (_, _, metrics) = s.exchange("GET", "/metrics", &[], None);
        if metrics.lines().any(|l| l == line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{line} never appeared in /metrics");
}

#[test]
fn a_full_generation_queue_is_429_with_retry_after_for_plain_and_streamed_requests() {
    let s = std::sync::Arc::new(Server::start_with_env(
        &[],
        &[
            ("AGENTRT_MAX_BATCH", "1"),
            ("AGENTRT_GENERATION_QUEUE", "1"),
        ],
    ));
    let long = |timeout: &'static str| {
        let s = s.clone();
        std::thread::spawn(move || {
            s.exchange(
                "POST",
                "/v1/completions",
                &[("X-Request-Timeout", timeout)],
                Some(
                    &json!({"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                             "max_tokens": 3000, "temperature": 1.0, "seed": 7}),
                ),
            )
            .0
        })
    };
    // One generation holds the only place, a second waits in the queue of one.
    // Deadlines long enough for the checks below on a loaded machine, short enough that the
    // 3000 tokens never finish.
    let running = long("10");
    wait_for_metric(
        &s,
        "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 1",
    );
    let waiting = long("14");
    wait_for_metric(
        &s,
        "agentrt_generations_waiting{model=\"smollm2-135m-instruct\"} 1",
    );
    for stream in [false, true] {
        let (status, headers, text) = s.exchange(
            "POST",
            "/v1/completions",
            &[],
            Some(&json!({"model": "smollm2-135m-instruct", "prompt": "Hi",
                         "max_tokens": 4, "stream": stream})),
        );
        assert_eq!(status, 429, "stream {stream}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["error"]["code"], "QUEUE_001", "{body}");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("retry-after") && v.parse::<u64>().is_ok()),
            "{headers:?}"
        );
    }
    // The seed's adapters share the model's queue and its answer.
    let (status, body) = s.post("/chat", &json!({"message": "Say hi.", "max_tokens": 4}));
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_code(&body), "QUEUE_001", "{body}");
    assert_eq!(running.join().expect("thread"), 504);
    assert_eq!(waiting.join().expect("thread"), 504);
    let (status, body) = s.post("/chat", &json!({"message": "Say hi.", "max_tokens": 4}));
    assert_eq!(status, 200, "served again once the queue drained: {body}");
}

/// `body` POSTed to /v1/completions on a connection of its own, left open: dropping the
/// stream is the client hanging up.
fn complete_on_own_connection(s: &Server, body: serde_json::Value) -> std::net::TcpStream {
    use std::io::Write;
    let body = body.to_string();
    let address = s.base.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(address).expect("connect");
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    conn
}

#[test]
fn a_client_that_disconnects_before_a_plain_answer_stops_its_generation() {
    let s = Server::start(&[]);
    let conn = complete_on_own_connection(
        &s,
        json!({"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
               "max_tokens": 3000, "temperature": 1.0, "seed": 5}),
    );
    wait_for_metric(
        &s,
        "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 1",
    );
    // Gone before the (30 s) answer: the generation stops at its next token.
    drop(conn);
    wait_for_metric(
        &s,
        "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 0",
    );
    // And the request is counted, as one its client closed (nginx's 499).
    wait_for_metric(
        &s,
        "agentrt_http_requests_total{route=\"/v1/completions\",status=\"499\"} 1",
    );
}

/// A streamed request whose client hangs up while it waits in the queue leaves the queue
/// then, not once it is admitted and sends its first piece: a gone client must not hold a
/// place others are refused for.
#[test]
fn a_streamed_request_whose_client_leaves_while_queued_gives_up_its_place() {
    use std::io::{BufRead, BufReader};
    let s = Server::start_with_env(&[], &[("AGENTRT_MAX_BATCH", "1")]);
    let send = |body: serde_json::Value| complete_on_own_connection(&s, body);
    // A long generation holds the only place (until its connection is dropped).
    let long = send(
        json!({"model": "smollm2-135m-instruct", "prompt": "Once upon a time",
                           "max_tokens": 3000, "temperature": 1.0, "seed": 3}),
    );
    wait_for_metric(
        &s,
        "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 1",
    );
    let queued = send(json!({"model": "smollm2-135m-instruct", "prompt": "Hi",
                             "max_tokens": 8, "stream": true}));
    // The answer starts (200, event stream) once the request is queued.
    let mut status_line = String::new();
    BufReader::new(queued.try_clone().expect("clone"))
        .read_line(&mut status_line)
        .expect("status line");
    assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
    wait_for_metric(
        &s,
        "agentrt_generations_waiting{model=\"smollm2-135m-instruct\"} 1",
    );
    queued.shutdown(std::net::Shutdown::Both).expect("hang up");
    drop(queued);
    wait_for_metric(
        &s,
        "agentrt_generations_waiting{model=\"smollm2-135m-instruct\"} 0",
    );
    // The long generation is still the one running.
    wait_for_metric(
        &s,
        "agentrt_generations_running{model=\"smollm2-135m-instruct\"} 1",
    );
    drop(long);
}

#[test]
fn answer_when_done_routes_refuse_past_their_places_instead_of_piling_up() {
    // One place; a check that sleeps through its 3 s deadline holds it.
    let manifest = super::harness::test_plugin_manifest_with(
        "sleep-check",
        "timeout-ms = 1000",
        "timeout-ms = 3000",
    );
    let plugins =
        super::harness::plugin_folder("sync-places", "sleep-check", "sleep-check", Some(&manifest));
    let s = Server::start_with_env(
        &["--plugins", plugins.to_str().expect("utf-8")],
        &[("AGENTRT_SYNC_REQUESTS", "1")],
    );
    let refused = std::thread::scope(|scope| {
        // It may itself meet the place taken by a probe below: it asks again until it has it.
        let asleep = scope.spawn(|| {
            let until = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                assert!(
                    std::time::Instant::now() < until,
                    "the sleeping check never got a place"
                );
                let answer = s.post(
                    "/check",
                    &json!({"code": "x = 1\n", "checks": ["sleep-check"]}),
                );
                if answer.0 != 429 {
                    return answer;
                }
            }
        });
        // While it works, another request is refused at once, with a time to come back.
        let mut refused = None;
        while !asleep.is_finished() && refused.is_none() {
            let (status, headers, text) = s.exchange(
                "POST",
                "/check",
                &[],
                Some(&json!({"code": "y = 2\n", "checks": ["python-quality"]})),
            );
            if status == 429 {
                refused = Some((headers, text));
            }
        }
        let (status, body) = asleep.join().expect("join");
        assert_eq!(status, 200, "{body}");
        refused
    });
    let (headers, text) = refused.expect("no request was refused while the only place was held");
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(error_code(&body), "QUEUE_001", "{body}");
    assert!(
        headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("retry-after")),
        "{headers:?}"
    );
    // The place is free again once the work is done.
    let (status, body) = s.post("/check", &json!({"code": "y = 2\n"}));
    assert_eq!(status, 200, "{body}");
}
