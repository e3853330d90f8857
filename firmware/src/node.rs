//! The link-independent node: the agent and its three tasks (control connection, ConfigMap
//! watch, kubelet port), device metrics and stack painting. Both firmwares (Wi-Fi on the Pico W,
//! PPP over a UART on any Pico) run exactly this code on top of their own `embassy_net::Stack`.
//!
//! All Kubernetes logic is `picolet-core`'s `Agent`; this module is wiring: sockets, TLS, time.

use core::cell::RefCell;

use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::tcp::TcpSocket;
use embassy_net::{IpAddress, Stack};
use embassy_rp::clocks::RoscRng;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, ThreadModeRawMutex};
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant, Timer};
use embedded_io_async::Write as _;
use embedded_tls::{Aes128GcmSha256, TlsConfig, TlsConnection, TlsContext};
#[cfg(not(feature = "kubelet-plain-http"))]
use picolet_core::agent::Identity;
use picolet_core::agent::{
    Agent, AgentConfig, CertKind, CertificatePolicy, ConfigMode, ControlStep, NodeFacts, WatchRead,
    WatchReader, WatchStep, WatchStream,
};
use picolet_core::agent::{Caller, KubeletSession, KubeletStep};
use picolet_core::http::ResponseHead;
use picolet_core::join::JoinStep;
use picolet_core::memory::REGION_SIZE;
use picolet_core::metrics::{
    ApiTransportStats, KubeletOutcome, LinkKind, LinkStats, PlatformStats, RamStats,
};
use picolet_core::time::{self, Millis, UnixSeconds};
use picolet_device::board_config::{self, BoardConfig, ConfigError};
use picolet_device::led::LedState;
#[cfg(not(feature = "kubelet-plain-http"))]
use picolet_device::tls_server;

#[cfg(not(feature = "kubelet-plain-http"))]
use crate::certs::ServingMaterial;
use crate::certs::{self, ClientCopy, PendingKeys};
use portable_atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use static_cell::{ConstStaticCell, StaticCell};

/// The kubelet port, as on every node.
pub const KUBELET_PORT: u16 = 10250;
/// embedded-tls needs a full TLS record (16 KiB + overhead) to decrypt into.
const TLS_READ: usize = 16_640;

/// What a board needs to be a node: its board configuration (cluster, identity, network) and
/// what kind of board it is.
pub struct NodeSettings {
    /// From the flash configuration sector, or compiled in (see [`load_board_config`]).
    pub board: BoardConfig<'static>,
    /// The board, as `node.kubernetes.io/instance-type`.
    pub instance_type: &'static str,
    /// The OS image shown by `kubectl get nodes -o wide`.
    pub os_image: &'static str,
}

/// The board's configuration: the flash configuration sector if it holds a valid record (one
/// firmware for many boards, written by `picolet board-config`), else the one compiled in.
/// `None` when there is neither; the caller then shows the error pattern and waits.
pub fn load_board_config(built_in: Option<BoardConfig<'static>>) -> Option<BoardConfig<'static>> {
    // SAFETY: the configuration sector is memory-mapped flash (XIP), 4 KiB long, never written
    // while the firmware runs, and memory.x keeps the firmware image out of it.
    let sector: &'static [u8] = unsafe {
        core::slice::from_raw_parts(
            board_config::XIP_ADDRESS as usize as *const u8,
            board_config::SECTOR_SIZE,
        )
    };
    match BoardConfig::parse(sector) {
        Ok(board) => {
            log::info!(
                "config: {} from the flash configuration sector",
                board.node_name
            );
            Some(board)
        }
        Err(e) => {
            if e != ConfigError::Absent {
                log::error!("config: flash configuration sector rejected: {e}");
            }
            match built_in {
                Some(board) => log::info!("config: {} compiled in", board.node_name),
                None => log::error!(
                    "config: none; flash a board configuration UF2 (`picolet board-config`)"
                ),
            }
            built_in
        }
    }
}

/// How the board reaches the network, for `/metrics` and the log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The CYW43439 Wi-Fi of a Pico W.
    Wifi,
    /// PPP over a serial line to a host.
    Ppp,
}

type Shared = Mutex<ThreadModeRawMutex, RefCell<AgentSlot>>;

