//! Who may use the kubelet port, decided the way a kubelet in `Webhook` mode decides it: the
//! caller's verified client certificate gives a user (CN) and groups (O), and the API server
//! answers a SubjectAccessReview for `get` on `nodes/<subresource>` of this node
//! (`metrics` for `/metrics*`, `proxy` for the rest). `/healthz` needs nothing.
//!
//! Decisions are cached in a few fixed slots: allowed for [`ALLOW_TTL_MS`], denied for
//! [`DENY_TTL_MS`], so a revoked binding takes effect within a minute. A caller whose decision
//! is not known yet gets [`Decision::Pending`] and asks again; the review goes out on the
//! control connection ahead of routine work.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::*;

/// How long an allowed decision is reused (the kubelet uses 5 minutes; shorter here so that
/// revoking RBAC is felt sooner).
pub const ALLOW_TTL_MS: Duration = Duration::from_ms(60_000);
/// How long a denied decision is reused (as the kubelet's).
pub const DENY_TTL_MS: Duration = Duration::from_ms(30_000);
/// A review not answered in this long is given up: the caller gets 503.
pub const REVIEW_TIMEOUT_MS: Duration = Duration::from_ms(10_000);
/// How many decisions are remembered.
pub const AUTHZ_SLOTS: usize = 4;
/// Longest user name and group name kept; longer identities are refused.
pub const IDENTITY_NAME_MAX: usize = 96;
/// Most groups kept; an identity with more is refused.
pub const IDENTITY_GROUPS_MAX: usize = 4;

/// A caller of the kubelet port, from its verified client certificate.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// The certificate's CN.
    pub user: &'a str,
    /// The certificate's O values.
    pub groups: &'a [&'a str],
}

/// What the caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Allow,
    /// 403.
    Deny,
    /// Not known yet: ask again shortly.
    Pending,
    /// The API server could not be asked (503).
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReviewState {
    Queued { since: Millis },
    InFlight { since: Millis },
    Allowed { until: Millis },
    Denied { until: Millis },
    Failed { until: Millis },
}

struct DecisionSlot {
    user: String<IDENTITY_NAME_MAX>,
    groups: Vec<String<IDENTITY_NAME_MAX>, IDENTITY_GROUPS_MAX>,
    subresource: &'static str,
    state: ReviewState,
    /// Changes whenever the slot is reused, so a late answer cannot land on another identity.
    id: u16,
}

/// The cache of decisions.
pub(super) struct Authorizations {
    slots: Vec<DecisionSlot, AUTHZ_SLOTS>,
    next_id: u16,
}

impl Authorizations {
    pub(super) const fn new() -> Self {
        Self {
            slots: Vec::new(),
            next_id: 0,
        }
    }
}

fn same(slot: &DecisionSlot, id: &Identity<'_>, subresource: &str) -> bool {
    slot.subresource == subresource
        && slot.user == id.user
        && slot.groups.len() == id.groups.len()
        && slot.groups.iter().zip(id.groups).all(|(a, b)| a == b)
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
    user: &'a str,
    groups: &'a [String<IDENTITY_NAME_MAX>],
    #[serde(rename = "resourceAttributes")]
    resource_attributes: ResourceAttributes<'a>,
}

#[derive(Serialize)]
struct ResourceAttributes<'a> {
    verb: &'a str,
    resource: &'a str,
    subresource: &'a str,
    name: &'a str,
}

#[derive(Deserialize)]
struct ReviewResult {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Deserialize, Default)]
struct ReviewStatus {
    #[serde(default)]
    allowed: bool,
}

