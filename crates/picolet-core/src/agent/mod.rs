//! The node agent: a sans-IO state machine that does what a kubelet does for a node that runs
//! no containers.
//!
//! The platform drives it over two connections to the API server:
//! - the **control connection**, one request at a time: [`Agent::poll_request`] writes the next
//!   request into a buffer (or says nothing is due before [`Agent::next_wakeup`]), and
//!   [`Agent::on_response`] / [`Agent::on_transport_error`] tell it what came back;
//! - the **watch connection** for the ConfigMap: [`Agent::poll_watch_request`], then
//!   [`Agent::on_watch_bytes`] as bytes arrive and [`Agent::on_watch_closed`].
//!
//! Files: this one holds the state and the control connection's scheduling and responses;
//! [`encode`] turns each kind of request into HTTP bytes; [`config_map`] follows the ConfigMap
//! (list, watch, poll), validates and applies it, and queues the reports and Events.
//!
//! Time is always an argument (monotonic milliseconds); wall-clock time comes from
//! [`Agent::sync_clock`] or the responses' `Date` headers.

mod authorization;
mod certificates;
mod config_map;
mod encode;
mod kubelet_session;
mod pods;
mod watch_stream;

pub use authorization::{
    ALLOW_TTL_MS, AUTHZ_SLOTS, DENY_TTL_MS, Decision, IDENTITY_GROUPS_MAX, IDENTITY_NAME_MAX,
    Identity, REVIEW_TIMEOUT_MS,
};
pub use certificates::{
    CERT_DER_MAX, CERT_PEM_MAX, CertKind, CertificatePolicy, InstalledCertificate,
};
pub use kubelet_session::{Caller, KubeletSession, KubeletStep, Platform};
pub use pods::POD_LIST_MS;

pub use crate::paths::LEASE_NAMESPACE;
use crate::paths::{ApiPath, Watch};

use core::fmt;

use heapless::String;

use crate::backoff::Backoff;
use crate::http::{self, BodyType, HttpError, Method, ResponseHead};
use crate::lines::LineFramer;
use crate::memory::{self, MemoryImage, MemoryRegion};
use crate::metrics::{Gauges, Metrics};
use crate::objects::{self as obj, Crc32Hex};
use crate::time::{ClockSource, MicroTime, Millis, Rfc3339, WallClock};

/// Lease duration the node announces, as the kubelet does.
pub const LEASE_DURATION_S: u32 = 40;
/// How often the Lease is renewed (a quarter of its duration).
pub const LEASE_RENEW_MS: Millis = 10_000;
/// A gap between successful Lease renewals longer than this (one and a half periods) may have
/// let the node lifecycle controller mark the node Unknown; the status is then posted again at
/// once, as a kubelet that finds its Node's conditions changed would.
pub const HEARTBEAT_GAP_MS: Millis = 15_000;
/// How often node status is evaluated.
pub const STATUS_EVAL_MS: Millis = 10_000;
/// Default longest time between two status PATCHes, as the kubelet's.
pub const STATUS_REPORT_DEFAULT_MS: Millis = 300_000;
/// How often the ConfigMap is listed when it cannot be watched.
pub const CONFIG_POLL_MS: Millis = 30_000;
/// How long polling lasts before a watch is tried again, after a watch was refused.
pub const WATCH_RETRY_AFTER_FALLBACK_MS: Millis = 300_000;
/// The longest watch line (one ConfigMap event) the agent holds. Larger ConfigMaps are rejected.
pub const WATCH_LINE_MAX: usize = 16 * 1024;
/// Taint put on the Node at creation: nothing can run here.
pub const NO_CONTAINERS_TAINT: &str = "picolet.dev/no-containers";
/// The version the node reports as `kubeletVersion`: semver, with build metadata naming picolet.
pub const KUBELET_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"), "+picolet");

const EVENT_QUEUE: usize = 4;
const MESSAGE_MAX: usize = 256;
type Rv = String<32>;
/// An object's `metadata.uid` (a UUID: 36 characters).
type Uid = String<48>;

/// How the ConfigMap is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigMode {
    /// The Watch API, falling back to polling when the server refuses watches.
    Watch,
    /// Poll with a list every [`CONFIG_POLL_MS`].
    Poll,
}

