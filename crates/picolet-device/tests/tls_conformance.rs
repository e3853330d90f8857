//! RFC 8446 conformance of `picolet_device::tls_server`, record by record.
//!
//! A small hand-written TLS 1.3 client (its own key schedule on the RustCrypto primitives the
//! crate already uses) drives the server over a socket pair with records built here, including
//! the malformed and out-of-order ones a real client library would never send, and checks the
//! exact alert the server answers with. One test per class of the tlsfuzzer findings in issue
//! #10 (item 10), plus the accepted cases each refusal must not break.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use picolet_device::tls_server::{self, ServerConfig, TlsServerError};
use sha2::{Digest, Sha256};

// Record content types, handshake types and alerts (RFC 8446 §5.1, §4, §6).
const CCS: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APP_DATA: u8 = 23;
const CLIENT_HELLO: u8 = 1;
const FINISHED: u8 = 20;
const KEY_UPDATE: u8 = 24;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const HANDSHAKE_FAILURE: u8 = 40;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const PROTOCOL_VERSION: u8 = 70;
const MISSING_EXTENSION: u8 = 109;
const SECP256R1: u16 = 23;
const X25519: u16 = 29;
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

// ---------------------------------------------------------------------------------------------
// The server, on one end of a socket pair, echoing application data.

/// A blocking socket as an `embedded_io_async` stream (its futures never wait).
struct Sock(UnixStream);

impl embedded_io_async::ErrorType for Sock {
    type Error = embedded_io_async::ErrorKind;
}

impl embedded_io_async::Read for Sock {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.0
            .read(buf)
            .map_err(|_| embedded_io_async::ErrorKind::Other)
    }
}

impl embedded_io_async::Write for Sock {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0
            .write(buf)
            .map_err(|_| embedded_io_async::ErrorKind::Other)
    }
    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

type Server = JoinHandle<Result<(), TlsServerError>>;

/// Starts the device server (the board's buffer sizes, no client CA) on a socket pair and
/// returns the client's end. The server echoes what it reads until the client closes.
fn serve() -> (UnixStream, Server) {
    let (client, server) = UnixStream::pair().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let handle = std::thread::spawn(move || {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["pico-node-1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        use p256::pkcs8::DecodePrivateKey;
        let key = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
        let config = ServerConfig {
            cert_der: cert.der(),
            key: &key,
            client_ca_der: None,
            now_unix: None,
        };
        let (mut rx, mut tx) = ([0u8; 4096], [0u8; 2048]);
        block_on(async {
            let mut conn = tls_server::accept(
                Sock(server),
                &config,
                &mut rand_core::OsRng,
                &mut rx,
                &mut tx,
            )
            .await?;
            let mut buf = [0u8; 512];
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                conn.write_all(&buf[..n]).await?;
            }
            conn.close().await;
            Ok(())
        })
    });
    (client, handle)
}

// ---------------------------------------------------------------------------------------------
// The client's key schedule (RFC 8446 §7), written from the RFC.

fn expand_label(secret: &[u8], label: &str, context: &[u8], len: usize) -> Vec<u8> {
    let mut info = Vec::new();
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push(6 + label.len() as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::from_prk(secret)
        .unwrap()
        .expand(&info, &mut out)
        .unwrap();
    out
}

fn secret32(v: Vec<u8>) -> [u8; 32] {
    v.try_into().unwrap()
}

fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    Hkdf::<Sha256>::extract(Some(salt), ikm).0.into()
}

fn hash(t: &Sha256) -> [u8; 32] {
    t.clone().finalize().into()
}

