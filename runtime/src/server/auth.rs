//! API keys with two scopes, checked before any route runs.
//!
//! `user` keys reach inference and the pipeline; `admin` keys also reach the operator's
//! routes (`/stats`, `/plugins`). Without configured keys the server is open (a local,
//! single-user setup). A key comes as `Authorization: Bearer KEY` (the scheme in any case, as
//! RFC 9110 has it) or `X-API-Key: KEY`; with both, either may hold the key. A 401 names the
//! scheme (`WWW-Authenticate: Bearer`). Keys are compared by their SHA-256 digests with a
//! constant-time comparison over every configured key, so neither a key's prefix nor its
//! position leaks through timing.
//! `/health`, `/health/live` and `/health/ready` stay open for load balancers.
//!
//! With a rate limit (`AGENTRT_RATE_LIMIT` requests per minute), each key has a token bucket
//! of that size refilled continuously; a request that finds it empty is answered 429
//! (`AUTH_003`) with `Retry-After`.
//!
//! Keys rotate without a restart: [`ApiKeys::reload`] reads them again (see
//! [`super::reloading`] for when), and the next request is checked against the new set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::error_code::ErrorCode;

/// What a key may reach. A request let through with a key carries its scope as an extension;
/// one without (no keys configured, or an open path) carries none.
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

    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }
}

/// Who a request comes from, as [`require_key`] found it; a request let through without a key
/// (no keys configured, or an open path) carries none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub scope: Scope,
    /// The key as the runs it submits record it (32 hex digits): a hash of the key's digest,
    /// so that the store does not hold the digest keys are checked against.
    pub submitter: String,
    /// The key's digest, to tell later whether the key is still in use ([`ApiKeys::admits`]).
    key: [u8; 32],
}

impl Caller {
    fn of(key_digest: &[u8; 32], scope: Scope) -> Self {
        let salted = [b"agentrt run submitter\0".as_slice(), key_digest].concat();
        let mut submitter = crate::plugin::compile_cache::sha256_hex(&salted);
        submitter.truncate(32);
        Self {
            scope,
            submitter,
            key: *key_digest,
        }
    }

    /// Whether this caller may see (and cancel) a run `submitted_by` someone: an admin sees
    /// every run, a user the runs of their own key only — not those of other keys, and not
    /// those submitted before the server took keys.
    pub fn may_see(&self, submitted_by: Option<&str>) -> bool {
        self.scope == Scope::Admin || submitted_by == Some(self.submitter.as_str())
    }
}

/// A key as it is kept: its SHA-256 digest and its scope.
type Key = ([u8; 32], Scope);

/// The configured keys, as digests, and the per-key request budget.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: RwLock<Vec<Key>>,
    /// The keys file, read again on every reload (`None`: the variable's keys only).
    file: Option<PathBuf>,
    /// The digest of the keys file's contents in use; held through a reload, so that two
    /// reloads at once apply in the order they read the file.
    applied: Mutex<Option<[u8; 32]>>,
    /// Requests per minute per key (`None`: unlimited).
    per_minute: Option<u32>,
    /// Buckets by key digest: a key kept through a reload keeps what it has spent.
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

/// How many keys of each scope a reload put in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCounts {
    pub user: usize,
    pub admin: usize,
}

