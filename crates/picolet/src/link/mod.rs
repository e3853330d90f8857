//! `picolet link`: the host end of a board's serial network link (the `picolet-serial` firmware).
//!
//! The board speaks PPP over its UART; this command answers it in userspace ([`ppp`] over
//! [`hdlc`] framing), runs a TCP/IP stack for the link ([`forward`]) and joins the board's
//! connections to the API server and the host's connections to the board's kubelet port. It
//! needs no root and no kernel PPP, so it also serves the RP2040 emulator test, which exposes the
//! emulated UART on a loopback TCP port.

pub mod forward;
pub mod hdlc;
pub mod ppp;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use forward::Forwarder;
use ppp::{Output, PppHost};

/// Where the board's serial line is.
#[derive(Clone, Debug)]
pub enum SerialEndpoint {
    /// A serial device (set its speed first, e.g. `stty -F /dev/ttyUSB0 115200 raw -echo`).
    Device(PathBuf),
    /// A TCP port carrying the raw serial bytes (the emulator's UART).
    Tcp(SocketAddr),
}

/// Settings of one link.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// The board's serial line.
    pub serial: SerialEndpoint,
    /// The host's address on the link (the board's `api_server` address).
    pub host_address: Ipv4Addr,
    /// The address assigned to the board.
    pub board_address: Ipv4Addr,
    /// The port the board dials on the host's link address for the API server.
    pub api_port: u16,
    /// Where the API server really is.
    pub api_server: SocketAddr,
    /// Where host clients reach the board's kubelet port.
    pub kubelet_listen: SocketAddr,
}

/// Why a link stopped.
#[derive(Debug)]
pub enum LinkError {
    /// The kubelet listen address could not be bound.
    Listen(SocketAddr, std::io::Error),
    /// The serial line failed in a way a reconnect does not fix.
    Serial(String, std::io::Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            LinkError::Serial(what, e) => write!(f, "serial line {what}: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// The serial line, read without blocking.
enum Serial {
    File(std::fs::File),
    Tcp(TcpStream),
}

impl Serial {
    fn open(endpoint: &SerialEndpoint) -> std::io::Result<Self> {
        match endpoint {
            SerialEndpoint::Device(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)?;
                Ok(Serial::File(file))
            }
            SerialEndpoint::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
                s.set_nonblocking(true)?;
                s.set_nodelay(true)?;
                Ok(Serial::Tcp(s))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Serial::File(f) => f.read(buf),
            Serial::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Serial::File(f) => f.write(buf),
            Serial::Tcp(s) => s.write(buf),
        }
    }
}

/// Runs the link until the process is stopped. A lost serial line (the board unplugged, the
/// emulator stopped) is reopened every second; the board then negotiates a new PPP session.
pub fn run(opts: &LinkOptions) -> Result<(), LinkError> {
    let kubelet = TcpListener::bind(opts.kubelet_listen)
        .map_err(|e| LinkError::Listen(opts.kubelet_listen, e))?;
    let mut forwarder = Forwarder::new(
        opts.host_address,
        opts.board_address,
        opts.api_port,
        opts.api_server,
        kubelet,
    )
    .map_err(|e| LinkError::Listen(opts.kubelet_listen, e))?;
    tracing::info!(
        "link: host {} / board {}; board's {}:{} -> {}; {} -> board:10250",
        opts.host_address,
        opts.board_address,
        opts.host_address,
        opts.api_port,
        opts.api_server,
        opts.kubelet_listen
    );
    let started = Instant::now();
    loop {
        let mut serial = match Serial::open(&opts.serial) {
            Ok(s) => s,
            Err(e)
                if matches!(opts.serial, SerialEndpoint::Device(_))
                    && e.kind() == ErrorKind::PermissionDenied =>
            {
                return Err(LinkError::Serial(format!("{:?}", opts.serial), e));
            }
            Err(e) => {
                tracing::debug!("link: serial line {:?} not open yet: {e}", opts.serial);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        tracing::info!("link: serial line {:?} open", opts.serial);
        let mut ppp = PppHost::new(opts.host_address, opts.board_address);
        forwarder.reset();
        let mut wire: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        let mut was_up = false;
        'session: loop {
            let ms = started.elapsed().as_millis() as u64;
            let mut out = Output::default();
            let mut busy = false;
            match serial.read(&mut buf) {
                Ok(0) => break 'session,
                Ok(n) => {
                    ppp.receive(&buf[..n], ms, &mut out);
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("link: serial read: {e}");
                    break 'session;
                }
            }
            ppp.poll(ms, &mut out);
            if ppp.is_up() != was_up {
                was_up = ppp.is_up();
                if was_up {
                    tracing::info!("link: PPP up (session {})", ppp.sessions);
                } else {
                    tracing::info!("link: PPP down");
                    forwarder.reset();
                }
            }
            forwarder.queues.inbound.extend(out.packets.drain(..));
            busy |= forwarder.poll(ppp.is_up());
            while let Some(packet) = forwarder.queues.outbound.pop_front() {
                ppp.send_ipv4(&packet, &mut out);
            }
            wire.extend_from_slice(&out.wire);
            while !wire.is_empty() {
                match serial.write(&wire) {
                    Ok(n) => {
                        wire.drain(..n);
                        busy = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("link: serial write: {e}");
                        break 'session;
                    }
                }
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        tracing::info!("link: serial line closed; reopening");
        forwarder.reset();
        std::thread::sleep(Duration::from_secs(1));
    }
}
