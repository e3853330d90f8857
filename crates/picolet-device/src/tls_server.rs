//! picolet's TLS 1.3 server for the Pico's kubelet port: heap-free, one cipher suite, mutual TLS.
//!
//! Written here because nothing ready builds for the Cortex-M0+ (embedded-tls is a client;
//! rustls needs atomic compare-and-swap; mbedtls needs a C toolchain, a 14–26 KB heap and
//! 60 KB of flash of its own crypto — see the README's evaluation). It uses the RustCrypto
//! primitives the firmware already links for its TLS client (P-256, AES-128-GCM, SHA-256,
//! HKDF, HMAC), so its flash cost is the handshake logic only, and its RAM is two caller
//! buffers.
//!
//! What it speaks (RFC 8446), and nothing else:
//! - TLS 1.3 only, `TLS_AES_128_GCM_SHA256` (every TLS 1.3 client must offer it);
//! - key exchange on secp256r1; a client that only sent another key share (Go and OpenSSL send
//!   X25519 first) gets a HelloRetryRequest for secp256r1;
//! - the server certificate is ECDSA P-256 (the node's kubelet-serving certificate);
//! - with a client CA configured, a CertificateRequest: a client certificate, if sent, must be
//!   ECDSA P-256/SHA-256, issued directly by that CA, within its validity (when the time is
//!   known) and allowed for client authentication; its CN and O values are the caller's
//!   identity. A client without a certificate is anonymous (the kubelet port then serves only
//!   `/healthz`);
//! - KeyUpdate in both directions (RFC 8446 §4.6.3), rekeying in place;
//! - no session resumption, 0-RTT or renegotiation: a ClientHello offering early data gets a
//!   1-RTT handshake, and the 0-RTT records are skipped (up to [`EARLY_DATA_SKIP_MAX`] bytes,
//!   §4.2.10); anything else out of order ends the connection with the alert RFC 8446 names.
//!
//! A handshake message must fit in one record, and a record in the receive buffer; larger
//! input is refused with `record_overflow`. Every failure sends a fatal alert and returns an
//! error: nothing from the network can make it panic.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use embedded_io_async::{Read, Write};
use heapless::{String, Vec};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use picolet_core::pki;
use picolet_core::time::UnixSeconds;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// Record header (5) + content type (1) + AEAD tag (16): what a record adds to its data.
pub const RECORD_OVERHEAD: usize = 22;
/// Longest user or group name kept from a client certificate.
pub const NAME_MAX: usize = 96;
/// Most O values (groups) kept from a client certificate.
pub const GROUPS_MAX: usize = 4;
/// Most bytes of rejected 0-RTT records (headers included) skipped before the client's second
/// flight; more is `bad_record_mac` (RFC 8446 §4.2.10 calls the bound max_early_data_size).
pub const EARLY_DATA_SKIP_MAX: u16 = 8192;

/// What the server presents and whom it trusts.
pub struct ServerConfig<'a> {
    /// The serving certificate (DER), ECDSA P-256.
    pub cert_der: &'a [u8],
    /// Its key.
    pub key: &'a SigningKey,
    /// The CA client certificates must be issued by; `None`: no client certificates asked.
    pub client_ca_der: Option<&'a [u8]>,
    /// The Unix time now, for certificate validity; `None` before the clock is known.
    pub now_unix: Option<UnixSeconds>,
}

/// The caller, from its verified client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The CN.
    pub user: String<NAME_MAX>,
    /// The O values.
    pub groups: Vec<String<NAME_MAX>, GROUPS_MAX>,
}

/// Why a client certificate was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRefusal {
    /// Not parseable, or not signed with ECDSA P-256 / SHA-256.
    Malformed,
    /// Not issued by the client CA, or its signature does not verify.
    UnknownIssuer,
    /// Outside its validity.
    Expired,
    /// Its extended key usage does not allow client authentication.
    NotForClients,
    /// The CA is not a P-256 key (the device verifies only ECDSA P-256).
    UnsupportedCa,
    /// The CN or an O is longer than [`NAME_MAX`], or there are more than [`GROUPS_MAX`] O.
    IdentityTooLarge,
    /// The CertificateVerify signature is wrong.
    BadProof,
}

/// Why a connection ended without (or before) serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsServerError {
    /// The transport failed or closed.
    Io,
    /// A record larger than the receive buffer (or than TLS allows).
    RecordOverflow,
    /// Malformed input; `what` names it.
    Decode {
        /// What could not be read.
        what: &'static str,
    },
    /// Something this server does not do (another version, suite, group or signature).
    Unsupported {
        /// What was missing.
        what: &'static str,
    },
    /// A record or message that is not allowed at this point.
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// A field with a value RFC 8446 forbids.
    IllegalParameter {
        /// Which field.
        what: &'static str,
    },
    /// A ClientHello without an extension RFC 8446 requires (§9.2).
    MissingExtension {
        /// Which extension.
        what: &'static str,
    },
    /// A record did not decrypt (tampered, or the peer's keys differ).
    BadRecordMac,
    /// The client's Finished did not match the transcript.
    BadFinished,
    /// The client certificate was refused.
    ClientCertificate(CertificateRefusal),
    /// The peer sent a fatal alert with this code.
    PeerAlert(u8),
    /// The buffers are too small for the server's own certificate flight.
    BufferTooSmall,
}

impl core::fmt::Display for TlsServerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io => f.write_str("connection closed or failed"),
            Self::RecordOverflow => f.write_str("record larger than the receive buffer"),
            Self::Decode { what } => write!(f, "malformed {what}"),
            Self::Unsupported { what } => write!(f, "unsupported: {what}"),
            Self::Unexpected { what } => write!(f, "unexpected {what}"),
            Self::IllegalParameter { what } => write!(f, "illegal {what}"),
            Self::MissingExtension { what } => write!(f, "missing extension {what}"),
            Self::BadRecordMac => f.write_str("record failed authentication"),
            Self::BadFinished => f.write_str("client Finished does not match"),
            Self::ClientCertificate(r) => write!(f, "client certificate refused: {r:?}"),
            Self::PeerAlert(a) => write!(f, "peer sent alert {a}"),
            Self::BufferTooSmall => f.write_str("buffers too small for the certificate"),
        }
    }
}

