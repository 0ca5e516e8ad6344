//! The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions` (with
//! `suffix` for fill-in-the-middle), `GET /v1/models`, so editors, scripts and the official
//! clients can point at agentrt.
//!
//! `stream: true` answers with server-sent events, one chunk per piece of text as the engine
//! releases it (stop sequences held back until they can no longer match), a last chunk with
//! the finish reason, the usage in its own chunk when `stream_options.include_usage` is set,
//! and `data: [DONE]`. A client that goes away stops the generation. Errors keep agentrt's
//! codes inside OpenAI's error object: `{"error": {"message", "type", "param", "code"}}`, with
//! `param` naming the field at fault where one is known.
//!
//! Fields this server cannot honour are refused (400 `VAL_002`) rather than ignored when their
//! value would change what the answer means: tools and function calls, a `response_format`
//! other than text, log probabilities, `echo`, `best_of` > 1, `logit_bias`, non-zero
//! frequency and presence penalties, content parts that are not text, and tool messages. The
//! neutral values SDKs send by default pass.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::engine::chat_template::TemplateMessage;
use crate::engine::sampling::MAX_STOP_BYTES;
use crate::engine::{
    Completion, Control, EngineError, FinishReason, Prompt, SamplingParams, ServedModel,
};
use crate::error_code::ErrorCode;
use crate::stats::Stats;

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// Most tokens one request may ask for.
const MAX_TOKENS: u32 = 4096;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: text, or a list of parts of which the text ones are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant's calls of tools (refused: see [`template_message`]).
    tool_calls: Option<Value>,
    function_call: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// What both endpoints share.
#[derive(Debug, Deserialize)]
struct Common {
    model: Option<String>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Any integer, as OpenAI's API takes (a negative one is used as its two's-complement bits).
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    // Refused unless neutral ([`Common::unsupported`]): each changes what the answer means.
    tools: Option<Value>,
    tool_choice: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    response_format: Option<Value>,
    /// `true` on chat, a count on completions.
    logprobs: Option<Value>,
    top_logprobs: Option<u32>,
    echo: Option<bool>,
    best_of: Option<u32>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
}

/// Whether a list or map holds something (`[]`, `{}` and `null` are what SDKs send for none).
fn given(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(fields)) => !fields.is_empty(),
        Some(_) => true,
    }
}

/// Whether a `tool_choice` / `function_call` demands a call: `"required"` or a named function.
fn forces_a_call(choice: &Option<Value>) -> bool {
    match choice {
        Some(Value::Object(_)) => true,
        Some(v) => v.as_str() == Some("required"),
        None => false,
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

/// `prompt`: a string, or a list holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    prompt: PromptField,
    suffix: Option<String>,
    #[serde(flatten)]
    common: Common,
}

/// An [`ApiError`] in OpenAI's error object.
pub struct OpenAiError(pub ApiError);

/// Marks a response already in OpenAI's error shape, which `server::measure` leaves as it is.
#[derive(Debug, Clone, Copy)]
pub struct OpenAiShaped;

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let kind = if e.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        // The field at fault, where the error names one (`details.field`, as `for_field` sets).
        let param = e
            .details
            .as_ref()
            .and_then(|d| d.get("field"))
            .cloned()
            .unwrap_or(Value::Null);
        let body = json!({"error": {
            "message": e.message,
            "type": kind,
            "param": param,
            "code": e.code,
        }});
        let mut response = e.with_retry_header((e.status, Json(body)).into_response());
        // For the request log and its analysis (see `server::measure`).
        response.extensions_mut().insert(super::error::SentError(e));
        response.extensions_mut().insert(OpenAiShaped);
        response
    }
}

/// 400 `VAL_002` about request field `field`.
fn invalid(field: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(ApiError::new(ErrorCode::InvalidInput, message).for_field(field))
}

/// An engine error as this API answers it. A prompt too long for the context is OpenAI's 400
/// naming the field that holds the prompt, in OpenAI's words: the SDKs raise
/// `BadRequestError` only for a 400, and clients that trim history look for "maximum context
/// length" in the message. Its code stays ours (`MODEL_004`).
fn engine_error(e: &EngineError, kind: Kind) -> ApiError {
    let err = ApiError::from(e);
    if let EngineError::NoFillInTheMiddle(_) = e {
        return err.for_field("suffix");
    }
    if e.code() != ErrorCode::ModelContextOverflow {
        return err;
    }
    let mut err = err.for_field(kind.prompt_field());
    err.status = StatusCode::BAD_REQUEST;
    if let EngineError::ContextOverflow {
        prompt,
        max_tokens,
        context,
    } = e
    {
        let holder = kind.prompt_field();
        err.message = format!(
            "This model's maximum context length is {context} tokens. However, you requested \
             {} tokens ({prompt} in the {holder}, {max_tokens} in the completion). Please reduce \
             the length of the {holder} or completion.",
            prompt + max_tokens
        );
    }
    err
}

