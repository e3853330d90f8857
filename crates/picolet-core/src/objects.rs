//! The Kubernetes objects picolet sends and the few fields it reads back.
//!
//! Outgoing objects are plain structs serialized with serde-json-core into caller buffers; the
//! field names are the API's. Incoming JSON is parsed into borrowed "lite" views that name only
//! the fields the agent needs: everything else (notably `managedFields`) is skipped without
//! being stored.

// The fields below are the Kubernetes API's own, one for one (see the API reference for their
// meaning); documenting each again here would only repeat it.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize, Serializer};

use crate::time::{MicroTime, Rfc3339};

/// Where a serialized object did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge;

/// Serializes `value` as JSON into `out`, returning the length.
pub fn to_json<T: Serialize>(value: &T, out: &mut [u8]) -> Result<usize, TooLarge> {
    serde_json_core::to_slice(value, out).map_err(|_| TooLarge)
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for MicroTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A `u32` checksum written as `0x%08x` text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crc32Hex(pub u32);

impl core::fmt::Display for Crc32Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

impl Serialize for Crc32Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---------------------------------------------------------------- Node

/// Labels a picolet node sets on itself; all are allowed by NodeRestriction.
#[derive(Serialize, Debug)]
pub struct NodeLabels<'a> {
    #[serde(rename = "kubernetes.io/hostname")]
    pub hostname: &'a str,
    #[serde(rename = "kubernetes.io/os")]
    pub os: &'a str,
    #[serde(rename = "kubernetes.io/arch")]
    pub arch: &'a str,
    #[serde(rename = "node.kubernetes.io/instance-type")]
    pub instance_type: &'a str,
}

/// What the Node says about the last ConfigMap it saw.
#[derive(Serialize, Debug)]
pub struct ConfigAnnotations<'a> {
    /// `Pending`, `Applied`, `Rejected`, `Deleted` or `Missing`.
    #[serde(rename = "picolet.dev/config-state")]
    pub state: &'a str,
    /// resourceVersion of the ConfigMap whose values the region holds ("" if none yet).
    #[serde(rename = "picolet.dev/config-applied-resource-version")]
    pub applied_resource_version: &'a str,
    /// CRC-32 of the region as it is now.
    #[serde(rename = "picolet.dev/memory-crc32")]
    pub memory_crc32: Crc32Hex,
    /// A sentence explaining the state (the rejection reason when rejected).
    #[serde(rename = "picolet.dev/config-message")]
    pub message: &'a str,
}

/// `metadata` of a Node as picolet writes it.
#[derive(Serialize, Debug)]
pub struct NodeMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub labels: NodeLabels<'a>,
    pub annotations: ConfigAnnotations<'a>,
}

/// A taint; picolet sets one at creation, since NodeRestriction refuses later changes.
#[derive(Serialize, Debug)]
pub struct Taint<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub effect: &'a str,
}

/// `spec` of a new Node.
#[derive(Serialize, Debug)]
pub struct NodeSpec<'a> {
    pub taints: [Taint<'a>; 1],
}

/// Resource quantities, as strings in Kubernetes quantity syntax.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct Resources<'a> {
    pub cpu: &'a str,
    pub memory: &'a str,
    pub pods: &'a str,
    #[serde(rename = "ephemeral-storage")]
    pub ephemeral_storage: &'a str,
}

/// One address of the node.
#[derive(Serialize, Debug)]
pub struct NodeAddress<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub address: &'a str,
}

/// The kubelet port, where the API server and scrapers reach the node.
#[derive(Serialize, Debug)]
pub struct DaemonEndpoints {
    #[serde(rename = "kubeletEndpoint")]
    pub kubelet_endpoint: KubeletEndpoint,
}

/// `daemonEndpoints.kubeletEndpoint`.
#[derive(Serialize, Debug)]
pub struct KubeletEndpoint {
    #[serde(rename = "Port")]
    pub port: u16,
}