impl core::error::Error for TlsServerError {}

impl TlsServerError {
    /// The alert this error is answered with.
    fn alert(self) -> Option<u8> {
        Some(match self {
            Self::Io | Self::PeerAlert(_) => return None,
            Self::RecordOverflow => 22,
            Self::Decode { .. } => 50,
            Self::Unsupported { what: NOT_TLS13 } => 70,
            Self::Unsupported { .. } => 40,
            Self::Unexpected { .. } => 10,
            Self::IllegalParameter { .. } => 47,
            Self::MissingExtension { .. } => 109,
            Self::BadRecordMac => 20,
            Self::BadFinished => 51,
            Self::BufferTooSmall => 80,
            Self::ClientCertificate(r) => match r {
                CertificateRefusal::Malformed => 42,
                CertificateRefusal::UnknownIssuer => 48,
                CertificateRefusal::Expired => 45,
                CertificateRefusal::NotForClients | CertificateRefusal::UnsupportedCa => 43,
                CertificateRefusal::IdentityTooLarge => 42,
                CertificateRefusal::BadProof => 51,
            },
        })
    }
}

type Result<T> = core::result::Result<T, TlsServerError>;

fn decode(what: &'static str) -> TlsServerError {
    TlsServerError::Decode { what }
}

fn unexpected(what: &'static str) -> TlsServerError {
    TlsServerError::Unexpected { what }
}

fn illegal(what: &'static str) -> TlsServerError {
    TlsServerError::IllegalParameter { what }
}

/// `Unsupported { what: NOT_TLS13 }`: the client does not speak TLS 1.3 (`protocol_version`).
const NOT_TLS13: &str = "TLS 1.3";

/// An alert's body: exactly level and description (RFC 8446 §6).
fn peer_alert(body: &[u8]) -> TlsServerError {
    match body {
        [_, code] => TlsServerError::PeerAlert(*code),
        _ => decode("alert"),
    }
}

const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;
const TLS13: u16 = 0x0304;
const AES_128_GCM_SHA256: u16 = 0x1301;
const SECP256R1: u16 = 23;
const ECDSA_P256_SHA256: u16 = 0x0403;
/// SHA-256("HelloRetryRequest"), the ServerHello random that marks a HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// A cursor over received bytes; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], what: &'static str) -> Self {
        Self { b, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() {
            return Err(decode(self.what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Result<usize> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
    fn vec8(&mut self) -> Result<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn vec24(&mut self) -> Result<&'a [u8]> {
        let n = self.u24()?;
        self.take(n)
    }
    fn done(&self) -> bool {
        self.b.is_empty()
    }
}

/// A bounded writer into a caller buffer.
struct Out<'a> {
    b: &'a mut [u8],
    n: usize,
}

impl Out<'_> {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        let end = self.n + data.len();
        self.b
            .get_mut(self.n..end)
            .ok_or(TlsServerError::BufferTooSmall)?
            .copy_from_slice(data);
        self.n = end;
        Ok(())
    }
    fn u16(&mut self, v: u16) -> Result<()> {
        self.put(&v.to_be_bytes())
    }
    fn u24(&mut self, v: usize) -> Result<()> {
        self.put(&[(v >> 16) as u8, (v >> 8) as u8, v as u8])
    }
    /// A handshake message: type, 24-bit length, then `body`.
    fn message(&mut self, kind: u8, body: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        self.put(&[kind, 0, 0, 0])?;
        let start = self.n;
        body(self)?;
        let len = self.n - start;
        self.b[start - 3..start].copy_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8]);
        Ok(())
    }
}

fn hkdf_expand_label(secret: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    let mut info: Vec<u8, 96> = Vec::new();
    let _ = info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    let _ = info.push((6 + label.len()) as u8);
    let _ = info.extend_from_slice(b"tls13 ");
    let _ = info.extend_from_slice(label);
    let _ = info.push(context.len() as u8);
    let _ = info.extend_from_slice(context);
    // The secrets are always 32 bytes (SHA-256): from_prk cannot fail, nor expand (≤ 32 bytes).
    if let Ok(h) = Hkdf::<Sha256>::from_prk(secret) {
        let _ = h.expand(&info, out);
    }
}

fn derive_secret(secret: &[u8], label: &[u8], hash: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf_expand_label(secret, label, hash, &mut out);
    out
}

fn extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    prk.into()
}

fn finished_mac(base_secret: &[u8], transcript: &[u8; 32]) -> Hmac<Sha256> {
    let mut key = [0u8; 32];
    hkdf_expand_label(base_secret, b"finished", b"", &mut key);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(transcript);
    mac
}

/// The AEAD state of one direction, and its traffic secret (for KeyUpdate).
struct TrafficKeys {
    aead: Aes128Gcm,
    iv: [u8; 12],
    seq: u64,
    secret: [u8; 32],
}

impl TrafficKeys {
    fn new(secret: &[u8; 32]) -> Self {
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        hkdf_expand_label(secret, b"key", b"", &mut key);
        hkdf_expand_label(secret, b"iv", b"", &mut iv);
        Self {
            aead: Aes128Gcm::new(&key.into()),
            iv,
            seq: 0,
            secret: *secret,
        }
    }

    /// The next generation of this direction's keys (RFC 8446 §7.2), in place.
    fn update(&mut self) {
        let mut next = [0u8; 32];
        hkdf_expand_label(&self.secret, b"traffic upd", b"", &mut next);
        *self = Self::new(&next);
    }

