//! `picolet approve`: approves the kubelet-serving CSRs of picolet nodes, after checking them
//! as a careful administrator would. `kubernetes.io/kubelet-serving` is never auto-approved
//! (a node could otherwise claim any name or address); this checks that a request comes from
//! the node itself and names only that node and the addresses its Node object publishes.
//!
//! A request that fails a check is left pending (and the reason printed): denying is for a
//! human to decide, with `kubectl certificate deny`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine;
use picolet_core::http::Method;
use serde_json::Value;
use x509_parser::prelude::*;

use super::enrol::{self, AdminClient, EnrolError};
use super::kubeconfig;

const SIGNER: &str = "kubernetes.io/kubelet-serving";
const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// What `picolet approve` needs.
#[derive(Clone, Debug)]
pub struct ApproveOptions {
    /// The admin kubeconfig files, merged in order (see [`kubeconfig::locate`]).
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
    pub refused: Option<String>,
}

/// Why a request is not for approval, or `Ok(())`.
pub fn check_request(
    username: &str,
    usages: &[&str],
    request_pem: &[u8],
    node_addresses: &BTreeSet<String>,
) -> Result<(), String> {
    let node = username
        .strip_prefix("system:node:")
        .ok_or_else(|| format!("requested by {username}, not by a node"))?;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(request_pem)
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .map_err(|e| format!("request is not a PEM CSR: {e}"))?;
    let (_, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("request is not a valid PKCS#10 CSR: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the CSR's signature does not verify".to_string())?;
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
        return Err(format!("subject CN {cn:?} is not the requester {username}"));
    }
    if orgs != ["system:nodes"] {
        return Err(format!("subject O {orgs:?} is not [system:nodes]"));
    }
    for u in usages {
        if !["digital signature", "key encipherment", "server auth"].contains(u) {
            return Err(format!("usage {u:?} is not for a serving certificate"));
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
                        _ => return Err("malformed IP address SAN".into()),
                    };
                    if !node_addresses.contains(&ip.to_string()) {
                        return Err(format!(
                            "IP SAN {ip} is not an address of Node {node} ({node_addresses:?})"
                        ));
                    }
                }
                other => return Err(format!("SAN {other} is not this node's")),
            }
        }
    }
    if sans == 0 {
        return Err("no DNS or IP SAN".into());
    }
    Ok(())
}

async fn node_addresses(admin: &mut AdminClient, node: &str) -> Result<BTreeSet<String>, String> {
    let (status, body) = admin
        .request(Method::Get, &format!("/api/v1/nodes/{node}"), None)
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("Node {node} not readable (HTTP {status})"));
    }
    Ok(body["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["address"].as_str().map(String::from))
        .collect())
}

fn pending(csr: &Value) -> bool {
    let conditions = csr["status"]["conditions"].as_array();
    !conditions.into_iter().flatten().any(|c| {
        matches!(
            c["type"].as_str(),
            Some("Approved") | Some("Denied") | Some("Failed")
        )
    })
}

/// One pass over the pending kubelet-serving CSRs.
async fn pass(admin: &mut AdminClient, only: Option<&str>) -> Result<Vec<Verdict>, EnrolError> {
    let (status, list) = admin.request(Method::Get, CSR_PATH, None).await?;
    if status != 200 {
        return Err(EnrolError::Api {
            what: "listing CSRs",
            status,
            body: list.to_string(),
        });
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut verdicts = vec![];
    for csr in list["items"].as_array().into_iter().flatten() {
        let spec = &csr["spec"];
        let username = spec["username"].as_str().unwrap_or_default();
        if spec["signerName"] != SIGNER || !pending(csr) {
            continue;
        }
        if let Some(node) = only
            && username != format!("system:node:{node}")
        {
            continue;
        }
        let name = csr["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let usages: Vec<&str> = spec["usages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let request = b64
            .decode(spec["request"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let node = username.strip_prefix("system:node:").unwrap_or(username);
        let checked = match node_addresses(admin, node).await {
            Ok(addresses) => check_request(username, &usages, &request, &addresses),
            Err(e) => Err(e),
        };
        let refused = match checked {
            Ok(()) => {
                enrol::approve(
                    admin,
                    &format!("{CSR_PATH}/{name}"),
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
pub async fn approve(opts: &ApproveOptions) -> Result<Vec<Verdict>, EnrolError> {
    let access = kubeconfig::load_all(&opts.kubeconfig).map_err(EnrolError::Kubeconfig)?;
    let mut admin = AdminClient::new(&access)?;
    let deadline = Instant::now() + opts.wait;
    let mut all = vec![];
    loop {
        let verdicts = pass(&mut admin, opts.node_name.as_deref()).await?;
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
        let key = crate::node_certs::new_key();
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
        assert!(e.unwrap_err().contains("not the requester"));
        let e = check_request("alice", &USAGES, &good, &addresses());
        assert!(e.unwrap_err().contains("not by a node"));
        // An address the Node does not publish, a foreign DNS name, no SAN at all.
        let ip = csr_pem("pico-node-1", &[San::Ipv4([10, 0, 0, 9])]);
        let e = check_request("system:node:pico-node-1", &USAGES, &ip, &addresses());
        assert!(e.unwrap_err().contains("10.0.0.9"));
        let dns = csr_pem("pico-node-1", &[San::Dns("kubernetes.default")]);
        let e = check_request("system:node:pico-node-1", &USAGES, &dns, &addresses());
        assert!(e.unwrap_err().contains("kubernetes.default"));
        let none = csr_pem("pico-node-1", &[]);
        let e = check_request("system:node:pico-node-1", &USAGES, &none, &addresses());
        assert!(e.unwrap_err().contains("no DNS or IP SAN"));
        // Client-auth usage on a serving request; a tampered request.
        let e = check_request(
            "system:node:pico-node-1",
            &["digital signature", "client auth"],
            &good,
            &addresses(),
        );
        assert!(e.unwrap_err().contains("client auth"));
        let e = check_request("system:node:pico-node-1", &USAGES, b"junk", &addresses());
        assert!(e.unwrap_err().contains("not a PEM CSR"));
    }
}
