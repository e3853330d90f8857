//! The X.509 a node needs, without a heap: a PKCS#10 request for its P-256 key, the validity
//! and public key of the certificate it gets back, its private key as SEC1 DER, and PEM.
//!
//! Hand-written DER, on purpose: `x509-cert` and `rcgen` need `alloc`, and a node only ever
//! writes two fixed shapes (a CSR, an EC private key) and reads four fields of a certificate.
//! Reading: the heap-free `der` + `spki` crates (already linked for PKCS#8 keys) were measured
//! in place of this reader: +10.1 KiB of firmware flash (their decoders are generic per nesting
//! depth, and their time types validate and convert through a calendar), so it stays.
//! Writing: `sec1` and `pkcs8` encoders for the two key forms measured +1.3 KiB, and the CSR
//! needs this writer anyway (`x509-cert`'s request type needs `alloc`).
//! Signing stays with the caller (the key never enters the core): [`build_csr`] hands it the
//! bytes to sign.

use core::fmt;

use crate::time::{UnixSeconds, days_from_civil};

/// Why a certificate or request could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PkiError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// The DER is malformed or not the expected structure; `at` names the field.
    Malformed {
        /// Which field was being read.
        at: &'static str,
    },
    /// The PEM text is malformed or has the wrong label.
    Pem,
    /// The base64 text is malformed.
    Base64,
    /// A name or address does not fit in a certificate request.
    BadName,
    /// No certificate request of this kind was asked for.
    NotWanted,
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("buffer too small"),
            Self::Malformed { at } => write!(f, "malformed certificate: cannot read {at}"),
            Self::Pem => f.write_str("malformed PEM"),
            Self::Base64 => f.write_str("malformed base64"),
            Self::BadName => f.write_str("name or address not usable in a certificate request"),
            Self::NotWanted => f.write_str("no certificate request of this kind is wanted now"),
        }
    }
}

/// An uncompressed P-256 public key (`04 || X || Y`).
pub type PublicKey = [u8; 65];

/// A subject alternative name in a serving certificate request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum San<'a> {
    /// A DNS name.
    Dns(&'a str),
    /// An IPv4 address.
    Ipv4([u8; 4]),
}

/// What a node asks to be certified as: always `CN=system:node:NAME, O=system:nodes`, the
/// only subject the Kubernetes node signers accept.
#[derive(Clone, Copy, Debug)]
pub struct CsrSubject<'a> {
    /// The node name (without `system:node:`).
    pub node_name: &'a str,
    /// Subject alternative names: none for a client certificate, at least one for serving.
    pub sans: &'a [San<'a>],
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// Writes DER into a fixed buffer. Nested values reserve a 3-byte length and are shifted
/// down once their size is known (every structure here is under 64 KiB).
struct DerWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl DerWriter<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), PkiError> {
        let end = self.len + b.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(PkiError::BufferTooSmall)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    fn tlv(&mut self, tag: u8, content: &[u8]) -> Result<(), PkiError> {
        self.nested(tag, |w| w.bytes(content))
    }

    fn nested(
        &mut self,
        tag: u8,
        content: impl FnOnce(&mut Self) -> Result<(), PkiError>,
    ) -> Result<(), PkiError> {
        self.bytes(&[tag, 0, 0, 0])?;
        let start = self.len;
        content(self)?;
        let n = self.len - start;
        let (head, head_len) = match n {
            0..=0x7f => ([n as u8, 0, 0], 1),
            0x80..=0xff => ([0x81, n as u8, 0], 2),
            0x100..=0xffff => ([0x82, (n >> 8) as u8, n as u8], 3),
            _ => return Err(PkiError::BufferTooSmall),
        };
        let len_at = start - 3;
        self.buf.copy_within(start..self.len, len_at + head_len);
        self.buf[len_at..len_at + head_len].copy_from_slice(&head[..head_len]);
        self.len = len_at + head_len + n;
        Ok(())
    }

