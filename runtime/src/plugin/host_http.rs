//! Host side of `wasi:http/outgoing-handler` for plugins: every request is checked against the
//! hosts the plugin was granted, by the name and port in its URL, before anything leaves the
//! machine; a request to any other host is `HTTP-request-denied`. A granted name (not an address
//! or `localhost`) whose addresses are internal is `destination-IP-prohibited`. Granted requests
//! are sent by wasmtime-wasi-http's client with their timeouts cut to what is left of the
//! plugin's deadline.

use std::future::Future;
use std::time::Instant;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::grants::{entry_covers, is_internal, names_its_address};

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
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    hosts
        .iter()
        .any(|entry| entry_covers(entry, host, Some(port)))
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                axum::http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), Error>> + Send>,
            )>,
        > + Send,
>;

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
        // A granted name must lead to public addresses (see `names_its_address`). Checked
        // here, before the client resolves the name again to connect: this stops a name whose
        // records point inside, not one that changes its answer between the two lookups.
        let name_to_check = request
            .uri()
            .host()
            .filter(|host| !self.internal && !names_its_address(host))
            .map(str::to_string);
        let options = options.unwrap_or_default();
        let cut = |t: Option<std::time::Duration>| Some(t.map_or(left, |t| t.min(left)));
        let options = RequestOptions {
            connect_timeout: cut(options.connect_timeout),
            first_byte_timeout: cut(options.first_byte_timeout),
            between_bytes_timeout: cut(options.between_bytes_timeout),
        };
        Box::new(async move {
            if let Some(name) = name_to_check {
                let lookup = tokio::net::lookup_host((name.as_str(), 0));
                let addresses: Vec<std::net::IpAddr> = tokio::time::timeout(left, lookup)
                    .await
                    .map_err(|_| Error::DnsTimeout)?
                    .map_err(|_| Error::DestinationNotFound)?
                    .map(|a| a.ip())
                    .collect();
                if addresses.iter().any(|ip| is_internal(*ip)) {
                    return Err(Error::DestinationIpProhibited);
                }
            }
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
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
