//! `picolet enrol`: gives a node its own identity through the Kubernetes CSR API, using an
//! admin kubeconfig once. Replaces a hand-run certificate script.
//!
//! 1. generate a P-256 key and a PKCS#10 request for `CN=system:node:NAME, O=system:nodes`;
//! 2. submit it as a CertificateSigningRequest for `kubernetes.io/kube-apiserver-client-kubelet`;
//! 3. approve it (as the admin), wait for the controller-manager to sign it;
//! 4. apply the RBAC that lets exactly this node read exactly its ConfigMap (`deploy/` holds the
//!    same objects as manifests);
//! 5. write the credentials directory (see [`crate::credentials`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use picolet_core::pki::{self, CsrSubject, PkiError};
use picolet_device::keys::NodeKey;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{AdminError, api, is_status};
use crate::credentials::Credentials;

/// What `picolet enrol` needs.
#[derive(Clone, Debug)]
pub struct EnrolOptions {
    /// The node and where its directory goes.
    pub node: super::NodeTarget,
    pub timeout: Duration,
}

/// The metadata of every object picolet creates: a name and the `managed-by` label.
pub fn picolet_meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "picolet".to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

/// An RBAC subject: a `User` or a `Group`.
pub fn subject(kind: &str, name: &str) -> Subject {
    Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    }
}

/// A reference to a `Role` or `ClusterRole`.
pub fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    }
}

/// The Role and RoleBinding that let `system:node:NODE` get, list and watch one ConfigMap.
pub fn rbac_objects(node: &str, namespace: &str, config_map: &str) -> (Role, RoleBinding) {
    let name = format!("picolet-config-reader-{node}");
    (
        Role {
            metadata: picolet_meta(&name, Some(namespace)),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["configmaps".into()]),
                resource_names: Some(vec![config_map.into()]),
                verbs: ["get", "list", "watch"].map(String::from).into(),
                ..PolicyRule::default()
            }]),
        },
        RoleBinding {
            metadata: picolet_meta(&name, Some(namespace)),
            role_ref: role_ref("Role", &name),
            subjects: Some(vec![subject("User", &format!("system:node:{node}"))]),
        },
    )
}

/// The binding that lets this node have renewals of its own client certificate auto-approved:
/// the CSR approver approves a `selfnodeclient` request only for users who may create
/// `certificatesigningrequests/selfnodeclient`. One binding per node (kubeadm binds the whole
/// `system:nodes` group), so that deleting it stops one board's renewals: part of revoking it.
pub fn renewal_rbac_object(node: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: picolet_meta(&format!("picolet-node-client-renewal-{node}"), None),
        role_ref: role_ref(
            "ClusterRole",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        ),
        subjects: Some(vec![subject("User", &format!("system:node:{node}"))]),
    }
}

/// Applies one object by server-side apply (re-running is harmless).
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<(), AdminError>
where
    K: kube::Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    let name = obj.meta().name.as_deref().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply("picolet").force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(super::api("applying RBAC"))?;
    Ok(())
}

/// Applies (server-side apply, so re-running is harmless) the RBAC objects for a node.
pub async fn apply_rbac(
    client: &kube::Client,
    node: &str,
    namespace: &str,
    config_map: &str,
) -> Result<(), AdminError> {
    let (role, binding) = rbac_objects(node, namespace, config_map);
    apply(&Api::namespaced(client.clone(), namespace), &role).await?;
    apply(&Api::namespaced(client.clone(), namespace), &binding).await?;
    apply(&Api::all(client.clone()), &renewal_rbac_object(node)).await
}

