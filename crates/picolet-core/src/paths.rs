//! Every API server path the node requests, in one place, as kube-core's request builders keep
//! them: an [`ApiPath`] renders the path and query of a request line. The names in them are the
//! node's own (checked DNS labels) or come from the server (resourceVersions, pod names).

use core::fmt;

/// Namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Where a watch starts and how long the server should keep it open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch<'a> {
    /// The resourceVersion to resume from.
    pub resource_version: &'a str,
    /// `timeoutSeconds`.
    pub timeout_s: u32,
}

/// A request target on the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiPath<'a> {
    /// The Node collection (create).
    Nodes,
    /// One Node (get, merge patch of its metadata).
    Node(&'a str),
    /// A Node's status subresource.
    NodeStatus(&'a str),
    /// The Lease collection in [`LEASE_NAMESPACE`] (create).
    Leases,
    /// A node's Lease (get, renew).
    Lease(&'a str),
    /// Events in a namespace (create).
    Events(&'a str),
    /// The one ConfigMap `name` in `namespace`, listed (or watched) by field selector: the
    /// node's RBAC grants it only this ConfigMap, by name.
    ConfigMap {
        /// Namespace of the ConfigMap.
        namespace: &'a str,
        /// Its name.
        name: &'a str,
        /// Watch instead of list.
        watch: Option<Watch<'a>>,
    },
    /// The unfinished pods bound to `node`, listed a page of `limit` at a time (or watched).
    PodsOn {
        /// The node name.
        node: &'a str,
        /// Page size of a list.
        limit: usize,
        /// Watch instead of list.
        watch: Option<Watch<'a>>,
    },
    /// A pod's status subresource.
    PodStatus {
        /// Namespace of the pod.
        namespace: &'a str,
        /// Its name.
        name: &'a str,
    },
    /// The CertificateSigningRequest collection (create).
    CertificateSigningRequests,
    /// One CertificateSigningRequest (get).
    CertificateSigningRequest(&'a str),
    /// SubjectAccessReviews (create).
    SubjectAccessReviews,
    /// TokenReviews (create).
    TokenReviews,
}

const CORE: &str = "/api/v1";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

impl fmt::Display for ApiPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Nodes => write!(f, "{CORE}/nodes"),
            Self::Node(name) => write!(f, "{CORE}/nodes/{name}"),
            Self::NodeStatus(name) => write!(f, "{CORE}/nodes/{name}/status"),
            Self::Leases => write!(
                f,
                "/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
            ),
            Self::Lease(name) => write!(
                f,
                "/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{name}"
            ),
            Self::Events(ns) => write!(f, "{CORE}/namespaces/{ns}/events"),
            Self::ConfigMap {
                namespace,
                name,
                watch,
            } => {
                write!(
                    f,
                    "{CORE}/namespaces/{namespace}/configmaps?fieldSelector=metadata.name%3D{name}"
                )?;
                watch_query(f, watch)
            }
            Self::PodsOn { node, limit, watch } => {
                write!(
                    f,
                    "{CORE}/pods?fieldSelector=spec.nodeName%3D{node}%2Cstatus.phase%21%3DFailed%2Cstatus.phase%21%3DSucceeded"
                )?;
                match watch {
                    None => write!(f, "&limit={limit}"),
                    Some(_) => watch_query(f, watch),
                }
            }
            Self::PodStatus { namespace, name } => {
                write!(f, "{CORE}/namespaces/{namespace}/pods/{name}/status")
            }
            Self::CertificateSigningRequests => f.write_str(CSRS),
            Self::CertificateSigningRequest(name) => write!(f, "{CSRS}/{name}"),
            Self::SubjectAccessReviews => {
                f.write_str("/apis/authorization.k8s.io/v1/subjectaccessreviews")
            }
            Self::TokenReviews => f.write_str("/apis/authentication.k8s.io/v1/tokenreviews"),
        }
    }
}

/// The query of a watch: resume from a version, with bookmarks, for a bounded time.
fn watch_query(f: &mut fmt::Formatter<'_>, watch: Option<Watch<'_>>) -> fmt::Result {
    match watch {
        None => Ok(()),
        Some(w) => write!(
            f,
            "&watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
            w.resource_version, w.timeout_s
        ),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn renders_the_paths_the_api_server_serves() {
        let cases = [
            (ApiPath::Nodes, "/api/v1/nodes"),
            (ApiPath::Node("pico-node-1"), "/api/v1/nodes/pico-node-1"),
            (
                ApiPath::NodeStatus("pico-node-1"),
                "/api/v1/nodes/pico-node-1/status",
            ),
            (
                ApiPath::Lease("pico-node-1"),
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/pico-node-1",
            ),
            (
                ApiPath::Events("default"),
                "/api/v1/namespaces/default/events",
            ),
            (
                ApiPath::ConfigMap {
                    namespace: "default",
                    name: "pico-config",
                    watch: None,
                },
                "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dpico-config",
            ),
            (
                ApiPath::ConfigMap {
                    namespace: "default",
                    name: "pico-config",
                    watch: Some(Watch {
                        resource_version: "42",
                        timeout_s: 600,
                    }),
                },
                "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dpico-config&watch=1&resourceVersion=42&allowWatchBookmarks=true&timeoutSeconds=600",
            ),
            (
                ApiPath::PodsOn {
                    node: "n",
                    limit: 4,
                    watch: None,
                },
                "/api/v1/pods?fieldSelector=spec.nodeName%3Dn%2Cstatus.phase%21%3DFailed%2Cstatus.phase%21%3DSucceeded&limit=4",
            ),
            (
                ApiPath::PodStatus {
                    namespace: "web",
                    name: "nginx",
                },
                "/api/v1/namespaces/web/pods/nginx/status",
            ),
            (
                ApiPath::CertificateSigningRequest("picolet-n-client-1"),
                "/apis/certificates.k8s.io/v1/certificatesigningrequests/picolet-n-client-1",
            ),
            (
                ApiPath::SubjectAccessReviews,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            ),
            (
                ApiPath::TokenReviews,
                "/apis/authentication.k8s.io/v1/tokenreviews",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(path.to_string(), want);
        }
    }
}
