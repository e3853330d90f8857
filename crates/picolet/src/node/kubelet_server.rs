//! The kubelet port (:10250 by default) over HTTPS: accepts connections with a bound on their
//! number and time, reads one request head, and answers from the core's kubelet endpoints.
//!
//! Idle callers cannot hold the port shut: a connection must send its first byte within
//! [`FIRST_BYTE_DEADLINE`] and its handshake and request head within [`REQUEST_DEADLINE`], and
//! when [`MAX_CONNECTIONS`] are open a new one evicts the oldest that has not sent a complete
//! request yet instead of being refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picolet_core::agent::{Caller, Identity, KubeletSession, KubeletStep};
use picolet_core::kubelet::{Refusal, Route};
use picolet_core::metrics::{KubeletOutcome, PlatformStats};
use picolet_core::time::UnixMillis;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::node::Shared;
use crate::node::stats;
use picolet_device::tls_server;

/// Most connections held at once. A kubelet's Go server has no cap but the file limit; this
/// one bounds memory instead (a connection still in its handshake holds some tens of KiB of TLS
/// state and buffers, so 1024 stay within tens of MiB) and stays within the classic 1024-file
/// soft limit once that is raised (see [`connection_cap`]). It is far above what a cluster's
/// callers open at once (the API server's proxy, metrics-server, Prometheus), and since a new
/// connection evicts an idle one at the limit, idle connections cannot lock callers out.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time from accepting a connection to its first byte (a ClientHello, or a plain request). A
/// real client writes at once; an idle one is closed after this.
pub const FIRST_BYTE_DEADLINE: Duration = Duration::from_secs(3);
/// Time from the first byte for the TLS handshake plus the request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// File descriptors kept for everything but kubelet-port connections (the listener, API server
/// connections, logs, credentials being written).
const FD_RESERVE: u64 = 64;
/// Largest request head accepted (larger gets 431).
pub const MAX_HEAD: usize = 8 * 1024;

/// A caller's identity from its verified client certificate: CN and O values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub user: String,
    pub groups: Vec<String>,
}

impl Peer {
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
        serving: Arc<crate::node::certs::ServingCertificate>,
        client_ca_der: Arc<Vec<u8>>,
    },
}

/// How far a connection has got; the earlier, the sooner it is evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Nothing received yet.
    Silent,
    /// Its handshake or request head is arriving.
    Handshaking,
    /// A complete request is being answered: never evicted (its time is bounded by the
    /// authorization wait and the answer's deadline).
    Answering,
}

/// The open connections, by age (ids grow), with the handle that closes each (`H`: a task's
/// abort handle; anything in tests).
struct Connections<H> {
    cap: usize,
    next_id: u64,
    open: BTreeMap<u64, (Stage, Option<H>)>,
}

/// What [`Connections::admit`] decided for a new connection.
#[derive(Debug, PartialEq)]
enum Admission<H> {
    /// Serve it as `id`; if the table was full, `evicted` is the handle of the connection to
    /// close for it.
    Admitted { id: u64, evicted: Option<H> },
    /// Every connection is answering a request: close the new one.
    Full,
}

