//! The host's side of the board's network: a userspace TCP/IP stack (smoltcp) on the PPP link,
//! joined to ordinary host sockets. Connections the board opens to the host's link address on the
//! API port go to the real API server; connections to the host's kubelet listen address go to the
//! board's port 10250. No root, no kernel PPP, no routes: only loopback sockets on the host side.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// smoltcp's view of the PPP link: IPv4 packets in and out of two queues.
#[derive(Default)]
pub struct PacketQueues {
    /// Packets from the board, for smoltcp.
    pub inbound: VecDeque<Vec<u8>>,
    /// Packets from smoltcp, for the board.
    pub outbound: VecDeque<Vec<u8>>,
}

/// A received packet handed to smoltcp.
pub struct RxToken(Vec<u8>);
/// Room for one packet to the board.
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl phy::Device for PacketQueues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.inbound.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.outbound)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxToken(&mut self.outbound))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

/// Per-direction buffer of a host socket, in bytes.
const SOCKET_BUFFER: usize = 64 * 1024;

/// One forwarded connection: a smoltcp socket on the link and a host TCP stream.
struct Pair {
    link: SocketHandle,
    host: TcpStream,
    /// Bytes from the board not yet written to the host stream.
    to_host: Vec<u8>,
    host_eof: bool,
    link_fin_passed: bool,
    /// For connections to the board: refused attempts so far (the board's kubelet port serves
    /// one connection at a time and refuses others until it listens again).
    refused: u32,
    /// The link connection reached Established at least once.
    established: bool,
    /// When to try a refused connection again.
    retry_at: Option<Instant>,
}

impl Pair {
    /// A new pair; `established` when the link side is already connected (the board called in).
    fn new(link: SocketHandle, host: TcpStream, established: bool) -> Self {
        Pair {
            link,
            host,
            to_host: Vec::new(),
            host_eof: false,
            link_fin_passed: false,
            refused: 0,
            established,
            retry_at: None,
        }
    }
}

/// How often, and how far apart, a refused connection to the board is retried.
const CONNECT_RETRIES: u32 = 40;
const CONNECT_RETRY_GAP: Duration = Duration::from_millis(50);

/// The link-side TCP/IP stack and the forwarded connections.
pub struct Forwarder {
    iface: Interface,
    sockets: SocketSet<'static>,
    /// smoltcp's packet queues; the caller moves packets between these and PPP.
    pub queues: PacketQueues,
    board: Ipv4Addr,
    api_port: u16,
    api_server: SocketAddr,
    api_listener: SocketHandle,
    kubelet: TcpListener,
    pairs: Vec<Pair>,
    /// Sockets aborted without a host side, removed once their RST is out.
    aborted: Vec<SocketHandle>,
    next_port: u16,
    started: Instant,
}

fn tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