    /// The nonce of the current record; `seq` moves on only once the record is used.
    fn nonce(&self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

fn transcript_hash(t: &Sha256) -> [u8; 32] {
    t.clone().finalize().into()
}

/// A TLS record transport over a socket with caller buffers.
struct Records<'b, S> {
    socket: S,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    /// A plaintext ChangeCipherSpec is dropped (between ClientHello and the client's Finished).
    ccs_ok: bool,
    /// Bytes of undecryptable (rejected 0-RTT) records that may still be skipped.
    early_skip: u16,
}

impl<S: Read + Write> Records<'_, S> {
    async fn read_exact(&mut self, range: core::ops::Range<usize>) -> Result<()> {
        let mut at = range.start;
        while at < range.end {
            match self.socket.read(&mut self.rx[at..range.end]).await {
                Ok(0) | Err(_) => return Err(TlsServerError::Io),
                Ok(n) => at += n,
            }
        }
        Ok(())
    }

    /// Reads one record into `rx`; returns its type and length (the body is at `rx[5..]`).
    async fn read_record(&mut self) -> Result<(u8, usize)> {
        if self.rx.len() < 5 {
            return Err(TlsServerError::BufferTooSmall);
        }
        self.read_exact(0..5).await?;
        let kind = self.rx[0];
        let len = usize::from(u16::from_be_bytes([self.rx[3], self.rx[4]]));
        if !matches!(
            kind,
            HANDSHAKE | APPLICATION_DATA | ALERT | CHANGE_CIPHER_SPEC
        ) {
            // Not a TLS content type (plain HTTP, say): §5 says unexpected_message.
            return Err(unexpected("record type"));
        }
        if len > 16_384 + 256 || 5 + len > self.rx.len() {
            return Err(TlsServerError::RecordOverflow);
        }
        self.read_exact(5..5 + len).await?;
        Ok((kind, len))
    }

    /// Reads a record, decrypting it with `keys` when given. Returns the content type
    /// (handshake or application data) and the plaintext range in `rx`. A plaintext
    /// ChangeCipherSpec is dropped while `ccs_ok` (middlebox compatibility); rejected 0-RTT
    /// records are skipped while `early_skip` lasts; alerts end the connection.
    async fn read_content(
        &mut self,
        keys: Option<&mut TrafficKeys>,
    ) -> Result<(u8, core::ops::Range<usize>)> {
        let mut keys = keys;
        loop {
            let (kind, len) = self.read_record().await?;
            match kind {
                CHANGE_CIPHER_SPEC if self.ccs_ok && len == 1 && self.rx[5] == 1 => continue,
                CHANGE_CIPHER_SPEC => return Err(unexpected("change_cipher_spec")),
                ALERT => return Err(peer_alert(&self.rx[5..5 + len])),
                _ => {}
            }
            let Some(k) = keys.as_deref_mut() else {
                if kind == HANDSHAKE {
                    return Ok((HANDSHAKE, 5..5 + len));
                }
                // Before keys, only 0-RTT data (after a HelloRetryRequest) is protected.
                if self.early_skip == 0 {
                    return Err(unexpected("application data in the handshake"));
                }
                self.skip_early(len)?;
                continue;
            };
            if kind != APPLICATION_DATA {
                return Err(unexpected("plaintext record after keys"));
            }
            let opened = len >= 17 && {
                let header = [self.rx[0], self.rx[1], self.rx[2], self.rx[3], self.rx[4]];
                let (body, tag) = self.rx[5..5 + len].split_at_mut(len - 16);
                let tag = Tag::clone_from_slice(tag);
                k.aead
                    .decrypt_in_place_detached(Nonce::from_slice(&k.nonce()), &header, body, &tag)
                    .is_ok()
            };
            if !opened {
                // Rejected 0-RTT data, encrypted with keys this server never derived.
                self.skip_early(len)?;
                continue;
            }
            k.seq += 1;
            self.early_skip = 0;
            // The inner content type is the last non-zero byte.
            let body = &self.rx[5..5 + len - 16];
            let end = body
                .iter()
                .rposition(|&b| b != 0)
                .ok_or(unexpected("record without a content type"))?;
            return match body[end] {
                ALERT => Err(peer_alert(&body[..end])),
                HANDSHAKE if end == 0 => Err(decode("empty handshake record")),
                inner @ (HANDSHAKE | APPLICATION_DATA) => Ok((inner, 5..5 + end)),
                _ => Err(unexpected("content type")),
            };
        }
    }

    /// Counts a skipped 0-RTT record of `len` against `early_skip`; past it, `bad_record_mac`.
    fn skip_early(&mut self, len: usize) -> Result<()> {
        self.early_skip = self
            .early_skip
            .checked_sub((5 + len) as u16)
            .ok_or(TlsServerError::BadRecordMac)?;
        Ok(())
    }

    /// Sends `data` as plaintext records of `kind` (before keys exist).
    async fn send_plain(&mut self, kind: u8, data: core::ops::Range<usize>) -> Result<()> {
        let len = data.len();
        if 5 + len > self.tx.len() {
            return Err(TlsServerError::BufferTooSmall);
        }
        self.tx.copy_within(data, 5);
        self.tx[..5].copy_from_slice(&[kind, 3, 3, (len >> 8) as u8, len as u8]);
        self.socket
            .write_all(&self.tx[..5 + len])
            .await
            .map_err(|_| TlsServerError::Io)
    }

