//! The CertificateSigningRequest wire code shared by the agent's renewals
//! ([`crate::agent`]) and the bootstrap join ([`crate::join`]): the CSR object POSTed, reading
//! one back, and turning an issued certificate into DER checked against the requested key. It
//! sits below both, so neither imports the other.

use heapless::Vec;
use serde::{Deserialize, Serialize, Serializer};

use crate::http::{self, BodyType, HttpError, Method};
use crate::objects as obj;
use crate::paths::ApiPath;
use crate::pki::{self, CertificateInfo, CsrSubject, PkiError, PublicKey};

/// Longest CSR (as PEM) and issued certificate (as PEM) handled; P-256 ones are under 1 KiB.
pub const CERT_PEM_MAX: usize = 1536;
/// Longest issued certificate (DER).
pub const CERT_DER_MAX: usize = 1024;

/// Which of the node's certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// The client certificate the node authenticates to the API server with.
    Client,
    /// The kubelet port's serving certificate.
    Serving,
}

impl CertKind {
    /// The label value in metrics and the word in CSR names.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Serving => "serving",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Client => 0,
            Self::Serving => 1,
        }
    }

    /// The CSR signer that issues this kind.
    pub fn signer(self) -> &'static str {
        match self {
            Self::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Self::Serving => "kubernetes.io/kubelet-serving",
        }
    }

    /// The key usages requested.
    pub fn usages(self) -> [&'static str; 3] {
        // Kubernetes 1.20 requires exactly these three for each signer, even for ECDSA keys.
        match self {
            Self::Client => ["digital signature", "key encipherment", "client auth"],
            Self::Serving => ["digital signature", "key encipherment", "server auth"],
        }
    }
}

/// A CSR's status, as far as the agent reads it.
#[derive(Deserialize)]
struct CsrLite<'a> {
    #[serde(borrow, default)]
    status: CsrStatusLite<'a>,
}

#[derive(Deserialize, Default)]
struct CsrStatusLite<'a> {
    #[serde(borrow, default)]
    certificate: Option<&'a str>,
    #[serde(borrow, default)]
    conditions: Vec<ConditionLite<'a>, 4>,
}

#[derive(Deserialize)]
struct ConditionLite<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
}

/// The CertificateSigningRequest object POSTed.
#[derive(Serialize)]
struct CsrObject<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    metadata: CsrMeta<'a>,
    spec: CsrSpec<'a>,
}

#[derive(Serialize)]
struct CsrMeta<'a> {
    name: &'a str,
    labels: ManagedBy,
}

#[derive(Serialize)]
struct ManagedBy {
    #[serde(rename = "app.kubernetes.io/managed-by")]
    managed_by: &'static str,
}

#[derive(Serialize)]
struct CsrSpec<'a> {
    request: Base64<'a>,
    #[serde(rename = "signerName")]
    signer_name: &'a str,
    usages: [&'a str; 3],
}

/// Bytes serialized as a standard base64 string, in small pieces (no buffer for the whole).
struct Base64<'a>(&'a [u8]);

