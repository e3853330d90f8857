//! A throwaway, real Kubernetes control plane on 127.0.0.1 for picolet's tests and demo.
//!
//! It runs Debian's etcd and a kube-apiserver + kube-controller-manager: by default
//! [`DEFAULT_RELEASE`] built from the Go module proxy by `scripts/control-plane/build-current.sh`,
//! or (with `PICOLET_K8S_BIN`) v1.20.2 built from Debian's `kubernetes` source package by
//! `scripts/control-plane/build.sh`, the oldest release picolet supports. With TLS, a client
//! CA, `--authorization-mode=Node,RBAC`, the NodeRestriction admission plugin, and the node
//! lifecycle and CSR signing/approving controllers. Everything lives in one state directory and
//! every process is killed when the [`ControlPlane`] is dropped.
//!
//! Not a product: it exists so that tests talk to a real API server, not a mock.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Why the control plane could not be started or used.
#[derive(Debug)]
pub enum Error {
    /// A binary is missing (run `scripts/control-plane/build-current.sh`).
    MissingBinary(PathBuf),
    /// A file or process operation failed.
    Io { what: String, source: io::Error },
    /// Certificate generation failed.
    Cert(rcgen::Error),
    /// A component did not become ready in time.
    NotReady { what: &'static str, log: PathBuf },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingBinary(p) => {
                write!(
                    f,
                    "{} is missing: run scripts/control-plane/build-current.sh (or build.sh \
                     for v1.20.2, with PICOLET_K8S_BIN) first",
                    p.display()
                )
            }
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::Cert(e) => write!(f, "certificate generation: {e}"),
            Self::NotReady { what, log } => {
                write!(f, "{what} did not become ready; see {}", log.display())
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Cert(e)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The release the tests, demo and benchmarks run by default, as built by
/// `scripts/control-plane/build-current.sh` (whose `K8S_VERSION` default must match).
pub const DEFAULT_RELEASE: &str = "v1.37.2";

/// Where the Kubernetes binaries are: `$PICOLET_K8S_BIN`, else
/// `~/.cache/picolet/k8s/<DEFAULT_RELEASE>/bin` (`$PICOLET_CACHE` for `~/.cache/picolet`).
pub fn k8s_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PICOLET_K8S_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("PICOLET_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/picolet")
        });
    cache.join("k8s").join(DEFAULT_RELEASE).join("bin")
}

/// The `kubectl` the tests use, next to the control plane's binaries.
pub fn kubectl_path() -> PathBuf {
    k8s_bin_dir().join("kubectl")
}

/// The minor version of the `kube-apiserver` in [`k8s_bin_dir`] (`Kubernetes v1.37.2` → 37),
/// read once: flags that later releases removed are passed only to the releases that have them.
pub fn server_minor() -> Result<u32, Error> {
    static MINOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if let Some(m) = MINOR.get() {
        return Ok(*m);
    }
    let bin = k8s_bin_dir().join("kube-apiserver");
    if !bin.exists() {
        return Err(Error::MissingBinary(bin));
    }
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(io_err(format!("run {} --version", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let minor = text
        .trim()
        .strip_prefix("Kubernetes v1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| Error::Io {
            what: format!("{} --version", bin.display()),
            source: io::Error::other(format!("unexpected version {text:?}")),
        })?;
    Ok(*MINOR.get_or_init(|| minor))
}

/// Tunables; the defaults suit tests.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node lifecycle controller's grace period. Shorter than Kubernetes' 40 s so tests of
    /// NotReady finish sooner; still longer than two Lease renewals (10 s each).
    pub node_monitor_grace_period_s: u32,
    /// Keep the state directory here instead of a temporary one.
    pub state_dir: Option<PathBuf>,
    /// `--cluster-signing-duration` of the CSR signer (Go duration; the default is a year).
    /// Certificates are backdated 5 minutes, so a renewal test needs more than 7m10s for
    /// 70 % of the lifetime to fall after issuance.
    pub cluster_signing_duration: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_monitor_grace_period_s: 25,
            state_dir: None,
            cluster_signing_duration: None,
        }
    }
}

