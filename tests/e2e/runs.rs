//! Pipeline runs as resources: `/v1/pipeline/runs` — submit, watch the events, read the result,
//! cancel, the bounded queue, and a crash in the middle of a run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use agentrt::store::RunStore;

use super::harness::{
    Server, add_test_plugin, error_code, fresh_store_path, plugin_folder, postgres_schema_url,
    run_cli_env, test_plugin_manifest_with, wait_until,
};

const TASK: &str = "Write a function add(a, b) that returns the sum of two numbers";

fn submit(s: &Server, task: &str) -> (u16, Vec<(String, String)>, Value) {
    let (status, headers, text) = s.exchange(
        "POST",
        "/v1/pipeline/runs",
        &[],
        Some(&json!({"task_description": task, "max_retries": 0})),
    );
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parse a server-sent event stream into (id, event, data JSON) triples.
pub(super) fn parse_sse(text: &str) -> Vec<(i64, String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if let (Some(id), Some(event)) = (id, event) {
            let data = serde_json::from_str(&data).unwrap_or_else(|_| panic!("bad data: {data}"));
            out.push((id, event, data));
        }
    }
    out
}

/// The whole event stream of a run (it ends with `done`).
pub(super) fn events(s: &Server, id: &str, headers: &[(&str, &str)]) -> Vec<(i64, String, Value)> {
    let (status, answered, text) = s.exchange(
        "GET",
        &format!("/v1/pipeline/runs/{id}/events"),
        headers,
        None,
    );
    assert_eq!(status, 200, "{text}");
    // nginx in front would otherwise hold events back until its buffer fills.
    assert_eq!(
        header(&answered, "x-accel-buffering"),
        Some("no"),
        "{answered:?}"
    );
    parse_sse(&text)
}