fn parse<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, OpenAiError> {
    body.map(|Json(v)| v)
        .map_err(|e| OpenAiError(ApiError::from(e)))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh response id with OpenAI's prefix (`chatcmpl-`, `cmpl-`).
fn response_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{:06x}", unix_now(), n)
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::EndOfSequence | FinishReason::StopSequence => "stop",
        FinishReason::Length => "length",
    }
}

fn tokens(c: &Completion) -> u64 {
    u64::from(c.usage.prompt_tokens + c.usage.completion_tokens)
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.usage.prompt_tokens,
        "completion_tokens": c.usage.completion_tokens,
        "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens,
    })
}

impl Common {
    /// The first field whose value this server cannot honour, with why. Each changes what the
    /// answer means (a tool call, JSON, log probabilities, other sampling), so ignoring it would
    /// answer another question than the one asked; the neutral values SDKs send by default
    /// (`tools: []`, `tool_choice: "none"`, `logprobs: false`, `response_format: {"type":
    /// "text"}`, penalties of 0, ...) pass. A `logprobs` of 0 on a completion is not neutral:
    /// it asks for the chosen tokens' log probabilities.
    fn unsupported(&self) -> Option<(&'static str, &'static str)> {
        let says_none = |v: &Option<Value>| v.as_ref().and_then(Value::as_str) == Some("none");
        let penalized = |p: Option<f32>| p.is_some_and(|p| p != 0.0);
        let not_text = self
            .response_format
            .as_ref()
            .is_some_and(|f| !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text"));
        let checks = [
            (
                given(&self.tools) && !says_none(&self.tool_choice),
                "tools",
                "tools: tool calling is not supported (send no tools, or tool_choice \"none\")",
            ),
            (
                forces_a_call(&self.tool_choice),
                "tool_choice",
                "tool_choice: tool calling is not supported",
            ),
            (
                given(&self.functions) && !says_none(&self.function_call),
                "functions",
                "functions: function calling is not supported (or send function_call \"none\")",
            ),
            (
                forces_a_call(&self.function_call),
                "function_call",
                "function_call: function calling is not supported",
            ),
            (
                not_text,
                "response_format",
                "response_format: only {\"type\": \"text\"} is supported",
            ),
            (
                !matches!(self.logprobs, None | Some(Value::Null | Value::Bool(false))),
                "logprobs",
                "logprobs: log probabilities are not supported",
            ),
            (
                self.top_logprobs.is_some_and(|n| n > 0),
                "top_logprobs",
                "top_logprobs: log probabilities are not supported",
            ),
            (
                self.echo == Some(true),
                "echo",
                "echo: echoing the prompt is not supported",
            ),
            (
                self.best_of.is_some_and(|n| n > 1),
                "best_of",
                "best_of: only best_of = 1 is supported",
            ),
            (
                self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()),
                "logit_bias",
                "logit_bias: biasing tokens is not supported",
            ),
            (
                penalized(self.frequency_penalty),
                "frequency_penalty",
                "frequency_penalty: only 0 is supported",
            ),
            (
                penalized(self.presence_penalty),
                "presence_penalty",
                "presence_penalty: only 0 is supported",
            ),
        ];
        checks
            .into_iter()
            .find_map(|(refused, field, why)| refused.then_some((field, why)))
    }

