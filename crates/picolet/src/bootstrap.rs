//! Bootstrap tokens: standard Kubernetes TLS bootstrapping, so that a board joins with a
//! short-lived token instead of a certificate an administrator minted for it.
//!
//! Administrator side, `picolet token`: creates a bootstrap token (a Secret
//! `kube-system/bootstrap-token-ID`, expiring, extra group `system:bootstrappers:picolet`), the
//! bindings that let that group create CSRs and have node-client CSRs auto-approved
//! (`nodeclient`), the node's ConfigMap RBAC, and a directory for the node: `node.toml`,
//! `ca.crt`, `client-ca.crt` and `bootstrap-token` (mode 0600). No private key exists yet.
//!
//! Node side, `picolet run` on such a directory: the node makes its own key, submits a CSR as
//! `system:bootstrap:ID`, the controller-manager approves and signs it, and the node writes
//! `client.crt` / `client.key` and deletes the token file. From then on it renews itself
//! (`selfnodeclient`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use picolet_core::http::{BodyType, Method};
use picolet_core::time::{Millis, Rfc3339, UnixMillis};
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};

use picolet_core::join::{Join, JoinError, JoinStep};

use crate::credentials::{Credentials, NodeIdentity};
use crate::enrol::{self, AdminClient, EnrolError};
use crate::kubeconfig;
use crate::node_certs;

/// The extra group every picolet bootstrap token carries; only it gets auto-approval.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:picolet";
/// The file holding the token in a node's directory.
pub const TOKEN_FILE: &str = "bootstrap-token";

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

/// Whether `token` has the bootstrap token form `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn valid_token(token: &str) -> bool {
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(token.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
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
    let _ = write!(expiration, "{}", Rfc3339(UnixMillis::from_ms(expires_ms)));
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

/// If `dir` holds a bootstrap token and no client certificate, obtains one: returns whether
/// it did. The token file is deleted once the certificate is written.
pub async fn join_if_needed(dir: &Path) -> Result<bool, EnrolError> {
    if dir.join("client.crt").exists() || !dir.join(TOKEN_FILE).exists() {
        return Ok(false);
    }
    let (identity, ca_pem, token) =
        Credentials::load_bootstrap(dir).map_err(EnrolError::Credentials)?;
    if !valid_token(&token) {
        return Err(EnrolError::Api {
            what: "reading the bootstrap token",
            status: 0,
            body: format!(
                "{} is not a bootstrap token (ID.SECRET, 6 and 16 characters a-z0-9)",
                dir.join(TOKEN_FILE).display()
            ),
        });
    }
    // The same sans-IO join the firmware runs (picolet_core::join), over a connection that
    // verifies the API server and presents no client certificate.
    let endpoint =
        crate::api::Endpoint::new(&identity.server, &identity.tls_server_name, &ca_pem, None)
            .map_err(EnrolError::Tls)?;
    let mut conn =
        crate::api::Connection::new(std::sync::Arc::new(endpoint), Default::default(), 16 * 1024);
    let mut join = Join::new(&identity.node_name, &identity.tls_server_name, &token);
    let (mut request, mut body) = (vec![0u8; 16 * 1024], vec![0u8; 64 * 1024]);
    let start = std::time::Instant::now();
    let now = || Millis::from_ms(start.elapsed().as_millis() as u64);
    let mut key = node_certs::new_key();
    let failed = |why: JoinError| EnrolError::Api {
        what: "joining with the bootstrap token",
        status: 0,
        body: why.to_string(),
    };
    let cert_der = loop {
        if let Some(e @ (JoinError::TokenRefused | JoinError::Forbidden)) = join.last_error() {
            return Err(failed(e));
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(failed(join.last_error().unwrap_or(JoinError::Transport)));
        }
        match join.poll(now(), &mut request).map_err(failed)? {
            JoinStep::MakeKey => {
                key = node_certs::new_key();
                join.submit_csr(
                    now(),
                    OsRng.next_u32(),
                    &key.public_key(),
                    |subject, out| key.csr(subject, out),
                )
                .map_err(EnrolError::Key)?;
                tracing::info!(
                    "joining with a bootstrap token as system:node:{}",
                    identity.node_name
                );
            }
            JoinStep::Send { len } => match conn.round_trip(&request[..len], &mut body).await {
                Ok(resp) => {
                    let len = resp.body_len.min(body.len());
                    join.on_response(now(), &resp.head, &body[..len]);
                }
                Err(e) => {
                    tracing::warn!("bootstrap: {e}");
                    join.on_transport_error(now());
                }
            },
            JoinStep::SleepUntil(at) => {
                let wait = at.saturating_sub(now()).as_ms().min(1_000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            JoinStep::Joined(der) => break der.to_vec(),
        }
    };
    let mut pem = vec![0u8; 4096];
    let n = picolet_core::pki::pem_encode(picolet_core::pki::CERTIFICATE, &cert_der, &mut pem)
        .map_err(EnrolError::Key)?;
    let cert_pem = String::from_utf8_lossy(&pem[..n]).into_owned();
    let key_pem = node_certs::key_pem(&key).map_err(EnrolError::Key)?;
    let write = |name: &str, text: &str, secret: bool| {
        node_certs::write_atomic(&dir.join(name), text, secret).map_err(|e| EnrolError::Api {
            what: "writing the credentials",
            status: 0,
            body: e.to_string(),
        })
    };
    write("client.key", &key_pem, true)?;
    write("client.crt", &cert_pem, false)?;
    let _ = std::fs::remove_file(dir.join(TOKEN_FILE));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            crate::enrol::tests::deploy_docs("csr-auto-approval.yaml"),
            expected
        );
    }
}
