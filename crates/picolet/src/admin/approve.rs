//! `picolet approve`: approves the kubelet-serving CSRs of picolet nodes, after checking them
//! as a careful administrator would. `kubernetes.io/kubelet-serving` is never auto-approved
//! (a node could otherwise claim any name or address); this checks that a request comes from
//! the node itself and names only that node and the addresses its Node object publishes.
//!
//! A request that fails a check is left pending (and the reason printed): denying is for a
//! human to decide, with `kubectl certificate deny`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use x509_parser::prelude::*;

use super::{AdminError, api, enrol};

const SIGNER: &str = "kubernetes.io/kubelet-serving";

/// What `picolet approve` needs.
#[derive(Clone, Debug)]
pub struct ApproveOptions {
    /// The admin kubeconfig files, merged in order (see [`super::kubeconfig::locate`]).
    pub kubeconfig: Vec<std::path::PathBuf>,
    /// Only this node's requests (all nodes' when `None`).
    pub node_name: Option<String>,
    /// Keep looking until at least one request was approved, for up to this long.
    pub wait: Duration,
}

/// One request looked at: its name, and why it was not approved (`None`: approved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub csr: String,
    pub refused: Option<Refusal>,
}

/// Why a kubelet-serving request is left pending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("requested by {username}, not by a node")]
    NotByANode { username: String },
    #[error("request is not a PEM CSR: {0}")]
    NotPem(String),
    #[error("request is not a valid PKCS#10 CSR: {0}")]
    NotPkcs10(String),
    #[error("the CSR's signature does not verify")]
    BadSignature,
    #[error("subject CN {cn:?} is not the requester {username}")]
    OtherCommonName { cn: Vec<String>, username: String },
    #[error("subject O {0:?} is not [system:nodes]")]
    OtherOrganization(Vec<String>),
    #[error("usage {0:?} is not for a serving certificate")]
    NotServingUsage(String),
    #[error("malformed IP address SAN")]
    MalformedIp,
    #[error("IP SAN {ip} is not an address of Node {node} ({addresses:?})")]
    ForeignIp {
        ip: std::net::IpAddr,
        node: String,
        addresses: BTreeSet<String>,
    },
    #[error("SAN {0} is not this node's")]
    ForeignName(String),
    #[error("no DNS or IP SAN")]
    NoSan,
    /// The requester's Node could not be read, so its addresses are unknown.
    #[error("Node {node} not readable ({why})")]
    NodeUnreadable { node: String, why: String },
}

/// Why a request is not for approval, or `Ok(())`.
pub fn check_request(
    username: &str,
    usages: &[&str],
    request_pem: &[u8],
    node_addresses: &BTreeSet<String>,
) -> Result<(), Refusal> {
    let node = username
        .strip_prefix("system:node:")
        .ok_or_else(|| Refusal::NotByANode {
            username: username.into(),
        })?;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(request_pem)
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .map_err(|e| Refusal::NotPem(e.to_string()))?;
    let (_, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| Refusal::NotPkcs10(e.to_string()))?;
    csr.verify_signature().map_err(|_| Refusal::BadSignature)?;
    let subject = &csr.certification_request_info.subject;
    let cn: Vec<_> = subject
        .iter_common_name()
        .filter_map(|a| a.as_str().ok())
        .collect();
    let orgs: Vec<_> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok())
        .collect();
    if cn != [username] {
        return Err(Refusal::OtherCommonName {
            cn: cn.iter().map(|s| s.to_string()).collect(),
            username: username.into(),
        });
    }
    if orgs != ["system:nodes"] {
        return Err(Refusal::OtherOrganization(
            orgs.iter().map(|s| s.to_string()).collect(),
        ));
    }
    for u in usages {
        if !["digital signature", "key encipherment", "server auth"].contains(u) {
            return Err(Refusal::NotServingUsage(u.to_string()));
        }
    }
    let mut sans = 0;
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else {
            continue;
        };
        for name in &san.general_names {
            sans += 1;
            match name {
                GeneralName::DNSName(d) if *d == node || node_addresses.contains(*d) => {}
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()),
                        _ => return Err(Refusal::MalformedIp),
                    };
                    if !node_addresses.contains(&ip.to_string()) {
                        return Err(Refusal::ForeignIp {
                            ip,
                            node: node.into(),
                            addresses: node_addresses.clone(),
                        });
                    }
                }
                other => return Err(Refusal::ForeignName(other.to_string())),
            }
        }
    }
    if sans == 0 {
        return Err(Refusal::NoSan);
    }
    Ok(())
}

async fn node_addresses(nodes: &Api<Node>, node: &str) -> Result<BTreeSet<String>, Refusal> {
    let n = nodes.get(node).await.map_err(|e| Refusal::NodeUnreadable {
        node: node.into(),
        why: match e {
            kube::Error::Api(s) => format!("HTTP {}", s.code),
            other => other.to_string(),
        },
    })?;
    Ok(n.status
        .and_then(|s| s.addresses)
        .into_iter()
        .flatten()
        .map(|a| a.address)
        .collect())
}

