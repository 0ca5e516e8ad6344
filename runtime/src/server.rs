//! `agentrt serve`: the HTTP API over the engine and the agents.
//!
//! `app(state)` builds the router, so tests can drive it without a socket. Routes keep the
//! shapes users of the replaced services relied on: `/generate`, `/review`, `/pipeline`,
//! `/chat`, `/health`, `/stats`, plus `/check`, `/models` and `/plugins`, and the
//! OpenAI-compatible `/v1/...` routes. As those services did, a body without a `Content-Type`
//! is read as JSON. Errors on `/tokenize` and on every `/v1/` path but the pipeline runs take
//! OpenAI's shape, with the headers the error carried.

pub mod auth;
mod body;
mod console;
pub mod error;
mod openai;
pub mod openapi;
pub mod reloading;
mod routes;

/// The bounds the HTTP routes put on a request, which the CLI's one-offs keep too.
pub(crate) use openai::request::MAX_TOKENS as MAX_COMPLETION_TOKENS;
pub use routes::stored_run_request;
pub(crate) use routes::{MAX_CHAT_TOKENS, MAX_TEMPERATURE, chat_answer};
mod runs;
pub mod startup;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};

use crate::engine::Engine;
use crate::pipeline::Pipeline;
pub use error::ApiError;
use error::{SentError, Uncounted};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// A request's deadline when neither the operator nor the client sets one.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a client may take to send its request body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Work stopped at the deadline gets this long to wind down, so the deadline's own 504 is the
/// answer rather than the work's timeout error.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Deadlines of every request and of shutting down (`AGENTRT_REQUEST_TIMEOUT`,
/// `AGENTRT_BODY_TIMEOUT`, `AGENTRT_HEADER_TIMEOUT`, `AGENTRT_DRAIN_SECONDS`, in seconds).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    pub body_timeout: Duration,
    /// How long a client has to send a request's headers, on a new connection or a kept-alive
    /// one; then the connection is closed. A client that opens connections and sends nothing,
    /// or a header a byte at a time, must not hold sockets open for good.
    pub header_timeout: Duration,
    /// How long the server keeps answering (ready: 503) after a shutdown signal before it
    /// stops accepting.
    pub drain: Duration,
    /// Requests on the answer-when-done routes (`/generate`, `/check`, `/review`, `/pipeline`,
    /// `/chat`) worked on at once; more are refused with 429 `QUEUE_001` at once, as a full run
    /// queue is, instead of each holding a thread (and a sandbox's memory) while it waits.
    pub sync_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            header_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            sync_requests: 16,
        }
    }
}

/// Longest time a setting or header may ask for; more is taken as this much (a deadline beyond
/// it could not be added to the clock without overflowing).
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// A number of seconds (`"2.5"`): positive, or zero where `zero_ok`; at most [`LONGEST_WAIT`].
pub(crate) fn parse_seconds(text: &str, zero_ok: bool) -> Option<Duration> {
    let s = text.trim().parse::<f64>().ok()?;
    if s.is_nan() || s < 0.0 || (s == 0.0 && !zero_ok) {
        return None;
    }
    Some(Duration::try_from_secs_f64(s).map_or(LONGEST_WAIT, |d| d.min(LONGEST_WAIT)))
}

impl Limits {
    /// The defaults, with what the environment sets.
    pub fn from_env() -> Self {
        use crate::settings::seconds;
        let d = Self::default();
        Self {
            request_timeout: seconds("AGENTRT_REQUEST_TIMEOUT").unwrap_or(d.request_timeout),
            body_timeout: seconds("AGENTRT_BODY_TIMEOUT").unwrap_or(d.body_timeout),
            header_timeout: seconds("AGENTRT_HEADER_TIMEOUT").unwrap_or(d.header_timeout),
            drain: seconds("AGENTRT_DRAIN_SECONDS").unwrap_or(d.drain),
            sync_requests: crate::settings::count("AGENTRT_SYNC_REQUESTS")
                .map(|n| n.min(tokio::sync::Semaphore::MAX_PERMITS))
                .unwrap_or(d.sync_requests),
        }
    }
}

/// One request's deadline, for the handlers that can stop their work at it: the flag is set
/// when the deadline passes (and the client has been answered 504).
#[derive(Debug, Clone)]
pub struct RequestDeadline {
    pub at: Instant,
    pub cancel: Arc<AtomicBool>,
}

