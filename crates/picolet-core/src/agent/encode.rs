//! Turning each kind of pending request into HTTP bytes: the Node, its status, the Lease,
//! Events, the ConfigMap list and pod status, as the API server expects them.

use heapless::String;

use super::*;

/// A body writer for [`http::encode_request`] that serializes `value` as JSON.
fn json<T: serde::Serialize>(value: &T) -> impl FnMut(&mut [u8]) -> Option<usize> + '_ {
    move |buf| obj::to_json(value, buf).ok()
}

pub(super) fn pending_name(p: ApiRequest) -> &'static str {
    match p {
        ApiRequest::NodeCreate => "node create",
        ApiRequest::NodeGet => "node get",
        ApiRequest::NodeAdopt => "node adopt",
        ApiRequest::LeaseGet => "lease get",
        ApiRequest::LeaseCreate => "lease create",
        ApiRequest::LeaseRenew => "lease renew",
        ApiRequest::StatusPatch(_) => "node status",
        ApiRequest::ConfigReport(_) => "config report",
        ApiRequest::EventCreate => "event",
        ApiRequest::ConfigList => "configmap list",
        ApiRequest::PodList => "pod list",
        ApiRequest::PodFail => "pod status",
        ApiRequest::CsrCreate(_) => "certificate signing request",
        ApiRequest::CsrGet(_) => "certificate signing request read",
        ApiRequest::AccessReview(_) => "subject access review",
    }
}

const CONDITION_TEXT: [(&str, &str, &str, &str); 4] = [
    (
        "Ready",
        "True",
        "KubeletReady",
        "picolet is posting ready status; this node runs no containers",
    ),
    (
        "MemoryPressure",
        "False",
        "KubeletHasSufficientMemory",
        "picolet uses static memory only; there is no heap to exhaust",
    ),
    (
        "DiskPressure",
        "False",
        "KubeletHasNoDiskPressure",
        "picolet writes no disk; its only storage is firmware flash",
    ),
    (
        "PIDPressure",
        "False",
        "KubeletHasSufficientPID",
        "picolet runs a fixed set of firmware tasks, not processes",
    ),
];

