//! Connections to the API server: TLS (rustls) over TCP carrying the core's HTTP/1.1 codec,
//! so the host agent exercises the same request/response code as the firmware.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use picolet_core::http::{HttpError, ReadStep, Response, ResponseReader};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::{self, TlsError};

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a request got no (complete) response.
#[derive(Debug)]
pub enum TransportError {
    /// TCP connect failed (API server down or unreachable).
    Connect { addr: String, source: io::Error },
    /// The TLS handshake failed (wrong CA, wrong server name, rejected client certificate…).
    Handshake {
        server_name: String,
        source: io::Error,
    },
    /// Reading or writing failed mid-request.
    Io(io::Error),
    /// The response did not arrive in time.
    Timeout,
    /// The response was not valid HTTP.
    Http(HttpError),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            Self::Handshake {
                server_name,
                source,
            } => write!(f, "TLS handshake with {server_name} failed: {source}"),
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Timeout => write!(f, "timed out"),
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TransportError {}

fn is_alert(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::AlertReceived(_)))
}

impl TransportError {
    /// Whether TLS refused the connection: a failed handshake, or (TLS 1.3, where the server
    /// checks the client certificate after the client's handshake ends) an alert from the
    /// server on the first read.
    pub fn is_tls_refusal(&self) -> bool {
        match self {
            Self::Handshake { .. } => true,
            Self::Io(e) => is_alert(e),
            _ => false,
        }
    }
}

/// What `/metrics` reports of the API server connections; shared by all of them (the core
/// renders it: `picolet_core::metrics::ApiTransportStats`).
#[derive(Debug, Default)]
pub struct ApiCounters {
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    connections: AtomicU64,
    tls_failures: AtomicU64,
    last_handshake_ms: AtomicU64,
}

impl ApiCounters {
    /// HTTP bytes written (before TLS).
    pub fn sent(&self, n: usize) {
        self.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// HTTP bytes read (before TLS).
    pub fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts `e` when TLS refused the connection.
    pub fn failed(&self, e: &TransportError) {
        if e.is_tls_refusal() {
            self.tls_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> picolet_core::metrics::ApiTransportStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        picolet_core::metrics::ApiTransportStats {
            connections: get(&self.connections),
            tls_failures: get(&self.tls_failures),
            last_handshake_ms: get(&self.last_handshake_ms),
            bytes: Some((get(&self.bytes_sent), get(&self.bytes_received))),
        }
    }
}

/// Splits `https://HOST:PORT[/…]` into `HOST:PORT`.
pub fn host_port(server: &str) -> Option<String> {
    let rest = server.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:443")
    })
}

/// Where and how to reach the API server.
#[derive(Clone)]
pub struct Endpoint {
    addr: String,
    server_name: ServerName<'static>,
    server_name_text: String,
    connector: TlsConnector,
}

impl Endpoint {
    /// An endpoint at `server` (`https://HOST:PORT`), verifying `server_name` against `ca_pem`.
    pub fn new(
        server: &str,
        server_name: &str,
        ca_pem: &str,
        client: Option<(&str, &str)>,
    ) -> Result<Self, TlsError> {
        let addr = host_port(server).ok_or_else(|| TlsError::ServerName(server.into()))?;
        Ok(Self {
            addr,
            server_name: tls::server_name(server_name)?,
            server_name_text: server_name.into(),
            connector: TlsConnector::from(tls::client_config(ca_pem, client)?),
        })
    }

    /// Opens a new verified TLS connection, counting it and timing its handshake in
    /// `counters` (a failure is for the caller to count: TLS 1.3 refusals show on first read).
    pub async fn connect(
        &self,
        counters: &ApiCounters,
    ) -> Result<TlsStream<TcpStream>, TransportError> {
        let started = Instant::now();
        let tcp =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| TransportError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| TransportError::Handshake {
                server_name: self.server_name_text.clone(),
                source,
            })?;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        counters
            .last_handshake_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(tls)
    }
}