/// The agent once [`start`] made it. `repr(u8)` makes "not yet" a zero tag, so the 9 KiB static
/// is all zeroes and lives in `.bss` (an `Option<Agent>` starts as a non-zero niche: `.data`,
/// with a 9 KiB image in flash). Not a `OnceLock`: its `init` moves the value inside a critical
/// section, which masked interrupts for 231 µs at boot in the emulator.
// The one static slot of the agent; without a heap it cannot be boxed.
#[allow(clippy::large_enum_variant)]
#[repr(u8)]
enum AgentSlot {
    Empty = 0,
    Ready(Agent<'static>),
}

/// The agent, shared by the tasks; the lock is never held across an await. Only tasks (one
/// thread-mode executor, one core) touch it, never an interrupt handler, so its lock does not
/// mask interrupts: key generation, CSR signing, watch parsing and `/metrics` run inside it for
/// up to a second, during which a critical section would starve the UART, USB and CYW43.
static AGENT: Shared = Mutex::new(RefCell::new(AgentSlot::Empty));
static WAKE_CONTROL: Signal<CriticalSectionRawMutex, ()> = Signal::new();
static WAKE_WATCH: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// Raised when the watch connection is probably dead though nothing may say so for minutes: the
/// link came up again (Wi-Fi rejoined), or the control connection to the same server just broke.
static WATCH_SUSPECT: Signal<CriticalSectionRawMutex, ()> = Signal::new();
/// TCP keep-alive on the watch connection: a host that lost the connection's state answers a
/// probe with a reset, so a dead watch is found within this time rather than the 6-min timeout.
const WATCH_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Wall clock (Unix seconds) learned from the API server, for certificate validity checks.
static UNIX_SECS: AtomicU64 = AtomicU64::new(0);
/// When the control task last made progress; the watchdog is fed only while it does.
static CONTROL_ALIVE_MS: AtomicU64 = AtomicU64::new(0);
static LINK_UPS: AtomicU32 = AtomicU32::new(0);
static API_RECONNECTS: AtomicU32 = AtomicU32::new(0);
/// API server connections refused in the TLS handshake.
static API_TLS_FAILURES: AtomicU32 = AtomicU32::new(0);
/// How long the last TLS handshake with the API server took, in device milliseconds.
static LAST_HANDSHAKE_MS: AtomicU32 = AtomicU32::new(0);
/// Last Wi-Fi signal strength read from the CYW43 (0: not known yet).
static RSSI_DBM: AtomicI32 = AtomicI32::new(0);
static LINK_KIND: AtomicU32 = AtomicU32::new(0);
/// Raised after every control-connection response: a kubelet-port caller may be waiting for
/// its authorization answer.
static KUBELET_WAKE: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// The 1 KB memory region the ConfigMap is written into: a fixed, zeroed static in SRAM (.bss).
static MEMORY_REGION: ConstStaticCell<[u8; REGION_SIZE]> = ConstStaticCell::new([0; REGION_SIZE]);
/// The region's address, under a fixed symbol name, for debuggers and the emulator test (a
/// cell's own layout is the compiler's choice, so the region's address is published here).
#[unsafe(no_mangle)]
static PICOLET_MEMORY_REGION_ADDR: AtomicUsize = AtomicUsize::new(0);

/// The core's clock: embassy's monotonic time since boot.
fn now() -> Millis {
    Millis::from_ms(Instant::now().as_millis())
}

/// The embassy instant of a core instant.
fn instant(t: Millis) -> Instant {
    Instant::from_millis(t.as_ms())
}

/// The Unix time learned from `Date` headers, once there is one.
fn unix_now() -> Option<UnixSeconds> {
    match UNIX_SECS.load(Ordering::Relaxed) {
        0 => None,
        t => Some(UnixSeconds::from_secs(t)),
    }
}

fn with_agent<R>(f: impl FnOnce(&mut Agent<'static>) -> R) -> Option<R> {
    AGENT.lock(|cell| match &mut *cell.borrow_mut() {
        AgentSlot::Ready(agent) => Some(f(agent)),
        AgentSlot::Empty => None,
    })
}

/// Records that the link came up (a Wi-Fi join, a PPP session).
pub fn note_link_up() {
    LINK_UPS.fetch_add(1, Ordering::Relaxed);
    WATCH_SUSPECT.signal(());
}

/// Records the Wi-Fi signal strength for `/metrics`.
pub fn note_rssi(dbm: i32) {
    RSSI_DBM.store(dbm, Ordering::Relaxed);
}

/// Tells the agent the board's address (from DHCP or PPP), for the Node's InternalIP.
pub fn set_address(address: embassy_net::Ipv4Address) {
    let mut ip: heapless::String<16> = heapless::String::new();
    let _ = core::fmt::write(&mut ip, format_args!("{address}"));
    with_agent(|agent| agent.set_internal_ip(&ip));
    log::info!("net: address {ip}");
}

/// The state the LED shows.
pub fn led_state(link_up: bool) -> LedState {
    match with_agent(|a| a.registered()) {
        _ if !link_up => LedState::JoiningWifi,
        Some(true) => LedState::Ready,
        Some(false) => LedState::Connecting,
        None => LedState::Error,
    }
}

/// Whether the control task checked in within the last minute (it does every 2 s while
/// healthy); the supervisors feed the watchdog only while this holds.
pub fn control_alive() -> bool {
    now().saturating_sub(Millis::from_ms(CONTROL_ALIVE_MS.load(Ordering::Relaxed)))
        < time::Duration::from_secs(60)
}

/// Certificate validity is checked against the time learned from `Date` headers; before the
/// first response it is unknown and embedded-tls skips the time check.
struct DeviceClock;

impl embedded_tls::TlsClock for DeviceClock {
    fn now() -> Option<u64> {
        unix_now().map(UnixSeconds::as_secs)
    }
}

/// The TLS client identity: a renewed certificate (in `client`) once there is one, else the
/// flashed one.
fn provider<'a>(
    s: &'static NodeSettings,
    client: &'a mut ClientCopy,
) -> picolet_device::tls::NodeTlsProvider<'a, RoscRng, DeviceClock> {
    if client.refresh() {
        picolet_device::tls::NodeTlsProvider::new(
            RoscRng,
            s.board.ca_der,
            &client.der,
            &client.pkcs8,
        )
    } else {
        picolet_device::tls::NodeTlsProvider::new(
            RoscRng,
            s.board.ca_der,
            s.board.client_cert_der,
            s.board.client_key_pkcs8_der,
        )
    }
}

