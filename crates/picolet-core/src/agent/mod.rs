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
//! Files: this one holds the [`Agent`], composed of one part per concern, and only schedules
//! the control connection: it asks each concern in priority order whether a request is due, and
//! routes each response (or transport error) to the concern that sent the request. Each concern
//! owns its state, its due time, how its request is encoded and how its answer is handled:
//! [`registration`] (the Node), [`lease`] (the heartbeat), [`status`] (node status),
//! [`report`] (the ConfigMap annotations on the Node), [`events`] (the Events queue),
//! [`config_map`] (following, validating and applying the ConfigMap), [`pods`] (failing pods
//! bound here), [`certificates`] (the CSR API), [`authentication`] (TokenReviews for bearer
//! tokens on the kubelet port) and [`authorization`] (SubjectAccessReviews for its callers). [`encode`] builds the Node object that several of them send;
//! [`watch_stream`] frames a watch connection; [`text`] bounds messages.
//!
//! Time is always an argument (monotonic milliseconds); wall-clock time comes from
//! [`Agent::sync_clock`] or the responses' `Date` headers.

mod authentication;
mod authorization;
mod certificates;
mod config_map;
mod drive;
mod encode;
mod events;
mod kubelet_session;
mod lease;
mod pods;
mod registration;
mod report;
mod status;
mod text;
mod watch_stream;

pub use authentication::{
    AUTHENTICATED_TTL_MS, Authentication, REJECTED_TTL_MS, TOKEN_MAX, TOKEN_SLOTS,
};
pub use authorization::{
    ALLOW_TTL_MS, AUTHZ_SLOTS, DENY_TTL_MS, Decision, IDENTITY_GROUPS_MAX, IDENTITY_NAME_MAX,
    Identity, REVIEW_TIMEOUT_MS,
};
pub use certificates::{
    CERT_DER_MAX, CERT_PEM_MAX, CertKind, CertificatePolicy, InstalledCertificate,
};
pub use drive::{ControlStep, WatchRead, WatchReader, WatchStep, WatchStream};
pub use kubelet_session::{Caller, KubeletSession, KubeletStep};
pub use lease::{HEARTBEAT_GAP_MS, LEASE_DURATION_S, LEASE_RENEW_MS};
pub use pods::POD_LIST_MS;
pub use report::ConfigState;
pub use status::{STATUS_EVAL_MS, STATUS_REPORT_DEFAULT_MS};

use crate::paths::ApiPath;
pub use crate::paths::LEASE_NAMESPACE;

use core::fmt;

use heapless::String;

use crate::backoff::Backoff;
use crate::http::{self, BodyType, HttpError, Method, ResponseHead};
use crate::lines::LineFramer;
use crate::memory::{self, MemoryImage, MemoryRegion};
use crate::metrics::{Gauges, Metrics};
use crate::objects::{self as obj, Crc32Hex};
use crate::time::{
    ClockSource, Duration, MicroTime, Millis, Rfc3339, UnixMillis, UnixSeconds, WallClock,
};
use encode::{encode_get, json};
use text::{MESSAGE_MAX, bounded};

/// How often the ConfigMap is listed when it cannot be watched.
pub const CONFIG_POLL_MS: Duration = Duration::from_ms(30_000);
/// How long polling lasts before a watch is tried again, after a watch was refused.
pub const WATCH_RETRY_AFTER_FALLBACK_MS: Duration = Duration::from_ms(300_000);
/// The longest watch line (one ConfigMap event) the agent holds. Larger ConfigMaps are rejected.
pub const WATCH_LINE_MAX: usize = 16 * 1024;
/// Taint put on the Node at creation: nothing can run here.
pub const NO_CONTAINERS_TAINT: &str = "picolet.dev/no-containers";
/// The version the node reports as `kubeletVersion`: semver, with build metadata naming picolet.
pub const KUBELET_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"), "+picolet");

/// A resourceVersion.
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
    pub status_report_interval_ms: Duration,
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

