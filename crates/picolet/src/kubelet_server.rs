//! The kubelet port (:10250 by default) over HTTPS: accepts connections with a bound on their
//! number and time, reads one request head, and answers from the core's kubelet endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use picolet_core::agent::{Decision, Identity, REVIEW_TIMEOUT_MS};
use picolet_core::kubelet::{self, Refusal, Route};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::run::Shared;
use crate::stats;
use picolet_device::tls_server;

/// Most connections served at once; more are closed at once (and counted).
pub const MAX_CONNECTIONS: usize = 64;
/// Time for the TLS handshake plus the request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head accepted (larger gets 431).
pub const MAX_HEAD: usize = 8 * 1024;

/// Counters the server adds to `/metrics`.
#[derive(Default)]
pub struct ServerCounters {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub over_limit: AtomicU64,
    pub tls_failures: AtomicU64,
    pub unauthenticated: AtomicU64,
    pub forbidden: AtomicU64,
}

/// A caller's identity from its verified client certificate: CN and O values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
}

impl Caller {
    /// Reads the identity from a certificate rustls already verified against the client CA.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let user = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect();
        Some(Self { user, groups })
    }
}

/// A self-signed serving certificate for the node's name and IP (PEM cert, PEM key).
pub fn self_signed(node_name: &str, node_ip: &str) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![node_name.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node_name}@picolet"));
    if let Ok(ip) = node_ip.parse() {
        params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    }
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// How the kubelet port's connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP (`--kubelet-plain-http`).
    Plain,
    /// rustls, verifying client certificates against the client CA.
    Rustls(TlsAcceptor),
    /// The device's own TLS server (`picolet_device::tls_server`, what the Pico runs):
    /// `--kubelet-tls device`.
    Device {
        serving: Arc<crate::node_certs::ServingCertificate>,
        client_ca_der: Arc<Vec<u8>>,
    },
}

/// Accepts connections forever, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, transport: Transport, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.server.over_limit.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let (shared, transport) = (shared.clone(), transport.clone());
        tokio::spawn(async move {
            connection(tcp, peer, transport, &shared).await;
            drop(permit);
        });
    }
}

fn handshake_failed(shared: &Shared, peer: std::net::SocketAddr, why: &dyn std::fmt::Display) {
    tracing::warn!("kubelet port: TLS handshake from {peer} refused: {why}");
    shared.server.tls_failures.fetch_add(1, Ordering::Relaxed);
}

/// One connection: the handshake (if any), then one request.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    transport: Transport,
    shared: &Shared,
) {
    match transport {
        Transport::Plain => handle(TokioConn(tcp), shared, Access::Open).await,
        Transport::Rustls(acc) => {
            match tokio::time::timeout(REQUEST_DEADLINE, acc.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // rustls verified the chain against the client CA; no certificate means an
                    // anonymous caller.
                    let caller = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| Caller::from_certificate(c));
                    handle(TokioConn(tls), shared, Access::Authenticated(caller)).await
                }
                Ok(Err(e)) => handshake_failed(shared, peer, &e),
                Err(_) => handshake_failed(shared, peer, &"timed out"),
            }
        }
        Transport::Device {
            serving,
            client_ca_der,
        } => {
            let serving = serving.device();
            let now_unix = shared
                .agent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unix_ms(shared.now())
                .map(|ms| ms / 1000);
            let config = tls_server::ServerConfig {
                cert_der: &serving.cert_der,
                key: &serving.key,
                client_ca_der: Some(&client_ca_der),
                now_unix,
            };
            // The device's buffer sizes.
            let (mut rx, mut tx) = (vec![0u8; DEVICE_TLS_RX], vec![0u8; DEVICE_TLS_TX]);
            let accepted = tokio::time::timeout(
                REQUEST_DEADLINE,
                tls_server::accept(
                    embedded_io_adapters::tokio_1::FromTokio::new(tcp),
                    &config,
                    &mut rand_core::OsRng,
                    &mut rx,
                    &mut tx,
                ),
            )
            .await;
            match accepted {
                Ok(Ok(conn)) => {
                    let caller = conn.peer().map(|p| Caller {
                        user: p.user.to_string(),
                        groups: p.groups.iter().map(|g| g.to_string()).collect(),
                    });
                    handle(conn, shared, Access::Authenticated(caller)).await;
                }
                Ok(Err(e)) => handshake_failed(shared, peer, &e),
                Err(_) => handshake_failed(shared, peer, &"timed out"),
            }
        }
    }
}