/// What the node tells about itself; fixed for a boot.
#[derive(Clone, Copy, Debug)]
pub struct NodeFacts<'a> {
    /// `kubernetes.io/os` and `nodeInfo.operatingSystem`.
    pub operating_system: &'a str,
    /// `kubernetes.io/arch` and `nodeInfo.architecture`.
    pub architecture: &'a str,
    /// `node.kubernetes.io/instance-type`.
    pub instance_type: &'a str,
    /// Resources the hardware has.
    pub capacity: obj::Resources<'a>,
    /// Resources offered to pods (pods `0`: none are).
    pub allocatable: obj::Resources<'a>,
    /// A stable identifier of the board (the RP2040's flash unique ID).
    pub machine_id: &'a str,
    /// The same identifier in UUID form, as `systemUUID` expects.
    pub system_uuid: &'a str,
    /// New on every boot.
    pub boot_id: &'a str,
    /// What runs under the agent (Embassy's version on the Pico, the Linux kernel on a host).
    pub kernel_version: &'a str,
    /// The firmware image: picolet's version and the board.
    pub os_image: &'a str,
}

impl<'a> NodeFacts<'a> {
    /// The RP2040 as it is: 2 Cortex-M0+ cores, 264 KiB SRAM, 2 MiB flash, and no pods.
    pub const PICO_W_CAPACITY: obj::Resources<'static> = obj::Resources {
        cpu: "2",
        memory: "264Ki",
        pods: "0",
        ephemeral_storage: "2Mi",
    };
}

/// Everything the agent needs to know at start.
#[derive(Clone, Copy, Debug)]
pub struct AgentConfig<'a> {
    /// Node name (`pico-node-1` by default); also the Lease name and the `hostname` label.
    pub node_name: &'a str,
    /// Namespace of the followed ConfigMap.
    pub config_namespace: &'a str,
    /// Name of the followed ConfigMap.
    pub config_map: &'a str,
    /// `Host` header for API requests (the server name the TLS certificate is checked against).
    pub api_host: &'a str,
    /// Port of the kubelet endpoints, published in `daemonEndpoints`.
    pub kubelet_port: u16,
    /// Longest time between status PATCHes when nothing changed (at least 10 s).
    pub status_report_interval_ms: Millis,
    /// Watch or poll.
    pub config_mode: ConfigMode,
    /// `timeoutSeconds` asked for each watch.
    pub watch_timeout_s: u32,
    /// Static node facts.
    pub facts: NodeFacts<'a>,
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A name is not a valid lowercase DNS label (at most 63 characters).
    BadName {
        /// Which setting.
        field: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadName { field } => write!(
                f,
                "{field} must be 1-63 characters of lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        }
    }
}

/// Errors the agent reports to its driver; none of them is fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentError {
    /// The request buffer is too small for the request to `what`.
    RequestTooLarge {
        /// Which request.
        what: &'static str,
    },
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RequestTooLarge { what } => write!(f, "request buffer too small for {what}"),
        }
    }
}

/// What the Node says about the followed ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigState {
    /// Nothing read yet.
    Pending,
    /// The region holds the ConfigMap's values.
    Applied,
    /// The last update was invalid; the region is unchanged.
    Rejected,
    /// The ConfigMap was deleted; the region keeps the last applied values.
    Deleted,
    /// The ConfigMap does not exist (yet); the region keeps its contents.
    Missing,
    /// The ConfigMap cannot be read (for example RBAC forbids it).
    Error,
}

impl ConfigState {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Applied => "Applied",
            Self::Rejected => "Rejected",
            Self::Deleted => "Deleted",
            Self::Missing => "Missing",
            Self::Error => "Error",
        }
    }
}

/// A kind of request on the control connection: what is due, and what is in flight (so its
/// response can be routed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApiRequest {
    NodeCreate,
    NodeGet,
    NodeAdopt,
    LeaseGet,
    LeaseCreate,
    LeaseRenew,
    StatusPatch(StatusFingerprint),
    ConfigReport(u32),
    EventCreate,
    ConfigList,
    PodList,
    PodFail,
    CsrCreate(CertKind),
    CsrGet(CertKind),
    /// A SubjectAccessReview for the authorization slot with this id.
    AccessReview(u16),
}