pub(super) fn get_run(s: &Server, id: &str) -> Value {
    let (status, body) = s.get(&format!("/v1/pipeline/runs/{id}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// GET a run's events after `after` on a connection of its own: whether the stream ended
/// within `timeout`, and the raw answer so far.
fn read_events_raw(base: &str, id: &str, after: usize, timeout: Duration) -> (bool, String) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    write!(
        stream,
        "GET /v1/pipeline/runs/{id}/events?after={after} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    let ended = stream.read_to_end(&mut raw).is_ok();
    (ended, String::from_utf8_lossy(&raw).into_owned())
}

/// Follow a run's events on one connection until what has arrived satisfies `seen`.
fn watch_events_until(base: &str, id: &str, timeout: Duration, seen: impl Fn(&str) -> bool) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    write!(
        stream,
        "GET /v1/pipeline/runs/{id}/events HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .expect("send");
    let until = Instant::now() + timeout;
    let (mut raw, mut buf) = (Vec::new(), [0u8; 16 * 1024]);
    while !seen(&String::from_utf8_lossy(&raw)) {
        assert!(
            Instant::now() < until,
            "timed out watching the events of {id}"
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the event stream ended first: {}",
                String::from_utf8_lossy(&raw)
            ),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the events: {e}"),
        }
    }
}

#[test]
fn a_run_is_accepted_at_once_streams_its_stages_and_keeps_its_result() {
    let s = Server::start(&[]);
    let (status, headers, run) = submit(&s, TASK);
    assert_eq!(status, 202, "{run}");
    let (_, doc) = s.get("/openapi.json");
    assert!(
        doc["paths"]["/v1/pipeline/runs"]["post"]["responses"]
            .get("202")
            .is_some(),
        "the OpenAPI document names the status a submission gets"
    );
    let id = run["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 32, "{run}");
    assert!(
        ["queued", "running"].contains(&run["state"].as_str().unwrap_or("")),
        "{run}"
    );
    assert_eq!(
        header(&headers, "location"),
        Some(format!("/v1/pipeline/runs/{id}").as_str())
    );

    let all = events(&s, &id, &[]);
    let kinds: Vec<&str> = all.iter().map(|(_, k, _)| k.as_str()).collect();
    // Numbered 1, 2, ... without gaps, each data carrying its own type.
    for (n, (seq, kind, data)) in all.iter().enumerate() {
        assert_eq!(*seq, n as i64 + 1, "{kinds:?}");
        assert_eq!(data["type"], kind.as_str());
    }
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
    for expected in [
        "stage_started",
        "tokens",
        "stage_finished",
        "generated",
        "checks",
        "chosen",
        "review",
    ] {
        assert!(kinds.contains(&expected), "no {expected} in {kinds:?}");
    }
    // The attempt chosen for review is named before the review, and is one that was checked.
    let chosen = kinds.iter().position(|k| *k == "chosen").expect("chosen");
    assert!(
        chosen < kinds.iter().position(|k| *k == "review").expect("review"),
        "{kinds:?}"
    );
    let chosen_attempt = all[chosen].2["attempt"].clone();
    assert!(
        all.iter()
            .any(|(_, k, d)| k == "checks" && d["attempt"] == chosen_attempt),
        "{chosen_attempt} was never checked"
    );
    // Generated text arrives before the generate stage ends.
    let first_tokens = kinds.iter().position(|k| *k == "tokens").expect("tokens");
    let generate_done = all
        .iter()
        .position(|(_, k, d)| k == "stage_finished" && d["report"]["stage"] == "generate")
        .expect("generate finished");
    assert!(first_tokens < generate_done, "{kinds:?}");
    let text: String = all
        .iter()
        .filter(|(_, k, _)| k == "tokens")
        .filter_map(|(_, _, d)| d["text"].as_str())
        .collect();
    assert!(!text.trim().is_empty());
    let (_, _, done) = all.last().expect("done");
    assert_eq!(done["state"], "completed", "{done}");

    let run = get_run(&s, &id);
    assert_eq!(run["state"], "completed", "{run}");
    assert_eq!(run["result"]["chosen_attempt"], chosen_attempt, "{run}");
    assert!(
        run["result"]["code"]
            .as_str()
            .is_some_and(|c| c.contains("def ")),
        "{run}"
    );
    // The chosen attempt's code is the one its `generated` event showed, before its checks.
    let generated = all
        .iter()
        .position(|(_, k, d)| k == "generated" && d["attempt"] == chosen_attempt)
        .expect("the chosen attempt was never shown");
    assert_eq!(all[generated].2["code"], run["result"]["code"], "{run}");
    assert!(
        generated
            < all
                .iter()
                .position(|(_, k, d)| k == "checks" && d["attempt"] == chosen_attempt)
                .expect("checks"),
        "{kinds:?}"
    );
    assert_eq!(run["request"]["task_description"], TASK);
    let stages = run["stages"].as_array().expect("stages");
    assert_eq!(
        stages.len(),
        run["result"]["stages"].as_array().map_or(0, Vec::len)
    );

    // Resuming after an event gives exactly the rest, by header or by query.
    let rest = events(&s, &id, &[("Last-Event-ID", "3")]);
    assert_eq!(rest.first().map(|e| e.0), Some(4));
    assert_eq!(rest.len(), all.len() - 3);
    let (_, _, text) = s.exchange(
        "GET",
        &format!("/v1/pipeline/runs/{id}/events?after={}", all.len() - 1),
        &[],
        None,
    );
    assert_eq!(parse_sse(&text).len(), 1);
    // An EventSource opened with `?after=0` reconnects with the same URL and its
    // Last-Event-ID: the later wins, or it would replay the run for ever.
    let last = all.len().to_string();
    let (status, _, text) = s.exchange(
        "GET",
        &format!("/v1/pipeline/runs/{id}/events?after=0"),
        &[("Last-Event-ID", last.as_str())],
        None,
    );
    assert_eq!(status, 204, "{text}");
    // Resuming after the last event (an EventSource reconnecting after `done`) ends at once,
    // with 204: by the HTML spec that stops an EventSource reconnecting, an empty 200 would not.
    for after in [all.len(), all.len() + 100] {
        let (ended, text) = read_events_raw(&s.base, &id, after, Duration::from_secs(10));
        assert!(ended, "the stream after event {after} never ended: {text}");
        assert!(text.starts_with("HTTP/1.1 204"), "{text}");
        assert!(!text.contains("event:"), "{text}");
    }

    let (status, list) = s.get("/v1/pipeline/runs?limit=5");
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");
    assert_eq!(list["data"][0]["state"], "completed");

    // A finished run cannot be cancelled; an unknown one is not found.
    let (status, _, text) = s.exchange("DELETE", &format!("/v1/pipeline/runs/{id}"), &[], None);
    assert_eq!(status, 409, "{text}");
    assert_eq!(
        error_code(&serde_json::from_str(&text).expect("json")),
        "RUN_001"
    );
    let (status, body) = s.get("/v1/pipeline/runs/0123456789abcdef0123456789abcdef");
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "NOT_FOUND");
    let (status, body) = s.post("/v1/pipeline/runs", &json!({"task_description": " "}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "VAL_002");
}

#[test]
fn cancelling_stops_a_running_run_and_a_full_queue_answers_429() {
    // One worker, room for two runs: the first runs, the second waits, the third is refused.
    let s = Server::start_with_env(
        &[],
        &[("AGENTRT_RUN_WORKERS", "1"), ("AGENTRT_RUN_QUEUE", "2")],
    );
    let (status, _, first) = submit(&s, TASK);
    assert_eq!(status, 202, "{first}");
    let (status, _, second) = submit(&s, TASK);
    assert_eq!(status, 202, "{second}");
    let (status, headers, refused) = submit(&s, TASK);
    assert_eq!(status, 429, "{refused}");
    assert_eq!(error_code(&refused), "QUEUE_001");
    assert!(
        header(&headers, "retry-after").is_some_and(|v| v.parse::<u32>().is_ok()),
        "{headers:?}"
    );

    let first = first["id"].as_str().expect("id").to_string();
    let second = second["id"].as_str().expect("id").to_string();
    // Cancel the queued one, then the running one once it generates. A queued run's cancel
    // is answered once its end is stored: a crash of the server right after must not run it.
    let (status, _, text) = s.exchange("DELETE", &format!("/v1/pipeline/runs/{second}"), &[], None);
    assert_eq!(status, 202, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(answer["state"], "cancelled", "{answer}");
    assert_eq!(answer["cancel_requested"], true, "{answer}");
    // Generating: the model has made its first token for it (the only generation on this
    // server).
    wait_until(
        "the first run to generate",
        Duration::from_secs(120),
        || {
            let (_, _, text) = s.exchange("GET", "/metrics", &[], None);
            text.lines().any(|l| {
                l.starts_with("agentrt_time_to_first_token_seconds_count")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
            })
        },
    );
    let started = Instant::now();
    let (status, _, text) = s.exchange("DELETE", &format!("/v1/pipeline/runs/{first}"), &[], None);
    assert_eq!(status, 202, "{text}");
    for id in [&first, &second] {
        let all = events(&s, id, &[]);
        let (_, kind, done) = all.last().expect("events");
        assert_eq!(kind, "done");
        assert_eq!(done["state"], "cancelled", "{done}");
        assert_eq!(done["error"]["code"], "COMM_004", "{done}");
        let run = get_run(&s, id);
        assert_eq!(run["state"], "cancelled");
        // What the run did before the cancellation says so too: a stage it cut short is
        // `cancelled`, not the `ok` of a plugin that made do without its model call.
        if let Some(result) = run.get("result").filter(|r| !r.is_null()) {
            assert_eq!(result["status"], "cancelled", "{run}");
            let stages = result["stages"].as_array().expect("stages");
            let generated = stages.iter().filter(|st| st["stage"] == "generate");
            for stage in stages.iter().filter(|st| st["status"] == "cancelled") {
                assert_eq!(stage["error"]["code"], "COMM_004", "{run}");
            }
            assert!(
                generated.count() <= 1,
                "no retry after the cancellation: {run}"
            );
        }
    }
    eprintln!(
        "the running run ended {:?} after its cancellation",
        started.elapsed()
    );
    // The generation cut short counts what it had used: its prompt and the tokens made.
    let run = get_run(&s, &first);
    let generate = run["result"]["stages"]
        .as_array()
        .and_then(|st| st.iter().find(|st| st["stage"] == "generate"))
        .unwrap_or_else(|| panic!("no generate stage: {run}"));
    assert!(
        generate["tokens"].as_u64().is_some_and(|t| t > 0),
        "{generate}"
    );
    // Both count as cancelled runs, the one that never started included.
    let (_, _, metrics) = s.exchange("GET", "/metrics", &[], None);
    assert!(
        metrics
            .lines()
            .any(|l| l == "agentrt_pipeline_runs_total{outcome=\"cancelled\"} 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("pipeline_runs"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (_, stats) = s.get("/stats");
    assert_eq!(
        stats["endpoints"]["/v1/pipeline/runs"]["errors"]["COMM_004"], 2,
        "{stats}"
    );
    // Both slots are free again.
    let (status, _, again) = submit(&s, TASK);
    assert_eq!(status, 202, "{again}");
    let id = again["id"].as_str().expect("id");
    s.exchange("DELETE", &format!("/v1/pipeline/runs/{id}"), &[], None);
}

/// A terminated server cancels its running runs before it waits on its connections: a client
/// watching a run's events does not keep the server (and the run) going. A run still waiting
/// for a worker stays queued, and the next start runs it.
#[test]
fn a_terminated_server_cancels_runs_whose_events_are_being_watched() {
    let store = fresh_store_path();
    let store_env = store.to_str().expect("utf-8 path").to_string();
    let env = [
        ("AGENTRT_STORE", store_env.as_str()),
        ("AGENTRT_DRAIN_SECONDS", "3"),
        ("AGENTRT_RUN_WORKERS", "1"),
    ];
    let s = Server::start_with_env(&[], &env);
    let (status, headers, run) = s.exchange(
        "POST",
        "/v1/pipeline/runs",
        &[],
        Some(&json!({"task_description": TASK, "max_retries": 2})),
    );
    assert_eq!(status, 202, "{run} {headers:?}");
    let run: Value = serde_json::from_str(&run).expect("json");
    let id = run["id"].as_str().expect("id").to_string();
    wait_until("the run to start", Duration::from_secs(60), || {
        get_run(&s, &id)["state"] == "running"
    });
    let (_, _, waiting) = submit(&s, TASK);
    let waiting_id = waiting["id"].as_str().expect("id").to_string();
    let watcher = {
        let base = s.base.clone();
        let id = id.clone();
        std::thread::spawn(move || read_events_raw(&base, &id, 0, Duration::from_secs(120)))
    };
    std::thread::sleep(Duration::from_millis(300));
    s.terminate();
    // Draining: a new run is refused at once (it would only be cancelled when the drain ends),
    // while other routes are still served.
    wait_until("the drain to begin", Duration::from_secs(10), || {
        s.get("/health/ready").0 == 503
    });
    let (status, headers, refused) = s.exchange(
        "POST",
        "/v1/pipeline/runs",
        &[],
        Some(&json!({"task_description": TASK})),
    );
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused.contains("QUEUE_001") && refused.contains("shutting down"),
        "{refused}"
    );
    assert!(header(&headers, "retry-after").is_some(), "{headers:?}");
    assert_eq!(s.get("/health").0, 200);
    let exit = s
        .wait_exit(Duration::from_secs(40))
        .expect("the server exits while its run's events are watched");
    assert!(exit.success(), "{exit:?}");
    let (ended, text) = watcher.join().expect("watcher");
    assert!(ended, "{text}");
    let all = parse_sse(text.split_once("\r\n\r\n").map_or("", |(_, b)| b));
    let (_, kind, done) = all.last().expect("events");
    assert_eq!(kind, "done", "{text}");
    assert_eq!(done["state"], "cancelled", "{done}");
    // Told apart from a client's cancel: the shutdown stopped it.
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the server shut down")),
        "{done}"
    );
    // A clean stop leaves every run in the store file itself, its log folded in.
    let log = agentrt::paths::beside(&store, "-wal");
    assert_eq!(
        std::fs::metadata(&log).map_or(0, |m| m.len()),
        0,
        "{}",
        log.display()
    );
    let opened = agentrt::store::Store::open(&store).expect("open the store");
    let stored = opened.run(&id).expect("read").expect("the run is stored");
    assert_eq!(stored.state.as_str(), "cancelled");
    let parked = opened
        .run(&waiting_id)
        .expect("read")
        .expect("the run is stored");
    assert_eq!(parked.state.as_str(), "queued", "{parked:?}");
    drop(opened);

    let s = Server::start_with_env(&[], &env);
    let resumed = events(&s, &waiting_id, &[]);
    assert_eq!(resumed.last().map(|e| e.1.as_str()), Some("done"));
    assert_eq!(get_run(&s, &waiting_id)["state"], "completed");
}

#[test]
fn a_killed_server_keeps_finished_runs_and_marks_interrupted_ones_failed() {
    let store = fresh_store_path();
    let store_env = store.to_str().expect("utf-8 path").to_string();
    let (done_id, midway_id) = kill_and_restart(&[("AGENTRT_STORE", store_env.as_str())]);
    let _ = (done_id, midway_id);
    let opened = agentrt::store::Store::open(&store).expect("open the store");
    assert_eq!(opened.check_integrity().expect("integrity check"), Ok(()));
}

/// A run left queued whose stored request cannot be read back as a submission (a store
/// written by another build, a damaged row) is closed at start with `RUN_002` saying so,
/// while a readable one beside it runs.
#[test]
fn a_queued_run_whose_request_cannot_be_run_again_is_closed_at_start() {
    let store = fresh_store_path();
    let (unreadable, readable) = ("0".repeat(32), "1".repeat(32));
    {
        let opened = agentrt::store::Store::open(&store).expect("open the store");
        opened
            .insert_run(
                &unreadable,
                &json!({"task": "a shape of another build"}),
                None,
            )
            .expect("insert");
        let request = json!({"task_description": TASK, "language": "python", "max_retries": 0});
        opened
            .insert_run(&readable, &request, None)
            .expect("insert");
    }
    let store_env = store.to_str().expect("utf-8 path");
    let s = Server::start_with_env(&[], &[("AGENTRT_STORE", store_env)]);
    let closed = get_run(&s, &unreadable);
    assert_eq!(closed["state"], "failed", "{closed}");
    assert_eq!(closed["error"]["code"], "RUN_002", "{closed}");
    assert!(
        closed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot be run again")),
        "{closed}"
    );
    let ran = events(&s, &readable, &[]);
    assert_eq!(ran.last().map(|e| e.1.as_str()), Some("done"));
    assert_eq!(get_run(&s, &readable)["state"], "completed");
}

/// The same crash on a PostgreSQL store, then a second host on the same database: it serves
/// the runs the first one stored, and its start leaves the first host's runs alone.
#[test]
fn on_postgres_a_killed_server_keeps_its_runs_and_another_host_serves_them() {
    let Some(url) = postgres_schema_url() else {
        return;
    };
    let host_a = [
        ("AGENTRT_STORE", url.as_str()),
        ("AGENTRT_INSTANCE", "host-a"),
    ];
    let (done_id, midway_id) = kill_and_restart(&host_a);
    let a = Server::start_with_env(&[], &host_a);
    let (_, _, running) = submit(&a, TASK);
    let running_id = running["id"].as_str().expect("id").to_string();
    let b = Server::start_with_env(
        &[],
        &[
            ("AGENTRT_STORE", url.as_str()),
            ("AGENTRT_INSTANCE", "host-b"),
        ],
    );
    for id in [&done_id, &midway_id] {
        assert_eq!(
            get_run(&b, id),
            get_run(&a, id),
            "host b reads what host a stored"
        );
    }
    let state = get_run(&b, &running_id)["state"].clone();
    assert!(
        state == "queued" || state == "running" || state == "completed",
        "host b's start did not interrupt host a's run: {state}"
    );
    let (status, listed) = b.get("/v1/pipeline/runs?limit=10");
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed["data"].as_array().expect("runs").len() >= 3,
        "{listed}"
    );
    // The same instance name twice on one database is refused.
    let (ok, _, err) = run_cli_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("AGENTRT_STORE", url.as_str()),
            ("AGENTRT_INSTANCE", "host-b"),
        ],
    );
    assert!(!ok && err.contains("STORE_001"), "{err}");
    // Cancelling goes through the host running it; host b says so while it runs.
    let (status, _, text) = b.exchange(
        "DELETE",
        &format!("/v1/pipeline/runs/{running_id}"),
        &[],
        None,
    );
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(status, 409, "{body}");
    let code = error_code(&body);
    assert!(code == "RUN_003" || code == "RUN_001", "{body}");
    // Host b streams host a's run to its end by following the store.
    let followed = events(&b, &running_id, &[]);
    assert_eq!(
        followed.last().map(|e| e.1.as_str()),
        Some("done"),
        "{followed:?}"
    );
    let numbers: Vec<i64> = followed.iter().map(|e| e.0).collect();
    assert_eq!(numbers, (1..=numbers.len() as i64).collect::<Vec<_>>());
    drop((a, b));
    // The doctor checks the database like the file.
    let (_, stdout, stderr) =
        run_cli_env(&["doctor", "--json"], &[("AGENTRT_STORE", url.as_str())]);
    let report: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout}{stderr}"));
    let store_check = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "store")
        .expect("a store check")
        .clone();
    assert_eq!(store_check["status"], "ok", "{store_check}");
    assert!(
        store_check["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("integrity ok"),
        "{store_check}"
    );
    let opened = agentrt::store::open_shared(&url).expect("open the store");
    assert_eq!(opened.check_integrity().expect("integrity check"), Ok(()));
}