impl core::fmt::Display for Base64<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut out = [0u8; 64];
        for chunk in self.0.chunks(48) {
            let text = pki::base64_encode(chunk, &mut out).map_err(|_| core::fmt::Error)?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Writes the POST of a CertificateSigningRequest named `name` carrying `csr_pem` for `kind`'s
/// signer, authenticated by the connection's client certificate or by `bearer`.
pub(crate) fn encode_csr_post(
    out: &mut [u8],
    host: &str,
    bearer: Option<&str>,
    name: &str,
    csr_pem: &[u8],
    kind: CertKind,
) -> Result<usize, HttpError> {
    let csr = CsrObject {
        api_version: "certificates.k8s.io/v1",
        kind: "CertificateSigningRequest",
        metadata: CsrMeta {
            name,
            labels: ManagedBy {
                managed_by: "picolet",
            },
        },
        spec: CsrSpec {
            request: Base64(csr_pem),
            signer_name: kind.signer(),
            usages: kind.usages(),
        },
    };
    let mut body = |buf: &mut [u8]| obj::to_json(&csr, buf).ok();
    http::encode_request_with_token(
        out,
        Method::Post,
        host,
        format_args!("{}", ApiPath::CertificateSigningRequests),
        bearer,
        Some((BodyType::Json, &mut body)),
    )
}

/// Writes the GET that reads a CertificateSigningRequest back.
pub(crate) fn encode_csr_get(
    out: &mut [u8],
    host: &str,
    bearer: Option<&str>,
    name: &str,
) -> Result<usize, HttpError> {
    http::encode_request_with_token(
        out,
        Method::Get,
        host,
        format_args!("{}", ApiPath::CertificateSigningRequest(name)),
        bearer,
        None,
    )
}

/// What a CSR read back says.
pub(crate) enum CsrOutcome<'b> {
    /// Not decided or not signed yet.
    Pending,
    /// Denied or failed.
    Refused,
    /// Signed: the certificate field (base64 of PEM).
    Issued(&'b [u8]),
    /// Not a CSR object.
    Unreadable,
}

pub(crate) fn read_csr_outcome(body: &[u8]) -> CsrOutcome<'_> {
    let Some(csr) = obj::from_json::<CsrLite<'_>>(body) else {
        return CsrOutcome::Unreadable;
    };
    match csr.status.certificate.filter(|c| !c.is_empty()) {
        Some(b64) => CsrOutcome::Issued(b64.as_bytes()),
        None if csr
            .status
            .conditions
            .iter()
            .any(|c| c.kind == "Denied" || c.kind == "Failed") =>
        {
            CsrOutcome::Refused
        }
        None => CsrOutcome::Pending,
    }
}

/// Builds a CSR with `build` and keeps it as PEM in `pem`.
pub(crate) fn build_csr_pem(
    subject: &CsrSubject<'_>,
    build: impl FnOnce(&CsrSubject<'_>, &mut [u8]) -> Result<usize, PkiError>,
    pem: &mut Vec<u8, CERT_PEM_MAX>,
) -> Result<(), PkiError> {
    let mut der = [0u8; 640];
    let n = build(subject, &mut der)?;
    pem.clear();
    pem.resize_default(CERT_PEM_MAX)
        .map_err(|_| PkiError::BufferTooSmall)?;
    let len = pki::pem_encode(pki::CERTIFICATE_REQUEST, &der[..n], pem)?;
    pem.truncate(len);
    Ok(())
}

/// base64 → PEM (through `pem`) → DER (into `der`), then checks the certificate is for
/// `public_key`. On error both buffers are left empty.
pub(crate) fn decode_issued_certificate(
    b64: &[u8],
    public_key: &PublicKey,
    pem: &mut Vec<u8, CERT_PEM_MAX>,
    der: &mut Vec<u8, CERT_DER_MAX>,
) -> Result<(), PkiError> {
    pem.clear();
    der.clear();
    pem.resize_default(CERT_PEM_MAX)
        .map_err(|_| PkiError::BufferTooSmall)?;
    let result = pki::base64_decode(b64, pem)
        .map(|p| p.len())
        .and_then(|pem_len| {
            der.resize_default(CERT_DER_MAX)
                .map_err(|_| PkiError::BufferTooSmall)?;
            pki::pem_decode(pki::CERTIFICATE, &pem[..pem_len], der).map(|d| d.len())
        })
        .and_then(|len| {
            der.truncate(len);
            let info: CertificateInfo<'_> = pki::certificate_info(der)?;
            if info.public_key != public_key {
                return Err(PkiError::Malformed {
                    at: "subjectPublicKey (not the requested key)",
                });
            }
            Ok(())
        });
    pem.clear();
    if result.is_err() {
        der.clear();
    }
    result
}
