//! Helpers shared by the tests that run against the real control plane. Each test crate uses
//! some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testplane::{ControlPlane, Options};

/// The node name the tests enrol.
pub const NODE: &str = "pico-node-1";

/// A running `picolet run`, killed on drop.
pub struct Agent {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Agent {
    pub fn start(creds: &Path, extra: &[&str]) -> Agent {
        let port = free_port();
        let log = creds.with_extension(format!("agent-{port}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_picolet"))
            .arg("run")
            .arg("--credentials")
            .arg(creds)
            .args(["--kubelet-port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Agent { child, port, log }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh control plane with `pico-node-1` enrolled, running and Ready.
pub fn running_node(extra: &[&str]) -> (ControlPlane, PathBuf, Agent) {
    let plane = plane();
    let creds = enrol(&plane, NODE);
    let agent = Agent::start(&creds, extra);
    wait_ready(&plane, NODE);
    (plane, creds, agent)
}

pub fn ready(plane: &ControlPlane, node: &str) -> String {
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    kubectl_try(plane, &["get", "nodes", node, "-o", jsonpath]).1
}

pub fn wait_ready(plane: &ControlPlane, node: &str) {
    wait_for("node Ready", Duration::from_secs(45), || {
        ready(plane, node) == "True"
    });
}

/// A fresh control plane for one test (killed when dropped).
pub fn plane() -> ControlPlane {
    ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("control plane: {e}"))
}

/// Runs `picolet enrol` as the plane's admin; returns the credentials directory.
pub fn enrol(plane: &ControlPlane, node: &str) -> PathBuf {
    let dir = plane.dir().join(format!("credentials-{node}"));
    let out = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args(["enrol", "--node-name", node, "--out"])
        .arg(&dir)
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enrol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Runs kubectl as admin, returning stdout; panics with stderr on failure.
pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    let out = plane.kubectl(args).unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kubectl as admin, returning (success, stdout + stderr).
pub fn kubectl_try(plane: &ControlPlane, args: &[&str]) -> (bool, String) {
    let out = plane.kubectl(args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn free_port() -> u16 {
    testplane::free_port().unwrap()
}

pub fn parse_memory(text: &str) -> Option<Vec<u8>> {
    let mut bytes = vec![];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, hex) = line.split_once(':')?;
        for b in hex.split_whitespace() {
            bytes.push(u8::from_str_radix(b, 16).ok()?);
        }
    }
    (bytes.len() == 1024).then_some(bytes)
}

/// The value of one sample in a Prometheus text page (panics when absent).
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{page}"))
}

/// Plain HTTP exchange with the kubelet port (for `--kubelet-plain-http` agents).
pub fn raw_http(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