impl<H> Connections<H> {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next_id: 0,
            open: BTreeMap::new(),
        }
    }

    /// Makes room for a new connection: at the limit, evicts the oldest silent connection,
    /// else the oldest still handshaking, so a caller that is sending keeps its place longest.
    fn admit(&mut self) -> Admission<H> {
        let mut evicted = None;
        if self.open.len() >= self.cap {
            let victim = [Stage::Silent, Stage::Handshaking]
                .into_iter()
                .find_map(|want| {
                    self.open
                        .iter()
                        .find(|(_, (stage, _))| *stage == want)
                        .map(|(id, _)| *id)
                });
            let Some(victim) = victim else {
                return Admission::Full;
            };
            evicted = self.open.remove(&victim).and_then(|(_, h)| h);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, (Stage::Silent, None));
        Admission::Admitted { id, evicted }
    }

    /// Records the handle that closes connection `id` (unless it is gone already).
    fn attach(&mut self, id: u64, handle: H) {
        if let Some(entry) = self.open.get_mut(&id) {
            entry.1 = Some(handle);
        }
    }

    fn advance(&mut self, id: u64, stage: Stage) {
        if let Some(entry) = self.open.get_mut(&id) {
            entry.0 = entry.0.max(stage);
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

type Table = Arc<Mutex<Connections<tokio::task::AbortHandle>>>;

/// A connection's entry in the table: advanced as it progresses, removed when it ends (also
/// when its task is aborted by an eviction, which drops this).
struct Tracked {
    table: Table,
    id: u64,
}

impl Tracked {
    fn advance(&self, stage: Stage) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .advance(self.id, stage);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
    }
}

/// How many connections can be held with `file_limit` descriptors (the soft RLIMIT_NOFILE):
/// [`MAX_CONNECTIONS`], or fewer when the limit leaves no room for them and [`FD_RESERVE`].
/// Below the file limit, so that at the cap new connections are still accepted (and evict
/// idle ones) rather than left in the backlog by a failing `accept`.
fn connection_cap(file_limit: u64) -> usize {
    let room = file_limit.saturating_sub(FD_RESERVE).max(1);
    usize::try_from(room).map_or(MAX_CONNECTIONS, |r| r.min(MAX_CONNECTIONS))
}

/// Raises the soft file limit towards the hard one far enough for [`MAX_CONNECTIONS`] (as Go's
/// runtime does for a kubelet), and returns the soft limit now in force (`None`: unknown).
fn raise_file_limit() -> Option<u64> {
    let want = MAX_CONNECTIONS as u64 + FD_RESERVE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    Some(lim.rlim_cur)
}

/// Accepts connections forever, at most [`connection_cap`] at once: at the limit a new one
/// evicts the oldest connection that has not sent a complete request.
pub async fn serve(listener: TcpListener, transport: Transport, shared: Arc<Shared>) {
    let cap = raise_file_limit().map_or(MAX_CONNECTIONS, connection_cap);
    if cap < MAX_CONNECTIONS {
        tracing::warn!(
            "kubelet port: at most {cap} connections at once (the open-file limit is low)"
        );
    }
    let table: Table = Arc::new(Mutex::new(Connections::new(cap)));
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // The lock is never held while a task is aborted or spawned: an ending task takes it
        // to remove itself.
        let admission = table.lock().unwrap_or_else(|p| p.into_inner()).admit();
        let id = match admission {
            Admission::Full => {
                shared.count_kubelet(KubeletOutcome::OverLimit);
                drop(tcp);
                continue;
            }
            Admission::Admitted { id, evicted } => {
                if let Some(victim) = evicted {
                    victim.abort();
                    shared.count_kubelet(KubeletOutcome::Evicted);
                }
                id
            }
        };
        let tracked = Tracked {
            table: table.clone(),
            id,
        };
        let (shared, transport) = (shared.clone(), transport.clone());
        let task = tokio::spawn(async move {
            connection(tcp, peer, transport, &shared, &tracked).await;
        });
        table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .attach(id, task.abort_handle());
    }
}

fn timed_out(shared: &Shared, peer: std::net::SocketAddr, what: &str) {
    // Debug only: a flood of idle connections would otherwise flood the log.
    tracing::debug!("kubelet port: {peer} timed out {what}");
    shared.count_kubelet(KubeletOutcome::TimedOut);
}

fn handshake_failed(shared: &Shared, peer: std::net::SocketAddr, why: &dyn std::fmt::Display) {
    tracing::warn!("kubelet port: TLS handshake from {peer} refused: {why}");
    shared.count_kubelet(KubeletOutcome::TlsFailure);
}

