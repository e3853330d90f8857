//! Joining with a bootstrap token (standard Kubernetes TLS bootstrapping), before a node has
//! a client certificate: the node makes a key, POSTs a `kube-apiserver-client-kubelet` CSR
//! authenticated by `Authorization: Bearer ID.SECRET` (as `system:bootstrap:ID`), and reads it
//! back until the controller-manager has approved (`nodeclient`) and signed it. The result is
//! the node's client certificate; from then on the [`crate::agent::Agent`] runs and renews it.
//!
//! Sans-IO like the agent, and driven the same way: [`Join::poll`] returns a [`JoinStep`] —
//! make a key (then [`Join::submit_csr`]), send a request on a TLS connection that verifies the
//! server but presents no client certificate (then [`Join::on_response`] or
//! [`Join::on_transport_error`]), sleep, or: joined, here is the certificate.

use core::fmt;

use heapless::{String, Vec};

use crate::backoff::Backoff;
use crate::csr::{self as certificates, CERT_DER_MAX, CERT_PEM_MAX, CertKind, CsrOutcome};
use crate::http::{HttpError, ResponseHead};
use crate::pki::{CsrSubject, PkiError, PublicKey};
use crate::time::{Duration, Millis};

/// How often the CSR is read back while it waits for the controller-manager.
pub const JOIN_POLL_MS: Duration = Duration::from_ms(1_000);

/// Why the join has not succeeded (yet): for the driver's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The API server refused the token (HTTP 401: wrong, expired or deleted).
    TokenRefused,
    /// The token may not create CSRs (HTTP 403: RBAC for the bootstrap group missing).
    Forbidden,
    /// The CSR was denied or failed, or the certificate was not for the node's key.
    CertificateRefused,
    /// Another HTTP status.
    Status(u16),
    /// No response (connection, TLS).
    Transport,
    /// The request did not fit the buffer.
    Encode(HttpError),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TokenRefused => f.write_str("the bootstrap token was refused (HTTP 401)"),
            Self::Forbidden => f.write_str(
                "the bootstrap token may not create CSRs (HTTP 403; run `picolet token` again)",
            ),
            Self::CertificateRefused => f.write_str("the certificate request was refused"),
            Self::Status(s) => write!(f, "unexpected HTTP {s}"),
            Self::Transport => f.write_str("no response from the API server"),
            Self::Encode(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    NeedKey,
    Submit,
    Wait,
    Done,
}

/// What the driver of a join does next.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinStep<'j> {
    /// Make a fresh key and call [`Join::submit_csr`] with it (keep it: the certificate is
    /// for it).
    MakeKey,
    /// Send the request written into `out[..len]`.
    Send {
        /// Its length.
        len: usize,
    },
    /// Nothing to do before this monotonic time.
    SleepUntil(Millis),
    /// The node's client certificate (DER), for the key of the last [`Join::submit_csr`].
    Joined(&'j [u8]),
}

/// The bootstrap join. See the module documentation.
pub struct Join<'a> {
    node_name: &'a str,
    api_host: &'a str,
    token: &'a str,
    step: Step,
    in_flight: bool,
    name: String<96>,
    public_key: PublicKey,
    pem: Vec<u8, CERT_PEM_MAX>,
    der: Vec<u8, CERT_DER_MAX>,
    at: Millis,
    backoff: Backoff,
    last_error: Option<JoinError>,
}

impl<'a> Join<'a> {
    /// A join for `node_name` with bootstrap `token` (`ID.SECRET`), sending `Host: api_host`.
    pub fn new(node_name: &'a str, api_host: &'a str, token: &'a str) -> Self {
        Self {
            node_name,
            api_host,
            token,
            step: Step::NeedKey,
            in_flight: false,
            name: String::new(),
            public_key: [0; 65],
            pem: Vec::new(),
            der: Vec::new(),
            at: Millis::ZERO,
            backoff: Backoff::default(),
            last_error: None,
        }
    }