    /// The engine's sampling settings: OpenAI's defaults (temperature 1, top_p 1, no top-k, no
    /// repeat penalty) where the request is silent.
    fn sampling(&self, default_max_tokens: u32) -> Result<SamplingParams, OpenAiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is supported"));
        }
        let asked = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = asked.unwrap_or(default_max_tokens);
        if max_tokens == 0 || max_tokens > MAX_TOKENS {
            let field = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(invalid(field, format!("{field} must be 1..={MAX_TOKENS}")));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(invalid("stop", "at most 4 stop sequences"));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(invalid(
                "stop",
                format!(
                    "stop: each stop sequence must be at most {MAX_STOP_BYTES} bytes, got one of {}",
                    long.len()
                ),
            ));
        }
        // OpenAI's range: a client relying on the 400 for a typo'd 20 gets it here too.
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        if self.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(invalid("top_p", "top_p must be between 0 and 1"));
        }
        // OpenAI takes top_p 0 as "the most likely token only"; the engine's top_p is a share
        // of the probability that must be above 0, and its greedy choice is temperature 0.
        let greedy = self.top_p == Some(0.0);
        let defaults = SamplingParams::default();
        let params = SamplingParams {
            max_tokens,
            temperature: if greedy {
                0.0
            } else {
                self.temperature.unwrap_or(1.0)
            },
            top_k: 0,
            top_p: if greedy {
                1.0
            } else {
                self.top_p.unwrap_or(1.0)
            },
            repeat_penalty: 1.0,
            seed: self
                .seed
                .map_or_else(crate::engine::sampling::fresh_seed, |s| s as u64),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            // Without a max_tokens of its own, a long prompt gets what room the context has
            // left rather than a refusal (as vLLM does).
            fit_to_context: asked.is_none(),
            ..defaults
        };
        // The engine's own checks, behind the ones above; each message starts with its field.
        params.validate().map_err(|m| {
            let field = m.split_whitespace().next().unwrap_or_default().to_string();
            invalid(&field, m)
        })?;
        Ok(params)
    }

    /// The request as a job for `endpoint`, `default_max_tokens` where it names none.
    fn job(
        &self,
        state: &AppState,
        endpoint: &'static str,
        kind: Kind,
        prompt: Prompt,
        default_max_tokens: u32,
    ) -> Result<Job, OpenAiError> {
        if let Some((field, why)) = self.unsupported() {
            return Err(invalid(field, why));
        }
        let model = self.model(state)?;
        // The client chose a model that cannot chat: its mistake (400, as the official client
        // does not retry), not the server being unavailable.
        if matches!(kind, Kind::Chat) && !model.info.supports_chat {
            return Err(invalid(
                "model",
                format!(
                    "model {} has no chat template: send its prompts to /v1/completions",
                    model.info.id
                ),
            ));
        }
        Ok(Job {
            endpoint,
            stats: state.pipeline.stats.clone(),
            kind,
            model,
            prompt,
            params: self.sampling(default_max_tokens)?,
            stream: self.stream.unwrap_or(false),
            include_usage: self.include_usage(),
            control: Control::default(),
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    fn model(&self, state: &AppState) -> Result<Arc<ServedModel>, OpenAiError> {
        let model = state
            .engine
            .model(self.model.as_deref())
            .map_err(|e| OpenAiError(ApiError::from(&e)))?;
        Ok(model)
    }
}

/// How a response names itself and carries text.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    /// The request field that holds the prompt.
    fn prompt_field(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Text => "prompt",
        }
    }

    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    /// A choice carrying `text` (a streamed piece when `chunk`).
    fn choice(self, chunk: bool, text: Option<&str>, finish: Option<&str>) -> Value {
        match (self, chunk) {
            (Kind::Chat, false) => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text.unwrap_or_default()},
                "finish_reason": finish,
            }),
            (Kind::Chat, true) => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish})
            }
            (Kind::Text, _) => json!({
                "index": 0,
                "text": text.unwrap_or_default(),
                "logprobs": Value::Null,
                "finish_reason": finish,
            }),
        }
    }
}

/// One request, ready to run.
struct Job {
    endpoint: &'static str,
    stats: Arc<Stats>,
    kind: Kind,
    model: Arc<ServedModel>,
    prompt: Prompt,
    params: SamplingParams,
    stream: bool,
    include_usage: bool,
    /// The request's deadline (non-streaming answers).
    control: Control,
}

impl Job {
    fn until(self, deadline: Option<axum::Extension<super::RequestDeadline>>) -> Self {
        Self {
            control: deadline.map(|d| d.control()).unwrap_or_default(),
            ..self
        }
    }
}

