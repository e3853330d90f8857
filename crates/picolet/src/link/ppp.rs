//! The host end of a PPP link (RFC 1661 LCP, RFC 1332 IPCP), sans-IO: bytes from the serial line
//! go in, bytes for it and IPv4 packets come out. The host assigns both addresses, asks for no
//! authentication and offers no DNS; that is all a picolet board needs.
//!
//! Deliberately small: one negotiation state per protocol (our request acknowledged / theirs
//! acknowledged), our request resent every second until acknowledged, and a restart whenever the
//! board starts over (a reboot, a new session).

use std::net::Ipv4Addr;

use super::hdlc::{self, Decoder, Frame};

const LCP: u16 = 0xc021;
const IPCP: u16 = 0x8021;
const IPV4: u16 = 0x0021;

const CONF_REQ: u8 = 1;
const CONF_ACK: u8 = 2;
const CONF_NAK: u8 = 3;
const CONF_REJ: u8 = 4;
const TERM_REQ: u8 = 5;
const TERM_ACK: u8 = 6;
const PROTO_REJ: u8 = 8;
const ECHO_REQ: u8 = 9;
const ECHO_REPLY: u8 = 10;

/// LCP options the host accepts from the board: async control character map, magic number.
const LCP_ACCM: u8 = 2;
const LCP_MAGIC: u8 = 5;
/// IPCP option: IP address.
const IPCP_ADDRESS: u8 = 3;

/// How often an unacknowledged Configure-Request is resent.
const RESEND_MS: u64 = 1_000;

/// One control protocol's negotiation (LCP or IPCP).
#[derive(Default, Clone, Copy)]
struct Negotiation {
    /// The board acknowledged our Configure-Request.
    ours_acked: bool,
    /// We acknowledged the board's Configure-Request.
    theirs_acked: bool,
    /// Identifier of our outstanding request.
    id: u8,
    /// When our request was last sent (None: not yet).
    sent_at: Option<u64>,
}

impl Negotiation {
    fn open(&self) -> bool {
        self.ours_acked && self.theirs_acked
    }
}

/// What the host end of the link produced from its input.
#[derive(Default)]
pub struct Output {
    /// Bytes to write to the serial line.
    pub wire: Vec<u8>,
    /// IPv4 packets from the board.
    pub packets: Vec<Vec<u8>>,
}

/// The host end of one PPP link.
pub struct PppHost {
    host: Ipv4Addr,
    board: Ipv4Addr,
    decoder: Decoder,
    lcp: Negotiation,
    ipcp: Negotiation,
    next_id: u8,
    /// Times the link reached the IPv4-up state, for the log and tests.
    pub sessions: u32,
}

impl PppHost {
    /// A link where the host answers on `host` and assigns `board` to the board.
    pub fn new(host: Ipv4Addr, board: Ipv4Addr) -> Self {
        Self {
            host,
            board,
            decoder: Decoder::default(),
            lcp: Negotiation::default(),
            ipcp: Negotiation::default(),
            next_id: 1,
            sessions: 0,
        }
    }

    /// Whether IPv4 packets flow.
    pub fn is_up(&self) -> bool {
        self.lcp.open() && self.ipcp.open()
    }

    /// Sends due (re)transmissions of our Configure-Requests.
    pub fn poll(&mut self, now_ms: u64, out: &mut Output) {
        let due = |n: &Negotiation| {
            !n.ours_acked
                && n.sent_at
                    .is_none_or(|t| now_ms.saturating_sub(t) >= RESEND_MS)
        };
        if due(&self.lcp) {
            self.lcp.id = self.take_id();
            self.lcp.sent_at = Some(now_ms);
            control(LCP, CONF_REQ, self.lcp.id, &[], &mut out.wire);
        }
        if self.lcp.open() && due(&self.ipcp) {
            self.ipcp.id = self.take_id();
            self.ipcp.sent_at = Some(now_ms);
            let mut opt = vec![IPCP_ADDRESS, 6];
            opt.extend_from_slice(&self.host.octets());
            control(IPCP, CONF_REQ, self.ipcp.id, &opt, &mut out.wire);
        }
    }

