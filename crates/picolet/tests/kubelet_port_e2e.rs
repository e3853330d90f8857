//! The kubelet port cannot be held shut by idle connections: a client that keeps more
//! connections open than the agent holds, and reopens each one the agent closes, must not keep
//! `/healthz` (or the API server's proxy) from being answered. And it takes service-account
//! bearer tokens, as metrics-server and Prometheus present them, through a TokenReview.
//!
//! `#[ignore]`d for a plain `cargo test` because it needs the control plane binaries;
//! `scripts/test.sh` builds those and runs it.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{NODE, https_get, kubectl, metric, ready, running_node, via_proxy};
use testplane::ControlPlane;

/// More idle connections than the agent holds at once (1024), so that new ones evict old ones
/// (fewer, but still more than the agent's cap, when the open-file limit is low).
const IDLE: usize = 1100;

/// `picolet approve` for the node, then waits until the agent serves the issued certificate.
fn approve_serving(plane: &ControlPlane, creds: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args([
            "approve",
            "--node-name",
            NODE,
            "--wait",
            "60",
            "--kubeconfig",
        ])
        .arg(plane.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "approve: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_for("serving.crt", Duration::from_secs(30), || {
        creds.join("serving.crt").exists()
    });
}

/// How many idle connections to hold, and the cap the agent (which inherits this process's
/// open-file limit and computes its cap from it) should then have: raises the soft limit far
/// enough for [`IDLE`] (CI machines start at 1024) or as far as the hard limit allows, and
/// holds more connections than the agent's cap either way.
fn flood_and_agent_cap() -> (usize, usize) {
    // The agent's own numbers: at most 1024 connections, 64 descriptors kept for itself.
    const AGENT_MAX: u64 = 1024;
    const AGENT_RESERVE: u64 = 64;
    // This process's other files: the test harness, the control plane's pipes, stdio.
    const OWN: u64 = 48;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let want = IDLE as u64 + OWN + AGENT_RESERVE;
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: setrlimit only reads the struct it is given.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    let flood = (IDLE as u64).min(lim.rlim_cur.saturating_sub(OWN));
    let cap = AGENT_MAX.min(lim.rlim_cur.saturating_sub(AGENT_RESERVE));
    assert!(
        flood > cap,
        "an open-file limit of {} leaves no room for more connections than the agent holds",
        lim.rlim_cur
    );
    (flood as usize, cap as usize)
}

/// What [`hold_idle`] did: connections reopened, and the most it held open at one time.
struct Held {
    reopened: u64,
    most_open: usize,
}