/// `status.nodeInfo`; every field is required by the API schema.
#[derive(Serialize, Debug, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct NodeSystemInfo<'a> {
    #[serde(rename = "machineID")]
    pub machine_id: &'a str,
    #[serde(rename = "systemUUID")]
    pub system_uuid: &'a str,
    #[serde(rename = "bootID")]
    pub boot_id: &'a str,
    pub kernel_version: &'a str,
    pub os_image: &'a str,
    pub container_runtime_version: &'a str,
    pub kubelet_version: &'a str,
    pub kube_proxy_version: &'a str,
    pub operating_system: &'a str,
    pub architecture: &'a str,
}

/// One node condition with its timestamps.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Rfc3339>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Rfc3339>,
    pub reason: &'a str,
    pub message: &'a str,
}

/// `status` of a Node.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus<'a> {
    pub capacity: Resources<'a>,
    pub allocatable: Resources<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<&'a [NodeCondition<'a>]>,
    pub addresses: &'a [NodeAddress<'a>],
    pub daemon_endpoints: DaemonEndpoints,
    pub node_info: NodeSystemInfo<'a>,
}

/// The Node as created at registration.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Node<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub metadata: NodeMeta<'a>,
    pub spec: NodeSpec<'a>,
    pub status: NodeStatus<'a>,
}

/// Merge patch for `nodes/NAME` (labels and annotations) when adopting a Node or reporting config.
#[derive(Serialize, Debug)]
pub struct NodeMetaPatch<'a> {
    pub metadata: NodeMeta<'a>,
}

/// Merge patch for `nodes/NAME/status`.
#[derive(Serialize, Debug)]
pub struct NodeStatusPatch<'a> {
    pub status: NodeStatus<'a>,
}

// ---------------------------------------------------------------- Lease

/// A reference from the Lease to its Node, so that deleting the Node deletes the Lease.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// `metadata` of the node Lease.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LeaseMeta<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<&'a str>,
    pub owner_references: [OwnerReference<'a>; 1],
}

/// `spec` of the node Lease.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct LeaseSpec<'a> {
    pub holder_identity: &'a str,
    pub lease_duration_seconds: u32,
    pub renew_time: MicroTime,
}

/// The node Lease in `kube-node-lease`: the heartbeat.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Lease<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub metadata: LeaseMeta<'a>,
    pub spec: LeaseSpec<'a>,
}

// ---------------------------------------------------------------- Event

/// `metadata` of an Event.
#[derive(Serialize, Debug)]
pub struct EventMeta<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
}

/// The object an Event is about.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<&'a str>,
}

/// Who reported an Event.
#[derive(Serialize, Debug)]
pub struct EventSource<'a> {
    pub component: &'a str,
    pub host: &'a str,
}

/// A core/v1 Event, as `kubectl describe` and `kubectl get events` show them.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub metadata: EventMeta<'a>,
    pub involved_object: ObjectReference<'a>,
    pub reason: &'a str,
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind_of_event: &'a str,
    pub source: EventSource<'a>,
    pub first_timestamp: Rfc3339,
    pub last_timestamp: Rfc3339,
    pub count: u32,
    pub reporting_component: &'a str,
    pub reporting_instance: &'a str,
}

// ---------------------------------------------------------------- Pod

/// Merge patch for `pods/NAME/status` that fails a pod this node cannot run.
#[derive(Serialize, Debug)]
pub struct PodStatusPatch<'a> {
    pub status: PodFailure<'a>,
}

/// The failed phase with reason and message, as the kubelet writes for rejected pods.
#[derive(Serialize, Debug)]
pub struct PodFailure<'a> {
    pub phase: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}

// ---------------------------------------------------------------- reading

/// The metadata fields picolet reads.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct MetaLite<'a> {
    #[serde(borrow)]
    pub name: Option<&'a str>,
    #[serde(borrow)]
    pub namespace: Option<&'a str>,
    #[serde(borrow)]
    pub uid: Option<&'a str>,
    #[serde(borrow)]
    pub resource_version: Option<&'a str>,
    #[serde(borrow, rename = "continue")]
    pub continue_token: Option<&'a str>,
}

/// Any object read back where only metadata matters (Node, Lease).
#[derive(Deserialize, Debug, Default)]
pub struct ObjectLite<'a> {
    #[serde(borrow, default)]
    pub metadata: MetaLite<'a>,
}

