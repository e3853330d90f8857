//! Bearer tokens on the kubelet port, checked as a kubelet with
//! `--authentication-token-webhook` checks them: the API server answers a TokenReview, and the
//! user and groups it returns are authorized by a SubjectAccessReview like a certificate's CN
//! and O ([`super::authorization`]). This is how metrics-server and Prometheus, which hold
//! service-account tokens, not certificates, reach a kubelet.
//!
//! Outcomes are cached by the token's SHA-256 (the token itself is not kept): authenticated for
//! [`AUTHENTICATED_TTL_MS`], rejected for [`REJECTED_TTL_MS`]. A review needs the token, so one
//! token at a time waits for its review in a [`TOKEN_MAX`]-byte buffer; another new token is
//! told to wait ([`Authentication::Pending`]) until it is free. Everything fails closed: a
//! review not answered, an answer that cannot be read, a user too large to hold.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::authorization::{IDENTITY_GROUPS_MAX, IDENTITY_NAME_MAX, Identity};
use super::*;

/// How long an authenticated token is trusted without asking again (a kubelet's default is
/// 2 minutes; shorter here, as for authorization).
pub const AUTHENTICATED_TTL_MS: Duration = Duration::from_ms(60_000);
/// How long a rejected token is refused without asking again.
pub const REJECTED_TTL_MS: Duration = Duration::from_ms(10_000);
/// Longest token accepted: service-account tokens are about 1 KiB.
pub const TOKEN_MAX: usize = 2048;
/// How many token outcomes are remembered.
pub const TOKEN_SLOTS: usize = 2;

/// Where a bearer token's caller stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// The API server said who it is: authorize it (see [`Agent::token_identity`]).
    Authenticated,
    /// 401.
    Rejected,
    /// Not known yet: ask again shortly.
    Pending,
    /// The API server could not be asked (503).
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenState {
    Queued { since: Millis },
    InFlight { since: Millis },
    Authenticated { until: Millis },
    Rejected { until: Millis },
    Failed { until: Millis },
}

struct TokenSlot {
    digest: [u8; 32],
    user: String<IDENTITY_NAME_MAX>,
    groups: Vec<String<IDENTITY_NAME_MAX>, IDENTITY_GROUPS_MAX>,
    state: TokenState,
    /// Changes whenever the slot is reused, so a late answer cannot land on another token.
    id: u16,
}

/// The cache of token outcomes, and the one token waiting for its review.
pub(super) struct Authentications {
    slots: Vec<TokenSlot, TOKEN_SLOTS>,
    /// The token of the slot with id `pending_id`, until its review is answered.
    pending: Vec<u8, TOKEN_MAX>,
    pending_id: Option<u16>,
    next_id: u16,
}

impl Authentications {
    pub(super) const fn new() -> Self {
        Self {
            slots: Vec::new(),
            pending: Vec::new(),
            pending_id: None,
            next_id: 0,
        }
    }

    fn slot(&self, digest: &[u8; 32]) -> Option<&TokenSlot> {
        self.slots.iter().find(|s| &s.digest == digest)
    }

    fn release(&mut self, id: u16) {
        if self.pending_id == Some(id) {
            self.pending_id = None;
            self.pending.clear();
        }
    }
}

#[derive(Serialize)]
struct Review<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    spec: ReviewSpec<'a>,
}

#[derive(Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
}

#[derive(Deserialize)]
struct ReviewResult<'a> {
    #[serde(default, borrow)]
    status: ReviewStatus<'a>,
}

#[derive(Deserialize, Default)]
struct ReviewStatus<'a> {
    #[serde(default)]
    authenticated: bool,
    #[serde(default, borrow)]
    user: ReviewUser<'a>,
}

#[derive(Deserialize, Default)]
struct ReviewUser<'a> {
    #[serde(default)]
    username: &'a str,
    #[serde(default, borrow)]
    groups: Vec<&'a str, IDENTITY_GROUPS_MAX>,
}