impl<'a> Agent<'a> {
    fn labels(&self) -> obj::NodeLabels<'a> {
        obj::NodeLabels {
            hostname: self.cfg.node_name,
            os: self.cfg.facts.operating_system,
            arch: self.cfg.facts.architecture,
            instance_type: self.cfg.facts.instance_type,
        }
    }

    fn annotations(&self) -> obj::ConfigAnnotations<'_> {
        obj::ConfigAnnotations {
            state: self.report.state.as_str(),
            applied_resource_version: &self.report.applied_rv,
            memory_crc32: Crc32Hex(self.region.checksum()),
            message: &self.report.message,
        }
    }

    fn node_info(&self) -> obj::NodeSystemInfo<'a> {
        let f = &self.cfg.facts;
        obj::NodeSystemInfo {
            machine_id: f.machine_id,
            system_uuid: f.system_uuid,
            boot_id: f.boot_id,
            kernel_version: f.kernel_version,
            os_image: f.os_image,
            container_runtime_version: "none://",
            kubelet_version: KUBELET_VERSION,
            kube_proxy_version: "",
            operating_system: f.operating_system,
            architecture: f.architecture,
        }
    }

    pub(super) fn encode(
        &mut self,
        pending: ApiRequest,
        now: Millis,
        out: &mut [u8],
    ) -> Result<usize, HttpError> {
        if let ApiRequest::CsrCreate(_) | ApiRequest::CsrGet(_) = pending {
            return self.encode_certificate_request(pending, out);
        }
        if let ApiRequest::AccessReview(id) = pending {
            return self.encode_access_review(id, out);
        }
        if let ApiRequest::PodList | ApiRequest::PodFail = pending {
            return self.encode_pod_request(pending, out);
        }
        let unix = self.clock.unix_ms(now);
        if unix.is_some() && self.ready_since_unix_ms.is_none() {
            self.ready_since_unix_ms = unix;
        }
        let name = self.cfg.node_name;
        let host = self.cfg.api_host;
        let addresses = [
            obj::NodeAddress {
                kind: "InternalIP",
                address: &self.internal_ip,
            },
            obj::NodeAddress {
                kind: "Hostname",
                address: name,
            },
        ];
        let addresses: &[obj::NodeAddress<'_>] = if self.internal_ip.is_empty() {
            &addresses[1..]
        } else {
            &addresses
        };
        let conditions: [obj::NodeCondition<'_>; 4] =
            CONDITION_TEXT.map(|(kind, status, reason, message)| obj::NodeCondition {
                kind,
                status,
                last_heartbeat_time: unix.map(Rfc3339),
                last_transition_time: self.ready_since_unix_ms.map(Rfc3339),
                reason,
                message,
            });
        let status = obj::NodeStatus {
            capacity: self.cfg.facts.capacity,
            allocatable: self.cfg.facts.allocatable,
            conditions: unix.map(|_| &conditions[..]),
            addresses,
            daemon_endpoints: obj::DaemonEndpoints {
                kubelet_endpoint: obj::KubeletEndpoint {
                    port: self.cfg.kubelet_port,
                },
            },
            node_info: self.node_info(),
        };
        let meta = obj::NodeMeta {
            name: None,
            labels: self.labels(),
            annotations: self.annotations(),
        };
        match pending {
            ApiRequest::NodeCreate => {
                let node = obj::Node {
                    api_version: "v1",
                    kind: "Node",
                    metadata: obj::NodeMeta {
                        name: Some(name),
                        ..meta
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
            }
            ApiRequest::NodeGet => http::encode_request(
                out,
                Method::Get,
                host,
                format_args!("{}", ApiPath::Node(name)),
                None,
            ),
            ApiRequest::NodeAdopt | ApiRequest::ConfigReport(_) => {
                let patch = obj::NodeMetaPatch { metadata: meta };
                http::encode_request(
                    out,
                    Method::Patch,
                    host,
                    format_args!("{}", ApiPath::Node(name)),
                    Some((BodyType::MergePatch, &mut json(&patch))),
                )
            }
            ApiRequest::StatusPatch(_) => {
                let patch = obj::NodeStatusPatch { status };
                http::encode_request(
                    out,
                    Method::Patch,
                    host,
                    format_args!("{}", ApiPath::NodeStatus(name)),
                    Some((BodyType::MergePatch, &mut json(&patch))),
                )
            }
            ApiRequest::LeaseGet => http::encode_request(
                out,
                Method::Get,
                host,
                format_args!("{}", ApiPath::Lease(name)),
                None,
            ),
            ApiRequest::LeaseCreate | ApiRequest::LeaseRenew => {
                let rv = match &self.lease {
                    LeaseStep::Renew(rv) => Some(rv.as_str()),
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
                            uid: &self.node_uid,
                        }],
                    },
                    spec: obj::LeaseSpec {
                        holder_identity: name,
                        lease_duration_seconds: LEASE_DURATION_S,
                        renew_time: MicroTime(unix.unwrap_or(0)),
                    },
                };
                if pending == ApiRequest::LeaseCreate {
                    http::encode_request(
                        out,
                        Method::Post,
                        host,
                        format_args!("{}", ApiPath::Leases),
                        Some((BodyType::Json, &mut json(&lease))),
                    )
                } else {
                    http::encode_request(
                        out,
                        Method::Put,
                        host,
                        format_args!("{}", ApiPath::Lease(name)),
                        Some((BodyType::Json, &mut json(&lease))),
                    )
                }
            }
            ApiRequest::EventCreate => {
                let ev = self.events.front().ok_or(HttpError::BufferTooSmall)?;
                let seq = self.event_seq;
                let (object_name, namespace) = if ev.about_node {
                    (name, "default")
                } else {
                    (self.cfg.config_map, self.cfg.config_namespace)
                };
                let event_name: String<96> =
                    bounded(format_args!("{object_name}.{:x}{seq:04x}", ev.unix_ms));
                let event = obj::Event {
                    api_version: "v1",
                    kind: "Event",
                    metadata: obj::EventMeta {
                        name: &event_name,
                        namespace,
                    },
                    involved_object: obj::ObjectReference {
                        api_version: "v1",
                        kind: if ev.about_node { "Node" } else { "ConfigMap" },
                        name: object_name,
                        namespace: (!ev.about_node).then_some(namespace),
                        // A Node's Events carry its name as uid (the kubelet's convention,
                        // which `kubectl describe node` searches by); a ConfigMap's its uid.
                        uid: if ev.about_node {
                            Some(name)
                        } else {
                            Some(ev.object_uid.as_str()).filter(|u| !u.is_empty())
                        },
                        resource_version: (!ev.object_rv.is_empty())
                            .then_some(ev.object_rv.as_str()),
                    },
                    reason: ev.reason,
                    message: &ev.message,
                    kind_of_event: if ev.warning { "Warning" } else { "Normal" },
                    source: obj::EventSource {
                        component: "picolet",
                        host: name,
                    },
                    first_timestamp: Rfc3339(ev.unix_ms),
                    last_timestamp: Rfc3339(ev.unix_ms),
                    count: 1,
                    reporting_component: "picolet",
                    reporting_instance: name,
                };
                self.event_seq = self.event_seq.wrapping_add(1);
                http::encode_request(
                    out,
                    Method::Post,
                    host,
                    format_args!("{}", ApiPath::Events(namespace)),
                    Some((BodyType::Json, &mut json(&event))),
                )
            }
            ApiRequest::ConfigList => http::encode_request(
                out,
                Method::Get,
                host,
                format_args!(
                    "{}",
                    ApiPath::ConfigMap {
                        namespace: self.cfg.config_namespace,
                        name: self.cfg.config_map,
                        watch: None,
                    }
                ),
                None,
            ),
            ApiRequest::CsrCreate(_)
            | ApiRequest::CsrGet(_)
            | ApiRequest::AccessReview(_)
            | ApiRequest::PodList
            | ApiRequest::PodFail => Err(HttpError::BufferTooSmall),
        }
    }
}
