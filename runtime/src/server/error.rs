//! The one JSON error shape of every HTTP error:
//! `{"error": {"code": "VAL_003", "type": "validation_error", "message": "...", "details": ...}}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error_code::ErrorCode;
use crate::pipeline::ErrorOut;

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub kind: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds for a `Retry-After` header (a full queue, a rate limit); 32 bits (136 years)
    /// keep the error small.
    pub retry_after: Option<u32>,
    /// What the server's log says in place of `message` when the client is told less (a
    /// remote model's error names its server in the log only).
    /// Boxed: errors travel in `Result`s, which should stay small.
    pub logged: Option<Box<String>>,
}

/// Seconds a client is asked to wait when a queue (generations, pipeline runs) is full.
pub const QUEUE_RETRY_AFTER_S: u32 = 5;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str().to_string(),
            kind: code.kind(),
            message: message.into(),
            details: None,
            retry_after: (code == ErrorCode::QueueFull).then_some(QUEUE_RETRY_AFTER_S),
            logged: None,
        }
    }

    /// What the log says of this error: the message, or the fuller [`Self::logged`].
    pub fn log_message(&self) -> &str {
        self.logged.as_deref().unwrap_or(&self.message)
    }

    /// Ask the client to come back after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
        self
    }

    /// Add the headers that tell a client whether and when to retry: `Retry-After` when there
    /// is one, and `x-should-retry: false` when retrying cannot help (`retrying_helps`).
    pub fn with_retry_header(&self, mut response: Response) -> Response {
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(s),
            );
        }
        if !self.retrying_helps() {
            response.headers_mut().insert(
                axum::http::HeaderName::from_static("x-should-retry"),
                axum::http::HeaderValue::from_static("false"),
            );
        }
        response
    }

    /// Whether the same request sent again could get another answer. The official OpenAI
    /// clients retry 408, 409, 429 and every 5xx twice unless told `x-should-retry: false`: a
    /// request cut at its deadline (504 `COMM_003`) would run its whole generation again, and
    /// a client error stays one.
    fn retrying_helps(&self) -> bool {
        let status = self.status.as_u16();
        if status == 504 && self.code == ErrorCode::RequestTimeout.as_str() {
            return false;
        }
        !self.status.is_client_error() || matches!(status, 408 | 409 | 429)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Name the request field at fault (`details.field`, as docs/ERRORS.md promises for
    /// VAL_002 and VAL_003).
    pub fn for_field(self, field: &str) -> Self {
        self.with_details(json!({ "field": field }))
    }

    /// 413: the request body is over `MAX_BODY_BYTES`.
    pub fn body_too_large() -> Self {
        let mut err = ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "request body is too large (limit {} bytes)",
                super::MAX_BODY_BYTES
            ),
        );
        err.status = StatusCode::PAYLOAD_TOO_LARGE;
        err
    }

    /// An error reported by a pipeline stage (its code may come from a plugin).
    pub fn from_stage(e: &ErrorOut) -> Self {
        let known = ErrorCode::parse(&e.code);
        Self {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code.clone(),
            kind: known.map_or("plugin_error", ErrorCode::kind),
            message: e.message.clone(),
            details: None,
            // Every 429 says when to come back (a plugin's quota, busy plugin slots).
            retry_after: (e.http_status() == 429).then_some(QUEUE_RETRY_AFTER_S),
            logged: None,
        }
    }
}

impl From<&crate::engine::EngineError> for ApiError {
    /// The engine's code and message (a remote model's without its server's address, which
    /// only the log shows); a model the request names but this server does not have is the
    /// client's mistake (404), not an outage (MODEL_001's usual 503).
    fn from(e: &crate::engine::EngineError) -> Self {
        let mut err = ApiError::new(e.code(), e.public_message());
        let full = e.to_string();
        if full != err.message {
            err.logged = Some(Box::new(full));
        }
        if matches!(e, crate::engine::EngineError::ModelNotFound(_)) {
            err.status = StatusCode::NOT_FOUND;
        }
        err
    }
}

/// A query string that does not parse: `VAL_002` in the usual JSON shape.
impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        let text = r.body_text();
        let detail = text
            .split_once("query string: ")
            .map_or(text.as_str(), |(_, d)| d);
        let err = ApiError::new(ErrorCode::InvalidInput, format!("query string: {detail}"));
        match query_field(detail) {
            Some(field) => err.for_field(&field),
            None => err,
        }
    }
}

/// A path segment (a run's id, a model's, a console file's name) as a handler takes it: one
/// that is not UTF-8 once percent-decoded (`/v1/pipeline/runs/%ff`) is `400 VAL_002` in the
/// usual JSON shape, not axum's plain-text answer.
#[derive(Debug)]
pub struct PathSegment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathSegment {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(segment)) => Ok(Self(segment)),
            // A route that matched without its parameter is this server's mistake.
            Err(rejection) if rejection.status().is_server_error() => {
                Err(ApiError::new(ErrorCode::Internal, rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::new(
                ErrorCode::InvalidInput,
                format!("the path: {}", rejection.body_text()),
            )),
        }
    }
}

