//! Remote engines: a model entry that is an OpenAI-compatible server (vLLM, llama.cpp's server,
//! another agentrt) instead of a local file, so a team that outgrows one machine keeps the same
//! plugins and API.
//!
//! The entry is a URL: `http(s)://[:TOKEN@]HOST[:PORT]/v1[#MODEL]` — the API root, an optional
//! bearer token (else `AGENTRT_REMOTE_API_KEY`), and the remote's model name (else its first
//! model). At load the server's `/models` must answer and list the model. A generation is one
//! streamed request (`/chat/completions` for conversations, `/completions` for text and, with
//! `suffix`, fill-in-the-middle) read on its own thread and handed on as it comes, exactly like a
//! local generation: the caller sees the same [`Generation`]. Cancelling, a deadline or the
//! caller leaving ends the generation at once, its place freed, whatever the remote is doing;
//! the connection closes when the remote next sends (or at the stall limit), which stops the
//! remote generation. A remote that sends nothing for `AGENTRT_REMOTE_STALL_SECS` (default
//! 300 s) fails the generation with `MODEL_002` instead of holding it and its thread. The limit also covers the wait for the first token,
//! while the remote reads the prompt (vLLM and llama.cpp's server send nothing meanwhile, and
//! ureq's limit cannot start later), so it is set well above a long prompt's reading time.
//! Sampling: `max_tokens`, `temperature`, `top_p`, `seed` and `stop` are sent; `top_k` and the
//! repeat penalty are not part of the OpenAI API and stay with the remote's defaults. Token
//! counts come from the remote's `/tokenize` (vLLM's and agentrt's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::chat_template::TemplateMessage;
use super::scheduler::Progress;
use super::{
    Completion, Control, EngineError, FinishReason, Generation, Prompt, SamplingParams, Usage,
};
use crate::error_code::ErrorCode;
use crate::fifo_semaphore::FifoSemaphore;

/// How long a connection to the remote may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a health probe's answer serves the health checks after it: a flood of (anonymous)
/// `/health` calls asks the remote server no more often than this.
const PROBE_FRESH: Duration = Duration::from_secs(2);
/// How long a health probe waits for the server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a streamed generation may receive nothing before it fails, unless
/// `AGENTRT_REMOTE_STALL_SECS` says otherwise: five minutes, as a CPU server reading a prompt
/// of tens of thousands of tokens before its first byte must not fail.
const STALL_LIMIT: Duration = Duration::from_secs(300);

/// How often a streamed generation waiting on the remote looks whether it should stop.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait for the remote to count a text's tokens (its `/tokenize`).
const COUNT_LIMIT: Duration = Duration::from_secs(30);

/// What stops a remote generation: the caller's cancel and deadline, and the caller dropping
/// its [`Generation`].
struct Watch<'a> {
    control: &'a Control,
    caller_left: &'a AtomicBool,
}

impl Watch<'_> {
    fn check(&self) -> Result<(), EngineError> {
        if self.caller_left.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        self.control.check()
    }
}

/// A health probe's answer (why the model cannot serve, if it cannot) and when it came.
type ProbeAnswer = (Instant, Result<(), String>);

/// The stall limit: `AGENTRT_REMOTE_STALL_SECS` when it holds a positive number of seconds
/// (capped as the other durations are, which ureq needs: it adds the limit to the clock; zero
/// would fail every read at once), else [`STALL_LIMIT`].
fn stall_limit_from_env() -> Duration {
    crate::settings::seconds("AGENTRT_REMOTE_STALL_SECS").unwrap_or(STALL_LIMIT)
}

/// Whether a model entry names a remote server rather than a file.
pub fn is_remote(entry: &str) -> bool {
    entry.starts_with("http://") || entry.starts_with("https://")
}

/// An OpenAI-compatible server serving one model.
#[derive(Clone)]
pub struct RemoteModel {
    /// The API root, e.g. `http://gpu-box:8000/v1` (no trailing slash, no credentials).
    base: String,
    /// The model's name at the remote.
    pub model: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// The remote's context length when it says (vLLM: `max_model_len`), else 0.
    pub context_length: u32,
    /// Longest a streamed generation waits for its next byte ([`stall_limit_from_env`]); a
    /// field so that tests set it without the environment.
    stall_limit: Duration,
    /// Generations running or waiting at the remote (shared by clones), each on a thread of its
    /// own; at most `max_in_flight`, as many as a local model holds (`AGENTRT_MAX_BATCH` plus
    /// `AGENTRT_GENERATION_QUEUE`), and more are refused as a full queue (429 `QUEUE_001`), or
    /// wait in line as [`Control::wait_in_line`] says, rather than holding threads without
    /// bound while the remote queues them.
    in_flight: std::sync::Arc<FifoSemaphore>,
    max_in_flight: usize,
    /// The last health probe's answer and when it came.
    /// (Shared by clones: they ask the same server.)
    last_probe: std::sync::Arc<std::sync::Mutex<Option<ProbeAnswer>>>,
    /// Held while a probe is out, so that concurrent health checks do not each ask.
    probing: std::sync::Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for RemoteModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteModel")
            .field("base", &self.base)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The parts of an entry URL.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    base: String,
    token: Option<String>,
    model: Option<String>,
}