/// A token bucket: `tokens` left, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Keys from lines `SCOPE KEY` (`#` comments and blank lines skipped) or, in the
    /// environment form, `SCOPE:KEY,SCOPE:KEY`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        add_keys(&mut keys, text, None)?;
        Ok(Self {
            keys: RwLock::new(keys),
            ..Self::default()
        })
    }

    /// At most `per_minute` requests per key per minute (bursts up to that many).
    pub fn with_rate_limit(mut self, per_minute: Option<u32>) -> Self {
        self.per_minute = per_minute.filter(|n| *n > 0);
        self
    }

    /// Take one request from the bucket of the key with digest `key`, or the seconds until one
    /// is back.
    fn take(&self, key: &[u8; 32]) -> Result<(), u64> {
        let Some(limit) = self.per_minute else {
            return Ok(());
        };
        let capacity = f64::from(limit);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(*key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refilled).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64)
        }
    }

    /// `AGENTRT_API_KEYS` and the file `AGENTRT_API_KEYS_FILE` (or `file`), together. An
    /// error names where the bad entry is: the variable's entry, or the file and its line.
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let (keys, digest) = read_keys(file)?;
        Ok(Self {
            keys: RwLock::new(keys),
            file: file.map(Path::to_path_buf),
            applied: Mutex::new(digest),
            ..Self::default()
        })
    }

    /// The digest of the keys file's contents in use (`None`: no file).
    pub fn applied_digest(&self) -> Option<[u8; 32]> {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys file this set is read from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read the keys again, from `AGENTRT_API_KEYS` and the keys file, and put them in use: a
    /// request from now on is checked against the new set, so a removed key stops working
    /// and a new one starts. A file that cannot be read or holds a bad entry changes nothing,
    /// and nor does one that would leave no keys at all: that would open every route of a
    /// server that had keys, which a half-finished edit should not do.
    pub fn reload(&self) -> Result<KeyCounts, String> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let (fresh, digest) = read_keys(self.file.as_deref())?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if fresh.is_empty() && !keys.is_empty() {
            return Err(format!(
                "the new set has no keys: keeping the {} in use (a server with keys is not \
                 opened by a reload; restart it without keys for that)",
                keys.len()
            ));
        }
        *keys = fresh;
        *applied = digest;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets.retain(|d, _| keys.iter().any(|(k, _)| k == d));
        Ok(counts_of(&keys))
    }

    /// How many keys of each scope are in use.
    pub fn counts(&self) -> KeyCounts {
        counts_of(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The scope of `key`, comparing against every configured key in constant time.
    #[cfg(test)]
    fn scope_of(&self, key: &str) -> Option<Scope> {
        self.find(key).map(|(_, scope)| scope)
    }

    /// Whether `caller`'s key is still in use with the scope it had: a stream opened with a key
    /// removed (or narrowed) since ends.
    pub fn admits(&self, caller: &Caller) -> bool {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .any(|(d, scope)| *d == caller.key && *scope == caller.scope)
    }

    /// The digest and scope of `key` (every key compared, no early exit).
    fn find(&self, key: &str) -> Option<([u8; 32], Scope)> {
        let wanted = digest(key);
        let mut found = None;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        for (d, scope) in keys.iter() {
            let diff = d.iter().zip(&wanted).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some((*d, *scope));
            }
        }
        found
    }
}

fn counts_of(keys: &[Key]) -> KeyCounts {
    let admin = keys.iter().filter(|(_, s)| *s == Scope::Admin).count();
    KeyCounts {
        user: keys.len() - admin,
        admin,
    }
}

/// The keys of `AGENTRT_API_KEYS` and of `file`, together, and the digest of the file's
/// contents. An error names where the bad entry is: the variable's entry, or the file and its
/// line.
fn read_keys(file: Option<&Path>) -> Result<(Vec<Key>, Option<[u8; 32]>), String> {
    let mut keys = Vec::new();
    let from_env = std::env::var("AGENTRT_API_KEYS").unwrap_or_default();
    add_keys(&mut keys, &from_env, None).map_err(|e| format!("AGENTRT_API_KEYS {e}"))?;
    let Some(path) = file else {
        return Ok((keys, None));
    };
    let content = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read API keys from {}: {e}", path.display()))?;
    add_keys(&mut keys, &content, Some(path)).map_err(|e| format!("{} {e}", path.display()))?;
    Ok((keys, Some(digest(&content))))
}

/// Add the keys of `text` to `keys`: lines (a file's, when `file` is given: errors name the
/// line) of comma-separated `SCOPE KEY` / `SCOPE:KEY` entries (errors name the entry). An
/// entry starting with `#`, or a word starting with `#` after an entry's key, begins a comment
/// to the end of the line (a key itself may start with `#`). A key listed again with the same
/// scope counts once; with another scope it is refused (which one was meant?).
fn add_keys(keys: &mut Vec<Key>, text: &str, file: Option<&Path>) -> Result<(), String> {
    let mut entry = 0;
    // An editor's byte-order mark is not part of the first scope.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (line_index, line) in text.lines().enumerate() {
        for item in line.split(',').map(str::trim) {
            if item.starts_with('#') {
                break;
            }
            if item.is_empty() {
                continue;
            }
            entry += 1;
            let at = match file {
                Some(_) => format!("line {}", line_index + 1),
                None => format!("entry {entry}"),
            };
            let (scope, rest) = item
                .split_once(|c: char| c == ':' || c.is_whitespace())
                .ok_or_else(|| format!("{at}: expected `SCOPE KEY`"))?;
            let scope = Scope::parse(scope.trim()).ok_or_else(|| {
                format!("{at}: scope must be user or admin, not {:?}", scope.trim())
            })?;
            let mut words = rest.split_whitespace();
            let key = words.next().unwrap_or_default();
            let commented = match words.next() {
                None => false,
                Some(word) if word.starts_with('#') => true,
                Some(_) => {
                    return Err(format!(
                        "{at}: text after the key (a key has no spaces; a comment starts with #)"
                    ));
                }
            };
            if key.len() < 16 {
                return Err(format!("{at}: keys must be at least 16 characters"));
            }
            let key = digest(key);
            match keys.iter().find(|(listed, _)| *listed == key) {
                None => keys.push((key, scope)),
                Some((_, listed)) if *listed == scope => {}
                Some((_, listed)) => {
                    return Err(format!(
                        "{at}: this key is listed already as {}; a key has one scope",
                        listed.as_str()
                    ));
                }
            }
            // The comment runs to the end of the line, commas and all.
            if commented {
                break;
            }
        }
    }
    Ok(())
}

