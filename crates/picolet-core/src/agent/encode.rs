//! What several concerns send: the Node object (its metadata, facts and status), a JSON body
//! writer and a plain GET. Each concern encodes its own requests with these.

use super::*;

/// A body writer for [`http::encode_request`] that serializes `value` as JSON.
pub(super) fn json<T: serde::Serialize>(value: &T) -> impl FnMut(&mut [u8]) -> Option<usize> + '_ {
    move |buf| obj::to_json(value, buf).ok()
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

    /// The Node's metadata: labels and the report's annotations.
    pub(super) fn node_meta(&self) -> obj::NodeMeta<'_> {
        obj::NodeMeta {
            name: None,
            labels: self.labels(),
            annotations: self.annotations(),
        }
    }

    /// Builds the Node's status as of `now` and gives it to `with` (it borrows locals).
    pub(super) fn with_node_status<R>(
        &self,
        now: Millis,
        with: impl FnOnce(obj::NodeStatus<'_>) -> R,
    ) -> R {
        let unix = self.clock.unix_ms(now);
        let addresses = [
            obj::NodeAddress {
                kind: "InternalIP",
                address: &self.internal_ip,
            },
            obj::NodeAddress {
                kind: "Hostname",
                address: self.cfg.node_name,
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
                last_transition_time: self.node_status.ready_since_unix_ms.map(Rfc3339),
                reason,
                message,
            });
        with(obj::NodeStatus {
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
        })
    }

    /// A merge PATCH of the Node's metadata (adopting it, and publishing the report).
    pub(super) fn encode_node_meta_patch(&self, out: &mut [u8]) -> Result<usize, HttpError> {
        let patch = obj::NodeMetaPatch {
            metadata: self.node_meta(),
        };
        http::encode_request(
            out,
            Method::Patch,
            self.cfg.api_host,
            format_args!("{}", ApiPath::Node(self.cfg.node_name)),
            Some((BodyType::MergePatch, &mut json(&patch))),
        )
    }
}

/// A GET of `path`, with no body.
pub(super) fn encode_get(
    out: &mut [u8],
    host: &str,
    path: ApiPath<'_>,
) -> Result<usize, HttpError> {
    http::encode_request(out, Method::Get, host, format_args!("{path}"), None)
}
