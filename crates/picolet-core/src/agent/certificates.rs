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

use super::*;
pub use crate::csr::{CERT_DER_MAX, CERT_PEM_MAX, CertKind};
use crate::csr::{
    CsrOutcome, build_csr_pem, decode_issued_certificate, encode_csr_get, encode_csr_post,
    read_csr_outcome,
};
use crate::pki::{self, CsrSubject, PkiError, PublicKey, San};

/// How often a pending CSR is read back during its first minute, then afterwards.
pub const CSR_POLL_FAST_MS: Duration = Duration::from_ms(2_000);
/// See [`CSR_POLL_FAST_MS`]; a serving CSR may wait long for an administrator.
pub const CSR_POLL_SLOW_MS: Duration = Duration::from_ms(30_000);
/// A denied or failed CSR is tried again (with a new key) after this long.
pub const CSR_RETRY_AFTER_DENIAL_MS: Duration = Duration::from_ms(300_000);

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
    /// End of validity.
    pub not_after: UnixSeconds,
    /// When a renewal starts.
    pub renew_at: UnixSeconds,
}

/// The requests of the CSR API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CsrRequest {
    /// POST the CSR for this certificate.
    Create(CertKind),
    /// Read it back.
    Get(CertKind),
}

impl CsrRequest {
    pub(super) fn method(self) -> Method {
        match self {
            Self::Create(_) => Method::Post,
            Self::Get(_) => Method::Get,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Create(_) => "certificate signing request",
            Self::Get(_) => "certificate signing request read",
        }
    }
}

/// Where one certificate's request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CsrStage {
    /// The driver is to make a key and call [`Agent::submit_csr`].
    NeedCsr,
    /// POST the CSR held in `pem`.
    Submit,
    /// Read the CSR back until it carries a certificate (may last long: a serving CSR waits
    /// for an administrator, and must not hold up a client renewal meanwhile).
    Wait { since: Millis },
    /// The certificate is in `der`, waiting for the driver to install it.
    Issued,
}

impl CsrStage {
    /// Stages that use the shared `pem` / `der` buffers: one certificate at a time.
    fn exclusive(self) -> bool {
        !matches!(self, CsrStage::Wait { .. })
    }
}

/// One certificate's request in progress.
struct CertificateSlot {
    stage: Option<CsrStage>,
    name: String<96>,
    public_key: PublicKey,
    sched: Schedule,
    installed: Option<InstalledCertificate>,
}

/// The CSR state of the agent.
pub(super) struct Certificates {
    policy: CertificatePolicy,
    /// Where each renewal falls within the lifetime, in ‰ (700–799, fixed per boot, so a fleet
    /// does not renew in step).
    fraction_permille: u32,
    slots: [CertificateSlot; 2],
    /// The CSR as PEM while submitting; the issued certificate's PEM while decoding.
    pem: Vec<u8, CERT_PEM_MAX>,
    der: Vec<u8, CERT_DER_MAX>,
}

const KINDS: [CertKind; 2] = [CertKind::Client, CertKind::Serving];

impl Certificates {
    pub(super) fn new(policy: CertificatePolicy, seed: u32, now: Millis) -> Self {
        let slot = || CertificateSlot {
            stage: None,
            name: String::new(),
            public_key: [0; 65],
            sched: Schedule::starting(now),
            installed: None,
        };
        Self {
            policy,
            fraction_permille: 700 + seed % 100,
            slots: [slot(), slot()],
            pem: Vec::new(),
            der: Vec::new(),
        }
    }

    pub(super) fn installed_all(&self) -> [Option<InstalledCertificate>; 2] {
        [self.slots[0].installed, self.slots[1].installed]
    }

    pub(super) fn restore(&mut self, installed: [Option<InstalledCertificate>; 2]) {
        self.slots[0].installed = installed[0];
        self.slots[1].installed = installed[1];
    }

    fn slot(&mut self, kind: CertKind) -> &mut CertificateSlot {
        &mut self.slots[kind.index()]
    }

    fn wanted(&self, kind: CertKind) -> bool {
        match kind {
            CertKind::Client => self.policy.rotate_client,
            CertKind::Serving => self.policy.request_serving,
        }
    }