async fn run(job: Job) -> Result<Response, OpenAiError> {
    let id = response_id(match job.kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    });
    let created = unix_now();
    if job.stream {
        return stream(job, id, created).await;
    }
    let Job {
        endpoint,
        stats,
        kind,
        model,
        prompt,
        params,
        control,
        ..
    } = job;
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        model.generate(&prompt, &params, &control, &mut |_| {})
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")))
    .and_then(|r| r.map_err(|e| engine_error(&e, kind)));
    let ms = started.elapsed().as_millis() as u64;
    let done = match outcome {
        Ok(done) => {
            stats.record_endpoint(endpoint, ms, tokens(&done), None);
            done
        }
        Err(e) => {
            stats.record_endpoint(endpoint, ms, 0, Some(&e.code));
            return Err(OpenAiError(e));
        }
    };
    let body = json!({
        "id": id,
        "object": kind.object(false),
        "created": created,
        "model": done.model,
        "choices": [kind.choice(false, Some(&done.text), Some(finish_reason(done.finish_reason)))],
        "usage": usage(&done),
    });
    Ok(Json(body).into_response())
}

/// How long a streamed answer waits for a client that has stopped reading
/// (`AGENTRT_STREAM_STALL_SECS`, default 60 s) before it cancels the generation and lets go of
/// its thread: a client that never reads must not hold one for as long as its socket lives.
fn stream_stall_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("AGENTRT_STREAM_STALL_SECS")
            .ok()
            .and_then(|v| super::parse_seconds(&v, false))
            .unwrap_or(Duration::from_secs(60))
    })
}

/// Hand `event` to the response stream from a blocking thread, waiting at most `limit` for
/// room: false when the client has gone or stopped reading.
fn send_within(
    runtime: &tokio::runtime::Handle,
    tx: &tokio::sync::mpsc::Sender<Event>,
    event: Event,
    limit: Duration,
) -> bool {
    // The timer is made inside `block_on`, in the runtime's context.
    matches!(
        runtime.block_on(async { tokio::time::timeout(limit, tx.send(event)).await }),
        Ok(Ok(()))
    )
}

/// Server-sent events from a generation on a blocking thread; when the client goes away the
/// next send fails and the generation is cancelled. The generation is queued before the
/// answer starts, so a full queue is still a plain 429 with `Retry-After`.
async fn stream(job: Job, id: String, created: u64) -> Result<Response, OpenAiError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let cancel = Arc::new(AtomicBool::new(false));
    let Job {
        endpoint,
        stats,
        kind,
        model,
        prompt,
        params,
        include_usage,
        ..
    } = job;
    let started = Instant::now();
    let model_id = model.info.id.clone();
    let control = Control {
        deadline: None,
        cancel: Some(cancel.clone()),
    };
    let queued = {
        let model = model.clone();
        tokio::task::spawn_blocking(move || model.start(&prompt, &params, &control))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")))
            .and_then(|r| r.map_err(|e| engine_error(&e, kind)))
    };
    let generation = match queued {
        Ok(g) => g,
        Err(e) => {
            stats.record_endpoint(endpoint, 0, 0, Some(&e.code));
            return Err(OpenAiError(e));
        }
    };
    // A client that hangs up while its request waits in the queue, is prefilled, or has text
    // held back by a stop sequence sends nothing that could fail: watch the channel close
    // instead, until the generation is over (then the watcher's sender must go, or the
    // stream would never end).
    let (finished, generation_over) = tokio::sync::oneshot::channel::<()>();
    {
        let tx = tx.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => cancel.store(true, Ordering::Relaxed),
                _ = generation_over => {}
            }
        });
    }
    let stall = stream_stall_limit();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // Dropped however this closure ends.
        let _finished = finished;
        // Once a client has stopped reading, nothing more is offered to it.
        let stalled = std::cell::Cell::new(false);
        let chunk = |choices: Value, usage: Option<Value>| {
            let mut v = json!({
                "id": id,
                "object": kind.object(true),
                "created": created,
                "model": model_id,
                "choices": choices,
            });
            // With include_usage every chunk carries `usage`, null until the last (OpenAI's
            // reference; typed clients read the field on each chunk).
            if include_usage {
                v["usage"] = usage.unwrap_or(Value::Null);
            }
            Event::default().data(v.to_string())
        };
        let send = |event: Event| {
            if stalled.get() {
                return;
            }
            if !send_within(&runtime, &tx, event, stall) {
                stalled.set(true);
                cancel.store(true, Ordering::Relaxed);
            }
        };
        if let Kind::Chat = kind {
            send(chunk(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": Value::Null}]),
                None,
            ));
        }
        let result = generation.finish(&mut |piece| {
            send(chunk(json!([kind.choice(true, Some(piece), None)]), None));
        });
        let ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(done) => stats.record_endpoint(endpoint, ms, tokens(done), None),
            Err(e) => stats.record_endpoint(endpoint, ms, 0, Some(e.code().as_str())),
        }
        match result {
            Ok(done) => {
                let reason = finish_reason(done.finish_reason);
                send(chunk(json!([kind.choice(true, None, Some(reason))]), None));
                if include_usage {
                    send(chunk(json!([]), Some(usage(&done))));
                }
            }
            Err(crate::engine::EngineError::Cancelled) => return,
            Err(e) => {
                let err = json!({"error": {
                    "message": e.to_string(),
                    "type": "server_error",
                    "param": Value::Null,
                    "code": e.code().as_str(),
                }});
                send(Event::default().data(err.to_string()));
            }
        }
        send(Event::default().data("[DONE]"));
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(super::unbuffered(
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response(),
    ))
}

