//! Route handlers. Each validates its input, runs the blocking work on a blocking thread and
//! records the endpoint's statistics.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::Uri;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::parse_body;
use super::{ApiError, AppState, RequestDeadline};
use crate::engine::chat_template::TemplateMessage;
use crate::engine::{Prompt, SamplingParams};
use crate::error_code::ErrorCode;
use crate::pipeline::{FindingOut, MAX_RETRIES, PipelineRequest};
use crate::plugin::bindings::CodeArtifact;
use axum::Extension;

/// Longest task description or chat message accepted, in characters.
const MAX_TEXT_CHARS: usize = 16_000;
/// Most tokens `/chat` (and `agentrt chat`) generates in one answer.
pub const MAX_CHAT_TOKENS: u32 = 2048;
/// Highest sampling temperature taken, as OpenAI's API takes.
pub const MAX_TEMPERATURE: f32 = 2.0;

type ApiResult = Result<Json<Value>, ApiError>;

fn non_empty(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("{field} must not be empty"),
        )
        .for_field(field));
    }
    at_most(field, value, MAX_TEXT_CHARS)
}

/// `value` of `field`, refused when longer than `limit` characters.
fn at_most(field: &str, value: &str, limit: usize) -> Result<(), ApiError> {
    if value.chars().count() > limit {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("{field} is longer than {limit} characters"),
        )
        .for_field(field));
    }
    Ok(())
}

/// The language of code only to be checked (see [`crate::plugin::language_for_checks`]).
fn checked_language(
    value: Option<String>,
    checks: &[Arc<crate::plugin::Plugin>],
) -> Result<String, ApiError> {
    crate::plugin::language_for_checks(value.as_deref(), checks)
        .map_err(|why| ApiError::new(ErrorCode::InvalidInput, why).for_field("language"))
}

fn language(value: Option<String>) -> Result<String, ApiError> {
    let lang = value.map_or_else(
        || crate::language::PYTHON.to_owned(),
        |l| crate::language::canonical(&l),
    );
    if lang != crate::language::PYTHON {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("language {lang:?} is not supported (supported: python)"),
        )
        .for_field("language"));
    }
    Ok(lang)
}

/// Run blocking work and record the endpoint's statistics: the work answers with its result
/// and the tokens it spent, whether it succeeded or not.
async fn blocking<F>(state: &AppState, endpoint: &'static str, work: F) -> ApiResult
where
    F: FnOnce() -> (Result<Value, ApiError>, u64) + Send + 'static,
{
    let started = Instant::now();
    // A place among the requests worked on at once, held until the work ends (not just until
    // the client is answered: a request cut at its deadline still works until it notices).
    let place = sync_place(state, ", or submit the task to /v1/pipeline/runs")
        .map_err(|busy| record_rejection(state, endpoint, busy))?;
    // The request's span (its id) goes with the work to the blocking thread.
    let span = tracing::Span::current();
    let (result, tokens) = tokio::task::spawn_blocking(move || {
        let _place = place;
        span.in_scope(work)
    })
    .await
    .unwrap_or_else(|e| {
        let failed = ApiError::new(ErrorCode::Internal, format!("worker failed: {e}"));
        (Err(failed), 0)
    });
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(value) => {
            state
                .pipeline
                .stats
                .record_endpoint(endpoint, ms, tokens, None);
            Ok(Json(value))
        }
        Err(e) => {
            state
                .pipeline
                .stats
                .record_endpoint(endpoint, ms, tokens, Some(&e.code));
            Err(e)
        }
    }
}

/// A place among the requests worked on at once (`AGENTRT_SYNC_REQUESTS`), or `QUEUE_001`
/// saying to retry later (and `elsewhere`, where else the work can go).
pub(super) fn sync_place(
    state: &AppState,
    elsewhere: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.sync_slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::QueueFull,
            format!(
                "{} requests are being worked on (AGENTRT_SYNC_REQUESTS); retry later{elsewhere}",
                state.limits.sync_requests
            ),
        )
    })
}

pub(super) fn record_rejection(state: &AppState, endpoint: &str, e: ApiError) -> ApiError {
    state
        .pipeline
        .stats
        .record_endpoint(endpoint, 0, 0, Some(&e.code));
    e
}

/// A pipeline run's stored request ([`GenerateBody::to_json`]) read back as a submission is
/// read: what a starting server runs for the runs a previous process left queued.
pub fn stored_run_request(request: &Value) -> Result<PipelineRequest, String> {
    let body: GenerateBody = serde_json::from_value(request.clone()).map_err(|e| e.to_string())?;
    body.into_request().map_err(|e| e.message)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    task_description: String,
    language: Option<String>,
    max_retries: Option<u32>,
}

