//! `GET /openapi.json`: the HTTP API as an OpenAPI 3.1 document.
//!
//! Written here beside the routes rather than derived from them (the handlers take loosely
//! typed JSON and the seed's adapters keep their old shapes). Two tests keep it honest: every
//! route of [`super::app`] is documented and nothing else is, and the e2e suite requests every
//! documented operation against a live server. The error codes, the run states and each route's
//! auth scope come from the code itself ([`crate::error_code::ALL`], [`RunState`],
//! [`super::auth::required`]); unit tests hold the `Stats` schema to what `/stats` serialises.

use serde_json::{Value, json};

use super::auth::{Scope, required};
use crate::error_code::ALL;
use crate::store::RunState;

/// A JSON schema reference into `components.schemas`.
fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(schema_value: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema_value}}})
}

fn ok(description: &str, schema_value: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema_value}}})
}

/// `op` answering 202 Accepted (work goes on after the answer) instead of 200.
fn accepted(mut op: Value) -> Value {
    if let Some(responses) = op["responses"].as_object_mut()
        && let Some(answer) = responses.remove("200")
    {
        responses.insert("202".into(), answer);
    }
    op
}

/// One operation: its summary, optional request body and 200 answer, plus the error answers
/// every route can give and the security its path needs.
/// `op` with one more documented answer.
fn with_response(status: &str, description: &str, mut op: Value) -> Value {
    op["responses"][status] = json!({ "description": description });
    op
}

fn operation(path: &str, summary: &str, body: Option<Value>, answer: Value) -> Value {
    let mut op = json!({
        "summary": summary,
        "responses": {
            "200": answer,
            "default": {
                "description": "An error; `code` is one of ErrorCode (see docs/ERRORS.md)",
                "content": {"application/json": {"schema": schema("Error")}},
            },
        },
    });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    let (security, scope) = match required(path) {
        None => (json!([]), "open"),
        Some(Scope::User) => (json!([{"bearer": []}, {"apiKey": []}]), "user"),
        Some(Scope::Admin) => (
            json!([{"bearer": ["admin"]}, {"apiKey": ["admin"]}]),
            "admin",
        ),
    };
    op["security"] = security;
    op["x-scope"] = json!(scope);
    op
}

/// An OpenAI request body: its own fields (`own`) and the sampling fields both endpoints take.
/// Fields OpenAI has that would change the answer (`tools`, `logprobs`, penalties...) are
/// taken at their neutral values only and are not listed; those that do not (`user`,
/// `metadata`...) are listed as ignored.
fn openai_request(own: Value, required_fields: &[&str]) -> Value {
    let mut properties = json!({
        "model": {"type": "string"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "description": "max_tokens by its newer name"},
        "temperature": {"type": "number", "minimum": 0},
        "top_p": {"type": "number"},
        "top_k": {"type": "integer", "description": "vLLM's extension; a local model honours it"},
        "repetition_penalty": {"type": "number", "description": "vLLM's extension; a local model honours it"},
        "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "n": {"const": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    });
    let fields = properties.as_object_mut().expect("an object");
    for ignored in super::openai::IGNORED_FIELDS {
        fields.insert(
            (*ignored).to_string(),
            json!({"description": "accepted and ignored"}),
        );
    }
    if let Value::Object(own) = own {
        fields.extend(own);
    }
    object(properties, required_fields)
}

fn object(properties: Value, required_fields: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required_fields})
}

/// Every state a run can be in, in the order a run goes through them. Walked through an
/// exhaustive match, so a new [`RunState`] does not compile until it is placed here too, and
/// the document's `Run.state` cannot name a state the store never writes.
fn run_states() -> Vec<RunState> {
    let next = |state: RunState| match state {
        RunState::Queued => Some(RunState::Running),
        RunState::Running => Some(RunState::Completed),
        RunState::Completed => Some(RunState::Failed),
        RunState::Failed => Some(RunState::Cancelled),
        RunState::Cancelled => None,
    };
    std::iter::successors(Some(RunState::Queued), |s| next(*s)).collect()
}