/// The text of message `i`'s content. A part that is not text (an image, audio) is refused,
/// not dropped: the model would answer without what it was asked about.
fn content_text(i: usize, content: Option<Content>) -> Result<String, OpenAiError> {
    let parts = match content {
        None => return Ok(String::new()),
        Some(Content::Text(t)) => return Ok(t),
        Some(Content::Parts(parts)) => parts,
    };
    if let Some((j, part)) = parts.iter().enumerate().find(|(_, p)| p.kind != "text") {
        return Err(invalid(
            &format!("messages[{i}].content[{j}].type"),
            format!(
                "messages[{i}].content[{j}]: {:?} parts are not supported (text only)",
                part.kind
            ),
        ));
    }
    Ok(parts
        .into_iter()
        .filter_map(|p| p.text)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Count a request refused before it ran.
fn rejected(state: &AppState, endpoint: &str, e: OpenAiError) -> OpenAiError {
    state
        .pipeline
        .stats
        .record_endpoint(endpoint, 0, 0, Some(&e.0.code));
    e
}

pub async fn chat_completions(
    State(state): State<AppState>,
    deadline: Option<axum::Extension<super::RequestDeadline>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    match chat_job(&state, body) {
        Ok(job) => run(job.until(deadline)).await,
        Err(e) => Err(rejected(&state, CHAT, e)),
    }
}

fn chat_job(
    state: &AppState,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Job, OpenAiError> {
    let req = parse(body)?;
    let messages = template_messages(req.messages)?;
    req.common
        .job(state, CHAT, Kind::Chat, Prompt::Chat(messages), 512)
}

/// OpenAI's chat messages as the chat template's (`developer` is a system message).
fn template_messages(messages: Vec<Message>) -> Result<Vec<TemplateMessage>, OpenAiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| template_message(i, m))
        .collect()
}

/// Message `i` as the template's. The template sees a role and text only, so what it would
/// lose is refused: an assistant's tool calls (their names, arguments and ids would vanish)
/// and tool results (answers to calls this server cannot have made).
fn template_message(i: usize, m: Message) -> Result<TemplateMessage, OpenAiError> {
    let role_field = format!("messages[{i}].role");
    let role = match m.role.as_str() {
        "developer" => "system".to_string(),
        "system" | "user" | "assistant" => m.role,
        "tool" | "function" => {
            return Err(invalid(
                &role_field,
                format!(
                    "messages[{i}]: {:?} messages are not supported (this server does not call \
                     tools)",
                    m.role
                ),
            ));
        }
        other => {
            return Err(invalid(
                &role_field,
                format!("unknown message role {other:?}"),
            ));
        }
    };
    for (field, value) in [
        ("tool_calls", &m.tool_calls),
        ("function_call", &m.function_call),
    ] {
        if given(value) {
            return Err(invalid(
                &format!("messages[{i}].{field}"),
                format!("messages[{i}].{field}: tool calls are not supported"),
            ));
        }
    }
    Ok(TemplateMessage {
        role,
        content: content_text(i, m.content)?,
    })
}

/// `POST /tokenize` (vLLM's shape): `{"model"?, "prompt"}` or `{"model"?, "messages"}` →
/// `{"count", "max_model_len"}`, and the `tokens` for a model this process runs (for messages:
/// the whole chat prompt the model would see). What a remote agentrt entry counts tokens with.
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let req = parse(body)?;
    let model = state
        .engine
        .model(req.model.as_deref())
        .map_err(|e| OpenAiError(ApiError::from(&e)))?;
    let input = match (req.prompt, req.messages) {
        (Some(prompt), None) => Ok(prompt),
        (None, Some(messages)) => Err(template_messages(messages)?),
        _ => {
            return Err(OpenAiError(ApiError::new(
                ErrorCode::InvalidInput,
                "give either prompt or messages",
            )));
        }
    };
    let counted = tokio::task::spawn_blocking(move || {
        let (tokens, count) = match input {
            Ok(prompt) => {
                let tokens = model
                    .as_local()
                    .and_then(|m| m.tokenizer.encode(&prompt).ok());
                let count = match &tokens {
                    Some(t) => Ok(t.len() as u32),
                    None => model.count_tokens(&prompt),
                };
                (tokens, count)
            }
            Err(messages) => match model.as_local() {
                Some(m) => match m.tokenize_prompt(&Prompt::Chat(messages)) {
                    Ok(t) => {
                        let count = t.len() as u32;
                        (Some(t), Ok(count))
                    }
                    Err(e) => (None, Err(e)),
                },
                None => (
                    None,
                    Err(crate::engine::EngineError::InvalidInput(format!(
                        "{} is a remote model: tokenize a prompt, not messages",
                        model.info.id
                    ))),
                ),
            },
        };
        count.map(|count| {
            let mut v = json!({"count": count, "max_model_len": model.info.context_length});
            if let Some(t) = tokens {
                v["tokens"] = json!(t);
            }
            v
        })
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("worker failed: {e}")))?
    .map_err(|e| ApiError::from(&e))?;
    Ok(Json(counted).into_response())
}