/// The device TLS server's receive and send buffers, as on the Pico.
pub const DEVICE_TLS_RX: usize = 4096;
/// See [`DEVICE_TLS_RX`].
pub const DEVICE_TLS_TX: usize = 2048;

/// Who is asking, as far as the transport can tell.
pub enum Access {
    /// Plain HTTP (`--kubelet-plain-http`): like the kubelet's read-only port, no
    /// authentication and no authorization.
    Open,
    /// HTTPS: the verified client certificate's identity, or `None` for no certificate.
    Authenticated(Option<Caller>),
}

/// Asks the agent (and through it the API server) whether `caller` may use `route`.
async fn authorize(shared: &Shared, caller: Option<&Caller>, route: Route) -> Decision {
    let groups: Vec<&str> = caller
        .map(|c| c.groups.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let id = caller.map(|c| Identity {
        user: &c.user,
        groups: &groups,
    });
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(REVIEW_TIMEOUT_MS)
        + Duration::from_secs(1);
    loop {
        let now = shared.now();
        let decision = shared
            .agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .authorize(now, id.as_ref(), route);
        if decision != Decision::Pending {
            return decision;
        }
        if tokio::time::Instant::now() >= deadline {
            return Decision::Unavailable;
        }
        shared.wake_control();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Authentication, then authorization; a refusal is logged and counted.
async fn allowed(shared: &Shared, access: &Access, req: kubelet::Request) -> Result<(), Refusal> {
    let Access::Authenticated(caller) = access else {
        return Ok(());
    };
    let refusal = match authorize(shared, caller.as_ref(), req.route).await {
        Decision::Allow => return Ok(()),
        Decision::Deny if caller.is_none() => {
            shared
                .server
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            Refusal::Unauthorized
        }
        Decision::Deny => {
            shared.server.forbidden.fetch_add(1, Ordering::Relaxed);
            Refusal::Forbidden
        }
        Decision::Pending | Decision::Unavailable => Refusal::AuthorizationUnavailable,
    };
    let who = caller
        .as_ref()
        .map_or("anonymous (no client certificate)".to_string(), |c| {
            format!("user={} groups={:?}", c.user, c.groups)
        });
    tracing::warn!(
        "kubelet port: {:?} refused for {who}: {} (get nodes/{})",
        req.route,
        match refusal {
            Refusal::Unauthorized => "401, a client certificate is required",
            Refusal::Forbidden => "403, the API server's SubjectAccessReview denied it",
            _ => "503, the API server could not be asked",
        },
        req.route.subresource().unwrap_or("-"),
    );
    Err(refusal)
}

/// A connection a request is read from and its answer written to: rustls/plain TCP through
/// tokio, or the device's own TLS server.
trait KubeletConn {
    /// Reads some bytes; `None` on EOF or error.
    async fn read_some(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Writes the answer and closes.
    async fn answer(self, data: &[u8]);
}

struct TokioConn<S>(S);

impl<S: AsyncRead + AsyncWrite + Unpin> KubeletConn for TokioConn<S> {
    async fn read_some(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.0.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        }
    }
    async fn answer(mut self, data: &[u8]) {
        let _ = self.0.write_all(data).await;
        let _ = self.0.shutdown().await;
    }
}

impl<S: embedded_io_async::Read + embedded_io_async::Write> KubeletConn
    for tls_server::TlsServerConnection<'_, S>
{
    async fn read_some(&mut self, buf: &mut [u8]) -> Option<usize> {
        match self.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        }
    }
    async fn answer(mut self, data: &[u8]) {
        if self.write_all(data).await.is_ok() {
            self.close().await;
        }
    }
}

async fn handle<C: KubeletConn>(mut stream: C, shared: &Shared, access: Access) {
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let parsed = tokio::time::timeout(REQUEST_DEADLINE, async {
        loop {
            match kubelet::parse_request(&head[..len]) {
                Ok(Some(req)) => return Ok(req),
                Err(refusal) => return Err(refusal),
                Ok(None) if len == head.len() => return Err(Refusal::HeadTooLarge),
                Ok(None) => {}
            }
            match stream.read_some(&mut head[len..]).await {
                None => return Err(Refusal::BadRequest),
                Some(n) => len += n,
            }
        }
    })
    .await;
    let mut out = vec![0u8; 64 * 1024];
    let parsed = match parsed {
        Ok(Ok(req)) => match allowed(shared, &access, req).await {
            Ok(()) => Ok(Ok(req)),
            Err(refusal) => Ok(Err(refusal)),
        },
        other => other,
    };
    let n = match parsed {
        // Nothing complete arrived in time: close without an answer.
        Err(_) => return,
        Ok(Err(refusal)) => {
            shared.server.refused.fetch_add(1, Ordering::Relaxed);
            kubelet::refuse(refusal, &mut out)
        }
        Ok(Ok(req)) => {
            shared.server.requests.fetch_add(1, Ordering::Relaxed);
            let stats = stats::process_stats();
            let now = shared.now();
            let extra = |w: &mut dyn std::fmt::Write| render_extra(w, shared, &stats);
            let agent = shared.agent.lock().unwrap_or_else(|p| p.into_inner());
            kubelet::respond(&agent, now, &stats, &extra, req, &mut out)
        }
    };
    let _ = tokio::time::timeout(REQUEST_DEADLINE, stream.answer(&out[..n])).await;
}

fn render_extra(
    w: &mut dyn std::fmt::Write,
    shared: &Shared,
    s: &picolet_core::metrics::PlatformStats,
) -> std::fmt::Result {
    use picolet_core::metrics::family;
    let c = &shared.server;
    family(
        w,
        "picolet_api_bytes_total",
        "counter",
        "HTTP bytes exchanged with the API server (before TLS).",
    )?;
    let sent = shared.api_bytes_sent.load(Ordering::Relaxed);
    let received = shared.api_bytes_received.load(Ordering::Relaxed);
    writeln!(w, "picolet_api_bytes_total{{direction=\"sent\"}} {sent}")?;
    writeln!(
        w,
        "picolet_api_bytes_total{{direction=\"received\"}} {received}"
    )?;
    family(
        w,
        "picolet_api_tls_failures_total",
        "counter",
        "API server connections refused in the TLS handshake (CA, server name, client certificate).",
    )?;
    writeln!(
        w,
        "picolet_api_tls_failures_total {}",
        shared.api_tls_failures.load(Ordering::Relaxed)
    )?;
    family(
        w,
        "process_cpu_seconds_total",
        "counter",
        "CPU time of the host agent process.",
    )?;
    writeln!(w, "process_cpu_seconds_total {:.6}", s.cpu_seconds)?;
    family(
        w,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the host agent process.",
    )?;
    writeln!(
        w,
        "process_resident_memory_bytes {}",
        s.memory_working_set_bytes
    )?;
    family(
        w,
        "picolet_kubelet_requests_total",
        "counter",
        "Kubelet-port requests by outcome.",
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"served\"}} {}",
        c.requests.load(Ordering::Relaxed)
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"refused\"}} {}",
        c.refused.load(Ordering::Relaxed)
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"over_limit\"}} {}",
        c.over_limit.load(Ordering::Relaxed)
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"tls_failure\"}} {}",
        c.tls_failures.load(Ordering::Relaxed)
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"unauthenticated\"}} {}",
        c.unauthenticated.load(Ordering::Relaxed)
    )?;
    writeln!(
        w,
        "picolet_kubelet_requests_total{{outcome=\"forbidden\"}} {}",
        c.forbidden.load(Ordering::Relaxed)
    )
}