impl Agent<'_> {
    /// May `id` use `route`? See the module documentation.
    pub fn authorize(
        &mut self,
        now: Millis,
        id: Option<&Identity<'_>>,
        route: crate::kubelet::Route,
    ) -> Decision {
        let Some(subresource) = route.subresource() else {
            return Decision::Allow;
        };
        let Some(id) = id else {
            return Decision::Deny;
        };
        let a = &mut self.authz;
        if let Some(slot) = a.slots.iter_mut().find(|s| same(s, id, subresource)) {
            match slot.state {
                ReviewState::Allowed { until } if now < until => return Decision::Allow,
                ReviewState::Denied { until } if now < until => return Decision::Deny,
                ReviewState::Failed { until } if now < until => return Decision::Unavailable,
                ReviewState::Queued { since } | ReviewState::InFlight { since }
                    if now.saturating_sub(since) < REVIEW_TIMEOUT_MS =>
                {
                    return Decision::Pending;
                }
                ReviewState::InFlight { .. } => {
                    // Given up; the answer, if it comes, is ignored.
                    a.next_id = a.next_id.wrapping_add(1);
                    slot.id = a.next_id;
                    slot.state = ReviewState::Failed {
                        until: now + Duration::from_ms(1_000),
                    };
                    return Decision::Unavailable;
                }
                _ => {
                    slot.state = ReviewState::Queued { since: now };
                    return Decision::Pending;
                }
            }
        }
        // A new identity: it must fit, and a slot not waiting for an answer must be free.
        let (Ok(user), Some(groups)) = (String::try_from(id.user), copy_groups(id.groups)) else {
            self.metrics.kubelet_authz[2] += 1;
            return Decision::Deny;
        };
        a.next_id = a.next_id.wrapping_add(1);
        let slot = DecisionSlot {
            user,
            groups,
            subresource,
            state: ReviewState::Queued { since: now },
            id: a.next_id,
        };
        if a.slots.is_full() {
            // Reuse the slot whose decision expires first; never one with a review on the wire.
            let victim = a
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !matches!(s.state, ReviewState::InFlight { .. }))
                .min_by_key(|(_, s)| match s.state {
                    ReviewState::Allowed { until }
                    | ReviewState::Denied { until }
                    | ReviewState::Failed { until } => until,
                    ReviewState::Queued { since } | ReviewState::InFlight { since } => since,
                })
                .map(|(i, _)| i);
            match victim {
                Some(i) => a.slots[i] = slot,
                None => return Decision::Unavailable,
            }
        } else {
            let _ = a.slots.push(slot);
        }
        Decision::Pending
    }

    /// The next SubjectAccessReview to send, if one is queued.
    pub(super) fn next_access_review(&mut self, now: Millis) -> Option<u16> {
        let slot = self
            .authz
            .slots
            .iter_mut()
            .find(|s| matches!(s.state, ReviewState::Queued { .. }))?;
        slot.state = ReviewState::InFlight { since: now };
        Some(slot.id)
    }

    /// True while a caller waits for a review to be sent.
    pub(super) fn access_review_queued(&self) -> bool {
        self.authz
            .slots
            .iter()
            .any(|s| matches!(s.state, ReviewState::Queued { .. }))
    }

    pub(super) fn encode_access_review(&self, id: u16, out: &mut [u8]) -> Result<usize, HttpError> {
        let slot = self
            .authz
            .slots
            .iter()
            .find(|s| s.id == id)
            .ok_or(HttpError::BufferTooSmall)?;
        let review = Review {
            api_version: "authorization.k8s.io/v1",
            kind: "SubjectAccessReview",
            spec: ReviewSpec {
                user: &slot.user,
                groups: &slot.groups,
                resource_attributes: ResourceAttributes {
                    verb: "get",
                    resource: "nodes",
                    subresource: slot.subresource,
                    name: self.cfg.node_name,
                },
            },
        };
        http::encode_request(
            out,
            Method::Post,
            self.cfg.api_host,
            format_args!("{}", ApiPath::SubjectAccessReviews),
            Some((BodyType::Json, &mut json(&review))),
        )
    }

    pub(super) fn on_access_review(&mut self, now: Millis, id: u16, reply: &Reply) {
        let allowed = reply
            .ok()
            .then(|| obj::from_json::<ReviewResult>(reply.body))
            .flatten()
            .map(|r| r.status.allowed);
        let Some(slot) = self.authz.slots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        slot.state = match allowed {
            Some(true) => {
                self.metrics.kubelet_authz[0] += 1;
                ReviewState::Allowed {
                    until: now + ALLOW_TTL_MS,
                }
            }
            Some(false) => {
                self.metrics.kubelet_authz[1] += 1;
                ReviewState::Denied {
                    until: now + DENY_TTL_MS,
                }
            }
            None => {
                self.metrics.kubelet_authz[2] += 1;
                ReviewState::Failed {
                    until: now + Duration::from_ms(1_000),
                }
            }
        };
    }

    pub(super) fn on_access_review_lost(&mut self, now: Millis, id: u16) {
        if let Some(slot) = self.authz.slots.iter_mut().find(|s| s.id == id) {
            self.metrics.kubelet_authz[2] += 1;
            slot.state = ReviewState::Failed {
                until: now + Duration::from_ms(1_000),
            };
        }
    }
}

fn copy_groups(groups: &[&str]) -> Option<Vec<String<IDENTITY_NAME_MAX>, IDENTITY_GROUPS_MAX>> {
    let mut out = Vec::new();
    for g in groups {
        out.push(String::try_from(*g).ok()?).ok()?;
    }
    Some(out)
}
