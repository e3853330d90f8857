//! `picolet run`: the virtual Pico. Drives the core [`Agent`] with tokio — the control
//! connection, the ConfigMap and pod watch connections, the kubelet port — following the
//! core's steps (`picolet_core::agent::ControlStep`, `WatchStep`, `KubeletStep`); only
//! sockets, TLS, timers, files and wake-ups are here.
//!
//! [`api`]: connections to the API server; [`kubelet_server`]: the kubelet port;
//! [`certs`]: keys and installing issued certificates; [`join`]: the bootstrap-token join;
//! [`stats`]: the process's CPU and memory.

pub mod api;
pub mod certs;
pub mod join;
pub mod kubelet_server;
pub mod stats;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use picolet_core::agent::{
    Agent, AgentConfig, CertKind, CertificatePolicy, ConfigMode, ControlStep, NodeFacts, WatchRead,
    WatchReader, WatchStep, WatchStream,
};
use picolet_core::memory::REGION_SIZE;
use picolet_core::time::{Millis, UnixMillis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::credentials::Credentials;
use api::{ApiCounters, Connection, Endpoint, TransportError};

use crate::tls::{self, TlsError};
use certs::{self as node_certs, PendingKeys, ServingCertificate};

/// Everything `picolet run` can be told.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub credentials: PathBuf,
    /// Address published as InternalIP and where the kubelet port listens.
    pub node_ip: String,
    pub kubelet_port: u16,
    /// Serve the kubelet port over plain HTTP instead of HTTPS (explicit opt-in).
    pub kubelet_plain_http: bool,
    pub config_namespace: String,
    pub config_map: String,
    pub status_report_interval: Duration,
    pub config_mode: ConfigMode,
    pub watch_timeout: Duration,
    pub instance_type: String,
    /// Renew the client certificate through the CSR API before it expires.
    pub rotate_client_certificate: bool,
    /// Where the kubelet port's certificate comes from.
    pub serving_certificate: ServingSource,
    /// Serve the kubelet port's TLS with the device's own server instead of rustls.
    pub device_tls: bool,
}

/// Why `picolet run` cannot start (problems with credentials are retried instead, with a log
/// line every 10 s, so a node started before its credentials exist comes up by itself).
#[derive(Debug)]
pub enum RunError {
    /// The node or ConfigMap name is not a valid DNS label.
    Config(picolet_core::agent::ConfigError),
    /// The self-signed kubelet-port certificate could not be made.
    SelfSigned(rcgen::Error),
    /// A certificate or key for the kubelet port could not be read.
    Tls(TlsError),
    /// The kubelet port cannot be bound.
    Listen {
        address: String,
        source: std::io::Error,
    },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::SelfSigned(e) => write!(f, "cannot make a self-signed serving certificate: {e}"),
            Self::Tls(e) => write!(f, "kubelet port TLS: {e}"),
            Self::Listen { address, source } => write!(f, "cannot listen on {address}: {source}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<TlsError> for RunError {
    fn from(e: TlsError) -> Self {
        Self::Tls(e)
    }
}

/// Why the credentials directory cannot be used yet.
#[derive(Debug)]
enum UnusableCredentials {
    Read(crate::credentials::CredentialsError),
    Tls { dir: PathBuf, source: TlsError },
}

impl std::fmt::Display for UnusableCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "{e}"),
            Self::Tls { dir, source } => write!(f, "credentials in {}: {source}", dir.display()),
        }
    }
}

/// Where the kubelet port's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingSource {
    /// A `kubernetes.io/kubelet-serving` CSR (approved by an administrator or `picolet
    /// approve`); a self-signed certificate is served until it is issued.
    Csr,
    /// Only a self-signed certificate.
    SelfSigned,
}