impl Forwarder {
    /// A stack answering on `host` (the board's peer address), forwarding the board's connections
    /// to `host:api_port` to `api_server`, and host connections on `kubelet` to the board's 10250.
    pub fn new(
        host: Ipv4Addr,
        board: Ipv4Addr,
        api_port: u16,
        api_server: SocketAddr,
        kubelet: TcpListener,
    ) -> std::io::Result<Self> {
        kubelet.set_nonblocking(true)?;
        let mut queues = PacketQueues::default();
        let started = Instant::now();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut queues,
            smoltcp::time::Instant::from_millis(0),
        );
        iface.update_ip_addrs(|a| {
            // Vec of capacity IFACE_MAX_ADDR_COUNT (at least 2): one address always fits.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(host), 24));
        });
        let mut sockets = SocketSet::new(vec![]);
        let api_listener = sockets.add(Self::listener(api_port));
        Ok(Self {
            iface,
            sockets,
            queues,
            board,
            api_port,
            api_server,
            api_listener,
            kubelet,
            pairs: Vec::new(),
            aborted: Vec::new(),
            next_port: 49152,
            started,
        })
    }

    fn listener(port: u16) -> tcp::Socket<'static> {
        let mut s = tcp_socket();
        // A fresh socket always accepts a nonzero port.
        let _ = s.listen(port);
        s
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_millis(self.started.elapsed().as_millis() as i64)
    }

    /// Drops every connection (the link went down: the board's TCP state is gone).
    pub fn reset(&mut self) {
        for pair in self.pairs.drain(..) {
            let _ = pair.host.shutdown(Shutdown::Both);
            self.sockets.remove(pair.link);
        }
        for h in self.aborted.drain(..) {
            self.sockets.remove(h);
        }
        self.sockets.remove(self.api_listener);
        self.api_listener = self.sockets.add(Self::listener(self.api_port));
        self.queues = PacketQueues::default();
    }

    /// Runs the stack and moves bytes; returns whether anything happened (else the caller may
    /// sleep a little).
    pub fn poll(&mut self, link_up: bool) -> bool {
        let mut busy = !self.queues.inbound.is_empty();
        let now = self.now();
        self.iface.poll(now, &mut self.queues, &mut self.sockets);
        busy |= self.accept_board_connection();
        if link_up {
            busy |= self.accept_host_connection();
        }
        busy |= self.retry_refused();
        for i in (0..self.pairs.len()).rev() {
            let pair = &self.pairs[i];
            if !pair.established && pair.refused < CONNECT_RETRIES {
                continue;
            }
            let (moved, done) = Self::pump(&mut self.pairs[i], &mut self.sockets);
            busy |= moved;
            if done {
                let pair = self.pairs.swap_remove(i);
                let _ = pair.host.shutdown(Shutdown::Both);
                self.sockets.remove(pair.link);
            }
        }
        self.iface.poll(now, &mut self.queues, &mut self.sockets);
        let sockets = &mut self.sockets;
        self.aborted.retain(|&h| {
            let closed = sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed;
            if closed {
                sockets.remove(h);
            }
            !closed
        });
        busy || !self.queues.outbound.is_empty()
    }

    /// The board connected to the API port: join it to a new connection to the API server.
    fn accept_board_connection(&mut self) -> bool {
        let state = self.sockets.get::<tcp::Socket>(self.api_listener).state();
        if state == tcp::State::Listen {
            return false;
        }
        let link = self.api_listener;
        self.api_listener = self.sockets.add(Self::listener(self.api_port));
        match TcpStream::connect_timeout(&self.api_server, Duration::from_secs(2)) {
            Ok(host) if host.set_nonblocking(true).is_ok() => {
                let _ = host.set_nodelay(true);
                tracing::debug!("link: board connected to the API port");
                self.pairs.push(Pair::new(link, host, true));
            }
            _ => {
                tracing::warn!("link: cannot reach the API server at {}", self.api_server);
                self.sockets.get_mut::<tcp::Socket>(link).abort();
                self.aborted.push(link);
            }
        }
        true
    }

    /// A host client connected to the kubelet address: open a link connection to the board.
    fn accept_host_connection(&mut self) -> bool {
        let Ok((host, _)) = self.kubelet.accept() else {
            return false;
        };
        if host.set_nonblocking(true).is_err() {
            return true;
        }
        let _ = host.set_nodelay(true);
        let link = self.sockets.add(tcp_socket());
        if !self.connect_to_board(link) {
            self.sockets.remove(link);
            return true;
        }
        self.pairs.push(Pair::new(link, host, false));
        true
    }

    /// Starts (or restarts) a link connection to the board's kubelet port.
    fn connect_to_board(&mut self, link: SocketHandle) -> bool {
        self.next_port = if self.next_port >= 65000 {
            49152
        } else {
            self.next_port + 1
        };
        let remote = IpEndpoint::new(IpAddress::Ipv4(self.board), 10250);
        let socket = self.sockets.get_mut::<tcp::Socket>(link);
        socket.abort();
        socket
            .connect(self.iface.context(), remote, self.next_port)
            .is_ok()
    }

    /// Retries connections the board refused (it was between two kubelet requests).
    fn retry_refused(&mut self) -> bool {
        let mut busy = false;
        let now = Instant::now();
        for i in 0..self.pairs.len() {
            let link = self.pairs[i].link;
            let state = self.sockets.get::<tcp::Socket>(link).state();
            let pair = &mut self.pairs[i];
            if state == tcp::State::Established {
                pair.established = true;
            }
            if pair.established || state != tcp::State::Closed || pair.refused >= CONNECT_RETRIES {
                continue;
            }
            match pair.retry_at {
                None => pair.retry_at = Some(now + CONNECT_RETRY_GAP),
                Some(at) if now >= at => {
                    pair.refused += 1;
                    pair.retry_at = None;
                    self.connect_to_board(link);
                    busy = true;
                }
                Some(_) => {}
            }
        }
        busy
    }

    /// Moves bytes both ways for one pair; returns (anything moved, pair finished).
    fn pump(pair: &mut Pair, sockets: &mut SocketSet<'static>) -> (bool, bool) {
        let socket = sockets.get_mut::<tcp::Socket>(pair.link);
        let mut moved = false;
        // Host -> board.
        if !pair.host_eof && socket.can_send() {
            let mut buf = [0u8; 16 * 1024];
            let room = (socket.send_capacity() - socket.send_queue()).min(buf.len());
            match pair.host.read(&mut buf[..room]) {
                Ok(0) => {
                    pair.host_eof = true;
                    socket.close();
                    moved = true;
                }
                Ok(n) => {
                    // `room` bytes fit, so the whole read is queued.
                    let _ = socket.send_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    socket.abort();
                    return (true, true);
                }
            }
        }
        // Board -> host.
        if socket.can_recv() && pair.to_host.len() < SOCKET_BUFFER {
            let _ = socket.recv(|data| {
                pair.to_host.extend_from_slice(data);
                (data.len(), ())
            });
            moved = true;
        }
        if !pair.to_host.is_empty() {
            match pair.host.write(&pair.to_host) {
                Ok(n) => {
                    pair.to_host.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    socket.abort();
                    return (true, true);
                }
            }
        }
        let established_once = !matches!(
            socket.state(),
            tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
        );
        if established_once
            && !socket.may_recv()
            && pair.to_host.is_empty()
            && !pair.link_fin_passed
        {
            // The board finished sending: pass its FIN on.
            let _ = pair.host.shutdown(Shutdown::Write);
            pair.link_fin_passed = true;
            moved = true;
        }
        let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
            && pair.to_host.is_empty();
        (moved, done)
    }
}
