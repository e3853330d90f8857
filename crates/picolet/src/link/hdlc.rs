//! PPP's HDLC-like framing on a byte stream (RFC 1662): `0x7e` flags, `0x7d` escapes, FCS-16.
//!
//! Written here because the PPP crates on crates.io (ppproto) implement only the client side and
//! keep their framing private; this is the host end of the same link.

/// Frame delimiter.
const FLAG: u8 = 0x7e;
/// Escape: the next byte is XOR 0x20.
const ESCAPE: u8 = 0x7d;
/// The FCS-16 of a frame including its own FCS.
const GOOD_FCS: u16 = 0xf0b8;
/// Largest frame kept (1500-byte MTU plus header and FCS, with room to spare).
const MAX_FRAME: usize = 2048;

/// RFC 1662's FCS-16 (CRC-16/X.25 without the final inversion), bit by bit.
pub fn fcs16(mut fcs: u16, data: &[u8]) -> u16 {
    for &b in data {
        fcs ^= u16::from(b);
        for _ in 0..8 {
            fcs = if fcs & 1 != 0 {
                (fcs >> 1) ^ 0x8408
            } else {
                fcs >> 1
            };
        }
    }
    fcs
}

/// Appends one frame (address, control, protocol, information, FCS) to `out`, escaping the
/// flag, the escape byte and every control character (the default ACCM, which the host keeps).
pub fn encode(protocol: u16, info: &[u8], out: &mut Vec<u8>) {
    let header = [0xff, 0x03, (protocol >> 8) as u8, protocol as u8];
    let fcs = !fcs16(fcs16(0xffff, &header), info);
    out.push(FLAG);
    for &b in header.iter().chain(info).chain(&fcs.to_le_bytes()) {
        if b == FLAG || b == ESCAPE || b < 0x20 {
            out.extend_from_slice(&[ESCAPE, b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out.push(FLAG);
}

/// One received frame: its protocol and information field.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// PPP protocol number (0xc021 LCP, 0x8021 IPCP, 0x0021 IPv4 …).
    pub protocol: u16,
    /// The information field.
    pub info: Vec<u8>,
}

/// Turns a byte stream into frames; frames with a bad FCS or no room are dropped, as RFC 1662
/// says (the peer retransmits what matters).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    escaped: bool,
    overflow: bool,
}

impl Decoder {
    /// Feeds bytes; complete, valid frames go to `frames`.
    pub fn feed(&mut self, bytes: &[u8], frames: &mut Vec<Frame>) {
        for &b in bytes {
            match b {
                FLAG => {
                    if !self.overflow
                        && let Some(frame) = parse(&self.buf)
                    {
                        frames.push(frame);
                    }
                    self.buf.clear();
                    self.escaped = false;
                    self.overflow = false;
                }
                ESCAPE => self.escaped = true,
                _ if self.buf.len() >= MAX_FRAME => self.overflow = true,
                _ => {
                    self.buf.push(if self.escaped { b ^ 0x20 } else { b });
                    self.escaped = false;
                }
            }
        }
    }
}

/// Checks the FCS and strips address/control (possibly compressed away) and the protocol
/// (possibly compressed to one byte).
fn parse(raw: &[u8]) -> Option<Frame> {
    if raw.len() < 4 || fcs16(0xffff, raw) != GOOD_FCS {
        return None;
    }
    let body = &raw[..raw.len() - 2];
    let body = body.strip_prefix(&[0xff, 0x03]).unwrap_or(body);
    let (protocol, info) = match body {
        [p, rest @ ..] if p & 1 == 1 => (u16::from(*p), rest),
        [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
        _ => return None,
    };
    Some(Frame {
        protocol,
        info: info.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcs_matches_rfc_1662_check_value() {
        // CRC-16/X.25 of "123456789" is 0x906e (after the final inversion).
        assert_eq!(!fcs16(0xffff, b"123456789"), 0x906e);
    }

    #[test]
    fn frames_round_trip_through_escapes_and_split_reads() {
        let info = [0x7e, 0x7d, 0x00, 0x11, 0x41, 0xff];
        let mut wire = Vec::new();
        encode(0x0021, &info, &mut wire);
        encode(0xc021, b"\x09\x01\x00\x08abcd", &mut wire);
        assert!(
            !wire[1..wire.len() - 1].contains(&0x00),
            "control bytes are escaped"
        );
        let mut d = Decoder::default();
        let mut frames = Vec::new();
        for chunk in wire.chunks(3) {
            d.feed(chunk, &mut frames);
        }
        assert_eq!(
            frames,
            vec![
                Frame {
                    protocol: 0x0021,
                    info: info.to_vec()
                },
                Frame {
                    protocol: 0xc021,
                    info: b"\x09\x01\x00\x08abcd".to_vec()
                },
            ]
        );
    }

    #[test]
    fn corrupt_and_oversized_frames_are_dropped() {
        let mut wire = Vec::new();
        encode(0x0021, b"hello", &mut wire);
        wire[3] ^= 1;
        wire.push(FLAG);
        wire.extend(std::iter::repeat_n(0x41, MAX_FRAME + 10));
        wire.push(FLAG);
        encode(0x0021, b"ok", &mut wire);
        let mut frames = Vec::new();
        Decoder::default().feed(&wire, &mut frames);
        assert_eq!(
            frames,
            vec![Frame {
                protocol: 0x0021,
                info: b"ok".to_vec()
            }]
        );
    }
}