/// A kept-alive connection for one request at a time.
pub struct Connection {
    counters: Arc<ApiCounters>,
    endpoint: Arc<Endpoint>,
    stream: Option<TlsStream<TcpStream>>,
    inbuf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Connection {
    /// A connection that connects on first use; `head_buffer` bounds response heads.
    pub fn new(endpoint: Arc<Endpoint>, counters: Arc<ApiCounters>, head_buffer: usize) -> Self {
        Self {
            counters,
            endpoint,
            stream: None,
            inbuf: vec![0; head_buffer],
            start: 0,
            end: 0,
        }
    }

    /// Sends `request` and collects the response body into `body` (the excess is counted and
    /// dropped). Retries once on a fresh connection when a reused one turns out closed.
    pub async fn round_trip(
        &mut self,
        request: &[u8],
        body: &mut [u8],
    ) -> Result<Response, TransportError> {
        let reused = self.stream.is_some();
        let result = match self.attempt(request, body).await {
            Err(Attempt::Stale) if reused => self.attempt(request, body).await,
            other => other,
        };
        result.map_err(|e| {
            self.stream = None;
            let e = match e {
                Attempt::Stale => TransportError::Io(io::ErrorKind::UnexpectedEof.into()),
                Attempt::Failed(e) => e,
            };
            self.counters.failed(&e);
            e
        })
    }

    async fn attempt(&mut self, request: &[u8], body: &mut [u8]) -> Result<Response, Attempt> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request, body)).await {
            Ok(r) => r,
            Err(_) => Err(Attempt::Failed(TransportError::Timeout)),
        }
    }

    async fn exchange(&mut self, request: &[u8], body: &mut [u8]) -> Result<Response, Attempt> {
        if self.stream.is_none() {
            let stream = self.endpoint.connect(&self.counters).await;
            self.stream = Some(stream.map_err(Attempt::Failed)?);
            self.start = 0;
            self.end = 0;
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(request)
            .await
            .map_err(|_| Attempt::Stale)?;
        self.counters.sent(request.len());
        let mut reader = ResponseReader::new();
        let mut got_any = false;
        let http = |e| Attempt::Failed(TransportError::Http(e));
        let response = loop {
            let (n, step) = reader
                .feed(&self.inbuf[self.start..self.end], body)
                .map_err(http)?;
            self.start += n;
            if let ReadStep::Done(r) = step {
                break r;
            }
            self.inbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.inbuf.len() {
                return Err(http(HttpError::HeadTooLarge));
            }
            let stream = self.stream.as_mut().expect("connected");
            let read = match stream.read(&mut self.inbuf[self.end..]).await {
                // The server refused us in TLS (a TLS 1.3 client-certificate check): not a
                // stale connection, and retrying will not help.
                Err(e) if is_alert(&e) => return Err(Attempt::Failed(TransportError::Io(e))),
                Ok(0) | Err(_) if !got_any => return Err(Attempt::Stale),
                Ok(0) => {
                    self.stream = None;
                    break reader.closed().map_err(http)?;
                }
                Ok(r) => r,
                Err(e) => return Err(Attempt::Failed(TransportError::Io(e))),
            };
            got_any = true;
            self.counters.received(read);
            self.end += read;
        };
        if response.head.close {
            self.stream = None;
        }
        Ok(response)
    }
}

/// How one attempt failed: a stale kept-alive connection (nothing was processed, try again on a
/// new one), or for real.
enum Attempt {
    Stale,
    Failed(TransportError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:6443").as_deref(),
            Some("127.0.0.1:6443")
        );
        assert_eq!(
            host_port("https://kube.example/").as_deref(),
            Some("kube.example:443")
        );
        assert_eq!(
            host_port("https://[::1]:6443").as_deref(),
            Some("[::1]:6443")
        );
        assert_eq!(host_port("https://[::1]").as_deref(), Some("[::1]:443"));
        assert_eq!(host_port("http://127.0.0.1:8080"), None);
        assert_eq!(host_port("https://"), None);
    }
}
