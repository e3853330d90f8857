//! Bootstrap tokens, node side: standard Kubernetes TLS bootstrapping, so that a board joins
//! with a short-lived token instead of a certificate an administrator minted for it.
//!
//! `picolet run` on a directory written by `picolet token` (see [`crate::admin::token`]): the
//! node makes its own key, submits a CSR as `system:bootstrap:ID`, the controller-manager
//! approves and signs it, and the node writes `client.crt` / `client.key` and deletes the token
//! file. From then on it renews itself (`selfnodeclient`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand_core::{OsRng, RngCore};

use picolet_core::join::{Join, JoinError, JoinStep};
use picolet_core::pki::PkiError;
use picolet_core::time::Millis;

use crate::credentials::{Credentials, CredentialsError};
use crate::node::certs::{self as node_certs, InstallError};
use crate::tls::TlsError;

/// The file holding the token in a node's directory.
pub const TOKEN_FILE: &str = "bootstrap-token";

/// Why a node could not join with its bootstrap token.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Credentials(CredentialsError),
    #[error("{} is not a bootstrap token (ID.SECRET, 6 and 16 characters a-z0-9)", .0.display())]
    MalformedToken(PathBuf),
    #[error(transparent)]
    Tls(TlsError),
    #[error("key generation: {0}")]
    Key(PkiError),
    #[error("joining with the bootstrap token failed: {0}")]
    Join(JoinError),
    #[error("writing the credentials failed: {0}")]
    Write(InstallError),
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

/// If `dir` holds a bootstrap token and no client certificate, obtains one: returns whether
/// it did. The token file is deleted once the certificate is written.
pub async fn join_if_needed(dir: &Path) -> Result<bool, BootstrapError> {
    if dir.join("client.crt").exists() || !dir.join(TOKEN_FILE).exists() {
        return Ok(false);
    }
    let (identity, ca_pem, token) =
        Credentials::load_bootstrap(dir).map_err(BootstrapError::Credentials)?;
    if !valid_token(&token) {
        return Err(BootstrapError::MalformedToken(dir.join(TOKEN_FILE)));
    }
    // The same sans-IO join the firmware runs (picolet_core::join), over a connection that
    // verifies the API server and presents no client certificate.
    let endpoint =
        crate::node::api::Endpoint::new(&identity.server, &identity.tls_server_name, &ca_pem, None)
            .map_err(BootstrapError::Tls)?;
    let mut conn = crate::node::api::Connection::new(
        std::sync::Arc::new(endpoint),
        Default::default(),
        16 * 1024,
    );
    let mut join = Join::new(&identity.node_name, &identity.tls_server_name, &token);
    let (mut request, mut body) = (vec![0u8; 16 * 1024], vec![0u8; 64 * 1024]);
    let start = std::time::Instant::now();
    let now = || Millis::from_ms(start.elapsed().as_millis() as u64);
    let mut key = node_certs::new_key();
    let failed = BootstrapError::Join;
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
                .map_err(BootstrapError::Key)?;
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
        .map_err(BootstrapError::Key)?;
    let cert_pem = String::from_utf8_lossy(&pem[..n]).into_owned();
    let key_pem = node_certs::key_pem(&key).map_err(BootstrapError::Key)?;
    let write = |name: &str, text: &str, secret: bool| {
        node_certs::write_atomic(&dir.join(name), text, secret).map_err(BootstrapError::Write)
    };
    write("client.key", &key_pem, true)?;
    write("client.crt", &cert_pem, false)?;
    let _ = std::fs::remove_file(dir.join(TOKEN_FILE));
    Ok(true)
}