/// A running etcd + kube-apiserver + kube-controller-manager.
pub struct ControlPlane {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    apiserver_port: u16,
    etcd_port: u16,
    opts: Options,
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free port"))?;
    Ok(l.local_addr().map_err(io_err("local addr"))?.port())
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), Error> {
    fs::write(path, contents).map_err(io_err(format!("write {}", path.display())))
}

struct Issued {
    cert_pem: String,
    key_pem: String,
}

fn leaf(
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
    cn: &str,
    org: Option<&str>,
    server: bool,
) -> Result<Issued, Error> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if server {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "localhost",
        ] {
            p.subject_alt_names.push(SanType::DnsName(name.try_into()?));
        }
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))));
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let cert = p.signed_by(&key, ca, ca_key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn kubeconfig(server: &str, dir: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: picolet-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
         contexts:\n- name: picolet-test\n  context:\n    cluster: picolet-test\n    user: {user}\ncurrent-context: picolet-test\n",
        ca = dir.join("ca.crt").display(),
        crt = dir.join(format!("{user}.crt")).display(),
        key = dir.join(format!("{user}.key")).display(),
    )
}

impl ControlPlane {
    /// Generates certificates and starts etcd, the API server and the controller-manager,
    /// returning once the API server answers `/readyz`.
    pub fn start(opts: Options) -> Result<Self, Error> {
        let bin = k8s_bin_dir();
        for b in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
            if !bin.join(b).exists() {
                return Err(Error::MissingBinary(bin.join(b)));
            }
        }
        if !Path::new("/usr/bin/etcd").exists() {
            return Err(Error::MissingBinary("/usr/bin/etcd".into()));
        }
        let (temp, dir) = match &opts.state_dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(io_err("create state dir"))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("picolet-plane-")
                    .tempdir()
                    .map_err(io_err("temp dir"))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut plane = Self {
            dir,
            _temp: temp,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            apiserver_port: free_port()?,
            etcd_port: free_port()?,
            opts,
        };
        plane.write_certs()?;
        plane.start_etcd()?;
        plane.start_apiserver()?;
        plane.start_controller_manager()?;
        Ok(plane)
    }

    fn write_certs(&self) -> Result<(), Error> {
        let d = &self.dir;
        let ca_key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "picolet-test-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key)?;
        write(&d.join("ca.crt"), ca.pem())?;
        write(&d.join("ca.key"), ca_key.serialize_pem())?;
        let sa = KeyPair::generate()?;
        write(&d.join("sa.key"), sa.serialize_pem())?;
        write(&d.join("sa.pub"), sa.public_key_pem())?;
        for (name, cn, org, server) in [
            ("apiserver", "kube-apiserver", None, true),
            ("admin", "picolet-admin", Some("system:masters"), false),
            // In system:masters so that every controller works without per-controller service
            // account credentials (kubeadm's --use-service-account-credentials); a test plane only.
            (
                "controller-manager",
                "system:kube-controller-manager",
                Some("system:masters"),
                false,
            ),
            (
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                Some("system:masters"),
                false,
            ),
        ] {
            let issued = leaf(&ca, &ca_key, cn, org, server)?;
            write(&d.join(format!("{name}.crt")), issued.cert_pem)?;
            write(&d.join(format!("{name}.key")), issued.key_pem)?;
        }
        write(
            &d.join("admin.kubeconfig"),
            kubeconfig(&self.server(), d, "admin"),
        )?;
        write(
            &d.join("controller-manager.kubeconfig"),
            kubeconfig(&self.server(), d, "controller-manager"),
        )?;
        Ok(())
    }

    fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Child, Error> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(io_err(format!("open {name}.log")))?;
        let log2 = log.try_clone().map_err(io_err("clone log"))?;
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("start {}", program.display())))
    }

    fn start_etcd(&mut self) -> Result<(), Error> {
        let peer = free_port()?;
        let url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args: Vec<String> = [
            "--name=default".into(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--log-level=warn".into(),
        ]
        .into();
        self.etcd = Some(self.spawn("etcd", Path::new("/usr/bin/etcd"), &args)?);
        Ok(())
    }

    /// Starts (or restarts) the API server and waits for `/readyz`.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // Current releases refuse to publish a loopback address as the `kubernetes`
            // Service's endpoint; nothing here uses that Service.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={}", self.apiserver_port),
            format!("--cert-dir={}", d("apiserver-certs")),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--enable-bootstrap-token-auth".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!(
                "--kubelet-client-certificate={}",
                d("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", d("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--allow-privileged=true".into(),
            "--v=1".into(),
        ];
        let mut args = args;
        if server_minor()? < 24 {
            // The insecure port was removed in 1.24; before, it must be switched off.
            args.push("--insecure-port=0".into());
        }
        let bin = k8s_bin_dir().join("kube-apiserver");
        self.apiserver = Some(self.spawn("kube-apiserver", &bin, &args)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let exited = self
                .apiserver
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited {
                break;
            }
            if self
                .kubectl(&["get", "--raw", "/readyz"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::NotReady {
            what: "kube-apiserver",
            log: self.dir.join("kube-apiserver.log"),
        })
    }

    /// Kills the API server (for restart tests); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        kill(&mut self.apiserver);
    }

    fn start_controller_manager(&mut self) -> Result<(), Error> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", d("controller-manager.kubeconfig")),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            format!("--cluster-signing-cert-file={}", d("ca.crt")),
            format!("--cluster-signing-key-file={}", d("ca.key")),
            format!("--root-ca-file={}", d("ca.crt")),
            format!("--service-account-private-key-file={}", d("sa.key")),
            format!(
                "--node-monitor-grace-period={}s",
                self.opts.node_monitor_grace_period_s
            ),
            "--node-monitor-period=2s".into(),
            "--v=1".into(),
        ];
        let mut args = args;
        if server_minor()? < 24 {
            // Its insecure port, removed in 1.24.
            args.push("--port=0".into());
        }
        if let Some(d) = &self.opts.cluster_signing_duration {
            args.push(format!("--cluster-signing-duration={d}"));
        }
        let bin = k8s_bin_dir().join("kube-controller-manager");
        self.controller_manager = Some(self.spawn("kube-controller-manager", &bin, &args)?);
        Ok(())
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The state directory (certificates, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A cluster-admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Runs kubectl as cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, Error> {
        Command::new(kubectl_path())
            .arg(format!(
                "--kubeconfig={}",
                self.admin_kubeconfig().display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("run kubectl"))
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        kill(&mut self.controller_manager);
        kill(&mut self.apiserver);
        kill(&mut self.etcd);
    }
}

/// `kubectl proxy` on loopback, so the bench can send a PATCH itself and time it from the
/// moment it is written (spawning kubectl per update would add its start-up to every sample).
pub struct KubectlProxy {
    child: Child,
    port: u16,
}

impl KubectlProxy {
    /// Starts `kubectl proxy` as the plane's admin on a free loopback port.
    pub fn start(plane: &ControlPlane) -> Result<KubectlProxy, Error> {
        let port = free_port()?;
        let child = Command::new(kubectl_path())
            .arg(format!(
                "--kubeconfig={}",
                plane.admin_kubeconfig().display()
            ))
            .args(["proxy", "--address=127.0.0.1", &format!("--port={port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("start kubectl proxy"))?;
        let mut proxy = KubectlProxy { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || proxy.child.try_wait().ok().flatten().is_some() {
                return Err(Error::Io {
                    what: "kubectl proxy did not listen within 10 s".into(),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(proxy)
    }

    /// Merge-patches a ConfigMap in `default`; returns when the API server has answered 200
    /// (panics otherwise: this is test and bench tooling).
    pub fn patch_configmap(&self, name: &str, body: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("proxy reachable");
        let req = format!(
            "PATCH /api/v1/namespaces/default/configmaps/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("PATCH written");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "PATCH failed: {}",
            resp.lines().next().unwrap_or("")
        );
    }
}

impl Drop for KubectlProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    /// The scripts build one release and the tests look for one: the two defaults must agree,
    /// or a fresh machine builds binaries the tests never find.
    #[test]
    fn the_default_release_is_the_one_build_current_builds() {
        let script = include_str!("../../../scripts/control-plane/build-current.sh");
        let line = format!("K8S_VERSION=${{K8S_VERSION:-{}}}", super::DEFAULT_RELEASE);
        assert!(
            script.lines().any(|l| l.trim() == line),
            "build-current.sh has no line {line:?}"
        );
    }
}
