//! One kubelet-port request on one connection, driven the same way by every driver: the core
//! owns the sequence parse → authenticate (certificate, or bearer token by TokenReview) →
//! authorize → respond, and every kubelet-port counter; the driver only moves bytes, waits, and
//! writes the answer. The driver passes the same head at every step (the token is read from it).
//!
//! Driving a session: after the transport's handshake (if any), make a [`KubeletSession`] and
//! call [`Agent::kubelet_step`] with the request head read so far:
//! - [`KubeletStep::ReadMore`]: read more bytes after the ones given, then step again (a peer
//!   that closes first: [`Agent::kubelet_eof`]);
//! - [`KubeletStep::Authorizing`]: the API server is being asked (the review goes out on the
//!   control connection ahead of routine work); step again when the control connection has
//!   had a response, or at `until`;
//! - [`KubeletStep::Write`]: write `out[..len]`, one part of an answer longer than `out` (the
//!   metrics pages), then step again;
//! - [`KubeletStep::Respond`]: write `out[..len]` and close the connection. The session is over.
//!
//! `out` must hold at least [`kubelet::ANSWER_MIN`] bytes.
//!
//! Transport events that never reach a session (a refused handshake, a deadline, an eviction,
//! no room) are counted with [`Agent::count_kubelet`].

use super::*;
use crate::kubelet::{self, KubeletView, MetricsPage, Refusal, Request, Route};
use crate::metrics::{KubeletOutcome, PlatformStats};

/// Who is calling, as far as the transport could tell.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// Plain HTTP, like the kubelet's read-only port: no authentication, no authorization.
    Open,
    /// TLS without a client certificate: anonymous, unless the request carries a bearer token.
    Anonymous,
    /// TLS with a client certificate verified against the client CA.
    Verified(Identity<'a>),
}

/// What the driver does next for a kubelet-port connection.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeletStep {
    /// Read more of the request head, then step again.
    ReadMore,
    /// Wait until the control connection has had a response, or `until`, then step again.
    Authorizing {
        /// When to step again at the latest (the answer is 503 then).
        until: Millis,
    },
    /// Write `out[..len]`, a part of the answer, then step again for the next one.
    Write {
        /// Bytes of this part.
        len: usize,
    },
    /// Write `out[..len]` and close. `refused` says why the request was refused, for the log.
    Respond {
        /// Bytes of the answer.
        len: usize,
        /// The refusal, when it was one, with the route asked for (if it was readable).
        refused: Option<(Option<Route>, Refusal)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    Authorizing {
        req: Request,
        until: Millis,
    },
    /// A metrics page (in `page`) is going out in parts: `sent` of its `body_len` bytes so far.
    Sending {
        sent: usize,
        body_len: usize,
    },
    Answered,
}

/// One request's progress on a kubelet-port connection. See the module documentation.
#[derive(Clone, Debug)]
pub struct KubeletSession<'c> {
    caller: Caller<'c>,
    state: State,
    /// The metrics page being sent, copied when its answer started.
    page: Option<MetricsPage>,
}

impl<'c> KubeletSession<'c> {
    /// A session for `caller`, waiting for its request head.
    pub const fn new(caller: Caller<'c>) -> Self {
        Self {
            caller,
            state: State::Reading,
            page: None,
        }
    }

    /// True once the request head was complete (the connection is answering, not idle).
    pub fn has_request(&self) -> bool {
        self.state != State::Reading
    }
}

impl KubeletSession<'_> {
    /// The next part of the metrics page being sent.
    fn next_part(&mut self, sent: usize, body_len: usize, out: &mut [u8]) -> KubeletStep {
        let len = match &self.page {
            Some(page) => page.part(sent, out),
            None => 0,
        };
        self.after_part(len, sent + len, body_len)
    }

    /// Asks for `len` bytes to be written, with which `sent` of `body_len` bytes of body are
    /// out; the last part (or an empty one: an `out` too small even for the head) ends it.
    fn after_part(&mut self, len: usize, sent: usize, body_len: usize) -> KubeletStep {
        if sent >= body_len || len == 0 {
            self.state = State::Answered;
            self.page = None;
            return KubeletStep::Respond { len, refused: None };
        }
        self.state = State::Sending { sent, body_len };
        KubeletStep::Write { len }
    }
}