/// A stream following a run that another host executes (read from the shared store) ends when
/// this server shuts down, without `done`: the server exits at once instead of serving it for
/// up to its request deadline, and the client resumes on another host.
#[test]
fn on_postgres_a_stream_following_another_hosts_run_ends_when_the_server_stops() {
    let Some(url) = postgres_schema_url() else {
        return;
    };
    // Another host, alive (this test holds its instance lock), in the middle of a run.
    let busy = agentrt::store::postgres::PgStore::connect(&url, "host-busy", true)
        .expect("connect as another host");
    busy.insert_run("elsewhere", &json!({"task_description": TASK}), None)
        .expect("insert");
    busy.set_running("elsewhere").expect("running");
    let started = agentrt::store::StoredEvent {
        seq: 1,
        at_ms: 0,
        kind: "stage_started".into(),
        data: json!({"type": "stage_started", "stage": "generate"}).to_string(),
    };
    busy.append_event("elsewhere", &started).expect("event");
    let s = Server::start_with_env(
        &[],
        &[
            ("AGENTRT_STORE", url.as_str()),
            ("AGENTRT_INSTANCE", "host-following"),
            ("AGENTRT_DRAIN_SECONDS", "1"),
        ],
    );
    let watcher = {
        let base = s.base.clone();
        std::thread::spawn(move || read_events_raw(&base, "elsewhere", 0, Duration::from_secs(120)))
    };
    // The stream is open and has sent the stored event; the run goes on elsewhere.
    std::thread::sleep(Duration::from_secs(1));
    s.terminate();
    let exit = s
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits while it follows another host's run");
    assert!(exit.success(), "{exit:?}");
    let (ended, text) = watcher.join().expect("watcher");
    assert!(ended, "{text}");
    let events = parse_sse(text.split_once("\r\n\r\n").map_or("", |(_, b)| b));
    let kinds: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(kinds, ["stage_started"], "{text}");
    assert_eq!(
        busy.run("elsewhere")
            .expect("read")
            .expect("run")
            .state
            .as_str(),
        "running",
        "the other host's run is left to it"
    );
}