fn parse_entry(entry: &str) -> Result<Entry, String> {
    let (url, model) = match entry.split_once('#') {
        Some((u, m)) if !m.is_empty() => (u, Some(m.to_string())),
        Some((u, _)) => (u, None),
        None => (entry, None),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{entry:?} is not a URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (token, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let secret = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            ((!secret.is_empty()).then(|| secret.to_string()), host)
        }
        None => (None, authority),
    };
    if host.is_empty() {
        return Err(format!("{entry:?} names no host"));
    }
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/v1" } else { path };
    Ok(Entry {
        base: format!("{scheme}://{host}{path}"),
        token,
        model,
    })
}

impl RemoteModel {
    /// Reach the server named by `entry` and find its model.
    pub fn connect(entry: &str) -> Result<Self, EngineError> {
        let parsed = parse_entry(entry)
            .map_err(|m| remote_error(entry, None, ErrorCode::InvalidInput, m))?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build()
            .into();
        let max_in_flight = {
            let limits = super::scheduler::BatchLimits::from_env();
            limits.max_batch + limits.queue
        };
        let mut remote = Self {
            base: parsed.base,
            model: String::new(),
            token: parsed.token.or_else(|| {
                std::env::var("AGENTRT_REMOTE_API_KEY")
                    .ok()
                    .filter(|k| !k.is_empty())
            }),
            agent,
            context_length: 0,
            stall_limit: stall_limit_from_env(),
            in_flight: FifoSemaphore::new(max_in_flight),
            max_in_flight,
            last_probe: Default::default(),
            probing: Default::default(),
        };
        let listed = remote.get_json("/models", Duration::from_secs(30))?;
        let models = listed["data"].as_array().cloned().unwrap_or_default();
        let found = match &parsed.model {
            Some(name) => models.iter().find(|m| m["id"].as_str() == Some(name)),
            None => models.first(),
        };
        let Some(found) = found else {
            let names: Vec<&str> = models.iter().filter_map(|m| m["id"].as_str()).collect();
            return Err(remote.error(
                None,
                ErrorCode::ModelNotAvailable,
                match &parsed.model {
                    Some(name) => format!("serves no model {name:?} (it serves {names:?})"),
                    None => "serves no models".into(),
                },
            ));
        };
        remote.model = found["id"].as_str().unwrap_or_default().to_string();
        remote.context_length = ["max_model_len", "context_length"]
            .iter()
            .find_map(|k| found[*k].as_u64())
            .unwrap_or(0) as u32;
        Ok(remote)
    }