/// A kind of request on the control connection: what is due, and what is in flight (so its
/// response can be routed). One variant per concern; a concern with several kinds of request
/// names them in its own type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApiRequest {
    Node(registration::NodeRequest),
    Lease(lease::LeaseRequest),
    /// A status PATCH with the parts of the status it carries.
    Status(status::StatusFingerprint),
    /// The annotations PATCH for this generation of the report.
    ConfigReport(u32),
    Event,
    ConfigList,
    Pod(pods::PodRequest),
    Csr(certificates::CsrRequest),
    /// A SubjectAccessReview for the authorization slot with this id.
    AccessReview(u16),
    /// A TokenReview for the token slot with this id.
    TokenReview(u16),
}

impl ApiRequest {
    fn method(self) -> Method {
        match self {
            Self::Node(r) => r.method(),
            Self::Lease(r) => r.method(),
            Self::Status(_) | Self::ConfigReport(_) => Method::Patch,
            Self::Event | Self::AccessReview(_) | Self::TokenReview(_) => Method::Post,
            Self::ConfigList => Method::Get,
            Self::Pod(r) => r.method(),
            Self::Csr(r) => r.method(),
        }
    }

    /// What the request is, for [`AgentError::RequestTooLarge`].
    fn name(self) -> &'static str {
        match self {
            Self::Node(r) => r.name(),
            Self::Lease(r) => r.name(),
            Self::Status(_) => "node status",
            Self::ConfigReport(_) => "config report",
            Self::Event => "event",
            Self::ConfigList => "configmap list",
            Self::Pod(r) => r.name(),
            Self::Csr(r) => r.name(),
            Self::AccessReview(_) => "subject access review",
            Self::TokenReview(_) => "token review",
        }
    }

    /// Whether the request is about the node itself (not a CSR, a review or a pod): the first
    /// one sent once the clock is known sets when the node became Ready.
    fn about_node(self) -> bool {
        !matches!(
            self,
            Self::Pod(_) | Self::Csr(_) | Self::AccessReview(_) | Self::TokenReview(_)
        )
    }
}

/// A response on the control connection, as the concerns read it.
#[derive(Clone, Copy, Debug)]
struct Reply<'b> {
    status: u16,
    /// The body, or its first part when [`Reply::complete`] is false.
    body: &'b [u8],
    /// The whole body's length.
    body_len: usize,
    /// The server's `Date`.
    date: Option<UnixSeconds>,
}

impl Reply<'_> {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The whole body fit the driver's buffer.
    fn complete(&self) -> bool {
        self.body_len <= self.body.len()
    }
}

/// A timer plus backoff for one kind of request.
#[derive(Clone, Copy, Debug, Default)]
struct Schedule {
    at: Millis,
    backoff: Backoff,
}

impl Schedule {
    /// Due first at `now`.
    fn starting(now: Millis) -> Self {
        Self {
            at: now,
            backoff: Backoff::default(),
        }
    }
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

/// The node agent. See the module documentation for how a platform drives it.
pub struct Agent<'a> {
    cfg: AgentConfig<'a>,
    clock: WallClock,
    started_at: Millis,
    metrics: Metrics,
    region: MemoryRegion<'a>,
    internal_ip: String<48>,