/// Finish one run, kill -9 the server in the middle of a second with a third queued behind it,
/// restart on the same store: the first is unchanged, the second failed with RUN_002, the
/// third (accepted, never started) runs to its end after the restart. Returns the first two
/// ids.
fn kill_and_restart(env: &[(&str, &str)]) -> (String, String) {
    // One worker, so that the third run waits in the queue.
    let env = &[env, &[("AGENTRT_RUN_WORKERS", "1")]].concat();
    let s = Server::start_with_env(&[], env);
    let (_, _, done) = submit(&s, TASK);
    let done_id = done["id"].as_str().expect("id").to_string();
    events(&s, &done_id, &[]);
    let before = get_run(&s, &done_id);
    assert_eq!(before["state"], "completed", "{before}");
    // Read while no call is being counted (the first run's are stored): a count caught between
    // memory and the store could be one ahead of what the crash leaves.
    let (_, stats) = s.get("/stats");
    let generator_calls = stats["plugins"]["generator"]["requests"]
        .as_u64()
        .expect("generator counted");
    // Plugin counters are stored by a thread of their own: wait until they are, so the crash
    // below is what is tested, not that thread's timing.
    let named = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let location = named("AGENTRT_STORE").expect("a store named");
    // A shared PostgreSQL store keeps each host's counters under its instance name.
    let open = || -> Result<std::sync::Arc<dyn agentrt::store::RunStore>, _> {
        match named("AGENTRT_INSTANCE") {
            Some(instance) => agentrt::store::postgres::PgStore::connect(location, instance, false)
                .map(|s| std::sync::Arc::new(s) as _),
            None => agentrt::store::open_shared(location),
        }
    };
    let stored_calls = || {
        open()
            .and_then(|store| store.load_plugin_stats())
            .ok()
            .and_then(|all| all.into_iter().find(|(name, _)| name == "generator"))
            .map_or(0, |(_, counter)| counter.requests)
    };
    wait_until(
        "the generator's count to be stored",
        Duration::from_secs(60),
        || stored_calls() >= generator_calls,
    );
    let (_, _, midway) = submit(&s, TASK);
    let midway_id = midway["id"].as_str().expect("id").to_string();
    wait_until("the second run to start", Duration::from_secs(60), || {
        get_run(&s, &midway_id)["events"].as_u64().unwrap_or(0) >= 2
    });
    let (_, _, waiting) = submit(&s, TASK);
    let waiting_id = waiting["id"].as_str().expect("id").to_string();
    assert_eq!(get_run(&s, &waiting_id)["state"], "queued");
    s.kill();

    let s = Server::start_with_env(&[], env);
    // Per-plugin statistics were kept in the store and carry on after the crash.
    let (_, stats) = s.get("/stats");
    assert!(
        stats["plugins"]["generator"]["requests"].as_u64() >= Some(generator_calls),
        "{stats}"
    );
    let after = get_run(&s, &done_id);
    assert_eq!(after, before, "a finished run is unchanged by the crash");
    let interrupted = get_run(&s, &midway_id);
    assert_eq!(interrupted["state"], "failed", "{interrupted}");
    assert_eq!(interrupted["error"]["code"], "RUN_002", "{interrupted}");
    let all = events(&s, &midway_id, &[]);
    assert_eq!(all.last().map(|e| e.1.as_str()), Some("done"));
    // The accepted run that had not started is not lost: it runs now.
    let resumed = events(&s, &waiting_id, &[]);
    assert_eq!(
        resumed.first().map(|e| e.0),
        Some(1),
        "its events start at 1: {resumed:?}"
    );
    assert_eq!(resumed.last().map(|e| e.1.as_str()), Some("done"));
    let finished = get_run(&s, &waiting_id);
    assert_eq!(finished["state"], "completed", "{finished}");
    (done_id, midway_id)
}

