//! Counters the agent keeps and their Prometheus text rendering (format 0.0.4).

use core::fmt::{self, Write};

use crate::http::Method;
use crate::time::{Duration, UnixMillis, UnixSeconds};

/// How many distinct (verb, code) pairs are tracked; others land in `code="other"`.
const API_SLOTS: usize = 24;

/// One (verb, status code) counter.
#[derive(Clone, Copy, Debug)]
struct ApiCount {
    verb: Method,
    /// HTTP status, or 0 for a transport failure (no response).
    code: u16,
    count: u32,
}

/// Everything `/metrics` reports about the agent itself.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Lease renewals (and creations) that succeeded.
    pub heartbeats_ok: u32,
    /// Lease requests that failed.
    pub heartbeats_failed: u32,
    /// Node status PATCHes that succeeded.
    pub status_updates: u32,
    /// Watches that ended and were restarted.
    pub watch_restarts: u32,
    /// Watch events received (bookmarks included).
    pub watch_events: u32,
    /// ConfigMap versions written to the region.
    pub config_applies: u32,
    /// ConfigMap versions rejected.
    pub config_rejects: u32,
    /// Pods failed because the node cannot run them.
    pub pods_rejected: u32,
    /// Events dropped (queue full, or refused by the server).
    pub events_dropped: u32,
    /// CertificateSigningRequests created, by kind (client, serving).
    pub csr_submitted: [u32; 2],
    /// Issued certificates installed by the driver, by kind.
    pub certificates_installed: [u32; 2],
    /// CSRs that were denied, failed, vanished or could not be built or read, by kind.
    pub csr_failures: [u32; 2],
    /// Kubelet-port authorization reviews: allowed, denied, error (no answer, or an identity
    /// too large to hold).
    pub kubelet_authz: [u32; 3],
    /// Kubelet-port TokenReviews: authenticated, rejected, error (no answer, an unreadable one,
    /// or a user too large to hold).
    pub kubelet_authn: [u32; 3],
    /// Kubelet-port connections by outcome, indexed by [`KubeletOutcome`].
    pub kubelet_requests: [u32; KubeletOutcome::ALL.len()],
    api: heapless::Vec<ApiCount, API_SLOTS>,
    api_other: u32,
}

impl Metrics {
    /// Counts one API request by verb and status (0 when no response arrived).
    pub fn count_api(&mut self, verb: Method, code: u16) {
        if let Some(c) = self
            .api
            .iter_mut()
            .find(|c| c.verb == verb && c.code == code)
        {
            c.count = c.count.wrapping_add(1);
        } else if self
            .api
            .push(ApiCount {
                verb,
                code,
                count: 1,
            })
            .is_err()
        {
            self.api_other = self.api_other.wrapping_add(1);
        }
    }

    /// Total API requests counted, for tests and benchmarks.
    pub fn api_total(&self) -> u32 {
        self.api.iter().map(|c| c.count).sum::<u32>() + self.api_other
    }
}

/// How a kubelet-port connection ended; `picolet_kubelet_requests_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeletOutcome {
    /// Answered.
    Served,
    /// Malformed, unknown path or method, or a head too large (400, 404, 405, 431).
    Refused,
    /// No client certificate (401).
    Unauthenticated,
    /// The SubjectAccessReview said no (403).
    Forbidden,
    /// The API server could not be asked in time (503).
    Unavailable,
    /// The TLS handshake was refused (or there is no serving certificate yet).
    TlsFailure,
    /// No first byte, or no complete handshake and head, within the deadlines.
    TimedOut,
    /// Closed before its request to make room for a new connection (host agent).
    Evicted,
    /// Closed at once: every connection was answering a request (host agent).
    OverLimit,
}

impl KubeletOutcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub const ALL: [Self; 9] = [
        Self::Served,
        Self::Refused,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Unavailable,
        Self::TlsFailure,
        Self::TimedOut,
        Self::Evicted,
        Self::OverLimit,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Served => "served",
            Self::Refused => "refused",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Unavailable => "unavailable",
            Self::TlsFailure => "tls_failure",
            Self::TimedOut => "timed_out",
            Self::Evicted => "evicted",
            Self::OverLimit => "over_limit",
        }
    }
}

impl Metrics {
    /// Counts one kubelet-port connection's outcome.
    pub fn count_kubelet(&mut self, outcome: KubeletOutcome) {
        let i = outcome as usize;
        self.kubelet_requests[i] = self.kubelet_requests[i].wrapping_add(1);
    }
}