    /// Encrypts `tx[5..5 + len]` (already in place) as one record of inner type `kind`.
    async fn send_sealed(&mut self, keys: &mut TrafficKeys, kind: u8, len: usize) -> Result<()> {
        if 5 + len + 1 + 16 > self.tx.len() {
            return Err(TlsServerError::BufferTooSmall);
        }
        self.tx[5 + len] = kind;
        let body_len = len + 1;
        let total = body_len + 16;
        let header = [APPLICATION_DATA, 3, 3, (total >> 8) as u8, total as u8];
        self.tx[..5].copy_from_slice(&header);
        let nonce = keys.nonce();
        keys.seq += 1;
        let tag = keys
            .aead
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &header,
                &mut self.tx[5..5 + body_len],
            )
            .map_err(|_| TlsServerError::BufferTooSmall)?;
        self.tx[5 + body_len..5 + total].copy_from_slice(&tag);
        self.socket
            .write_all(&self.tx[..5 + total])
            .await
            .map_err(|_| TlsServerError::Io)
    }

    /// Sends an alert: close_notify (0) as a warning, everything else fatal.
    async fn alert(&mut self, keys: Option<&mut TrafficKeys>, code: u8) {
        let level = if code == 0 { 1 } else { 2 };
        match keys {
            Some(k) if self.tx.len() >= 5 + 2 + 1 + 16 => {
                self.tx[5] = level;
                self.tx[6] = code;
                let _ = self.send_sealed(k, ALERT, 2).await;
            }
            _ if self.tx.len() >= 7 => {
                self.tx[0] = level;
                self.tx[1] = code;
                let _ = self.send_plain(ALERT, 0..2).await;
            }
            _ => {}
        }
        let _ = self.socket.flush().await;
    }
}

/// What the server takes from a ClientHello.
struct Hello {
    session_id: Vec<u8, 32>,
    /// The client's secp256r1 key share, when it sent one.
    p256_share: Option<[u8; 65]>,
    /// It offers 0-RTT data (which this server rejects, and skips).
    early_data: bool,
}

fn parse_client_hello(body: &[u8]) -> Result<Hello> {
    let mut r = Reader::new(body, "ClientHello");
    // SSL 3.0 or older (RFC 8446 Appendix D.5).
    if r.u16()? <= 0x0300 {
        return Err(TlsServerError::Unsupported { what: NOT_TLS13 });
    }
    r.take(32)?;
    let sid = r.vec8()?;
    let session_id = Vec::from_slice(sid).map_err(|_| decode("session id"))?;
    let suites = r.vec16()?;
    if !suites
        .chunks_exact(2)
        .any(|c| u16::from_be_bytes([c[0], c[1]]) == AES_128_GCM_SHA256)
    {
        return Err(TlsServerError::Unsupported {
            what: "cipher suite TLS_AES_128_GCM_SHA256",
        });
    }
    let null_compression = r.vec8()? == [0];
    // No extensions at all: a client from before TLS 1.3.
    let mut exts = Reader::new(if r.done() { &[] } else { r.vec16()? }, "extensions");
    if !r.done() {
        return Err(decode("ClientHello"));
    }
    let (mut tls13, mut p256_group, mut ecdsa, mut p256_share) = (false, false, false, None);
    // Which of supported_groups, signature_algorithms and key_share are there (§9.2).
    let (mut groups, mut algorithms, mut key_share, mut early_data) = (false, false, false, false);
    while !exts.done() {
        let kind = exts.u16()?;
        let mut data = Reader::new(exts.vec16()?, "extension");
        match kind {
            43 => {
                let mut v = Reader::new(data.vec8()?, "supported_versions");
                while !v.done() {
                    tls13 |= v.u16()? == TLS13;
                }
            }
            10 => {
                groups = true;
                let mut g = Reader::new(data.vec16()?, "supported_groups");
                while !g.done() {
                    p256_group |= g.u16()? == SECP256R1;
                }
            }
            13 => {
                algorithms = true;
                let mut s = Reader::new(data.vec16()?, "signature_algorithms");
                while !s.done() {
                    ecdsa |= s.u16()? == ECDSA_P256_SHA256;
                }
            }
            51 => {
                key_share = true;
                let mut shares = Reader::new(data.vec16()?, "key_share");
                while !shares.done() {
                    let group = shares.u16()?;
                    let key = shares.vec16()?;
                    if group == SECP256R1 {
                        // One uncompressed point (§4.2.8.2), once; on the curve is checked
                        // when it is used.
                        if key.len() != 65 || key[0] != 4 || p256_share.is_some() {
                            return Err(illegal("secp256r1 key share"));
                        }
                        let mut k = [0u8; 65];
                        k.copy_from_slice(key);
                        p256_share = Some(k);
                    }
                }
            }
            42 => early_data = true,
            _ => {}
        }
    }
    if !tls13 {
        return Err(TlsServerError::Unsupported { what: NOT_TLS13 });
    }
    if !null_compression {
        return Err(illegal("compression methods"));
    }
    // Without pre_shared_key (never accepted here) both are required, and key_share with
    // supported_groups.
    for (present, what) in [
        (groups, "supported_groups"),
        (algorithms, "signature_algorithms"),
        (key_share, "key_share"),
    ] {
        if !present {
            return Err(TlsServerError::MissingExtension { what });
        }
    }
    if !p256_group {
        return Err(TlsServerError::Unsupported {
            what: "key exchange group secp256r1",
        });
    }
    if !ecdsa {
        return Err(TlsServerError::Unsupported {
            what: "signature scheme ecdsa_secp256r1_sha256",
        });
    }
    Ok(Hello {
        session_id,
        p256_share,
        early_data,
    })
}