    /// A positive INTEGER from big-endian bytes (leading zeros dropped, a sign byte added).
    fn unsigned(&mut self, be: &[u8]) -> Result<(), PkiError> {
        let first = be.iter().position(|&b| b != 0).unwrap_or(be.len() - 1);
        let v = &be[first..];
        self.nested(INTEGER, |w| {
            if v[0] & 0x80 != 0 {
                w.bytes(&[0])?;
            }
            w.bytes(v)
        })
    }
}

fn name_attribute(w: &mut DerWriter<'_>, oid: &[u8], value: &[u8]) -> Result<(), PkiError> {
    w.nested(SET, |w| {
        w.nested(SEQUENCE, |w| {
            w.tlv(OID, oid)?;
            w.tlv(UTF8_STRING, value)
        })
    })
}

fn p256_algorithm(w: &mut DerWriter<'_>) -> Result<(), PkiError> {
    w.nested(SEQUENCE, |w| {
        w.tlv(OID, OID_EC_PUBLIC_KEY)?;
        w.tlv(OID, OID_P256)
    })
}

/// Writes a PKCS#10 CertificationRequest (DER) for `subject` and `public_key` into `out`.
/// `sign` gets the DER of the request info and returns its ECDSA P-256 / SHA-256 signature as
/// `r || s`. Returns the length written.
pub fn build_csr(
    subject: &CsrSubject<'_>,
    public_key: &PublicKey,
    sign: impl FnOnce(&[u8]) -> [u8; 64],
    out: &mut [u8],
) -> Result<usize, PkiError> {
    if subject.node_name.is_empty() || subject.node_name.len() > 253 {
        return Err(PkiError::BadName);
    }
    for san in subject.sans {
        if let San::Dns(name) = san
            && (name.is_empty() || !name.is_ascii() || name.len() > 253)
        {
            return Err(PkiError::BadName);
        }
    }
    let mut w = DerWriter { buf: out, len: 0 };
    w.nested(SEQUENCE, |w| {
        let info_start = w.len;
        w.nested(SEQUENCE, |w| {
            w.tlv(INTEGER, &[0])?;
            w.nested(SEQUENCE, |w| {
                name_attribute(w, OID_O, b"system:nodes")?;
                w.nested(SET, |w| {
                    w.nested(SEQUENCE, |w| {
                        w.tlv(OID, OID_CN)?;
                        w.nested(UTF8_STRING, |w| {
                            w.bytes(b"system:node:")?;
                            w.bytes(subject.node_name.as_bytes())
                        })
                    })
                })
            })?;
            w.nested(SEQUENCE, |w| {
                p256_algorithm(w)?;
                w.nested(BIT_STRING, |w| {
                    w.bytes(&[0])?;
                    w.bytes(public_key)
                })
            })?;
            // attributes [0]: an extensionRequest with the SANs, or nothing.
            w.nested(0xa0, |w| {
                if subject.sans.is_empty() {
                    return Ok(());
                }
                w.nested(SEQUENCE, |w| {
                    w.tlv(OID, OID_EXTENSION_REQUEST)?;
                    w.nested(SET, |w| {
                        w.nested(SEQUENCE, |w| {
                            w.nested(SEQUENCE, |w| {
                                w.tlv(OID, OID_SUBJECT_ALT_NAME)?;
                                w.nested(OCTET_STRING, |w| {
                                    w.nested(SEQUENCE, |w| {
                                        for san in subject.sans {
                                            match san {
                                                San::Dns(n) => w.tlv(0x82, n.as_bytes())?,
                                                San::Ipv4(ip) => w.tlv(0x87, ip)?,
                                            }
                                        }
                                        Ok(())
                                    })
                                })
                            })
                        })
                    })
                })
            })
        })?;
        let signature = sign(&w.buf[info_start..w.len]);
        w.nested(SEQUENCE, |w| w.tlv(OID, OID_ECDSA_SHA256))?;
        w.nested(BIT_STRING, |w| {
            w.bytes(&[0])?;
            w.nested(SEQUENCE, |w| {
                w.unsigned(&signature[..32])?;
                w.unsigned(&signature[32..])
            })
        })
    })?;
    Ok(w.len)
}

