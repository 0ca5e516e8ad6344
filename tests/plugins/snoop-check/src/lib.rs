//! Test plugin: a quality check that tries every way out of the sandbox it can reach through
//! WASI — host files by absolute path and by `..`, the root directory, environment variables,
//! outbound TCP and UDP — and reports each attempt as a finding, `snoop-<what>`, whose message
//! says what it got. With nothing granted, every attempt must come back empty or denied.
//!
//! It also tries what an operator may grant: reading and writing the folder `/granted`, a `..`
//! escape out of it, a TCP connection to the address in `SNOOP_TCP`, and an HTTP request
//! through `wasi:http` to the URL in `SNOOP_HTTP` (and one to a host never granted) — so a test
//! can grant some of it and see that exactly the granted part works.

use agentrt_plugin_sdk::{CheckInfo, CodeArtifact, Finding, PipelineError, QualityCheck, Severity};

/// The plugin type exported to the host.
pub struct SnoopCheck;

fn finding(what: &str, outcome: String) -> Finding {
    Finding::new(format!("snoop-{what}"), Severity::Info, outcome)
}

/// `got: <first bytes>` when a read worked, `denied: <error>` when it did not.
fn read(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!(
            "got: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        ),
        Err(e) => format!("denied: {e}"),
    }
}

/// `got: status N` when an HTTP GET of `url` (http:// only) was answered, `denied: ...` when not.
fn http_get(url: &str) -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let Some(rest) = url.strip_prefix("http://") else {
        return format!("denied: not an http:// URL: {url}");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let built = request.set_scheme(Some(&Scheme::Http)).is_ok()
        && request.set_authority(Some(authority)).is_ok()
        && request.set_path_with_query(Some(path)).is_ok();
    if !built {
        return "denied: the request could not be built".to_owned();
    }
    match outgoing_handler::handle(request, None) {
        Err(e) => format!("denied: {e:?}"),
        Ok(response) => {
            response.subscribe().block();
            match response.get() {
                Some(Ok(Ok(answer))) => format!("got: status {}", answer.status()),
                Some(Ok(Err(e))) => format!("denied: {e:?}"),
                other => format!("denied: {other:?}"),
            }
        }
    }
}

impl QualityCheck for SnoopCheck {
    fn describe() -> CheckInfo {
        CheckInfo::new("snoop-check", Vec::<String>::new(), Vec::<String>::new())
    }

    fn check(_artifact: &CodeArtifact) -> Result<Vec<Finding>, PipelineError> {
        let listing = match std::fs::read_dir("/") {
            Ok(entries) => format!("got: {} entries", entries.count()),
            Err(e) => format!("denied: {e}"),
        };
        let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let env = if vars.is_empty() {
            "denied: no variables".to_owned()
        } else {
            format!("got: {}", vars.join(","))
        };
        let tcp = match std::net::TcpStream::connect("127.0.0.1:22") {
            Ok(_) => "got: connected".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let udp = match std::net::UdpSocket::bind("0.0.0.0:0") {
            Ok(_) => "got: bound".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let granted_tcp = match std::env::var("SNOOP_TCP") {
            Ok(addr) => match std::net::TcpStream::connect(addr.as_str()) {
                Ok(_) => "got: connected".to_owned(),
                Err(e) => format!("denied: {e}"),
            },
            Err(_) => "denied: SNOOP_TCP not visible".to_owned(),
        };
        let granted_write = match std::fs::write("/granted/written.txt", b"from the plugin") {
            Ok(()) => "got: written".to_owned(),
            Err(e) => format!("denied: {e}"),
        };
        let granted_http =
            http_get(&std::env::var("SNOOP_HTTP").unwrap_or_else(|_| "http://example.com/".into()));
        Ok(vec![
            finding("granted-http", granted_http),
            finding("http", http_get("http://example.com/")),
            finding("granted-read", read("/granted/visible.txt")),
            finding("granted-write", granted_write),
            finding("granted-escape", read("/granted/../../../etc/passwd")),
            finding("granted-tcp", granted_tcp),
            finding("passwd", read("/etc/passwd")),
            finding("escape", read("../../../../etc/passwd")),
            finding("root", listing),
            finding("env", env),
            finding("tcp", tcp),
            finding("udp", udp),
        ])
    }
}

agentrt_plugin_sdk::export_plugin!(SnoopCheck: quality-check);
