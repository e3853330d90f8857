//! Certificates from the Kubernetes CSR API, as a kubelet gets them: the node's client
//! certificate is renewed at 70–80 % of its lifetime through
//! `kubernetes.io/kube-apiserver-client-kubelet` (auto-approved for a node renewing itself), and
//! its kubelet-port serving certificate is requested (and renewed) through
//! `kubernetes.io/kubelet-serving` (approved by an administrator or `picolet approve`).
//!
//! The driver owns the keys. When [`Agent::csr_wanted`] names a certificate, the driver makes a
//! fresh key and calls [`Agent::submit_csr`] with a closure that signs the request; the agent
//! POSTs it, polls it until it is issued (or denied), checks that the certificate is for that
//! key, and offers it through [`Agent::issued_certificate`]. The driver installs it with its key
//! and reports that with [`Agent::set_certificate`]. Until then the old certificate stays in use,
//! so a failed renewal never costs the node its connection.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize, Serializer};

use super::*;
use crate::pki::{self, CertificateInfo, CsrSubject, PkiError, PublicKey, San};

/// Longest CSR (as PEM) and issued certificate (as PEM) handled; P-256 ones are under 1 KiB.
pub const CERT_PEM_MAX: usize = 1536;
/// Longest issued certificate (DER).
pub const CERT_DER_MAX: usize = 1024;
/// How often a pending CSR is read back during its first minute, then afterwards.
pub const CSR_POLL_FAST_MS: Millis = 2_000;
/// See [`CSR_POLL_FAST_MS`]; a serving CSR may wait long for an administrator.
pub const CSR_POLL_SLOW_MS: Millis = 30_000;
/// A denied or failed CSR is tried again (with a new key) after this long.
pub const CSR_RETRY_AFTER_DENIAL_MS: Millis = 300_000;

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

    fn index(self) -> usize {
        match self {
            Self::Client => 0,
            Self::Serving => 1,
        }
    }

    fn signer(self) -> &'static str {
        match self {
            Self::Client => "kubernetes.io/kube-apiserver-client-kubelet",
            Self::Serving => "kubernetes.io/kubelet-serving",
        }
    }

    fn usages(self) -> [&'static str; 3] {
        // Kubernetes 1.20 requires exactly these three for each signer, even for ECDSA keys.
        match self {
            Self::Client => ["digital signature", "key encipherment", "client auth"],
            Self::Serving => ["digital signature", "key encipherment", "server auth"],
        }
    }
}

/// Which certificates the agent looks after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CertificatePolicy {
    /// Renew the client certificate through the CSR API before it expires.
    pub rotate_client: bool,
    /// Request a serving certificate for the kubelet port (and renew it).
    pub request_serving: bool,
}

/// What the agent knows of one installed certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledCertificate {
    /// End of validity, Unix seconds.
    pub not_after: u64,
    /// When a renewal starts, Unix seconds.
    pub renew_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// The driver is to make a key and call [`Agent::submit_csr`].
    NeedCsr,
    /// POST the CSR held in `pem`.
    Submit,
    /// Read the CSR back until it carries a certificate.
    Wait { since: Millis },
    /// The certificate is in `der`, waiting for the driver to install it.
    Issued,
}

/// The CSR state of the agent: at most one certificate is being obtained at a time.
pub(super) struct Certificates {
    policy: CertificatePolicy,
    /// Where each renewal falls within the lifetime, in ‰ (700–799, fixed per boot, so a fleet
    /// does not renew in step).
    fraction_permille: u32,
    installed: [Option<InstalledCertificate>; 2],
    active: Option<(CertKind, Step)>,
    name: String<96>,
    public_key: PublicKey,
    /// The CSR as PEM while submitting; the issued certificate's PEM while decoding.
    pem: Vec<u8, CERT_PEM_MAX>,
    der: Vec<u8, CERT_DER_MAX>,
    sched: Schedule,
}

