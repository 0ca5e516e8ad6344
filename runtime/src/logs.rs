//! `agentrt logs analyze FILE`: what the replaced system's operators grepped its logs for —
//! errors and warnings by frequency, slow requests, failures per plugin — from the JSON log
//! (`AGENTRT_LOG_FORMAT=json`, one object per line). Lines in another format are counted
//! and skipped; a file with no JSON log line at all (the default text format) is refused
//! ([`Analysis::unusable`]) rather than summarised as a log without problems.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;

use crate::error_code::ErrorCode;

/// Most distinct problems and slow requests listed.
const TOP: usize = 20;

/// A plugin call's outcomes that mean its request stopped it, in a log written before the
/// audit line said so itself (`stopped_by_request`): cancelled (`COMM_004`) or past the
/// request's deadline (`COMM_003`).
const STOPPED_BY_THE_REQUEST: [&str; 2] = ["COMM_004", "COMM_003"];

/// A warning or error message and how often it was logged.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    pub level: String,
    pub target: String,
    pub message: String,
    pub count: usize,
    pub last_at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SlowRequest {
    pub request_id: String,
    pub method: String,
    pub route: String,
    pub status: u64,
    pub duration_ms: u64,
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PluginCalls {
    pub calls: usize,
    pub failures: usize,
    /// Failures by outcome code (`PLUGIN_004`, ...).
    pub by_outcome: BTreeMap<String, usize>,
    /// Calls cut short by their request (cancelled, or its deadline passed): not failures of
    /// the plugin, as `/stats` counts them too.
    pub stopped: usize,
    pub max_duration_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Analysis {
    pub lines: usize,
    /// Lines that were not JSON log objects.
    pub unparsed: usize,
    pub by_level: BTreeMap<String, usize>,
    pub requests: usize,
    pub requests_by_status: BTreeMap<u64, usize>,
    /// Warnings and errors, most frequent first (the first 20 distinct ones).
    pub problems: Vec<Problem>,
    /// Distinct warnings and errors past those listed.
    pub problems_left_out: usize,
    /// Requests at or over the threshold, slowest first.
    pub slow_requests: Vec<SlowRequest>,
    pub plugins: BTreeMap<String, PluginCalls>,
    /// Pipeline runs that ended, by state (`completed`, `failed`, `cancelled`).
    pub runs_by_state: BTreeMap<String, usize>,
    /// Failed runs by error code.
    pub runs_failed_by_code: BTreeMap<String, usize>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Read a JSON log and summarise it; requests taking `slow_ms` or more are listed.
pub fn analyze(reader: impl BufRead, slow_ms: u64) -> std::io::Result<Analysis> {
    let mut a = Analysis::default();
    let mut problems: BTreeMap<(String, String, String), Problem> = BTreeMap::new();
    // Lines as bytes: one that is not UTF-8 (a crash's output, a plugin's bytes) is a line that
    // does not parse, not the end of the analysis.
    for line in reader.split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        if line.trim().is_empty() {
            continue;
        }
        a.lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            a.unparsed += 1;
            continue;
        };
        let (Some(level), Some(fields)) = (v["level"].as_str(), v.get("fields")) else {
            a.unparsed += 1;
            continue;
        };
        let level = level.to_uppercase();
        *a.by_level.entry(level.clone()).or_default() += 1;
        let target = text(&v["target"]);
        let at = text(&v["timestamp"]);
        if level == "WARN" || level == "ERROR" {
            // The same message with different codes is different problems (a run that failed
            // on a timeout and one that failed on a plugin error).
            let message = match fields["code"].as_str().filter(|c| !c.is_empty()) {
                Some(code) => format!("{} ({code})", text(&fields["message"])),
                None => text(&fields["message"]),
            };
            let key = (level.clone(), target.clone(), message.clone());
            let p = problems.entry(key).or_insert_with(|| Problem {
                level: level.clone(),
                target: target.clone(),
                message,
                count: 0,
                last_at: String::new(),
            });
            p.count += 1;
            p.last_at = at.clone();
        }
        match target.as_str() {
            // A request's closing line has its status; other lines of the target (a stream
            // that failed after its 200) are problems above, not requests of their own.
            "agentrt::http" if fields["status"].is_u64() => {
                a.requests += 1;
                let status = fields["status"].as_u64().unwrap_or(0);
                *a.requests_by_status.entry(status).or_default() += 1;
                let duration_ms = fields["duration_ms"].as_u64().unwrap_or(0);
                if duration_ms >= slow_ms {
                    let span = &v["span"];
                    a.slow_requests.push(SlowRequest {
                        request_id: text(&span["request_id"]),
                        method: text(&span["method"]),
                        route: text(&span["route"]),
                        status,
                        duration_ms,
                        at,
                    });
                    // The slowest are kept as the log is read, not every request of a
                    // low `--slow-ms` over a large log.
                    if a.slow_requests.len() >= 8 * TOP {
                        keep_slowest(&mut a.slow_requests);
                    }
                }
            }
            // Runs a crash left unfinished, closed at the next start: failed runs, one line
            // for all of them.
            "agentrt::runs" if fields["message"] == crate::runs::INTERRUPTED_MESSAGE => {
                let runs = fields["runs"].as_u64().unwrap_or(0) as usize;
                *a.runs_failed_by_code
                    .entry(ErrorCode::RunInterrupted.as_str().to_string())
                    .or_default() += runs;
                *a.runs_by_state.entry("failed".to_string()).or_default() += runs;
            }
            "agentrt::runs" if fields["message"] == "pipeline run ended" => {
                let state = text(&fields["state"]);
                if state == "failed" {
                    let code = text(&fields["code"]);
                    *a.runs_failed_by_code.entry(code).or_default() += 1;
                }
                *a.runs_by_state.entry(state).or_default() += 1;
            }
            "agentrt::audit" => {
                let plugin = text(&fields["plugin"]);
                let outcome = text(&fields["outcome"]);
                let calls = a.plugins.entry(plugin).or_default();
                calls.calls += 1;
                calls.max_duration_ms = calls
                    .max_duration_ms
                    .max(fields["duration_ms"].as_u64().unwrap_or(0));
                let stopped = match fields["stopped_by_request"].as_bool() {
                    Some(said) => said,
                    None => STOPPED_BY_THE_REQUEST.contains(&outcome.as_str()),
                };
                if stopped {
                    calls.stopped += 1;
                } else if outcome != "ok" {
                    calls.failures += 1;
                    *calls.by_outcome.entry(outcome).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    a.problems = problems.into_values().collect();
    a.problems
        .sort_by(|x, y| y.count.cmp(&x.count).then(x.message.cmp(&y.message)));
    a.problems_left_out = a.problems.len().saturating_sub(TOP);
    a.problems.truncate(TOP);
    keep_slowest(&mut a.slow_requests);
    Ok(a)
}

/// The [`TOP`] slowest of `requests`, slowest first (of equal ones, the earliest read).
fn keep_slowest(requests: &mut Vec<SlowRequest>) {
    requests.sort_by_key(|r| std::cmp::Reverse(r.duration_ms));
    requests.truncate(TOP);
}

impl Analysis {
    /// Why this analysis cannot be trusted: lines were read but none was a JSON log line (most
    /// likely the default text format), so "no problems" would only mean "nothing parsed".
    pub fn unusable(&self) -> Option<String> {
        if self.lines == 0 {
            return Some(
                "it holds no log line: is it the file the server logs to? (agentrt logs to \
                 stderr: AGENTRT_LOG_FORMAT=json agentrt serve 2>>server.log)"
                    .into(),
            );
        }
        (self.unparsed == self.lines).then(|| {
            format!(
                "none of its {} lines is a JSON log line: agentrt logs text to stderr unless \
                 started with AGENTRT_LOG_FORMAT=json (e.g. `AGENTRT_LOG_FORMAT=json agentrt \
                 serve 2>>server.log`), and only that format can be analysed",
                self.lines
            )
        })
    }

    /// The report for a terminal.
    pub fn print(&self, slow_ms: u64) {
        let levels: Vec<String> = self
            .by_level
            .iter()
            .map(|(l, n)| format!("{n} {l}"))
            .collect();
        println!("{} lines: {}", self.lines, levels.join(", "));
        if self.unparsed > 0 {
            println!(
                "  {} lines were not JSON log objects (start the server with AGENTRT_LOG_FORMAT=json)",
                self.unparsed
            );
        }
        let statuses: Vec<String> = self
            .requests_by_status
            .iter()
            .map(|(s, n)| format!("{n}× {s}"))
            .collect();
        println!("\n{} requests: {}", self.requests, statuses.join(", "));
        println!("\nwarnings and errors, most frequent first:");
        if self.problems.is_empty() {
            println!("  none");
        }
        for p in &self.problems {
            println!(
                "  {:>5}× {} {}: {} (last {})",
                p.count, p.level, p.target, p.message, p.last_at
            );
        }
        if self.problems_left_out > 0 {
            println!("  … and {} less frequent ones", self.problems_left_out);
        }
        println!("\nrequests of {slow_ms} ms or more, slowest first:");
        if self.slow_requests.is_empty() {
            println!("  none");
        }
        for r in &self.slow_requests {
            println!(
                "  {:>7} ms {} {} → {} (request {}, {})",
                r.duration_ms, r.method, r.route, r.status, r.request_id, r.at
            );
        }
        println!("\npipeline runs ended:");
        if self.runs_by_state.is_empty() {
            println!("  none");
        }
        for (state, n) in &self.runs_by_state {
            let codes: Vec<String> = match state.as_str() {
                "failed" => self
                    .runs_failed_by_code
                    .iter()
                    .map(|(code, n)| format!("{n}× {code}"))
                    .collect(),
                _ => Vec::new(),
            };
            if codes.is_empty() {
                println!("  {n} {state}");
            } else {
                println!("  {n} {state} ({})", codes.join(", "));
            }
        }
        println!("\nplugin calls:");
        for (name, c) in &self.plugins {
            let outcomes: Vec<String> = c
                .by_outcome
                .iter()
                .map(|(o, n)| format!("{n}× {o}"))
                .collect();
            println!(
                "  {name}: {} calls, {} failed{}{}; slowest {} ms",
                c.calls,
                c.failures,
                if outcomes.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", outcomes.join(", "))
                },
                if c.stopped == 0 {
                    String::new()
                } else {
                    format!(", {} stopped by their request", c.stopped)
                },
                c.max_duration_ms
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"timestamp":"t1","level":"INFO","fields":{"message":"plugin call","plugin":"generator","duration_ms":900,"outcome":"ok"},"target":"agentrt::audit","span":{"request_id":"r1","name":"request"}}
{"timestamp":"t2","level":"WARN","fields":{"message":"plugin call","plugin":"python-quality","duration_ms":30001,"outcome":"PLUGIN_004"},"target":"agentrt::audit"}
{"timestamp":"t3","level":"INFO","fields":{"message":"request finished","status":200,"duration_ms":1500},"target":"agentrt::http","span":{"request_id":"r1","method":"POST","route":"/pipeline","name":"request"}}
{"timestamp":"t4","level":"INFO","fields":{"message":"request finished","status":400,"duration_ms":3},"target":"agentrt::http","span":{"request_id":"r2","method":"POST","route":"/chat","name":"request"}}
{"timestamp":"t5","level":"WARN","fields":{"message":"generated tests not run"},"target":"agentrt::pipeline"}
{"timestamp":"t6","level":"WARN","fields":{"message":"generated tests not run"},"target":"agentrt::pipeline"}
2026-11-26T00:00:00Z  INFO agentrt: a text-format line
{"timestamp":"t7","level":"ERROR","fields":{"message":"event not stored: disk full"},"target":"agentrt::runs"}
"#;

    /// A text-format log is refused, not reported as a log without warnings or errors.
    #[test]
    fn a_log_without_json_lines_is_unusable() {
        let text = "2026-11-26T00:00:00Z  WARN agentrt: no API keys configured\n\
                    2026-11-26T00:00:01Z ERROR agentrt::runs: event not stored\n";
        let a = analyze(text.as_bytes(), 1000).expect("analyze");
        assert_eq!((a.lines, a.unparsed), (2, 2));
        let why = a.unusable().expect("refused");
        assert!(why.contains("AGENTRT_LOG_FORMAT=json"), "{why}");
        // One JSON line is enough to analyse; an empty file (the wrong one, most likely) is
        // not a clean log either.
        assert!(
            analyze(LOG.as_bytes(), 1000)
                .expect("analyze")
                .unusable()
                .is_none()
        );
        let why = analyze(&b"\n\n"[..], 1000)
            .expect("analyze")
            .unusable()
            .expect("refused");
        assert!(why.contains("no log line"), "{why}");
    }

    #[test]
    fn pipeline_runs_are_counted_by_state_and_failures_by_code() {
        let log = r#"{"timestamp":"t1","level":"INFO","fields":{"message":"pipeline run ended","run":"a","ms":5,"state":"completed"},"target":"agentrt::runs"}
{"timestamp":"t2","level":"WARN","fields":{"message":"pipeline run ended","run":"b","ms":5,"state":"failed","code":"PLUGIN_004"},"target":"agentrt::runs"}
{"timestamp":"t3","level":"WARN","fields":{"message":"pipeline run ended","run":"c","ms":5,"state":"failed","code":"GEN_003"},"target":"agentrt::runs"}
{"timestamp":"t4","level":"INFO","fields":{"message":"pipeline run ended","run":"d","ms":5,"state":"cancelled","code":"COMM_004"},"target":"agentrt::runs"}
{"timestamp":"t5","level":"WARN","fields":{"message":"unfinished runs closed as failed (RUN_002)","runs":3,"left_by":"the previous server or a host that is gone","store":"/s.db"},"target":"agentrt::runs"}
"#;
        let a = analyze(log.as_bytes(), 1000).expect("analyze");
        let states: Vec<(&str, usize)> = a
            .runs_by_state
            .iter()
            .map(|(s, n)| (s.as_str(), *n))
            .collect();
        // The three runs a crash left, closed at the next start, are failed runs too.
        assert_eq!(states, [("cancelled", 1), ("completed", 1), ("failed", 5)]);
        assert_eq!(a.runs_failed_by_code["PLUGIN_004"], 1);
        assert_eq!(a.runs_failed_by_code["GEN_003"], 1);
        assert_eq!(a.runs_failed_by_code["RUN_002"], 3);
        // Each failure code is a problem of its own.
        let problems: Vec<&str> = a.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            problems,
            [
                "pipeline run ended (GEN_003)",
                "pipeline run ended (PLUGIN_004)",
                "unfinished runs closed as failed (RUN_002)"
            ]
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_one_unparsed_line() {
        let mut log = LOG.as_bytes().to_vec();
        log.extend_from_slice(b"\xff\xfe crash output\n");
        log.extend_from_slice(LOG.lines().next().expect("line").as_bytes());
        log.push(b'\n');
        let a = analyze(log.as_slice(), 1000).expect("analyze");
        assert_eq!((a.lines, a.unparsed), (10, 2));
        assert_eq!(a.plugins["generator"].calls, 2);
    }

    #[test]
    fn a_failed_stream_is_a_problem_not_a_request_and_only_the_slowest_are_kept() {
        let mut log = String::from(
            r#"{"timestamp":"t0","level":"WARN","fields":{"message":"streamed answer failed: MODEL_002","error":"x"},"target":"agentrt::http"}"#,
        );
        log.push('\n');
        for ms in 0..500u64 {
            log.push_str(&format!(
                r#"{{"timestamp":"t{ms}","level":"INFO","fields":{{"message":"request finished","status":200,"duration_ms":{ms}}},"target":"agentrt::http"}}"#
            ));
            log.push('\n');
        }
        let a = analyze(log.as_bytes(), 0).expect("analyze");
        assert_eq!(a.requests, 500);
        assert_eq!(a.requests_by_status.get(&0), None);
        assert_eq!(a.problems[0].message, "streamed answer failed: MODEL_002");
        let slowest: Vec<u64> = a.slow_requests.iter().map(|r| r.duration_ms).collect();
        assert_eq!(slowest, (480..500).rev().collect::<Vec<u64>>());
    }

    #[test]
    fn counts_levels_problems_slow_requests_and_plugin_failures() {
        let a = analyze(LOG.as_bytes(), 1000).expect("analyze");
        assert_eq!(a.lines, 8);
        assert_eq!(a.unparsed, 1);
        assert_eq!(a.by_level.get("WARN"), Some(&3));
        assert_eq!(a.by_level.get("ERROR"), Some(&1));
        assert_eq!(a.requests, 2);
        assert_eq!(a.requests_by_status.get(&400), Some(&1));
        assert_eq!(a.problems[0].message, "generated tests not run");
        assert_eq!(
            (a.problems[0].count, a.problems[0].last_at.as_str()),
            (2, "t6")
        );
        assert_eq!(a.problems.len(), 3);
        assert_eq!(a.slow_requests.len(), 1);
        let slow = &a.slow_requests[0];
        assert_eq!(
            (
                slow.request_id.as_str(),
                slow.route.as_str(),
                slow.duration_ms
            ),
            ("r1", "/pipeline", 1500)
        );
        let quality = &a.plugins["python-quality"];
        assert_eq!((quality.calls, quality.failures), (1, 1));
        assert_eq!(quality.by_outcome.get("PLUGIN_004"), Some(&1));
        assert_eq!(a.plugins["generator"].failures, 0);
    }

    #[test]
    fn a_call_its_request_stopped_is_not_a_failure_of_the_plugin() {
        let call = |outcome: &str| {
            format!(
                r#"{{"timestamp":"t","level":"INFO","fields":{{"message":"plugin call","plugin":"generator","duration_ms":5,"outcome":"{outcome}"}},"target":"agentrt::audit"}}"#
            )
        };
        let log = ["ok", "COMM_004", "COMM_003", "GEN_003"]
            .map(call)
            .join("\n");
        let a = analyze(log.as_bytes(), 1000).expect("analysis");
        let generator = &a.plugins["generator"];
        assert_eq!(
            (generator.calls, generator.failures, generator.stopped),
            (4, 1, 2)
        );
        assert_eq!(generator.by_outcome.len(), 1, "{generator:?}");
        // Where the line says whether its request stopped it, that decides, not the code: a
        // plugin's own deadline code is its failure, a cancelled call's error is not.
        let said = |outcome: &str, stopped: bool| {
            call(outcome).replace(
                r#""outcome":"#,
                &format!(r#""stopped_by_request":{stopped},"outcome":"#),
            )
        };
        let log = [said("COMM_003", false), said("PLUGIN_003", true)].join("\n");
        let a = analyze(log.as_bytes(), 1000).expect("analysis");
        let generator = &a.plugins["generator"];
        assert_eq!((generator.failures, generator.stopped), (1, 1));
        assert_eq!(generator.by_outcome.get("COMM_003"), Some(&1));
    }
}
