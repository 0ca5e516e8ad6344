//! The web console at `/`: one page (HTML, CSS, JavaScript compiled into the binary) that
//! submits tasks and follows their pipeline runs live, replays past runs, and shows the plugins
//! and the statistics — all through the public API, with the API key the user types in (kept
//! in the browser's local storage). The page itself is public; the data behind it is not.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Headers every console file gets: a strict content security policy (only this origin's
/// scripts, styles and API), and no caching across agentrt versions.
fn with_headers(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn index() -> Response {
    with_headers("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`.
pub async fn asset(file: Result<super::error::PathSegment, super::error::ApiError>) -> Response {
    let file = match file {
        Ok(super::error::PathSegment(file)) => file,
        Err(refused) => return refused.into_response(),
    };
    match file.as_str() {
        "console.js" => with_headers("text/javascript; charset=utf-8", SCRIPT),
        "console.css" => with_headers("text/css; charset=utf-8", STYLE),
        _ => super::error::ApiError::new(
            crate::error_code::ErrorCode::NotFound,
            format!("no console file {file}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    /// Every element the script looks up by id exists in the page.
    #[test]
    fn the_script_only_uses_ids_the_page_has() {
        let mut rest = SCRIPT;
        let mut ids = Vec::new();
        while let Some(at) = rest.find("$(\"") {
            let tail = &rest[at + 3..];
            let end = tail.find('"').expect("closing quote");
            ids.push(&tail[..end]);
            rest = &tail[end..];
        }
        assert!(ids.len() > 20, "{ids:?}");
        for id in ids {
            assert!(
                INDEX.contains(&format!("id=\"{id}\"")),
                "index.html has no #{id}"
            );
        }
    }

    #[test]
    fn unknown_files_are_not_found() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let response = rt.block_on(asset(Ok(super::super::error::PathSegment(
            "secret.txt".into(),
        ))));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = rt.block_on(asset(Ok(super::super::error::PathSegment(
            "console.js".into(),
        ))));
        assert_eq!(response.status(), StatusCode::OK);
    }
}