fn pending(csr: &CertificateSigningRequest) -> bool {
    let conditions = csr.status.as_ref().and_then(|s| s.conditions.as_ref());
    !conditions
        .into_iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
}

/// One pass over the pending kubelet-serving CSRs.
async fn pass(client: &kube::Client, only: Option<&str>) -> Result<Vec<Verdict>, AdminError> {
    let csrs = Api::<CertificateSigningRequest>::all(client.clone());
    let nodes = Api::<Node>::all(client.clone());
    let list = csrs
        .list(&ListParams::default())
        .await
        .map_err(api("listing CSRs"))?;
    let mut verdicts = vec![];
    for csr in &list.items {
        let spec = &csr.spec;
        let username = spec.username.as_deref().unwrap_or_default();
        if spec.signer_name != SIGNER || !pending(csr) {
            continue;
        }
        if let Some(node) = only
            && username != format!("system:node:{node}")
        {
            continue;
        }
        let name = csr.metadata.name.clone().unwrap_or_default();
        let usages: Vec<&str> = spec.usages.iter().flatten().map(String::as_str).collect();
        let node = username.strip_prefix("system:node:").unwrap_or(username);
        let checked = match node_addresses(&nodes, node).await {
            Ok(addresses) => check_request(username, &usages, &spec.request.0, &addresses),
            Err(e) => Err(e),
        };
        let refused = match checked {
            Ok(()) => {
                enrol::approve(
                    &csrs,
                    &name,
                    "PicoletApprove",
                    "serving certificate checked and approved by picolet approve",
                )
                .await?;
                None
            }
            Err(why) => Some(why),
        };
        verdicts.push(Verdict { csr: name, refused });
    }
    Ok(verdicts)
}

/// Approves what passes the checks; with a wait, keeps looking until one was approved.
pub async fn approve(opts: &ApproveOptions) -> Result<Vec<Verdict>, AdminError> {
    let (_, client) = super::connect(&opts.kubeconfig).await?;
    let deadline = Instant::now() + opts.wait;
    let mut all = vec![];
    loop {
        let verdicts = pass(&client, opts.node_name.as_deref()).await?;
        let approved = verdicts.iter().any(|v| v.refused.is_none());
        for v in verdicts {
            if !all.contains(&v) {
                all.push(v);
            }
        }
        if approved || Instant::now() >= deadline {
            return Ok(all);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picolet_core::pki::{self, CsrSubject, San};

    fn csr_pem(node: &str, sans: &[San<'_>]) -> Vec<u8> {
        let key = crate::node::certs::new_key();
        let mut der = [0u8; 1024];
        let n = key
            .csr(
                &CsrSubject {
                    node_name: node,
                    sans,
                },
                &mut der,
            )
            .unwrap();
        let mut pem = [0u8; 2048];
        let m = pki::pem_encode(pki::CERTIFICATE_REQUEST, &der[..n], &mut pem).unwrap();
        pem[..m].to_vec()
    }

    fn addresses() -> BTreeSet<String> {
        ["10.42.0.2".to_string(), "pico-node-1".to_string()].into()
    }

    const USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

    #[test]
    fn approves_only_what_the_node_may_claim() {
        let good = csr_pem(
            "pico-node-1",
            &[San::Dns("pico-node-1"), San::Ipv4([10, 42, 0, 2])],
        );
        assert_eq!(
            check_request("system:node:pico-node-1", &USAGES, &good, &addresses()),
            Ok(())
        );
        // Another node asking for this node's name, or anyone not a node.
        let e = check_request("system:node:pico-node-2", &USAGES, &good, &addresses());
        assert!(e.unwrap_err().to_string().contains("not the requester"));
        let e = check_request("alice", &USAGES, &good, &addresses());
        assert!(e.unwrap_err().to_string().contains("not by a node"));
        // An address the Node does not publish, a foreign DNS name, no SAN at all.
        let ip = csr_pem("pico-node-1", &[San::Ipv4([10, 0, 0, 9])]);
        let e = check_request("system:node:pico-node-1", &USAGES, &ip, &addresses());
        assert!(e.unwrap_err().to_string().contains("10.0.0.9"));
        let dns = csr_pem("pico-node-1", &[San::Dns("kubernetes.default")]);
        let e = check_request("system:node:pico-node-1", &USAGES, &dns, &addresses());
        assert!(e.unwrap_err().to_string().contains("kubernetes.default"));
        let none = csr_pem("pico-node-1", &[]);
        let e = check_request("system:node:pico-node-1", &USAGES, &none, &addresses());
        assert!(e.unwrap_err().to_string().contains("no DNS or IP SAN"));
        // Client-auth usage on a serving request; a tampered request.
        let e = check_request(
            "system:node:pico-node-1",
            &["digital signature", "client auth"],
            &good,
            &addresses(),
        );
        assert!(e.unwrap_err().to_string().contains("client auth"));
        let e = check_request("system:node:pico-node-1", &USAGES, b"junk", &addresses());
        assert!(e.unwrap_err().to_string().contains("not a PEM CSR"));
    }
}