impl ApiRequest {
    fn method(self) -> Method {
        match self {
            Self::NodeCreate
            | Self::LeaseCreate
            | Self::EventCreate
            | Self::CsrCreate(_)
            | Self::AccessReview(_) => Method::Post,
            Self::NodeGet | Self::LeaseGet | Self::ConfigList | Self::PodList | Self::CsrGet(_) => {
                Method::Get
            }
            Self::LeaseRenew => Method::Put,
            Self::NodeAdopt | Self::StatusPatch(_) | Self::ConfigReport(_) | Self::PodFail => {
                Method::Patch
            }
        }
    }
}

/// The parts of node status that, when they change, make a PATCH due before the interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusFingerprint {
    ip_crc: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    Create,
    Get,
    Adopt,
    Done,
}

/// Where the node Lease stands: renewals are PUTs from the last known resourceVersion.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LeaseStep {
    Get,
    Create,
    Renew(Rv),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchState {
    Idle,
    Requested,
    Streaming,
}

/// A timer plus backoff for one kind of request.
#[derive(Clone, Copy, Debug, Default)]
struct Schedule {
    at: Millis,
    backoff: Backoff,
}

impl Schedule {
    fn due(&self, now: Millis) -> bool {
        now >= self.at
    }
    fn ok_then(&mut self, at: Millis) {
        self.backoff.reset();
        self.at = at;
    }
    fn retry(&mut self, now: Millis) {
        self.at = now + self.backoff.fail();
    }
}

struct QueuedEvent {
    reason: &'static str,
    warning: bool,
    message: String<MESSAGE_MAX>,
    /// About the node (true) or the ConfigMap (false).
    about_node: bool,
    object_rv: Rv,
    /// The ConfigMap's uid, which `kubectl describe` finds its Events by ("" if unknown).
    object_uid: Uid,
    unix_ms: u64,
}

struct ConfigReport {
    state: ConfigState,
    applied_rv: Rv,
    message: String<MESSAGE_MAX>,
    /// Bumped on every change; the annotation PATCH is due while `sent != generation`.
    generation: u32,
    sent: u32,
}

/// The node agent. See the module documentation for how a platform drives it.
pub struct Agent<'a> {
    cfg: AgentConfig<'a>,
    clock: WallClock,
    started_at: Millis,
    metrics: Metrics,
    region: MemoryRegion<'a>,
    internal_ip: String<48>,

    in_flight: Option<ApiRequest>,
    registration: Registration,
    registration_sched: Schedule,
    node_uid: String<48>,

    lease: LeaseStep,
    lease_sched: Schedule,
    /// When a Lease was last created or renewed.
    last_heartbeat_ok: Option<Millis>,
    /// The server's `Date` of that renewal (Unix seconds): the gap is also measured by the
    /// server's clock, which a slow or stalled device clock cannot shorten.
    last_heartbeat_server_s: Option<u64>,
    /// The status was re-posted after a gap; post it once more after the next renewal, in case
    /// the node lifecycle controller marked the node Unknown just after the first post.
    repost_status_after_gap: bool,

    ready_since_unix_ms: Option<u64>,
    status_sent: Option<(StatusFingerprint, Millis)>,
    status_sched: Schedule,

    report: ConfigReport,
    report_sched: Schedule,
    events: heapless::Deque<QueuedEvent, EVENT_QUEUE>,
    event_seq: u32,
    event_sched: Schedule,

    /// resourceVersion to watch from; `None` means a list is needed first.
    config_rv: Option<Rv>,
    /// resourceVersion of the last ConfigMap content handled (applied or rejected).
    handled_rv: Option<Rv>,
    /// uid of the ConfigMap that version belongs to, for its Events.
    config_uid: Uid,
    list_sched: Schedule,
    polling_until: Option<Millis>,
    watch: WatchState,
    watch_sched: Schedule,
    watch_decoder: http::ResponseDecoder,

    pods: pods::Pods,

    certs: certificates::Certificates,
    authz: authorization::Authorizations,
}

fn valid_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn rv_from(s: &str) -> Option<Rv> {
    String::try_from(s).ok()
}

/// Formats into a bounded string, cutting at the capacity (messages may be long, never fatal).
fn bounded<const N: usize>(args: fmt::Arguments<'_>) -> String<N> {
    struct Cut<'s, const N: usize>(&'s mut String<N>);
    impl<const N: usize> fmt::Write for Cut<'_, N> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.0.push(c).is_err() {
                    return Err(fmt::Error);
                }
            }
            Ok(())
        }
    }
    let mut out = String::new();
    let _ = fmt::write(&mut Cut(&mut out), args);
    out
}