/// One direction's record protection.
struct Keys {
    secret: [u8; 32],
    aead: Aes128Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Keys {
    fn new(secret: [u8; 32]) -> Self {
        let key: [u8; 16] = expand_label(&secret, "key", b"", 16).try_into().unwrap();
        Self {
            secret,
            aead: Aes128Gcm::new(&key.into()),
            iv: expand_label(&secret, "iv", b"", 12).try_into().unwrap(),
            seq: 0,
        }
    }

    /// The next generation (§7.2).
    fn update(&mut self) {
        *self = Self::new(secret32(expand_label(&self.secret, "traffic upd", b"", 32)));
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        n
    }

    /// A protected record: `content`, then the inner type (0: none), then `padding` zeros.
    fn seal(&mut self, content: &[u8], inner: u8, padding: usize) -> Vec<u8> {
        let mut body = content.to_vec();
        if inner != 0 {
            body.push(inner);
        }
        body.resize(body.len() + padding, 0);
        let len = body.len() + 16;
        let header = [APP_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self.nonce();
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &header, &mut body)
            .unwrap();
        [&header[..], &body, &tag].concat()
    }

    /// Opens a protected record: (inner type, content).
    fn open(&mut self, header: &[u8], body: &[u8]) -> (u8, Vec<u8>) {
        let (ct, tag) = body.split_at(body.len() - 16);
        let mut pt = ct.to_vec();
        let nonce = self.nonce();
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                header,
                &mut pt,
                Tag::from_slice(tag),
            )
            .expect("the server's record decrypts");
        let end = pt.iter().rposition(|&b| b != 0).expect("an inner type");
        (pt[end], pt[..end].to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Messages.

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    [
        &[kind, 3, 3, (body.len() >> 8) as u8, body.len() as u8][..],
        body,
    ]
    .concat()
}

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let n = body.len();
    [&[kind, (n >> 16) as u8, (n >> 8) as u8, n as u8][..], body].concat()
}

fn vec8(b: &[u8]) -> Vec<u8> {
    [&[b.len() as u8][..], b].concat()
}

fn vec16(b: &[u8]) -> Vec<u8> {
    [&(b.len() as u16).to_be_bytes()[..], b].concat()
}

fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    [&kind.to_be_bytes()[..], &vec16(data)].concat()
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// What goes into a ClientHello; `Default` is a well-formed one with a secp256r1 share.
struct Hello {
    legacy_version: u16,
    /// supported_versions; `None`: no extension.
    versions: Option<Vec<u16>>,
    /// supported_groups; `None`: no extension.
    groups: Option<Vec<u16>>,
    /// key_share entries (group, key_exchange); `None`: no extension. An entry for secp256r1
    /// with an empty key is replaced by a fresh valid share.
    shares: Option<Vec<(u16, Vec<u8>)>>,
    early_data: bool,
}

impl Default for Hello {
    fn default() -> Self {
        Self {
            legacy_version: 0x0303,
            versions: Some(vec![0x0304]),
            groups: Some(vec![X25519, SECP256R1]),
            shares: Some(vec![(SECP256R1, vec![])]),
            early_data: false,
        }
    }
}

/// A ClientHello message and the ephemeral secret behind its secp256r1 share, if any.
fn client_hello(h: &Hello) -> (Vec<u8>, Option<p256::ecdh::EphemeralSecret>) {
    let mut secret = None;
    let mut exts = Vec::new();
    if let Some(v) = &h.versions {
        exts.extend(extension(43, &vec8(&u16s(v))));
    }
    if let Some(g) = &h.groups {
        exts.extend(extension(10, &vec16(&u16s(g))));
    }
    exts.extend(extension(13, &vec16(&u16s(&[0x0403, 0x0804]))));
    if let Some(shares) = &h.shares {
        let mut list = Vec::new();
        for (group, key) in shares {
            let key = if *group == SECP256R1 && key.is_empty() {
                let s = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
                let point = p256::EncodedPoint::from(s.public_key()).as_bytes().to_vec();
                secret = Some(s);
                point
            } else {
                key.clone()
            };
            list.extend(group.to_be_bytes());
            list.extend(vec16(&key));
        }
        exts.extend(extension(51, &vec16(&list)));
    }
    if h.early_data {
        exts.extend(extension(42, &[]));
    }
    let mut body = h.legacy_version.to_be_bytes().to_vec();
    body.extend([7u8; 32]);
    body.extend(vec8(&[]));
    body.extend(vec16(&u16s(&[0x1301])));
    body.extend(vec8(&[0]));
    body.extend(vec16(&exts));
    (message(CLIENT_HELLO, &body), secret)
}

/// A valid secp256r1 point, uncompressed.
fn p256_point() -> Vec<u8> {
    let s = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
    p256::EncodedPoint::from(s.public_key()).as_bytes().to_vec()
}

// ---------------------------------------------------------------------------------------------
// The client.

/// Reads one record; `None` at end of stream. A silent server (no answer within the read
/// timeout) fails the test.
fn read_record(s: &mut UnixStream) -> Option<([u8; 5], Vec<u8>)> {
    let mut header = [0u8; 5];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("the server did not answer (it hangs): {e}"),
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    s.read_exact(&mut body).expect("a whole record");
    Some((header, body))
}

/// The alert the server sends in answer to a ClientHello (before any keys).
fn hello_alert(h: &Hello) -> u8 {
    let (mut s, server) = serve();
    let (ch, _) = client_hello(h);
    s.write_all(&record(HANDSHAKE, &ch)).unwrap();
    let (header, body) = read_record(&mut s).expect("an alert, not a closed connection");
    assert_eq!(header[0], ALERT, "an alert, not record type {}", header[0]);
    assert_eq!(body.len(), 2);
    assert_eq!(body[0], 2, "fatal");
    assert!(server.join().unwrap().is_err());
    body[1]
}

/// A client after the server's flight: it holds the keys, the server waits for its Finished.
struct Client {
    s: UnixStream,
    server: Option<Server>,
    transcript: Sha256,
    c_hs: [u8; 32],
    c_ap: [u8; 32],
    /// Writes: client handshake keys until [`Client::finish`], then application keys.
    write: Keys,
    /// Reads: the server's application keys (it has sent its Finished).
    read: Keys,
    /// KeyUpdates received from the server.
    key_updates: usize,
}

impl Client {
    /// Sends `hello` (and then `after_hello`, raw bytes, at once), answers a HelloRetryRequest
    /// with a secp256r1 share (followed by `after_retry`), reads the server's flight.
    fn connect(hello: &Hello, after_hello: &[u8], after_retry: &[u8]) -> Self {
        let (mut s, server) = serve();
        let (ch, mut secret) = client_hello(hello);
        s.write_all(&[&record(HANDSHAKE, &ch)[..], after_hello].concat())
            .unwrap();
        let mut transcript = Sha256::new();
        transcript.update(&ch);
        let (server_share, sh) = loop {
            let (header, body) = read_record(&mut s).expect("a ServerHello");
            match header[0] {
                CCS => continue,
                HANDSHAKE => {}
                kind => panic!("record type {kind} ({body:?}) instead of a ServerHello"),
            }
            assert_eq!(body[0], 2, "a ServerHello");
            let share = server_hello_share(&body[4..]);
            if body[6..38] == HRR_RANDOM {
                let ch1: [u8; 32] = transcript.finalize_reset().into();
                transcript.update([254, 0, 0, 32]);
                transcript.update(ch1);
                transcript.update(&body);
                let retry = Hello {
                    shares: Some(vec![(SECP256R1, vec![])]),
                    early_data: false,
                    ..Hello::default()
                };
                let (ch2, s2) = client_hello(&retry);
                secret = s2;
                transcript.update(&ch2);
                s.write_all(&[&record(HANDSHAKE, &ch2)[..], after_retry].concat())
                    .unwrap();
                continue;
            }
            break (share, body);
        };
        transcript.update(&sh);
        let their = p256::PublicKey::from_sec1_bytes(&server_share).unwrap();
        let shared = secret.expect("our secp256r1 share").diffie_hellman(&their);
        let empty: [u8; 32] = Sha256::digest(b"").into();
        let early = hkdf_extract(&[0; 32], &[0; 32]);
        let hs = hkdf_extract(
            &expand_label(&early, "derived", &empty, 32),
            shared.raw_secret_bytes(),
        );
        let c_hs = secret32(expand_label(&hs, "c hs traffic", &hash(&transcript), 32));
        let s_hs = secret32(expand_label(&hs, "s hs traffic", &hash(&transcript), 32));
        let master = hkdf_extract(&expand_label(&hs, "derived", &empty, 32), &[0; 32]);
        let mut server_hs = Keys::new(s_hs);
        // EncryptedExtensions … Finished.
        'flight: loop {
            let (header, body) = read_record(&mut s).expect("the server's flight");
            if header[0] == CCS {
                continue;
            }
            assert_eq!(header[0], APP_DATA);
            let (inner, msgs) = server_hs.open(&header, &body);
            assert_eq!(inner, HANDSHAKE);
            let mut at = 0;
            while at < msgs.len() {
                let len = (usize::from(msgs[at + 1]) << 16)
                    | (usize::from(msgs[at + 2]) << 8)
                    | usize::from(msgs[at + 3]);
                transcript.update(&msgs[at..at + 4 + len]);
                if msgs[at] == FINISHED {
                    break 'flight;
                }
                at += 4 + len;
            }
        }
        let h = hash(&transcript);
        Self {
            s,
            server: Some(server),
            c_ap: secret32(expand_label(&master, "c ap traffic", &h, 32)),
            read: Keys::new(secret32(expand_label(&master, "s ap traffic", &h, 32))),
            write: Keys::new(c_hs),
            c_hs,
            transcript,
            key_updates: 0,
        }
    }