impl GenerateBody {
    /// The request as stored with a pipeline run.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "task_description": self.task_description,
            "language": self.language.as_deref().unwrap_or("python"),
            "max_retries": self.max_retries.unwrap_or(1),
        })
    }

    pub(super) fn into_request(self) -> Result<PipelineRequest, ApiError> {
        non_empty("task_description", &self.task_description)?;
        // The pipeline never retries more than MAX_RETRIES times: a larger value would be
        // quietly cut down, and the client would believe it got what it asked.
        if let Some(asked) = self.max_retries.filter(|n| *n > MAX_RETRIES) {
            return Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("max_retries {asked} is more than the pipeline allows (0..={MAX_RETRIES})"),
            )
            .for_field("max_retries"));
        }
        Ok(PipelineRequest {
            task_description: self.task_description,
            language: language(self.language)?,
            max_retries: self.max_retries.unwrap_or(1),
        })
    }
}

pub async fn generate(
    State(state): State<AppState>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let req = parse_body::<GenerateBody>(body)
        .and_then(GenerateBody::into_request)
        .map_err(|e| record_rejection(&state, "/generate", e))?;
    let pipeline = deadline.map_or_else(|| state.pipeline.clone(), |d| d.pipeline(&state.pipeline));
    let default_model = state
        .engine
        .model(None)
        .map(|m| m.info.id.clone())
        .unwrap_or_default();
    blocking(&state, "/generate", move || {
        let mut stages = Vec::new();
        let result = pipeline.generate(&req, &mut stages);
        let tokens: u64 = stages.iter().map(|s| s.tokens).sum();
        let answer = match result {
            Ok(artifact) => Ok(crate::pipeline::report::generation_answer(
                &artifact,
                &stages,
                &default_model,
            )),
            Err(e) => Err(ApiError::from_stage(&e).with_details(json!({ "stages": stages }))),
        };
        (answer, tokens)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    code: String,
    #[serde(default)]
    tests: String,
    language: Option<String>,
    /// Only these checks (by plugin name); all when absent.
    checks: Option<Vec<String>>,
}

impl CodeBody {
    /// The artifact to check or review; an empty module is valid Python, so only a review
    /// (which needs something to read) insists on code.
    fn artifact(
        &self,
        require_code: bool,
        language: impl FnOnce(Option<String>) -> Result<String, ApiError>,
    ) -> Result<CodeArtifact, ApiError> {
        if require_code {
            non_empty("code", &self.code)?;
        } else if self.code.chars().count() > MAX_TEXT_CHARS * 8 {
            return Err(
                ApiError::new(ErrorCode::InvalidInput, "code is too long").for_field("code")
            );
        }
        // The tests go to the sandbox as the code does: no longer than code may be.
        at_most("tests", &self.tests, MAX_TEXT_CHARS * 8)?;
        Ok(CodeArtifact {
            language: language(self.language.clone())?,
            code: self.code.clone(),
            tests: self.tests.clone(),
        })
    }

    fn check_names(&self, state: &AppState) -> Result<Option<Vec<String>>, ApiError> {
        if let Some(names) = &self.checks {
            for n in names {
                if !state
                    .pipeline
                    .plugins
                    .current()
                    .checks
                    .iter()
                    .any(|p| &p.manifest.name == n)
                {
                    return Err(ApiError::new(
                        ErrorCode::PluginNotFound,
                        format!("no quality check named {n:?}"),
                    ));
                }
            }
        }
        Ok(self.checks.clone())
    }
}

pub async fn check(
    State(state): State<AppState>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let (artifact, only) = parse_body::<CodeBody>(body)
        .and_then(|b| {
            let only = b.check_names(&state)?;
            // The language must be one of a check this request runs.
            let checks = state.pipeline.selected_checks(only.as_deref());
            let artifact = b.artifact(false, |l| checked_language(l, &checks))?;
            Ok((artifact, only))
        })
        .map_err(|e| record_rejection(&state, "/check", e))?;
    // With the request's deadline: a check the error handler retries stops when it passes.
    let pipeline = deadline.map_or_else(|| state.pipeline.clone(), |d| d.pipeline(&state.pipeline));
    blocking(&state, "/check", move || {
        let mut stages = Vec::new();
        let (findings, checks) = pipeline.check(&artifact, only.as_deref(), &mut stages);
        let findings: Vec<FindingOut> = findings.iter().map(FindingOut::from).collect();
        (
            Ok(json!({ "findings": findings, "checks": checks, "stages": stages })),
            0,
        )
    })
    .await
}

pub async fn review(
    State(state): State<AppState>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let (artifact, only) = parse_body::<CodeBody>(body)
        .and_then(|b| Ok((b.artifact(true, language)?, b.check_names(&state)?)))
        .map_err(|e| record_rejection(&state, "/review", e))?;
    let pipeline = deadline.map_or_else(|| state.pipeline.clone(), |d| d.pipeline(&state.pipeline));
    blocking(&state, "/review", move || {
        let mut stages = Vec::new();
        let (findings, checks) = pipeline.check(&artifact, only.as_deref(), &mut stages);
        let tests = pipeline.test(&artifact, 1, &mut stages);
        let result = pipeline.review(&artifact, &findings, tests.as_ref(), &mut stages);
        let tokens: u64 = stages.iter().map(|s| s.tokens).sum();
        let answer = match result {
            Ok(review) => {
                let mut v = serde_json::to_value(&review).unwrap_or_default();
                v["checks"] = json!(checks);
                if let Some(tests) = &tests {
                    v["test_results"] = json!(tests);
                }
                v["stages"] = json!(stages);
                Ok(v)
            }
            Err(e) => Err(ApiError::from_stage(&e)
                .with_details(json!({ "checks": checks, "stages": stages }))),
        };
        (answer, tokens)
    })
    .await
}

pub async fn pipeline(
    State(state): State<AppState>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let req = parse_body::<GenerateBody>(body)
        .and_then(GenerateBody::into_request)
        .map_err(|e| record_rejection(&state, "/pipeline", e))?;
    let pipeline = deadline.map_or_else(|| state.pipeline.clone(), |d| d.pipeline(&state.pipeline));
    blocking(&state, "/pipeline", move || {
        let outcome = pipeline.run(&req);
        let tokens = outcome.tokens;
        let value = serde_json::to_value(&outcome).unwrap_or_default();
        let answer = match &outcome.error {
            None => Ok(value),
            Some(e) => Err(ApiError::from_stage(e).with_details(value)),
        };
        (answer, tokens)
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatBody {
    message: String,
    system: Option<String>,
    model: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    seed: Option<u64>,
}

pub async fn chat(
    State(state): State<AppState>,
    deadline: Option<Extension<RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let control = deadline.map(|d| d.control()).unwrap_or_default();
    let body = parse_body::<ChatBody>(body)
        .and_then(|b| {
            non_empty("message", &b.message)?;
            // The system prompt is a prompt as the message is, and bounded as it is.
            at_most(
                "system",
                b.system.as_deref().unwrap_or_default(),
                MAX_TEXT_CHARS,
            )?;
            if b.max_tokens.is_some_and(|n| n == 0 || n > MAX_CHAT_TOKENS) {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    format!("max_tokens must be 1..={MAX_CHAT_TOKENS}"),
                )
                .for_field("max_tokens"));
            }
            if b.temperature
                .is_some_and(|t| !(0.0..=MAX_TEMPERATURE).contains(&t))
            {
                return Err(ApiError::new(
                    ErrorCode::InvalidInput,
                    format!(
                        "temperature must be 0..={MAX_TEMPERATURE} (0: always the likeliest token)"
                    ),
                )
                .for_field("temperature"));
            }
            Ok(b)
        })
        .map_err(|e| record_rejection(&state, "/chat", e))?;
    let model = state
        .engine
        .model(body.model.as_deref())
        .map_err(|e| record_rejection(&state, "/chat", ApiError::from(&e)))?;
    blocking(&state, "/chat", move || {
        let mut messages = Vec::new();
        if let Some(system) = body.system {
            messages.push(TemplateMessage {
                role: "system".into(),
                content: system,
            });
        }
        messages.push(TemplateMessage {
            role: "user".into(),
            content: body.message,
        });
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            max_tokens: body.max_tokens.unwrap_or(256),
            fit_to_context: body.max_tokens.is_none(),
            temperature: body.temperature.unwrap_or(defaults.temperature),
            seed: body
                .seed
                .unwrap_or_else(crate::engine::sampling::fresh_seed),
            ..defaults
        };
        match model.generate(&Prompt::Chat(messages), &params, &control, &mut |_| {}) {
            Ok(done) => {
                let tokens = done.usage.total();
                (Ok(chat_answer(&done)), tokens)
            }
            Err(e) => (Err(ApiError::from(&e)), 0),
        }
    })
    .await
}

/// The answer to a chat (`POST /chat`, `agentrt chat --json`).
pub fn chat_answer(done: &crate::engine::Completion) -> Value {
    let usage = &done.usage;
    json!({
        "response": done.text,
        "model": done.model,
        "finish_reason": done.finish_reason,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    })
}

fn plugin_list(state: &AppState) -> Vec<Value> {
    state
        .pipeline
        .plugins
        .current()
        .all()
        .iter()
        .map(|p| p.describe())
        .collect()
}

/// Liveness: the process answers.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

/// Readiness: models and plugins are loaded (a starting server answers 503 `starting`) and at
/// least one model serves.
pub async fn ready(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let body = json!({"status": "draining"});
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let serving = reachable_models(&state).await;
    let models = serving.iter().filter(|(_, e)| e.is_none()).count();
    let plugins = state.pipeline.plugins.current().all().len();
    // Ready while any model serves: an error handler can move work off one that does not.
    let body = json!({"status": if models > 0 { "ready" } else { "not_ready" }, "models": models, "plugins": plugins});
    let status = if models > 0 {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Each model with why it cannot serve now, if it cannot (remote models are asked, on a
/// blocking thread; the reason does not name a remote's server: `/health` is open).
async fn reachable_models(state: &AppState) -> Vec<(String, Option<String>)> {
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || {
        engine
            .models()
            .iter()
            .map(|m| {
                (
                    m.info.id.clone(),
                    m.reachable().err().map(|e| e.to_string()),
                )
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let serving = reachable_models(&state).await;
    let reachable = serving.iter().filter(|(_, e)| e.is_none()).count();
    let models: Vec<Value> = serving
        .iter()
        .map(|(id, error)| match error {
            None => json!({"id": id, "loaded": true, "reachable": true}),
            Some(e) => json!({"id": id, "loaded": true, "reachable": false, "error": e}),
        })
        .collect();
    let plugins: Vec<Value> = state
        .pipeline
        .plugins
        .current()
        .all()
        .iter()
        .map(|p| json!({"name": p.manifest.name, "world": p.manifest.world, "loaded": true}))
        .collect();
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    // A store refusing writes loses runs' events and results while chat and generation still
    // work: degraded, not down (readiness is unchanged).
    let store = state.runs.store_health();
    let healthy = reachable > 0 && reachable == models.len() && !draining && store.ok;
    Json(json!({
        "status": if draining { "draining" } else if healthy { "healthy" } else { "degraded" },
        "model_loaded": reachable > 0,
        "models": models,
        "plugins": plugins,
        // Components of the plugin folder not in use (`GET /plugins` says why).
        "plugins_refused": state.pipeline.plugins.refused().len(),
        // The config file holds an edit that was not applied (`GET /plugins` says why).
        "config_refused": state.pipeline.plugins.config_status().refused.is_some(),
        "store": store,
        "uptime_seconds": state.pipeline.stats.snapshot().uptime_seconds,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(serde_json::to_value(state.pipeline.stats.snapshot()).unwrap_or_default())
}

/// The models served. A user-scope key sees each model file's name, not where the server
/// keeps it, and not a remote model's address: the server's folders and peers are an admin's
/// business (as `/stats` and `/plugins` are).
pub async fn models(
    State(state): State<AppState>,
    caller: Option<axum::Extension<super::auth::Caller>>,
) -> Json<Value> {
    let admin = caller.is_none_or(|c| c.scope == super::auth::Scope::Admin);
    let models: Vec<_> = state
        .engine
        .models()
        .iter()
        .map(|m| {
            let mut info = m.info.clone();
            if !admin {
                info.path = info.path.file_name().map(Into::into).unwrap_or_default();
                // A remote model's device names the server it runs on.
                if info.device.starts_with("remote") {
                    info.device = "remote".into();
                    info.path = Default::default();
                }
            }
            info
        })
        .collect();
    Json(json!({ "models": models }))
}

/// The plugins in use, the folder's components that hot reload refused (with the reason and
/// the version kept instead), and the config file in use (with an edit of it that was
/// refused, and why).
pub async fn plugins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "plugins": plugin_list(&state),
        "refused": state.pipeline.plugins.refused(),
        "config": state.pipeline.plugins.config_status(),
    }))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::NotFound,
        format!("{method} is not allowed on {}", uri.path()),
    );
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e.kind = "method_not_allowed";
    e
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> GenerateBody {
        serde_json::from_value(value).expect("a generate body")
    }

    /// A `max_retries` above what the pipeline does is refused, naming the field, instead of
    /// being cut down without a word.
    #[test]
    fn max_retries_above_the_pipelines_limit_is_refused() {
        let err = body(json!({"task_description": "add", "max_retries": MAX_RETRIES + 1}))
            .into_request()
            .expect_err("refused");
        assert_eq!(err.code, "VAL_002", "{err:?}");
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(err.details, Some(json!({"field": "max_retries"})));
        for n in 0..=MAX_RETRIES {
            let req = body(json!({"task_description": "add", "max_retries": n}))
                .into_request()
                .expect("accepted");
            assert_eq!(req.max_retries, n);
        }
        let req = body(json!({"task_description": "add"}))
            .into_request()
            .expect("accepted");
        assert_eq!(req.max_retries, 1, "the default");
    }
}