pub async fn completions(
    State(state): State<AppState>,
    deadline: Option<axum::Extension<super::RequestDeadline>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    match completion_job(&state, body) {
        Ok(job) => run(job.until(deadline)).await,
        Err(e) => Err(rejected(&state, COMPLETIONS, e)),
    }
}

fn completion_job(
    state: &AppState,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Job, OpenAiError> {
    let req = parse(body)?;
    let text = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => return Err(invalid("prompt", "prompt must be one string")),
    };
    let prompt = match req.suffix {
        Some(suffix) => Prompt::Fim {
            prefix: text,
            suffix,
        },
        None => Prompt::Text(text),
    };
    // 16: OpenAI's default for this endpoint.
    req.common.job(state, COMPLETIONS, Kind::Text, prompt, 16)
}

/// Whether `path` takes OpenAI's error shape: `/tokenize` and every `/v1/` path but the native
/// pipeline runs under `/v1/pipeline`, routes this server lacks included (`/v1/embeddings`,
/// `/v1/responses`): an OpenAI client asking for one must be able to read the 404.
pub fn is_openai_path(path: &str) -> bool {
    let native = path == "/v1/pipeline" || path.starts_with("/v1/pipeline/");
    path == "/tokenize" || (path.starts_with("/v1/") && !native)
}

fn model_object(m: &ServedModel) -> Value {
    json!({"id": m.info.id, "object": "model", "created": 0, "owned_by": "agentrt",
           "max_model_len": m.info.context_length})
}

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .engine
        .models()
        .iter()
        .map(|m| model_object(m))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one model, as `client.models.retrieve(id)` asks.