impl Agent<'_> {
    /// Advances `session` with the request head read so far (`head`; `full`: the driver's
    /// buffer has no room for more). Answers go into `out`.
    pub fn kubelet_step(
        &mut self,
        session: &mut KubeletSession<'_>,
        now: Millis,
        head: &[u8],
        full: bool,
        platform: &PlatformStats,
        out: &mut [u8],
    ) -> KubeletStep {
        let req = match session.state {
            State::Sending { sent, body_len } => return session.next_part(sent, body_len, out),
            State::Answered => return self.kubelet_refuse(session, None, Refusal::BadRequest, out),
            State::Authorizing { req, until } if now >= until => {
                return self.kubelet_refuse(
                    session,
                    Some(req.route),
                    Refusal::AuthorizationUnavailable,
                    out,
                );
            }
            State::Authorizing { req, .. } => req,
            State::Reading => match kubelet::parse_request(head) {
                Ok(Some(req)) => req,
                Ok(None) if !full => return KubeletStep::ReadMore,
                Ok(None) => return self.kubelet_refuse(session, None, Refusal::HeadTooLarge, out),
                Err(refusal) => return self.kubelet_refuse(session, None, refusal, out),
            },
        };
        let caller = session.caller;
        // A verified certificate is the identity; without one, a bearer token (checked by a
        // TokenReview) is. `/healthz` needs neither.
        let token = match caller {
            Caller::Anonymous if req.route.subresource().is_some() => {
                req.bearer.and_then(|b| b.token(head))
            }
            _ => None,
        };
        let decision = match (caller, token) {
            (Caller::Open, _) => Decision::Allow,
            (Caller::Verified(id), _) => self.authorize(now, Some(&id), req.route),
            (Caller::Anonymous, None) => self.authorize(now, None, req.route),
            (Caller::Anonymous, Some(token)) => match self.authenticate(now, token) {
                Authentication::Authenticated => match self.token_identity(token) {
                    Some(who) => who.with(|id| self.authorize(now, Some(id), req.route)),
                    None => Decision::Unavailable,
                },
                Authentication::Pending => Decision::Pending,
                Authentication::Rejected => {
                    return self.kubelet_refuse(
                        session,
                        Some(req.route),
                        Refusal::Unauthorized,
                        out,
                    );
                }
                Authentication::Unavailable => Decision::Unavailable,
            },
        };
        let id = match caller {
            Caller::Verified(_) => true,
            _ => token.is_some(),
        };
        let refusal = match decision {
            Decision::Allow => {
                self.metrics.count_kubelet(KubeletOutcome::Served);
                let view = self.kubelet_view(now);
                let resource = match req.route {
                    Route::Metrics => false,
                    Route::MetricsResource => true,
                    _ => {
                        session.state = State::Answered;
                        let len = kubelet::respond(&view, platform, req, out);
                        return KubeletStep::Respond { len, refused: None };
                    }
                };
                let page = session
                    .page
                    .insert(MetricsPage::new(resource, &view, platform));
                let body_len = page.body_len();
                let (len, body) = page.start(body_len, req.head_only, out);
                let body_len = if req.head_only { 0 } else { body_len };
                return session.after_part(len, body, body_len);
            }
            Decision::Pending => {
                let until = match session.state {
                    State::Authorizing { until, .. } => until,
                    _ => now + REVIEW_TIMEOUT_MS + Duration::from_ms(1_000),
                };
                session.state = State::Authorizing { req, until };
                return KubeletStep::Authorizing { until };
            }
            Decision::Deny if !id => Refusal::Unauthorized,
            Decision::Deny => Refusal::Forbidden,
            Decision::Unavailable => Refusal::AuthorizationUnavailable,
        };
        self.kubelet_refuse(session, Some(req.route), refusal, out)
    }

    /// The peer closed (or the driver's read failed) before a complete request head.
    pub fn kubelet_eof(&mut self, session: &mut KubeletSession<'_>, out: &mut [u8]) -> KubeletStep {
        self.kubelet_refuse(session, None, Refusal::BadRequest, out)
    }

    /// Counts a kubelet-port connection that ended in the transport (see [`KubeletOutcome`]).
    pub fn count_kubelet(&mut self, outcome: KubeletOutcome) {
        self.metrics.count_kubelet(outcome);
    }

    fn kubelet_refuse(
        &mut self,
        session: &mut KubeletSession<'_>,
        route: Option<Route>,
        refusal: Refusal,
        out: &mut [u8],
    ) -> KubeletStep {
        session.state = State::Answered;
        self.metrics.count_kubelet(match refusal {
            Refusal::Unauthorized => KubeletOutcome::Unauthenticated,
            Refusal::Forbidden => KubeletOutcome::Forbidden,
            Refusal::AuthorizationUnavailable => KubeletOutcome::Unavailable,
            Refusal::BadRequest
            | Refusal::NotFound
            | Refusal::MethodNotAllowed
            | Refusal::HeadTooLarge => KubeletOutcome::Refused,
        });
        KubeletStep::Respond {
            len: kubelet::refuse(refusal, out),
            refused: Some((route, refusal)),
        }
    }

    /// What the kubelet pages show, at `now`.
    pub fn kubelet_view(&self, now: Millis) -> KubeletView<'_> {
        KubeletView {
            metrics: &self.metrics,
            gauges: self.gauges(now),
            region: self.region.bytes(),
            config_state: self.report.state.as_str(),
            applied_resource_version: &self.report.applied_rv,
            unix_ms: self.clock.unix_ms(now),
        }
    }
}