/// Keeps `n` connections to `port` open without sending a byte, reopening each one the agent
/// closes, until `stop`.
fn hold_idle(port: u16, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Held> {
    std::thread::spawn(move || {
        let ip: std::net::IpAddr = common::node_ip().parse().unwrap();
        let addr = SocketAddr::from((ip, port));
        let open = || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
        let mut reopened = 0;
        let mut most_open = 0;
        let mut buf = [0u8; 16];
        while !stop.load(Ordering::Relaxed) {
            most_open = most_open.max(conns.iter().filter(|c| c.is_some()).count());
            for slot in conns.iter_mut() {
                let closed = match slot {
                    None => true,
                    Some(s) => match s.read(&mut buf) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    },
                };
                if closed {
                    *slot = open();
                    reopened += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Held {
            reopened,
            most_open,
        }
    })
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn idle_connections_that_are_reopened_do_not_block_the_kubelet_port() {
    let (flood, agent_cap) = flood_and_agent_cap();
    let (plane, creds, mut agent) = running_node(&[]);
    approve_serving(&plane, &creds);
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let port = agent.port;

    // A connection that sends nothing is closed after the first-byte deadline (3 s).
    let mut lone = TcpStream::connect((common::node_ip(), port)).unwrap();
    lone.set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    let t = Instant::now();
    let n = lone.read(&mut [0u8; 1]).unwrap_or(0);
    let took = t.elapsed();
    assert_eq!(n, 0);
    assert!(
        took > Duration::from_millis(2500) && took < Duration::from_secs(5),
        "an idle connection was closed after {took:?}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold_idle(port, flood, stop.clone());
    // Longer than the old 10 s handshake deadline, so reopened connections are in play.
    std::thread::sleep(Duration::from_secs(2));
    let until = Instant::now() + Duration::from_secs(14);
    let mut answered = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let healthz = https_get(port, &ca, NODE, None, "/healthz");
        let took = t.elapsed();
        assert_eq!(
            healthz.as_deref(),
            Ok("HTTP/1.1 200 OK\nok"),
            "after {answered} answers"
        );
        assert!(took < Duration::from_secs(3), "/healthz took {took:?}");
        answered += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    // The API server's own kubelet client gets through too, and the node stays Ready.
    let m = via_proxy(&plane, NODE, "/metrics");
    assert_eq!(ready(&plane, NODE), "True");
    stop.store(true, Ordering::Relaxed);
    let held = holder.join().unwrap();
    assert!(
        held.most_open > agent_cap,
        "the client held at most {} connections, not more than the agent's {agent_cap}",
        held.most_open
    );
    assert!(
        held.reopened > flood as u64,
        "the client reopened {}",
        held.reopened
    );

    let outcome = |o: &str| {
        metric(
            &m,
            &format!("picolet_kubelet_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    assert!(outcome("evicted") >= 1.0, "{m}");
    // At least the lone connection; the flood's are mostly evicted before their 3 s are up.
    assert!(outcome("timed_out") >= 1.0, "{m}");
    assert_eq!(outcome("over_limit"), 0.0, "{m}");
    assert!(agent.alive(), "{}", agent.log());
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn service_account_tokens_are_reviewed_then_authorized_like_metrics_servers() {
    let (plane, creds, mut agent) = running_node(&[]);
    approve_serving(&plane, &creds);
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let port = agent.port;
    let get = |token: &str, path: &str| {
        let auth = format!("Bearer {token}");
        common::https_request(port, &ca, NODE, None, &[("Authorization", &auth)], path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };

    // A service account, as metrics-server and Prometheus run as, with a token from the
    // TokenRequest API (what a pod's projected token is).
    kubectl(&plane, &["create", "serviceaccount", "scraper"]);
    let token = kubectl(&plane, &["create", "token", "scraper"])
        .trim()
        .to_string();
    assert!(token.len() > 500, "a JWT: {token}");

    // Authenticated, not authorized yet: 403 (not 401).
    let denied = get(&token, "/metrics/resource");
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");

    // Granted nodes/metrics, as metrics-server's role grants it: served once the cached denial
    // (30 s) expires. /memory needs nodes/proxy and stays closed.
    common::grant_service_account(&plane, "scraper", "nodes/metrics,nodes/stats");
    common::wait_for(
        "the token's caller allowed",
        Duration::from_secs(45),
        || get(&token, "/metrics/resource").starts_with("HTTP/1.1 200 OK"),
    );
    let page = get(&token, "/metrics/resource");
    assert!(page.contains("node_cpu_usage_seconds_total"), "{page}");
    let memory = get(&token, "/memory");
    assert!(memory.starts_with("HTTP/1.1 403 "), "{memory}");

    // A token the API server did not issue: 401.
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let refused = get(&forged, "/metrics");
    assert!(refused.starts_with("HTTP/1.1 401 "), "{refused}");
    // An unreadable Authorization header: 401, nothing asked.
    let bad = get("not a token", "/metrics");
    assert!(bad.starts_with("HTTP/1.1 401 "), "{bad}");

    let m = via_proxy(&plane, NODE, "/metrics");
    let reviews = |r: &str| {
        metric(
            &m,
            &format!("picolet_kubelet_token_reviews_total{{result=\"{r}\"}}"),
        )
    };
    assert!(reviews("authenticated") >= 1.0, "{m}");
    assert_eq!(reviews("rejected"), 1.0, "{m}");
    assert_eq!(reviews("error"), 0.0, "{m}");
    assert!(agent.alive(), "{}", agent.log());
}