/// A run as stored (JSON) with its events (number, type, data).
type RunRows = (Value, Vec<(i64, String, String)>);

/// Every run of a store with its events, for comparing two stores row for row.
fn dump(path: &std::path::Path) -> Vec<RunRows> {
    let store = agentrt::store::Store::open(path).expect("open store");
    store
        .list_runs(1000, None, None)
        .expect("runs")
        .into_iter()
        .map(|r| {
            let events = store
                .events_after(&r.id, 0)
                .expect("events")
                .into_iter()
                .map(|e| (e.seq, e.kind, e.data))
                .collect();
            (serde_json::to_value(&r).expect("json"), events)
        })
        .collect()
}

#[test]
fn a_backup_taken_under_load_restores_to_an_identical_store() {
    let store = fresh_store_path();
    let store_env = store.to_str().expect("utf-8 path").to_string();
    let s = Server::start_with_env(&[], &[("AGENTRT_STORE", store_env.as_str())]);
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (status, _, run) = submit(&s, TASK);
            assert_eq!(status, 202, "{run}");
            run["id"].as_str().expect("id").to_string()
        })
        .collect();
    wait_until(
        "the first run to write events",
        Duration::from_secs(60),
        || get_run(&s, &ids[0])["events"].as_u64().unwrap_or(0) >= 2,
    );

    // Backed up while the runs write their events.
    let out = store.with_extension("backup");
    let (ok, stdout, stderr) = run_cli_env(
        &["backup", out.to_str().expect("utf-8"), "--json"],
        &[("AGENTRT_STORE", store_env.as_str())],
    );
    assert!(ok, "{stdout}{stderr}");
    let manifest: Value = serde_json::from_str(&stdout).expect("manifest JSON");
    assert_eq!(manifest["runs"], 2, "{manifest}");

    // Restored elsewhere: the same store, row for row, and consistent.
    let restored = fresh_store_path();
    let restored_env = restored.to_str().expect("utf-8").to_string();
    let (ok, stdout, stderr) = run_cli_env(
        &["restore", out.to_str().expect("utf-8")],
        &[("AGENTRT_STORE", restored_env.as_str())],
    );
    assert!(ok, "{stdout}{stderr}");
    // Read a copy: opening the backup itself would change it.
    let scratch = store.with_extension("backup-copy.db");
    std::fs::copy(out.join("store.db"), &scratch).expect("copy the backup");
    let copy = dump(&scratch);
    assert_eq!(copy.len(), 2);
    assert_eq!(dump(&restored), copy);
    let opened = agentrt::store::Store::open(&restored).expect("open restored");
    assert_eq!(opened.check_integrity().expect("check"), Ok(()));

    // Never over the store of a running server.
    let (ok, _, stderr) = run_cli_env(
        &["restore", out.to_str().expect("utf-8"), "--force"],
        &[("AGENTRT_STORE", store_env.as_str())],
    );
    assert!(!ok);
    assert!(
        stderr.contains("another agentrt server (pid")
            && stderr.contains("uses it; stop that server first"),
        "{stderr}"
    );
    for id in &ids {
        s.exchange("DELETE", &format!("/v1/pipeline/runs/{id}"), &[], None);
    }
}

