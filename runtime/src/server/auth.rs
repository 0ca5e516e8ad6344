//! API keys with two scopes, checked before any route runs.
//!
//! `user` keys reach inference and the pipeline; `admin` keys also reach the operator's
//! routes (`/stats`, `/plugins`). Without configured keys the server is open (a local,
//! single-user setup). A key comes as `Authorization: Bearer KEY` or `X-API-Key: KEY`;
//! keys are compared by their SHA-256 digests with a constant-time comparison over every
//! configured key, so neither a key's prefix nor its position leaks through timing.
//! `/health`, `/health/live` and `/health/ready` stay open for load balancers.

use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::error_code::ErrorCode;

/// What a key may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    User,
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The configured keys, as digests.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], Scope)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Keys from lines `SCOPE KEY` (`#` comments and blank lines skipped) or, in the
    /// environment form, `SCOPE:KEY,SCOPE:KEY`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, entry) in text
            .split(['\n', ','])
            .map(str::trim)
            .enumerate()
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        {
            let (scope, key) = entry
                .split_once(|c: char| c == ':' || c.is_whitespace())
                .ok_or_else(|| format!("entry {}: expected `SCOPE KEY`", n + 1))?;
            let scope = Scope::parse(scope.trim())
                .ok_or_else(|| format!("entry {}: scope must be user or admin", n + 1))?;
            let key = key.trim();
            if key.len() < 16 {
                return Err(format!(
                    "entry {}: keys must be at least 16 characters",
                    n + 1
                ));
            }
            keys.push((digest(key), scope));
        }
        Ok(Self { keys })
    }

    /// `AGENTRT_API_KEYS` and the file `AGENTRT_API_KEYS_FILE` (or `file`), together.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let mut text = std::env::var("AGENTRT_API_KEYS").unwrap_or_default();
        if let Some(path) = file {
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read API keys from {}: {e}", path.display()))?;
            text.push('\n');
            text.push_str(&content);
        }
        Self::parse(&text)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The scope of `key`, comparing against every configured key in constant time.
    fn scope_of(&self, key: &str) -> Option<Scope> {
        let wanted = digest(key);
        let mut found = None;
        for (d, scope) in &self.keys {
            let diff = d.iter().zip(&wanted).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(*scope);
            }
        }
        found
    }
}

/// The scope a path needs, or `None` for open paths.
fn required(path: &str) -> Option<Scope> {
    match path {
        "/health" | "/health/live" | "/health/ready" => None,
        "/stats" | "/plugins" => Some(Scope::Admin),
        _ => Some(Scope::User),
    }
}

fn presented(request: &Request) -> Option<&str> {
    let headers = request.headers();
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(v) = v.to_str()
        && let Some(key) = v.strip_prefix("Bearer ")
    {
        return Some(key.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// The middleware: 401 without a known key, 403 when its scope does not cover the route.
pub async fn require_key(
    State(keys): State<std::sync::Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    if keys.is_empty() {
        return next.run(request).await;
    }
    let Some(needed) = required(request.uri().path()) else {
        return next.run(request).await;
    };
    let Some(scope) = presented(&request).and_then(|k| keys.scope_of(k)) else {
        return ApiError::new(
            ErrorCode::Unauthenticated,
            "an API key is required (Authorization: Bearer KEY or X-API-Key)",
        )
        .into_response();
    };
    if scope < needed {
        return ApiError::new(ErrorCode::Forbidden, "this route needs an admin key")
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_lines_and_the_env_form() {
        let keys = ApiKeys::parse(
            "# team keys\nuser  aaaaaaaaaaaaaaaa\nadmin:bbbbbbbbbbbbbbbb,user:cccccccccccccccc\n",
        )
        .expect("parse");
        assert_eq!(keys.scope_of("aaaaaaaaaaaaaaaa"), Some(Scope::User));
        assert_eq!(keys.scope_of("bbbbbbbbbbbbbbbb"), Some(Scope::Admin));
        assert_eq!(keys.scope_of("cccccccccccccccc"), Some(Scope::User));
        assert_eq!(keys.scope_of("aaaaaaaaaaaaaaab"), None);
        assert!(ApiKeys::parse("root aaaaaaaaaaaaaaaa").is_err());
        assert!(ApiKeys::parse("user short").is_err());
        assert!(ApiKeys::parse("").expect("empty").is_empty());
    }

    #[test]
    fn routes_need_the_right_scope() {
        assert_eq!(required("/health/ready"), None);
        assert_eq!(required("/stats"), Some(Scope::Admin));
        assert_eq!(required("/v1/chat/completions"), Some(Scope::User));
        assert!(Scope::Admin > Scope::User);
    }
}
