//! `picolet enrol`: gives a node its own identity through the Kubernetes CSR API, using an
//! admin kubeconfig once. Replaces a hand-run certificate script.
//!
//! 1. generate a P-256 key and a PKCS#10 request for `CN=system:node:NAME, O=system:nodes`;
//! 2. submit it as a CertificateSigningRequest for `kubernetes.io/kube-apiserver-client-kubelet`;
//! 3. approve it (as the admin), wait for the controller-manager to sign it;
//! 4. apply the RBAC that lets exactly this node read exactly its ConfigMap (`deploy/` holds the
//!    same objects as manifests);
//! 5. write the credentials directory (see [`crate::credentials`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use picolet_core::http::{self, BodyType, Method};
use picolet_core::pki::{self, CsrSubject, PkiError};
use picolet_device::keys::NodeKey;
use serde_json::{Value, json};

use super::kubeconfig::{self, KubeconfigError};
use crate::api::{Connection, Endpoint, TransportError};
use crate::credentials::{Credentials, CredentialsError, NodeIdentity};
use crate::tls::TlsError;

/// What `picolet enrol` needs.
#[derive(Clone, Debug)]
pub struct EnrolOptions {
    /// The admin kubeconfig files, merged in order (see [`kubeconfig::locate`]).
    pub kubeconfig: Vec<PathBuf>,
    pub node_name: String,
    pub out_dir: PathBuf,
    /// The API server address the node should use; defaults to the kubeconfig's.
    pub server: Option<String>,
    /// The name the node checks in the API server's certificate.
    pub tls_server_name: String,
    pub config_namespace: String,
    pub config_map: String,
    pub timeout: Duration,
}

/// Why enrolment failed.
#[derive(Debug)]
pub enum EnrolError {
    Kubeconfig(KubeconfigError),
    Tls(TlsError),
    Transport(TransportError),
    Key(PkiError),
    /// The API server answered with an unexpected status.
    Api {
        what: &'static str,
        status: u16,
        body: String,
    },
    /// The certificate was not issued in time (is the controller-manager's signer running?).
    NotIssued {
        csr: String,
    },
    Credentials(CredentialsError),
}

impl fmt::Display for EnrolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kubeconfig(e) => write!(f, "{e}"),
            Self::Tls(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "API server: {e}"),
            Self::Key(e) => write!(f, "key generation: {e}"),
            Self::Api { what, status, body } => {
                write!(f, "{what} failed with HTTP {status}: {}", body.trim())
            }
            Self::NotIssued { csr } => write!(
                f,
                "CSR {csr} was approved but no certificate was issued in time; is kube-controller-manager running with --cluster-signing-cert-file?"
            ),
            Self::Credentials(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EnrolError {}

/// An admin session: JSON requests over one kept-alive connection.
pub struct AdminClient {
    conn: Connection,
    host: String,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl AdminClient {
    /// Connects as the kubeconfig's user.
    pub fn new(access: &kubeconfig::AdminAccess) -> Result<Self, EnrolError> {
        let host = api_host(&access.server);
        let name = access
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let endpoint = Endpoint::new(
            &access.server,
            &name,
            &access.ca_pem,
            Some((&access.cert_pem, &access.key_pem)),
        )
        .map_err(EnrolError::Tls)?;
        Ok(Self {
            conn: Connection::new(Arc::new(endpoint), 16 * 1024),
            host: name,
            buf: vec![0; 256 * 1024],
            body: vec![0; 1 << 20],
        })
    }

    /// Sends one request; returns the status and the parsed JSON body (`Null` if not JSON).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(BodyType, &Value)>,
    ) -> Result<(u16, Value), EnrolError> {
        let text = body.map(|(_, v)| serde_json::to_vec(v).expect("JSON values serialize"));
        let mut write_body = |out: &mut [u8]| {
            let t = text.as_ref()?;
            out.get_mut(..t.len())?.copy_from_slice(t);
            Some(t.len())
        };
        let n = http::encode_request(
            &mut self.buf,
            method,
            &self.host,
            format_args!("{path}"),
            body.map(|(ct, _)| {
                (
                    ct,
                    &mut write_body as &mut dyn FnMut(&mut [u8]) -> Option<usize>,
                )
            }),
        )
        .map_err(|e| EnrolError::Api {
            what: "encoding a request",
            status: 0,
            body: e.to_string(),
        })?;
        let resp = self
            .conn
            .round_trip(&self.buf[..n], &mut self.body)
            .await
            .map_err(EnrolError::Transport)?;
        let len = resp.body_len.min(self.body.len());
        Ok((
            resp.head.status,
            serde_json::from_slice(&self.body[..len]).unwrap_or(Value::Null),
        ))
    }
}

fn api_host(server: &str) -> String {
    let hp = crate::api::host_port(server).unwrap_or_default();
    match hp.rfind(':') {
        Some(i) => hp[..i]
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        None => hp,
    }
}

/// The Role and RoleBinding that let `system:node:NODE` get, list and watch one ConfigMap.
pub fn rbac_objects(node: &str, namespace: &str, config_map: &str) -> [Value; 2] {
    let name = format!("picolet-config-reader-{node}");
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "picolet"}},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [config_map], "verbs": ["get", "list", "watch"]}]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "picolet"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("system:node:{node}")}]
        }),
    ]
}