    /// A full handshake with a well-formed ClientHello.
    fn established() -> Self {
        let mut c = Self::connect(&Hello::default(), &[], &[]);
        c.finish();
        c
    }

    /// The client's Finished message.
    fn finished(&self) -> Vec<u8> {
        let key = expand_label(&self.c_hs, "finished", b"", 32);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(&hash(&self.transcript));
        message(FINISHED, &mac.finalize().into_bytes())
    }

    /// Sends the Finished and switches to the application keys.
    fn finish(&mut self) {
        let fin = self.finished();
        self.send(&fin, HANDSHAKE);
        self.write = Keys::new(self.c_ap);
    }

    /// Sends `content` as one protected record with the current keys.
    fn send(&mut self, content: &[u8], inner: u8) {
        let r = self.write.seal(content, inner, 0);
        self.raw(&r);
    }

    fn raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; what it answered is still readable.
        let _ = self.s.write_all(bytes);
    }

    /// Reads application data; follows the server's KeyUpdates.
    fn receive(&mut self) -> Vec<u8> {
        loop {
            let (header, body) = read_record(&mut self.s).expect("data, not a closed connection");
            assert_eq!(header[0], APP_DATA, "a protected record");
            match self.read.open(&header, &body) {
                (APP_DATA, data) => return data,
                (HANDSHAKE, m) if m == message(KEY_UPDATE, &[0]) => {
                    self.read.update();
                    self.key_updates += 1;
                }
                (kind, content) => panic!("inner type {kind}: {content:?}"),
            }
        }
    }

    /// Checks that the connection still works: an echo round trip.
    fn echo(&mut self, data: &[u8]) {
        self.send(data, APP_DATA);
        assert_eq!(self.receive(), data);
    }

    /// The fatal alert the server ends the connection with (protected with its application
    /// keys, as it has sent its Finished); the server returns an error.
    fn alert(mut self) -> u8 {
        loop {
            let (header, body) =
                read_record(&mut self.s).expect("an alert, not a connection closed without one");
            assert_eq!(header[0], APP_DATA, "a protected record");
            match self.read.open(&header, &body) {
                (ALERT, a) => {
                    assert_eq!(a.len(), 2);
                    assert_eq!(a[0], 2, "fatal");
                    let server = self.server.take().unwrap();
                    drop(self.s);
                    assert!(server.join().unwrap().is_err());
                    return a[1];
                }
                (HANDSHAKE, m) if m == message(KEY_UPDATE, &[0]) => self.read.update(),
                (APP_DATA, _) => {}
                (kind, content) => panic!("inner type {kind}: {content:?}"),
            }
        }
    }
}