/// `data` of the followed ConfigMap.
#[derive(Deserialize, Debug, Default, Clone, Copy)]
pub struct ConfigData<'a> {
    #[serde(borrow)]
    pub memory_values: Option<&'a str>,
}

/// A ConfigMap, or (inside a watch ERROR event) a Status: the fields of both are optional.
#[derive(Deserialize, Debug, Default)]
pub struct ConfigMapLite<'a> {
    #[serde(borrow, default)]
    pub metadata: MetaLite<'a>,
    #[serde(borrow)]
    pub data: Option<ConfigData<'a>>,
    /// Status.code in ERROR events (410 Gone when the resourceVersion expired).
    pub code: Option<u16>,
    #[serde(borrow)]
    pub message: Option<&'a str>,
}

/// A list response holding at most the one ConfigMap picolet selects by name.
#[derive(Deserialize, Debug)]
pub struct ConfigMapListLite<'a> {
    #[serde(borrow, default)]
    pub metadata: MetaLite<'a>,
    #[serde(borrow)]
    pub items: heapless::Vec<ConfigMapLite<'a>, 1>,
}

/// One line of a watch stream.
#[derive(Deserialize, Debug)]
pub struct WatchEventLite<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(borrow)]
    pub object: ConfigMapLite<'a>,
}

/// A pod bound to this node.
#[derive(Deserialize, Debug)]
pub struct PodLite<'a> {
    #[serde(borrow, default)]
    pub metadata: MetaLite<'a>,
}

/// A page of pods bound to this node that are not yet finished.
#[derive(Deserialize, Debug)]
pub struct PodListLite<'a> {
    #[serde(borrow, default)]
    pub metadata: MetaLite<'a>,
    #[serde(borrow)]
    pub items: heapless::Vec<PodLite<'a>, 4>,
}

/// An API `Status` error body.
#[derive(Deserialize, Debug, Default)]
pub struct StatusLite<'a> {
    #[serde(borrow)]
    pub reason: Option<&'a str>,
    #[serde(borrow)]
    pub message: Option<&'a str>,
}

/// Parses `bytes` as `T`, ignoring trailing whitespace.
pub fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json_core::from_slice::<T>(bytes).ok().map(|(v, _)| v)
}

/// Finds the first `"resourceVersion":"…"` in the prefix of a document too large to parse.
/// In a list it is the list's version, in a watch event the object's: enough to move past an
/// oversized ConfigMap instead of fetching it again and again.
pub fn scan_resource_version(prefix: &[u8]) -> Option<&str> {
    scan_field(prefix, "resourceVersion")
}

/// Where the object inside a (possibly truncated) document starts: the first list item (after
/// `"items":[`) or a watch event's object (after `"object":`), whichever `envelope` names.
/// The API server writes a list's own metadata before its items, so fields scanned from here
/// on are the object's, not the list's.
pub fn object_start(prefix: &[u8], envelope: Envelope) -> Option<usize> {
    let key: &[u8] = match envelope {
        Envelope::List => b"\"items\":[",
        Envelope::WatchEvent => b"\"object\":",
    };
    let at = prefix.windows(key.len()).position(|w| w == key)? + key.len();
    (prefix.get(at) == Some(&b'{')).then_some(at)
}

/// What wraps the object in a response: see [`object_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// `{…,"items":[OBJECT]}`: a list holding one object.
    List,
    /// `{"type":…,"object":OBJECT}`: one watch event.
    WatchEvent,
}

impl Envelope {
    /// Bytes after the object: `]}` closes a list, `}` a watch event.
    #[must_use]
    pub fn tail_len(self) -> usize {
        match self {
            Self::List => 2,
            Self::WatchEvent => 1,
        }
    }
}

