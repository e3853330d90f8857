//! Helpers shared by the tests that run against the real control plane. Each test crate uses
//! some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use testplane::{ControlPlane, Options};

/// The node name the tests enrol.
pub const NODE: &str = "pico-node-1";

/// The address the test agents publish and listen on: `PICOLET_NETNS_IP`, which
/// `scripts/test.sh` sets to a non-loopback address in the network namespace it runs the tests
/// in (current API servers refuse to proxy to a loopback node address), else 127.0.0.1.
pub fn node_ip() -> String {
    std::env::var("PICOLET_NETNS_IP").unwrap_or_else(|_| "127.0.0.1".to_string())
}

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
            .args(["--node-ip", &node_ip()])
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

/// `picolet token` as the plane's admin for `node`, writing the node's directory `dir`.
pub fn token(plane: &ControlPlane, node: &str, dir: &Path, ttl_minutes: u32) {
    let out = Command::new(env!("CARGO_BIN_EXE_picolet"))
        .args([
            "token",
            "--node-name",
            node,
            "--ttl",
            &ttl_minutes.to_string(),
            "--out",
        ])
        .arg(dir)
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kubelet page of `node` through the API server's node proxy (`PATH` like `/metrics`).
pub fn via_proxy(plane: &ControlPlane, node: &str, path: &str) -> String {
    kubectl(
        plane,
        &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy{path}")],
    )
}

/// Lets the service account `default:SA` `get` `resources` (such as `nodes/metrics`) through a
/// ClusterRole and ClusterRoleBinding both named `SA-scrapes-nodes`, as metrics-server's and
/// Prometheus's roles grant it.
pub fn grant_service_account(plane: &ControlPlane, sa: &str, resources: &str) {
    let name = format!("{sa}-scrapes-nodes");
    kubectl(
        plane,
        &[
            "create",
            "clusterrole",
            &name,
            "--verb=get",
            &format!("--resource={resources}"),
        ],
    );
    kubectl(
        plane,
        &[
            "create",
            "clusterrolebinding",
            &name,
            &format!("--clusterrole={name}"),
            &format!("--serviceaccount=default:{sa}"),
        ],
    );
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

/// A jsonpath of the node's Lease in `kube-node-lease`.
pub fn lease(plane: &ControlPlane, node: &str, jsonpath: &str) -> String {
    kubectl(
        plane,
        &[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            node,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ],
    )
}

/// When the node's Lease was last renewed, in Unix seconds.
pub fn lease_renewed_at(plane: &ControlPlane, node: &str) -> i64 {
    let t = lease(plane, node, "{.spec.renewTime}");
    let out = Command::new("date")
        .args(["-d", &t, "+%s"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("renewTime {t:?}"))
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
    let mut s = TcpStream::connect((node_ip(), port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A client certificate signed by the plane's CA (or any other), PEM cert and key.
pub fn client_cert(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cn: &str,
    org: &str,
    expired: bool,
) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(ca_cert_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, org);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn other_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "not-the-cluster-ca");
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// GET `path` over HTTPS, verifying the kubelet port's certificate against `ca_pem` for
/// `server_name`; returns the status line and body, or the TLS error.
pub fn https_get(
    port: u16,
    ca_pem: &str,
    server_name: &str,
    client: Option<&(String, String)>,
    path: &str,
) -> Result<String, String> {
    https_request(port, ca_pem, server_name, client, &[], path)
}

/// [`https_get`] with extra request headers (such as `Authorization`).
pub fn https_request(
    port: u16,
    ca_pem: &str,
    server_name: &str,
    client: Option<&(String, String)>,
    headers: &[(&str, &str)],
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect((node_ip(), port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\n{extra}\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if !out.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Ok(format!("{status}\n{body}"))
}