fn server_hello_share(body: &[u8]) -> Vec<u8> {
    let sid = usize::from(body[34]);
    let mut at = 35 + sid + 3 + 2;
    while at < body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let data = &body[at + 4..at + 4 + len];
        if kind == 51 {
            // ServerHello: group, key; HelloRetryRequest: the group alone.
            return data.get(4..).unwrap_or_default().to_vec();
        }
        at += 4 + len;
    }
    panic!("no key_share in the ServerHello")
}

/// `n` records of type application_data that no key opens (0-RTT data for keys the server
/// never derived), `size` bytes each.
fn undecryptable(n: usize, size: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| record(APP_DATA, &vec![i as u8 ^ 0x5a; size]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests: one per class.

#[test]
fn the_hand_built_client_is_served() {
    let mut c = Client::established();
    c.echo(b"GET /healthz HTTP/1.1\r\n\r\n");
    // Zero-length application data is allowed (RFC 8446 §5.4) and padding is stripped.
    c.send(&[], APP_DATA);
    let r = c.write.seal(b"padded", APP_DATA, 100);
    c.raw(&r);
    assert_eq!(c.receive(), b"padded");
}

/// Class 1 (RFC 8446 §4.6.3): KeyUpdate is handled in both forms; malformed ones refused.
#[test]
fn key_update_rekeys_and_answers_update_requested() {
    // update_not_requested: the client's direction moves on, the server's does not.
    let mut c = Client::established();
    c.echo(b"before");
    c.send(&message(KEY_UPDATE, &[0]), HANDSHAKE);
    c.write.update();
    c.echo(b"after one update");
    c.send(&message(KEY_UPDATE, &[0]), HANDSHAKE);
    c.write.update();
    c.echo(b"after two");
    assert_eq!(c.key_updates, 0);

    // update_requested: the server answers with its own KeyUpdate before its next data.
    let mut c = Client::established();
    c.send(&message(KEY_UPDATE, &[1]), HANDSHAKE);
    c.write.update();
    c.echo(b"after a requested update");
    assert_eq!(c.key_updates, 1);
    c.echo(b"and again");
    assert_eq!(c.key_updates, 1);

    // Malformed: a wrong length, an unknown request_update value, not at a record's end.
    for (content, alert) in [
        (message(KEY_UPDATE, &[0, 0]), DECODE_ERROR),
        (message(KEY_UPDATE, &[]), DECODE_ERROR),
        (message(KEY_UPDATE, &[2]), ILLEGAL_PARAMETER),
        (
            [message(KEY_UPDATE, &[0]), message(KEY_UPDATE, &[0])].concat(),
            UNEXPECTED_MESSAGE,
        ),
    ] {
        let mut c = Client::established();
        c.send(&content, HANDSHAKE);
        assert_eq!(c.alert(), alert, "{content:?}");
    }
    // KeyUpdate before the handshake is done.
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    c.send(&message(KEY_UPDATE, &[0]), HANDSHAKE);
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
}

/// Class 2 (§4.2.10): 0-RTT data the server does not accept is skipped, up to a limit.
#[test]
fn rejected_early_data_is_skipped_up_to_a_limit() {
    let early = Hello {
        early_data: true,
        ..Hello::default()
    };
    // A few records of early data: skipped, the handshake goes on with the Finished.
    let mut c = Client::connect(&early, &undecryptable(3, 300), &[]);
    c.finish();
    c.echo(b"1-RTT data");
    // After a HelloRetryRequest (only an X25519 share first) the early data comes before the
    // second ClientHello, in plaintext framing; it is skipped too.
    let early_x25519 = Hello {
        early_data: true,
        shares: Some(vec![(X25519, vec![9; 32])]),
        ..Hello::default()
    };
    let mut c = Client::connect(&early_x25519, &undecryptable(3, 300), &[]);
    c.finish();
    c.echo(b"1-RTT data after a retry");
    // With a CCS (middlebox compatibility) among them.
    let ccs = record(CCS, &[1]);
    let mut c = Client::connect(&early, &[&ccs[..], &undecryptable(2, 100)].concat(), &[]);
    c.finish();
    c.echo(b"still fine");
    // More than the limit: bad_record_mac.
    let c = Client::connect(&early, &undecryptable(40, 1000), &[]);
    assert_eq!(c.alert(), BAD_RECORD_MAC);
    // Without early_data in the ClientHello nothing is skipped.
    let c = Client::connect(&Hello::default(), &undecryptable(1, 300), &[]);
    assert_eq!(c.alert(), BAD_RECORD_MAC);
    // Once a record decrypted, nothing is skipped any more.
    let mut c = Client::connect(&early, &undecryptable(1, 300), &[]);
    c.finish();
    c.raw(&undecryptable(1, 300));
    assert_eq!(c.alert(), BAD_RECORD_MAC);
    // A second ClientHello must not offer early data.
    let (ch2, _) = client_hello(&early);
    let (mut s, server) = serve();
    let (ch1, _) = client_hello(&early_x25519);
    s.write_all(&record(HANDSHAKE, &ch1)).unwrap();
    let (header, _) = read_record(&mut s).unwrap();
    assert_eq!(header[0], HANDSHAKE, "a HelloRetryRequest");
    s.write_all(&record(HANDSHAKE, &ch2)).unwrap();
    let (header, body) = read_record(&mut s).unwrap();
    assert_eq!((header[0], body[1]), (ALERT, ILLEGAL_PARAMETER));
    assert!(server.join().unwrap().is_err());
}

/// Class 3 (§5.1, §6): an alert is exactly two bytes; handshake fragments are never empty.
#[test]
fn empty_and_overlong_alerts_and_empty_handshake_fragments_are_decode_errors() {
    for (content, inner) in [
        (vec![], ALERT),
        (vec![1], ALERT),
        (vec![1, 0, 0], ALERT),
        (vec![], HANDSHAKE),
    ] {
        let mut c = Client::established();
        c.echo(b"up");
        c.send(&content, inner);
        assert_eq!(c.alert(), DECODE_ERROR, "{inner}: {content:?}");
    }
    // During the handshake, in place of the Finished.
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    c.send(&[], HANDSHAKE);
    assert_eq!(c.alert(), DECODE_ERROR);
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    c.send(&[], ALERT);
    assert_eq!(c.alert(), DECODE_ERROR);
    // Plaintext alerts before any keys.
    for body in [&[][..], &[2][..], &[2, 40, 0][..]] {
        let (mut s, server) = serve();
        s.write_all(&record(ALERT, body)).unwrap();
        let (header, answer) = read_record(&mut s).expect("an alert");
        assert_eq!((header[0], answer[1]), (ALERT, DECODE_ERROR), "{body:?}");
        assert!(server.join().unwrap().is_err());
    }
    // A well-formed close_notify still closes cleanly.
    let mut c = Client::established();
    c.send(&[1, 0], ALERT);
    let (header, body) = read_record(&mut c.s).expect("the server's close_notify");
    assert_eq!(c.read.open(&header, &body), (ALERT, vec![1, 0]));
    assert_eq!(c.server.take().unwrap().join().unwrap(), Ok(()));
}

/// Class 4 (§5.2, §5, §5.1): no content type, a CCS that is not the single byte 1, and
/// application data in the handshake are unexpected messages.
#[test]
fn no_content_type_bad_ccs_and_early_application_data_are_unexpected() {
    // All-zero inner plaintext, after the handshake and in place of the Finished.
    let mut c = Client::established();
    let r = c.write.seal(&[], 0, 10);
    c.raw(&r);
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    let r = c.write.seal(&[], 0, 1);
    c.raw(&r);
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    // CCS of two bytes, of another value, and protected.
    for ccs in [&[1, 1][..], &[2][..], &[][..]] {
        let c = Client::connect(&Hello::default(), &record(CCS, ccs), &[]);
        assert_eq!(c.alert(), UNEXPECTED_MESSAGE, "{ccs:?}");
    }
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    c.send(&[1], CCS);
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    // A CCS before the ClientHello.
    let (mut s, server) = serve();
    s.write_all(&record(CCS, &[1])).unwrap();
    let (header, body) = read_record(&mut s).expect("an alert");
    assert_eq!((header[0], body[1]), (ALERT, UNEXPECTED_MESSAGE));
    assert!(server.join().unwrap().is_err());
    // Application data before the client's Finished: protected, and in plaintext before keys.
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    c.send(b"GET / HTTP/1.1\r\n\r\n", APP_DATA);
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    let (mut s, server) = serve();
    s.write_all(&record(APP_DATA, b"GET / HTTP/1.1\r\n\r\n"))
        .unwrap();
    let (header, body) = read_record(&mut s).expect("an alert");
    assert_eq!((header[0], body[1]), (ALERT, UNEXPECTED_MESSAGE));
    assert!(server.join().unwrap().is_err());
    // A record type TLS does not have.
    let (mut s, server) = serve();
    s.write_all(&record(99, &[1, 2, 3])).unwrap();
    let (header, body) = read_record(&mut s).expect("an alert");
    assert_eq!((header[0], body[1]), (ALERT, UNEXPECTED_MESSAGE));
    assert!(server.join().unwrap().is_err());
}

/// Class 5 (§5): a CCS after the client's Finished is an unexpected message, not ignored.
#[test]
fn ccs_after_the_handshake_is_unexpected() {
    let mut c = Client::established();
    c.echo(b"up");
    c.raw(&record(CCS, &[1]));
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    // A CCS between ClientHello and Finished is still dropped (middlebox compatibility).
    let mut c = Client::connect(&Hello::default(), &record(CCS, &[1]), &[]);
    c.finish();
    c.echo(b"compatible");
}

/// Class 6 (§5): once keys are in use, plaintext handshake records are unexpected.
#[test]
fn plaintext_handshake_records_after_keys_are_unexpected() {
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    let fin = c.finished();
    c.raw(&record(HANDSHAKE, &fin));
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
    let mut c = Client::established();
    let (ch, _) = client_hello(&Hello::default());
    c.raw(&record(HANDSHAKE, &ch));
    assert_eq!(c.alert(), UNEXPECTED_MESSAGE);
}

/// Class 7 (§9.2): supported_groups and key_share come together.
#[test]
fn supported_groups_without_key_share_is_missing_extension() {
    let no_shares = Hello {
        shares: None,
        ..Hello::default()
    };
    assert_eq!(hello_alert(&no_shares), MISSING_EXTENSION);
    let no_groups = Hello {
        groups: None,
        ..Hello::default()
    };
    assert_eq!(hello_alert(&no_groups), MISSING_EXTENSION);
    // An empty key_share list is allowed: the client asks which group to use.
    let empty = Hello {
        shares: Some(vec![]),
        ..Hello::default()
    };
    let mut c = Client::connect(&empty, &[], &[]);
    c.finish();
    c.echo(b"after a retry");
    // Groups without secp256r1 is no common group.
    let x25519_only = Hello {
        groups: Some(vec![X25519]),
        shares: Some(vec![(X25519, vec![9; 32])]),
        ..Hello::default()
    };
    assert_eq!(hello_alert(&x25519_only), HANDSHAKE_FAILURE);
}

/// Class 8 (Appendix D.5): legacy_version 0x0300 (SSL 3.0) or lower is refused.
#[test]
fn legacy_version_ssl3_or_lower_is_protocol_version() {
    for v in [0x0300, 0x0200, 0x0002] {
        let h = Hello {
            legacy_version: v,
            ..Hello::default()
        };
        assert_eq!(hello_alert(&h), PROTOCOL_VERSION, "{v:#06x}");
    }
    // 0x0301 (what some clients put there) is fine.
    let h = Hello {
        legacy_version: 0x0301,
        ..Hello::default()
    };
    let mut c = Client::connect(&h, &[], &[]);
    c.finish();
    c.echo(b"tls1.0 in legacy_version");
}

/// Class 9 (§4.2.8.2): a secp256r1 share must be an uncompressed point on the curve.
#[test]
fn malformed_and_off_curve_secp256r1_shares_are_illegal_parameter() {
    let good = p256_point();
    let mut off_curve = good.clone();
    off_curve[64] ^= 1;
    let mut wrong_prefix = good.clone();
    wrong_prefix[0] = 5;
    let mut compressed = good[..33].to_vec();
    compressed[0] = 2 | (good[64] & 1);
    let cases = [
        ("truncated", good[..64].to_vec()),
        ("too long", [&good[..], &[0]].concat()),
        ("one byte", vec![4]),
        ("wrong prefix", wrong_prefix),
        ("compressed", compressed),
        ("off the curve", off_curve),
        ("zero x and y", [&[4u8][..], &[0; 64]].concat()),
    ];
    for (what, key) in cases {
        let h = Hello {
            shares: Some(vec![(X25519, vec![9; 32]), (SECP256R1, key)]),
            ..Hello::default()
        };
        assert_eq!(hello_alert(&h), ILLEGAL_PARAMETER, "{what}");
    }
}

/// Class 10 (§4.4.4): a Finished of the wrong length is a decode error, not a wrong MAC.
#[test]
fn finished_of_the_wrong_length_is_decode_error() {
    for len in [0, 31, 33, 48] {
        let mut c = Client::connect(&Hello::default(), &[], &[]);
        let good = c.finished();
        let mut body = good[4..].to_vec();
        body.resize(len, 0);
        c.send(&message(FINISHED, &body), HANDSHAKE);
        assert_eq!(c.alert(), DECODE_ERROR, "{len}");
    }
    // A right-length wrong Finished is still decrypt_error.
    let mut c = Client::connect(&Hello::default(), &[], &[]);
    let mut fin = c.finished();
    fin[10] ^= 1;
    c.send(&fin, HANDSHAKE);
    assert_eq!(c.alert(), 51);
}

/// Class 11 (§4.2.1): a client that does not offer TLS 1.3 gets protocol_version.
#[test]
fn clients_without_tls13_get_protocol_version() {
    let none = Hello {
        versions: None,
        ..Hello::default()
    };
    assert_eq!(hello_alert(&none), PROTOCOL_VERSION);
    let tls12 = Hello {
        versions: Some(vec![0x0303, 0x0302]),
        ..Hello::default()
    };
    assert_eq!(hello_alert(&tls12), PROTOCOL_VERSION);
}