/// Finds the first `"KEY":"VALUE"` in a (possibly truncated) document, for fields that the
/// API server writes early in `metadata` (uid, resourceVersion). Values are alphanumeric or `-`,
/// at most 64 bytes; anything else is refused.
pub fn scan_field<'a>(prefix: &'a [u8], key: &str) -> Option<&'a str> {
    let mut pattern = [0u8; 40];
    let k = key.as_bytes();
    let plen = k.len() + 4;
    if plen > pattern.len() {
        return None;
    }
    pattern[0] = b'"';
    pattern[1..1 + k.len()].copy_from_slice(k);
    pattern[1 + k.len()..plen].copy_from_slice(b"\":\"");
    let pattern = &pattern[..plen];
    let start = prefix.windows(plen).position(|w| w == pattern)? + plen;
    let len = prefix[start..].iter().position(|&b| b == b'"')?;
    let v = core::str::from_utf8(&prefix[start..start + len]).ok()?;
    (!v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_watch_events_skipping_managed_fields() {
        let line = br#"{"type":"MODIFIED","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"pico-config","namespace":"default","uid":"u1","resourceVersion":"123","managedFields":[{"manager":"kubectl-create","fieldsV1":{"f:data":{".":{},"f:memory_values":{}}}}]},"data":{"memory_values":"0=0x42","other":"x"}}}"#;
        let ev: WatchEventLite = from_json(line).unwrap();
        assert_eq!(ev.kind, "MODIFIED");
        assert_eq!(ev.object.metadata.resource_version, Some("123"));
        assert_eq!(ev.object.data.unwrap().memory_values, Some("0=0x42"));

        let err = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (2)","reason":"Expired","code":410}}"#;
        let ev: WatchEventLite = from_json(err).unwrap();
        assert_eq!((ev.kind, ev.object.code), ("ERROR", Some(410)));
    }

    #[test]
    fn reads_lists() {
        let empty = br#"{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"77"},"items":[]}"#;
        let l: ConfigMapListLite = from_json(empty).unwrap();
        assert_eq!(
            (l.metadata.resource_version, l.items.len()),
            (Some("77"), 0)
        );
        let pods = br#"{"metadata":{"resourceVersion":"9","continue":"abc"},"items":[{"metadata":{"name":"p","namespace":"default"},"spec":{"nodeName":"n"},"status":{"phase":"Pending"}}]}"#;
        let p: PodListLite = from_json(pods).unwrap();
        assert_eq!(p.items[0].metadata.name, Some("p"));
        assert_eq!(p.metadata.continue_token, Some("abc"));
        assert!(from_json::<ConfigMapListLite>(b"{not json").is_none());
    }

    #[test]
    fn scans_uid_from_a_truncated_node() {
        let prefix = br#"{"kind":"Node","apiVersion":"v1","metadata":{"name":"pico-node-1","uid":"c36d2dd6-0e4f-47bb-a640-8c6ba38ae3c9","resourceVersion":"221","labels":{"#;
        assert_eq!(
            scan_field(prefix, "uid"),
            Some("c36d2dd6-0e4f-47bb-a640-8c6ba38ae3c9")
        );
        assert_eq!(scan_field(prefix, "resourceVersion"), Some("221"));
        assert_eq!(scan_field(br#"{"uid":"a b"}"#, "uid"), None);
    }

    #[test]
    fn finds_the_object_after_its_envelope() {
        let list = br#"{"kind":"ConfigMapList","metadata":{"resourceVersion":"40"},"items":[{"metadata":{"uid":"u","resourceVersion":"39""#;
        let at = object_start(list, Envelope::List).unwrap();
        assert_eq!(scan_resource_version(list), Some("40"));
        assert_eq!(scan_resource_version(&list[at..]), Some("39"));
        assert_eq!(object_start(br#"{"items":[]}"#, Envelope::List), None);
        let ev = br#"{"type":"MODIFIED","object":{"metadata":{"resourceVersion":"4"}}}"#;
        assert_eq!(object_start(ev, Envelope::WatchEvent), Some(28));
        assert_eq!(object_start(b"{\"object\":", Envelope::WatchEvent), None);
    }

    #[test]
    fn scans_resource_version_from_a_prefix() {
        assert_eq!(scan_resource_version(br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"4711","annotations":{"#), Some("4711"));
        assert_eq!(
            scan_resource_version(br#"{"metadata":{"resourceVersion":"47"#),
            None
        );
        assert_eq!(
            scan_resource_version(br#"{"metadata":{"resourceVersion":"4\"7"}"#),
            None
        );
    }
}