/// Values known only to the platform (host process or Pico), reported next to the agent's.
/// The driver measures them; the core renders them, so that both drivers publish the same
/// families with the same names and help (a figure a platform does not have is left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct PlatformStats {
    /// CPU time used since boot, in microseconds (rendered in seconds).
    pub cpu_time_us: u64,
    /// Memory in use, in bytes (RSS on the host; static RAM plus stack on the Pico).
    pub memory_working_set_bytes: u64,
    /// The connections to the API server.
    pub api: ApiTransportStats,
    /// RAM without a heap: the board's static RAM and painted stack.
    pub ram: Option<RamStats>,
    /// The board's network link.
    pub link: Option<LinkStats>,
}

/// What the driver saw of its API server connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiTransportStats {
    /// TLS connections opened (handshake done).
    pub connections: u64,
    /// Connections refused in the TLS handshake (CA, server name, client certificate).
    pub tls_failures: u64,
    /// Duration of the last handshake, milliseconds (0 before the first).
    pub last_handshake_ms: u64,
    /// HTTP bytes sent and received (before TLS), where the driver counts them.
    pub bytes: Option<(u64, u64)>,
}

/// The board's RAM: everything static, and the stack above it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RamStats {
    /// `.data`, `.bss` and `.uninit`.
    pub static_bytes: u64,
    /// The stack region (RAM left after the static part).
    pub stack_bytes: u64,
    /// Deepest stack use since boot.
    pub stack_high_water_bytes: u64,
}

/// The board's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// The CYW43439 Wi-Fi of a Pico W.
    Wifi,
    /// PPP over a serial line.
    Ppp,
}

/// The board's link and how often it came up.
#[derive(Clone, Copy, Debug)]
pub struct LinkStats {
    /// Which link.
    pub kind: LinkKind,
    /// Times it came up since boot (Wi-Fi joins, PPP sessions).
    pub ups: u32,
    /// Wi-Fi signal strength, once read.
    pub rssi_dbm: Option<i32>,
}

impl PlatformStats {
    /// Renders the platform families in Prometheus text format.
    pub fn render(&self, w: &mut dyn Write) -> fmt::Result {
        let api = &self.api;
        family(
            w,
            "picolet_api_connections_total",
            "counter",
            "TLS connections opened to the API server.",
        )?;
        writeln!(w, "picolet_api_connections_total {}", api.connections)?;
        family(
            w,
            "picolet_api_tls_failures_total",
            "counter",
            "API server connections refused in the TLS handshake (CA, server name, client certificate).",
        )?;
        writeln!(w, "picolet_api_tls_failures_total {}", api.tls_failures)?;
        family(
            w,
            "picolet_api_tls_handshake_seconds",
            "gauge",
            "Duration of the last TLS handshake with the API server (0 before the first).",
        )?;
        writeln!(
            w,
            "picolet_api_tls_handshake_seconds {}",
            Fixed::millis(api.last_handshake_ms)
        )?;
        if let Some((sent, received)) = api.bytes {
            family(
                w,
                "picolet_api_bytes_total",
                "counter",
                "HTTP bytes exchanged with the API server (before TLS).",
            )?;
            writeln!(w, "picolet_api_bytes_total{{direction=\"sent\"}} {sent}")?;
            writeln!(
                w,
                "picolet_api_bytes_total{{direction=\"received\"}} {received}"
            )?;
        }
        if let Some(ram) = &self.ram {
            let gauges = [
                (
                    "picolet_device_static_ram_bytes",
                    "RAM taken by .data, .bss and .uninit.",
                    ram.static_bytes,
                ),
                (
                    "picolet_device_stack_bytes",
                    "RAM left for the stack (no heap is linked).",
                    ram.stack_bytes,
                ),
                (
                    "picolet_device_stack_high_water_bytes",
                    "Deepest stack use since boot (painted stack).",
                    ram.stack_high_water_bytes,
                ),
                (
                    "picolet_device_ram_free_bytes",
                    "RAM never touched since boot.",
                    ram.stack_bytes.saturating_sub(ram.stack_high_water_bytes),
                ),
            ];
            for (name, help, value) in gauges {
                family(w, name, "gauge", help)?;
                writeln!(w, "{name} {value}")?;
            }
        }
        if let Some(link) = &self.link {
            let kind = match link.kind {
                LinkKind::Wifi => "wifi",
                LinkKind::Ppp => "ppp",
            };
            if link.kind == LinkKind::Wifi {
                family(
                    w,
                    "picolet_wifi_rssi_dbm",
                    "gauge",
                    "Wi-Fi signal strength (0 until first read).",
                )?;
                writeln!(w, "picolet_wifi_rssi_dbm {}", link.rssi_dbm.unwrap_or(0))?;
            }
            family(
                w,
                "picolet_link_ups_total",
                "counter",
                "Times the link came up since boot (Wi-Fi joins, PPP sessions).",
            )?;
            writeln!(w, "picolet_link_ups_total{{link=\"{kind}\"}} {}", link.ups)?;
        }
        family(
            w,
            "process_cpu_seconds_total",
            "counter",
            "CPU seconds of the agent (host process, or board executor busy time).",
        )?;
        writeln!(
            w,
            "process_cpu_seconds_total {}",
            Fixed::micros(self.cpu_time_us)
        )?;
        family(
            w,
            "process_resident_memory_bytes",
            "gauge",
            "Memory of the agent (host RSS, or board static RAM plus stack).",
        )?;
        writeln!(
            w,
            "process_resident_memory_bytes {}",
            self.memory_working_set_bytes
        )
    }
}

