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
use std::sync::atomic::Ordering;
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
use crate::engine::{
    Completion, Control, EngineError, FinishReason, Prompt, SamplingParams, ServedModel,
};
use crate::error_code::ErrorCode;
use crate::stats::Stats;

pub(crate) mod request;

pub(crate) use request::IGNORED_FIELDS;
pub use request::{ChatRequest, CompletionRequest};
use request::{Common, Message, PromptField, template_messages};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

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
    match e {
        EngineError::NoFillInTheMiddle(_) => return err.for_field("suffix"),
        EngineError::InvalidInput(why) if why == crate::engine::EMPTY_PROMPT => {
            return err.for_field(kind.prompt_field());
        }
        _ => {}
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

/// A model that cannot serve, as this API answers it: naming the `model` field when the
/// client named one (the default model failing is not the request's field).
fn named_model_error(e: &EngineError, named: Option<&str>) -> ApiError {
    let err = ApiError::from(e);
    match named {
        Some(_) => err.for_field("model"),
        None => err,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, OpenAiError> {
    super::body::parse_body(body).map_err(OpenAiError)
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
    c.usage.total()
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.usage.prompt_tokens,
        "completion_tokens": c.usage.completion_tokens,
        "total_tokens": c.usage.prompt_tokens + c.usage.completion_tokens,
    })
}

impl Common {
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
            return Err(invalid(&field, why));
        }
        let model = self.model(state)?;
        if let Some(field) = self.local_only()
            && model.as_local().is_none()
        {
            return Err(invalid(
                field,
                format!(
                    "{field}: model {} is a remote model, which is sent OpenAI's sampling \
                     fields only",
                    model.info.id
                ),
            ));
        }
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

    fn model(&self, state: &AppState) -> Result<Arc<ServedModel>, OpenAiError> {
        let model = state
            .engine
            .model(self.model.as_deref())
            .map_err(|e| OpenAiError(named_model_error(&e, self.model.as_deref())))?;
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
    /// The request's deadline and cancel flag (a stream takes the flag only: its answer
    /// outlives the deadline, which bounds the wait for its head).
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
pub(super) fn stream_stall_limit() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        crate::settings::seconds("AGENTRT_STREAM_STALL_SECS").unwrap_or(Duration::from_secs(60))
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
    let Job {
        endpoint,
        stats,
        kind,
        model,
        prompt,
        params,
        include_usage,
        control: request,
        ..
    } = job;
    // The request's flag: until the answer's head goes out, the server sets it when the
    // request's deadline passes (it answers 504) or the client hangs up, which ends a wait for
    // a remote's head too. After that nothing but the watcher below sets it.
    let cancel = request.cancel.unwrap_or_default();
    let started = Instant::now();
    let model_id = model.info.id.clone();
    let control = Control {
        deadline: None,
        cancel: Some(cancel.clone()),
        // A full queue is a 429 its client retries after `Retry-After`.
        wait_in_line: false,
    };
    // A remote model answers its refusals (429 when busy, 400 for a prompt too long) in its
    // response's head: waited for here, so they are this response's status too, not an
    // error event inside a 200 stream that clients neither retry nor classify.
    let queued = {
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            model
                .start(&prompt, &params, &control)
                .and_then(|g| g.accepted().map_err(|stopped| stopped.error))
        })
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
        let result = generation.finish_counted(&mut |piece| {
            send(chunk(json!([kind.choice(true, Some(piece), None)]), None));
        });
        let ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(done) => stats.record_endpoint(endpoint, ms, tokens(done), None),
            // A client that went away mid-stream still had tokens made for it.
            Err(stopped) => {
                let spent = stopped.spent.map_or(0, crate::engine::Usage::total);
                stats.record_endpoint(endpoint, ms, spent, Some(stopped.error.code().as_str()))
            }
        }
        let result = result.map_err(|stopped| stopped.error);
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
                // The answer's status went out as 200: the log hears of the failure here, in
                // full; the client in the words an error answer would have had.
                let api = engine_error(&e, kind);
                tracing::warn!(
                    target: "agentrt::http",
                    error = %e,
                    "streamed answer failed: {}",
                    api.code
                );
                let status = api.status;
                let err = json!({"error": {
                    "message": api.message,
                    "type": if status.is_client_error() { "invalid_request_error" } else { "server_error" },
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
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    match chat_job(&state, body) {
        Ok(job) => run(job.until(deadline)).await,
        Err(e) => Err(rejected(&state, CHAT, e)),
    }
}

fn chat_job(
    state: &AppState,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Job, OpenAiError> {
    let req: ChatRequest = parse(body)?;
    let messages = template_messages(req.messages)?;
    req.common
        .job(state, CHAT, Kind::Chat, Prompt::Chat(messages), 512)
}

/// `POST /tokenize` (vLLM's shape): `{"model"?, "prompt"}` or `{"model"?, "messages"}` →
/// `{"count", "max_model_len"}`, and the `tokens` for a model this process runs (for messages:
/// the whole chat prompt the model would see). What a remote agentrt entry counts tokens with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    /// vLLM's switch: `false` counts the prompt's text alone, without the BOS the model adds
    /// (default `true`: what generation reads).
    add_special_tokens: Option<bool>,
}

pub async fn tokenize(
    State(state): State<AppState>,
    deadline: Option<axum::Extension<super::RequestDeadline>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let req: TokenizeRequest = parse(body)?;
    // Counting is blocking work (a remote model's count is a request to its server, up to
    // 30 s): it takes a place among the requests worked on at once, as the answer-when-done
    // routes do, and a remote's count ends at the request's deadline.
    let place = super::routes::sync_place(&state, "").map_err(OpenAiError)?;
    let until = deadline.map(|d| d.at);
    let model = state
        .engine
        .model(req.model.as_deref())
        .map_err(|e| OpenAiError(named_model_error(&e, req.model.as_deref())))?;
    let input = match (req.prompt, req.messages) {
        (Some(prompt), None) => Ok(prompt),
        // As /v1/chat/completions answers it: the client's choice of model, not the server
        // being unavailable.
        (None, Some(_)) if !model.info.supports_chat => {
            return Err(invalid(
                "model",
                format!(
                    "model {} has no chat template: tokenize a prompt, not messages",
                    model.info.id
                ),
            ));
        }
        (None, Some(messages)) => Err(template_messages(messages)?),
        _ => {
            return Err(OpenAiError(ApiError::new(
                ErrorCode::InvalidInput,
                "give either prompt or messages",
            )));
        }
    };
    let special = req.add_special_tokens.unwrap_or(true);
    let counted = tokio::task::spawn_blocking(move || {
        let _place = place;
        let (tokens, count) = match input {
            Ok(prompt) => {
                // What generation reads: the BOS the model adds included, as `usage` and
                // the messages form count it (unless the client asks for the text alone).
                let tokens = model.as_local().and_then(|m| {
                    if special {
                        m.tokenize_prompt(&Prompt::Text(prompt.clone())).ok()
                    } else {
                        m.tokenizer.encode(&prompt).ok()
                    }
                });
                let count = match &tokens {
                    Some(t) => Ok(t.len() as u32),
                    None => model.count_prompt_tokens(&prompt, special, until),
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
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    match completion_job(&state, body) {
        Ok(job) => run(job.until(deadline)).await,
        Err(e) => Err(rejected(&state, COMPLETIONS, e)),
    }
}

fn completion_job(
    state: &AppState,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Job, OpenAiError> {
    let req: CompletionRequest = parse(body)?;
    let text = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(_) => return Err(invalid("prompt", "prompt must be one string")),
        PromptField::TokenIds(ids) => {
            let what = if ids.iter().all(Value::is_array) {
                "lists of token ids"
            } else {
                "token ids"
            };
            return Err(invalid(
                "prompt",
                format!("prompt: {what} are not supported as a prompt (send the text)"),
            ));
        }
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
    id: Result<super::error::PathSegment, ApiError>,
) -> Result<Json<Value>, OpenAiError> {
    let super::error::PathSegment(id) = id?;
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
}