/// One TCP + TLS connection's buffers, sized per connection: the control connection sends
/// whole Node objects; the watch connection sends one short GET and mostly reads.
struct ConnBuffers<
    const TCP_RX: usize,
    const TCP_TX: usize,
    const TLS_W: usize,
    const REQ: usize,
    const IN: usize,
> {
    tcp_rx: [u8; TCP_RX],
    tcp_tx: [u8; TCP_TX],
    tls_read: [u8; TLS_READ],
    tls_write: [u8; TLS_W],
    request: [u8; REQ],
    input: [u8; IN],
}

impl<
    const TCP_RX: usize,
    const TCP_TX: usize,
    const TLS_W: usize,
    const REQ: usize,
    const IN: usize,
> ConnBuffers<TCP_RX, TCP_TX, TLS_W, REQ, IN>
{
    const fn new() -> Self {
        Self {
            tcp_rx: [0; TCP_RX],
            tcp_tx: [0; TCP_TX],
            tls_read: [0; TLS_READ],
            tls_write: [0; TLS_W],
            request: [0; REQ],
            input: [0; IN],
        }
    }
}

// Sizes are set against the RAM budget with the stack measured in the emulator (README,
// "Memory and flash budget"): the TLS handshake takes about 27 KiB of stack.

/// Control connection: requests up to 4 KiB (a Node with its status), sent in TLS records of up
/// to 2 KiB through a 2 KiB TCP send buffer; response heads up to 2 KiB.
type ControlBuffers = ConnBuffers<2048, 2048, 2048, 4096, 2048>;
/// Watch connection: one short GET, then a stream of reads of up to 1 KiB into the reader.
type WatchBuffers = ConnBuffers<2048, 1024, 2048, 1024, 0>;
/// The watch connection's reader: 1 KiB reads, and the line framer for one ConfigMap event.
type BoardWatchReader = WatchReader<1024>;
/// The kubelet answer buffer: the core's smallest (`/memory` in one part); the metrics pages,
/// longer than that, go out in parts of it.
const KUBELET_OUT: usize = picolet_core::kubelet::ANSWER_MIN;

fn tls_config(s: &'static NodeSettings) -> TlsConfig<'static> {
    picolet_device::tls::config(s.board.tls_server_name)
}

fn note_date(head: &ResponseHead) {
    if let Some(date) = head.date {
        UNIX_SECS.store(date.as_secs(), Ordering::Relaxed);
    }
}

fn api_server(s: &NodeSettings) -> (IpAddress, u16) {
    let (ip, port) = s.board.api_server;
    (IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), port)
}

/// What the control task does with its connection next.
enum Control {
    /// Send the request of this length.
    Send(usize),
    /// Close the connection (and the watch's) and open it again.
    Reopen,
}

/// Follows the agent's control steps (`picolet_core::agent::ControlStep`) until it has a
/// request to send or wants the connections reopened: keys are made and certificates installed
/// here, between requests.
async fn next_request(buf: &mut [u8], keys: &mut PendingKeys, boot_id: &str) -> Control {
    loop {
        let t = now();
        CONTROL_ALIVE_MS.store(t.as_ms(), Ordering::Relaxed);
        let sleep_until = match with_agent(|a| a.poll_control(t, buf)) {
            Some(Ok(ControlStep::Send { len })) => return Control::Send(len),
            Some(Ok(ControlStep::MakeKey(kind))) => {
                with_agent(|a| keys.make_key(a, kind, t, boot_id));
                continue;
            }
            Some(Ok(ControlStep::InstallCertificate(kind))) => {
                with_agent(|a| keys.install(a, kind, t));
                continue;
            }
            Some(Ok(ControlStep::ReopenConnections)) => {
                WATCH_SUSPECT.signal(());
                return Control::Reopen;
            }
            Some(Ok(ControlStep::SleepUntil(at))) => at,
            Some(Err(e)) => {
                log::error!("agent: {e}");
                t + time::Duration::from_secs(1)
            }
            None => t + time::Duration::from_secs(1),
        };
        // At least every 2 s: the watchdog is fed while this task checks in.
        let at = sleep_until.min(t + time::Duration::from_secs(2));
        select(Timer::at(instant(at)), WAKE_CONTROL.wait()).await;
    }
}