    /// Feeds bytes from the serial line.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64, out: &mut Output) {
        let mut frames = Vec::new();
        self.decoder.feed(bytes, &mut frames);
        for frame in frames {
            self.on_frame(frame, now_ms, out);
        }
    }

    /// Frames an IPv4 packet for the board (dropped while the link is down).
    pub fn send_ipv4(&self, packet: &[u8], out: &mut Output) {
        if self.is_up() {
            hdlc::encode(IPV4, packet, &mut out.wire);
        }
    }

    fn take_id(&mut self) -> u8 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    fn restart(&mut self) {
        self.lcp = Negotiation::default();
        self.ipcp = Negotiation::default();
    }

    fn on_frame(&mut self, frame: Frame, now_ms: u64, out: &mut Output) {
        let was_up = self.is_up();
        match frame.protocol {
            IPV4 if self.is_up() => out.packets.push(frame.info),
            IPV4 => {}
            LCP => self.on_lcp(&frame.info, now_ms, out),
            IPCP if self.lcp.open() => self.on_ipcp(&frame.info, out),
            IPCP => {}
            other if self.lcp.open() => {
                // Protocol-Reject: the rejected protocol, then its information field.
                let mut data = other.to_be_bytes().to_vec();
                data.extend_from_slice(&frame.info);
                data.truncate(1400);
                let id = self.take_id();
                control(LCP, PROTO_REJ, id, &data, &mut out.wire);
            }
            _ => {}
        }
        if !was_up && self.is_up() {
            self.sessions += 1;
        }
    }

    fn on_lcp(&mut self, pkt: &[u8], now_ms: u64, out: &mut Output) {
        let Some((code, id, data)) = packet(pkt) else {
            return;
        };
        match code {
            CONF_REQ => {
                if self.lcp.open() {
                    // The board started over (reboot, new session): so do we.
                    self.restart();
                    self.poll(now_ms, out);
                }
                let rejected = filter_options(data, |t, _| t != LCP_ACCM && t != LCP_MAGIC);
                if rejected.is_empty() {
                    control(LCP, CONF_ACK, id, data, &mut out.wire);
                    self.lcp.theirs_acked = true;
                } else {
                    control(LCP, CONF_REJ, id, &rejected, &mut out.wire);
                }
            }
            CONF_ACK if id == self.lcp.id => self.lcp.ours_acked = true,
            CONF_NAK | CONF_REJ => {
                // We ask for nothing, so there is nothing to give up; resend at once.
                self.lcp.sent_at = None;
            }
            TERM_REQ => {
                control(LCP, TERM_ACK, id, &[], &mut out.wire);
                self.restart();
            }
            ECHO_REQ if self.lcp.open() => {
                // Our magic number is 0 (none negotiated), then the request's data.
                let mut reply = vec![0, 0, 0, 0];
                reply.extend_from_slice(data.get(4..).unwrap_or(&[]));
                control(LCP, ECHO_REPLY, id, &reply, &mut out.wire);
            }
            _ => {}
        }
    }

    fn on_ipcp(&mut self, pkt: &[u8], out: &mut Output) {
        let Some((code, id, data)) = packet(pkt) else {
            return;
        };
        match code {
            CONF_REQ => {
                // Reject every option but the address (DNS servers: the host offers none);
                // then correct the address the board asked for, if it is not the one we assign.
                let rejected = filter_options(data, |t, _| t != IPCP_ADDRESS);
                let wrong_address =
                    filter_options(data, |t, v| t == IPCP_ADDRESS && v != self.board.octets());
                if !rejected.is_empty() {
                    control(IPCP, CONF_REJ, id, &rejected, &mut out.wire);
                } else if !wrong_address.is_empty() {
                    let mut nak = vec![IPCP_ADDRESS, 6];
                    nak.extend_from_slice(&self.board.octets());
                    control(IPCP, CONF_NAK, id, &nak, &mut out.wire);
                } else {
                    control(IPCP, CONF_ACK, id, data, &mut out.wire);
                    self.ipcp.theirs_acked = true;
                }
            }
            CONF_ACK if id == self.ipcp.id => self.ipcp.ours_acked = true,
            CONF_NAK | CONF_REJ => self.ipcp.sent_at = None,
            TERM_REQ => {
                control(IPCP, TERM_ACK, id, &[], &mut out.wire);
                self.ipcp = Negotiation::default();
            }
            _ => {}
        }
    }
}

/// Splits a control packet into (code, identifier, data), checking its length field.
fn packet(pkt: &[u8]) -> Option<(u8, u8, &[u8])> {
    let [code, id, hi, lo, ..] = *pkt else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len < 4 || len > pkt.len() {
        return None;
    }
    Some((code, id, &pkt[4..len]))
}

/// The options (type, length, value) for which `pick` holds, re-encoded; a malformed option
/// list yields everything left, so that it is rejected rather than half-read.
fn filter_options(data: &[u8], pick: impl Fn(u8, &[u8]) -> bool) -> Vec<u8> {
    let mut picked = Vec::new();
    let mut rest = data;
    while let [t, l, ..] = *rest {
        let l = usize::from(l);
        if l < 2 || l > rest.len() {
            picked.extend_from_slice(rest);
            break;
        }
        if pick(t, &rest[2..l]) {
            picked.extend_from_slice(&rest[..l]);
        }
        rest = &rest[l..];
    }
    picked
}