/// State shared by the tasks: the agent behind a lock that is never held across an await.
pub struct Shared {
    pub agent: Mutex<Agent<'static>>,
    wake_control: Notify,
    /// Wakes both watch connections (the ConfigMap's and the pods').
    wake_watch: Notify,
    /// Closes both watch connections ([`ControlStep::ReopenConnections`]).
    close_watches: Notify,
    start: Instant,
    /// Wakes kubelet-port sessions waiting for an authorization answer: the control
    /// connection had a response.
    pub kubelet_wake: Notify,
    /// Bytes, connections and TLS refusals of every API server connection.
    pub api: Arc<ApiCounters>,
    stopping: AtomicBool,
    /// The API server endpoint with the current client certificate (replaced on renewal).
    endpoint: RwLock<Arc<Endpoint>>,
    /// The kubelet port's serving certificate, when it is served over TLS.
    serving: Option<Arc<ServingCertificate>>,
    credentials_dir: PathBuf,
    identity: crate::credentials::NodeIdentity,
    ca_pem: String,
}

impl Shared {
    /// Wakes the control connection (a kubelet-port caller waits for an authorization review).
    pub fn wake_control(&self) {
        self.wake_control.notify_one();
    }

    fn endpoint(&self) -> Arc<Endpoint> {
        self.endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Monotonic milliseconds since start: the core's clock.
    pub fn now(&self) -> Millis {
        Millis::from_ms(self.start.elapsed().as_millis() as u64)
    }

    /// Counts a kubelet-port connection that ended in the transport.
    pub fn count_kubelet(&self, outcome: picolet_core::metrics::KubeletOutcome) {
        self.lock().count_kubelet(outcome);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Agent<'static>> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn unix_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| UnixMillis::from_ms(d.as_millis() as u64))
        .unwrap_or_default()
}

/// Reads the credentials, retrying every 10 s with a clear message until they are usable.
/// A directory with a bootstrap token and no certificate joins first.
async fn load_credentials(dir: &std::path::Path) -> (Credentials, Arc<Endpoint>) {
    loop {
        match join::join_if_needed(dir).await {
            Ok(true) => info!("joined with the bootstrap token; client certificate written"),
            Ok(false) => {}
            Err(e) => {
                error!("bootstrap: {e}; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
                continue;
            }
        }
        let attempt = Credentials::load(dir)
            .map_err(UnusableCredentials::Read)
            .and_then(|c| {
                let ep = Endpoint::new(
                    &c.identity.server,
                    &c.identity.tls_server_name,
                    &c.ca_pem,
                    Some((&c.cert_pem, &c.key_pem)),
                )
                .map_err(|source| UnusableCredentials::Tls {
                    dir: dir.to_path_buf(),
                    source,
                })?;
                Ok((c, Arc::new(ep)))
            });
        match attempt {
            Ok(x) => return x,
            Err(e) => {
                error!("{e}; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

fn facts(node_name: &str, instance_type: &str) -> NodeFacts<'static> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{:032x}", unix_ms().as_ms()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    NodeFacts {
        operating_system: "none",
        architecture: "arm",
        instance_type: leak(instance_type.into()),
        capacity: NodeFacts::PICO_W_CAPACITY,
        allocatable: NodeFacts::PICO_W_CAPACITY,
        machine_id: leak(format!("virtual-{node_name}")),
        system_uuid: leak(format!("virtual-{node_name}")),
        boot_id: leak(boot_id),
        kernel_version: leak(format!("host agent on Linux {}", kernel.trim())),
        os_image: leak(format!(
            "picolet {} virtual Pico W",
            env!("CARGO_PKG_VERSION")
        )),
    }
}

/// Runs the virtual Pico until Ctrl-C or SIGTERM.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    let (creds, endpoint) = load_credentials(&opts.credentials).await;
    let node_name = leak(creds.identity.node_name.clone());
    let config = AgentConfig {
        node_name,
        config_namespace: leak(opts.config_namespace.clone()),
        config_map: leak(opts.config_map.clone()),
        api_host: leak(creds.identity.tls_server_name.clone()),
        kubelet_port: opts.kubelet_port,
        status_report_interval_ms: picolet_core::time::Duration::from_ms(
            opts.status_report_interval.as_millis() as u64,
        ),
        config_mode: opts.config_mode,
        watch_timeout_s: opts.watch_timeout.as_secs() as u32,
        facts: facts(node_name, &opts.instance_type),
    };
    let region: &'static mut [u8; REGION_SIZE] = Box::leak(Box::new([0u8; REGION_SIZE]));
    let start = Instant::now();
    let mut agent = Agent::new(config, region, Millis::ZERO).map_err(RunError::Config)?;
    agent.sync_clock(Millis::ZERO, unix_ms());
    agent.set_internal_ip(&opts.node_ip);
    // A connection of its own watches the pods bound to the node, as a kubelet does.
    agent.set_pod_watch(true);
    let serving_csr = opts.serving_certificate == ServingSource::Csr && !opts.kubelet_plain_http;
    agent.set_certificate_policy(
        Millis::ZERO,
        CertificatePolicy {
            rotate_client: opts.rotate_client_certificate,
            request_serving: serving_csr,
        },
        rand_core::RngCore::next_u32(&mut rand_core::OsRng),
    );
    let client_der = tls::certs(&creds.cert_pem, "client certificate").map(|c| c[0].to_vec());
    if let Ok(der) = &client_der {
        check_client_certificate(der, node_name);
    }
    match client_der.map(|der| agent.set_certificate(CertKind::Client, &der)) {
        Ok(Ok(c)) => info!(
            "client certificate valid until {} (Unix), renewal from {}",
            c.not_after.as_secs(),
            c.renew_at.as_secs()
        ),
        Ok(Err(e)) => warn!("client certificate: {e}; it will not be renewed"),
        Err(e) => warn!("client certificate: {e}; it will not be renewed"),
    }
    let serving_files = serving_csr
        .then(|| existing_serving_certificate(&opts.credentials, node_name, &opts.node_ip))
        .flatten();
    if let Some((cert_pem, _)) = &serving_files
        && let Ok(c) = tls::certs(cert_pem, "serving certificate")
    {
        let _ = agent.set_certificate(CertKind::Serving, &c[0]);
    }
    let serving = if opts.kubelet_plain_http {
        None
    } else {
        let (cert, key) = match serving_files {
            Some(pair) => pair,
            None => kubelet_server::self_signed(node_name, &opts.node_ip)
                .map_err(RunError::SelfSigned)?,
        };
        Some(Arc::new(ServingCertificate::new(&cert, &key)?))
    };
    let shared = Arc::new(Shared {
        agent: Mutex::new(agent),
        wake_control: Notify::new(),
        wake_watch: Notify::new(),
        close_watches: Notify::new(),
        start,
        kubelet_wake: Notify::new(),
        api: Arc::default(),
        stopping: AtomicBool::new(false),
        endpoint: RwLock::new(endpoint),
        serving: serving.clone(),
        credentials_dir: opts.credentials.clone(),
        identity: creds.identity.clone(),
        ca_pem: creds.ca_pem.clone(),
    });

    let bind = format!("{}:{}", opts.node_ip, opts.kubelet_port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|source| RunError::Listen {
            address: bind.clone(),
            source,
        })?;
    let transport = match (&serving, opts.device_tls) {
        (None, _) => {
            warn!("kubelet port {bind} serves plain HTTP (--kubelet-plain-http)");
            kubelet_server::Transport::Plain
        }
        (Some(resolver), false) => {
            kubelet_server::Transport::Rustls(tokio_rustls::TlsAcceptor::from(tls::server_config(
                resolver.clone(),
                Some(creds.client_ca_pem()),
            )?))
        }
        (Some(serving), true) => {
            let ca = tls::certs(creds.client_ca_pem(), "client CA")?;
            info!("kubelet port: TLS by the device's server (picolet_device::tls_server)");
            kubelet_server::Transport::Device {
                serving: serving.clone(),
                client_ca_der: Arc::new(ca[0].to_vec()),
            }
        }
    };
    info!(node = node_name, server = %creds.identity.server, kubelet = %bind, "picolet starting");
    tokio::spawn(kubelet_server::serve(listener, transport, shared.clone()));
    tokio::spawn(control_loop(shared.clone()));
    for stream in [WatchStream::ConfigMap, WatchStream::Pods] {
        tokio::spawn(watch_loop(shared.clone(), stream, opts.watch_timeout));
    }
    tokio::spawn(clock_loop(shared.clone()));

    shutdown_signal().await;
    shared.stopping.store(true, Ordering::Relaxed);
    info!("picolet stopping");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Keeps the wall clock honest against host clock adjustments.
async fn clock_loop(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let now = shared.now();
        shared.lock().sync_clock(now, unix_ms());
    }
}

async fn sleep_until(shared: &Shared, at: Millis, notify: &Notify) {
    let now = shared.now();
    let wait = Duration::from(at.saturating_sub(now)).min(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = notify.notified() => {}
    }
}

/// Logs what changed in the agent's view of the node and its config.
struct Observer {
    registered: bool,
    config: (picolet_core::agent::ConfigState, String),
}

impl Observer {
    fn observe(&mut self, agent: &Agent<'_>) {
        if agent.registered() && !self.registered {
            info!("node {} registered", agent.config().node_name);
        }
        self.registered = agent.registered();
        let (state, _, message) = agent.config_state();
        if (state, message) != (self.config.0, self.config.1.as_str()) {
            match state {
                picolet_core::agent::ConfigState::Rejected
                | picolet_core::agent::ConfigState::Error => {
                    warn!("config {}: {message}", state.as_str())
                }
                _ => info!("config {}: {message}", state.as_str()),
            }
            self.config = (state, message.to_string());
        }
    }
}

fn first_line(req: &[u8]) -> &str {
    let end = req.iter().position(|&b| b == b'\r').unwrap_or(req.len());
    std::str::from_utf8(&req[..end]).unwrap_or("?")
}

/// A serving certificate and key left by an earlier run, if they still fit this node's name
/// and address.
fn existing_serving_certificate(
    dir: &std::path::Path,
    node_name: &str,
    node_ip: &str,
) -> Option<(String, String)> {
    let cert = std::fs::read_to_string(dir.join("serving.crt")).ok()?;
    let key = std::fs::read_to_string(dir.join("serving.key")).ok()?;
    let der = tls::certs(&cert, "serving certificate").ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der[0]).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let ip: Option<std::net::IpAddr> = node_ip.parse().ok();
    let mut has_name = false;
    let mut has_ip = ip.is_none();
    for name in &san.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(n) => has_name |= *n == node_name,
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                has_ip |= match ip {
                    Some(std::net::IpAddr::V4(v4)) => *b == v4.octets(),
                    Some(std::net::IpAddr::V6(v6)) => *b == v6.octets(),
                    None => false,
                }
            }
            _ => {}
        }
    }
    let fresh = parsed.validity().is_valid();
    if has_name && has_ip && fresh {
        Some((cert, key))
    } else {
        info!(
            "serving.crt does not cover {node_name} / {node_ip} or has expired; requesting a new one"
        );
        None
    }
}

/// Makes a key for the CSR the agent wants ([`ControlStep::MakeKey`]).
fn make_key(shared: &Shared, keys: &mut PendingKeys, kind: CertKind) {
    let key = node_certs::new_key();
    let now = shared.now();
    let submitted = shared
        .lock()
        .submit_csr(now, kind, &key.public_key(), |subject, out| {
            key.csr(subject, out)
        });
    match submitted {
        Ok(()) => {
            info!("requesting a new {} certificate", kind.as_str());
            keys.put(kind, key);
        }
        Err(e) => error!("cannot build a {} certificate request: {e}", kind.as_str()),
    }
}

/// Installs the certificate the agent got ([`ControlStep::InstallCertificate`]).
fn install_certificate(shared: &Shared, keys: &mut PendingKeys, kind: CertKind) {
    let issued = shared
        .lock()
        .issued_certificate()
        .map(|(_, der)| der.to_vec());
    let Some(der) = issued else {
        return;
    };
    let now = shared.now();
    match install(shared, keys, kind, &der) {
        Ok(()) => match shared.lock().certificate_installed(now, kind) {
            Ok(c) => info!(
                "new {} certificate installed, valid until {} (Unix)",
                kind.as_str(),
                c.not_after.as_secs()
            ),
            Err(e) => error!("new {} certificate: {e}", kind.as_str()),
        },
        Err(e) => {
            error!("cannot install the new {} certificate: {e}", kind.as_str());
            shared.lock().certificate_install_failed(now, kind);
        }
    }
}

fn install(
    shared: &Shared,
    keys: &mut PendingKeys,
    kind: CertKind,
    der: &[u8],
) -> Result<(), node_certs::InstallError> {
    use node_certs::InstallError;
    let key = keys.take(kind)?;
    let (cert_pem, key_pem) = node_certs::pem_pair(der, &key).map_err(InstallError::Pem)?;
    let dir = &shared.credentials_dir;
    match kind {
        CertKind::Client => {
            let endpoint = Endpoint::new(
                &shared.identity.server,
                &shared.identity.tls_server_name,
                &shared.ca_pem,
                Some((&cert_pem, &key_pem)),
            )
            .map_err(InstallError::Tls)?;
            // The key first: a crash between the two renames leaves a new key with the old
            // certificate, which `picolet run` reports clearly at start.
            node_certs::write_atomic(&dir.join("client.key"), &key_pem, true)?;
            node_certs::write_atomic(&dir.join("client.crt"), &cert_pem, false)?;
            *shared.endpoint.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(endpoint);
        }
        CertKind::Serving => {
            if let Some(serving) = &shared.serving {
                serving
                    .replace(&cert_pem, &key_pem)
                    .map_err(InstallError::Tls)?;
            }
            node_certs::write_atomic(&dir.join("serving.key"), &key_pem, true)?;
            node_certs::write_atomic(&dir.join("serving.crt"), &cert_pem, false)?;
        }
    }
    Ok(())
}

/// Says clearly, at start, what is wrong with a client certificate the API server will refuse.
fn check_client_certificate(der: &[u8], node_name: &str) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        error!("client.crt is not a readable X.509 certificate");
        return;
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("");
    let expected = format!("system:node:{node_name}");
    if cn != expected {
        error!(
            "client.crt is for {cn:?}, not {expected:?}: the API server's node authorizer will refuse this node's requests (re-enrol this node)"
        );
    }
    let not_after = cert.validity().not_after.timestamp();
    if not_after * 1000 < unix_ms().as_ms() as i64 {
        error!(
            "client certificate expired at {} (Unix); the API server will refuse it: re-enrol, or join with a bootstrap token",
            not_after
        );
    }
}