    /// Whether the server still serves this model (health checks): asked at most once per
    /// [`PROBE_FRESH`]; while one probe is out, the others take the previous answer (or,
    /// before there is any, wait for this one's).
    pub fn probe(&self) -> Result<(), String> {
        // The last answer, if it came within `age`.
        let recent = |age: Duration| {
            let last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref()
                .filter(|(at, _)| at.elapsed() < age)
                .map(|(_, answer)| answer.clone())
        };
        if let Some(answer) = recent(PROBE_FRESH) {
            return answer;
        }
        let _probing = match self.probing.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                // The previous answer while this one is out, if it is recent: no older than a
                // fresh one plus the longest a probe takes.
                if let Some(answer) = recent(PROBE_FRESH + PROBE_TIMEOUT) {
                    return answer;
                }
                self.probing.lock().unwrap_or_else(|e| e.into_inner())
            }
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        };
        // Asked while this thread waited for the lock?
        if let Some(answer) = recent(PROBE_FRESH) {
            return answer;
        }
        // Health is open to anyone: its answer does not name the server. The log does, when
        // the model stops serving or the reason changes.
        let asked = self.ask_serves();
        let answer = asked.as_ref().map_err(|e| e.public_message()).copied();
        let mut last = self.last_probe.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = &asked
            && last.as_ref().map(|(_, before)| before) != Some(&answer)
        {
            tracing::warn!(model = %self.model, error = %e, "remote model cannot serve");
        }
        *last = Some((Instant::now(), answer.clone()));
        answer
    }

    /// Ask the server now whether it still serves this model.
    fn ask_serves(&self) -> Result<(), EngineError> {
        let listed = self.get_json("/models", PROBE_TIMEOUT)?;
        let serves = listed["data"]
            .as_array()
            .is_some_and(|models| models.iter().any(|m| m["id"].as_str() == Some(&self.model)));
        if serves {
            Ok(())
        } else {
            Err(self.error(
                None,
                ErrorCode::ModelNotAvailable,
                format!("no longer serves model {:?}", self.model),
            ))
        }
    }

    /// The API root this model is served from.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn error(
        &self,
        status: Option<u16>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> EngineError {
        remote_error(&self.base, status, code, message.into())
    }

    /// `req` with the bearer token, when there is one.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// A JSON POST to `url`.
    fn post_to(&self, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.authorized(self.agent.post(url))
            .header("content-type", "application/json")
    }

    fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.post_to(&format!("{}{path}", self.base))
    }

    fn get_json(&self, path: &str, timeout: Duration) -> Result<Value, EngineError> {
        let resp = self
            .authorized(self.agent.get(&format!("{}{path}", self.base)))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .call()
            .map_err(|e| self.transport_error(e))?;
        self.json_body(resp)
    }

    fn json_body(&self, mut resp: ureq::http::Response<ureq::Body>) -> Result<Value, EngineError> {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        if status != 200 {
            return Err(self.status_error(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| {
            self.error(
                Some(status),
                ErrorCode::GenerationFailed,
                format!("answer is not JSON: {e}"),
            )
        })
    }

    fn transport_error(&self, e: ureq::Error) -> EngineError {
        match e {
            // Only a stream sets a per-read limit: the remote went silent, not our deadline.
            ureq::Error::Timeout(ureq::Timeout::PerRead) => self.stalled(),
            ureq::Error::Timeout(_) => EngineError::Timeout,
            other => self.error(
                None,
                ErrorCode::ModelNotAvailable,
                format!("cannot reach it: {other}"),
            ),
        }
    }

    /// A stream that received nothing for the stall limit: a timeout (`MODEL_002`, 504) that
    /// names the server, as its other failures do, and the setting that bounds it.
    fn stalled(&self) -> EngineError {
        self.error(
            None,
            ErrorCode::ModelTimeout,
            format!(
                "sent nothing for {:?} of a streamed answer (a remote reading a very long \
                 prompt may need AGENTRT_REMOTE_STALL_SECS raised)",
                self.stall_limit
            ),
        )
    }

    /// A failed read of the stream. ureq hands its own errors, timeouts included, wrapped in
    /// an I/O error of kind `Other`: unwrap them so a timeout is reported as one.
    fn read_error(&self, e: std::io::Error) -> EngineError {
        let wrapped = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>());
        match wrapped {
            Some(ureq::Error::Timeout(ureq::Timeout::PerRead)) => self.stalled(),
            Some(ureq::Error::Timeout(_)) => EngineError::Timeout,
            _ if e.kind() == std::io::ErrorKind::TimedOut => EngineError::Timeout,
            _ => self.error(
                None,
                ErrorCode::GenerationFailed,
                format!("stream broke off: {e}"),
            ),
        }
    }

    /// An error answer: its own code when it is one of ours (another agentrt), else by status.
    fn status_error(&self, status: u16, body: &str) -> EngineError {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.chars().take(300).collect());
        let code = v["error"]["code"]
            .as_str()
            .and_then(ErrorCode::parse)
            .unwrap_or(match status {
                429 => ErrorCode::QueueFull,
                401 | 403 | 404 => ErrorCode::ModelNotAvailable,
                400..=499 if says_context_is_full(&v["error"], &message) => {
                    ErrorCode::ModelContextOverflow
                }
                400..=499 => ErrorCode::InvalidInput,
                _ => ErrorCode::GenerationFailed,
            });
        self.error(Some(status), code, message)
    }

    /// Start a streamed generation on its own thread; its metrics go under `served_as`, the
    /// name this server gives the model.
    pub fn start(
        &self,
        served_as: &str,
        prompt: &Prompt,
        params: &SamplingParams,
        control: &Control,
    ) -> Result<Generation, EngineError> {
        params.validate().map_err(EngineError::InvalidInput)?;
        control.check()?;
        let (path, mut body) = self.body(prompt, params);
        // No max_tokens asked: cut to the room the remote's context has, as a local model
        // does (the remote would refuse prompt + default past its context outright). Counted
        // before a place is taken, within the request's deadline. A prompt that fills the
        // context leaves no room for a token: refused here, without a request bound to fail.
        let mut prompt_tokens = None;
        if params.fit_to_context
            && let Some(count) = self.prompt_tokens(&body, control.deadline)
        {
            prompt_tokens = Some(count);
            let room = self.context_length.saturating_sub(count);
            if room == 0 {
                return Err(EngineError::ContextOverflow {
                    prompt: count as usize,
                    max_tokens: 1,
                    context: self.context_length as usize,
                });
            }
            if room < params.max_tokens {
                body["max_tokens"] = json!(room);
            }
        }
        control.check()?;
        let place = control.take_place(&self.in_flight, self.max_in_flight)?;
        let (progress, events) = mpsc::channel();
        let remote = self.clone();
        let control = control.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let caller_left = abandoned.clone();
        // Waiting until the remote answers, running while it streams: the same series as a
        // local model's, token counts from the server's usage.
        let mut timer = crate::metrics::GenerationTimer::arrive(served_as, 0);
        std::thread::Builder::new()
            .name("agentrt-remote".into())
            .spawn(move || {
                let watch = Watch {
                    control: &control,
                    caller_left: &caller_left,
                };
                let result =
                    remote.stream(path, body, prompt_tokens, &watch, &progress, &mut timer);
                // Settle the metrics and give the place back before the caller hears of the
                // end, as the local scheduler does: a client that saw the end finds both done.
                drop(timer);
                drop(place);
                let _ = progress.send(Progress::Done(result));
            })
            .map_err(|e| EngineError::Runtime(format!("cannot start a remote generation: {e}")))?;
        Ok(Generation {
            events,
            model: None,
            abandoned: Some(abandoned),
            remote: true,
            pending: Vec::new(),
        })
    }

    /// The tokens of the prompt of `body` (a request built by [`Self::body`]), counted by the
    /// remote's `/tokenize`; `None` when the room they leave cannot be known (no context
    /// length, a fill-in-the-middle prompt, no `/tokenize`).
    fn prompt_tokens(&self, body: &Value, deadline: Option<Instant>) -> Option<u32> {
        if self.context_length == 0 || body.get("suffix").is_some() {
            return None;
        }
        let mut ask = json!({"model": self.model});
        for field in ["prompt", "messages"] {
            if let Some(v) = body.get(field) {
                ask[field] = v.clone();
            }
        }
        self.tokenize(&ask, deadline).ok()
    }

    /// The request for `prompt`: its path and JSON body.
    fn body(&self, prompt: &Prompt, params: &SamplingParams) -> (&'static str, Value) {
        let mut body = json!({
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            // OpenAI's seed is a signed integer: the same 64 bits, as the server reads them back.
            "seed": params.seed as i64,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        let path = match prompt {
            Prompt::Chat(messages) => {
                body["messages"] = json!(
                    messages
                        .iter()
                        .map(|m: &TemplateMessage| json!({"role": m.role, "content": m.content}))
                        .collect::<Vec<_>>()
                );
                "/chat/completions"
            }
            Prompt::Text(text) => {
                body["prompt"] = json!(text);
                "/completions"
            }
            Prompt::Fim { prefix, suffix } => {
                body["prompt"] = json!(prefix);
                body["suffix"] = json!(suffix);
                "/completions"
            }
        };
        (path, body)
    }

    /// Send the request and read the stream, handing text on. It stops when the caller goes
    /// away, cancels or runs past its deadline, within [`WATCH_INTERVAL`] whatever the remote
    /// is doing (reading a long prompt sends nothing for minutes), and gives its place back;
    /// the connection closes as the reader thread next wakes (a line, or the stall limit),
    /// which stops the remote generation. A remote that sends nothing for the stall limit
    /// fails it. A remote that sends no usage is charged what was counted or estimated of the
    /// prompt (`prompt_tokens` when its `/tokenize` counted it) and a token for each piece of
    /// text it sent, so that budgets and statistics still count its work.
    fn stream(
        &self,
        path: &str,
        body: Value,
        prompt_tokens: Option<u32>,
        watch: &Watch<'_>,
        progress: &mpsc::Sender<Progress>,
        timer: &mut crate::metrics::GenerationTimer,
    ) -> Result<Completion, EngineError> {
        let prompt_tokens = prompt_tokens.unwrap_or_else(|| estimated_prompt_tokens(&body));
        let lines = self.read_on_a_thread(path, body, watch.control.deadline)?;
        let mut admitted = false;
        let mut text = String::new();
        let mut usage = None;
        let mut pieces = 0u32;
        let mut finish = FinishReason::EndOfSequence;
        loop {
            watch.check()?;
            let line = match lines.recv_timeout(WATCH_INTERVAL) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => return Err(e),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.error(
                        None,
                        ErrorCode::GenerationFailed,
                        "stream ended without [DONE]",
                    ));
                }
            };
            if !admitted {
                // The first line is the answer's head having come: the remote took it.
                timer.admitted();
                admitted = true;
                let _ = progress.send(Progress::Accepted);
            }
            let Some(data) = line.trim_end().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|e| {
                self.error(
                    None,
                    ErrorCode::GenerationFailed,
                    format!("bad stream chunk: {e}"),
                )
            })?;
            if chunk["error"].is_object() {
                return Err(self.status_error(500, data));
            }
            if let Some(u) = chunk["usage"].as_object() {
                let counted = Usage {
                    prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0)
                        as u32,
                    completion_tokens: u
                        .get("completion_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0) as u32,
                };
                timer.counted(
                    counted.prompt_tokens.into(),
                    counted.completion_tokens.into(),
                );
                usage = Some(counted);
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            let piece = choice["delta"]["content"]
                .as_str()
                .or(choice["text"].as_str())
                .unwrap_or("");
            if !piece.is_empty() {
                timer.first_text();
                pieces = pieces.saturating_add(1);
                text.push_str(piece);
                if progress.send(Progress::Text(piece.to_string())).is_err() {
                    // The caller is gone; dropping the response closes the connection.
                    return Err(EngineError::Cancelled);
                }
            }
            match choice["finish_reason"].as_str() {
                Some("length") => finish = FinishReason::Length,
                // OpenAI's `stop` is both ends; vLLM names the stop sequence that matched.
                Some("stop") if choice["stop_reason"].is_string() => {
                    finish = FinishReason::StopSequence;
                }
                _ => {}
            }
        }
        let usage = usage.unwrap_or_else(|| {
            let estimate = Usage {
                prompt_tokens,
                completion_tokens: pieces,
            };
            timer.counted(
                estimate.prompt_tokens.into(),
                estimate.completion_tokens.into(),
            );
            estimate
        });
        Ok(Completion {
            model: self.model.clone(),
            text,
            finish_reason: finish,
            usage,
        })
    }

    /// Send the request on a thread of its own, which hands on each line of a `200` answer
    /// (or the error that ended it) and ends with the answer, closing the connection, or as
    /// soon as nobody takes its lines. An empty line first says the head has come.
    fn read_on_a_thread(
        &self,
        path: &str,
        body: Value,
        deadline: Option<Instant>,
    ) -> Result<mpsc::Receiver<Result<String, EngineError>>, EngineError> {
        let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        // ureq restarts the per-read limit at each read of the socket (headers and body), so
        // it bounds silence, not the length of the answer; the deadline bounds that.
        let request = self
            .post(path)
            .config()
            .timeout_global(left)
            .timeout_per_read(Some(self.stall_limit))
            .build();
        let remote = self.clone();
        // A few lines ahead at most: the reader waits for the generation, not the other way.
        let (lines, received) = mpsc::sync_channel(16);
        std::thread::Builder::new()
            .name("agentrt-remote-read".into())
            .spawn(move || {
                let mut resp = match request.send(body.to_string()) {
                    Ok(resp) => resp,
                    Err(e) => {
                        let _ = lines.send(Err(remote.transport_error(e)));
                        return;
                    }
                };
                let status = resp.status().as_u16();
                if status != 200 {
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    let _ = lines.send(Err(remote.status_error(status, &text)));
                    return;
                }
                if lines.send(Ok(String::new())).is_err() {
                    return;
                }
                let mut reader = std::io::BufReader::new(resp.body_mut().as_reader());
                loop {
                    let mut line = String::new();
                    match std::io::BufRead::read_line(&mut reader, &mut line) {
                        // The end: dropping the sender tells the generation.
                        Ok(0) => return,
                        Ok(_) => {
                            if lines.send(Ok(line)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = lines.send(Err(remote.read_error(e)));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| EngineError::Runtime(format!("cannot start a remote generation: {e}")))?;
        Ok(received)
    }

    /// Tokens of `text` by the remote's tokenizer (its `/tokenize`), special tokens (a BOS)
    /// added when `special`, waiting until `deadline` (and at most 30 s).
    pub fn count_tokens(
        &self,
        text: &str,
        special: bool,
        deadline: Option<Instant>,
    ) -> Result<u32, EngineError> {
        self.tokenize(
            &json!({"model": self.model, "prompt": text, "add_special_tokens": special}),
            deadline,
        )
    }

    /// The count the remote's `/tokenize` gives for `ask` (vLLM's request shape), waiting
    /// until `deadline` and at most [`COUNT_LIMIT`] (a deadline already past is a timeout).
    fn tokenize(&self, ask: &Value, deadline: Option<Instant>) -> Result<u32, EngineError> {
        let limit = deadline.map_or(COUNT_LIMIT, |d| {
            d.saturating_duration_since(Instant::now()).min(COUNT_LIMIT)
        });
        if limit.is_zero() {
            return Err(EngineError::Timeout);
        }
        let root = self.base.strip_suffix("/v1").unwrap_or(&self.base);
        let resp = self
            .post_to(&format!("{root}/tokenize"))
            .config()
            .timeout_global(Some(limit))
            .build()
            .send(ask.to_string())
            .map_err(|e| self.transport_error(e))?;
        if resp.status().as_u16() == 404 {
            return Err(self.error(
                Some(404),
                ErrorCode::InvalidInput,
                "the remote server does not count tokens (it has no /tokenize)",
            ));
        }
        let v = self.json_body(resp)?;
        v["count"]
            .as_u64()
            .or_else(|| v["tokens"].as_array().map(|t| t.len() as u64))
            .map(|n| n as u32)
            .ok_or_else(|| {
                self.error(
                    Some(200),
                    ErrorCode::GenerationFailed,
                    "/tokenize answered no count",
                )
            })
    }
}

/// Whether a refusal says the prompt and the tokens asked do not fit the model's context, as
/// servers word it: OpenAI's `context_length_exceeded` code, llama.cpp's
/// `exceed_context_size_error` type, vLLM's "maximum context length" message. Such a request is
/// the client's to shorten (`MODEL_004`), not malformed.
fn says_context_is_full(error: &Value, message: &str) -> bool {
    let named = |field: &str, names: &[&str]| {
        error[field]
            .as_str()
            .is_some_and(|value| names.contains(&value))
    };
    let message = message.to_ascii_lowercase();
    named("code", &["context_length_exceeded"])
        || named("type", &["exceed_context_size_error"])
        || message.contains("maximum context length")
        || message.contains("context length exceeded")
        || message.contains("exceeds the available context size")
}

/// The prompt tokens charged when the remote sends no usage and its prompt was not counted:
/// about four bytes a token for English and code, and at least one, so that a tokens-per-minute
/// budget is never spent for nothing.
fn estimated_prompt_tokens(body: &Value) -> u32 {
    let bytes = ["prompt", "suffix", "messages"]
        .iter()
        .filter_map(|field| body.get(*field))
        .map(|v| match v {
            Value::String(text) => text.len(),
            other => other.to_string().len(),
        })
        .sum::<usize>();
    u32::try_from(bytes.div_ceil(4).max(1)).unwrap_or(u32::MAX)
}

/// `message` with the server's root `url`, and its address in any form — with credentials,
/// host and port, the host alone — written as `[model server]`: a transport error may name
/// where it failed to connect, a TLS error the name the certificate was checked against.
pub(super) fn without_address(message: &str, url: &str) -> String {
    const SERVER: &str = "[model server]";
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    // The userinfo of `user:token@host` is no one else's business either.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8000`.
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host_port, |(h, _)| h),
    };
    let mut out = message.replace(url, SERVER);
    for part in [authority, host_port] {
        if !part.is_empty() {
            out = out.replace(part, SERVER);
        }
    }
    replace_word(&out, host, SERVER)
}

/// `text` with each occurrence of `word` that is not part of a longer name (no letter, digit,
/// `-`, `_` or `.` next to it) replaced by `with`: a host called `vllm` leaves `vllm-style`
/// alone.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    if word.is_empty() {
        return text.to_string();
    }
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let (before, after) = (&rest[..at], &rest[at + word.len()..]);
        let alone = !before.chars().next_back().is_some_and(part_of_name)
            && !after.chars().next().is_some_and(part_of_name);
        out.push_str(before);
        out.push_str(if alone { with } else { word });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn remote_error(url: &str, status: Option<u16>, code: ErrorCode, message: String) -> EngineError {
    EngineError::Remote {
        url: url.to_string(),
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_message_of_a_remote_error_does_not_name_its_server() {
        let url = "http://bob:secret@10.1.2.3:8000/v1";
        let e = remote_error(
            url,
            None,
            ErrorCode::ModelNotAvailable,
            "cannot reach it: io: connect to 10.1.2.3:8000 refused (http://bob:secret@10.1.2.3:8000/v1/models)".into(),
        );
        let public = e.public_message();
        for hidden in ["10.1.2.3", "8000", "bob", "secret"] {
            assert!(!public.contains(hidden), "{public}");
        }
        assert!(
            public.starts_with("model server: cannot reach it"),
            "{public}"
        );
        // The full error, for the log, keeps them.
        assert!(e.to_string().contains("10.1.2.3:8000"), "{e}");
        assert_eq!(
            without_address("no such model", "https://models.internal/v1"),
            "no such model"
        );
        // A TLS error names the host without its port.
        let tls = without_address(
            "cannot reach it: certificate not valid for name \"models.internal\"",
            "https://models.internal:8443/v1",
        );
        assert_eq!(
            tls,
            "cannot reach it: certificate not valid for name \"[model server]\""
        );
        // A short host name is replaced where it stands alone, not inside other words.
        assert_eq!(
            without_address(
                "vllm at vllm:8000 said: vllm-style error (vllm)",
                "http://vllm:8000/v1"
            ),
            "[model server] at [model server] said: vllm-style error ([model server])"
        );
        assert_eq!(
            without_address("connect [::1]:8000 and ::1", "http://[::1]:8000/v1"),
            "connect [model server] and [model server]"
        );
    }

    #[test]
    fn entries_name_the_root_the_token_and_the_model() {
        assert_eq!(
            parse_entry("http://gpu:8000/v1#Qwen/Qwen2.5-Coder-7B").expect("entry"),
            Entry {
                base: "http://gpu:8000/v1".into(),
                token: None,
                model: Some("Qwen/Qwen2.5-Coder-7B".into()),
            }
        );
        assert_eq!(
            parse_entry("https://:s3cret@llm.example/").expect("entry"),
            Entry {
                base: "https://llm.example/v1".into(),
                token: Some("s3cret".into()),
                model: None,
            }
        );
        assert!(parse_entry("http:///v1").is_err());
        assert!(is_remote("https://x/v1") && !is_remote("/models/x.gguf"));
    }

    /// A remote model `m` at `base` without probing it first.
    fn test_remote(base: String, stall_limit: Duration, max_in_flight: usize) -> RemoteModel {
        RemoteModel {
            base,
            model: "m".into(),
            token: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            context_length: 0,
            stall_limit,
            in_flight: FifoSemaphore::new(max_in_flight),
            max_in_flight,
            last_probe: Default::default(),
            probing: Default::default(),
        }
    }

    #[test]
    fn concurrent_health_probes_ask_a_silent_server_once() {
        // A server that takes connections and never answers: each probe waits out its 2 s.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let remote = test_remote(
            format!("http://{}/v1", listener.local_addr().expect("address")),
            STALL_LIMIT,
            64,
        );
        let answers: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let probes: Vec<_> = (0..8).map(|_| scope.spawn(|| remote.probe())).collect();
            probes
                .into_iter()
                .map(|p| p.join().expect("probe"))
                .collect()
        });
        assert!(answers.iter().all(Result::is_err), "{answers:?}");
        // The connections made sit in the listener's backlog: count them.
        listener.set_nonblocking(true).expect("nonblocking");
        let asked = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(asked, 1, "{answers:?}");
    }

    /// Read a request's head (through its blank line) from `conn`; its body stays unread.
    fn read_request_head(conn: &mut std::net::TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match std::io::Read::read(conn, &mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
    }

    /// Read a whole request from `conn`: its path and JSON body.
    fn read_request(conn: &std::net::TcpStream) -> (String, Value) {
        let mut reader = std::io::BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        let mut length = 0;
        let mut path = String::new();
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("head");
            if path.is_empty() {
                path = line.split(' ').nth(1).unwrap_or_default().to_string();
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut reader, &mut body).expect("body");
        (path, serde_json::from_slice(&body).expect("json"))
    }

    /// A whole `200` answer with the JSON `json`.
    fn json_answer(json: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{json}",
            json.len()
        )
    }

    /// A whole `200` event stream of `chunks` (JSON), then `[DONE]`.
    fn stream_answer(chunks: &[Value]) -> String {
        let mut answer = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                          connection: close\r\n\r\n"
            .to_string();
        for chunk in chunks {
            answer.push_str(&format!("data: {chunk}\n\n"));
        }
        answer.push_str("data: [DONE]\n\n");
        answer
    }

    /// A remote that answers its requests, in order, with `answers` (whole HTTP answers);
    /// the paths it was asked.
    fn canned_remote(answers: Vec<String>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/v1", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let mut paths = Vec::new();
            for answer in answers {
                let (mut conn, _) = listener.accept().expect("accept");
                paths.push(read_request(&conn).0);
                std::io::Write::write_all(&mut conn, answer.as_bytes()).expect("answer");
            }
            paths
        });
        (base, server)
    }

    fn generate(remote: &RemoteModel, params: &SamplingParams) -> Result<Completion, EngineError> {
        remote
            .start(
                "m",
                &Prompt::Text("def add(a, b):".into()),
                params,
                &Control::default(),
            )?
            .finish(&mut |_| {})
    }

    #[test]
    fn a_remote_without_usage_is_charged_its_prompt_and_a_token_a_piece() {
        let text = |t: &str| json!({"choices": [{"text": t, "finish_reason": null}]});
        let (base, server) = canned_remote(vec![stream_answer(&[
            text("    return"),
            text(" a"),
            text(" + b"),
        ])]);
        let remote = test_remote(base, STALL_LIMIT, 1);
        let done = generate(&remote, &SamplingParams::default()).expect("generate");
        server.join().expect("server");
        assert_eq!(done.text, "    return a + b");
        assert_eq!(done.usage.completion_tokens, 3, "{:?}", done.usage);
        // "def add(a, b):" is 14 bytes: about 4 tokens.
        assert_eq!(done.usage.prompt_tokens, 4, "{:?}", done.usage);
    }

    #[test]
    fn a_remote_naming_its_stop_sequence_ended_on_it() {
        let end = |reason: Value| {
            stream_answer(&[json!({"choices": [{
                "text": "x", "finish_reason": "stop", "stop_reason": reason
            }]})])
        };
        let (base, server) = canned_remote(vec![end(json!("\n\n")), end(Value::Null)]);
        let remote = test_remote(base, STALL_LIMIT, 1);
        let params = SamplingParams {
            stop: vec!["\n\n".into()],
            ..SamplingParams::default()
        };
        let matched = generate(&remote, &params).expect("generate");
        assert_eq!(matched.finish_reason, FinishReason::StopSequence);
        let ended = generate(&remote, &params).expect("generate");
        assert_eq!(ended.finish_reason, FinishReason::EndOfSequence);
        server.join().expect("server");
    }

    #[test]
    fn a_prompt_that_fills_the_remote_context_is_refused_without_asking_for_tokens() {
        let (base, server) = canned_remote(vec![json_answer(r#"{"count":100}"#)]);
        let mut remote = test_remote(base, STALL_LIMIT, 1);
        remote.context_length = 100;
        let params = SamplingParams {
            fit_to_context: true,
            ..SamplingParams::default()
        };
        let refused = generate(&remote, &params).expect_err("no room for a token");
        assert_eq!(refused.code(), ErrorCode::ModelContextOverflow, "{refused}");
        assert_eq!(server.join().expect("server"), ["/tokenize"]);
    }

    #[test]
    fn refusals_for_a_full_context_are_a_context_overflow_whatever_the_server() {
        let remote = test_remote("http://model.test/v1".into(), STALL_LIMIT, 1);
        let full = [
            r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            r#"{"object":"error","message":"This model's maximum context length is 2048 tokens. However, you requested 4000 tokens.","type":"BadRequestError","code":400}"#,
        ];
        for body in full {
            let error = remote.status_error(400, body);
            assert_eq!(error.code(), ErrorCode::ModelContextOverflow, "{body}");
        }
        let malformed =
            remote.status_error(400, r#"{"error":{"message":"temperature must be >= 0"}}"#);
        assert_eq!(malformed.code(), ErrorCode::InvalidInput);
    }

    /// A request without max_tokens (`fit_to_context`) asks the remote for what it has room
    /// for after the prompt, counted by its `/tokenize`; one that names max_tokens is sent as
    /// it is, without the count.
    #[test]
    fn a_request_without_max_tokens_is_cut_to_the_room_the_context_has() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/v1", listener.local_addr().expect("address"));
        // Answers /tokenize with 95 tokens and a completion with an empty stream; what each
        // request asked for, in order.
        let server = std::thread::spawn(move || {
            let mut asked: Vec<(String, Value)> = Vec::new();
            // Until both completions came, however many counts were asked.
            while asked.iter().filter(|(path, _)| path != "/tokenize").count() < 2 {
                let (mut conn, _) = listener.accept().expect("accept");
                let (path, body) = read_request(&conn);
                let answer = if path == "/tokenize" {
                    json_answer(r#"{"count":95}"#)
                } else {
                    stream_answer(&[])
                };
                std::io::Write::write_all(&mut conn, answer.as_bytes()).expect("answer");
                asked.push((path, body));
            }
            asked
        });
        let mut remote = test_remote(base, STALL_LIMIT, 4);
        remote.context_length = 100;
        let prompt = Prompt::Text("def add(a, b):".into());
        let fitted = SamplingParams {
            max_tokens: 16,
            fit_to_context: true,
            ..SamplingParams::default()
        };
        let named = SamplingParams {
            fit_to_context: false,
            ..fitted.clone()
        };
        for params in [&fitted, &named] {
            remote
                .start("m", &prompt, params, &Control::default())
                .expect("start")
                .finish(&mut |_| {})
                .expect("finish");
        }
        let asked = server.join().expect("server");
        assert_eq!(asked[0].0, "/tokenize");
        assert_eq!(asked[0].1["prompt"], "def add(a, b):");
        assert_eq!(asked[1].0, "/v1/completions");
        assert_eq!(asked[1].1["max_tokens"], 5, "100 − 95 tokens of room");
        assert_eq!(asked[2].0, "/v1/completions");
        assert_eq!(asked[2].1["max_tokens"], 16, "named: sent as asked");
    }

    /// A remote that takes requests and sends nothing back (as one reading a long prompt),
    /// holding each connection until the test ends; how many it took.
    fn silent_remote() -> (String, mpsc::Sender<()>, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/v1", listener.local_addr().expect("address"));
        let (hold, held) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut connections = Vec::new();
            listener.set_nonblocking(true).expect("nonblocking");
            while held.try_recv() == Err(mpsc::TryRecvError::Empty) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).expect("blocking");
                        read_request_head(&mut conn);
                        connections.push(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            connections.len()
        });
        (base, hold, server)
    }

    /// Wait (a generous guard, for a loaded machine) until `remote` has its place back.
    fn place_comes_back(remote: &RemoteModel) -> bool {
        (0..600).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            remote.in_flight.available() == 1
        })
    }

    #[test]
    fn a_cancel_or_a_caller_leaving_frees_the_place_while_the_remote_is_silent() {
        let (base, hold, server) = silent_remote();
        // Far longer than the test's guards: only the cancel can end these generations.
        let remote = test_remote(base, Duration::from_secs(600), 1);
        let start = |control: &Control| {
            remote.start(
                "remote-cancel-test",
                &Prompt::Text("def f():".into()),
                &SamplingParams::default(),
                control,
            )
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let cancellable = Control {
            cancel: Some(cancel.clone()),
            ..Control::default()
        };
        let generation = start(&cancellable).expect("start");
        cancel.store(true, Ordering::Relaxed);
        let outcome = loop {
            match generation.events.recv_timeout(Duration::from_secs(30)) {
                Ok(Progress::Done(result)) => break result,
                Ok(Progress::Accepted) => {}
                Ok(Progress::Text(piece)) => panic!("the silent remote sent {piece:?}"),
                Ok(Progress::Spent(usage)) => panic!("the silent remote counted {usage:?}"),
                Err(e) => panic!("a cancelled generation did not end: {e}"),
            }
        };
        assert!(
            matches!(outcome, Err(EngineError::Cancelled)),
            "{outcome:?}"
        );
        assert!(
            place_comes_back(&remote),
            "the cancelled generation kept its place"
        );

        // A caller that drops its generation gives the place back too.
        let generation = start(&Control::default()).expect("a place is free again");
        drop(generation);
        assert!(
            place_comes_back(&remote),
            "the abandoned generation kept its place"
        );
        let _ = hold.send(());
        assert_eq!(server.join().expect("server"), 2);
    }

    #[test]
    fn a_stream_that_goes_silent_fails_with_a_timeout() {
        // A server that answers a stream's headers and one chunk, then sends nothing more while
        // it holds the connection open (until the test drops `hold`).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let (hold, held) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            read_request_head(&mut conn);
            let chunk = "data: {\"choices\":[{\"text\":\"def\"}]}\n\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
                chunk.len()
            );
            std::io::Write::write_all(&mut conn, answer.as_bytes()).expect("answer");
            let _ = held.recv();
        });
        // A stall limit long enough for a busy machine to get the first chunk across.
        let remote = test_remote(format!("http://{address}/v1"), Duration::from_secs(1), 1);
        let generation = remote
            .start(
                "remote-stall-test",
                &Prompt::Text("def f():".into()),
                &SamplingParams::default(),
                &Control::default(),
            )
            .expect("start");
        // Its one place is taken while the first streams: a second is a full queue, not a
        // thread more waiting on the remote.
        let second = remote.start(
            "remote-stall-test",
            &Prompt::Text("def g():".into()),
            &SamplingParams::default(),
            &Control::default(),
        );
        assert!(
            matches!(second, Err(EngineError::QueueFull { .. })),
            "{:?}",
            second.err()
        );
        // Only a guard against hanging for ever: without the stall limit nothing ends it.
        let mut text = String::new();
        let outcome = loop {
            match generation.events.recv_timeout(Duration::from_secs(30)) {
                Ok(Progress::Text(piece)) => text.push_str(&piece),
                Ok(Progress::Done(result)) => break result,
                Ok(Progress::Spent(_) | Progress::Accepted) => {}
                Err(e) => panic!("a silent stream did not end: {e}"),
            }
        };
        drop(hold);
        server.join().expect("server");
        assert_eq!(text, "def");
        assert_eq!(
            remote.in_flight.available(),
            1,
            "the ended generation gave its place back"
        );
        assert!(
            matches!(
                outcome,
                Err(EngineError::Remote {
                    code: ErrorCode::ModelTimeout,
                    status: None,
                    ..
                })
            ),
            "{outcome:?}"
        );
    }
}
