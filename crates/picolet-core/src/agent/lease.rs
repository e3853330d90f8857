//! The heartbeat: the node's Lease in [`LEASE_NAMESPACE`], read (or created) once, then renewed
//! every [`LEASE_RENEW_MS`] by PUTs from the last known resourceVersion. A gap between two
//! renewals longer than [`HEARTBEAT_GAP_MS`] makes the status due again.

use super::*;

/// Lease duration the node announces, as the kubelet does.
pub const LEASE_DURATION_S: u32 = 40;
/// How often the Lease is renewed (a quarter of its duration).
pub const LEASE_RENEW_MS: Duration = Duration::from_ms(10_000);
/// A gap between successful Lease renewals longer than this (one and a half periods) may have
/// let the node lifecycle controller mark the node Unknown; the status is then posted again at
/// once, as a kubelet that finds its Node's conditions changed would.
pub const HEARTBEAT_GAP_MS: Duration = Duration::from_ms(15_000);

/// The requests of the heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseRequest {
    Get,
    Create,
    Renew,
}

impl LeaseRequest {
    pub(super) fn method(self) -> Method {
        match self {
            Self::Get => Method::Get,
            Self::Create => Method::Post,
            Self::Renew => Method::Put,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Get => "lease get",
            Self::Create => "lease create",
            Self::Renew => "lease renew",
        }
    }
}

/// Where the node Lease stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LeaseState {
    /// Read it (at start, and after a conflict).
    Get,
    /// It does not exist: create it.
    Create,
    /// Renew it from this resourceVersion.
    Renew(Rv),
}

/// A successful create or renewal of the Lease.
#[derive(Clone, Copy, Debug)]
struct Renewal {
    /// When it was answered.
    at: Millis,
    /// The server's `Date` of the answer (Unix seconds): the gap is also measured by the
    /// server's clock, which a slow or stalled device clock cannot shorten.
    server_s: Option<UnixSeconds>,
    /// It came after a gap, and the status was re-posted; it is posted once more after the
    /// next renewal, in case the node lifecycle controller marked the node Unknown just after
    /// the first post.
    after_gap: bool,
}

pub(super) struct Heartbeat {
    state: LeaseState,
    sched: Schedule,
    /// The last successful create or renewal.
    last_ok: Option<Renewal>,
}

impl Heartbeat {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            state: LeaseState::Get,
            sched: Schedule::starting(now),
            last_ok: None,
        }
    }

    pub(super) fn next_request(&self, now: Millis) -> Option<LeaseRequest> {
        self.sched.due(now).then_some(match self.state {
            LeaseState::Get => LeaseRequest::Get,
            LeaseState::Create => LeaseRequest::Create,
            LeaseState::Renew(_) => LeaseRequest::Renew,
        })
    }

    pub(super) fn wakeup(&self) -> Millis {
        self.sched.at
    }

    /// Renew (or first read) the Lease at once: the Node was just registered.
    pub(super) fn renew_now(&mut self, now: Millis) {
        self.sched.ok_then(now);
    }

    /// The Node vanished, and its Lease with it (by owner reference): read it again first.
    pub(super) fn forget(&mut self) {
        self.state = LeaseState::Get;
    }

    /// Whether a renewal at `now` (`date`: by the server's clock) comes after a gap.
    fn gap(&self, now: Millis, date: Option<UnixSeconds>) -> bool {
        self.last_ok.is_some_and(|last| {
            now.saturating_sub(last.at) > HEARTBEAT_GAP_MS
                || matches!(
                    (last.server_s, date),
                    (Some(a), Some(b)) if b.saturating_sub(a) > HEARTBEAT_GAP_MS
                )
        })
    }
}

fn read_rv(body: &[u8]) -> Option<Rv> {
    obj::from_json::<obj::ObjectLite>(body)
        .and_then(|o| o.metadata.resource_version)
        .or_else(|| obj::scan_resource_version(body))
        .and_then(rv_from)
}

impl Agent<'_> {
    pub(super) fn encode_lease_request(
        &self,
        request: LeaseRequest,
        now: Millis,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let name = self.cfg.node_name;
        let host = self.cfg.api_host;
        if request == LeaseRequest::Get {
            return encode_get(out, host, ApiPath::Lease(name));
        }
        let rv = match &self.heartbeat.state {
            LeaseState::Renew(rv) => Some(rv.as_str()),
            _ => None,
        };
        let lease = obj::Lease {
            api_version: "coordination.k8s.io/v1",
            kind: "Lease",
            metadata: obj::LeaseMeta {
                name,
                namespace: LEASE_NAMESPACE,
                resource_version: rv,
                owner_references: [obj::OwnerReference {
                    api_version: "v1",
                    kind: "Node",
                    name,
                    uid: &self.registration.node_uid,
                }],
            },
            spec: obj::LeaseSpec {
                holder_identity: name,
                lease_duration_seconds: LEASE_DURATION_S,
                renew_time: MicroTime(self.clock.unix_ms(now).unwrap_or_default()),
            },
        };
        let path = match request {
            LeaseRequest::Create => ApiPath::Leases,
            _ => ApiPath::Lease(name),
        };
        http::encode_request(
            out,
            request.method(),
            host,
            format_args!("{path}"),
            Some((BodyType::Json, &mut json(&lease))),
        )
    }

    pub(super) fn on_lease_response(&mut self, now: Millis, request: LeaseRequest, reply: &Reply) {
        let h = &mut self.heartbeat;
        match (request, reply.status) {
            (LeaseRequest::Get, _) if reply.ok() => match read_rv(reply.body) {
                // Renew at once from the object just read.
                Some(rv) => {
                    h.state = LeaseState::Renew(rv);
                    h.sched.ok_then(now);
                }
                None => self.lease_failed(now),
            },
            (LeaseRequest::Get, 404) => {
                h.state = LeaseState::Create;
                h.sched.ok_then(now);
            }
            (LeaseRequest::Get, _) => self.lease_failed(now),
            (_, _) if reply.ok() => self.heartbeat_ok(now, reply),
            // Changed by someone else, or created meanwhile: re-read, then renew.
            (_, 409) => {
                h.state = LeaseState::Get;
                self.lease_failed(now);
            }
            (_, 404) => {
                h.state = LeaseState::Create;
                self.lease_failed(now);
            }
            _ => self.lease_failed(now),
        }
    }

    /// A Lease was created or renewed.
    fn heartbeat_ok(&mut self, now: Millis, reply: &Reply) {
        let h = &mut self.heartbeat;
        h.state = match read_rv(reply.body) {
            Some(rv) => LeaseState::Renew(rv),
            None => LeaseState::Get,
        };
        self.metrics.heartbeats_ok += 1;
        h.sched.ok_then(now + LEASE_RENEW_MS);
        let gap = h.gap(now, reply.date);
        if gap || h.last_ok.is_some_and(|last| last.after_gap) {
            self.node_status.post_now(now);
        }
        h.last_ok = Some(Renewal {
            at: now,
            server_s: reply.date,
            after_gap: gap,
        });
    }

    pub(super) fn lease_failed(&mut self, now: Millis) {
        self.metrics.heartbeats_failed += 1;
        self.heartbeat.sched.retry(now);
    }
}