/// The binding that lets this node have renewals of its own client certificate auto-approved:
/// the CSR approver approves a `selfnodeclient` request only for users who may create
/// `certificatesigningrequests/selfnodeclient`. One binding per node (kubeadm binds the whole
/// `system:nodes` group), so that deleting it stops one board's renewals: part of revoking it.
pub fn renewal_rbac_object(node: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("picolet-node-client-renewal-{node}"), "labels": {"app.kubernetes.io/managed-by": "picolet"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("system:node:{node}")}]
    })
}

/// Applies one object by server-side apply (re-running is harmless).
pub async fn apply(admin: &mut AdminClient, obj: &Value) -> Result<(), EnrolError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let path = match (obj["kind"].as_str(), obj["metadata"]["namespace"].as_str()) {
        (Some("Role"), Some(ns)) => {
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}")
        }
        (Some("RoleBinding"), Some(ns)) => {
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}")
        }
        (Some("ClusterRoleBinding"), _) => {
            format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
        }
        (Some("Secret"), Some(ns)) => format!("/api/v1/namespaces/{ns}/secrets/{name}"),
        _ => {
            return Err(EnrolError::Api {
                what: "applying an object of unknown kind",
                status: 0,
                body: obj.to_string(),
            });
        }
    };
    let (status, body) = admin
        .request(
            Method::Patch,
            &format!("{path}?fieldManager=picolet&force=true"),
            Some((BodyType::ApplyPatch, obj)),
        )
        .await?;
    if !(200..300).contains(&status) {
        return Err(EnrolError::Api {
            what: "applying RBAC",
            status,
            body: body.to_string(),
        });
    }
    Ok(())
}

/// Applies (server-side apply, so re-running is harmless) the RBAC objects for a node.
pub async fn apply_rbac(
    admin: &mut AdminClient,
    node: &str,
    namespace: &str,
    config_map: &str,
) -> Result<(), EnrolError> {
    for obj in rbac_objects(node, namespace, config_map) {
        apply(admin, &obj).await?;
    }
    apply(admin, &renewal_rbac_object(node)).await
}

/// A fresh P-256 key (the same key and CSR code the firmware runs) and a CSR (PEM) for the
/// node's client identity.
pub fn node_client_csr(node: &str) -> Result<(NodeKey, String), PkiError> {
    let key = crate::node_certs::new_key();
    let mut der = [0u8; 1024];
    let n = key.csr(
        &CsrSubject {
            node_name: node,
            sans: &[],
        },
        &mut der,
    )?;
    let mut pem = [0u8; 2048];
    let m = pki::pem_encode(pki::CERTIFICATE_REQUEST, &der[..n], &mut pem)?;
    Ok((key, String::from_utf8_lossy(&pem[..m]).into_owned()))
}

const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// The signer and usages of a node client certificate.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// See [`CLIENT_SIGNER`].
pub const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// Creates a CertificateSigningRequest.
pub async fn submit_csr(
    client: &mut AdminClient,
    csr_name: &str,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<(), EnrolError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": csr_name, "labels": {"app.kubernetes.io/managed-by": "picolet"}},
        "spec": {"request": b64.encode(csr_pem), "signerName": signer, "usages": usages}
    });
    let (status, body) = client
        .request(Method::Post, CSR_PATH, Some((BodyType::Json, &csr)))
        .await?;
    if status != 201 {
        return Err(EnrolError::Api {
            what: "creating the CSR",
            status,
            body: body.to_string(),
        });
    }
    Ok(())
}