/// The SEC1 `ECPrivateKey` DER of a P-256 key (what embedded-tls and `EC PRIVATE KEY` PEM
/// hold): always 121 bytes.
pub fn ec_private_key_der(secret: &[u8; 32], public_key: &PublicKey) -> [u8; 121] {
    // Room for the 3-byte length reservations made while writing.
    let mut scratch = [0u8; 132];
    let mut w = DerWriter {
        buf: &mut scratch,
        len: 0,
    };
    // Cannot fail: the sizes are fixed and fit (the test checks the shape).
    let _ = w.nested(SEQUENCE, |w| {
        w.tlv(INTEGER, &[1])?;
        w.tlv(OCTET_STRING, secret)?;
        w.nested(0xa0, |w| w.tlv(OID, OID_P256))?;
        w.nested(0xa1, |w| {
            w.nested(BIT_STRING, |w| {
                w.bytes(&[0])?;
                w.bytes(public_key)
            })
        })
    });
    let mut out = [0u8; 121];
    out.copy_from_slice(&scratch[..121]);
    out
}

/// Length of [`ec_private_key_pkcs8_der`]'s output.
pub const PKCS8_LEN: usize = 138;

/// The PKCS#8 `PrivateKeyInfo` DER of a P-256 key (`PRIVATE KEY` PEM; what embedded-tls and
/// `picolet enrol` use): the SEC1 key without its curve parameters, which the algorithm
/// identifier carries.
pub fn ec_private_key_pkcs8_der(secret: &[u8; 32], public_key: &PublicKey) -> [u8; PKCS8_LEN] {
    let mut scratch = [0u8; PKCS8_LEN + 24];
    let mut w = DerWriter {
        buf: &mut scratch,
        len: 0,
    };
    // Cannot fail: the sizes are fixed and fit (the test checks the shape).
    let _ = w.nested(SEQUENCE, |w| {
        w.tlv(INTEGER, &[0])?;
        p256_algorithm(w)?;
        w.nested(OCTET_STRING, |w| {
            w.nested(SEQUENCE, |w| {
                w.tlv(INTEGER, &[1])?;
                w.tlv(OCTET_STRING, secret)?;
                w.nested(0xa1, |w| {
                    w.nested(BIT_STRING, |w| {
                        w.bytes(&[0])?;
                        w.bytes(public_key)
                    })
                })
            })
        })
    });
    let mut out = [0u8; PKCS8_LEN];
    out.copy_from_slice(&scratch[..PKCS8_LEN]);
    out
}

/// The PEM label of a PKCS#8 private key.
pub const PRIVATE_KEY: &str = "PRIVATE KEY";

// ---------------------------------------------------------------------------- reading

/// Splits one DER TLV off the front of `input`: (tag, content, rest).
fn tlv<'d>(input: &'d [u8], at: &'static str) -> Result<(u8, &'d [u8], &'d [u8]), PkiError> {
    let bad = PkiError::Malformed { at };
    let (&tag, rest) = input.split_first().ok_or(bad)?;
    let (&first, rest) = rest.split_first().ok_or(bad)?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first().ok_or(bad)?;
            (usize::from(b), rest)
        }
        0x82 => {
            let b = rest.get(..2).ok_or(bad)?;
            (usize::from(b[0]) << 8 | usize::from(b[1]), &rest[2..])
        }
        0x83 => {
            let b = rest.get(..3).ok_or(bad)?;
            (
                usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
                &rest[3..],
            )
        }
        _ => return Err(bad),
    };
    if len > rest.len() {
        return Err(bad);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect<'d>(
    input: &'d [u8],
    tag: u8,
    at: &'static str,
) -> Result<(&'d [u8], &'d [u8]), PkiError> {
    match tlv(input, at)? {
        (t, content, rest) if t == tag => Ok((content, rest)),
        _ => Err(PkiError::Malformed { at }),
    }
}