/// One connection: its first byte, the handshake (if any), then one request.
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    transport: Transport,
    shared: &Shared,
    tracked: &Tracked,
) {
    match tokio::time::timeout(FIRST_BYTE_DEADLINE, tcp.peek(&mut [0u8; 1])).await {
        Ok(Ok(n)) if n > 0 => {}
        // Closed or failed before sending anything.
        Ok(_) => return,
        Err(_) => return timed_out(shared, peer, "before its first byte"),
    }
    tracked.advance(Stage::Handshaking);
    let deadline = Instant::now() + REQUEST_DEADLINE;
    match transport {
        Transport::Plain => handle(TokioConn(tcp), shared, Access::Open, deadline, tracked).await,
        Transport::Rustls(acc) => {
            match tokio::time::timeout_at(deadline, acc.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // rustls verified the chain against the client CA; no certificate means an
                    // anonymous caller.
                    let caller = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| Peer::from_certificate(c));
                    let access = Access::Authenticated(caller);
                    handle(TokioConn(tls), shared, access, deadline, tracked).await
                }
                Ok(Err(e)) => handshake_failed(shared, peer, &e),
                Err(_) => timed_out(shared, peer, "in the TLS handshake"),
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
                .map(UnixMillis::to_seconds);
            let config = tls_server::ServerConfig {
                cert_der: &serving.cert_der,
                key: &serving.key,
                client_ca_der: Some(&client_ca_der),
                now_unix,
            };
            // The device's buffer sizes.
            let (mut rx, mut tx) = (vec![0u8; DEVICE_TLS_RX], vec![0u8; DEVICE_TLS_TX]);
            let accepted = tokio::time::timeout_at(
                deadline,
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
                    let caller = conn.peer().map(|p| Peer {
                        user: p.user.to_string(),
                        groups: p.groups.iter().map(|g| g.to_string()).collect(),
                    });
                    handle(
                        conn,
                        shared,
                        Access::Authenticated(caller),
                        deadline,
                        tracked,
                    )
                    .await;
                }
                Ok(Err(e)) => handshake_failed(shared, peer, &e),
                Err(_) => timed_out(shared, peer, "in the TLS handshake"),
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
    Authenticated(Option<Peer>),
}

/// A connection a request is read from and its answer written to: rustls/plain TCP through
/// tokio, or the device's own TLS server.
trait KubeletConn {
    /// Reads some bytes; `None` on EOF or error.
    async fn read_some(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Writes a part of a longer answer; false when the write failed.
    async fn write_part(&mut self, data: &[u8]) -> bool;
    /// Writes the answer (or its last part) and closes.
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
    async fn write_part(&mut self, data: &[u8]) -> bool {
        self.0.write_all(data).await.is_ok()
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
    async fn write_part(&mut self, data: &[u8]) -> bool {
        self.write_all(data).await.is_ok()
    }
    async fn answer(mut self, data: &[u8]) {
        if self.write_all(data).await.is_ok() {
            self.close().await;
        }
    }
}

/// Drives the core's kubelet session for one connection: reads the head by `deadline`, waits
/// for the authorization answer when woken by the control connection, writes the answer.
async fn handle<C: KubeletConn>(
    mut stream: C,
    shared: &Shared,
    access: Access,
    deadline: Instant,
    tracked: &Tracked,
) {
    let groups: Vec<&str> = match &access {
        Access::Authenticated(Some(p)) => p.groups.iter().map(String::as_str).collect(),
        _ => Vec::new(),
    };
    let caller = match &access {
        Access::Open => Caller::Open,
        Access::Authenticated(None) => Caller::Anonymous,
        Access::Authenticated(Some(p)) => Caller::Verified(Identity {
            user: &p.user,
            groups: &groups,
        }),
    };
    let mut session = KubeletSession::new(caller);
    let mut head = vec![0u8; MAX_HEAD];
    let mut out = vec![0u8; 16 * 1024];
    let mut len = 0;
    loop {
        // Registered before the step, so that an answer arriving meanwhile is not missed.
        let woken = shared.kubelet_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let step = {
            let platform = PlatformStats {
                api: shared.api.stats(),
                ..stats::process_stats()
            };
            let now = shared.now();
            shared.lock().kubelet_step(
                &mut session,
                now,
                &head[..len],
                len == head.len(),
                &platform,
                &mut out,
            )
        };
        match step {
            KubeletStep::ReadMore => {
                match tokio::time::timeout_at(deadline, stream.read_some(&mut head[len..])).await {
                    Ok(Some(n)) => len += n,
                    Ok(None) => {
                        let step = shared.lock().kubelet_eof(&mut session, &mut out);
                        if let KubeletStep::Respond { len, .. } = step {
                            let _ =
                                tokio::time::timeout(REQUEST_DEADLINE, stream.answer(&out[..len]))
                                    .await;
                        }
                        return;
                    }
                    // Nothing complete arrived in time: close without an answer.
                    Err(_) => return shared.count_kubelet(KubeletOutcome::TimedOut),
                }
            }
            KubeletStep::Authorizing { until } => {
                tracked.advance(Stage::Answering);
                shared.wake_control();
                let wait = Duration::from(until.saturating_sub(shared.now()));
                let _ = tokio::time::timeout(wait, woken).await;
            }
            KubeletStep::Write { len } => {
                let part = tokio::time::timeout(REQUEST_DEADLINE, stream.write_part(&out[..len]));
                if !matches!(part.await, Ok(true)) {
                    return;
                }
            }
            KubeletStep::Respond { len, refused } => {
                tracked.advance(Stage::Answering);
                if let Some((route, refusal)) = refused {
                    log_refusal(&access, route, refusal);
                }
                let _ = tokio::time::timeout(REQUEST_DEADLINE, stream.answer(&out[..len])).await;
                return;
            }
        }
    }
}

/// Logs why an authenticated caller was refused (malformed requests are only counted).
fn log_refusal(access: &Access, route: Option<Route>, refusal: Refusal) {
    let Access::Authenticated(caller) = access else {
        return;
    };
    let why = match refusal {
        Refusal::Unauthorized => "401, a client certificate is required",
        Refusal::Forbidden => "403, the API server's SubjectAccessReview denied it",
        Refusal::AuthorizationUnavailable => "503, the API server could not be asked",
        _ => return,
    };
    let who = caller
        .as_ref()
        .map_or("anonymous (no client certificate)".to_string(), |c| {
            format!("user={} groups={:?}", c.user, c.groups)
        });
    tracing::warn!(
        "kubelet port: {route:?} refused for {who}: {why} (get nodes/{})",
        route.and_then(Route::subresource).unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_oldest_idle_connection_makes_room() {
        let mut t: Connections<u64> = Connections::new(3);
        let admit = |t: &mut Connections<u64>| match t.admit() {
            Admission::Admitted { id, evicted } => {
                t.attach(id, id * 10);
                (id, evicted)
            }
            Admission::Full => panic!("refused"),
        };
        let ids: Vec<u64> = (0..3).map(|_| admit(&mut t).0).collect();
        assert_eq!(ids, [0, 1, 2]);
        // 0 has sent its ClientHello, 1 and 2 nothing: the oldest silent one (1) goes first.
        t.advance(0, Stage::Handshaking);
        assert_eq!(admit(&mut t), (3, Some(10)));
        // Then the other silent ones (2, 3), and only then the handshaking one.
        assert_eq!(admit(&mut t), (4, Some(20)));
        t.advance(4, Stage::Answering);
        t.advance(5, Stage::Answering); // not admitted yet: ignored
        assert_eq!(admit(&mut t), (5, Some(30)));
        t.advance(5, Stage::Answering);
        assert_eq!(admit(&mut t), (6, Some(0)));
        // A stage never goes back.
        t.advance(4, Stage::Silent);
        t.advance(6, Stage::Answering);
        // Everyone answering: the new connection is refused, nothing is evicted.
        assert_eq!(t.admit(), Admission::Full);
        t.remove(4);
        assert!(matches!(
            t.admit(),
            Admission::Admitted {
                id: 7,
                evicted: None
            }
        ));
    }

    #[test]
    fn the_connection_cap_leaves_room_for_other_files() {
        assert_eq!(connection_cap(1_048_576), MAX_CONNECTIONS);
        assert_eq!(
            connection_cap(MAX_CONNECTIONS as u64 + FD_RESERVE),
            MAX_CONNECTIONS
        );
        assert_eq!(connection_cap(1024), 1024 - FD_RESERVE as usize);
        assert_eq!(connection_cap(10), 1);
    }
}