impl RequestDeadline {
    /// Engine limits that stop a generation just after the deadline.
    pub fn control(&self) -> crate::engine::Control {
        crate::engine::Control {
            deadline: Some(self.at + DEADLINE_GRACE),
            cancel: Some(self.cancel.clone()),
            // A full queue is a 429 its client retries after `Retry-After`.
            wait_in_line: false,
        }
    }

    /// The pipeline, stopping at its next stage or token once the deadline passes.
    pub fn pipeline(&self, pipeline: &Pipeline) -> Pipeline {
        pipeline.tracked(crate::pipeline::RunContext {
            events: None,
            call: crate::plugin::CallContext {
                cancel: Some(self.cancel.clone()),
                on_text: None,
                model: None,
            },
        })
    }
}

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub pipeline: Pipeline,
    /// Keys clients must present (none: the server is open).
    pub api_keys: Arc<auth::ApiKeys>,
    /// Pipeline runs: queued, running and stored.
    pub runs: Arc<crate::runs::Runs>,
    pub limits: Limits,
    /// Set when the server starts shutting down: `/health/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// Places for requests on the answer-when-done routes ([`Limits::sync_requests`]).
    pub sync_slots: Arc<tokio::sync::Semaphore>,
    /// Whether the server listens on a loopback address only: without keys it then answers
    /// only requests that name this machine as such ([`auth::refuse_rebound_names`]).
    pub loopback_only: bool,
}

/// The router with every route.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/generate", post(routes::generate))
        .route("/review", post(routes::review))
        .route("/check", post(routes::check))
        .route("/pipeline", post(routes::pipeline))
        .route("/chat", post(routes::chat))
        .route("/health", get(routes::health))
        .route("/health/live", get(routes::live))
        .route("/health/ready", get(routes::ready))
        .route("/stats", get(routes::stats))
        .route("/models", get(routes::models))
        .route("/plugins", get(routes::plugins))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/tokenize", post(openai::tokenize))
        .route("/v1/pipeline/runs", post(runs::create).get(runs::list))
        .route(
            "/v1/pipeline/runs/{id}",
            get(runs::get).delete(runs::cancel),
        )
        .route("/v1/pipeline/runs/{id}/events", get(runs::events))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.limits,
            enforce_deadlines,
        ))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(axum::middleware::from_fn(assume_json))
        .layer(axum::middleware::from_fn_with_state(
            state.api_keys.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (state.api_keys.clone(), state.loopback_only),
            auth::refuse_rebound_names,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.pipeline.stats.clone(),
            measure,
        ))
        .with_state(state)
}

/// `GET /openapi.json`: the API description ([`openapi`]).
async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::global().render(),
    )
        .into_response()
}

/// The client's `X-Request-Id` when it is a sane token, else a fresh one.
fn request_id(request: &axum::extract::Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string)
}