impl<'a> Agent<'a> {
    /// Creates an agent that starts at monotonic time `now`, writing into `region`.
    pub fn new(
        cfg: AgentConfig<'a>,
        region: &'a mut [u8; memory::REGION_SIZE],
        now: Millis,
    ) -> Result<Self, ConfigError> {
        for (field, value) in [
            ("node name", cfg.node_name),
            ("ConfigMap namespace", cfg.config_namespace),
            ("ConfigMap name", cfg.config_map),
        ] {
            if !valid_label(value) {
                return Err(ConfigError::BadName { field });
            }
        }
        let mut cfg = cfg;
        cfg.status_report_interval_ms = cfg.status_report_interval_ms.max(STATUS_EVAL_MS);
        cfg.watch_timeout_s = cfg.watch_timeout_s.max(1);
        let start = Schedule {
            at: now,
            backoff: Backoff::default(),
        };
        Ok(Self {
            cfg,
            clock: WallClock::default(),
            started_at: now,
            metrics: Metrics::default(),
            region: MemoryRegion::new(region),
            internal_ip: String::new(),
            in_flight: None,
            registration: Registration::Create,
            registration_sched: start,
            node_uid: String::new(),
            lease: LeaseStep::Get,
            lease_sched: start,
            ready_since_unix_ms: None,
            status_sent: None,
            last_heartbeat_ok: None,
            last_heartbeat_server_s: None,
            repost_status_after_gap: false,
            status_sched: start,
            report: ConfigReport {
                state: ConfigState::Pending,
                applied_rv: String::new(),
                message: bounded(format_args!(
                    "waiting for ConfigMap {}/{}",
                    cfg.config_namespace, cfg.config_map
                )),
                generation: 0,
                sent: 0,
            },
            report_sched: start,
            events: heapless::Deque::new(),
            event_seq: 0,
            event_sched: start,
            config_rv: None,
            handled_rv: None,
            config_uid: String::new(),
            list_sched: start,
            polling_until: None,
            watch: WatchState::Idle,
            watch_sched: start,
            watch_decoder: http::ResponseDecoder::new(),
            pods: pods::Pods::new(now),
            certs: certificates::Certificates::new(CertificatePolicy::default(), 0, now),
            authz: authorization::Authorizations::new(),
        })
    }

    // ------------------------------------------------------------------ inputs

    /// Gives the agent wall-clock time from a precise source (SNTP or the host clock).
    pub fn sync_clock(&mut self, now: Millis, unix_ms: u64) {
        self.clock.sync(now, unix_ms, ClockSource::Precise);
    }

    /// Turns on certificate management (see [`CertKind`]); off by default. `seed` varies the
    /// renewal point within 70–80 % of a certificate's lifetime (any per-boot random number).
    pub fn set_certificate_policy(&mut self, now: Millis, policy: CertificatePolicy, seed: u32) {
        let installed = self.certs.installed_all();
        self.certs = certificates::Certificates::new(policy, seed, now);
        self.certs.restore(installed);
    }

    /// Sets the node's InternalIP (after DHCP); a change makes a status PATCH due.
    pub fn set_internal_ip(&mut self, ip: &str) {
        self.internal_ip = bounded(format_args!("{ip}"));
    }

    // ------------------------------------------------------------------ views

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The memory region's current contents.
    pub fn region(&self) -> &[u8; memory::REGION_SIZE] {
        self.region.bytes()
    }

    /// What the agent last concluded about the ConfigMap, with the applied resourceVersion.
    pub fn config_state(&self) -> (ConfigState, &str, &str) {
        (
            self.report.state,
            self.report.applied_rv.as_str(),
            self.report.message.as_str(),
        )
    }

    /// True once the Node exists and has been adopted.
    pub fn registered(&self) -> bool {
        self.registration == Registration::Done
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &AgentConfig<'a> {
        &self.cfg
    }