/// Checks a client certificate against the client CA and takes the identity from it.
pub fn verify_client_certificate(
    leaf_der: &[u8],
    ca_der: &[u8],
    now_unix: Option<UnixSeconds>,
) -> core::result::Result<(ClientIdentity, [u8; 65]), CertificateRefusal> {
    use CertificateRefusal as R;
    // picolet's own reader (`picolet_core::pki`): `der` + `spki` measured +10.1 KiB of flash.
    let leaf = pki::parse_certificate(leaf_der).map_err(|_| R::Malformed)?;
    let ca = pki::parse_certificate(ca_der).map_err(|_| R::UnsupportedCa)?;
    if ca.info.public_key.len() != 65 || ca.info.public_key[0] != 4 {
        return Err(R::UnsupportedCa);
    }
    if !leaf.signed_with_ecdsa_sha256 || leaf.info.public_key.len() != 65 {
        return Err(R::Malformed);
    }
    if leaf.issuer != ca.subject {
        return Err(R::UnknownIssuer);
    }
    let ca_key = VerifyingKey::from_sec1_bytes(ca.info.public_key).map_err(|_| R::UnsupportedCa)?;
    let sig = Signature::from_der(leaf.signature).map_err(|_| R::Malformed)?;
    ca_key
        .verify(leaf.tbs, &sig)
        .map_err(|_| R::UnknownIssuer)?;
    if let Some(now) = now_unix
        && (now < leaf.info.not_before || now > leaf.info.not_after)
    {
        return Err(R::Expired);
    }
    if leaf.client_auth == Some(false) {
        return Err(R::NotForClients);
    }
    let mut id = ClientIdentity::default();
    let cn = pki::name_values(leaf.subject, pki::OID_COMMON_NAME)
        .next()
        .ok_or(R::Malformed)?;
    id.user = String::try_from(cn).map_err(|_| R::IdentityTooLarge)?;
    for o in pki::name_values(leaf.subject, pki::OID_ORGANIZATION) {
        let g = String::try_from(o).map_err(|_| R::IdentityTooLarge)?;
        id.groups.push(g).map_err(|_| R::IdentityTooLarge)?;
    }
    let mut key = [0u8; 65];
    key.copy_from_slice(leaf.info.public_key);
    Ok((id, key))
}

fn certificate_verify_content(server: bool, hash: &[u8; 32]) -> [u8; 130] {
    let mut c = [0x20u8; 130];
    let label: &[u8; 33] = if server {
        b"TLS 1.3, server CertificateVerify"
    } else {
        b"TLS 1.3, client CertificateVerify"
    };
    c[64..97].copy_from_slice(label);
    c[97] = 0;
    c[98..].copy_from_slice(hash);
    c
}

/// An established connection: read requests, write answers.
pub struct TlsServerConnection<'b, S> {
    records: Records<'b, S>,
    read_keys: TrafficKeys,
    write_keys: TrafficKeys,
    /// Decrypted application data not yet read: `rx[pending]`.
    pending: core::ops::Range<usize>,
    peer: Option<ClientIdentity>,
    closed: bool,
}

/// Runs the server side of a handshake on `socket`. `rx` must hold the largest record a
/// client sends (4 KiB is plenty for the kubelet port's clients), `tx` the server's certificate
/// flight (its certificate plus about 300 bytes).
pub async fn accept<'b, S: Read + Write>(
    socket: S,
    config: &ServerConfig<'_>,
    rng: &mut impl CryptoRngCore,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
) -> Result<TlsServerConnection<'b, S>> {
    let mut records = Records {
        socket,
        rx,
        tx,
        ccs_ok: false,
        early_skip: 0,
    };
    let mut keys: Option<TrafficKeys> = None;
    match handshake(&mut records, config, rng, &mut keys).await {
        Ok(done) => Ok(TlsServerConnection {
            records,
            read_keys: done.read_keys,
            write_keys: done.write_keys,
            pending: 0..0,
            peer: done.peer,
            closed: false,
        }),
        Err(e) => {
            if let Some(code) = e.alert() {
                records.alert(keys.as_mut(), code).await;
            }
            Err(e)
        }
    }
}

/// What a completed handshake leaves.
struct Established {
    read_keys: TrafficKeys,
    write_keys: TrafficKeys,
    peer: Option<ClientIdentity>,
}

/// A ServerHello (or, with [`HRR_RANDOM`] and no key, a HelloRetryRequest for secp256r1).
fn server_hello(
    o: &mut Out<'_>,
    random: &[u8; 32],
    session_id: &[u8],
    key: Option<&[u8; 65]>,
) -> Result<()> {
    o.message(2, |o| {
        o.u16(0x0303)?;
        o.put(random)?;
        o.put(&[session_id.len() as u8])?;
        o.put(session_id)?;
        o.u16(AES_128_GCM_SHA256)?;
        o.put(&[0])?;
        let ext_len = 6 + match key {
            Some(_) => 4 + 2 + 2 + 65,
            None => 4 + 2,
        };
        o.u16(ext_len as u16)?;
        o.put(&[0, 43, 0, 2])?;
        o.u16(TLS13)?;
        match key {
            Some(k) => {
                o.put(&[0, 51])?;
                o.u16(2 + 2 + 65)?;
                o.u16(SECP256R1)?;
                o.u16(65)?;
                o.put(k)
            }
            None => {
                o.put(&[0, 51, 0, 2])?;
                o.u16(SECP256R1)
            }
        }
    })
}

async fn read_handshake_plain<S: Read + Write>(
    records: &mut Records<'_, S>,
    want: u8,
) -> Result<core::ops::Range<usize>> {
    let (_, range) = records.read_content(None).await?;
    let body = &records.rx[range.clone()];
    let mut r = Reader::new(body, "handshake message");
    let kind = r.u8()?;
    let len = r.u24()?;
    if len + 4 != body.len() {
        return Err(decode("handshake message (one per record expected here)"));
    }
    if kind != want {
        return Err(unexpected("handshake message"));
    }
    Ok(range)
}