/// The scope a path needs, or `None` for open paths.
pub(crate) fn required(path: &str) -> Option<Scope> {
    match path {
        // The console's page and files are public: what they show comes from the API, with the
        // key the user gives them.
        "/health" | "/health/live" | "/health/ready" | "/openapi.json" | "/" => None,
        p if p.starts_with("/console/") => None,
        "/stats" | "/plugins" | "/metrics" => Some(Scope::Admin),
        _ => Some(Scope::User),
    }
}

/// The keys a request presents: the `Authorization` header's Bearer credential, then
/// `X-API-Key`. A client (or a proxy in front of it) may send both, one of them stale.
fn presented(request: &Request) -> impl Iterator<Item = &str> {
    let headers = request.headers();
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_credential);
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    bearer.into_iter().chain(api_key)
}

/// The credential of a `Bearer` authorization; the scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer KEY` counts too.
fn bearer_credential(value: &str) -> Option<&str> {
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(credential.trim())
}

/// The middleware: 401 without a known key, 403 when its scope does not cover the route.
pub async fn require_key(
    State(keys): State<std::sync::Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    if keys.is_empty() {
        return next.run(request).await;
    }
    let Some(needed) = required(request.uri().path()) else {
        return next.run(request).await;
    };
    // With two valid keys, the wider one counts: an admin key next to a user key reaches
    // the admin routes. Of two of one scope, the Bearer key: it owns the runs submitted.
    let Some((key, scope)) = presented(&request).filter_map(|k| keys.find(k)).fold(
        None,
        |best: Option<([u8; 32], Scope)>, next| match best {
            Some(b) if b.1 >= next.1 => Some(b),
            _ => Some(next),
        },
    ) else {
        let message = if presented(&request).next().is_some() {
            "the API key is not one this server knows"
        } else {
            "an API key is required (Authorization: Bearer KEY or X-API-Key)"
        };
        let mut response =
            ApiError::new(ErrorCode::Unauthenticated, message).into_uncounted_response();
        // A 401 names the scheme it wants (RFC 9110 §11.6.1).
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    if scope < needed {
        return ApiError::new(ErrorCode::Forbidden, "this route needs an admin key")
            .into_uncounted_response();
    }
    if let Err(wait) = keys.take(&key) {
        return ApiError::new(
            ErrorCode::RateLimited,
            format!("this key is over its limit of requests per minute; retry in {wait} s"),
        )
        .retry_after(wait)
        .into_uncounted_response();
    }
    // Routes that show admins more than users, and the runs a key owns, read it from here.
    request.extensions_mut().insert(Caller::of(&key, scope));
    next.run(request).await
}

/// A server without keys that listens on a loopback address trusts whatever reaches it, so it
/// answers only requests that name this machine as such: a `Host` that is an address or
/// `localhost`. A web page can otherwise drive it by DNS rebinding (its own name pointed at
/// 127.0.0.1 makes its requests same-origin to the browser); its requests carry that name, and
/// are refused (403 `AUTH_002`). With keys, or listening on other addresses (the operator
/// exposed it on purpose), names are not checked.
pub async fn refuse_rebound_names(
    State((keys, loopback_only)): State<(std::sync::Arc<ApiKeys>, bool)>,
    request: Request,
    next: Next,
) -> Response {
    if !loopback_only || !keys.is_empty() {
        return next.run(request).await;
    }
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().host());
    match host {
        Some(host) if !names_this_machine(host) => ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "a server without API keys answers only requests addressed to this machine \
                 (localhost or an address), not to {host:?}: configure API keys \
                 (AGENTRT_API_KEYS, --api-keys FILE) to serve it by that name"
            ),
        )
        .into_uncounted_response(),
        _ => next.run(request).await,
    }
}