    /// Unix milliseconds now, once the clock is known.
    pub fn unix_ms(&self, now: Millis) -> Option<u64> {
        self.clock.unix_ms(now)
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self, now: Millis) -> Gauges {
        Gauges {
            uptime_seconds: now.saturating_sub(self.started_at) as f64 / 1000.0,
            memory_crc32: self.region.checksum(),
            registered: self.registered(),
            watching: self.watch == WatchState::Streaming,
            watching_pods: self.pod_watch_open(),
            certificate_not_after: [CertKind::Client, CertKind::Serving]
                .map(|k| self.certificate(k).map(|c| c.not_after)),
        }
    }

    // ------------------------------------------------------------------ control connection

    /// The earliest time at which [`Agent::poll_request`] may have something to send.
    /// The driver may sleep until then (or until a watch event arrives).
    pub fn next_wakeup(&self, now: Millis) -> Millis {
        if self.in_flight.is_some() {
            return Millis::MAX;
        }
        if self.access_review_queued() {
            return now;
        }
        if self.registration != Registration::Done {
            return self.registration_sched.at;
        }
        let mut t = self
            .lease_sched
            .at
            .min(self.status_due_at())
            .min(self.pod_wakeup(now));
        if self.report.sent != self.report.generation {
            t = t.min(self.report_sched.at);
        }
        if !self.events.is_empty() {
            t = t.min(self.event_sched.at);
        }
        if self.list_wanted(now) {
            t = t.min(self.list_sched.at);
        }
        t = t.min(self.certificate_wakeup(now));
        t.max(now)
    }

