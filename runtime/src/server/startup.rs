//! The port answers while `agentrt serve` starts. Loading the models, compiling plugins the
//! first time and warming the Python sandbox can take minutes on a small machine; meanwhile
//! `/health/live` says the process is alive (a liveness probe must not kill a server that is
//! still loading), `/health/ready` answers 503 and `/health` (always 200, as when running) says
//! what is being loaded, and every other route is `503 MODEL_001` with `Retry-After`, instead of
//! a refused connection. API keys and the loopback name check apply as they will once running:
//! a client without a key learns that (401), not how far the start has come.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::ApiError;
use crate::error_code::ErrorCode;

/// Seconds a client is asked to wait before trying again while the server starts.
const RETRY_AFTER_S: u64 = 5;

/// What the starting server is doing, and since when.
#[derive(Debug, Clone)]
struct Progress {
    stage: Arc<Mutex<&'static str>>,
    began: Instant,
}

impl Progress {
    fn stage(&self) -> &'static str {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The answering started by [`Startup::begin`]; [`Startup::finish`] hands the listener on.
pub struct Startup {
    progress: Progress,
    stop: tokio::sync::oneshot::Sender<()>,
    answering: tokio::task::JoinHandle<tokio::net::TcpListener>,
}

impl Startup {
    /// Listen on `socket` and answer as a starting server on `runtime` until
    /// [`finish`](Self::finish). Prints `agentrt starting on http://ADDRESS` on stdout.
    pub fn begin(
        runtime: &tokio::runtime::Runtime,
        socket: tokio::net::TcpSocket,
        header_timeout: Duration,
        access: Access,
    ) -> std::io::Result<Self> {
        let listener = {
            let _reactor = runtime.enter();
            socket.listen(1024)?
        };
        let address = listener.local_addr()?;
        let progress = Progress {
            stage: Arc::new(Mutex::new("starting")),
            began: Instant::now(),
        };
        tracing::info!(%address, "agentrt starting: answering health probes while loading");
        super::say_on_stdout(&format!("agentrt starting on http://{address}"));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let answering = runtime.spawn(answer_until(
            listener,
            router(progress.clone(), access),
            header_timeout,
            stopped,
        ));
        Ok(Self {
            progress,
            stop,
            answering,
        })
    }

    /// Say what is being loaded now (logged, and shown by the health routes).
    pub fn stage(&self, what: &'static str) {
        tracing::info!(
            stage = what,
            seconds = self.progress.began.elapsed().as_secs_f64(),
            "starting"
        );
        *self
            .progress
            .stage
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = what;
    }

    /// Stop answering as a starting server and give back the listener; connections made
    /// meanwhile wait in its backlog for the real server.
    pub async fn finish(self) -> std::io::Result<tokio::net::TcpListener> {
        let _ = self.stop.send(());
        self.answering.await.map_err(std::io::Error::other)
    }
}

/// Who may ask: the server's API keys, and whether it listens on loopback only (see
/// [`super::auth::refuse_rebound_names`]).
pub struct Access {
    pub api_keys: Arc<super::auth::ApiKeys>,
    pub loopback_only: bool,
}

fn router(progress: Progress, access: Access) -> axum::Router {
    axum::Router::new()
        .route("/health/live", get(super::routes::live))
        .route("/health/ready", get(not_ready))
        .route("/health", get(health))
        // The console loads while the server starts, and says so (its health line).
        .route("/", get(super::console::index))
        .route("/console/{file}", get(super::console::asset))
        .fallback(loading)
        .layer(axum::middleware::from_fn_with_state(
            access.api_keys.clone(),
            super::auth::require_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (access.api_keys, access.loopback_only),
            super::auth::refuse_rebound_names,
        ))
        .with_state(progress)
}

/// `/health/ready`: 503, with the stage and how long the start has taken.
async fn not_ready(State(progress): State<Progress>) -> Response {
    let body = json!({
        "status": "starting",
        "stage": progress.stage(),
        "uptime_seconds": progress.began.elapsed().as_secs(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// `/health`: for people and dashboards, 200 whatever its `status` says (as when running).
async fn health(State(progress): State<Progress>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "starting",
        "stage": progress.stage(),
        "uptime_seconds": progress.began.elapsed().as_secs(),
        "model_loaded": false,
        "models": [],
        "plugins": [],
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// Every other route: `503 MODEL_001`, in OpenAI's shape on the OpenAI-compatible paths.
async fn loading(State(progress): State<Progress>, uri: Uri) -> Response {
    let error = ApiError::new(
        ErrorCode::ModelNotAvailable,
        format!(
            "the server is starting ({}, {} s so far): try again shortly",
            progress.stage(),
            progress.began.elapsed().as_secs()
        ),
    )
    .retry_after(RETRY_AFTER_S);
    if super::openai::is_openai_path(uri.path()) {
        super::openai::OpenAiError(error).into_response()
    } else {
        error.into_response()
    }
}

/// Every answer closes its connection (see [`answer_until`]) and, as every answer of the
/// running server, carries the request's id (the client's `X-Request-Id` or a new one, so a
/// client that logs ids can name a refused call too) and `nosniff`.
async fn stamp(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = super::request_id(&request);
    let openai_path = super::openai::is_openai_path(request.uri().path());
    let mut response = next.run(request).await;
    // A key refused on an OpenAI-compatible path is answered in OpenAI's shape there too.
    if openai_path
        && response
            .extensions()
            .get::<super::openai::OpenAiShaped>()
            .is_none()
        && let Some(super::error::SentError(error)) = response.extensions().get().cloned()
    {
        response = super::in_openai_shape(error, response);
    }
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert("x-request-id", value);
    }
    response
}

/// Serve `app` on `listener` until `stop`, then give the listener back. Each answer closes
/// its connection, so no client stays on the starting server once the real one takes over.
async fn answer_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::net::TcpListener {
    use hyper_util::rt::TokioIo;
    let app = app.layer(axum::middleware::from_fn(stamp));
    let builder = super::http1_builder(header_timeout);
    loop {
        // Once told to stop, accept nothing more: what waits in the backlog is the real
        // server's.
        let stream = tokio::select! {
            biased;
            _ = &mut stop => return listener,
            stream = super::accept(&listener) => stream,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