/// The parameter a query string error is about: `unknown field `foo`, expected ...` or
/// `limit: invalid digit found in string`.
fn query_field(detail: &str) -> Option<String> {
    if let Some(rest) = detail.split("field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    let (name, _) = detail.split_once(": ")?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| name.to_string())
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let code = if text.contains("missing field") {
                    ErrorCode::MissingField
                } else {
                    ErrorCode::InvalidInput
                };
                let field = field_of(&text);
                if field.is_none() && text.contains("invalid type: ") {
                    // The body as a whole has the wrong shape (`[]`, `null`, a string): say
                    // so in the client's terms, not serde's (`expected struct ChatBody`).
                    return ApiError::new(ErrorCode::ValidationFailed, wrong_shape(&text));
                }
                let err = ApiError::new(code, text);
                match field {
                    Some(f) => err.for_field(&f),
                    None => err,
                }
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::body_too_large()
            }
            other => ApiError::new(ErrorCode::ValidationFailed, other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "type": self.kind, "message": self.message});
        if let Some(d) = &self.details {
            body["details"] = d.clone();
        }
        let mut response = (self.status, Json(json!({ "error": body }))).into_response();
        response = self.with_retry_header(response);
        // The outermost layer (`measure`) reads it back: to count errors no handler counted,
        // and to give the OpenAI routes their error shape.
        response.extensions_mut().insert(SentError(self));
        response
    }
}

/// The field a JSON body error is about: serde names a missing one in backquotes (``missing
/// field `task_description` ``); for a bad value axum's message gives its path first
/// (`...target type: max_tokens: invalid type: ...`).
fn field_of(text: &str) -> Option<String> {
    if let Some(rest) = text.split("missing field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    let detail = text.split_once("target type: ")?.1;
    let (path, _) = detail.split_once(": ")?;
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    (plain && !path.is_empty()).then(|| path.to_string())
}

/// What a body of the wrong shape was, from serde's `invalid type: sequence, expected struct
/// X at line 1 column 1`.
fn wrong_shape(text: &str) -> String {
    let got = text
        .split("invalid type: ")
        .nth(1)
        .and_then(|rest| rest.split(", expected").next())
        .unwrap_or("something else");
    format!("the body must be a JSON object of the route's fields, not {got}")
}

/// The [`ApiError`] a response was built from.
#[derive(Debug, Clone)]
pub struct SentError(pub ApiError);

/// Marks an error answered by a layer before any handler ran (a deadline, a body limit, an
/// API key), which no handler counted in `/stats`.
#[derive(Debug, Clone, Copy)]
pub struct Uncounted;

impl ApiError {
    /// The response of an error a layer answers with (see [`Uncounted`]).
    pub fn into_uncounted_response(self) -> Response {
        let mut response = self.into_response();
        response.extensions_mut().insert(Uncounted);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_models_error_names_its_server_in_the_log_only() {
        let e = crate::engine::EngineError::Remote {
            url: "http://10.9.8.7:8000/v1".into(),
            status: Some(503),
            code: ErrorCode::ModelNotAvailable,
            message: "overloaded".into(),
        };
        let api = ApiError::from(&e);
        assert_eq!(api.message, "model server: overloaded");
        assert!(api.log_message().contains("http://10.9.8.7:8000/v1"));
        // Other errors are logged as they are answered.
        let local = ApiError::from(&crate::engine::EngineError::Timeout);
        assert_eq!(
            (local.logged.is_none(), local.log_message()),
            (true, "generation ran past its deadline")
        );
    }

    #[test]
    fn json_body_errors_name_their_field() {
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: missing field `task_description` at line 1 column 2").as_deref(),
            Some("task_description")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: message: invalid type: integer `5`, expected a string at line 1 column 13").as_deref(),
            Some("message")
        );
        assert_eq!(
            field_of("Failed to deserialize the JSON body into the target type: messages[0].role: unknown").as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            field_of("Failed to parse the request body as JSON: expected value"),
            None
        );
    }

    #[test]
    fn query_string_errors_name_their_parameter() {
        assert_eq!(
            query_field("limit: invalid digit found in string").as_deref(),
            Some("limit")
        );
        assert_eq!(
            query_field("unknown field `foo`, expected `limit` or `before`").as_deref(),
            Some("foo")
        );
        assert_eq!(query_field("expected a map"), None);
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_said_so_without_rust_type_names() {
        let text = "Failed to deserialize the JSON body into the target type: invalid type: \
                    sequence, expected struct ChatBody with 6 elements at line 1 column 1";
        assert_eq!(field_of(text), None);
        assert_eq!(
            wrong_shape(text),
            "the body must be a JSON object of the route's fields, not sequence"
        );
    }

    #[test]
    fn clients_are_told_not_to_retry_what_cannot_change() {
        let deadline = ApiError::new(ErrorCode::RequestTimeout, "late");
        assert!(!deadline.retrying_helps(), "504 COMM_003");
        let mut body_late = deadline.clone();
        body_late.status = StatusCode::REQUEST_TIMEOUT;
        assert!(body_late.retrying_helps(), "408 COMM_003");
        assert!(!ApiError::new(ErrorCode::InvalidInput, "bad").retrying_helps());
        assert!(ApiError::new(ErrorCode::QueueFull, "full").retrying_helps());
        assert!(ApiError::new(ErrorCode::RunFinished, "ended").retrying_helps());
        assert!(ApiError::new(ErrorCode::Internal, "oops").retrying_helps());
        let refused = ApiError::new(ErrorCode::InvalidInput, "bad")
            .with_retry_header(StatusCode::BAD_REQUEST.into_response());
        assert_eq!(refused.headers()["x-should-retry"], "false");
    }
}