/// Appends a framed control packet.
fn control(protocol: u16, code: u8, id: u8, data: &[u8], wire: &mut Vec<u8>) {
    let len = (data.len() + 4) as u16;
    let mut pkt = vec![code, id];
    pkt.extend_from_slice(&len.to_be_bytes());
    pkt.extend_from_slice(data);
    hdlc::encode(protocol, &pkt, wire);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppproto::pppos::{PPPoS, PPPoSAction};

    const HOST: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
    const BOARD: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 2);

    /// The board's side: ppproto, the PPP client embassy-net-ppp runs on the firmware.
    struct Board {
        ppp: PPPoS<'static>,
        rx: [u8; 2048],
        tx: [u8; 2048],
    }

    impl Board {
        fn new() -> Self {
            let mut ppp = PPPoS::new(ppproto::Config {
                username: b"picolet",
                password: b"",
            });
            ppp.open().unwrap();
            Self {
                ppp,
                rx: [0; 2048],
                tx: [0; 2048],
            }
        }

        /// Feeds wire bytes to the board; returns what it sends back and IPv4 it received.
        fn exchange(&mut self, mut input: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
            let (mut wire, mut packets) = (Vec::new(), Vec::new());
            loop {
                let n = self.ppp.consume(input, &mut self.rx);
                input = &input[n..];
                match self.ppp.poll(&mut self.tx, &mut self.rx) {
                    PPPoSAction::None if input.is_empty() => return (wire, packets),
                    PPPoSAction::None => {}
                    PPPoSAction::Transmit(n) => wire.extend_from_slice(&self.tx[..n]),
                    PPPoSAction::Received(r) => packets.push(self.rx[r].to_vec()),
                }
            }
        }
    }

    /// Runs both ends against each other until quiet; returns the packets the board received.
    fn negotiate(host: &mut PppHost, board: &mut Board, mut now: u64) -> Vec<Vec<u8>> {
        let mut to_board = Vec::new();
        let mut received = Vec::new();
        for _ in 0..50 {
            let mut out = Output::default();
            host.poll(now, &mut out);
            to_board.extend(out.wire);
            let (from_board, packets) = board.exchange(&to_board);
            received.extend(packets);
            to_board.clear();
            let mut out = Output::default();
            host.receive(&from_board, now, &mut out);
            to_board.extend(out.wire);
            now += 100;
        }
        received
    }

    #[test]
    fn a_ppproto_board_gets_its_address_and_ipv4_flows_both_ways() {
        let mut host = PppHost::new(HOST, BOARD);
        let mut board = Board::new();
        negotiate(&mut host, &mut board, 0);
        assert!(host.is_up());
        let status = board.ppp.status();
        assert_eq!(status.phase, ppproto::Phase::Open);
        let ipv4 = status.ipv4.expect("IPCP up");
        assert_eq!(ipv4.address, Some(BOARD));
        assert_eq!(ipv4.peer_address, Some(HOST));
        assert_eq!(ipv4.dns_servers, [None, None]);

        let mut out = Output::default();
        host.send_ipv4(b"\x45to-the-board", &mut out);
        let (_, packets) = board.exchange(&out.wire);
        assert_eq!(packets, vec![b"\x45to-the-board".to_vec()]);

        let n = board.ppp.send(b"\x45to-the-host", &mut board.tx).unwrap();
        let mut out = Output::default();
        host.receive(&board.tx[..n], 0, &mut out);
        assert_eq!(out.packets, vec![b"\x45to-the-host".to_vec()]);
        assert_eq!(host.sessions, 1);
    }

    #[test]
    fn a_rebooted_board_negotiates_a_new_session() {
        let mut host = PppHost::new(HOST, BOARD);
        negotiate(&mut host, &mut Board::new(), 0);
        let mut rebooted = Board::new();
        negotiate(&mut host, &mut rebooted, 10_000);
        assert!(host.is_up());
        assert_eq!(rebooted.ppp.status().phase, ppproto::Phase::Open);
        assert_eq!(host.sessions, 2);
    }

    #[test]
    fn nothing_flows_before_negotiation_and_garbage_is_ignored() {
        let mut host = PppHost::new(HOST, BOARD);
        let mut out = Output::default();
        host.send_ipv4(b"\x45early", &mut out);
        assert!(out.wire.is_empty());
        let mut wire = Vec::new();
        hdlc::encode(IPV4, b"\x45early", &mut wire);
        hdlc::encode(LCP, &[CONF_REQ, 1, 0xff, 0xff], &mut wire); // length beyond the packet
        hdlc::encode(LCP, &[CONF_REQ, 2, 0, 6, 7, 0], &mut wire); // option with length 0
        wire.extend_from_slice(b"\x7e\x7d\x7d\x7e random line noise \x7e");
        host.receive(&wire, 0, &mut out);
        assert!(out.packets.is_empty());
        assert!(!host.is_up());
        // The malformed option list was rejected, not acknowledged.
        let mut frames = Vec::new();
        Decoder::default().feed(&out.wire, &mut frames);
        assert!(frames.iter().all(|f| f.info[0] != CONF_ACK));
    }

    #[test]
    fn random_frames_and_bytes_never_panic() {
        // xorshift: deterministic, so a failure reproduces.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut host = PppHost::new(HOST, BOARD);
        negotiate(&mut host, &mut Board::new(), 0);
        for round in 0..20_000u64 {
            let len = (next() % 64) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let protocol = [LCP, IPCP, IPV4, 0x8057, next() as u16][(next() % 5) as usize];
            let mut wire = Vec::new();
            if round % 3 == 0 {
                wire = body; // raw line noise
            } else {
                hdlc::encode(protocol, &body, &mut wire);
            }
            let mut out = Output::default();
            host.receive(&wire, round, &mut out);
            host.poll(round, &mut out);
            assert!(out.wire.len() < 8 * 1024, "output stays bounded");
        }
    }
}