async fn control_loop(shared: Arc<Shared>) {
    let mut conn = Connection::new(shared.endpoint(), shared.api.clone(), 16 * 1024);
    let mut keys = PendingKeys::default();
    let mut request = vec![0u8; 32 * 1024];
    let mut body = vec![0u8; 64 * 1024];
    let mut observer = Observer {
        registered: false,
        config: (picolet_core::agent::ConfigState::Pending, String::new()),
    };
    while !shared.stopping.load(Ordering::Relaxed) {
        let now = shared.now();
        let step = shared.lock().poll_control(now, &mut request);
        let n = match step {
            Ok(ControlStep::Send { len }) => len,
            Ok(ControlStep::MakeKey(kind)) => {
                make_key(&shared, &mut keys, kind);
                continue;
            }
            Ok(ControlStep::InstallCertificate(kind)) => {
                install_certificate(&shared, &mut keys, kind);
                continue;
            }
            Ok(ControlStep::ReopenConnections) => {
                conn = Connection::new(shared.endpoint(), shared.api.clone(), 16 * 1024);
                shared.close_watches.notify_waiters();
                continue;
            }
            Ok(ControlStep::SleepUntil(at)) => {
                sleep_until(&shared, at, &shared.wake_control).await;
                continue;
            }
            Err(e) => {
                error!("{e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let result = conn.round_trip(&request[..n], &mut body).await;
        let now = shared.now();
        let mut agent = shared.lock();
        match result {
            Ok(resp) => {
                let status = resp.head.status;
                tracing::debug!("{} -> {status}", first_line(&request));
                if !(200..300).contains(&status) && status != 404 && status != 409 {
                    let shown = &body[..resp.body_len.min(body.len()).min(300)];
                    let hint = match status {
                        401 => " (the client certificate is not accepted: re-run `picolet enrol`)",
                        403 => " (forbidden: check the node's RBAC and NodeRestriction)",
                        _ => "",
                    };
                    warn!(
                        "{} -> HTTP {status}{hint}: {}",
                        first_line(&request),
                        String::from_utf8_lossy(shown)
                    );
                }
                agent.on_response(
                    now,
                    &resp.head,
                    &body[..resp.body_len.min(body.len())],
                    resp.body_len,
                );
            }
            Err(e) => {
                warn!("{} -> {e}", first_line(&request));
                agent.on_transport_error(now);
            }
        }
        observer.observe(&agent);
        drop(agent);
        shared.wake_watch.notify_waiters();
        shared.kubelet_wake.notify_waiters();
    }
}

/// One watch connection ([`WatchStream`]): the agent says when to open it and with what
/// request, and frames what comes back; this loop only connects, reads and times out.
async fn watch_loop(shared: Arc<Shared>, stream: WatchStream, watch_timeout: Duration) {
    let mut request = vec![0u8; 4 * 1024];
    let mut reader: Box<WatchReader<{ 16 * 1024 }>> = Box::default();
    // The server ends a watch after timeoutSeconds; allow for bookmarks being late.
    let read_timeout = watch_timeout + Duration::from_secs(60);
    let name = stream.as_str();
    while !shared.stopping.load(Ordering::Relaxed) {
        let now = shared.now();
        let step = shared.lock().poll_watch(stream, now, &mut request);
        let n = match step {
            Ok(WatchStep::Open { len }) => len,
            Ok(WatchStep::SleepUntil(at)) => {
                sleep_until(&shared, at, &shared.wake_watch).await;
                continue;
            }
            Err(e) => {
                error!("{e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let opened = match shared.endpoint().connect(&shared.api).await {
            Ok(mut s) => s
                .write_all(&request[..n])
                .await
                .map(|()| s)
                .map_err(TransportError::Io),
            Err(e) => Err(e),
        };
        if let Err(e) = &opened {
            shared.api.failed(e);
        }
        let mut conn = match opened {
            Ok(s) => s,
            Err(e) => {
                warn!("{name}: {e}");
                let now = shared.now();
                shared.lock().on_watch_end(stream, now, &mut reader, true);
                continue;
            }
        };
        shared.api.sent(n);
        loop {
            let read = tokio::select! {
                r = tokio::time::timeout(read_timeout, conn.read(reader.space())) => r,
                _ = shared.close_watches.notified() => {
                    info!("{name}: reconnecting (new client certificate, or the control connection broke)");
                    Ok(Ok(0))
                }
            };
            let now = shared.now();
            let error = match read {
                Ok(Ok(0)) => false,
                Ok(Ok(r)) => {
                    shared.api.received(r);
                    let next = shared.lock().on_watch_read(stream, now, &mut reader, r);
                    shared.wake_control.notify_one();
                    match next {
                        WatchRead::Continue => continue,
                        WatchRead::Close => break,
                        WatchRead::Overflow => {
                            warn!("{name}: response head or chunk line exceeds the read buffer");
                            break;
                        }
                    }
                }
                Ok(Err(e)) => {
                    warn!("{name}: {e}");
                    shared.api.failed(&TransportError::Io(e));
                    true
                }
                Err(_) => {
                    warn!("{name}: no data for {read_timeout:?}; reconnecting");
                    true
                }
            };
            shared.lock().on_watch_end(stream, now, &mut reader, error);
            break;
        }
    }
}