    fn busy(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.stage.is_some_and(CsrStage::exclusive))
    }

    /// Whether `kind` should be obtained now (nothing in progress for it).
    fn due(&self, kind: CertKind, unix_s: Option<UnixSeconds>) -> bool {
        let slot = &self.slots[kind.index()];
        let Some(unix_s) = unix_s else {
            return false;
        };
        self.wanted(kind)
            && slot.stage.is_none()
            && match slot.installed {
                Some(c) => unix_s >= c.renew_at,
                // No client certificate means the driver cannot talk to us at all; a missing
                // serving certificate is requested.
                None => kind == CertKind::Serving,
            }
    }

    fn stage(&self, kind: CertKind) -> Option<CsrStage> {
        self.slots[kind.index()].stage
    }
}

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
        let issued = self.certs.stage(kind) == Some(CsrStage::Issued);
        let slot = self.certs.slot(kind);
        slot.installed = Some(c);
        if issued {
            slot.stage = None;
            self.certs.der.clear();
            self.metrics.certificates_installed[kind.index()] += 1;
        }
        Ok(c)
    }

    /// Takes the issued certificate of `kind` into use (see [`Agent::certificate_installed`]).
    pub(super) fn install_issued(
        &mut self,
        now: Millis,
        kind: CertKind,
    ) -> Result<InstalledCertificate, PkiError> {
        if self.certs.stage(kind) != Some(CsrStage::Issued) {
            return Err(PkiError::NotWanted);
        }
        let info = match pki::certificate_info(&self.certs.der) {
            Ok(info) => info,
            // Never offered again: a new request follows.
            Err(e) => {
                self.csr_failed(now, kind, true);
                return Err(e);
            }
        };
        let c = InstalledCertificate {
            not_after: info.not_after,
            renew_at: info.renew_at(self.certs.fraction_permille),
        };
        let slot = self.certs.slot(kind);
        slot.installed = Some(c);
        slot.stage = None;
        self.certs.der.clear();
        self.metrics.certificates_installed[kind.index()] += 1;
        Ok(c)
    }

    /// Forgets an issued certificate the driver could not install; a new request follows.
    pub(super) fn drop_issued(&mut self, now: Millis, kind: CertKind) {
        if self.certs.stage(kind) == Some(CsrStage::Issued) {
            self.csr_failed(now, kind, false);
        }
    }

    /// The installed certificate of `kind`, as last told by [`Agent::set_certificate`].
    pub fn certificate(&self, kind: CertKind) -> Option<InstalledCertificate> {
        self.certs.slots[kind.index()].installed
    }

    /// A certificate for which the driver should make a new key and call
    /// [`Agent::submit_csr`]. Asked before [`Agent::poll_request`].
    pub fn csr_wanted(&self) -> Option<CertKind> {
        KINDS
            .into_iter()
            .find(|&k| self.certs.stage(k) == Some(CsrStage::NeedCsr))
    }

    /// Builds the CSR for `kind` with `build` (which signs it with the new key whose public
    /// half is `public_key`) and queues it. On error nothing is sent and the request is asked
    /// for again after a backoff.
    pub fn submit_csr(
        &mut self,
        now: Millis,
        kind: CertKind,
        public_key: &PublicKey,
        build: impl FnOnce(&CsrSubject<'_>, &mut [u8]) -> Result<usize, PkiError>,
    ) -> Result<(), PkiError> {
        if self.certs.stage(kind) != Some(CsrStage::NeedCsr) {
            return Err(PkiError::NotWanted);
        }
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
        let result = build_csr_pem(&subject, build, &mut self.certs.pem);
        if let Err(e) = result {
            self.csr_failed(now, kind, false);
            return Err(e);
        }
        let unix_s = self
            .clock
            .unix_ms(now)
            .unwrap_or_default()
            .to_seconds()
            .as_secs();
        let name = bounded(format_args!(
            "picolet-{}-{}-{unix_s}",
            self.cfg.node_name,
            kind.as_str()
        ));
        let slot = self.certs.slot(kind);
        slot.name = name;
        slot.public_key = *public_key;
        slot.stage = Some(CsrStage::Submit);
        slot.sched.ok_then(now);
        Ok(())
    }

    /// A certificate that was issued for the key of the last [`Agent::submit_csr`], as DER.
    /// The driver installs it with that key, then calls [`Agent::set_certificate`].
    pub fn issued_certificate(&self) -> Option<(CertKind, &[u8])> {
        KINDS
            .into_iter()
            .find(|&k| self.certs.stage(k) == Some(CsrStage::Issued))
            .map(|k| (k, &self.certs.der[..]))
    }

    /// The next CSR request, if one is due (called by the scheduler).
    pub(super) fn next_certificate_request(&mut self, now: Millis) -> Option<CsrRequest> {
        let unix_s = self.clock.unix_ms(now).map(UnixMillis::to_seconds);
        for kind in KINDS {
            if !self.certs.busy()
                && self.certs.slots[kind.index()].sched.due(now)
                && self.certs.due(kind, unix_s)
            {
                self.certs.slot(kind).stage = Some(CsrStage::NeedCsr);
            }
        }
        for kind in KINDS {
            let slot = &self.certs.slots[kind.index()];
            if !slot.sched.due(now) {
                continue;
            }
            match slot.stage {
                Some(CsrStage::Submit) => return Some(CsrRequest::Create(kind)),
                Some(CsrStage::Wait { .. }) => return Some(CsrRequest::Get(kind)),
                _ => {}
            }
        }
        None
    }

    /// When the certificates next need the control connection.
    pub(super) fn certificate_wakeup(&self, now: Millis) -> Millis {
        let unix = self.clock.unix_ms(now);
        let mut t = Millis::MAX;
        for kind in KINDS {
            let slot = &self.certs.slots[kind.index()];
            let at = match slot.stage {
                Some(CsrStage::NeedCsr) => now,
                Some(CsrStage::Issued) => Millis::MAX,
                Some(_) => slot.sched.at,
                None if !self.certs.wanted(kind) => Millis::MAX,
                None => match (unix, slot.installed) {
                    // Nothing known yet: look again in a minute.
                    (None, _) | (_, None) => slot.sched.at.max(now + Duration::from_secs(60)),
                    // At the renewal time, looking again at least once a minute as clocks move.
                    (Some(unix), Some(c)) => {
                        let wait = UnixMillis::from(c.renew_at).saturating_sub(unix);
                        slot.sched.at.max(now + wait.min(Duration::from_secs(60)))
                    }
                },
            };
            t = t.min(at);
        }
        if self
            .certs
            .due(CertKind::Serving, unix.map(UnixMillis::to_seconds))
        {
            t = t.min(self.certs.slots[1].sched.at.max(now));
        }
        t
    }

    pub(super) fn encode_csr_request(
        &self,
        request: CsrRequest,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let host = self.cfg.api_host;
        match request {
            CsrRequest::Create(kind) => encode_csr_post(
                out,
                host,
                None,
                &self.certs.slots[kind.index()].name,
                &self.certs.pem,
                kind,
            ),
            CsrRequest::Get(kind) => {
                encode_csr_get(out, host, None, &self.certs.slots[kind.index()].name)
            }
        }
    }

    pub(super) fn on_csr_response(&mut self, now: Millis, request: CsrRequest, reply: &Reply) {
        let ok = reply.ok();
        match request {
            // 409: a CSR of this name exists (an earlier POST whose answer was lost).
            CsrRequest::Create(kind) if ok || reply.status == 409 => {
                self.metrics.csr_submitted[kind.index()] += 1;
                self.certs.pem.clear();
                let slot = self.certs.slot(kind);
                slot.stage = Some(CsrStage::Wait { since: now });
                slot.sched.ok_then(now + CSR_POLL_FAST_MS);
            }
            CsrRequest::Create(kind) => self.csr_failed(now, kind, false),
            CsrRequest::Get(kind) if ok => self.read_csr(now, kind, reply.body),
            // Deleted (for example by the CSR cleaner): start again with a new key.
            CsrRequest::Get(kind) if reply.status == 404 => self.csr_failed(now, kind, false),
            CsrRequest::Get(kind) => self.certs.slot(kind).sched.retry(now),
        }
    }

    pub(super) fn on_csr_transport_error(&mut self, now: Millis, request: CsrRequest) {
        let (CsrRequest::Create(kind) | CsrRequest::Get(kind)) = request;
        self.certs.slot(kind).sched.retry(now);
    }

    fn read_csr(&mut self, now: Millis, kind: CertKind, body: &[u8]) {
        match read_csr_outcome(body) {
            CsrOutcome::Unreadable => self.certs.slot(kind).sched.retry(now),
            // The shared buffers are taken: read it again shortly.
            CsrOutcome::Issued(_) if self.certs.busy() => self.certs.slot(kind).sched.retry(now),
            CsrOutcome::Issued(b64) => {
                let c = &mut self.certs;
                let key = c.slots[kind.index()].public_key;
                match decode_issued_certificate(b64, &key, &mut c.pem, &mut c.der) {
                    Ok(()) => c.slot(kind).stage = Some(CsrStage::Issued),
                    Err(_) => self.csr_failed(now, kind, true),
                }
            }
            CsrOutcome::Refused => self.csr_failed(now, kind, true),
            CsrOutcome::Pending => {
                let slot = self.certs.slot(kind);
                let since = match slot.stage {
                    Some(CsrStage::Wait { since }) => since,
                    _ => now,
                };
                let wait = if now.saturating_sub(since) < Duration::from_secs(60) {
                    CSR_POLL_FAST_MS
                } else {
                    CSR_POLL_SLOW_MS
                };
                slot.sched.ok_then(now + wait);
            }
        }
    }

    fn csr_failed(&mut self, now: Millis, kind: CertKind, refused: bool) {
        self.metrics.csr_failures[kind.index()] += 1;
        let exclusive = self.certs.stage(kind).is_some_and(CsrStage::exclusive);
        if exclusive {
            self.certs.pem.clear();
            self.certs.der.clear();
        }
        let slot = self.certs.slot(kind);
        slot.stage = None;
        if refused {
            slot.sched.ok_then(now + CSR_RETRY_AFTER_DENIAL_MS);
        } else {
            slot.sched.retry(now);
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
