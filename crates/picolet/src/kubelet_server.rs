//! The kubelet port (:10250 by default) over HTTPS: accepts connections with a bound on their
//! number and time, reads one request head, and answers from the core's kubelet endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use picolet_core::kubelet::{self, Refusal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::run::Shared;
use crate::stats;

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

/// Accepts connections forever. `acceptor` is `None` only when plain HTTP was asked for.
pub async fn serve(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.server.over_limit.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acc) => match tokio::time::timeout(REQUEST_DEADLINE, acc.accept(tcp)).await {
                    Ok(Ok(tls)) => handle(tls, &shared).await,
                    _ => {
                        shared.server.tls_failures.fetch_add(1, Ordering::Relaxed);
                    }
                },
                None => handle(tcp, &shared).await,
            }
            drop(permit);
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: &Shared) {
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
            match stream.read(&mut head[len..]).await {
                Ok(0) | Err(_) => return Err(Refusal::BadRequest),
                Ok(n) => len += n,
            }
        }
    })
    .await;
    let mut out = vec![0u8; 64 * 1024];
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
    let _ = tokio::time::timeout(REQUEST_DEADLINE, async {
        let _ = stream.write_all(&out[..n]).await;
        let _ = stream.shutdown().await;
    })
    .await;
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
    )
}