fn digits(b: &[u8], at: &'static str) -> Result<u32, PkiError> {
    b.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(PkiError::Malformed { at })
        }
    })
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` to Unix seconds.
fn x509_time(tag: u8, v: &[u8], at: &'static str) -> Result<UnixSeconds, PkiError> {
    let bad = PkiError::Malformed { at };
    let (year, rest) = match (tag, v.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(&v[..2], at)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &v[2..])
        }
        (GENERALIZED_TIME, 15) => (digits(&v[..4], at)?, &v[4..]),
        _ => return Err(bad),
    };
    if rest[10] != b'Z' {
        return Err(bad);
    }
    let (mo, d) = (digits(&rest[0..2], at)?, digits(&rest[2..4], at)?);
    let (h, mi, s) = (
        digits(&rest[4..6], at)?,
        digits(&rest[6..8], at)?,
        digits(&rest[8..10], at)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad);
    }
    let days = days_from_civil(i64::from(year), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    u64::try_from(secs)
        .map(UnixSeconds::from_secs)
        .map_err(|_| bad)
}

/// What a node reads from a certificate it was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertificateInfo<'d> {
    /// Start of validity.
    pub not_before: UnixSeconds,
    /// End of validity.
    pub not_after: UnixSeconds,
    /// The subject's public key (the BIT STRING's bytes; `04 || X || Y` for P-256).
    pub public_key: &'d [u8],
}

impl CertificateInfo<'_> {
    /// When to renew: at `fraction_permille` ‰ of the lifetime.
    pub fn renew_at(&self, fraction_permille: u32) -> UnixSeconds {
        let (start, end) = (self.not_before.as_secs(), self.not_after.as_secs());
        let life = end.saturating_sub(start);
        UnixSeconds::from_secs(start + life * u64::from(fraction_permille.min(1000)) / 1000)
    }
}

/// Reads validity and public key from a DER certificate.
pub fn certificate_info(der: &[u8]) -> Result<CertificateInfo<'_>, PkiError> {
    let (cert, _) = expect(der, SEQUENCE, "Certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, "version")?.2;
    }
    let (_, rest) = expect(rest, INTEGER, "serialNumber")?;
    let (_, rest) = expect(rest, SEQUENCE, "signature")?;
    let (_, rest) = expect(rest, SEQUENCE, "issuer")?;
    let (validity, rest) = expect(rest, SEQUENCE, "validity")?;
    let (t1, v1, after) = tlv(validity, "notBefore")?;
    let (t2, v2, _) = tlv(after, "notAfter")?;
    let not_before = x509_time(t1, v1, "notBefore")?;
    let not_after = x509_time(t2, v2, "notAfter")?;
    let (_, rest) = expect(rest, SEQUENCE, "subject")?;
    let (spki, _) = expect(rest, SEQUENCE, "subjectPublicKeyInfo")?;
    let (_, spki_rest) = expect(spki, SEQUENCE, "algorithm")?;
    let (bits, _) = expect(spki_rest, BIT_STRING, "subjectPublicKey")?;
    let public_key = match bits.split_first() {
        Some((0, key)) => key,
        _ => {
            return Err(PkiError::Malformed {
                at: "subjectPublicKey",
            });
        }
    };
    Ok(CertificateInfo {
        not_before,
        not_after,
        public_key,
    })
}

/// The parts of a certificate needed to verify it and to know whom it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedCertificate<'d> {
    /// The signed part (`tbsCertificate`, whole TLV).
    pub tbs: &'d [u8],
    /// The issuer Name (whole TLV), compared byte for byte with the CA's subject.
    pub issuer: &'d [u8],
    /// The subject Name (whole TLV).
    pub subject: &'d [u8],
    /// Validity and public key.
    pub info: CertificateInfo<'d>,
    /// True when the signature algorithm is ecdsa-with-SHA256.
    pub signed_with_ecdsa_sha256: bool,
    /// The signature (DER ECDSA-Sig-Value for ECDSA).
    pub signature: &'d [u8],
    /// `Some(true/false)`: an extendedKeyUsage extension is present and does / does not allow
    /// client authentication; `None`: no such extension.
    pub client_auth: Option<bool>,
    /// True when a basicConstraints extension says CA.
    pub is_ca: bool,
}

const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
const OID_ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// Splits a DER element off the front, returning the whole TLV and the rest.
fn whole<'d>(input: &'d [u8], at: &'static str) -> Result<(&'d [u8], &'d [u8]), PkiError> {
    let (_, content, rest) = tlv(input, at)?;
    let header = input.len() - rest.len() - content.len();
    Ok((&input[..header + content.len()], rest))
}

/// Parses a DER certificate for verification (see [`ParsedCertificate`]).
pub fn parse_certificate(der: &[u8]) -> Result<ParsedCertificate<'_>, PkiError> {
    let info = certificate_info(der)?;
    let (cert, _) = expect(der, SEQUENCE, "Certificate")?;
    let (tbs, rest) = whole(cert, "tbsCertificate")?;
    let (alg, rest) = expect(rest, SEQUENCE, "signatureAlgorithm")?;
    let (oid, _) = expect(alg, OID, "signatureAlgorithm")?;
    let (bits, _) = expect(rest, BIT_STRING, "signatureValue")?;
    let signature = match bits.split_first() {
        Some((0, s)) => s,
        _ => {
            return Err(PkiError::Malformed {
                at: "signatureValue",
            });
        }
    };
    let (tbs_content, _) = expect(tbs, SEQUENCE, "tbsCertificate")?;
    let mut r = tbs_content;
    if r.first() == Some(&0xa0) {
        r = tlv(r, "version")?.2;
    }
    let (_, r) = expect(r, INTEGER, "serialNumber")?;
    let (_, r) = expect(r, SEQUENCE, "signature")?;
    let (issuer, r) = whole(r, "issuer")?;
    let (_, r) = expect(r, SEQUENCE, "validity")?;
    let (subject, r) = whole(r, "subject")?;
    let (_, mut r) = expect(r, SEQUENCE, "subjectPublicKeyInfo")?;
    let (mut client_auth, mut is_ca) = (None, false);
    while let Ok((tag, content, rest)) = tlv(r, "extensions") {
        r = rest;
        if tag != 0xa3 {
            continue; // issuerUniqueID / subjectUniqueID
        }
        let (mut exts, _) = expect(content, SEQUENCE, "extensions")?;
        while !exts.is_empty() {
            let (ext, rest) = expect(exts, SEQUENCE, "extension")?;
            exts = rest;
            let (id, mut e) = expect(ext, OID, "extnID")?;
            if e.first() == Some(&0x01) {
                e = tlv(e, "critical")?.2;
            }
            let (value, _) = expect(e, OCTET_STRING, "extnValue")?;
            if id == OID_EXT_KEY_USAGE {
                let (mut purposes, _) = expect(value, SEQUENCE, "extKeyUsage")?;
                let mut allowed = false;
                while !purposes.is_empty() {
                    let (p, rest) = expect(purposes, OID, "KeyPurposeId")?;
                    purposes = rest;
                    allowed |= p == OID_KP_CLIENT_AUTH || p == OID_ANY_EKU;
                }
                client_auth = Some(allowed);
            } else if id == OID_BASIC_CONSTRAINTS {
                let (bc, _) = expect(value, SEQUENCE, "basicConstraints")?;
                is_ca = matches!(tlv(bc, "cA"), Ok((0x01, [v], _)) if *v != 0);
            }
        }
    }
    Ok(ParsedCertificate {
        tbs,
        issuer,
        subject,
        info,
        signed_with_ecdsa_sha256: oid == OID_ECDSA_SHA256,
        signature,
        client_auth,
        is_ca,
    })
}

/// The values of attribute `oid` in a Name (whole TLV), in order: CN is [`OID_COMMON_NAME`],
/// O is [`OID_ORGANIZATION`]. Values that are not UTF8String, PrintableString or IA5String
/// are skipped.
pub fn name_values<'d>(name: &'d [u8], oid: &'d [u8]) -> impl Iterator<Item = &'d str> + 'd {
    let rdns = expect(name, SEQUENCE, "Name")
        .map(|(c, _)| c)
        .unwrap_or(&[]);
    let mut rest = rdns;
    let mut set: &[u8] = &[];
    core::iter::from_fn(move || {
        loop {
            if set.is_empty() {
                let (s, r) = expect(rest, SET, "RelativeDistinguishedName").ok()?;
                rest = r;
                set = s;
                continue;
            }
            let (atv, r) = expect(set, SEQUENCE, "AttributeTypeAndValue").ok()?;
            set = r;
            let (id, v) = expect(atv, OID, "AttributeType").ok()?;
            let (tag, value, _) = tlv(v, "AttributeValue").ok()?;
            if id == oid
                && matches!(tag, UTF8_STRING | 0x13 | 0x16)
                && let Ok(text) = core::str::from_utf8(value)
            {
                return Some(text);
            }
        }
    })
}

/// The object identifier of commonName, for [`name_values`].
pub const OID_COMMON_NAME: &[u8] = OID_CN;
/// The object identifier of organizationName, for [`name_values`].
pub const OID_ORGANIZATION: &[u8] = OID_O;

// ---------------------------------------------------------------------------- PEM, base64

/// The PEM label of a certificate.
pub const CERTIFICATE: &str = "CERTIFICATE";
/// The PEM label of a PKCS#10 request.
pub const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";
/// The PEM label of a SEC1 private key.
pub const EC_PRIVATE_KEY: &str = "EC PRIVATE KEY";

/// PEM-encodes `der` with `label` into `out` (LF line endings); returns the length.
pub fn pem_encode(label: &str, der: &[u8], out: &mut [u8]) -> Result<usize, PkiError> {
    pem_rfc7468::encode(label, pem_rfc7468::LineEnding::LF, der, out)
        .map(str::len)
        .map_err(|_| PkiError::BufferTooSmall)
}

/// Decodes the first PEM block of `pem` (ignoring anything after it), which must carry
/// `label`, into `out`; returns the DER.
pub fn pem_decode<'o>(label: &str, pem: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], PkiError> {
    // A CA may return a chain: keep the first block only (the leaf).
    let end_marker = b"-----END ";
    let end = pem
        .windows(end_marker.len())
        .position(|w| w == end_marker)
        .and_then(|i| pem[i..].iter().position(|&b| b == b'\n').map(|j| i + j + 1))
        .unwrap_or(pem.len());
    let (found, der) = pem_rfc7468::decode(&pem[..end], out).map_err(|_| PkiError::Pem)?;
    if found != label {
        return Err(PkiError::Pem);
    }
    Ok(der)
}

/// Standard base64 (with padding), as Kubernetes encodes `[]byte` fields.
pub fn base64_encode<'o>(data: &[u8], out: &'o mut [u8]) -> Result<&'o str, PkiError> {
    use base64ct::Encoding;
    base64ct::Base64::encode(data, out).map_err(|_| PkiError::BufferTooSmall)
}

/// Decodes standard base64 (with padding).
pub fn base64_decode<'o>(text: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], PkiError> {
    use base64ct::Encoding;
    base64ct::Base64::decode(text, out).map_err(|_| PkiError::Base64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lengths_use_short_and_long_forms() {
        let mut buf = [0u8; 400];
        let mut w = DerWriter {
            buf: &mut buf,
            len: 0,
        };
        w.nested(SEQUENCE, |w| w.tlv(OCTET_STRING, &[7; 200]))
            .unwrap();
        assert_eq!(&buf[..5], &[0x30, 0x81, 0xcb, 0x04, 0x81]);
        assert_eq!(buf[5], 200);
        let (tag, content, rest) = tlv(&buf[..206], "x").unwrap();
        assert_eq!((tag, content.len(), rest.len()), (SEQUENCE, 203, 0));
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let mut buf = [0u8; 40];
        let n = {
            let mut w = DerWriter {
                buf: &mut buf,
                len: 0,
            };
            w.unsigned(&[0, 0, 0x80, 1]).unwrap();
            w.unsigned(&[0, 0, 0x7f]).unwrap();
            w.unsigned(&[0, 0]).unwrap();
            w.len
        };
        assert_eq!(&buf[..n], &[2, 3, 0, 0x80, 1, 2, 1, 0x7f, 2, 1, 0]);
    }

    #[test]
    fn times_parse_both_forms_and_refuse_junk() {
        assert_eq!(
            x509_time(UTC_TIME, b"700101000000Z", "t"),
            Ok(UnixSeconds::from_secs(0)),
            "the epoch"
        );
        assert_eq!(
            x509_time(GENERALIZED_TIME, b"20261126203341Z", "t"),
            Ok(UnixSeconds::from_secs(1_795_725_221))
        );
        assert_eq!(
            x509_time(UTC_TIME, b"491231235959Z", "t"),
            Ok(UnixSeconds::from_secs(2_524_607_999))
        );
        for junk in [
            &b"7001010000Z"[..],
            b"701301000000Z",
            b"70010100000aZ",
            b"700101000000+",
        ] {
            assert!(x509_time(UTC_TIME, junk, "t").is_err(), "{junk:?}");
        }
    }

    #[test]
    fn truncated_der_is_refused_not_panicking() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x82, 1],
            &[0x30, 0x05, 1, 2],
            &[0x30, 0x84, 0, 0, 0, 0],
        ] {
            assert!(certificate_info(input).is_err());
        }
    }

    #[test]
    fn name_values_reads_every_o_and_the_cn_in_order() {
        let mut buf = [0u8; 200];
        let n = {
            let mut w = DerWriter {
                buf: &mut buf,
                len: 0,
            };
            w.nested(SEQUENCE, |w| {
                name_attribute(w, OID_O, b"system:masters")?;
                name_attribute(w, OID_O, b"ops")?;
                name_attribute(w, OID_CN, b"alice")?;
                // A BMPString value is skipped, not misread.
                w.nested(SET, |w| {
                    w.nested(SEQUENCE, |w| {
                        w.tlv(OID, OID_O)?;
                        w.tlv(0x1e, &[0, b'x'])
                    })
                })
            })
            .unwrap();
            w.len
        };
        let name = &buf[..n];
        let orgs: heapless::Vec<&str, 4> = name_values(name, OID_ORGANIZATION).collect();
        assert_eq!(orgs.as_slice(), ["system:masters", "ops"]);
        assert_eq!(name_values(name, OID_COMMON_NAME).next(), Some("alice"));
        // Truncated or garbage names give nothing, without panicking.
        for cut in 0..n {
            let _ = name_values(&name[..cut], OID_ORGANIZATION).count();
        }
        assert_eq!(name_values(&[0x31, 0x00], OID_COMMON_NAME).count(), 0);
    }

    #[test]
    fn private_key_der_has_the_sec1_shape() {
        let der = ec_private_key_der(&[0x11; 32], &[0x04; 65]);
        assert_eq!(&der[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        assert_eq!(&der[51..55], &[0xa1, 0x44, 0x03, 0x42]);
        assert_eq!(der[120], 0x04);
    }

    #[test]
    fn renewal_is_a_fraction_of_the_lifetime() {
        let info = CertificateInfo {
            not_before: UnixSeconds::from_secs(1000),
            not_after: UnixSeconds::from_secs(2000),
            public_key: &[],
        };
        assert_eq!(info.renew_at(700), UnixSeconds::from_secs(1700));
        assert_eq!(info.renew_at(5000), UnixSeconds::from_secs(2000));
    }
}