/// Seconds as a fixed-point decimal (`units / 10^places`), written with integers only: the
/// RP2040 has no FPU, and core's float formatting alone takes about 8 KiB of flash.
struct Fixed {
    units: u64,
    places: u8,
}

impl Fixed {
    /// Milliseconds as seconds with three decimals.
    fn millis(ms: u64) -> Self {
        Self {
            units: ms,
            places: 3,
        }
    }

    /// Microseconds as seconds with six decimals.
    fn micros(us: u64) -> Self {
        Self {
            units: us,
            places: 6,
        }
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10u64.pow(u32::from(self.places));
        let width = usize::from(self.places);
        write!(f, "{}.{:0width$}", self.units / scale, self.units % scale)
    }
}

/// Writes one metric family header.
pub fn family(w: &mut dyn Write, name: &str, kind: &str, help: &str) -> fmt::Result {
    write!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n")
}

/// State the agent renders besides its counters.
#[derive(Clone, Debug)]
pub struct Gauges {
    /// Time since start.
    pub uptime: Duration,
    /// CRC-32 of the region.
    pub memory_crc32: u32,
    /// The Node exists and is adopted.
    pub registered: bool,
    /// A watch stream is open.
    pub watching: bool,
    /// A pod watch stream is open.
    pub watching_pods: bool,
    /// When the client and serving certificates expire, where known.
    pub certificate_not_after: [Option<UnixSeconds>; 2],
}