async fn handshake<S: Read + Write>(
    records: &mut Records<'_, S>,
    config: &ServerConfig<'_>,
    rng: &mut impl CryptoRngCore,
    sealed: &mut Option<TrafficKeys>,
) -> Result<Established> {
    let mut transcript = Sha256::new();
    // ClientHello, and a HelloRetryRequest when it has no secp256r1 key share.
    let range = read_handshake_plain(records, 1).await?;
    let mut hello = parse_client_hello(&records.rx[range.start + 4..range.end])?;
    transcript.update(&records.rx[range.clone()]);
    records.ccs_ok = true;
    // 0-RTT is always rejected: its records are skipped (§4.2.10).
    if hello.early_data {
        records.early_skip = EARLY_DATA_SKIP_MAX;
    }
    let mut sent_ccs = false;
    let client_share = match hello.p256_share {
        Some(share) => share,
        None => {
            let ch1: [u8; 32] = transcript.finalize_reset().into();
            transcript.update([254, 0, 0, 32]);
            transcript.update(ch1);
            let n = {
                let mut o = Out {
                    b: &mut records.tx[5..],
                    n: 0,
                };
                server_hello(&mut o, &HRR_RANDOM, &hello.session_id, None)?;
                o.n
            };
            transcript.update(&records.tx[5..5 + n]);
            records.tx.copy_within(5..5 + n, 0);
            records.send_plain(HANDSHAKE, 0..n).await?;
            if !hello.session_id.is_empty() {
                records.tx[0] = 1;
                records.send_plain(CHANGE_CIPHER_SPEC, 0..1).await?;
                sent_ccs = true;
            }
            let range = read_handshake_plain(records, 1).await?;
            let again = parse_client_hello(&records.rx[range.start + 4..range.end])?;
            transcript.update(&records.rx[range.clone()]);
            // All 0-RTT data came before the second ClientHello, which may not offer more.
            records.early_skip = 0;
            if again.early_data {
                return Err(illegal("early_data after HelloRetryRequest"));
            }
            hello.session_id = again.session_id;
            again
                .p256_share
                .ok_or(illegal("a secp256r1 key share after HelloRetryRequest"))?
        }
    };

    // ServerHello with our share; the shared secret.
    let ours = p256::ecdh::EphemeralSecret::random(rng);
    let our_point = p256::EncodedPoint::from(ours.public_key());
    let their_key = p256::PublicKey::from_sec1_bytes(&client_share)
        .map_err(|_| illegal("secp256r1 key share (not on the curve)"))?;
    let shared = ours.diffie_hellman(&their_key);
    let mut random = [0u8; 32];
    rng.fill_bytes(&mut random);
    let n = {
        let mut o = Out {
            b: &mut records.tx[5..],
            n: 0,
        };
        let mut point = [0u8; 65];
        point.copy_from_slice(our_point.as_bytes());
        server_hello(&mut o, &random, &hello.session_id, Some(&point))?;
        o.n
    };
    transcript.update(&records.tx[5..5 + n]);
    records.tx.copy_within(5..5 + n, 0);
    records.send_plain(HANDSHAKE, 0..n).await?;
    if !hello.session_id.is_empty() && !sent_ccs {
        records.tx[0] = 1;
        records.send_plain(CHANGE_CIPHER_SPEC, 0..1).await?;
    }

    // Handshake secrets.
    let empty: [u8; 32] = Sha256::digest(b"").into();
    let early = extract(&[0u8; 32], &[0u8; 32]);
    let hs = extract(
        &derive_secret(&early, b"derived", &empty),
        shared.raw_secret_bytes(),
    );
    let h = transcript_hash(&transcript);
    let c_hs = derive_secret(&hs, b"c hs traffic", &h);
    let s_hs = derive_secret(&hs, b"s hs traffic", &h);
    let master = extract(&derive_secret(&hs, b"derived", &empty), &[0u8; 32]);
    let mut server_keys = TrafficKeys::new(&s_hs);
    let mut client_keys = TrafficKeys::new(&c_hs);

    // EncryptedExtensions, CertificateRequest, Certificate, CertificateVerify, Finished: one
    // record, the messages hashed as they are written.
    let n = {
        let mut o = Out {
            b: &mut records.tx[5..],
            n: 0,
        };
        let avail = o.b.len().saturating_sub(17);
        o.b = &mut o.b[..avail];
        let mut mark = 0;
        o.message(8, |o| o.u16(0))?;
        if config.client_ca_der.is_some() {
            o.message(13, |o| {
                o.put(&[0])?;
                o.put(&[0, 8, 0, 13, 0, 4, 0, 2])?;
                o.u16(ECDSA_P256_SHA256)
            })?;
        }
        o.message(11, |o| {
            o.put(&[0])?;
            o.u24(config.cert_der.len() + 5)?;
            o.u24(config.cert_der.len())?;
            o.put(config.cert_der)?;
            o.u16(0)
        })?;
        transcript.update(&o.b[mark..o.n]);
        mark = o.n;
        let content = certificate_verify_content(true, &transcript_hash(&transcript));
        let sig: Signature = config.key.sign(&content);
        let der = sig.to_der();
        o.message(15, |o| {
            o.u16(ECDSA_P256_SHA256)?;
            o.u16(der.as_bytes().len() as u16)?;
            o.put(der.as_bytes())
        })?;
        transcript.update(&o.b[mark..o.n]);
        mark = o.n;
        let verify = finished_mac(&s_hs, &transcript_hash(&transcript)).finalize();
        o.message(20, |o| o.put(&verify.into_bytes()))?;
        transcript.update(&o.b[mark..o.n]);
        o.n
    };
    records.send_sealed(&mut server_keys, HANDSHAKE, n).await?;
    let h_server_finished = transcript_hash(&transcript);
    let c_ap = derive_secret(&master, b"c ap traffic", &h_server_finished);
    let s_ap = derive_secret(&master, b"s ap traffic", &h_server_finished);
    // After its Finished the server writes with its application keys: alerts included.
    *sealed = Some(TrafficKeys::new(&s_ap));

    // The client's flight: [Certificate, CertificateVerify,] Finished.
    let mut peer = None;
    let mut peer_key: Option<[u8; 65]> = None;
    let mut expect = if config.client_ca_der.is_some() {
        11
    } else {
        20
    };
    loop {
        let (kind, range) = records.read_content(Some(&mut client_keys)).await?;
        if kind != HANDSHAKE {
            return Err(unexpected("application data before the client Finished"));
        }
        let mut msgs = Reader::new(&records.rx[range.clone()], "client handshake flight");
        let mut offset = range.start;
        while !msgs.done() {
            let kind = msgs.u8()?;
            let body = msgs.vec24()?;
            let whole = offset..offset + 4 + body.len();
            offset = whole.end;
            if kind != expect {
                return Err(unexpected("client handshake message"));
            }
            match kind {
                11 => {
                    let mut r = Reader::new(body, "client Certificate");
                    if !r.vec8()?.is_empty() {
                        return Err(decode("certificate request context"));
                    }
                    let mut list = Reader::new(r.vec24()?, "certificate list");
                    if list.done() {
                        expect = 20;
                    } else {
                        let leaf = list.vec24()?;
                        let ca = config.client_ca_der.unwrap_or(&[]);
                        let (id, key) = verify_client_certificate(leaf, ca, config.now_unix)
                            .map_err(TlsServerError::ClientCertificate)?;
                        peer = Some(id);
                        peer_key = Some(key);
                        expect = 15;
                    }
                    transcript.update(&records.rx[whole]);
                }
                15 => {
                    let mut r = Reader::new(body, "client CertificateVerify");
                    if r.u16()? != ECDSA_P256_SHA256 {
                        return Err(TlsServerError::Unsupported {
                            what: "client signature scheme",
                        });
                    }
                    let sig = Signature::from_der(r.vec16()?).map_err(|_| {
                        TlsServerError::ClientCertificate(CertificateRefusal::BadProof)
                    })?;
                    let key = peer_key
                        .and_then(|k| VerifyingKey::from_sec1_bytes(&k).ok())
                        .ok_or(decode("client key"))?;
                    let content = certificate_verify_content(false, &transcript_hash(&transcript));
                    key.verify(&content, &sig).map_err(|_| {
                        TlsServerError::ClientCertificate(CertificateRefusal::BadProof)
                    })?;
                    transcript.update(&records.rx[whole]);
                    expect = 20;
                }
                _ => {
                    if body.len() != 32 {
                        return Err(decode("client Finished"));
                    }
                    finished_mac(&c_hs, &transcript_hash(&transcript))
                        .verify_slice(body)
                        .map_err(|_| TlsServerError::BadFinished)?;
                    // A key change follows: nothing may share its record (§5.1).
                    if !msgs.done() {
                        return Err(unexpected("data after client Finished"));
                    }
                    records.ccs_ok = false;
                    return Ok(Established {
                        read_keys: TrafficKeys::new(&c_ap),
                        write_keys: sealed.take().unwrap_or_else(|| TrafficKeys::new(&s_ap)),
                        peer,
                    });
                }
            }
        }
    }
}