/// Reads a CSR until it carries a certificate (PEM); a denial or failure is an error.
pub async fn wait_for_certificate(
    client: &mut AdminClient,
    csr_name: &str,
    timeout: Duration,
) -> Result<String, EnrolError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (status, body) = client
            .request(Method::Get, &format!("{CSR_PATH}/{csr_name}"), None)
            .await?;
        if status != 200 {
            return Err(EnrolError::Api {
                what: "reading the CSR",
                status,
                body: body.to_string(),
            });
        }
        let refused = body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Denied" || c["type"] == "Failed");
        if let Some(c) = refused {
            return Err(EnrolError::Api {
                what: "the CSR was refused",
                status: 200,
                body: c.to_string(),
            });
        }
        if let Some(cert) = body["status"]["certificate"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            let pem = b64
                .decode(cert)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            if let Some(pem) = pem {
                return Ok(pem);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(EnrolError::NotIssued {
        csr: csr_name.into(),
    })
}

/// Submits a CSR as the admin, approves it and waits for the signed certificate (PEM).
pub async fn issue_certificate(
    admin: &mut AdminClient,
    csr_name: &str,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
    timeout: Duration,
) -> Result<String, EnrolError> {
    submit_csr(admin, csr_name, csr_pem, signer, usages).await?;
    approve(
        admin,
        &format!("{CSR_PATH}/{csr_name}"),
        "PicoletEnrol",
        "approved by picolet enrol",
    )
    .await?;
    wait_for_certificate(admin, csr_name, timeout).await
}

/// Adds the Approved condition, re-reading the CSR when a controller changed it meanwhile (409).
pub async fn approve(
    admin: &mut AdminClient,
    path: &str,
    reason: &str,
    message: &str,
) -> Result<(), EnrolError> {
    let cond = json!({"type": "Approved", "status": "True", "reason": reason, "message": message});
    let mut last = (0, Value::Null);
    for _ in 0..5 {
        let (status, mut obj) = admin.request(Method::Get, path, None).await?;
        if status != 200 {
            return Err(EnrolError::Api {
                what: "reading the CSR",
                status,
                body: obj.to_string(),
            });
        }
        let conditions = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if conditions.iter().any(|c| c["type"] == "Approved") {
            return Ok(());
        }
        let mut conditions = conditions;
        conditions.push(cond.clone());
        obj["status"]["conditions"] = Value::Array(conditions);
        let (status, body) = admin
            .request(
                Method::Put,
                &format!("{path}/approval"),
                Some((BodyType::Json, &obj)),
            )
            .await?;
        match status {
            200 => return Ok(()),
            409 => last = (status, body),
            _ => {
                return Err(EnrolError::Api {
                    what: "approving the CSR",
                    status,
                    body: body.to_string(),
                });
            }
        }
    }
    Err(EnrolError::Api {
        what: "approving the CSR",
        status: last.0,
        body: last.1.to_string(),
    })
}

/// The API server's client CA, as it publishes it for extension servers (and kubelets).
pub async fn read_client_ca(admin: &mut AdminClient) -> Option<String> {
    let (status, cm) = admin
        .request(
            Method::Get,
            "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
            None,
        )
        .await
        .ok()?;
    (status == 200)
        .then(|| cm["data"]["client-ca-file"].as_str().map(String::from))
        .flatten()
}

/// Runs the whole enrolment and returns the credentials written.
pub async fn enrol(opts: &EnrolOptions) -> Result<Credentials, EnrolError> {
    let access = kubeconfig::load_all(&opts.kubeconfig).map_err(EnrolError::Kubeconfig)?;
    let mut admin = AdminClient::new(&access)?;
    let (key, csr_pem) = node_client_csr(&opts.node_name).map_err(EnrolError::Key)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let csr_name = format!("picolet-{}-{stamp}", opts.node_name);
    tracing::info!(csr = %csr_name, "submitting CSR for system:node:{}", opts.node_name);
    let cert_pem = issue_certificate(
        &mut admin,
        &csr_name,
        &csr_pem,
        CLIENT_SIGNER,
        &CLIENT_USAGES,
        opts.timeout,
    )
    .await?;
    apply_rbac(
        &mut admin,
        &opts.node_name,
        &opts.config_namespace,
        &opts.config_map,
    )
    .await?;
    let client_ca_pem = read_client_ca(&mut admin).await;
    if client_ca_pem.is_none() {
        tracing::warn!(
            "cannot read kube-system/extension-apiserver-authentication; kubelet-port callers will be checked against the cluster CA"
        );
    }
    let creds = Credentials {
        identity: NodeIdentity {
            node_name: opts.node_name.clone(),
            server: opts.server.clone().unwrap_or_else(|| access.server.clone()),
            tls_server_name: opts.tls_server_name.clone(),
        },
        ca_pem: access.ca_pem.clone(),
        cert_pem,
        key_pem: crate::node_certs::key_pem(&key).map_err(EnrolError::Key)?,
        client_ca_pem,
    };
    creds.save(&opts.out_dir).map_err(EnrolError::Credentials)?;
    Ok(creds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The objects in a `deploy/` manifest.
    pub(crate) fn deploy_docs(file: &str) -> Vec<Value> {
        let path = format!("{}/../../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(path)
            .unwrap()
            .split("\n---\n")
            .map(|d| serde_yaml_ng::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn csr_names_the_node_in_system_nodes() {
        let (_, pem) = node_client_csr("pico-node-1").unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("system:node:pico-node-1") && text.contains("system:nodes"));
    }

    #[test]
    fn deploy_manifests_match_what_enrol_applies() {
        assert_eq!(
            deploy_docs("rbac-pico-node-1.yaml"),
            rbac_objects("pico-node-1", "default", "pico-config")
        );
    }

    #[test]
    fn api_host_strips_port_and_brackets() {
        assert_eq!(api_host("https://127.0.0.1:6443"), "127.0.0.1");
        assert_eq!(api_host("https://[::1]:6443"), "::1");
    }
}