impl Metrics {
    /// Renders the picolet families in Prometheus text format.
    pub fn render(&self, w: &mut dyn Write, g: &Gauges) -> fmt::Result {
        family(
            w,
            "picolet_build_info",
            "gauge",
            "picolet version; always 1.",
        )?;
        writeln!(
            w,
            "picolet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )?;
        family(
            w,
            "picolet_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
        )?;
        writeln!(
            w,
            "picolet_uptime_seconds {}",
            Fixed::millis(g.uptime.as_ms())
        )?;
        family(
            w,
            "picolet_node_registered",
            "gauge",
            "1 once the Node object exists and is adopted.",
        )?;
        writeln!(w, "picolet_node_registered {}", u8::from(g.registered))?;
        family(
            w,
            "picolet_heartbeats_total",
            "counter",
            "Node Lease renewals by result.",
        )?;
        writeln!(
            w,
            "picolet_heartbeats_total{{result=\"success\"}} {}",
            self.heartbeats_ok
        )?;
        writeln!(
            w,
            "picolet_heartbeats_total{{result=\"failure\"}} {}",
            self.heartbeats_failed
        )?;
        family(
            w,
            "picolet_node_status_updates_total",
            "counter",
            "Node status PATCHes that succeeded.",
        )?;
        writeln!(
            w,
            "picolet_node_status_updates_total {}",
            self.status_updates
        )?;
        family(
            w,
            "picolet_api_requests_total",
            "counter",
            "API server requests by verb and HTTP code (0: no response).",
        )?;
        for c in &self.api {
            writeln!(
                w,
                "picolet_api_requests_total{{verb=\"{}\",code=\"{}\"}} {}",
                c.verb.as_str(),
                c.code,
                c.count
            )?;
        }
        if self.api_other > 0 {
            writeln!(
                w,
                "picolet_api_requests_total{{verb=\"other\",code=\"other\"}} {}",
                self.api_other
            )?;
        }
        family(
            w,
            "picolet_watch_restarts_total",
            "counter",
            "ConfigMap watches that ended and were restarted.",
        )?;
        writeln!(w, "picolet_watch_restarts_total {}", self.watch_restarts)?;
        family(
            w,
            "picolet_watch_events_total",
            "counter",
            "ConfigMap watch events received.",
        )?;
        writeln!(w, "picolet_watch_events_total {}", self.watch_events)?;
        family(
            w,
            "picolet_watch_active",
            "gauge",
            "1 while a ConfigMap watch stream is open.",
        )?;
        writeln!(w, "picolet_watch_active {}", u8::from(g.watching))?;
        family(
            w,
            "picolet_pod_watch_active",
            "gauge",
            "1 while a watch of the pods bound to this node is open (0 where pods are listed).",
        )?;
        writeln!(w, "picolet_pod_watch_active {}", u8::from(g.watching_pods))?;
        family(
            w,
            "picolet_config_applies_total",
            "counter",
            "ConfigMap updates written to the memory region.",
        )?;
        writeln!(w, "picolet_config_applies_total {}", self.config_applies)?;
        family(
            w,
            "picolet_config_rejects_total",
            "counter",
            "ConfigMap updates rejected; memory left unchanged.",
        )?;
        writeln!(w, "picolet_config_rejects_total {}", self.config_rejects)?;
        family(
            w,
            "picolet_memory_region_crc32",
            "gauge",
            "CRC-32 of the 1 KB memory region.",
        )?;
        writeln!(w, "picolet_memory_region_crc32 {}", g.memory_crc32)?;
        family(
            w,
            "picolet_pods_rejected_total",
            "counter",
            "Pods bound to this node and failed because it cannot run containers.",
        )?;
        writeln!(w, "picolet_pods_rejected_total {}", self.pods_rejected)?;
        family(
            w,
            "picolet_events_dropped_total",
            "counter",
            "Kubernetes Events not sent because the queue was full.",
        )?;
        writeln!(w, "picolet_events_dropped_total {}", self.events_dropped)?;
        family(
            w,
            "picolet_kubelet_requests_total",
            "counter",
            "Kubelet-port connections by outcome.",
        )?;
        for outcome in KubeletOutcome::ALL {
            writeln!(
                w,
                "picolet_kubelet_requests_total{{outcome=\"{}\"}} {}",
                outcome.as_str(),
                self.kubelet_requests[outcome as usize]
            )?;
        }
        family(
            w,
            "picolet_kubelet_authorization_reviews_total",
            "counter",
            "SubjectAccessReviews for kubelet-port callers by result.",
        )?;
        for (result, n) in ["allowed", "denied", "error"]
            .iter()
            .zip(self.kubelet_authz)
        {
            writeln!(
                w,
                "picolet_kubelet_authorization_reviews_total{{result=\"{result}\"}} {n}"
            )?;
        }
        family(
            w,
            "picolet_kubelet_token_reviews_total",
            "counter",
            "TokenReviews for kubelet-port bearer tokens by result.",
        )?;
        for (result, n) in ["authenticated", "rejected", "error"]
            .iter()
            .zip(self.kubelet_authn)
        {
            writeln!(
                w,
                "picolet_kubelet_token_reviews_total{{result=\"{result}\"}} {n}"
            )?;
        }
        family(
            w,
            "picolet_certificate_expiration_timestamp_seconds",
            "gauge",
            "When the node's certificate expires (Unix time), by kind.",
        )?;
        for (kind, not_after) in ["client", "serving"].iter().zip(g.certificate_not_after) {
            if let Some(t) = not_after.map(UnixSeconds::as_secs) {
                writeln!(
                    w,
                    "picolet_certificate_expiration_timestamp_seconds{{kind=\"{kind}\"}} {t}"
                )?;
            }
        }
        family(
            w,
            "picolet_certificate_requests_total",
            "counter",
            "CertificateSigningRequests by kind and result (submitted, installed, failed).",
        )?;
        for (i, kind) in ["client", "serving"].iter().enumerate() {
            for (result, n) in [
                ("submitted", self.csr_submitted[i]),
                ("installed", self.certificates_installed[i]),
                ("failed", self.csr_failures[i]),
            ] {
                writeln!(
                    w,
                    "picolet_certificate_requests_total{{kind=\"{kind}\",result=\"{result}\"}} {n}"
                )?;
            }
        }
        Ok(())
    }
}

/// Renders `/metrics/resource` the way the kubelet does, for metrics-server: node CPU and
/// memory with millisecond timestamps, and `scrape_error`.
pub fn render_resource(w: &mut dyn Write, stats: &PlatformStats, now: UnixMillis) -> fmt::Result {
    let unix_ms = now.as_ms();
    family(
        w,
        "node_cpu_usage_seconds_total",
        "counter",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    )?;
    writeln!(
        w,
        "node_cpu_usage_seconds_total {} {unix_ms}",
        Fixed::micros(stats.cpu_time_us)
    )?;
    family(
        w,
        "node_memory_working_set_bytes",
        "gauge",
        "[STABLE] Current working set of the node in bytes",
    )?;
    writeln!(
        w,
        "node_memory_working_set_bytes {} {unix_ms}",
        stats.memory_working_set_bytes
    )?;
    family(
        w,
        "scrape_error",
        "gauge",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
    )?;
    writeln!(w, "scrape_error 0")
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn counts_api_requests_by_verb_and_code_within_fixed_slots() {
        let mut m = Metrics::default();
        m.count_api(Method::Put, 200);
        m.count_api(Method::Put, 200);
        m.count_api(Method::Put, 409);
        for code in 0..100 {
            m.count_api(Method::Get, 300 + code);
        }
        assert_eq!(m.api_total(), 103);
        let mut s = String::new();
        m.render(
            &mut s,
            &Gauges {
                uptime: Duration::from_ms(1_500),
                memory_crc32: 7,
                registered: true,
                watching: false,
                watching_pods: false,
                certificate_not_after: [Some(UnixSeconds::from_secs(5)), None],
            },
        )
        .unwrap();
        assert!(s.contains("picolet_api_requests_total{verb=\"PUT\",code=\"200\"} 2\n"));
        assert!(s.contains("picolet_api_requests_total{verb=\"PUT\",code=\"409\"} 1\n"));
        assert!(s.contains("picolet_api_requests_total{verb=\"other\",code=\"other\"} 78\n"));
        assert!(s.contains("picolet_uptime_seconds 1.500\n"));
        assert!(s.ends_with('\n'));
    }

    #[test]
    fn every_family_has_one_help_and_type() {
        let mut s = String::new();
        Metrics::default()
            .render(
                &mut s,
                &Gauges {
                    uptime: Duration::ZERO,
                    memory_crc32: 0,
                    registered: false,
                    watching: false,
                    watching_pods: true,
                    certificate_not_after: [9, 10].map(|s| Some(UnixSeconds::from_secs(s))),
                },
            )
            .unwrap();
        let board = PlatformStats {
            cpu_time_us: 1_000_000,
            memory_working_set_bytes: 10,
            api: ApiTransportStats {
                connections: 3,
                tls_failures: 1,
                last_handshake_ms: 2_950,
                bytes: Some((100, 200)),
            },
            ram: Some(RamStats {
                static_bytes: 160_000,
                stack_bytes: 100_000,
                stack_high_water_bytes: 40_000,
            }),
            link: Some(LinkStats {
                kind: LinkKind::Wifi,
                ups: 2,
                rssi_dbm: Some(-61),
            }),
        };
        render_resource(&mut s, &board, UnixMillis::from_ms(5)).unwrap();
        board.render(&mut s).unwrap();
        for line in s.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(
                s.matches(&std::format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                s.matches(&std::format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(s.contains("node_memory_working_set_bytes 10 5\n"));
        for line in [
            "picolet_api_connections_total 3",
            "picolet_api_tls_failures_total 1",
            "picolet_api_tls_handshake_seconds 2.950",
            "picolet_api_bytes_total{direction=\"received\"} 200",
            "picolet_device_ram_free_bytes 60000",
            "picolet_wifi_rssi_dbm -61",
            "picolet_link_ups_total{link=\"wifi\"} 2",
            "process_cpu_seconds_total 1.000000",
            "process_resident_memory_bytes 10",
        ] {
            assert!(s.contains(&std::format!("\n{line}\n")), "{line} in {s}");
        }
    }

    #[test]
    fn seconds_are_written_as_fixed_point_decimals() {
        for (fixed, text) in [
            (Fixed::millis(0), "0.000"),
            (Fixed::millis(7), "0.007"),
            (Fixed::millis(2_950), "2.950"),
            (Fixed::micros(999_999), "0.999999"),
            (Fixed::micros(86_400_000_001), "86400.000001"),
            (Fixed::micros(u64::MAX), "18446744073709.551615"),
        ] {
            assert_eq!(std::format!("{fixed}"), text);
        }
    }

    #[test]
    fn a_figure_the_platform_does_not_have_is_left_out() {
        let mut s = String::new();
        PlatformStats::default().render(&mut s).unwrap();
        assert!(!s.contains("picolet_api_bytes_total"), "{s}");
        assert!(!s.contains("picolet_device_"), "{s}");
        assert!(!s.contains("picolet_link_ups_total"), "{s}");
        assert!(s.contains("\nprocess_cpu_seconds_total 0.000000\n"), "{s}");
    }
}