impl embedded_io_async::Error for TlsServerError {
    fn kind(&self) -> embedded_io_async::ErrorKind {
        match self {
            Self::Io => embedded_io_async::ErrorKind::BrokenPipe,
            Self::BufferTooSmall => embedded_io_async::ErrorKind::OutOfMemory,
            Self::Unsupported { .. } => embedded_io_async::ErrorKind::Unsupported,
            _ => embedded_io_async::ErrorKind::InvalidData,
        }
    }
}

impl<S> embedded_io_async::ErrorType for TlsServerConnection<'_, S> {
    type Error = TlsServerError;
}

/// An established connection is an ordinary byte stream.
impl<S: Read + Write> Read for TlsServerConnection<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        TlsServerConnection::read(self, buf).await
    }
}

impl<S: Read + Write> Write for TlsServerConnection<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize> {
        self.write_all(buf).await.map(|()| buf.len())
    }

    async fn flush(&mut self) -> Result<()> {
        self.records
            .socket
            .flush()
            .await
            .map_err(|_| TlsServerError::Io)
    }
}

impl<S: Read + Write> TlsServerConnection<'_, S> {
    /// The caller's identity from its client certificate; `None`: anonymous.
    pub fn peer(&self) -> Option<&ClientIdentity> {
        self.peer.as_ref()
    }

    /// Reads application data; `Ok(0)` once the client closed (close_notify or EOF).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        while self.pending.is_empty() {
            if self.closed {
                return Ok(0);
            }
            match self.next_record().await {
                Ok(()) => {}
                Err(TlsServerError::PeerAlert(0)) | Err(TlsServerError::Io) => {
                    self.closed = true;
                    return Ok(0);
                }
                Err(e) => {
                    if let Some(code) = e.alert() {
                        self.records.alert(Some(&mut self.write_keys), code).await;
                    }
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.records.rx[self.pending.start..self.pending.start + n]);
        self.pending.start += n;
        Ok(n)
    }

    /// Reads one record: application data becomes `pending`; the only handshake message a
    /// client may send now, KeyUpdate (RFC 8446 §4.6.3), rekeys in place.
    async fn next_record(&mut self) -> Result<()> {
        let (kind, range) = self.records.read_content(Some(&mut self.read_keys)).await?;
        if kind == APPLICATION_DATA {
            self.pending = range;
            return Ok(());
        }
        let mut r = Reader::new(&self.records.rx[range], "KeyUpdate");
        let (msg, body) = (r.u8()?, r.vec24()?);
        if msg != 24 {
            return Err(unexpected("post-handshake message"));
        }
        if !r.done() {
            return Err(unexpected("data after KeyUpdate"));
        }
        let requested = match body {
            [0] => false,
            [1] => true,
            [_] => return Err(illegal("KeyUpdate request_update")),
            _ => return Err(decode("KeyUpdate")),
        };
        self.read_keys.update();
        if requested {
            // Ours, update_not_requested, under the old keys; then the new ones.
            self.records
                .tx
                .get_mut(5..10)
                .ok_or(TlsServerError::BufferTooSmall)?
                .copy_from_slice(&[24, 0, 0, 1, 0]);
            self.records
                .send_sealed(&mut self.write_keys, HANDSHAKE, 5)
                .await?;
            self.write_keys.update();
        }
        Ok(())
    }

    /// Writes all of `data`, in records as large as the send buffer allows.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let room = self.records.tx.len().saturating_sub(RECORD_OVERHEAD);
        if room == 0 {
            return Err(TlsServerError::BufferTooSmall);
        }
        for chunk in data.chunks(room) {
            self.records.tx[5..5 + chunk.len()].copy_from_slice(chunk);
            self.records
                .send_sealed(&mut self.write_keys, APPLICATION_DATA, chunk.len())
                .await?;
        }
        Ok(())
    }

    /// Sends close_notify and flushes.
    pub async fn close(mut self) {
        self.records.alert(Some(&mut self.write_keys), 0).await;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec as StdVec;

    /// An in-memory socket: reads come from `input`, writes go to `output`.
    struct Mock<'a> {
        input: &'a [u8],
        output: StdVec<u8>,
    }

    impl embedded_io_async::ErrorType for Mock<'_> {
        type Error = core::convert::Infallible;
    }

    impl Read for Mock<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> core::result::Result<usize, Self::Error> {
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }

    impl Write for Mock<'_> {
        async fn write(&mut self, buf: &[u8]) -> core::result::Result<usize, Self::Error> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }

        async fn flush(&mut self) -> core::result::Result<(), Self::Error> {
            Ok(())
        }
    }

    /// Runs a future that never waits (the mock socket is always ready).
    fn block_on<F: core::future::Future>(f: F) -> F::Output {
        let mut f = core::pin::pin!(f);
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        loop {
            if let core::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    struct Fixture {
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    fn fixture() -> Fixture {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "ca");
        Fixture {
            ca: p.self_signed(&ca_key).unwrap(),
            ca_key,
        }
    }

    fn leaf(f: &Fixture, eku: rcgen::ExtendedKeyUsagePurpose, cn: &str) -> StdVec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "ops");
        p.extended_key_usages = std::vec![eku];
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2027, 1, 1);
        p.signed_by(&key, &f.ca, &f.ca_key).unwrap().der().to_vec()
    }

    const NOW: UnixSeconds = UnixSeconds::from_secs(1_795_725_221); // 2026-11-26

    #[test]
    fn client_certificates_are_checked_like_a_kubelet_would() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let f = fixture();
        let ca = f.ca.der().to_vec();
        let good = leaf(&f, ClientAuth, "prometheus");
        let (id, _) = verify_client_certificate(&good, &ca, Some(NOW)).unwrap();
        assert_eq!(id.user.as_str(), "prometheus");
        assert_eq!(id.groups[0].as_str(), "ops");
        // Time unknown: validity cannot be checked, the rest still is.
        assert!(verify_client_certificate(&good, &ca, None).is_ok());
        assert_eq!(
            verify_client_certificate(
                &good,
                &ca,
                Some(UnixSeconds::from_secs(NOW.as_secs() + 86_400 * 400))
            )
            .unwrap_err(),
            CertificateRefusal::Expired
        );
        let server_only = leaf(&f, ServerAuth, "web");
        assert_eq!(
            verify_client_certificate(&server_only, &ca, Some(NOW)).unwrap_err(),
            CertificateRefusal::NotForClients
        );
        let other = fixture();
        assert_eq!(
            verify_client_certificate(&leaf(&other, ClientAuth, "x"), &ca, Some(NOW)).unwrap_err(),
            CertificateRefusal::UnknownIssuer
        );
        // A flipped bit in the signed part: the CA's signature no longer verifies.
        let mut tampered = good.clone();
        let at = tampered
            .windows(10)
            .position(|w| w == b"prometheus")
            .unwrap();
        tampered[at] ^= 0x20;
        assert_eq!(
            verify_client_certificate(&tampered, &ca, Some(NOW)).unwrap_err(),
            CertificateRefusal::UnknownIssuer
        );
        let long = "n".repeat(NAME_MAX + 1);
        assert_eq!(
            verify_client_certificate(&leaf(&f, ClientAuth, &long), &ca, Some(NOW)).unwrap_err(),
            CertificateRefusal::IdentityTooLarge
        );
        for cut in [0, 10, good.len() / 2, good.len() - 1] {
            assert!(verify_client_certificate(&good[..cut], &ca, Some(NOW)).is_err());
        }
    }

    #[test]
    fn mutated_client_hellos_never_panic() {
        // A real ClientHello (from a rustls client) as the starting point.
        let hello = {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            let mut c = rustls::ClientConnection::new(
                std::sync::Arc::new(config),
                "pico-node-1".try_into().unwrap(),
            )
            .unwrap();
            let mut out = StdVec::new();
            c.write_tls(&mut out).unwrap();
            out
        };
        let f = fixture();
        let key = SigningKey::random(&mut rand_core::OsRng);
        let cert = leaf(
            &f,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            "pico-node-1",
        );
        let ca = f.ca.der().to_vec();
        let config = ServerConfig {
            cert_der: &cert,
            key: &key,
            client_ca_der: Some(&ca),
            now_unix: Some(NOW),
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut rx, mut tx) = ([0u8; 4096], [0u8; 2048]);
        let mut outcomes = std::collections::BTreeMap::new();
        for i in 0..3000 {
            let mut input = hello.clone();
            for _ in 0..1 + i % 4 {
                let at = (next() as usize) % input.len();
                input[at] = next() as u8;
            }
            if i % 7 == 0 {
                input.truncate((next() as usize) % input.len());
            }
            let mut sock = Mock {
                input: &input,
                output: StdVec::new(),
            };
            let r = block_on(accept(
                &mut sock,
                &config,
                &mut rand_core::OsRng,
                &mut rx,
                &mut tx,
            ));
            let key = match r {
                Ok(_) => std::string::String::from("handshake continued"),
                Err(e) => std::format!("{e}"),
            };
            *outcomes.entry(key).or_insert(0) += 1;
        }
        // Most mutations are caught by the parser; none panicked to get here.
        assert!(outcomes.len() > 3, "{outcomes:?}");
    }
}