/// A board configured with a bootstrap token and no certificate joins first
/// (`picolet_core::join`): its own key, a CSR sent as `system:bootstrap:ID` over TLS that
/// verifies the API server but presents no client certificate, one request per connection.
async fn join_with_token(
    stack: Stack<'static>,
    s: &'static NodeSettings,
    b: &mut ControlBuffers,
    body: &mut [u8; 8192],
    boot_id: &str,
) {
    let mut join = picolet_core::join::Join::new(
        s.board.node_name,
        s.board.tls_server_name,
        s.board.bootstrap_token,
    );
    let mut key = None;
    let mut told = None;
    log::info!(
        "joining with a bootstrap token as system:node:{}",
        s.board.node_name
    );
    loop {
        let t = now();
        CONTROL_ALIVE_MS.store(t.as_ms(), Ordering::Relaxed);
        if join.last_error() != told {
            told = join.last_error();
            if let Some(e) = told {
                log::warn!("bootstrap: {e}");
            }
        }
        let n = match join.poll(t, &mut b.request) {
            Ok(JoinStep::MakeKey) => {
                let k = certs::new_key(boot_id, s.board.node_name);
                let stamp = rand_core::RngCore::next_u32(&mut RoscRng);
                if join
                    .submit_csr(t, stamp, &k.public_key(), |subject, out| {
                        k.csr(subject, out)
                    })
                    .is_ok()
                {
                    key = Some(k);
                }
                continue;
            }
            Ok(JoinStep::Joined(der)) => {
                let Some(k) = key.as_ref() else {
                    // Cannot happen (the CSR was built with a key), but never panic.
                    Timer::after(Duration::from_secs(1)).await;
                    continue;
                };
                certs::install_client(der, k);
                let _ = with_agent(|a| a.set_certificate(CertKind::Client, der));
                log::info!("joined: client certificate issued for the board's own key");
                return;
            }
            Ok(JoinStep::Send { len }) => len,
            Ok(JoinStep::SleepUntil(at)) => {
                Timer::at(instant(at.min(t + time::Duration::from_secs(1)))).await;
                continue;
            }
            Err(e) => {
                log::error!("bootstrap: {e}");
                Timer::after(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut socket = TcpSocket::new(stack, &mut b.tcp_rx, &mut b.tcp_tx);
        socket.set_timeout(Some(Duration::from_secs(30)));
        if socket.connect(api_server(s)).await.is_err() {
            join.on_transport_error(now());
            continue;
        }
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
            TlsConnection::new(socket, &mut b.tls_read, &mut b.tls_write);
        let cfg = tls_config(s);
        let anonymous = picolet_device::tls::NodeTlsProvider::<'_, _, DeviceClock>::new(
            RoscRng,
            s.board.ca_der,
            &[],
            &[],
        );
        if tls.open(TlsContext::new(&cfg, anonymous)).await.is_err() {
            join.on_transport_error(now());
            continue;
        }
        match picolet_device::tls::exchange(&mut tls, &b.request[..n], &mut b.input, &mut body[..])
            .await
        {
            Ok((head, len)) => {
                note_date(&head);
                join.on_response(now(), &head, &body[..len.min(body.len())]);
            }
            Err(_) => join.on_transport_error(now()),
        }
    }
}

/// The request/response connection: registration, Lease, status, reports, lists.
#[embassy_executor::task]
async fn control_task(
    stack: Stack<'static>,
    s: &'static NodeSettings,
    b: &'static mut ControlBuffers,
    body: &'static mut [u8; 8192],
    boot_id: &'static str,
) -> ! {
    let mut keys = PendingKeys::new();
    let mut client = ClientCopy::new();
    if s.board.client_cert_der.is_empty() {
        join_with_token(stack, s, b, body, boot_id).await;
    }
    let mut next = next_request(&mut b.request, &mut keys, boot_id).await;
    loop {
        let Control::Send(mut n) = next else {
            next = next_request(&mut b.request, &mut keys, boot_id).await;
            continue;
        };
        let mut socket = TcpSocket::new(stack, &mut b.tcp_rx, &mut b.tcp_tx);
        socket.set_timeout(Some(Duration::from_secs(30)));
        if socket.connect(api_server(s)).await.is_err() {
            log::warn!("api: cannot connect to {:?}", s.board.api_server);
            with_agent(|a| a.on_transport_error(now()));
            next = next_request(&mut b.request, &mut keys, boot_id).await;
            continue;
        }
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
            TlsConnection::new(socket, &mut b.tls_read, &mut b.tls_write);
        let cfg = tls_config(s);
        let started = Instant::now();
        if let Err(e) = tls
            .open(TlsContext::new(&cfg, provider(s, &mut client)))
            .await
        {
            log::warn!(
                "api: TLS handshake with {} failed: {e:?}",
                s.board.tls_server_name
            );
            API_TLS_FAILURES.fetch_add(1, Ordering::Relaxed);
            with_agent(|a| a.on_transport_error(now()));
            next = next_request(&mut b.request, &mut keys, boot_id).await;
            continue;
        }
        API_RECONNECTS.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed().as_millis();
        LAST_HANDSHAKE_MS.store(took as u32, Ordering::Relaxed);
        log::info!("api: TLS session open ({took} ms)");
        loop {
            let close = match picolet_device::tls::exchange(
                &mut tls,
                &b.request[..n],
                &mut b.input,
                &mut body[..],
            )
            .await
            {
                Ok((head, len)) => {
                    note_date(&head);
                    let t = now();
                    let shown = len.min(body.len());
                    with_agent(|a| a.on_response(t, &head, &body[..shown], len));
                    WAKE_WATCH.signal(());
                    KUBELET_WAKE.signal(());
                    head.close
                }
                Err(e) => {
                    log::warn!("api: {e}");
                    with_agent(|a| a.on_transport_error(now()));
                    true
                }
            };
            next = next_request(&mut b.request, &mut keys, boot_id).await;
            match next {
                Control::Send(len) if !close => n = len,
                Control::Send(_) => break,
                Control::Reopen => {
                    log::info!(
                        "api: reconnecting (renewed client certificate, or a broken connection)"
                    );
                    break;
                }
            }
        }
    }
}

/// The ConfigMap watch connection: the agent says when to open it and frames what comes back
/// (`picolet_core::agent::WatchStep`, `WatchRead`). Its connect-and-handshake lines repeat the
/// control task's on purpose: a shared async helper put its state into both task futures,
/// +5 KiB of static RAM.
#[embassy_executor::task]
async fn watch_task(
    stack: Stack<'static>,
    s: &'static NodeSettings,
    b: &'static mut WatchBuffers,
    reader: &'static mut BoardWatchReader,
) -> ! {
    const STREAM: WatchStream = WatchStream::ConfigMap;
    let mut client = ClientCopy::new();
    // A board joining with a bootstrap token has no identity to watch with yet.
    while s.board.client_cert_der.is_empty() && certs::client_generation() == 0 {
        Timer::after(Duration::from_secs(1)).await;
    }
    loop {
        let t = now();
        let n = match with_agent(|a| a.poll_watch(STREAM, t, &mut b.request)) {
            Some(Ok(WatchStep::Open { len })) => len,
            step => {
                let at = match step {
                    Some(Ok(WatchStep::SleepUntil(at))) => at,
                    _ => t + time::Duration::from_secs(1),
                };
                let at = at.min(t + time::Duration::from_secs(5));
                select(Timer::at(instant(at)), WAKE_WATCH.wait()).await;
                continue;
            }
        };
        WATCH_SUSPECT.reset();
        let mut socket = TcpSocket::new(stack, &mut b.tcp_rx, &mut b.tcp_tx);
        // Bookmarks arrive about once a minute; silence for longer means a dead link.
        socket.set_timeout(Some(Duration::from_secs(360)));
        socket.set_keep_alive(Some(WATCH_KEEP_ALIVE));
        if socket.connect(api_server(s)).await.is_err() {
            with_agent(|a| a.on_watch_end(STREAM, now(), reader, true));
            continue;
        }
        let mut tls: TlsConnection<'_, _, Aes128GcmSha256> =
            TlsConnection::new(socket, &mut b.tls_read, &mut b.tls_write);
        let cfg = tls_config(s);
        let opened = tls
            .open(TlsContext::new(&cfg, provider(s, &mut client)))
            .await;
        if opened.is_err() {
            API_TLS_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        if opened.is_err()
            || tls.write_all(&b.request[..n]).await.is_err()
            || tls.flush().await.is_err()
        {
            with_agent(|a| a.on_watch_end(STREAM, now(), reader, true));
            continue;
        }
        loop {
            let read = match select(tls.read(reader.space()), WATCH_SUSPECT.wait()).await {
                Either::First(read) => read,
                Either::Second(()) => {
                    log::info!("watch: link renewed or control connection broken; reconnecting");
                    Ok(0)
                }
            };
            let t = now();
            // `Some(error)`: the connection ended and the agent is to be told.
            let ended = match read {
                Ok(0) => Some(false),
                Ok(r) => match with_agent(|a| a.on_watch_read(STREAM, t, reader, r)) {
                    Some(WatchRead::Continue) => {
                        WAKE_CONTROL.signal(());
                        continue;
                    }
                    // Closed (or overflowed): the agent already knows.
                    _ => None,
                },
                Err(_) => Some(true),
            };
            if let Some(error) = ended {
                with_agent(|a| a.on_watch_end(STREAM, t, reader, error));
            }
            WAKE_CONTROL.signal(());
            break;
        }
    }
}

/// What the board measures of itself; the core renders it on `/metrics` and
/// `/metrics/resource` (memory in use: static RAM plus the deepest stack; CPU: the executor's
/// busy time).
fn platform_stats() -> PlatformStats {
    let (stack, high) = crate::stack::stack_use();
    let static_ram = crate::stack::static_ram();
    let rssi = RSSI_DBM.load(Ordering::Relaxed);
    PlatformStats {
        cpu_time_us: crate::cpu::busy_us(),
        memory_working_set_bytes: (static_ram + high) as u64,
        api: ApiTransportStats {
            connections: API_RECONNECTS.load(Ordering::Relaxed).into(),
            tls_failures: API_TLS_FAILURES.load(Ordering::Relaxed).into(),
            last_handshake_ms: LAST_HANDSHAKE_MS.load(Ordering::Relaxed).into(),
            bytes: None,
        },
        ram: Some(RamStats {
            static_bytes: static_ram as u64,
            stack_bytes: stack as u64,
            stack_high_water_bytes: high as u64,
        }),
        link: Some(LinkStats {
            kind: match LINK_KIND.load(Ordering::Relaxed) {
                1 => LinkKind::Ppp,
                _ => LinkKind::Wifi,
            },
            ups: LINK_UPS.load(Ordering::Relaxed),
            rssi_dbm: (rssi != 0).then_some(rssi),
        }),
    }
}

/// Drives the core's kubelet session on one connection (`picolet_core::agent::KubeletSession`):
/// reads the request head (at most `kubelet::HEAD_MIN`: room for a bearer token) by
/// `deadline`, waits for the authentication and authorization answers until the control task
/// has had a response, writes the parts of a long answer, and returns the length of the last
/// part in `out`; `None` when nothing complete came in time or a write failed (close without
/// an answer).
async fn kubelet_session(
    stream: &mut (impl embedded_io_async::Read + embedded_io_async::Write),
    caller: Caller<'_>,
    deadline: Instant,
    out: &mut [u8; KUBELET_OUT],
) -> Option<usize> {
    let mut head = [0u8; picolet_core::kubelet::HEAD_MIN];
    let mut len = 0;
    let mut session = KubeletSession::new(caller);
    loop {
        KUBELET_WAKE.reset();
        let t = now();
        let platform = platform_stats();
        let full = len == head.len();
        let step = with_agent(|a| {
            a.kubelet_step(&mut session, t, &head[..len], full, &platform, &mut out[..])
        })?;
        match step {
            KubeletStep::ReadMore => {
                match embassy_time::with_deadline(deadline, stream.read(&mut head[len..])).await {
                    Ok(Ok(n)) if n > 0 => len += n,
                    Ok(_) => {
                        return match with_agent(|a| a.kubelet_eof(&mut session, &mut out[..]))? {
                            KubeletStep::Respond { len, .. } => Some(len),
                            _ => None,
                        };
                    }
                    Err(_) => {
                        with_agent(|a| a.count_kubelet(KubeletOutcome::TimedOut));
                        return None;
                    }
                }
            }
            KubeletStep::Authorizing { until } => {
                WAKE_CONTROL.signal(());
                select(KUBELET_WAKE.wait(), Timer::at(instant(until))).await;
            }
            // A stalled peer is cut by the socket's timeout, as for the last part.
            KubeletStep::Write { len } => {
                if stream.write_all(&out[..len]).await.is_err() {
                    return None;
                }
            }
            KubeletStep::Respond { len, refused } => {
                if let Some((route, refusal)) = refused {
                    log::warn!("kubelet port: {route:?} refused: {refusal:?}");
                }
                return Some(len);
            }
        }
    }
}

/// Closes a kubelet-port connection at once (no answer), counting why.
async fn drop_connection(socket: &mut TcpSocket<'_>, outcome: KubeletOutcome) {
    with_agent(|a| a.count_kubelet(outcome));
    socket.abort();
    let _ = socket.flush().await;
}

/// The kubelet port over plain HTTP (feature `kubelet-plain-http`): no TLS, no
/// authentication, like a kubelet's read-only port.
#[cfg(feature = "kubelet-plain-http")]
#[embassy_executor::task]
async fn kubelet_task(
    stack: Stack<'static>,
    _s: &'static NodeSettings,
    b: &'static mut KubeletBuffers,
) -> ! {
    log::warn!("kubelet port: plain HTTP, no authentication (feature kubelet-plain-http)");
    loop {
        let mut socket = TcpSocket::new(stack, &mut b.tcp_rx, &mut b.tcp_tx);
        socket.set_timeout(Some(Duration::from_secs(10)));
        if socket.accept(KUBELET_PORT).await.is_err() {
            continue;
        }
        // The one connection must not be held by an idle caller.
        let first = embassy_time::with_timeout(KUBELET_FIRST_BYTE, socket.wait_read_ready());
        if first.await.is_err() {
            drop_connection(&mut socket, KubeletOutcome::TimedOut).await;
            continue;
        }
        let deadline = Instant::now() + KUBELET_DEADLINE;
        let Some(n) = kubelet_session(&mut socket, Caller::Open, deadline, &mut b.out).await else {
            socket.abort();
            let _ = socket.flush().await;
            continue;
        };
        let _ = socket.write_all(&b.out[..n]).await;
        let _ = socket.flush().await;
        socket.close();
        Timer::after(Duration::from_millis(10)).await;
        socket.abort();
    }
}

/// Time from accepting a kubelet-port connection to its first byte (ClientHello or request):
/// the board serves one connection at a time, so an idle caller is closed quickly.
const KUBELET_FIRST_BYTE: Duration = Duration::from_secs(2);
/// Time from the first byte for the TLS handshake (about 3 s of CPU) and the request head.
const KUBELET_DEADLINE: Duration = Duration::from_secs(10);

/// The kubelet port over TLS (picolet_device::tls_server): one request per connection, 2 s to
/// send the first byte, then 10 s for the handshake and head. Until the serving certificate is
/// approved and issued, connections are closed at once.
#[cfg(not(feature = "kubelet-plain-http"))]
#[embassy_executor::task]
async fn kubelet_task(
    stack: Stack<'static>,
    s: &'static NodeSettings,
    b: &'static mut KubeletBuffers,
) -> ! {
    let mut serving: Option<ServingMaterial> = None;
    let mut told = false;
    loop {
        if let Some(new) = certs::SERVING_NEW.try_take() {
            log::info!("kubelet port: serving certificate installed");
            serving = Some(new);
        }
        let mut socket = TcpSocket::new(stack, &mut b.tcp_rx, &mut b.tcp_tx);
        socket.set_timeout(Some(Duration::from_secs(10)));
        if socket.accept(KUBELET_PORT).await.is_err() {
            continue;
        }
        if serving.is_none()
            && let Some(new) = certs::SERVING_NEW.try_take()
        {
            serving = Some(new);
        }
        let Some(cert) = serving.as_ref() else {
            if !told {
                log::warn!(
                    "kubelet port: no serving certificate yet (its CSR waits for approval: picolet approve)"
                );
                told = true;
            }
            drop_connection(&mut socket, KubeletOutcome::TlsFailure).await;
            continue;
        };
        let config = tls_server::ServerConfig {
            cert_der: &cert.der,
            key: cert.key.signing_key(),
            client_ca_der: Some(s.board.client_ca()),
            now_unix: unix_now(),
        };
        // The one connection must not be held by an idle or slow caller.
        let first = embassy_time::with_timeout(KUBELET_FIRST_BYTE, socket.wait_read_ready());
        if first.await.is_err() {
            log::debug!("kubelet port: no ClientHello within 2 s; closed");
            drop_connection(&mut socket, KubeletOutcome::TimedOut).await;
            continue;
        }
        let deadline = Instant::now() + KUBELET_DEADLINE;
        let accepted = embassy_time::with_deadline(
            deadline,
            tls_server::accept(
                &mut socket,
                &config,
                &mut RoscRng,
                &mut b.tls_rx,
                &mut b.tls_tx,
            ),
        )
        .await;
        let mut conn = match accepted {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                log::warn!("kubelet port: TLS handshake refused: {e}");
                drop_connection(&mut socket, KubeletOutcome::TlsFailure).await;
                continue;
            }
            Err(_) => {
                log::debug!("kubelet port: no handshake within 10 s; closed");
                drop_connection(&mut socket, KubeletOutcome::TimedOut).await;
                continue;
            }
        };
        // A copy: the session reads from the connection while it holds the identity.
        let peer = conn.peer().cloned();
        let mut groups: heapless::Vec<&str, { tls_server::GROUPS_MAX }> = heapless::Vec::new();
        let caller = match &peer {
            Some(p) => {
                for g in &p.groups {
                    let _ = groups.push(g.as_str());
                }
                Caller::Verified(Identity {
                    user: p.user.as_str(),
                    groups: &groups,
                })
            }
            None => Caller::Anonymous,
        };
        let answer = kubelet_session(&mut conn, caller, deadline, &mut b.out).await;
        let Some(n) = answer else {
            drop(conn);
            socket.abort();
            let _ = socket.flush().await;
            continue;
        };
        if conn.write_all(&b.out[..n]).await.is_ok() {
            conn.close().await;
        }
        socket.close();
        Timer::after(Duration::from_millis(10)).await;
        socket.abort();
    }
}

/// The kubelet port's buffers: TCP windows, the TLS server's record buffers (a client record
/// up to 4 KiB; answers go out in records of up to 2 KiB), and the rendered response.
struct KubeletBuffers {
    tcp_rx: [u8; 1024],
    tcp_tx: [u8; 1024],
    #[cfg(not(feature = "kubelet-plain-http"))]
    tls_rx: [u8; 4096],
    #[cfg(not(feature = "kubelet-plain-http"))]
    tls_tx: [u8; 2048],
    out: [u8; KUBELET_OUT],
}

/// A random boot ID (UUID v4 form) from the ROSC, new on every boot as a kubelet's is.
fn boot_id() -> &'static str {
    static BOOT_ID: StaticCell<heapless::String<36>> = StaticCell::new();
    let mut rng = RoscRng;
    let r = [
        rand_core::RngCore::next_u64(&mut rng),
        rand_core::RngCore::next_u64(&mut rng),
    ];
    let mut id = heapless::String::new();
    let _ = core::fmt::write(
        &mut id,
        format_args!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            r[0] >> 32,
            (r[0] >> 16) & 0xffff,
            r[0] & 0xfff,
            (r[1] >> 48) & 0x3fff | 0x8000,
            r[1] & 0xffff_ffff_ffff
        ),
    );
    BOOT_ID.init(id).as_str()
}

