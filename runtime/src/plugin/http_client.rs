//! Sends a plugin's granted `wasi:http` request to the addresses its host was checked against.
//!
//! wasmtime-wasi-http's own client resolves the host again when it connects. A name whose DNS
//! answer changes between our check and that connect (rebinding) would lead a plugin granted a
//! public name to the loopback or to the cloud's metadata service. Here the host is resolved
//! once, under the call's deadline. The connection goes to exactly those addresses, and TLS is
//! verified against the name in the URL.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use wasmtime_wasi_http::{Error, WasiBody};

use super::grants::may_lead_to;

/// How long each stage of one request may take, the plugin's asks, and the call's deadline,
/// which no stage runs past.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Resolving, connecting, the TLS handshake and the HTTP handshake, together.
    pub connect: Duration,
    /// From sending the request to the response's head.
    pub first_byte: Duration,
    /// Longest quiet spell while the response body arrives.
    pub between_bytes: Duration,
    pub deadline: tokio::time::Instant,
}

impl Timeouts {
    /// When a stage that may take `limit` from now must end.
    fn ends(&self, limit: Duration) -> tokio::time::Instant {
        (tokio::time::Instant::now() + limit).min(self.deadline)
    }
}

/// A name lookup: the host and port to the addresses to connect to.
pub type Lookup =
    fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// The system resolver (getaddrinfo on a blocking thread, so it is cut off by a timeout).
pub fn system_lookup(
    host: String,
    port: u16,
) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
    Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
}

/// Where a request to `host:port` may go: an address given as such, or the addresses `lookup`
/// gives for a name, looked up once within `within`. Unless `internal` (the operator's
/// `internal-hosts`), a name other than `localhost` with any internal address goes nowhere.
pub async fn checked_addresses(
    host: &str,
    port: u16,
    internal: bool,
    lookup: Lookup,
    within: Duration,
) -> Result<Vec<SocketAddr>, Error> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addresses = tokio::time::timeout(within, lookup(bare.to_string(), port))
        .await
        .map_err(|_| Error::DnsTimeout)?
        .map_err(|_| Error::DestinationNotFound)?;
    if addresses.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    if addresses
        .iter()
        .any(|a| !may_lead_to(bare, a.ip(), internal))
    {
        return Err(Error::DestinationIpProhibited);
    }
    Ok(addresses)
}

/// A byte stream to the server, plain or TLS.
trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// The web's certificate authorities (webpki-roots), as wasmtime-wasi-http's client trusts.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Connect to the first of `addresses` that accepts, and for `https` verify the server's
/// certificate for `host`.
async fn connect(
    addresses: &[SocketAddr],
    host: &str,
    tls: bool,
) -> Result<Box<dyn Connection>, Error> {
    let mut failure = Error::DestinationNotFound;
    let mut stream = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => failure = Error::Connect(e),
        }
    }
    let stream = stream.ok_or(failure)?;
    let _ = stream.set_nodelay(true);
    if !tls {
        return Ok(Box::new(stream));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(bare.to_string())?;
    let secured = tokio_rustls::TlsConnector::from(tls_config())
        .connect(name, stream)
        .await
        .map_err(Error::Tls)?;
    Ok(Box::new(secured))
}

/// The response's head and body, and the connection's I/O, which wasmtime-wasi-http drives
/// while the plugin reads the body.
pub type Sent = (
    axum::http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Send `request` to `addresses` (from [`checked_addresses`]) over HTTP/1.1.
pub async fn send(
    mut request: axum::http::Request<WasiBody>,
    addresses: &[SocketAddr],
    timeouts: Timeouts,
) -> Result<Sent, Error> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let tls = uri.scheme() == Some(&axum::http::uri::Scheme::HTTPS);
    let handshake = async {
        let connection = connect(addresses, host, tls).await?;
        hyper::client::conn::http1::Builder::new()
            .handshake::<_, WasiBody>(hyper_util::rt::TokioIo::new(connection))
            .await
            .map_err(Error::from)
    };
    let (mut sender, connection) =
        tokio::time::timeout_at(timeouts.ends(timeouts.connect), handshake)
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
    // On the wire the request line carries only the path; the name travels in `Host`.
    *request.uri_mut() = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let mut connection = Box::pin(connection);
    let mut response = std::pin::pin!(tokio::time::timeout_at(
        timeouts.ends(timeouts.first_byte),
        sender.send_request(request)
    ));
    // The connection must be driven for the response to arrive. A response already there
    // wins over the connection's end (a server that answers early and closes).
    let (response, connection_ended) = tokio::select! {
        biased;
        r = &mut response => (r, false),
        ended = &mut connection => {
            ended?;
            (response.await, true)
        }
    };
    let response = response.map_err(|_| Error::ConnectionReadTimeout)??;
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = if connection_ended {
        Box::new(async { Ok(()) })
    } else {
        Box::new(async move {
            connection.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            })
        })
    };
    let (head, incoming) = response.into_parts();
    let body = QuietLimit::new(incoming, timeouts.between_bytes, timeouts.deadline).boxed_unsync();
    Ok((axum::http::Response::from_parts(head, body), io))
}

/// A response body that fails with `ConnectionReadTimeout` after `gap` without a frame, or
/// at the call's deadline.
struct QuietLimit {
    incoming: hyper::body::Incoming,
    gap: Duration,
    deadline: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl QuietLimit {
    fn new(incoming: hyper::body::Incoming, gap: Duration, deadline: tokio::time::Instant) -> Self {
        let mut body = Self {
            incoming,
            gap,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        };
        body.restart_timer();
        body
    }

    fn restart_timer(&mut self) {
        let next = (tokio::time::Instant::now() + self.gap).min(self.deadline);
        self.timer.as_mut().reset(next);
    }
}

impl Body for QuietLimit {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.restart_timer();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    type Found = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