/// The user and groups as the cache keeps them; `None` when a name is empty or too long.
#[allow(clippy::type_complexity)]
fn held(
    u: &ReviewUser<'_>,
) -> Option<(
    String<IDENTITY_NAME_MAX>,
    Vec<String<IDENTITY_NAME_MAX>, IDENTITY_GROUPS_MAX>,
)> {
    let user = String::try_from(u.username)
        .ok()
        .filter(|u| !u.is_empty())?;
    let mut groups = Vec::new();
    for g in &u.groups {
        groups.push(String::try_from(*g).ok()?).ok()?;
    }
    Some((user, groups))
}

fn digest_of(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// An identity copied out of the cache, so it can be authorized while the agent is borrowed.
pub(super) struct TokenIdentity {
    user: String<IDENTITY_NAME_MAX>,
    groups: Vec<String<IDENTITY_NAME_MAX>, IDENTITY_GROUPS_MAX>,
}

impl TokenIdentity {
    /// Calls `f` with the identity as the authorizer takes it.
    pub(super) fn with<R>(&self, f: impl FnOnce(&Identity<'_>) -> R) -> R {
        let mut groups = [""; IDENTITY_GROUPS_MAX];
        for (g, s) in groups.iter_mut().zip(&self.groups) {
            *g = s.as_str();
        }
        f(&Identity {
            user: &self.user,
            groups: &groups[..self.groups.len()],
        })
    }
}

impl Agent<'_> {
    /// Who the bearer `token` is, as far as is known at `now`. See the module documentation.
    pub fn authenticate(&mut self, now: Millis, token: &[u8]) -> Authentication {
        let digest = digest_of(token);
        let a = &mut self.authn;
        if let Some(i) = a.slots.iter().position(|s| s.digest == digest) {
            let slot = &mut a.slots[i];
            match slot.state {
                TokenState::Authenticated { until } if now < until => {
                    return Authentication::Authenticated;
                }
                TokenState::Rejected { until } if now < until => return Authentication::Rejected,
                TokenState::Failed { until } if now < until => {
                    return Authentication::Unavailable;
                }
                TokenState::Queued { since } | TokenState::InFlight { since }
                    if now.saturating_sub(since) < REVIEW_TIMEOUT_MS =>
                {
                    return Authentication::Pending;
                }
                TokenState::InFlight { .. } => {
                    // Given up; the answer, if it comes, is ignored.
                    self.metrics.kubelet_authn[2] += 1;
                    let old = slot.id;
                    a.next_id = a.next_id.wrapping_add(1);
                    slot.id = a.next_id;
                    slot.state = TokenState::Failed {
                        until: now + Duration::from_ms(1_000),
                    };
                    a.release(old);
                    return Authentication::Unavailable;
                }
                TokenState::Queued { .. } => {
                    // Never sent (the control connection was busy too long): drop it.
                    let old = slot.id;
                    a.slots.swap_remove(i);
                    a.release(old);
                }
                _ => {
                    // Expired: asked again below, as a new token.
                    a.slots.swap_remove(i);
                }
            }
        }
        // A new review needs the token buffer, and a slot not waiting for an answer.
        if a.pending_id.is_some() {
            return Authentication::Pending;
        }
        if token.len() > TOKEN_MAX {
            self.metrics.kubelet_authn[2] += 1;
            return Authentication::Rejected;
        }
        if a.slots.is_full() {
            // Reuse the slot whose outcome expires first (none is waiting: the buffer is free).
            let victim = a
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| match s.state {
                    TokenState::Authenticated { until }
                    | TokenState::Rejected { until }
                    | TokenState::Failed { until } => until,
                    TokenState::Queued { since } | TokenState::InFlight { since } => since,
                })
                .map(|(i, _)| i);
            if let Some(i) = victim {
                a.slots.swap_remove(i);
            }
        }
        a.next_id = a.next_id.wrapping_add(1);
        let id = a.next_id;
        let _ = a.slots.push(TokenSlot {
            digest,
            user: String::new(),
            groups: Vec::new(),
            state: TokenState::Queued { since: now },
            id,
        });
        a.pending.clear();
        let _ = a.pending.extend_from_slice(token);
        a.pending_id = Some(id);
        Authentication::Pending
    }

    /// The user and groups of an [`Authentication::Authenticated`] `token`.
    pub(super) fn token_identity(&self, token: &[u8]) -> Option<TokenIdentity> {
        let slot = self.authn.slot(&digest_of(token))?;
        matches!(slot.state, TokenState::Authenticated { .. }).then(|| TokenIdentity {
            user: slot.user.clone(),
            groups: slot.groups.clone(),
        })
    }

    /// The next TokenReview to send, if one is queued.
    pub(super) fn next_token_review(&mut self, now: Millis) -> Option<u16> {
        let id = self.authn.pending_id?;
        let slot = self.authn.slots.iter_mut().find(|s| s.id == id)?;
        if !matches!(slot.state, TokenState::Queued { .. }) {
            return None;
        }
        slot.state = TokenState::InFlight { since: now };
        Some(id)
    }

    /// True while a caller waits for a TokenReview to be sent.
    pub(super) fn token_review_queued(&self) -> bool {
        self.authn
            .slots
            .iter()
            .any(|s| matches!(s.state, TokenState::Queued { .. }))
    }

    pub(super) fn encode_token_review(&self, id: u16, out: &mut [u8]) -> Result<usize, HttpError> {
        let a = &self.authn;
        if a.pending_id != Some(id) {
            return Err(HttpError::BufferTooSmall);
        }
        // Checked by the request parser: a b64token is ASCII.
        let token = core::str::from_utf8(&a.pending).map_err(|_| HttpError::BufferTooSmall)?;
        let review = Review {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec { token },
        };
        http::encode_request(
            out,
            Method::Post,
            self.cfg.api_host,
            format_args!("{}", ApiPath::TokenReviews),
            Some((BodyType::Json, &mut json(&review))),
        )
    }

    pub(super) fn on_token_review(&mut self, now: Millis, id: u16, reply: &Reply) {
        let a = &mut self.authn;
        a.release(id);
        let Some(slot) = a.slots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let rejected = TokenState::Rejected {
            until: now + REJECTED_TTL_MS,
        };
        slot.state = if !reply.ok() {
            // No verdict (the API server failed): asked again soon.
            self.metrics.kubelet_authn[2] += 1;
            TokenState::Failed {
                until: now + Duration::from_ms(1_000),
            }
        } else {
            // The answer echoes the token, so a body cut short by the driver's buffer cannot
            // be read; nor can a user with more groups than are kept. Refused, counted as errors.
            let status = (reply.body.len() == reply.body_len)
                .then(|| obj::from_json::<ReviewResult<'_>>(reply.body))
                .flatten()
                .map(|r| r.status);
            match status.map(|s| (s.authenticated, held(&s.user))) {
                Some((true, Some((user, groups)))) => {
                    self.metrics.kubelet_authn[0] += 1;
                    slot.user = user;
                    slot.groups = groups;
                    TokenState::Authenticated {
                        until: now + AUTHENTICATED_TTL_MS,
                    }
                }
                Some((false, _)) => {
                    self.metrics.kubelet_authn[1] += 1;
                    rejected
                }
                _ => {
                    self.metrics.kubelet_authn[2] += 1;
                    rejected
                }
            }
        };
    }

    pub(super) fn on_token_review_lost(&mut self, now: Millis, id: u16) {
        self.authn.release(id);
        if let Some(slot) = self.authn.slots.iter_mut().find(|s| s.id == id) {
            self.metrics.kubelet_authn[2] += 1;
            slot.state = TokenState::Failed {
                until: now + Duration::from_ms(1_000),
            };
        }
    }
}