/// Every request gets an id (`X-Request-Id`, the client's or a new one, echoed in the answer)
/// and a `request` span carrying it, so every log line written for it (handlers, plugin calls
/// and the plugins' own logs, on whatever thread) names it; it is counted and timed to its
/// response head by route pattern (ids in paths do not multiply the series) and status, and
/// logged when answered.
async fn measure(
    axum::extract::State(stats): axum::extract::State<Arc<crate::stats::Stats>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let route = matched.clone().unwrap_or_else(|| "unmatched".to_string());
    let openai_route = openai::is_openai_path(request.uri().path());
    let counted = request.method() == axum::http::Method::POST
        && matched
            .as_deref()
            .is_some_and(|r| crate::stats::COUNTED_ROUTES.contains(&r));
    let id = request_id(&request);
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), route = %route);
    let mut abandoned = Abandoned {
        route: &route,
        counted,
        stats: &stats,
        started,
        span: &span,
        answered: false,
    };
    let mut response = next.run(request).instrument(span.clone()).await;
    abandoned.answered = true;
    let took = started.elapsed();
    let sent = response.extensions().get::<SentError>().cloned();
    if let Some(SentError(error)) = &sent {
        // Answered by a layer (deadline, body limit, key) before a handler could count it:
        // counted where the handler counts the others.
        if counted
            && response.extensions().get::<Uncounted>().is_some()
            && let Some(route) = &matched
        {
            stats.record_endpoint(route, took.as_millis() as u64, 0, Some(&error.code));
        }
        if openai_route
            && response
                .extensions()
                .get::<openai::OpenAiShaped>()
                .is_none()
        {
            response = in_openai_shape(error.clone(), response);
        }
    }
    let status = response.status().as_u16();
    crate::metrics::record_request(&route, status, took);
    let duration_ms = took.as_millis() as u64;
    // A failed request is a problem in the log, with its code and why (log analysis groups
    // them by code); 404s are mostly clients probing, not the server's problem.
    span.in_scope(|| match &sent {
        Some(SentError(e)) if status >= 500 => tracing::error!(
            target: "agentrt::http",
            status,
            duration_ms,
            error = %e.log_message(),
            "request failed: {}",
            e.code
        ),
        Some(SentError(e)) if status >= 400 && status != 404 => tracing::warn!(
            target: "agentrt::http",
            status,
            duration_ms,
            error = %e.log_message(),
            "request failed: {}",
            e.code
        ),
        // Probes and scrapes answered well come every few seconds for the server's whole
        // life: at info they would be most of the log (AGENTRT_LOG=agentrt::http=debug shows
        // them).
        _ if is_probe(&route) && status < 400 => {
            tracing::debug!(target: "agentrt::http", status, duration_ms, "request finished")
        }
        _ => tracing::info!(target: "agentrt::http", status, duration_ms, "request finished"),
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    // No answer is to be read as anything but its declared type (an error echoing a path
    // into JSON must not be sniffed as HTML), the console's files included.
    response.headers_mut().insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A deadline as a person reads it: `10 ms` (not `0.0 s`), `2.5 s`, `600 s`.
fn seconds_text(duration: std::time::Duration) -> String {
    match duration.as_secs_f64() {
        s if s >= 10.0 => format!("{s:.0} s"),
        s if s >= 1.0 => format!("{s:.1} s"),
        _ => format!("{} ms", duration.as_millis()),
    }
}

/// Whether `route` is a health probe's or a metrics scrape's.
fn is_probe(route: &str) -> bool {
    matches!(
        route,
        "/health" | "/health/live" | "/health/ready" | "/metrics"
    )
}

/// A request whose client hung up before the answer (the server drops its future): counted
/// as status 499, nginx's "client closed request", in the metrics and, for a counted route, as
/// a `COMM_004` failure in `/stats`, so abandoned requests show where an SLO looks.
struct Abandoned<'a> {
    route: &'a str,
    /// Whether the route's handler counts its requests (which it never got to do).
    counted: bool,
    stats: &'a crate::stats::Stats,
    started: std::time::Instant,
    span: &'a tracing::Span,
    answered: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let took = self.started.elapsed();
        // A handler that panicked is dropped while unwinding: the server's failure, not the
        // client's hang-up.
        let (status, code) = if std::thread::panicking() {
            (500, crate::error_code::ErrorCode::Internal)
        } else {
            (499, crate::error_code::ErrorCode::Cancelled)
        };
        crate::metrics::record_request(self.route, status, took);
        // A submitted run counts itself when it ends, even when its client left meanwhile.
        if self.counted && self.route != crate::runs::STATS_ENDPOINT {
            self.stats
                .record_endpoint(self.route, took.as_millis() as u64, 0, Some(code.as_str()));
        }
        let duration_ms = took.as_millis() as u64;
        self.span.in_scope(|| {
            if status == 500 {
                tracing::error!(target: "agentrt::http", status, duration_ms, "request failed: the handler panicked")
            } else {
                tracing::info!(target: "agentrt::http", status, duration_ms, "client closed the request")
            }
        });
    }
}