    /// The next thing the driver does; `out` receives a request's bytes.
    pub fn poll(&mut self, now: Millis, out: &mut [u8]) -> Result<JoinStep<'_>, JoinError> {
        if self.step == Step::NeedKey {
            return Ok(JoinStep::MakeKey);
        }
        if let Some(len) = self.poll_request(now, out)? {
            return Ok(JoinStep::Send { len });
        }
        Ok(match self.step {
            Step::Done => JoinStep::Joined(&self.der),
            _ => JoinStep::SleepUntil(self.next_wakeup(now)),
        })
    }

    /// True when the driver should make a key and call [`Join::submit_csr`].
    pub fn key_wanted(&self) -> bool {
        self.step == Step::NeedKey
    }

    /// Builds the node's client CSR with `build` (signing with the key whose public half is
    /// `public_key`); `stamp` makes the CSR name unique (a boot counter or random number).
    pub fn submit_csr(
        &mut self,
        now: Millis,
        stamp: u32,
        public_key: &PublicKey,
        build: impl FnOnce(&CsrSubject<'_>, &mut [u8]) -> Result<usize, PkiError>,
    ) -> Result<(), PkiError> {
        let subject = CsrSubject {
            node_name: self.node_name,
            sans: &[],
        };
        certificates::build_csr_pem(&subject, build, &mut self.pem)?;
        self.name.clear();
        let _ = fmt::write(
            &mut self.name,
            format_args!("picolet-{}-bootstrap-{stamp:08x}", self.node_name),
        );
        self.public_key = *public_key;
        self.step = Step::Submit;
        // After a failure the backoff still applies to the new request.
        self.at = self.at.max(now);
        Ok(())
    }

    /// Writes the next request, or `None` when nothing is due before [`Join::next_wakeup`].
    pub fn poll_request(
        &mut self,
        now: Millis,
        out: &mut [u8],
    ) -> Result<Option<usize>, JoinError> {
        if self.in_flight || now < self.at {
            return Ok(None);
        }
        let bearer = Some(self.token);
        let n = match self.step {
            Step::Submit => certificates::encode_csr_post(
                out,
                self.api_host,
                bearer,
                &self.name,
                &self.pem,
                CertKind::Client,
            ),
            Step::Wait => certificates::encode_csr_get(out, self.api_host, bearer, &self.name),
            Step::NeedKey | Step::Done => return Ok(None),
        }
        .map_err(JoinError::Encode)?;
        self.in_flight = true;
        Ok(Some(n))
    }

    /// When to call [`Join::poll_request`] next.
    pub fn next_wakeup(&self, now: Millis) -> Millis {
        match self.step {
            Step::Submit | Step::Wait if !self.in_flight => self.at.max(now),
            Step::NeedKey => now,
            _ => Millis::MAX,
        }
    }

    /// The response to the request in flight.
    pub fn on_response(&mut self, now: Millis, head: &ResponseHead, body: &[u8]) {
        if !core::mem::take(&mut self.in_flight) {
            return;
        }
        let ok = (200..300).contains(&head.status);
        let refused = match head.status {
            401 => Some(JoinError::TokenRefused),
            403 => Some(JoinError::Forbidden),
            _ => None,
        };
        match (self.step, head.status) {
            (Step::Submit, _) if ok || head.status == 409 => {
                self.step = Step::Wait;
                self.pem.clear();
                self.backoff.reset();
                self.at = now + JOIN_POLL_MS;
            }
            (Step::Wait, _) if ok => match certificates::read_csr_outcome(body) {
                CsrOutcome::Issued(b64) => {
                    match certificates::decode_issued_certificate(
                        b64,
                        &self.public_key,
                        &mut self.pem,
                        &mut self.der,
                    ) {
                        Ok(()) => self.step = Step::Done,
                        Err(_) => self.restart(now, JoinError::CertificateRefused),
                    }
                }
                CsrOutcome::Refused => self.restart(now, JoinError::CertificateRefused),
                CsrOutcome::Pending | CsrOutcome::Unreadable => self.at = now + JOIN_POLL_MS,
            },
            // Deleted under us: a new key and CSR.
            (Step::Wait, 404) => self.restart(now, JoinError::Status(404)),
            (_, status) => {
                self.last_error = Some(refused.unwrap_or(JoinError::Status(status)));
                self.at = now + self.backoff.fail();
            }
        }
    }

    /// The request in flight got no response.
    pub fn on_transport_error(&mut self, now: Millis) {
        if core::mem::take(&mut self.in_flight) {
            self.last_error = Some(JoinError::Transport);
            self.at = now + self.backoff.fail();
        }
    }

    fn restart(&mut self, now: Millis, why: JoinError) {
        self.last_error = Some(why);
        self.step = Step::NeedKey;
        self.pem.clear();
        self.der.clear();
        self.at = now + self.backoff.fail();
    }

    /// The issued client certificate (DER), once the join is done; it certifies the key of the
    /// last [`Join::submit_csr`].
    pub fn certificate(&self) -> Option<&[u8]> {
        (self.step == Step::Done).then_some(&self.der[..])
    }

    /// The latest failure, for the driver's log.
    pub fn last_error(&self) -> Option<JoinError> {
        self.last_error
    }
}