pub async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    state
        .engine
        .models()
        .iter()
        .find(|m| m.info.id == id)
        .map(|m| Json(model_object(m)))
        .ok_or_else(|| {
            OpenAiError(ApiError::from(&crate::engine::EngineError::ModelNotFound(
                id,
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_nobody_reads_gives_up_after_its_stall_limit() {
        // As in the server: a runtime whose workers drive the timers while a blocking thread
        // waits in `block_on`.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(1);
        let handle = runtime.handle().clone();
        let limit = Duration::from_millis(50);
        // Room for one event; the second waits for a reader that never comes, then gives up.
        assert!(send_within(&handle, &tx, Event::default().data("1"), limit));
        assert!(!send_within(
            &handle,
            &tx,
            Event::default().data("2"),
            limit
        ));
        // A reader gone altogether is noticed at once.
        drop(rx);
        assert!(!send_within(
            &handle,
            &tx,
            Event::default().data("3"),
            limit
        ));
    }

    fn sampling(body: Value) -> SamplingParams {
        let Ok(params) = serde_json::from_value::<Common>(body)
            .expect("request")
            .sampling(512)
        else {
            panic!("settings refused");
        };
        params
    }

    #[test]
    fn a_request_without_max_tokens_or_seed_fits_the_context_and_draws_its_own_seed() {
        let silent = sampling(json!({}));
        assert_eq!(silent.max_tokens, 512);
        assert!(silent.fit_to_context);
        assert_ne!(silent.seed, sampling(json!({})).seed);

        let named = sampling(json!({"max_tokens": 10, "seed": 7}));
        assert_eq!((named.max_tokens, named.seed), (10, 7));
        assert_eq!(sampling(json!({"seed": -1})).seed, u64::MAX);
        assert!(!named.fit_to_context);
        assert!(!sampling(json!({"max_completion_tokens": 10})).fit_to_context);
    }

    /// The 400 a request's settings are refused with.
    fn refused(body: Value) -> ApiError {
        match serde_json::from_value::<Common>(body)
            .expect("request")
            .sampling(512)
        {
            Ok(params) => panic!("settings accepted: {params:?}"),
            Err(OpenAiError(e)) => e,
        }
    }

    #[test]
    fn top_p_zero_is_greedy_and_top_p_outside_zero_to_one_is_refused() {
        for body in [
            json!({"top_p": 0}),
            json!({"top_p": 0.0, "temperature": 0.8}),
        ] {
            let greedy = sampling(body);
            assert_eq!((greedy.temperature, greedy.top_p), (0.0, 1.0));
            assert!(greedy.validate().is_ok());
        }
        let nucleus = sampling(json!({"top_p": 0.5, "temperature": 0.8}));
        assert_eq!((nucleus.temperature, nucleus.top_p), (0.8, 0.5));
        for top_p in [-0.1, 1.5] {
            let e = refused(json!({ "top_p": top_p }));
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.contains("top_p"), "{}", e.message);
        }
    }

    #[test]
    fn neutral_values_pass_and_ones_that_change_the_answer_are_refused_by_name() {
        let refused_field = |body: Value| {
            serde_json::from_value::<Common>(body)
                .expect("request")
                .unsupported()
                .map(|(field, _)| field)
        };
        let neutral = json!({"tools": [], "tool_choice": "auto", "functions": [],
            "logprobs": false, "top_logprobs": 0, "response_format": {"type": "text"},
            "logit_bias": {}, "frequency_penalty": 0, "presence_penalty": 0.0, "echo": false,
            "best_of": 1, "user": "u-1", "parallel_tool_calls": true});
        assert_eq!(refused_field(neutral), None);
        let tools_off = json!({"tools": [{"type": "function"}], "tool_choice": "none"});
        assert_eq!(refused_field(tools_off), None);
        for (body, field) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": {"type": "function"}}), "tool_choice"),
            (json!({"function_call": {"name": "add"}}), "function_call"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            // On completions, 0 still asks for the chosen tokens' log probabilities.
            (json!({"logprobs": 0}), "logprobs"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"best_of": 3}), "best_of"),
            (json!({"frequency_penalty": 0.1}), "frequency_penalty"),
        ] {
            assert_eq!(refused_field(body.clone()), Some(field), "{body}");
        }
    }

    #[test]
    fn a_context_overflow_is_openais_400_naming_the_prompt() {
        let overflow = EngineError::ContextOverflow {
            prompt: 100,
            max_tokens: 28,
            context: 120,
        };
        let e = engine_error(&overflow, Kind::Chat);
        assert_eq!((e.status.as_u16(), e.code.as_str()), (400, "MODEL_004"));
        assert_eq!(e.details, Some(json!({"field": "messages"})));
        assert!(
            e.message.starts_with(
                "This model's maximum context length is 120 tokens. However, you requested 128 \
                 tokens (100 in the messages, 28 in the completion)."
            ),
            "{}",
            e.message
        );
        let e = engine_error(&overflow, Kind::Text);
        assert_eq!(e.details, Some(json!({"field": "prompt"})));
    }

    #[test]
    fn stop_sequences_past_the_cap_are_refused_naming_the_field() {
        let at_cap = "x".repeat(MAX_STOP_BYTES);
        assert_eq!(
            sampling(json!({"stop": at_cap.clone()})).stop,
            std::slice::from_ref(&at_cap)
        );
        let over = format!("{at_cap}y");
        for stop in [json!(over.clone()), json!(["\n", over.clone()])] {
            let e = refused(json!({ "stop": stop }));
            assert_eq!(e.status.as_u16(), 400);
            assert!(e.message.starts_with("stop:"), "{}", e.message);
        }
    }
}