    /// Writes the next request for the control connection into `out` and returns its length,
    /// or `None` when nothing is due. At most one request is in flight.
    pub fn poll_request(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<Option<usize>, AgentError> {
        if self.in_flight.is_some() {
            return Ok(None);
        }
        let Some(pending) = self.next_due(now) else {
            return Ok(None);
        };
        let n = self
            .encode(pending, now, out)
            .map_err(|_| AgentError::RequestTooLarge {
                what: encode::pending_name(pending),
            })?;
        self.in_flight = Some(pending);
        Ok(Some(n))
    }

    fn next_due(&mut self, now: Millis) -> Option<ApiRequest> {
        // A kubelet-port caller is waiting for this answer.
        if let Some(p) = self.next_access_review(now) {
            return Some(p);
        }
        match self.registration {
            Registration::Create if self.registration_sched.due(now) => {
                return Some(ApiRequest::NodeCreate);
            }
            Registration::Get if self.registration_sched.due(now) => {
                return Some(ApiRequest::NodeGet);
            }
            Registration::Adopt if self.registration_sched.due(now) => {
                return Some(ApiRequest::NodeAdopt);
            }
            Registration::Done => {}
            _ => return None,
        }
        if self.lease_sched.due(now) {
            return Some(match self.lease {
                LeaseStep::Get => ApiRequest::LeaseGet,
                LeaseStep::Create => ApiRequest::LeaseCreate,
                LeaseStep::Renew(_) => ApiRequest::LeaseRenew,
            });
        }
        if now >= self.status_due_at() {
            return Some(ApiRequest::StatusPatch(self.fingerprint()));
        }
        if self.report.sent != self.report.generation && self.report_sched.due(now) {
            return Some(ApiRequest::ConfigReport(self.report.generation));
        }
        if !self.events.is_empty() && self.event_sched.due(now) {
            return Some(ApiRequest::EventCreate);
        }
        if self.list_wanted(now) && self.list_sched.due(now) {
            return Some(ApiRequest::ConfigList);
        }
        if let Some(p) = self.next_certificate_request(now) {
            return Some(p);
        }
        self.next_pod_request(now)
    }

    /// When the next status PATCH is due: at the next 10 s evaluation when the status changed,
    /// otherwise once the report interval has passed since the last PATCH.
    fn status_due_at(&self) -> Millis {
        match self.status_sent {
            Some((fp, at)) if fp == self.fingerprint() => self
                .status_sched
                .at
                .max(at + self.cfg.status_report_interval_ms),
            _ => self.status_sched.at,
        }
    }

    fn fingerprint(&self) -> StatusFingerprint {
        const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
        StatusFingerprint {
            ip_crc: CRC.checksum(self.internal_ip.as_bytes()),
        }
    }

    /// Whether the ConfigMap should be listed: before the first watch, after a 410, and
    /// periodically while polling.
    fn list_wanted(&self, now: Millis) -> bool {
        self.config_rv.is_none() || self.polling(now)
    }

    fn polling(&self, now: Millis) -> bool {
        self.cfg.config_mode == ConfigMode::Poll || self.polling_until.is_some_and(|t| now < t)
    }

    /// Tells the agent the response to the request in flight. `body` is the body, or its
    /// first part when `body_len` says it was longer than the driver's buffer.
    pub fn on_response(&mut self, now: Millis, head: &ResponseHead, body: &[u8], body_len: usize) {
        let Some(pending) = self.in_flight.take() else {
            return;
        };
        if let Some(date) = head.date {
            self.clock.sync(now, date * 1000, ClockSource::HttpDate);
        }
        self.metrics.count_api(pending.method(), head.status);
        let complete = body_len <= body.len();
        let body = &body[..body.len().min(body_len)];
        let ok = (200..300).contains(&head.status);
        let status = head.status;
        match pending {
            ApiRequest::NodeCreate => match status {
                _ if ok => self.registered_with(now, body),
                409 => self.registration = Registration::Get,
                _ => self.registration_sched.retry(now),
            },
            ApiRequest::NodeGet => match status {
                _ if ok => {
                    let uid = obj::from_json::<obj::ObjectLite>(body)
                        .and_then(|o| o.metadata.uid)
                        .or_else(|| obj::scan_field(body, "uid"));
                    self.node_uid = bounded(format_args!("{}", uid.unwrap_or("")));
                    self.registration = Registration::Adopt;
                    self.registration_sched.ok_then(now);
                }
                404 => {
                    self.registration = Registration::Create;
                    self.registration_sched.ok_then(now);
                }
                _ => self.registration_sched.retry(now),
            },
            ApiRequest::NodeAdopt => match status {
                _ if ok => self.registered_with(now, body),
                404 => {
                    self.registration = Registration::Create;
                    self.registration_sched.retry(now);
                }
                _ => self.registration_sched.retry(now),
            },
            ApiRequest::LeaseGet => match status {
                _ if ok => match self.read_rv(body) {
                    // Renew at once from the object just read.
                    Some(rv) => {
                        self.lease = LeaseStep::Renew(rv);
                        self.lease_sched.ok_then(now);
                    }
                    None => self.lease_failed(now),
                },
                404 => {
                    self.lease = LeaseStep::Create;
                    self.lease_sched.ok_then(now);
                }
                _ => self.lease_failed(now),
            },
            ApiRequest::LeaseCreate | ApiRequest::LeaseRenew => match status {
                _ if ok => {
                    self.lease = match self.read_rv(body) {
                        Some(rv) => LeaseStep::Renew(rv),
                        None => LeaseStep::Get,
                    };
                    self.metrics.heartbeats_ok += 1;
                    self.lease_sched.ok_then(now + LEASE_RENEW_MS);
                    let gap = self
                        .last_heartbeat_ok
                        .is_some_and(|t| now.saturating_sub(t) > HEARTBEAT_GAP_MS)
                        || matches!(
                            (self.last_heartbeat_server_s, head.date),
                            (Some(a), Some(b)) if b.saturating_sub(a) * 1000 > HEARTBEAT_GAP_MS
                        );
                    if gap || core::mem::take(&mut self.repost_status_after_gap) {
                        self.repost_status_after_gap = gap;
                        self.status_sent = None;
                        self.status_sched.ok_then(now);
                    }
                    self.last_heartbeat_ok = Some(now);
                    self.last_heartbeat_server_s = head.date;
                }
                // Changed by someone else, or created meanwhile: re-read, then renew.
                409 => {
                    self.lease = LeaseStep::Get;
                    self.lease_failed(now);
                }
                404 => {
                    self.lease = LeaseStep::Create;
                    self.lease_failed(now);
                }
                _ => self.lease_failed(now),
            },
            ApiRequest::StatusPatch(fp) => match status {
                _ if ok => {
                    self.metrics.status_updates += 1;
                    self.status_sent = Some((fp, now));
                    self.status_sched.ok_then(now + STATUS_EVAL_MS);
                }
                404 => self.node_vanished(now),
                _ => self.status_sched.retry(now),
            },
            ApiRequest::ConfigReport(generation) => match status {
                _ if ok => {
                    self.report.sent = generation;
                    self.report_sched.ok_then(now);
                }
                404 => self.node_vanished(now),
                _ => self.report_sched.retry(now),
            },
            ApiRequest::EventCreate => match status {
                _ if ok => {
                    self.events.pop_front();
                    self.event_sched.ok_then(now);
                }
                // The server will never take this event: drop it rather than block the rest.
                400..=499 if status != 429 => {
                    self.events.pop_front();
                    self.metrics.events_dropped += 1;
                    self.event_sched.ok_then(now);
                }
                _ => self.event_sched.retry(now),
            },
            ApiRequest::ConfigList => self.on_config_list(now, status, body, complete, body_len),
            ApiRequest::PodList | ApiRequest::PodFail => {
                self.on_pod_response(now, pending, status, body)
            }
            ApiRequest::CsrCreate(_) | ApiRequest::CsrGet(_) => {
                self.on_certificate_response(now, pending, status, body)
            }
            ApiRequest::AccessReview(id) => self.on_access_review(now, id, status, body),
        }
    }

    /// Tells the agent the request in flight got no response (connection refused, reset,
    /// TLS failure, timeout). It will be retried with backoff.
    pub fn on_transport_error(&mut self, now: Millis) {
        let Some(pending) = self.in_flight.take() else {
            return;
        };
        self.metrics.count_api(pending.method(), 0);
        match pending {
            ApiRequest::NodeCreate | ApiRequest::NodeGet | ApiRequest::NodeAdopt => {
                self.registration_sched.retry(now)
            }
            ApiRequest::LeaseGet | ApiRequest::LeaseCreate | ApiRequest::LeaseRenew => {
                self.lease_failed(now)
            }
            ApiRequest::StatusPatch(_) => self.status_sched.retry(now),
            ApiRequest::ConfigReport(_) => self.report_sched.retry(now),
            ApiRequest::EventCreate => self.event_sched.retry(now),
            ApiRequest::ConfigList => self.list_sched.retry(now),
            ApiRequest::PodList | ApiRequest::PodFail => self.on_pod_transport_error(now, pending),
            ApiRequest::CsrCreate(_) | ApiRequest::CsrGet(_) => {
                self.on_certificate_transport_error(now, pending)
            }
            ApiRequest::AccessReview(id) => self.on_access_review_lost(now, id),
        }
    }

    /// Counts a watch response and takes the time from its `Date` header.
    fn note_watch_head(&mut self, now: Millis, head: &ResponseHead) {
        self.metrics.count_api(Method::Get, head.status);
        if let Some(date) = head.date {
            self.clock.sync(now, date * 1000, ClockSource::HttpDate);
        }
    }

    fn read_rv(&self, body: &[u8]) -> Option<Rv> {
        obj::from_json::<obj::ObjectLite>(body)
            .and_then(|o| o.metadata.resource_version)
            .or_else(|| obj::scan_resource_version(body))
            .and_then(rv_from)
    }

    fn registered_with(&mut self, now: Millis, body: &[u8]) {
        // The body may be cut short by a small buffer; uid comes early in metadata.
        let uid = obj::from_json::<obj::ObjectLite>(body)
            .and_then(|o| o.metadata.uid)
            .or_else(|| obj::scan_field(body, "uid"));
        if let Some(uid) = uid {
            self.node_uid = bounded(format_args!("{uid}"));
        }
        self.registration = Registration::Done;
        self.registration_sched.ok_then(now);
        // The node body carried the current config annotations.
        self.report.sent = self.report.generation;
        // Conditions go out in a status PATCH right away; the Lease follows.
        self.status_sent = None;
        self.status_sched.ok_then(now);
        self.lease_sched.ok_then(now);
        let boot_id = self.cfg.facts.boot_id;
        self.queue_event(
            now,
            "Starting",
            false,
            true,
            format_args!("Starting picolet {KUBELET_VERSION} (boot ID {boot_id})"),
        );
    }

    fn node_vanished(&mut self, now: Millis) {
        // The Node was deleted under us: register again, like a restarted kubelet would.
        self.registration = Registration::Create;
        self.registration_sched.retry(now);
        self.lease = LeaseStep::Get;
    }

    fn lease_failed(&mut self, now: Millis) {
        self.metrics.heartbeats_failed += 1;
        self.lease_sched.retry(now);
    }
}

/// The caller-owned buffer for watch lines: one ConfigMap event at most [`WATCH_LINE_MAX`] bytes.
pub type WatchLines = LineFramer<WATCH_LINE_MAX>;
