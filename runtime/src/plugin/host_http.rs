//! Host side of `wasi:http/outgoing-handler` for plugins: every request is checked against the
//! hosts the plugin was granted, by the name and port in its URL, before anything leaves the
//! machine; a request to any other host is `HTTP-request-denied`. A granted name (not an address
//! or `localhost`) whose addresses are internal is `destination-IP-prohibited`. Granted requests
//! go to the addresses that were checked ([`http_client`]), with their timeouts cut to what is
//! left of the plugin's deadline.

use std::future::Future;
use std::time::Instant;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::grants::entry_covers;
use super::http_client::{self, Timeouts, checked_addresses, system_lookup};

/// The per-call gate: the granted `host:port` entries, whether their names may lead to
/// internal addresses, and the call's deadline.
pub struct HttpGate {
    hosts: Vec<String>,
    internal: bool,
    deadline: Instant,
}

impl HttpGate {
    pub fn new(hosts: Vec<String>, internal: bool, deadline: Instant) -> Self {
        Self {
            hosts,
            internal,
            deadline,
        }
    }
}

/// Whether `uri` names a granted host (`host:port`, or `host:*` for any port); the port
/// defaults to the scheme's.
pub fn uri_allowed(hosts: &[String], uri: &axum::http::Uri) -> bool {
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(default_port(uri));
    hosts
        .iter()
        .any(|entry| entry_covers(entry, host, Some(port)))
}

type SendFuture = Box<dyn Future<Output = wasmtime_wasi_http::Result<http_client::Sent>> + Send>;

/// Most bytes of one write to an outgoing request body. A body's writes wait in host memory
/// until the request is sent, which a plugin may never do: with the default 1 MiB a plugin could
/// make the host hold about 2 GiB through its 1024 resources, outside its memory cap; with this,
/// 16 MiB. Plugins write larger bodies in more calls.
const BODY_CHUNK_BYTES: usize = 8 << 10;

impl WasiHttpHooks for HttpGate {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: axum::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        _ = fut;
        if !uri_allowed(&self.hosts, request.uri()) {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let options = options.unwrap_or_default();
        // Each stage at most what is left: the lookup is bounded by it, and a plugin's huge
        // timeout must not overflow the clock when added to it.
        let cut = |t: Option<std::time::Duration>| t.map_or(left, |t| t.min(left));
        let timeouts = Timeouts {
            connect: cut(options.connect_timeout),
            first_byte: cut(options.first_byte_timeout),
            between_bytes: cut(options.between_bytes_timeout),
            deadline: tokio::time::Instant::from_std(self.deadline),
        };
        let internal = self.internal;
        Box::new(async move {
            let uri = request.uri();
            let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
            let port = uri.port_u16().unwrap_or(default_port(uri));
            // Resolving counts against the connect timeout, as a connect by name would.
            let started = Instant::now();
            let addresses =
                checked_addresses(&host, port, internal, system_lookup, timeouts.connect).await?;
            let timeouts = Timeouts {
                connect: timeouts.connect.saturating_sub(started.elapsed()),
                ..timeouts
            };
            http_client::send(request, &addresses, timeouts).await
        })
    }
}

/// The port a URL without one means.
fn default_port(uri: &axum::http::Uri) -> u16 {
    match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_granted_names_and_ports_pass() {
        let hosts = vec!["api.example.com:443".to_string(), "127.0.0.1:*".to_string()];
        let ok = |u: &str| uri_allowed(&hosts, &u.parse().expect("uri"));
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("https://API.example.com:443/"));
        assert!(!ok("http://api.example.com/"), "port 80 is not granted");
        assert!(!ok("https://api.example.com.evil.test/"));
        assert!(!ok("https://evil.test/?api.example.com"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(
            !ok("http://localhost:8080/"),
            "names are compared, not resolved"
        );
    }
}