/// The counters `GET /stats` gives for the totals and for each endpoint and plugin
/// ([`crate::stats::Counter`]).
fn stats_counter() -> Value {
    object(
        json!({
            "requests": {"type": "integer"},
            "failures": {"type": "integer"},
            "tokens": {"type": "integer"},
            "total_latency_ms": {"type": "integer"},
            "max_latency_ms": {"type": "integer"},
            "avg_latency_ms": {"type": "number"},
            "errors": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Failures by error code (a plugin's own codes too; past 64 distinct codes the rest count under OTHER)",
            },
        }),
        &[
            "requests",
            "failures",
            "tokens",
            "total_latency_ms",
            "max_latency_ms",
            "avg_latency_ms",
            "errors",
        ],
    )
}

/// The document.
pub fn document() -> Value {
    let codes: Vec<&str> = ALL.iter().map(|c| c.as_str()).collect();
    let states: Vec<&str> = run_states().into_iter().map(RunState::as_str).collect();
    let any = json!({"type": "object"});
    let run_id =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let sse = |description: &str| json!({"description": description, "content": {"text/event-stream": {"schema": {"type": "string"}}}});
    let html = |description: &str, kind: &str| json!({"description": description, "content": {kind: {"schema": {"type": "string"}}}});
    let paths = json!({
        "/": {"get": operation("/", "The web console: submit tasks and watch runs live, past runs, plugins, statistics", None, html("The console page", "text/html"))},
        "/console/{file}": {"get": with_parameters(
            operation("/console/{file}", "The console's script and style sheet", None, html("console.js or console.css", "text/javascript")),
            json!([{"name": "file", "in": "path", "required": true, "schema": {"enum": ["console.js", "console.css"]}}]),
        )},
        "/generate": {"post": operation("/generate", "Generate code and tests for a task (the generator plugin)", Some(json_body(schema("Task"))), ok("The code, the tests and how they were made", schema("Generation")))},
        "/review": {"post": operation("/review", "Review code: quality checks, the tests run in the sandbox, the reviewer's verdict", Some(json_body(schema("Code"))), ok("Verdict, score, summary, findings and test results", schema("ReviewResult")))},
        "/check": {"post": operation("/check", "Run the quality checks only (no model)", Some(json_body(schema("Code"))), ok("Findings of every check", schema("Findings")))},
        "/pipeline": {"post": operation("/pipeline", "The whole pipeline, synchronously: generate, check, test (with retries), review", Some(json_body(schema("Task"))), ok("Every stage's result", any.clone()))},
        "/chat": {"post": operation("/chat", "One message to the model", Some(json_body(schema("ChatRequest"))), ok("The answer", schema("ChatAnswer")))},
        "/health": {"get": operation("/health", "Models and plugins loaded, uptime, version; always 200, whatever `status` says (probes use /health/ready)", None, ok("Health", schema("Health")))},
        "/health/live": {"get": operation("/health/live", "Liveness: the process answers", None, ok("Alive", any.clone()))},
        "/health/ready": {"get": not_ready(operation("/health/ready", "Readiness: 503 while starting, while no model can serve, and while draining", None, ok("Ready", schema("Ready"))))},
        "/stats": {"get": operation("/stats", "Requests, failures by code, tokens, latency per endpoint and per plugin", None, ok("Statistics", schema("Stats")))},
        "/models": {"get": operation("/models", "The models served", None, ok("Models", any.clone()))},
        "/plugins": {"get": operation("/plugins", "The plugins in use, and the folder's components hot reload refused", None, ok("Plugins", schema("Plugins")))},
        "/metrics": {"get": operation("/metrics", "Prometheus (OpenMetrics) metrics", None, json!({"description": "OpenMetrics text", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}))},
        "/openapi.json": {"get": operation("/openapi.json", "This document", None, ok("OpenAPI 3.1", any.clone()))},
        "/v1/chat/completions": {"post": operation("/v1/chat/completions", "OpenAI-compatible chat completion; `stream: true` answers server-sent events ending in `data: [DONE]`", Some(json_body(schema("ChatCompletionRequest"))), ok("OpenAI chat.completion (or a stream of chat.completion.chunk)", any.clone()))},
        "/v1/completions": {"post": operation("/v1/completions", "OpenAI-compatible completion; `suffix` fills in the middle on models that support it", Some(json_body(schema("CompletionRequest"))), ok("OpenAI text_completion (or a stream)", any.clone()))},
        "/v1/models": {"get": operation("/v1/models", "OpenAI-compatible model list (with max_model_len)", None, ok("OpenAI list of models", any.clone()))},
        "/v1/models/{id}": {"get": operation("/v1/models/{id}", "One model (404 MODEL_001 for an id this server does not serve)", None, ok("OpenAI model object", any.clone()))},
        "/tokenize": {"post": operation("/tokenize", "Token ids of a prompt or of chat messages (vLLM's shape)", Some(json_body(json!({"type": "object", "additionalProperties": false, "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}, "messages": {"type": "array"}, "add_special_tokens": {"type": "boolean", "default": true, "description": "false: the prompt's text alone, without the BOS the model adds"}}}))), ok("count, max_model_len, tokens", any.clone()))},
        "/v1/pipeline/runs": {
            "post": accepted(operation("/v1/pipeline/runs", "Start a pipeline run; answers at once (202) with its id and a Location (429 QUEUE_001 when the queue is full, or once the server is shutting down)", Some(json_body(schema("Task"))), ok("The run, queued", schema("Run")))),
            "get": with_parameters(
                operation("/v1/pipeline/runs", "Runs, newest first (by creation, then id); with API keys, a user key lists the runs it submitted, an admin key every run; a full page has `next_before` and `next_before_id`, which ask for the next one", None, ok("Runs", any.clone())),
                json!([
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "before", "in": "query", "schema": {"type": "integer"}, "description": "The next page: runs created before this time (ms since the epoch), or at it with an id before `before_id`"},
                    {"name": "before_id", "in": "query", "schema": {"type": "string"}, "description": "With `before`: the last run of the previous page (runs created in the same millisecond are not skipped)"},
                ]),
            ),
        },
        "/v1/pipeline/runs/{id}": {
            "get": with_parameters(operation("/v1/pipeline/runs/{id}", "A run's state and every stage's result (with API keys, another user key's run is 404 NOT_FOUND, as for every route of a run)", None, ok("The run", schema("Run"))), json!([run_id.clone()])),
            "delete": with_parameters(accepted(operation("/v1/pipeline/runs/{id}", "Ask a run to stop (202; it ends at its next stage or token, and the answer waits up to 2 s for its end to be stored, when its `state` is `cancelled`; 409 RUN_001 once it has ended)", None, ok("The run as it stands", schema("Run")))), json!([run_id.clone()])),
        },
        "/v1/pipeline/runs/{id}/events": {
            "get": with_parameters(
                with_response("204", "The run has ended and no event is left after the one asked for (a browser's EventSource stops reconnecting)", operation("/v1/pipeline/runs/{id}/events", "The run's events as server-sent events, each named by its `type`: stage_started, tokens, stage_finished, generated (an attempt's code and tests), checks, tests, retry, recovery (the error handler gave up on a stage: fallback or abort, with its reason), chosen (the attempt that goes to review), review, done (the end state, with the error when the run did not complete)", None, sse("Numbered events; the stream ends after `done`, or, for a run another host executes, when this server shuts down: resume from the last event (Last-Event-ID or `after`)"))),
                json!([run_id, {"name": "after", "in": "query", "schema": {"type": "integer"}, "description": "Resume after this event number (or send Last-Event-ID)"}]),
            ),
        },
    });
    let run = object(
        json!({
            "id": {"type": "string"},
            "object": {"const": "pipeline.run"},
            "state": {"enum": states},
            "created_at_ms": {"type": "integer"},
            "updated_at_ms": {"type": "integer"},
            "request": schema("Task"),
            "stages": {"type": "array"},
            "events": {"type": "integer", "description": "How many events the run has had so far"},
            "links": {"type": "object", "properties": {"self": {"type": "string"}, "events": {"type": "string"}}},
            "result": {"description": "Every stage's result, once the run has ended"},
            "error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
            "cancel_requested": {"type": "boolean", "description": "Only in the answer to a cancellation"},
            "submitted_by": {"type": "string", "description": "With API keys: an opaque id of the key that submitted it (a hash, never the key)"},
            "queue_position": {"type": "integer", "minimum": 1, "description": "While it waits for a worker on this server: 1 when it is next"},
        }),
        &["id", "state"],
    );
    let health_model = object(
        json!({
            "id": {"type": "string"},
            "loaded": {"type": "boolean"},
            "reachable": {"type": "boolean"},
            "error": {"type": "string", "description": "Why it cannot serve (only when unreachable)"},
        }),
        &["id", "loaded", "reachable"],
    );
    let health_plugin = object(
        json!({"name": {"type": "string"}, "world": {"type": "string"}, "loaded": {"type": "boolean"}}),
        &["name", "world", "loaded"],
    );
    let health = object(
        json!({
            "status": {"enum": ["healthy", "degraded", "draining", "starting"], "description": "degraded: some model cannot serve now, or the run store refuses writes; draining: shutting down; starting: still loading (see stage)"},
            "stage": {"type": "string", "description": "While starting: what is being loaded"},
            "model_loaded": {"type": "boolean", "description": "At least one model can serve"},
            "models": {"type": "array", "items": health_model},
            "plugins": {"type": "array", "items": health_plugin},
            "plugins_refused": {"type": "integer", "description": "Components of the plugin folder not in use (GET /plugins says why)"},
            "config_refused": {"type": "boolean", "description": "The config file holds an edit the server refused; the version before it is in use (GET /plugins says why)"},
            "store": object(
                json!({
                    "ok": {"type": "boolean", "description": "The run store takes writes"},
                    "failing": object(
                        json!({
                            "since_ms": {"type": "integer"},
                            "error": {"type": "string"},
                            "failures": {"type": "integer"},
                        }),
                        &["since_ms", "error", "failures"],
                    ),
                }),
                &["ok"],
            ),
            "uptime_seconds": {"type": "integer"},
            "version": {"type": "string"},
        }),
        &[
            "status",
            "model_loaded",
            "models",
            "plugins",
            "uptime_seconds",
            "version",
        ],
    );
    let ready = object(
        json!({
            "status": {"enum": ["ready", "not_ready", "draining", "starting"]},
            "models": {"type": "integer", "description": "Models that can serve now (absent while draining or starting)"},
            "plugins": {"type": "integer", "description": "Plugins loaded (absent while draining or starting)"},
            "stage": {"type": "string", "description": "While starting: what is being loaded"},
            "uptime_seconds": {"type": "integer", "description": "While starting: seconds since the start"},
        }),
        &["status"],
    );
    let stats = object(
        json!({
            "uptime_seconds": {"type": "integer"},
            "totals": schema("Counter"),
            "endpoints": {"type": "object", "additionalProperties": schema("Counter"), "description": "By route, for the routes that do work"},
            "plugins": {"type": "object", "additionalProperties": schema("Counter"), "description": "By plugin name, and python-sandbox for the generated tests' runs (a run with a failing test counts as a failure under TEST_001); kept across restarts"},
        }),
        &["uptime_seconds", "totals", "endpoints", "plugins"],
    );
    let finding = object(
        json!({
            "rule_id": {"type": "string"}, "severity": {"enum": ["info", "warning", "error"]},
            "message": {"type": "string"}, "line": {"type": "integer"}, "column": {"type": "integer"},
            "suggestion": {"type": ["string", "null"]}, "check": {"type": "string"},
        }),
        &["rule_id", "severity", "message", "line"],
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentrt",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A local runtime for a team of code-generating agents. Errors have one shape, {\"error\": {\"code\", \"type\", \"message\", \"details\"}} (the /v1 OpenAI routes use OpenAI's); every 429 carries Retry-After. Routes need an API key of the scope in x-scope when the server has keys.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
            "schemas": {
                "ErrorCode": {"enum": codes},
                // A plugin's error passes with the plugin's own code (502, plugin_error).
                "Error": object(json!({"error": object(json!({
                    "code": {"anyOf": [schema("ErrorCode"), {"type": "string"}]}, "type": {"type": "string"},
                    "message": {"type": "string"}, "details": {},
                }), &["code", "type", "message"])}), &["error"]),
                "Task": object(json!({
                    "task_description": {"type": "string"},
                    "language": {"type": "string", "default": "python"},
                    "max_retries": {"type": "integer", "minimum": 0, "maximum": 2},
                }), &["task_description"]),
                "Code": object(json!({
                    "code": {"type": "string"}, "tests": {"type": "string"},
                    "language": {"type": "string", "default": "python", "description": "/check: python or any language a quality check in use understands; /review: python"},
                    "checks": {"type": "array", "items": {"type": "string"}, "description": "Only these quality checks (by name)"},
                }), &["code"]),
                "Finding": finding,
                "Findings": object(json!({"findings": {"type": "array", "items": schema("Finding")}}), &["findings"]),
                "Generation": object(json!({
                    "code": {"type": "string"}, "tests": {"type": "string"}, "language": {"type": "string"},
                    "model": {"type": "string", "description": "The model the code came from"},
                    "usage": object(json!({"total_tokens": {"type": "integer"}}), &["total_tokens"]),
                    "stages": {"type": "array", "items": {"type": "object"}},
                }), &["code", "tests", "language", "model", "usage", "stages"]),
                "ReviewResult": object(json!({
                    "verdict": {"enum": ["approve", "request_changes", "reject"]},
                    "score": {"type": "number", "minimum": 0, "maximum": 10},
                    "summary": {"type": "string"},
                    "findings": {"type": "array", "items": schema("Finding")},
                    "test_results": {"type": "object"},
                }), &["verdict", "score", "findings"]),
                "ChatRequest": object(json!({
                    "message": {"type": "string"}, "system": {"type": "string"}, "model": {"type": "string"},
                    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 256},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 0, "description": "0 (the default): always the likeliest token, so the same message gets the same answer (after a repetition penalty of 1.1 over the last 64 tokens, as the replaced service sampled; above 0 also top-k 40 and top-p 0.95)"},
                    "seed": {"type": "integer"},
                }), &["message"]),
                "ChatAnswer": object(json!({
                    "response": {"type": "string"}, "model": {"type": "string"},
                    "finish_reason": {"type": "string"},
                    "usage": object(json!({
                        "prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                        "total_tokens": {"type": "integer"},
                    }), &["prompt_tokens", "completion_tokens", "total_tokens"]),
                }), &["response", "model", "finish_reason", "usage"]),
                "ChatCompletionRequest": openai_request(json!({
                    "messages": {"type": "array", "items": object(json!({
                        "role": {"enum": ["system", "developer", "user", "assistant"]},
                        "content": {"oneOf": [
                            {"type": "string"},
                            {"type": "array", "description": "Parts; only `text` ones", "items": object(json!({"type": {"const": "text"}, "text": {"type": "string"}}), &["type", "text"])},
                        ]},
                    }), &["role"])},
                }), &["messages"]),
                "CompletionRequest": openai_request(json!({
                    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 1}]},
                    "suffix": {"type": "string"},
                }), &["prompt"]),
                "Plugins": object(json!({
                    "plugins": {"type": "array", "items": {"type": "object"}},
                    "refused": {"type": "array", "items": object(json!({
                        "file": {"type": "string"}, "code": schema("ErrorCode"), "message": {"type": "string"},
                        "keeping": {"type": ["string", "null"], "description": "The version still in use"},
                    }), &["file", "code", "message"])},
                    "config": object(json!({
                        "file": {"type": ["string", "null"], "description": "The config file (null: none)"},
                        "sha256": {"type": ["string", "null"], "description": "The version in use"},
                        "refused": {"type": ["object", "null"], "description": "An edit not applied (cleared when a version is): its sha256 and the error"},
                    }), &["file", "sha256", "refused"]),
                }), &["plugins", "refused", "config"]),
                // Built above, apart: json! recurses once per entry and per level of nesting,
                // and this document is deep enough already.
                "Run": run,
                "Health": health,
                "Ready": ready,
                "Counter": stats_counter(),
                "Stats": stats,
            },
        },
    })
}