/// Whether a `Host` header's value (`name[:port]`, `[v6]:port`) is an IP address or a
/// `localhost` name: one no page on another site can have resolve here.
fn names_this_machine(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:8080` or `name:8080`; a bare IPv6 address has colons of its own.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_name_this_machine() {
        for here in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "localhost.:8080",
            "app.localhost:3000",
            "[::1]:8080",
            "::1",
            "10.0.0.5:80",
        ] {
            assert!(names_this_machine(here), "{here}");
        }
        for elsewhere in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8080",
            "agentrt:8080",
        ] {
            assert!(!names_this_machine(elsewhere), "{elsewhere}");
        }
    }

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
    fn a_bad_key_is_named_by_its_line_in_a_file_and_its_entry_in_the_variable() {
        let mut keys = Vec::new();
        let file = Path::new("/etc/agentrt/keys");
        let text = "# team keys\n\nuser aaaaaaaaaaaaaaaa\nuser short\n";
        assert_eq!(
            add_keys(&mut keys, text, Some(file)),
            Err("line 4: keys must be at least 16 characters".into())
        );
        assert_eq!(
            add_keys(
                &mut keys,
                "user:aaaaaaaaaaaaaaaa, root:bbbbbbbbbbbbbbbb",
                None
            ),
            Err("entry 2: scope must be user or admin, not \"root\"".into())
        );
    }

    /// A note after a key is a comment, not part of the key (which would leave the key the
    /// operator meant unusable, and a comma in the note read as an entry); a byte-order mark
    /// is not part of the first scope; one key with two scopes is refused.
    #[test]
    fn comments_after_keys_byte_order_marks_and_duplicates() {
        let keys = ApiKeys::parse(
            "\u{feff}user  aaaaaaaaaaaaaaaa  # alice, rotated 2026-11\nadmin b#bbbbbbbbbbbbbbb #ops\n",
        )
        .expect("parse");
        assert_eq!(keys.scope_of("aaaaaaaaaaaaaaaa"), Some(Scope::User));
        assert_eq!(keys.scope_of("b#bbbbbbbbbbbbbbb"), Some(Scope::Admin));
        // A key may start with #; a # entry, or a # word after a key, is a comment.
        let keys =
            ApiKeys::parse("admin #Zx9aaaaaaaaaaaaaaaa\nuser cccccccccccccccc,#note, more\n")
                .expect("parse");
        assert_eq!(keys.scope_of("#Zx9aaaaaaaaaaaaaaaa"), Some(Scope::Admin));
        assert_eq!(keys.scope_of("cccccccccccccccc"), Some(Scope::User));
        let mut listed = Vec::new();
        assert_eq!(
            add_keys(&mut listed, "user aaaaaaaaaaaaaaaa alice", None),
            Err(
                "entry 1: text after the key (a key has no spaces; a comment starts with #)".into()
            )
        );
        let mut listed = Vec::new();
        add_keys(
            &mut listed,
            "user aaaaaaaaaaaaaaaa\nuser aaaaaaaaaaaaaaaa\n",
            None,
        )
        .expect("the same key and scope twice");
        assert_eq!(listed.len(), 1, "counted once");
        assert_eq!(
            add_keys(&mut listed, "admin aaaaaaaaaaaaaaaa", Some(Path::new("k"))),
            Err("line 1: this key is listed already as user; a key has one scope".into())
        );
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let keys = ApiKeys::parse("user:aaaaaaaaaaaaaaaa,user:bbbbbbbbbbbbbbbb")
            .expect("parse")
            .with_rate_limit(Some(2));
        let (a, b) = (digest("aaaaaaaaaaaaaaaa"), digest("bbbbbbbbbbbbbbbb"));
        assert_eq!(keys.take(&a), Ok(()));
        assert_eq!(keys.take(&a), Ok(()));
        // 2 per minute: the next one is back in 30 s.
        assert_eq!(keys.take(&a), Err(30));
        assert_eq!(keys.take(&b), Ok(()));
        let open = ApiKeys::parse("user:aaaaaaaaaaaaaaaa").expect("parse");
        assert!(
            (0..100).all(|_| open.take(&a).is_ok()),
            "no limit configured"
        );
    }

    #[test]
    fn a_reload_swaps_the_keys_and_refuses_a_bad_or_empty_file() {
        let dir = std::env::temp_dir().join(format!("agentrt-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("keys");
        let write = |text: &str| std::fs::write(&file, text).expect("write");
        write("user aaaaaaaaaaaaaaaa\nuser bbbbbbbbbbbbbbbb\n");
        let keys = ApiKeys::load(Some(&file))
            .expect("load")
            .with_rate_limit(Some(2));
        let (a, b) = (digest("aaaaaaaaaaaaaaaa"), digest("bbbbbbbbbbbbbbbb"));
        assert_eq!(keys.take(&a), Ok(()));
        assert_eq!(keys.take(&b), Ok(()));
        let (caller_a, caller_b) = (Caller::of(&a, Scope::User), Caller::of(&b, Scope::User));
        assert!(keys.admits(&caller_a) && keys.admits(&caller_b));

        // a rotated out, c in: a stops working (its open streams too), b keeps what it spent.
        write("user bbbbbbbbbbbbbbbb\nadmin cccccccccccccccc\n");
        assert_eq!(keys.reload(), Ok(KeyCounts { user: 1, admin: 1 }));
        assert_eq!(keys.scope_of("aaaaaaaaaaaaaaaa"), None);
        assert!(!keys.admits(&caller_a));
        assert!(keys.admits(&caller_b));
        // A key whose scope changed is another caller than the one that opened a stream.
        let c = digest("cccccccccccccccc");
        assert!(!keys.admits(&Caller::of(&c, Scope::User)));
        assert!(keys.admits(&Caller::of(&c, Scope::Admin)));
        assert_eq!(keys.scope_of("cccccccccccccccc"), Some(Scope::Admin));
        assert_eq!(keys.take(&b), Ok(()));
        assert_eq!(keys.take(&b), Err(30));

        // A bad line, a missing file or no keys at all change nothing.
        write("user bbbbbbbbbbbbbbbb\nuser short\n");
        let bad = keys.reload().expect_err("bad line");
        assert!(bad.contains("line 2"), "{bad}");
        write("# every key removed\n");
        let empty = keys.reload().expect_err("no keys");
        assert!(empty.contains("keeping the 2"), "{empty}");
        std::fs::remove_file(&file).expect("remove");
        assert!(keys.reload().is_err());
        assert_eq!(keys.scope_of("cccccccccccccccc"), Some(Scope::Admin));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for value in ["Bearer k", "bearer k", "BEARER  k ", " Bearer k"] {
            assert_eq!(bearer_credential(value), Some("k"), "{value:?}");
        }
        for value in ["Basic k", "Bearerk", "Bearer", "Token k"] {
            assert_eq!(bearer_credential(value), None, "{value:?}");
        }
    }

    #[test]
    fn routes_need_the_right_scope() {
        assert_eq!(required("/health/ready"), None);
        assert_eq!(required("/stats"), Some(Scope::Admin));
        assert_eq!(required("/v1/chat/completions"), Some(Scope::User));
        assert!(Scope::Admin > Scope::User);
    }

    #[test]
    fn a_user_sees_the_runs_of_its_own_key_and_an_admin_every_run() {
        let keys =
            ApiKeys::parse("user:aaaaaaaaaaaaaaaa,user:bbbbbbbbbbbbbbbb,admin:cccccccccccccccc")
                .expect("keys");
        let caller = |key: &str| {
            let (digest, scope) = keys.find(key).expect("known");
            Caller::of(&digest, scope)
        };
        let (a, b, admin) = (
            caller("aaaaaaaaaaaaaaaa"),
            caller("bbbbbbbbbbbbbbbb"),
            caller("cccccccccccccccc"),
        );
        // The same key is the same submitter every time; the record is not the key's digest.
        assert_eq!(a, caller("aaaaaaaaaaaaaaaa"));
        assert_eq!(a.submitter.len(), 32);
        assert_ne!(a.submitter, b.submitter);
        let digest_hex = crate::plugin::compile_cache::sha256_hex(b"aaaaaaaaaaaaaaaa");
        assert!(!digest_hex.starts_with(&a.submitter));
        assert!(a.may_see(Some(&a.submitter)));
        assert!(!a.may_see(Some(&b.submitter)));
        assert!(
            !a.may_see(None),
            "a run submitted without a key is not a user's"
        );
        assert!(admin.may_see(Some(&a.submitter)) && admin.may_see(None));
    }
}