    in_flight: Option<ApiRequest>,
    registration: registration::Registration,
    heartbeat: lease::Heartbeat,
    node_status: status::StatusUpdates,
    report: report::ConfigReport,
    events: events::Events,
    config_map: config_map::ConfigMapFollow,
    pods: pods::Pods,
    certs: certificates::Certificates,
    authz: authorization::Authorizations,
    authn: authentication::Authentications,
    /// The next control step closes and reopens the API connections (see [`drive`]).
    reopen_connections: bool,
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
        Ok(Self {
            cfg,
            clock: WallClock::default(),
            started_at: now,
            metrics: Metrics::default(),
            region: MemoryRegion::new(region),
            internal_ip: String::new(),
            in_flight: None,
            registration: registration::Registration::new(now),
            heartbeat: lease::Heartbeat::new(now),
            node_status: status::StatusUpdates::new(now),
            report: report::ConfigReport::new(now, &cfg),
            events: events::Events::new(now),
            config_map: config_map::ConfigMapFollow::new(now),
            pods: pods::Pods::new(now),
            certs: certificates::Certificates::new(CertificatePolicy::default(), 0, now),
            authz: authorization::Authorizations::new(),
            authn: authentication::Authentications::new(),
            reopen_connections: false,
        })
    }

    // ------------------------------------------------------------------ inputs

    /// Gives the agent wall-clock time from a precise source (SNTP or the host clock).
    pub fn sync_clock(&mut self, now: Millis, unix: UnixMillis) {
        self.clock.sync(now, unix, ClockSource::Precise);
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
        self.report.view()
    }

    /// True once the Node exists and has been adopted.
    pub fn registered(&self) -> bool {
        self.registration.done()
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &AgentConfig<'a> {
        &self.cfg
    }

    /// Unix milliseconds now, once the clock is known.
    pub fn unix_ms(&self, now: Millis) -> Option<UnixMillis> {
        self.clock.unix_ms(now)
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self, now: Millis) -> Gauges {
        Gauges {
            uptime: now.saturating_sub(self.started_at),
            memory_crc32: self.region.checksum(),
            registered: self.registered(),
            watching: self.config_map.streaming(),
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
        if self.token_review_queued() || self.access_review_queued() {
            return now;
        }
        if !self.registered() {
            return self.registration.wakeup();
        }
        self.heartbeat
            .wakeup()
            .min(self.status_wakeup())
            .min(self.pod_wakeup(now))
            .min(self.report.wakeup())
            .min(self.events.wakeup())
            .min(self.config_list_wakeup(now))
            .min(self.certificate_wakeup(now))
            .max(now)
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
        let Some(request) = self.next_due(now) else {
            return Ok(None);
        };
        if request.about_node() {
            self.node_status.stamp_ready_since(self.clock.unix_ms(now));
        }
        let n = self
            .encode(request, now, out)
            .map_err(|_| AgentError::RequestTooLarge {
                what: request.name(),
            })?;
        self.in_flight = Some(request);
        Ok(Some(n))
    }

    /// The request due first, asking each concern in priority order.
    fn next_due(&mut self, now: Millis) -> Option<ApiRequest> {
        // A kubelet-port caller is waiting for these answers.
        if let Some(id) = self.next_token_review(now) {
            return Some(ApiRequest::TokenReview(id));
        }
        if let Some(id) = self.next_access_review(now) {
            return Some(ApiRequest::AccessReview(id));
        }
        // Nothing else goes out before the Node exists.
        if !self.registered() {
            return self.registration.next_request(now).map(ApiRequest::Node);
        }
        if let Some(r) = self.heartbeat.next_request(now) {
            return Some(ApiRequest::Lease(r));
        }
        if let Some(fp) = self.next_status_patch(now) {
            return Some(ApiRequest::Status(fp));
        }
        if let Some(generation) = self.report.next_request(now) {
            return Some(ApiRequest::ConfigReport(generation));
        }
        if self.events.due(now) {
            return Some(ApiRequest::Event);
        }
        if self.config_list_due(now) {
            return Some(ApiRequest::ConfigList);
        }
        if let Some(r) = self.next_certificate_request(now) {
            return Some(ApiRequest::Csr(r));
        }
        self.next_pod_request(now).map(ApiRequest::Pod)
    }

    fn encode(
        &mut self,
        request: ApiRequest,
        now: Millis,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        match request {
            ApiRequest::Node(r) => self.encode_node_request(r, now, out),
            ApiRequest::Lease(r) => self.encode_lease_request(r, now, out),
            ApiRequest::Status(_) => self.encode_status_patch(now, out),
            ApiRequest::ConfigReport(_) => self.encode_config_report(out),
            ApiRequest::Event => self.encode_event(out),
            ApiRequest::ConfigList => self.encode_config_list(out),
            ApiRequest::Pod(r) => self.encode_pod_request(r, out),
            ApiRequest::Csr(r) => self.encode_csr_request(r, out),
            ApiRequest::AccessReview(id) => self.encode_access_review(id, out),
            ApiRequest::TokenReview(id) => self.encode_token_review(id, out),
        }
    }

    /// Tells the agent the response to the request in flight. `body` is the body, or its
    /// first part when `body_len` says it was longer than the driver's buffer.
    pub fn on_response(&mut self, now: Millis, head: &ResponseHead, body: &[u8], body_len: usize) {
        let Some(request) = self.in_flight.take() else {
            return;
        };
        if let Some(date) = head.date {
            self.clock.sync(now, date.into(), ClockSource::HttpDate);
        }
        self.metrics.count_api(request.method(), head.status);
        let reply = Reply {
            status: head.status,
            body: &body[..body.len().min(body_len)],
            body_len,
            date: head.date,
        };
        match request {
            ApiRequest::Node(r) => self.on_node_response(now, r, &reply),
            ApiRequest::Lease(r) => self.on_lease_response(now, r, &reply),
            ApiRequest::Status(fp) => self.on_status_response(now, fp, &reply),
            ApiRequest::ConfigReport(generation) => {
                self.on_report_response(now, generation, &reply)
            }
            ApiRequest::Event => self.on_event_response(now, &reply),
            ApiRequest::ConfigList => self.on_config_list(now, &reply),
            ApiRequest::Pod(r) => self.on_pod_response(now, r, &reply),
            ApiRequest::Csr(r) => self.on_csr_response(now, r, &reply),
            ApiRequest::AccessReview(id) => self.on_access_review(now, id, &reply),
            ApiRequest::TokenReview(id) => self.on_token_review(now, id, &reply),
        }
    }

    /// Tells the agent the request in flight got no response (connection refused, reset,
    /// TLS failure, timeout). It will be retried with backoff.
    pub fn on_transport_error(&mut self, now: Millis) {
        let Some(request) = self.in_flight.take() else {
            return;
        };
        self.metrics.count_api(request.method(), 0);
        // The watches go to the same server: they are probably broken too.
        self.reopen_connections = true;
        match request {
            ApiRequest::Node(_) => self.registration.retry(now),
            ApiRequest::Lease(_) => self.lease_failed(now),
            ApiRequest::Status(_) => self.node_status.retry(now),
            ApiRequest::ConfigReport(_) => self.report.retry(now),
            ApiRequest::Event => self.events.retry(now),
            ApiRequest::ConfigList => self.config_map.retry_list(now),
            ApiRequest::Pod(r) => self.on_pod_transport_error(now, r),
            ApiRequest::Csr(r) => self.on_csr_transport_error(now, r),
            ApiRequest::AccessReview(id) => self.on_access_review_lost(now, id),
            ApiRequest::TokenReview(id) => self.on_token_review_lost(now, id),
        }
    }

    /// Counts a watch response and takes the time from its `Date` header.
    fn note_watch_head(&mut self, now: Millis, head: &ResponseHead) {
        self.metrics.count_api(Method::Get, head.status);
        if let Some(date) = head.date {
            self.clock.sync(now, date.into(), ClockSource::HttpDate);
        }
    }
}

/// The caller-owned buffer for watch lines: one ConfigMap event at most [`WATCH_LINE_MAX`] bytes.
pub type WatchLines = LineFramer<WATCH_LINE_MAX>;
#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// The agent lives in static RAM on the board: it must not grow unnoticed. 9,968 bytes (on
    /// a 64-bit host) as one struct before it was split into concerns, plus 3,256 for bearer
    /// tokens (a 2 KiB token waiting for its review, two cached identities).
    #[test]
    fn agent_does_not_grow() {
        let size = core::mem::size_of::<super::Agent<'static>>();
        assert!(size <= 13_224, "Agent is {size} bytes");
    }
}
