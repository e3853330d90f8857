//! `picolet token`: standard Kubernetes TLS bootstrapping, administrator side, so that a board
//! joins with a short-lived token instead of a certificate an administrator minted for it.
//!
//! Creates a bootstrap token (a Secret `kube-system/bootstrap-token-ID`, expiring, extra group
//! `system:bootstrappers:picolet`), the bindings that let that group create CSRs and have
//! node-client CSRs auto-approved (`nodeclient`), the node's ConfigMap RBAC, and a directory
//! for the node: `node.toml`, `ca.crt`, `client-ca.crt` and `bootstrap-token` (mode 0600). No
//! private key exists yet: the node makes it when it joins ([`crate::node::join`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, PostParams};
use picolet_core::time::{Rfc3339, UnixMillis};
use rand_core::{OsRng, RngCore};

use super::enrol::{self, picolet_meta, role_ref, subject};
use super::{AdminError, api};
use crate::credentials::Credentials;

/// The extra group every picolet bootstrap token carries; only it gets auto-approval.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:picolet";

/// What `picolet token` needs.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    /// The node and where its directory goes.
    pub node: super::NodeTarget,
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
pub fn bootstrap_rbac_objects() -> [ClusterRoleBinding; 2] {
    let binding = |name: &str, role: &str| ClusterRoleBinding {
        metadata: picolet_meta(name, None),
        role_ref: role_ref("ClusterRole", role),
        subjects: Some(vec![subject("Group", BOOTSTRAP_GROUP)]),
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

/// The Secret that is the bootstrap token `id.secret`, expiring at `expiration` (RFC 3339).
pub fn token_secret(node: &str, id: &str, secret: &str, expiration: &str) -> Secret {
    let data = [
        ("description", format!("picolet: joins node {node}")),
        ("token-id", id.into()),
        ("token-secret", secret.into()),
        ("expiration", expiration.into()),
        ("usage-bootstrap-authentication", "true".into()),
        ("auth-extra-groups", BOOTSTRAP_GROUP.into()),
    ];
    Secret {
        metadata: picolet_meta(&format!("bootstrap-token-{id}"), Some("kube-system")),
        type_: Some("bootstrap.kubernetes.io/token".into()),
        string_data: Some(BTreeMap::from(data.map(|(k, v)| (k.to_string(), v)))),
        ..Secret::default()
    }
}

/// Creates a token for one node and writes that node's directory; returns the token.
pub async fn create_token(opts: &TokenOptions) -> Result<String, AdminError> {
    let (access, client) = super::connect(&opts.node.kubeconfig).await?;
    let (id, secret) = (random_token_part(6), random_token_part(16));
    let expires_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        + opts.ttl.as_millis() as u64;
    let mut expiration = String::new();
    let _ = write!(expiration, "{}", Rfc3339(UnixMillis::from_ms(expires_ms)));
    Api::<Secret>::namespaced(client.clone(), "kube-system")
        .create(
            &PostParams::default(),
            &token_secret(&opts.node.node_name, &id, &secret, &expiration),
        )
        .await
        .map_err(api("creating the bootstrap token"))?;
    let bindings = Api::all(client.clone());
    for obj in bootstrap_rbac_objects() {
        enrol::apply(&bindings, &obj).await?;
    }
    enrol::apply_rbac(
        &client,
        &opts.node.node_name,
        &opts.node.config_namespace,
        &opts.node.config_map,
    )
    .await?;
    let client_ca_pem = enrol::read_client_ca(&client).await;
    let identity = opts.node.identity(&access.server);
    let token = format!("{id}.{secret}");
    Credentials::save_bootstrap(
        &opts.node.out_dir,
        &identity,
        &access.ca_pem,
        client_ca_pem.as_deref(),
        &token,
    )?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::join::valid_token;
    use enrol::tests::json;

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
        let mut expected = vec![json(&enrol::renewal_rbac_object("pico-node-1"))];
        expected.extend(bootstrap_rbac_objects().iter().map(json));
        assert_eq!(
            enrol::tests::deploy_docs("csr-auto-approval.yaml"),
            expected
        );
    }

    #[test]
    fn the_token_secret_is_what_the_api_server_authenticates() {
        let secret = token_secret(
            "pico-node-2",
            "abcdef",
            "0123456789abcdef",
            "2030-01-01T00:00:00Z",
        );
        assert_eq!(
            json(&secret),
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system",
                             "labels": {"app.kubernetes.io/managed-by": "picolet"}},
                "stringData": {
                    "description": "picolet: joins node pico-node-2",
                    "token-id": "abcdef", "token-secret": "0123456789abcdef",
                    "expiration": "2030-01-01T00:00:00Z",
                    "usage-bootstrap-authentication": "true",
                    "auth-extra-groups": BOOTSTRAP_GROUP,
                }
            })
        );
    }
}