/// Creates the agent and spawns the control, watch and kubelet tasks on `stack`. Call once.
pub fn start(spawner: Spawner, stack: Stack<'static>, settings: &'static NodeSettings, link: Link) {
    LINK_KIND.store(u32::from(link == Link::Ppp), Ordering::Relaxed);
    let boot = boot_id();
    let facts = NodeFacts {
        operating_system: "none",
        architecture: "arm",
        instance_type: settings.instance_type,
        capacity: NodeFacts::PICO_W_CAPACITY,
        allocatable: NodeFacts::PICO_W_CAPACITY,
        machine_id: settings.board.node_name,
        system_uuid: settings.board.node_name,
        boot_id: boot,
        kernel_version: "embassy-executor 0.10",
        os_image: settings.os_image,
    };
    let cfg = AgentConfig {
        node_name: settings.board.node_name,
        config_namespace: "default",
        config_map: "pico-config",
        api_host: settings.board.tls_server_name,
        kubelet_port: KUBELET_PORT,
        status_report_interval_ms: time::Duration::from_secs(300),
        config_mode: ConfigMode::Watch,
        watch_timeout_s: 290,
        facts,
    };
    let region = MEMORY_REGION.take();
    PICOLET_MEMORY_REGION_ADDR.store(region.as_ptr() as usize, Ordering::Relaxed);
    match Agent::new(cfg, region, now()) {
        Ok(mut agent) => {
            // Renew the client certificate at 70-80 % of its life; request a serving one.
            agent.set_certificate_policy(
                now(),
                CertificatePolicy {
                    rotate_client: true,
                    request_serving: !cfg!(feature = "kubelet-plain-http"),
                },
                rand_core::RngCore::next_u32(&mut RoscRng),
            );
            if let Err(e) = agent.set_certificate(CertKind::Client, settings.board.client_cert_der)
            {
                log::error!("client certificate: {e}; it will not be renewed");
            }
            AGENT.lock(|cell| *cell.borrow_mut() = AgentSlot::Ready(agent));
        }
        Err(e) => log::error!("agent configuration: {e}"),
    }

    // Const cells live in .bss: built in place, never on the stack (ControlBuffers alone is
    // 33 KiB, and building it on the stack first cost as much stack at boot).
    static CONTROL_BUFS: ConstStaticCell<ControlBuffers> =
        ConstStaticCell::new(ControlBuffers::new());
    static WATCH_BUFS: ConstStaticCell<WatchBuffers> = ConstStaticCell::new(WatchBuffers::new());
    static BODY: ConstStaticCell<[u8; 8192]> = ConstStaticCell::new([0; 8192]);
    static READER: ConstStaticCell<BoardWatchReader> = ConstStaticCell::new(WatchReader::new());
    static KUBELET_BUFS: ConstStaticCell<KubeletBuffers> = ConstStaticCell::new(KubeletBuffers {
        tcp_rx: [0; 1024],
        tcp_tx: [0; 1024],
        #[cfg(not(feature = "kubelet-plain-http"))]
        tls_rx: [0; 4096],
        #[cfg(not(feature = "kubelet-plain-http"))]
        tls_tx: [0; 2048],
        out: [0; KUBELET_OUT],
    });
    // Spawning fails only if a task already runs: `start` was called twice, a wiring error.
    spawner.spawn(control_task(stack, settings, CONTROL_BUFS.take(), BODY.take(), boot).unwrap());
    spawner.spawn(watch_task(stack, settings, WATCH_BUFS.take(), READER.take()).unwrap());
    spawner.spawn(kubelet_task(stack, settings, KUBELET_BUFS.take()).unwrap());
}