#[test]
fn a_run_cancelled_during_its_review_ends_cancelled_not_completed() {
    // A reviewer that keeps calling the model until the host stops it, with a token budget it
    // cannot spend before its deadline: the review is under way for as long as the test needs.
    let manifest = test_plugin_manifest_with(
        "token-loop-reviewer",
        "tokens-per-minute = 200",
        "tokens-per-minute = 100000000",
    );
    let plugins = plugin_folder(
        "review-cancel",
        "token-loop-reviewer",
        "token-loop-reviewer",
        Some(&manifest),
    );
    let config = plugins.join("agentrt.toml");
    std::fs::write(
        &config,
        "[grants.token-loop-reviewer]\nmodels = [\"*\"]\nmax-tokens-per-call = 16\ntokens-per-minute = 100000000\n",
    )
    .expect("write config");
    let s = Server::start(&[
        "--plugins",
        plugins.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    let (status, _, run) = submit(&s, TASK);
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    // Watched on one connection: the reviewer's model calls stream text without a pause, so
    // a read that waits for the stream to fall quiet would wait for the review to end.
    watch_events_until(&s.base, &id, Duration::from_secs(180), |text| {
        text.contains("\"plugin\":\"token-loop-reviewer\"")
    });
    let (status, _, text) = s.exchange("DELETE", &format!("/v1/pipeline/runs/{id}"), &[], None);
    assert_eq!(status, 202, "{text}");
    let all = events(&s, &id, &[]);
    let kinds: Vec<&str> = all.iter().map(|(_, k, _)| k.as_str()).collect();
    let (_, kind, done) = all.last().expect("events");
    assert_eq!(kind, "done", "{kinds:?}");
    // The reviewer's cancelled model call is the cancellation, not a failed review to go on
    // without: the run is not stored as completed with a review it never had.
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(done["error"]["code"], "COMM_004", "{done}");
    assert!(!kinds.contains(&"review"), "{kinds:?}");
    assert_eq!(get_run(&s, &id)["state"], "cancelled");
}

#[test]
fn a_check_that_aborts_a_retry_leaves_the_best_earlier_attempt_to_be_reviewed() {
    // Attempt 1 fails one of its two tests, so the handler retries; attempt 2 carries a marker
    // that marker-check fails on, and the handler aborts on any failed check.
    let plugins = plugin_folder(
        "abort-on-retry",
        "scripted-generator",
        "scripted-generator",
        None,
    );
    for name in ["marker-check", "abort-check-handler"] {
        add_test_plugin(&plugins, name);
    }
    let s = Server::start(&["--plugins", plugins.to_str().expect("utf-8")]);
    let (status, run) = s.post(
        "/v1/pipeline/runs",
        &json!({"task_description": TASK, "max_retries": 1}),
    );
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    let all = events(&s, &id, &[]);
    let kinds: Vec<&str> = all.iter().map(|(_, k, _)| k.as_str()).collect();
    // The second attempt was checked, and marker-check stopped it.
    let second = all
        .iter()
        .find(|(_, k, d)| k == "checks" && d["attempt"] == 2)
        .unwrap_or_else(|| panic!("attempt 2 was never checked: {kinds:?}"));
    assert!(
        second.2["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .any(|c| c["name"] == "marker-check" && c["status"] == "aborted"),
        "{}",
        second.2
    );
    // The run goes on with attempt 1, checked and tested, rather than failing with MARK_001.
    let (_, kind, done) = all.last().expect("events");
    assert_eq!(kind, "done", "{kinds:?}");
    assert_eq!(done["state"], "completed", "{done}");
    let chosen = all
        .iter()
        .find(|(_, k, _)| k == "chosen")
        .unwrap_or_else(|| panic!("no chosen event: {kinds:?}"));
    assert_eq!(chosen.2["attempt"], 1, "{kinds:?}");
    let run = get_run(&s, &id);
    assert_eq!(run["result"]["chosen_attempt"], 1, "{run}");
    let code = run["result"]["code"].as_str().expect("code");
    assert!(!code.contains("ABORT-ME"), "{code}");
    // The generator's alias is reported by the language's name.
    assert_eq!(run["result"]["language"], "python", "{run}");
}
