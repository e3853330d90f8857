//! `picolet token`: standard Kubernetes TLS bootstrapping, administrator side, so that a board
//! joins with a short-lived token instead of a certificate an administrator minted for it.
//!
//! Creates a bootstrap token (a Secret `kube-system/bootstrap-token-ID`, expiring, extra group
//! `system:bootstrappers:picolet`), the bindings that let that group create CSRs and have
//! node-client CSRs auto-approved (`nodeclient`), the node's ConfigMap RBAC, and a directory
//! for the node: `node.toml`, `ca.crt`, `client-ca.crt` and `bootstrap-token` (mode 0600). No
//! private key exists yet: the node makes it when it joins ([`crate::bootstrap`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use picolet_core::http::{BodyType, Method};
use picolet_core::time::Rfc3339;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};

use super::enrol::{self, AdminClient, EnrolError};
use super::kubeconfig;
use crate::credentials::{Credentials, NodeIdentity};

/// The extra group every picolet bootstrap token carries; only it gets auto-approval.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:picolet";

/// What `picolet token` needs.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// The admin kubeconfig files, merged in order (see [`kubeconfig::locate`]).
    pub kubeconfig: Vec<PathBuf>,
    pub node_name: String,
    pub out_dir: PathBuf,
    pub server: Option<String>,
    pub tls_server_name: String,
    pub config_namespace: String,
    pub config_map: String,
    /// How long the token lasts (the token cleaner deletes it afterwards).
    pub ttl: Duration,
}

/// `[a-z0-9]{n}` from the OS random source.
fn random_token_part(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < n {
        let mut b = [0u8; 1];
        OsRng.fill_bytes(&mut b);
        // 252 = 7 × 36: reject the rest so every character is equally likely.
        if b[0] < 252 {
            out.push(char::from(ALPHABET[usize::from(b[0] % 36)]));
        }
    }
    out
}

/// The cluster-wide bindings for picolet's bootstrap group: create CSRs
/// (`system:node-bootstrapper`) and have node-client CSRs auto-approved (`nodeclient`).
pub fn bootstrap_rbac_objects() -> [Value; 2] {
    let binding = |name: &str, role: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "picolet"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": BOOTSTRAP_GROUP}]
        })
    };
    [
        binding(
            "picolet-bootstrappers-create-csr",
            "system:node-bootstrapper",
        ),
        binding(
            "picolet-bootstrappers-node-client",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        ),
    ]
}

/// Creates a token for one node and writes that node's directory; returns the token.
pub async fn create_token(opts: &TokenOptions) -> Result<String, EnrolError> {
    let access = kubeconfig::load_all(&opts.kubeconfig).map_err(EnrolError::Kubeconfig)?;
    let mut admin = AdminClient::new(&access)?;
    let (id, secret) = (random_token_part(6), random_token_part(16));
    let expires_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + opts.ttl.as_millis() as u64;
    let mut expiration = String::new();
    let _ = write!(expiration, "{}", Rfc3339(expires_ms));
    let secret_obj = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": "picolet"}},
        "stringData": {
            "description": format!("picolet: joins node {}", opts.node_name),
            "token-id": id, "token-secret": secret, "expiration": expiration,
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": BOOTSTRAP_GROUP,
        }
    });
    let (status, body) = admin
        .request(
            Method::Post,
            "/api/v1/namespaces/kube-system/secrets",
            Some((BodyType::Json, &secret_obj)),
        )
        .await?;
    if status != 201 {
        return Err(EnrolError::Api {
            what: "creating the bootstrap token",
            status,
            body: body.to_string(),
        });
    }
    for obj in bootstrap_rbac_objects() {
        enrol::apply(&mut admin, &obj).await?;
    }
    enrol::apply_rbac(
        &mut admin,
        &opts.node_name,
        &opts.config_namespace,
        &opts.config_map,
    )
    .await?;
    let client_ca_pem = enrol::read_client_ca(&mut admin).await;
    let identity = NodeIdentity {
        node_name: opts.node_name.clone(),
        server: opts.server.clone().unwrap_or_else(|| access.server.clone()),
        tls_server_name: opts.tls_server_name.clone(),
    };
    let token = format!("{id}.{secret}");
    Credentials::save_bootstrap(
        &opts.out_dir,
        &identity,
        &access.ca_pem,
        client_ca_pem.as_deref(),
        &token,
    )
    .map_err(EnrolError::Credentials)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::valid_token;

    #[test]
    fn tokens_have_the_bootstrap_form() {
        for _ in 0..50 {
            let t = format!("{}.{}", random_token_part(6), random_token_part(16));
            assert!(valid_token(&t), "{t}");
        }
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcdef\r\n",
            "abc-ef.0123456789abcdef",
        ] {
            assert!(!valid_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn deploy_manifest_matches_the_bindings_applied() {
        let mut expected = vec![enrol::renewal_rbac_object("pico-node-1")];
        expected.extend(bootstrap_rbac_objects());
        assert_eq!(
            enrol::tests::deploy_docs("csr-auto-approval.yaml"),
            expected
        );
    }
}