impl Certificates {
    pub(super) fn new(policy: CertificatePolicy, seed: u32, now: Millis) -> Self {
        Self {
            policy,
            fraction_permille: 700 + seed % 100,
            installed: [None; 2],
            active: None,
            name: String::new(),
            public_key: [0; 65],
            pem: Vec::new(),
            der: Vec::new(),
            sched: Schedule {
                at: now,
                backoff: Backoff::default(),
            },
        }
    }

    pub(super) fn installed_all(&self) -> [Option<InstalledCertificate>; 2] {
        self.installed
    }

    pub(super) fn restore(&mut self, installed: [Option<InstalledCertificate>; 2]) {
        self.installed = installed;
    }

    fn wanted(&self, kind: CertKind) -> bool {
        match kind {
            CertKind::Client => self.policy.rotate_client,
            CertKind::Serving => self.policy.request_serving,
        }
    }

    /// A certificate that should be obtained now, if none is being obtained.
    fn due(&self, unix_s: Option<u64>) -> Option<CertKind> {
        let unix_s = unix_s?;
        [CertKind::Client, CertKind::Serving]
            .into_iter()
            .filter(|&k| self.wanted(k))
            .find(|&k| match self.installed[k.index()] {
                Some(c) => unix_s >= c.renew_at,
                // No client certificate means the driver cannot talk to us at all; a missing
                // serving certificate is requested.
                None => k == CertKind::Serving,
            })
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

const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

impl Agent<'_> {
    /// Tells the agent which certificate of `kind` is in use (at start, and after installing
    /// one from [`Agent::issued_certificate`]); its validity sets the next renewal.
    pub fn set_certificate(
        &mut self,
        kind: CertKind,
        der: &[u8],
    ) -> Result<InstalledCertificate, PkiError> {
        let info = pki::certificate_info(der)?;
        let c = InstalledCertificate {
            not_after: info.not_after,
            renew_at: info.renew_at(self.certs.fraction_permille),
        };
        self.certs.installed[kind.index()] = Some(c);
        if matches!(&self.certs.active, Some((k, Step::Issued)) if *k == kind) {
            self.certs.active = None;
            self.certs.der.clear();
            self.metrics.certificates_installed[kind.index()] += 1;
        }
        Ok(c)
    }

    /// The installed certificate of `kind`, as last told by [`Agent::set_certificate`].
    pub fn certificate(&self, kind: CertKind) -> Option<InstalledCertificate> {
        self.certs.installed[kind.index()]
    }

    /// A certificate for which the driver should make a new key and call
    /// [`Agent::submit_csr`]. Asked before [`Agent::poll_request`].
    pub fn csr_wanted(&self) -> Option<CertKind> {
        match &self.certs.active {
            Some((kind, Step::NeedCsr)) => Some(*kind),
            _ => None,
        }
    }

    /// Builds the CSR for `kind` with `build` (which signs it with the new key whose public
    /// half is `public_key`) and queues it. On error nothing changes and the request is asked
    /// for again after a backoff.
    pub fn submit_csr(
        &mut self,
        now: Millis,
        kind: CertKind,
        public_key: &PublicKey,
        build: impl FnOnce(&CsrSubject<'_>, &mut [u8]) -> Result<usize, PkiError>,
    ) -> Result<(), PkiError> {
        let mut der = [0u8; 640];
        let ip: Option<[u8; 4]> = parse_ipv4(&self.internal_ip);
        let sans_buf = [
            San::Dns(self.cfg.node_name),
            San::Ipv4(ip.unwrap_or_default()),
        ];
        let sans: &[San<'_>] = match (kind, ip) {
            (CertKind::Client, _) => &[],
            (CertKind::Serving, Some(_)) => &sans_buf,
            (CertKind::Serving, None) => &sans_buf[..1],
        };
        let subject = CsrSubject {
            node_name: self.cfg.node_name,
            sans,
        };
        let result = build(&subject, &mut der).and_then(|n| {
            self.certs.pem.clear();
            self.certs
                .pem
                .resize_default(CERT_PEM_MAX)
                .map_err(|_| PkiError::BufferTooSmall)?;
            let len = pki::pem_encode(pki::CERTIFICATE_REQUEST, &der[..n], &mut self.certs.pem)?;
            self.certs.pem.truncate(len);
            Ok(())
        });
        if let Err(e) = result {
            self.certs.pem.clear();
            self.certs.active = None;
            self.metrics.csr_failures[kind.index()] += 1;
            self.certs.sched.retry(now);
            return Err(e);
        }
        let unix_s = self.clock.unix_ms(now).unwrap_or(0) / 1000;
        self.certs.name = bounded(format_args!(
            "picolet-{}-{}-{unix_s}",
            self.cfg.node_name,
            kind.as_str()
        ));
        self.certs.public_key = *public_key;
        self.certs.active = Some((kind, Step::Submit));
        self.certs.sched.ok_then(now);
        Ok(())
    }

    /// A certificate that was issued for the key of the last [`Agent::submit_csr`], as DER.
    /// The driver installs it with that key, then calls [`Agent::set_certificate`].
    pub fn issued_certificate(&self) -> Option<(CertKind, &[u8])> {
        match &self.certs.active {
            Some((kind, Step::Issued)) => Some((*kind, &self.certs.der)),
            _ => None,
        }
    }

    /// The next CSR request, if one is due (called by the scheduler).
    pub(super) fn next_certificate_request(&mut self, now: Millis) -> Option<Pending> {
        if self.certs.active.is_none() && self.certs.sched.due(now) {
            let unix_s = self.clock.unix_ms(now).map(|ms| ms / 1000);
            if let Some(kind) = self.certs.due(unix_s) {
                self.certs.active = Some((kind, Step::NeedCsr));
            }
        }
        match &self.certs.active {
            Some((kind, Step::Submit)) if self.certs.sched.due(now) => {
                Some(Pending::CsrCreate(*kind))
            }
            Some((kind, Step::Wait { .. })) if self.certs.sched.due(now) => {
                Some(Pending::CsrGet(*kind))
            }
            _ => None,
        }
    }

    /// When the certificates next need the control connection.
    pub(super) fn certificate_wakeup(&self, now: Millis) -> Millis {
        match &self.certs.active {
            Some((_, Step::NeedCsr)) => now,
            Some((_, Step::Issued)) => Millis::MAX,
            Some(_) => self.certs.sched.at,
            None => {
                let unix = self.clock.unix_ms(now);
                match (unix, self.certs.due(unix.map(|ms| ms / 1000))) {
                    (Some(_), Some(_)) => self.certs.sched.at,
                    (Some(ms), None) => {
                        // Wake at the next renewal time (at least once a minute, as clocks move).
                        let next = [CertKind::Client, CertKind::Serving]
                            .into_iter()
                            .filter(|&k| self.certs.wanted(k))
                            .filter_map(|k| self.certs.installed[k.index()])
                            .map(|c| c.renew_at.saturating_mul(1000).saturating_sub(ms))
                            .min()
                            .unwrap_or(60_000)
                            .min(60_000);
                        now + next
                    }
                    (None, _) => now + 60_000,
                }
            }
        }
    }

    pub(super) fn encode_certificate_request(
        &mut self,
        pending: Pending,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let host = self.cfg.api_host;
        match pending {
            Pending::CsrCreate(kind) => {
                let csr = CsrObject {
                    api_version: "certificates.k8s.io/v1",
                    kind: "CertificateSigningRequest",
                    metadata: CsrMeta {
                        name: &self.certs.name,
                        labels: ManagedBy {
                            managed_by: "picolet",
                        },
                    },
                    spec: CsrSpec {
                        request: Base64(&self.certs.pem),
                        signer_name: kind.signer(),
                        usages: kind.usages(),
                    },
                };
                let mut body = |buf: &mut [u8]| obj::to_json(&csr, buf).ok();
                http::encode_request(
                    out,
                    Method::Post,
                    host,
                    format_args!("{CSR_PATH}"),
                    Some((BodyType::Json, &mut body)),
                )
            }
            _ => http::encode_request(
                out,
                Method::Get,
                host,
                format_args!("{CSR_PATH}/{}", self.certs.name),
                None,
            ),
        }
    }

    pub(super) fn on_certificate_response(
        &mut self,
        now: Millis,
        pending: Pending,
        status: u16,
        body: &[u8],
    ) {
        let ok = (200..300).contains(&status);
        let Some((kind, _)) = self.certs.active.clone() else {
            return;
        };
        match pending {
            // 409: a CSR of this name exists (an earlier POST whose answer was lost).
            Pending::CsrCreate(_) if ok || status == 409 => {
                self.metrics.csr_submitted[kind.index()] += 1;
                self.certs.active = Some((kind, Step::Wait { since: now }));
                self.certs.sched.ok_then(now + CSR_POLL_FAST_MS);
            }
            Pending::CsrCreate(_) => self.csr_failed(now, kind, false),
            Pending::CsrGet(_) if ok => self.read_csr(now, kind, body),
            // Deleted (for example by the CSR cleaner): start again with a new key.
            Pending::CsrGet(_) if status == 404 => self.csr_failed(now, kind, false),
            Pending::CsrGet(_) => self.certs.sched.retry(now),
            _ => {}
        }
    }

    pub(super) fn on_certificate_transport_error(&mut self, now: Millis) {
        self.certs.sched.retry(now);
    }

    fn read_csr(&mut self, now: Millis, kind: CertKind, body: &[u8]) {
        let Some(csr) = obj::from_json::<CsrLite<'_>>(body) else {
            self.certs.sched.retry(now);
            return;
        };
        let refused = csr
            .status
            .conditions
            .iter()
            .any(|c| c.kind == "Denied" || c.kind == "Failed");
        match csr.status.certificate.filter(|c| !c.is_empty()) {
            Some(b64) => match self.decode_issued(b64.as_bytes()) {
                Ok(()) => self.certs.active = Some((kind, Step::Issued)),
                Err(_) => self.csr_failed(now, kind, true),
            },
            None if refused => self.csr_failed(now, kind, true),
            None => {
                let Some((_, Step::Wait { since })) = self.certs.active else {
                    return;
                };
                let wait = if now.saturating_sub(since) < 60_000 {
                    CSR_POLL_FAST_MS
                } else {
                    CSR_POLL_SLOW_MS
                };
                self.certs.sched.ok_then(now + wait);
            }
        }
    }

    /// base64 → PEM → DER, then checks the certificate is for the submitted key.
    fn decode_issued(&mut self, b64: &[u8]) -> Result<(), PkiError> {
        let c = &mut self.certs;
        c.pem.clear();
        c.pem
            .resize_default(CERT_PEM_MAX)
            .map_err(|_| PkiError::BufferTooSmall)?;
        let pem_len = pki::base64_decode(b64, &mut c.pem)?.len();
        c.der.clear();
        c.der
            .resize_default(CERT_DER_MAX)
            .map_err(|_| PkiError::BufferTooSmall)?;
        let der_len = pki::pem_decode(pki::CERTIFICATE, &c.pem[..pem_len], &mut c.der)?.len();
        c.der.truncate(der_len);
        c.pem.clear();
        let info: CertificateInfo<'_> = pki::certificate_info(&c.der)?;
        if info.public_key != c.public_key {
            c.der.clear();
            return Err(PkiError::Malformed {
                at: "subjectPublicKey (not the requested key)",
            });
        }
        Ok(())
    }

    fn csr_failed(&mut self, now: Millis, kind: CertKind, refused: bool) {
        self.metrics.csr_failures[kind.index()] += 1;
        self.certs.active = None;
        self.certs.pem.clear();
        self.certs.der.clear();
        if refused {
            self.certs.sched.ok_then(now + CSR_RETRY_AFTER_DENIAL_MS);
        } else {
            self.certs.sched.retry(now);
        }
    }
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}