/// `op` with its `parameters`.
fn with_parameters(mut op: Value, parameters: Value) -> Value {
    op["parameters"] = parameters;
    op
}

/// The readiness probe's 503: the same `Ready` body, not the error shape, so a probe (or a
/// person) reads why from the status.
fn not_ready(mut op: Value) -> Value {
    op["responses"]["503"] = json!({
        "description": "Not ready: no model can serve now, or the server is draining",
        "content": {"application/json": {"schema": schema("Ready")}},
    });
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths `super::app` routes, read from its source.
    fn routed_paths() -> Vec<String> {
        let source = include_str!("../server.rs");
        let start = source.find("pub fn app(").expect("app()");
        let body = &source[start..];
        let end = body.find(".fallback(").expect("fallback");
        body[..end]
            .split(".route(")
            .skip(1)
            .filter_map(|r| r.trim_start().strip_prefix('"')?.split('"').next())
            // An axum wildcard (`{*id}`, the rest of the path) is a plain parameter in OpenAPI.
            .map(|p| p.replace("{*", "{"))
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented: Vec<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        let mut routed = routed_paths();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_document_is_complete_where_clients_look() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                assert!(op["summary"].is_string(), "{method} {path}");
                // Its success answer: 200, or 202 where work goes on after it.
                let responses = &op["responses"];
                assert!(
                    responses["200"].is_object() || responses["202"].is_object(),
                    "{method} {path}"
                );
                assert!(op["x-scope"].is_string(), "{method} {path}");
            }
        }
        assert_eq!(doc["paths"]["/plugins"]["get"]["x-scope"], "admin");
        assert_eq!(doc["paths"]["/health/ready"]["get"]["x-scope"], "open");
        assert_eq!(
            doc["paths"]["/v1/chat/completions"]["post"]["x-scope"],
            "user"
        );
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("codes");
        assert_eq!(codes.len(), ALL.len());
    }

    /// `Run.state` names exactly the states a run is stored and served in: what [`RunState`]
    /// serialises to (the document once said `succeeded` where runs say `completed`).
    #[test]
    fn run_states_are_the_ones_the_store_writes() {
        let doc = document();
        let schema_state = &doc["components"]["schemas"]["Run"]["properties"]["state"];
        let mut documented: Vec<String> = schema_state["enum"]
            .as_array()
            .expect("states")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        let mut serialised = Vec::new();
        for state in run_states() {
            let value = serde_json::to_value(state).expect("a state serialises");
            let name = value.as_str().expect("as a string").to_string();
            assert_eq!(name, state.as_str(), "{state:?}");
            assert_eq!(RunState::parse(&name), state, "{name} reads back");
            serialised.push(name);
        }
        documented.sort();
        serialised.sort();
        assert_eq!(documented, serialised);
        assert!(!documented.iter().any(|s| s == "succeeded"));
    }

    /// `Stats` and `Counter` name exactly the fields `GET /stats` serialises.
    #[test]
    fn the_stats_schema_is_what_stats_serialise() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let keys = |v: &Value| -> Vec<String> {
            let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
            keys.sort();
            keys
        };
        let snapshot =
            serde_json::to_value(crate::stats::Stats::default().snapshot()).expect("stats");
        assert_eq!(keys(&schemas["Stats"]["properties"]), keys(&snapshot));
        assert_eq!(
            keys(&schemas["Counter"]["properties"]),
            keys(&snapshot["totals"])
        );
        let paths = &doc["paths"];
        for (path, name) in [("/stats", "Stats"), ("/health", "Health")] {
            let answer = &paths[path]["get"]["responses"]["200"]["content"]["application/json"];
            assert_eq!(
                answer["schema"]["$ref"],
                format!("#/components/schemas/{name}"),
                "{path}"
            );
        }
    }

    /// The events summary names every event type a run emits, and no `error` event (an error
    /// comes inside `done`).
    #[test]
    fn the_events_summary_names_the_event_types() {
        let doc = document();
        assert!(
            doc["paths"]["/v1/pipeline/runs/{id}/events"]["get"]["responses"]["204"].is_object()
        );
        let summary = doc["paths"]["/v1/pipeline/runs/{id}/events"]["get"]["summary"]
            .as_str()
            .expect("summary");
        for kind in [
            "stage_started",
            "tokens",
            "stage_finished",
            "generated",
            "checks",
            "tests",
            "retry",
            "recovery",
            "chosen",
            "review",
            "done",
        ] {
            assert!(summary.contains(kind), "{kind}: {summary}");
        }
        assert!(!summary.contains(" error,"), "{summary}");
    }
}