    fn loopback(_host: String, port: u16) -> Found {
        Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]) })
    }

    fn public(_host: String, port: u16) -> Found {
        Box::pin(async move { Ok(vec![SocketAddr::from(([93, 184, 216, 34], port))]) })
    }

    fn never_answers(_host: String, _port: u16) -> Found {
        Box::pin(std::future::pending())
    }

    fn no_records(_host: String, _port: u16) -> Found {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn must_not_be_asked(host: String, _port: u16) -> Found {
        panic!("{host} is an address, not a name to look up")
    }

    const A_WHILE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_name_is_looked_up_once_and_may_not_lead_inside() {
        let check = |host: &'static str, internal, lookup| async move {
            checked_addresses(host, 8080, internal, lookup, A_WHILE).await
        };
        assert!(matches!(
            check("svc.example", false, loopback).await,
            Err(Error::DestinationIpProhibited)
        ));
        let allowed = check("svc.example", true, loopback)
            .await
            .expect("internal-hosts");
        assert_eq!(allowed, [SocketAddr::from(([127, 0, 0, 1], 8080))]);
        assert!(check("LocalHost", false, loopback).await.is_ok());
        assert_eq!(
            check("svc.example", false, public).await.expect("public"),
            [SocketAddr::from(([93, 184, 216, 34], 8080))]
        );
        // Addresses are used as given, internal or not.
        assert_eq!(
            check("[::1]", false, must_not_be_asked)
                .await
                .expect("address"),
            [SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 8080))]
        );
        assert!(matches!(
            check("svc.example", false, no_records).await,
            Err(Error::DestinationNotFound)
        ));
        let slow = checked_addresses(
            "svc.example",
            80,
            false,
            never_answers,
            Duration::from_millis(20),
        );
        assert!(matches!(slow.await, Err(Error::DnsTimeout)));
    }

    /// A server on the loopback that answers one request with `answer` (then holds the
    /// connection open until the client closes it, 30 s at most) and hands back the request
    /// it read.
    fn one_answer(answer: &'static [u8]) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("address").port();
        let served = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read");
                assert!(n > 0, "the client closed before its request was read");
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(answer).expect("answer");
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("read timeout");
            while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
            String::from_utf8_lossy(&request).into_owned()
        });
        (port, served)
    }

    fn get(url: &str) -> axum::http::Request<WasiBody> {
        axum::http::Request::get(url)
            .header("host", "svc.example")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("request")
    }

    fn timeouts(between_bytes: Duration) -> Timeouts {
        Timeouts {
            connect: A_WHILE,
            first_byte: A_WHILE,
            between_bytes,
            deadline: tokio::time::Instant::now() + 3 * A_WHILE,
        }
    }

    #[tokio::test]
    async fn a_request_goes_to_the_checked_address_and_names_only_its_path() {
        let (port, served) =
            one_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        // `svc.example` resolves nowhere: the request can only arrive through the address.
        let addresses = [SocketAddr::from(([127, 0, 0, 1], port))];
        let request = get(&format!("http://svc.example:{port}/v1/items?page=2"));
        let (response, io) = send(request, &addresses, timeouts(A_WHILE))
            .await
            .expect("sent");
        tokio::spawn(Box::into_pin(io));
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "hello");
        let request = served.join().expect("server");
        assert!(
            request.starts_with("GET /v1/items?page=2 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("host: svc.example\r\n"), "{request}");
    }

    /// Read a body whose server sends 10 of its 100 bytes and then nothing (holding the
    /// connection for 30 s at most), under `limits`.
    async fn read_a_stalled_body(limits: Timeouts) -> Result<(), Error> {
        let (port, _served) =
            one_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part");
        let addresses = [SocketAddr::from(([127, 0, 0, 1], port))];
        let request = get(&format!("http://svc.example:{port}/"));
        let (response, io) = send(request, &addresses, limits).await.expect("sent");
        tokio::spawn(Box::into_pin(io));
        response.into_body().collect().await.map(drop)
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_ends_in_a_read_timeout() {
        let read = read_a_stalled_body(timeouts(Duration::from_millis(50))).await;
        assert!(
            matches!(read, Err(Error::ConnectionReadTimeout)),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn a_body_still_arriving_at_the_call_deadline_ends_there() {
        // The quiet spell may last a minute and the server holds on for 30 s: only the
        // deadline ends this read in a timeout.
        let limits = Timeouts {
            deadline: tokio::time::Instant::now() + Duration::from_secs(2),
            ..timeouts(Duration::from_secs(60))
        };
        let read = read_a_stalled_body(limits).await;
        assert!(
            matches!(read, Err(Error::ConnectionReadTimeout)),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_finds_localhost() {
        let found = checked_addresses("localhost", 8080, false, system_lookup, A_WHILE)
            .await
            .expect("localhost");
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080)
        );
    }

    #[tokio::test]
    async fn https_is_refused_by_a_server_that_does_not_speak_tls() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("address").port();
        let served = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        });
        let addresses = [SocketAddr::from(([127, 0, 0, 1], port))];
        let request = get(&format!("https://svc.example:{port}/"));
        let sent = send(request, &addresses, timeouts(A_WHILE)).await;
        assert!(matches!(sent, Err(Error::Tls(_))), "{:?}", sent.err());
        served.join().expect("server");
    }

    #[tokio::test]
    async fn no_address_that_accepts_is_a_connect_error() {
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let addresses = [SocketAddr::from(([127, 0, 0, 1], port))];
        let sent = send(get("http://svc.example/"), &addresses, timeouts(A_WHILE)).await;
        assert!(matches!(sent, Err(Error::Connect(_))), "{:?}", sent.err());
    }
}
