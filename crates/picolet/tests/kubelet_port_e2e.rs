//! The kubelet port cannot be held shut by idle connections: a client that keeps more
//! connections open than the agent holds, and reopens each one the agent closes, must not keep
//! `/healthz` (or the API server's proxy) from being answered.
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

use common::{NODE, https_get, metric, ready, running_node, via_proxy};
use testplane::ControlPlane;

/// More idle connections than the agent holds at once (1024), so that new ones evict old ones.
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

/// Keeps `n` connections to `port` open without sending a byte, reopening each one the agent
/// closes, until `stop`; returns how many were reopened.
fn hold_idle(port: u16, n: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let open = || {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        };
        let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open()).collect();
        let mut reopened = 0;
        let mut buf = [0u8; 16];
        while !stop.load(Ordering::Relaxed) {
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
        reopened
    })
}

#[test]
#[ignore = "needs the control plane; run by scripts/test.sh"]
fn idle_connections_that_are_reopened_do_not_block_the_kubelet_port() {
    let (plane, creds, mut agent) = running_node(&[]);
    approve_serving(&plane, &creds);
    let ca = std::fs::read_to_string(plane.dir().join("ca.crt")).unwrap();
    let port = agent.port;

    // A connection that sends nothing is closed after the first-byte deadline (3 s).
    let mut lone = TcpStream::connect(("127.0.0.1", port)).unwrap();
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
    let holder = hold_idle(port, IDLE, stop.clone());
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
    let reopened = holder.join().unwrap();
    assert!(reopened > IDLE as u64, "the client reopened {reopened}");

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
