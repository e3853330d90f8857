//! Registration: the Node is created, or, when one of that name exists, read and adopted (its
//! labels and annotations merged); when it vanishes later (a 404 to a PATCH), it is registered
//! again, as a restarted kubelet would. Nothing else goes out before the Node exists.

use super::*;

/// The requests of registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeRequest {
    /// POST the Node.
    Create,
    /// GET it, after a create found it existing.
    Get,
    /// Merge-PATCH its metadata.
    Adopt,
}

impl NodeRequest {
    pub(super) fn method(self) -> Method {
        match self {
            Self::Create => Method::Post,
            Self::Get => Method::Get,
            Self::Adopt => Method::Patch,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Create => "node create",
            Self::Get => "node get",
            Self::Adopt => "node adopt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Not registered: this request comes next.
    Next(NodeRequest),
    Registered,
}

/// Where registration stands.
pub(super) struct Registration {
    progress: Progress,
    sched: Schedule,
    /// The Node's `metadata.uid`, which the Lease's owner reference names.
    pub(super) node_uid: String<48>,
}

impl Registration {
    pub(super) fn new(now: Millis) -> Self {
        Self {
            progress: Progress::Next(NodeRequest::Create),
            sched: Schedule::starting(now),
            node_uid: String::new(),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.progress == Progress::Registered
    }

    /// The registration request due at `now`.
    pub(super) fn next_request(&self, now: Millis) -> Option<NodeRequest> {
        match self.progress {
            Progress::Next(r) if self.sched.due(now) => Some(r),
            _ => None,
        }
    }

    /// When the next registration request is due (while not registered).
    pub(super) fn wakeup(&self) -> Millis {
        self.sched.at
    }

    pub(super) fn retry(&mut self, now: Millis) {
        self.sched.retry(now);
    }

    fn then(&mut self, next: NodeRequest, now: Millis) {
        self.progress = Progress::Next(next);
        self.sched.ok_then(now);
    }
}

/// The uid in a Node body, which may be cut short by a small buffer (uid comes early in
/// metadata).
fn node_uid(body: &[u8]) -> Option<&str> {
    obj::from_json::<obj::ObjectLite>(body)
        .and_then(|o| o.metadata.uid)
        .or_else(|| obj::scan_field(body, "uid"))
}

impl Agent<'_> {
    pub(super) fn encode_node_request(
        &self,
        request: NodeRequest,
        now: Millis,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        let name = self.cfg.node_name;
        let host = self.cfg.api_host;
        match request {
            NodeRequest::Create => self.with_node_status(now, |status| {
                let node = obj::Node {
                    api_version: "v1",
                    kind: "Node",
                    metadata: obj::NodeMeta {
                        name: Some(name),
                        ..self.node_meta()
                    },
                    spec: obj::NodeSpec {
                        taints: [obj::Taint {
                            key: NO_CONTAINERS_TAINT,
                            value: "true",
                            effect: "NoSchedule",
                        }],
                    },
                    status,
                };
                http::encode_request(
                    out,
                    Method::Post,
                    host,
                    format_args!("{}", ApiPath::Nodes),
                    Some((BodyType::Json, &mut json(&node))),
                )
            }),
            NodeRequest::Get => encode_get(out, host, ApiPath::Node(name)),
            NodeRequest::Adopt => self.encode_node_meta_patch(out),
        }
    }

    pub(super) fn on_node_response(&mut self, now: Millis, request: NodeRequest, reply: &Reply) {
        let r = &mut self.registration;
        match (request, reply.status) {
            (NodeRequest::Create | NodeRequest::Adopt, _) if reply.ok() => {
                self.registered_with(now, reply.body)
            }
            (NodeRequest::Create, 409) => r.progress = Progress::Next(NodeRequest::Get),
            (NodeRequest::Get, _) if reply.ok() => {
                r.node_uid = bounded(format_args!("{}", node_uid(reply.body).unwrap_or("")));
                r.then(NodeRequest::Adopt, now);
            }
            (NodeRequest::Get, 404) => r.then(NodeRequest::Create, now),
            (NodeRequest::Adopt, 404) => {
                r.progress = Progress::Next(NodeRequest::Create);
                r.sched.retry(now);
            }
            _ => r.sched.retry(now),
        }
    }

    fn registered_with(&mut self, now: Millis, body: &[u8]) {
        if let Some(uid) = node_uid(body) {
            self.registration.node_uid = bounded(format_args!("{uid}"));
        }
        self.registration.progress = Progress::Registered;
        self.registration.sched.ok_then(now);
        // The node body carried the current config annotations.
        self.report.mark_sent();
        // Conditions go out in a status PATCH right away; the Lease follows.
        self.node_status.post_now(now);
        self.heartbeat.renew_now(now);
        let boot_id = self.cfg.facts.boot_id;
        self.queue_event(
            now,
            "Starting",
            false,
            true,
            format_args!("Starting picolet {KUBELET_VERSION} (boot ID {boot_id})"),
        );
    }

    /// The Node was deleted under us: register again, like a restarted kubelet would.
    pub(super) fn node_vanished(&mut self, now: Millis) {
        self.registration.progress = Progress::Next(NodeRequest::Create);
        self.registration.sched.retry(now);
        self.heartbeat.forget();
    }
}