/// A fresh P-256 key (the same key and CSR code the firmware runs) and a CSR (PEM) for the
/// node's client identity.
pub fn node_client_csr(node: &str) -> Result<(NodeKey, String), PkiError> {
    let key = crate::node::certs::new_key();
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

/// The signer and usages of a node client certificate.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// See [`CLIENT_SIGNER`].
pub const CLIENT_USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// Creates a CertificateSigningRequest.
pub async fn submit_csr(
    csrs: &Api<CertificateSigningRequest>,
    csr_name: &str,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<(), AdminError> {
    let csr = CertificateSigningRequest {
        metadata: picolet_meta(csr_name, None),
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: signer.into(),
            usages: Some(usages.iter().map(|u| u.to_string()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    csrs.create(&PostParams::default(), &csr)
        .await
        .map_err(api("creating the CSR"))?;
    Ok(())
}

/// Reads a CSR until it carries a certificate (PEM); a denial or failure is an error.
pub async fn wait_for_certificate(
    csrs: &Api<CertificateSigningRequest>,
    csr_name: &str,
    timeout: Duration,
) -> Result<String, AdminError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let csr = csrs.get(csr_name).await.map_err(api("reading the CSR"))?;
        let status = csr.status.unwrap_or_default();
        let refused = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Denied" || c.type_ == "Failed");
        if let Some(c) = refused {
            return Err(AdminError::Refused {
                csr: csr_name.into(),
                condition: format!(
                    "{} ({}: {})",
                    c.type_,
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                ),
            });
        }
        if let Some(pem) = status
            .certificate
            .filter(|c| !c.0.is_empty())
            .and_then(|c| String::from_utf8(c.0).ok())
        {
            return Ok(pem);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(AdminError::NotIssued {
        csr: csr_name.into(),
    })
}

/// Submits a CSR as the admin, approves it and waits for the signed certificate (PEM).
pub async fn issue_certificate(
    client: &kube::Client,
    csr_name: &str,
    csr_pem: &str,
    signer: &str,
    usages: &[&str],
    timeout: Duration,
) -> Result<String, AdminError> {
    let csrs = Api::all(client.clone());
    submit_csr(&csrs, csr_name, csr_pem, signer, usages).await?;
    approve(&csrs, csr_name, "PicoletEnrol", "approved by picolet enrol").await?;
    wait_for_certificate(&csrs, csr_name, timeout).await
}

/// Adds the Approved condition, re-reading the CSR when a controller changed it meanwhile (409).
pub async fn approve(
    csrs: &Api<CertificateSigningRequest>,
    csr_name: &str,
    reason: &str,
    message: &str,
) -> Result<(), AdminError> {
    for _ in 0..5 {
        let mut csr = csrs.get(csr_name).await.map_err(api("reading the CSR"))?;
        let status = csr.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if conditions.iter().any(|c| c.type_ == "Approved") {
            return Ok(());
        }
        conditions.push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..CertificateSigningRequestCondition::default()
        });
        match csrs
            .replace_subresource("approval", csr_name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 409) => continue,
            Err(e) => return Err(api("approving the CSR")(e)),
        }
    }
    Err(AdminError::KeptChanging {
        csr: csr_name.into(),
    })
}

/// The API server's client CA, as it publishes it for extension servers (and kubelets).
pub async fn read_client_ca(client: &kube::Client) -> Option<String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("extension-apiserver-authentication")
        .await
        .ok()?;
    cm.data?.remove("client-ca-file")
}

/// Runs the whole enrolment and returns the credentials written.
pub async fn enrol(opts: &EnrolOptions) -> Result<Credentials, AdminError> {
    let (access, client) = super::connect(&opts.node.kubeconfig).await?;
    let (key, csr_pem) = node_client_csr(&opts.node.node_name).map_err(AdminError::Key)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let csr_name = format!("picolet-{}-{stamp}", opts.node.node_name);
    tracing::info!(csr = %csr_name, "submitting CSR for system:node:{}", opts.node.node_name);
    let cert_pem = issue_certificate(
        &client,
        &csr_name,
        &csr_pem,
        CLIENT_SIGNER,
        &CLIENT_USAGES,
        opts.timeout,
    )
    .await?;
    apply_rbac(
        &client,
        &opts.node.node_name,
        &opts.node.config_namespace,
        &opts.node.config_map,
    )
    .await?;
    let client_ca_pem = read_client_ca(&client).await;
    if client_ca_pem.is_none() {
        tracing::warn!(
            "cannot read kube-system/extension-apiserver-authentication; kubelet-port callers will be checked against the cluster CA"
        );
    }
    let creds = Credentials {
        identity: opts.node.identity(&access.server),
        ca_pem: access.ca_pem.clone(),
        cert_pem,
        key_pem: crate::node::certs::key_pem(&key).map_err(AdminError::Key)?,
        client_ca_pem,
    };
    creds.save(&opts.node.out_dir)?;
    Ok(creds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use serde_json::Value;

    /// An object as JSON, to compare with a manifest.
    pub(crate) fn json(obj: &impl Serialize) -> Value {
        serde_json::to_value(obj).unwrap()
    }

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
        let (role, binding) = rbac_objects("pico-node-1", "default", "pico-config");
        assert_eq!(
            deploy_docs("rbac-pico-node-1.yaml"),
            vec![json(&role), json(&binding)]
        );
    }
}