/// `original`, an error answered in the native shape, again in OpenAI's. The headers it carried
/// go with it (`Allow` on a 405, `WWW-Authenticate` on a 401, `Retry-After`), except those the
/// new body sets or that described the old one.
fn in_openai_shape(
    error: ApiError,
    original: axum::response::Response,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut reshaped = openai::OpenAiError(error).into_response();
    let own: Vec<axum::http::HeaderName> = reshaped.headers().keys().cloned().collect();
    for (name, value) in original.headers() {
        if name != axum::http::header::CONTENT_LENGTH && !own.contains(name) {
            reshaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    reshaped
}

/// Server-sent events as a response proxies pass on as it comes: nginx buffers a response
/// unless it says `X-Accel-Buffering: no`, which would hold tokens back until its buffer fills.
fn unbuffered(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::HeaderName::from_static("x-accel-buffering"),
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// A request body without a `Content-Type` is read as JSON, as FastAPI (the services agentrt
/// replaces) and vLLM do: `requests.post(url, data=json.dumps(body))` sends none. A type the
/// client does name is kept, so a body declared as something else is still refused (400
/// `VAL_001`). Not for a browser (it sends `Origin`): a page on another site may post an
/// untyped body without asking first (no CORS preflight), and reading it as JSON would let any
/// page drive a server that runs without keys.
async fn assume_json(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ORIGIN, TRANSFER_ENCODING};
    let headers = request.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    if has_body && !headers.contains_key(CONTENT_TYPE) && !headers.contains_key(ORIGIN) {
        request.headers_mut().insert(
            CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
    }
    next.run(request).await
}

/// The request's deadlines: its body must arrive within the body timeout (else `408
/// COMM_003`), and its answer must start within the request timeout, or the client's shorter
/// `X-Request-Timeout: SECONDS` (else `504 COMM_003`, and the work is told to stop). Streams
/// (server-sent events) are bounded by their own limits once they have started.
async fn enforce_deadlines(
    axum::extract::State(limits): axum::extract::State<Limits>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let asked = match request.headers().get("x-request-timeout") {
        None => None,
        // A deadline the client asked for and did not get would be worse than an error.
        Some(value) => match value.to_str().ok().and_then(|v| parse_seconds(v, false)) {
            Some(asked) => Some(asked),
            None => {
                let mut err = ApiError::new(
                    crate::error_code::ErrorCode::InvalidInput,
                    format!(
                        "X-Request-Timeout: expected a positive number of seconds, got {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ),
                );
                err.details = Some(serde_json::json!({"field": "X-Request-Timeout"}));
                return err.into_uncounted_response();
            }
        },
    };
    let timeout = asked.map_or(limits.request_timeout, |a| a.min(limits.request_timeout));
    let at = Instant::now() + timeout;
    let (mut parts, body) = request.into_parts();
    // One deadline for the body, however it arrives.
    let read_within = limits.body_timeout.min(timeout);
    let body_due = tokio::time::Instant::now() + read_within;
    let declared = declared_length(&parts.headers);
    let bytes = match read_body(body, declared, &BODIES_IN_FLIGHT, body_due).await {
        Ok(bytes) => bytes,
        Err(BodyRead::TooLarge) => return ApiError::body_too_large().into_uncounted_response(),
        Err(BodyRead::Failed(why)) => {
            // The body as a whole, not a field of it: VAL_001, as a body that is not JSON.
            return ApiError::new(
                crate::error_code::ErrorCode::ValidationFailed,
                format!("the request body could not be read: {why}"),
            )
            .into_uncounted_response();
        }
        Err(BodyRead::NoRoom) => {
            return ApiError::new(
                crate::error_code::ErrorCode::QueueFull,
                format!(
                    "the server is receiving more request bodies than it holds at once ({} \
                     MiB together); try again shortly",
                    BODIES_IN_FLIGHT_KIB >> 10
                ),
            )
            .into_uncounted_response();
        }
        Err(BodyRead::Late) => {
            let mut err = ApiError::new(
                crate::error_code::ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {:.1} s",
                    read_within.as_secs_f64()
                ),
            );
            err.status = axum::http::StatusCode::REQUEST_TIMEOUT;
            return err.into_uncounted_response();
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    parts.extensions.insert(RequestDeadline {
        at,
        cancel: cancel.clone(),
    });
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    // A client that goes away before its answer drops this future: stop the work too.
    let mut abandoned = CancelOnDrop(Some(cancel.clone()));
    let answered = tokio::time::timeout_at(at.into(), next.run(request)).await;
    abandoned.0 = None;
    match answered {
        Ok(response) => response,
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            ApiError::new(
                crate::error_code::ErrorCode::RequestTimeout,
                format!(
                    "the request did not finish within its deadline of {}",
                    seconds_text(timeout)
                ),
            )
            .into_uncounted_response()
        }
    }
}

/// Request bodies over [`SMALL_BODY_BYTES`] being received at once hold at most this much
/// memory (in KiB: the unit of [`BODIES_IN_FLIGHT`]'s permits).
const BODIES_IN_FLIGHT_KIB: usize = 64 << 10;

/// Bodies declared this small are read without taking room: every API call but large code
/// reviews, which no client crowd of large bodies may then hold back.
const SMALL_BODY_BYTES: usize = 64 << 10;

/// The room larger request bodies being received take, one permit a KiB: each takes its
/// declared length's worth (a chunked one, the largest a body may be) before it is read and
/// gives it back once it is in. Taken whole, so that every body holding room can finish (room
/// taken piecemeal would let a crowd of half-read bodies hold all of it, none able to go on);
/// a body waiting for room holds none.
static BODIES_IN_FLIGHT: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(BODIES_IN_FLIGHT_KIB);

/// Why a request body was not read.
#[derive(Debug, PartialEq)]
enum BodyRead {
    /// Over [`MAX_BODY_BYTES`].
    TooLarge,
    /// The connection failed (a malformed chunk, a reset).
    Failed(String),
    /// Not all of it arrived by its deadline.
    Late,
    /// No room among the bodies being received by its deadline.
    NoRoom,
}

/// The length of the body `headers` announce: `None` when it comes in chunks of a length not
/// known beforehand; a request with neither a length nor chunks has none (a GET).
fn declared_length(headers: &axum::http::HeaderMap) -> Option<usize> {
    match headers.get(axum::http::header::CONTENT_LENGTH) {
        Some(length) => length.to_str().ok().and_then(|v| v.parse().ok()),
        None if headers.contains_key(axum::http::header::TRANSFER_ENCODING) => None,
        None => Some(0),
    }
}

/// `kib` permits of `room`, looked for every few milliseconds until `due`. Not a place in
/// the semaphore's line: the waiter at its head would hold back every body behind it, even
/// one that fits.
async fn take_room(
    room: &tokio::sync::Semaphore,
    kib: u32,
    due: tokio::time::Instant,
) -> Result<tokio::sync::SemaphorePermit<'_>, BodyRead> {
    loop {
        match room.try_acquire_many(kib) {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::NoPermits) if tokio::time::Instant::now() < due => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => return Err(BodyRead::NoRoom),
        }
    }
}

/// Read `body` (`declared` bytes long, when its length was declared: hyper holds it to that)
/// by `due`; one over [`SMALL_BODY_BYTES`], or of undeclared length, first takes its room in
/// `room` (one permit a KiB), given back when it returns.
async fn read_body(
    mut body: axum::body::Body,
    declared: Option<usize>,
    room: &tokio::sync::Semaphore,
    due: tokio::time::Instant,
) -> Result<bytes::Bytes, BodyRead> {
    use http_body_util::BodyExt;
    let _room = match declared {
        Some(bytes) if bytes <= SMALL_BODY_BYTES => None,
        declared => {
            let bytes = declared.unwrap_or(MAX_BODY_BYTES).min(MAX_BODY_BYTES);
            let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
            Some(take_room(room, kib, due).await?)
        }
    };
    // Sized once: growing by doubling would hold up to twice what was declared (pages of a
    // large allocation not yet written take no memory).
    let mut read = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    loop {
        let frame = match tokio::time::timeout_at(due, body.frame()).await {
            Err(_) => return Err(BodyRead::Late),
            Ok(None) => return Ok(read.freeze()),
            Ok(Some(Err(e))) => return Err(BodyRead::Failed(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing a handler reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if read.len() + data.len() > MAX_BODY_BYTES {
            return Err(BodyRead::TooLarge);
        }
        read.extend_from_slice(&data);
    }
}

/// Sets its flag when dropped while still armed: a request future dropped before it finished
/// (the connection closed) tells the work it started to stop.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = &self.0 {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Answers 413 before reading a body whose declared `Content-Length` is over the limit.
///
/// Without this the server reads up to the limit, answers, and closes while the client is
/// still sending: the client then sees a connection reset instead of the 413. Bodies without
/// a declared length (chunked) are cut off at the limit by `enforce_deadlines` as they arrive.
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if declared_length(request.headers()).is_some_and(|n| n > MAX_BODY_BYTES) {
        return ApiError::body_too_large().into_uncounted_response();
    }
    next.run(request).await
}

/// Serve on `socket`, bound by the caller before the models load (an address in use is found
/// in a moment, not after minutes of loading) and listening from now on, until Ctrl-C or
/// SIGTERM.
pub async fn serve(state: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    // Signals are caught from before the server says it listens: one sent right after that
    // line must shut it down gracefully, not end it by the signal's default action.
    let signal = shutdown_signal();
    tracing::info!(address = %listener.local_addr()?, "agentrt listening");
    // Scripts and tests read this line to learn that the server is ready (and its port when
    // they asked for port 0).
    say_on_stdout(&format!(
        "agentrt listening on http://{}",
        listener.local_addr()?
    ));
    let runs = state.runs.clone();
    let runs_to_refuse = state.runs.clone();
    let draining = state.draining.clone();
    let drain = state.limits.drain;
    let header_timeout = state.limits.header_timeout;
    // Requests in flight get as long to finish as their deadline would give them anyway.
    let finish_within = state.limits.request_timeout;
    let signalled = async move {
        signal.await;
        // A second Ctrl-C or SIGTERM means now: the operator will not wait for the drain.
        let again = interrupted();
        tokio::spawn(async move {
            let status = again.await;
            tracing::warn!("signalled again: exiting without waiting for requests and runs");
            std::process::exit(status);
        });
        // Tell the load balancer first (ready answers 503), keep serving while it notices,
        // then stop accepting and let the requests in flight finish.
        draining.store(true, Ordering::Relaxed);
        runs_to_refuse.stop_taking();
        tracing::info!(seconds = drain.as_secs_f64(), "draining before shutdown");
        tokio::time::sleep(drain).await;
    };
    // Runs still in flight are cancelled and stored as such, not left to be found
    // interrupted at the next start. This comes before waiting on the connections: a run's
    // event stream only ends with the run.
    let stop_runs = async move {
        let _ = tokio::task::spawn_blocking(move || runs.shutdown(RUN_SHUTDOWN_GRACE)).await;
    };
    serve_connections(
        listener,
        app(state),
        header_timeout,
        signalled,
        stop_runs,
        finish_within,
    )
    .await
}

/// Write `line` to stdout at once. Nobody reading it (`serve | true`) is no reason to fail: the
/// server ignores SIGPIPE.
fn say_on_stdout(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Accept HTTP/1 connections and serve `app` on each until `shutdown` completes, then stop
/// accepting, run `stopping`, and wait (at most `finish_within`) for the connections'
/// requests in flight; responses still streaming after that are cut. Like `axum::serve`,
/// plus `header_timeout` for reading request headers (hyper needs a timer for one; axum
/// sets none).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    stopping: impl std::future::Future<Output = ()>,
    finish_within: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = http1_builder(header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            stream = accept(&listener) => stream,
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Both at once: kept-alive connections are told to close after the request they serve
    // (no new work arrives on them) while the runs are cancelled, whose event streams end
    // with them.
    let ((), waited) = tokio::join!(
        stopping,
        tokio::time::timeout(finish_within, graceful.shutdown())
    );
    if waited.is_err() {
        tracing::warn!(
            seconds = finish_within.as_secs_f64(),
            "responses still open after the request deadline are cut short"
        );
    }
    Ok(())
}

/// The next connection, `TCP_NODELAY` set. Failures (out of file descriptors and the like)
/// are logged and waited out instead of spun on.
async fn accept(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// HTTP/1 connections that close when a client takes longer than `header_timeout` to send a
/// request's headers (hyper needs a timer for that).
fn http1_builder(header_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

/// How long shutting down waits for cancelled runs to store their end.
const RUN_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// With `AGENTRT_EXIT_WITH_STDIN=1`, completes when stdin reaches end of file: a supervisor
/// (or a test harness) holding the other end of a pipe takes the server down with it, even
/// when it is killed without the chance to stop the server.
async fn stdin_closed() {
    if crate::settings::word("AGENTRT_EXIT_WITH_STDIN") != Some("1") {
        return std::future::pending().await;
    }
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    tracing::info!("stdin closed; shutting down");
}

/// The next SIGTERM or Ctrl-C, listened for from the call on (not from the first poll): the
/// exit status it should end the process with (128 + the signal, as a shell reports it).
fn interrupted() -> impl std::future::Future<Output = i32> {
    #[cfg(unix)]
    let (term, interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            // A handler that could not be registered waits for ever; the other still ends it.
            let wait = |registered: std::io::Result<tokio::signal::unix::Signal>, status| async move {
                match registered {
                    Ok(mut s) => {
                        s.recv().await;
                        status
                    }
                    Err(_) => std::future::pending::<i32>().await,
                }
            };
            tokio::select! { s = wait(term, 143) => s, s = wait(interrupt, 130) => s }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }
}

/// SIGTERM, Ctrl-C or (when asked for) stdin closing, listened for from the call on.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let signal = interrupted();
    async move {
        tokio::select! { _ = signal => {}, _ = stdin_closed() => {} }
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_reads_in_a_unit_that_shows_it() {
        assert_eq!(seconds_text(Duration::from_millis(10)), "10 ms");
        assert_eq!(seconds_text(Duration::from_millis(2500)), "2.5 s");
        assert_eq!(seconds_text(Duration::from_secs(600)), "600 s");
    }

    #[test]
    fn seconds_parse_to_durations_the_clock_can_hold() {
        assert_eq!(
            parse_seconds("2.5", false),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_seconds(" 0 ", true), Some(Duration::ZERO));
        assert_eq!(parse_seconds("0", false), None);
        for refused in ["-1", "NaN", "soon", ""] {
            assert_eq!(parse_seconds(refused, true), None, "{refused}");
        }
        for huge in ["1e20", "1e300", "inf"] {
            assert_eq!(parse_seconds(huge, false), Some(LONGEST_WAIT), "{huge}");
        }
        // What a deadline is computed from never overflows the clock.
        let _ = Instant::now() + LONGEST_WAIT;
    }

    #[test]
    fn a_large_body_takes_its_room_before_it_is_read_and_a_small_one_never_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let chunks = |sizes: &[usize]| {
            let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = sizes
                .iter()
                .map(|n| Ok(bytes::Bytes::from(vec![b'x'; *n])))
                .collect();
            axum::body::Body::from_stream(futures_util::stream::iter(pieces))
        };
        // A GET has no body to wait for room for; chunks have no length known beforehand.
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(declared_length(&headers), Some(0));
        headers.insert(
            axum::http::header::TRANSFER_ENCODING,
            "chunked".parse().expect("value"),
        );
        assert_eq!(declared_length(&headers), None);
        headers.insert(
            axum::http::header::CONTENT_LENGTH,
            "1234".parse().expect("value"),
        );
        assert_eq!(declared_length(&headers), Some(1234));
        let big = SMALL_BODY_BYTES + 1000;
        let kib = big.div_ceil(1024);
        rt.block_on(async {
            let soon = || tokio::time::Instant::now() + Duration::from_millis(200);
            // Room for one large body.
            let room = tokio::sync::Semaphore::new(kib);
            let body = read_body(chunks(&[big - 10, 10]), Some(big), &room, soon()).await;
            assert_eq!(body.expect("read").len(), big);
            assert_eq!(room.available_permits(), kib, "given back");
            // While another holds it: a large body waits, then is refused; chunked ones count
            // as the largest; small ones are read at once.
            let holding = room.acquire_many(1).await.expect("held");
            let refused = read_body(chunks(&[big]), Some(big), &room, soon()).await;
            assert_eq!(refused, Err(BodyRead::NoRoom));
            let chunked = read_body(chunks(&[40]), None, &room, soon()).await;
            assert_eq!(chunked, Err(BodyRead::NoRoom));
            let small = read_body(chunks(&[40]), Some(40), &room, soon()).await;
            assert_eq!(small.expect("read").len(), 40);
            // One waiting for room does not hold back one that fits, which ends well before
            // the waiter's deadline.
            let larger = SMALL_BODY_BYTES + 10_000; // 74 KiB
            let fits = SMALL_BODY_BYTES + 1; // 65 KiB
            let wide = tokio::sync::Semaphore::new(80);
            let most = wide.acquire_many(10).await.expect("held");
            let later = tokio::time::Instant::now() + Duration::from_millis(400);
            let sooner = tokio::time::Instant::now() + Duration::from_millis(100);
            let (waiting, fitting) = tokio::join!(
                read_body(chunks(&[larger]), Some(larger), &wide, later),
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    read_body(chunks(&[fits]), Some(fits), &wide, sooner).await
                }
            );
            assert_eq!(fitting.expect("not held back").len(), fits);
            assert_eq!(waiting, Err(BodyRead::NoRoom));
            drop((holding, most));
            // Over the largest body: refused.
            let all = tokio::sync::Semaphore::new(2048);
            let over = read_body(chunks(&[MAX_BODY_BYTES, 1]), None, &all, soon()).await;
            assert_eq!(over, Err(BodyRead::TooLarge));
            assert_eq!(all.available_permits(), 2048);
        });
    }
}
