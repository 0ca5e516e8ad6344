//! Test plugin: a quality check that tries every way out of the sandbox it can reach through
//! WASI — host files by absolute path and by `..`, the root directory, environment variables,
//! outbound TCP and UDP — and reports each attempt as a finding, `snoop-<what>`, whose message
//! says what it got. With nothing granted, every attempt must come back empty or denied.
//!
//! It also tries what an operator may grant: reading and writing the folder `/granted`, a `..`
//! escape out of it, and a TCP connection to the address in `SNOOP_TCP` — so a test can grant
//! some of it and see that exactly the granted part works.

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
        Ok(vec![
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
