//! The admin commands: what an administrator runs, with an admin kubeconfig, to give boards
//! their identities and settings. None of this runs on a node.
//!
//! - [`enrol`]: `picolet enrol`, a node identity through the CSR API (key, CSR, approval, RBAC);
//! - [`token`]: `picolet token`, a short-lived bootstrap token instead (the node makes its key);
//! - [`approve`]: `picolet approve`, checked approval of nodes' kubelet-serving CSRs;
//! - [`board_config`]: `picolet board-config`, one board's settings as a UF2 ([`uf2`]);
//! - [`kubeconfig`]: finds the admin kubeconfig as kubectl does.
//!
//! They talk to the API server with kube-rs and typed `k8s-openapi` objects (only kinds and
//! versions Kubernetes 1.20 serves). What they write for a node is [`crate::credentials`],
//! which the node side reads.

pub mod approve;
pub mod board_config;
pub mod enrol;
pub mod kubeconfig;
pub mod token;
pub mod uf2;

use std::path::PathBuf;

use picolet_core::pki::PkiError;

use crate::credentials::CredentialsError;
use kubeconfig::{AdminAccess, KubeconfigError};

/// The node an admin command writes a credentials directory for (`enrol`, `token`).
#[derive(Clone, Debug)]
pub struct NodeTarget {
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
}

impl NodeTarget {
    /// The identity written into the node's directory; `kubeconfig_server` when no server was
    /// given.
    pub fn identity(&self, kubeconfig_server: &str) -> crate::credentials::NodeIdentity {
        crate::credentials::NodeIdentity {
            node_name: self.node_name.clone(),
            server: self
                .server
                .clone()
                .unwrap_or_else(|| kubeconfig_server.into()),
            tls_server_name: self.tls_server_name.clone(),
        }
    }
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    /// kube-rs could not make a client from the kubeconfig's settings.
    #[error("cannot make an API client from the kubeconfig: {0}")]
    Client(#[source] kube::Error),
    /// A request failed: refused by the API server, or not answered.
    #[error("{what} failed: {}", describe(source))]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("key generation: {0}")]
    Key(PkiError),
    /// The CSR carries a Denied or Failed condition.
    #[error("the CSR {csr} was refused: {condition}")]
    Refused { csr: String, condition: String },
    /// The certificate was not issued in time (is the controller-manager's signer running?).
    /// Approving kept failing with a conflict: something else kept changing the CSR.
    #[error("approving the CSR {csr} failed: it changed under each of 5 attempts (HTTP 409)")]
    KeptChanging { csr: String },
    #[error(
        "CSR {csr} was approved but no certificate was issued in time; is kube-controller-manager running with --cluster-signing-cert-file?"
    )]
    NotIssued { csr: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// A request error in a line: the API server's status and message, else kube-rs's error and
/// its causes (so that "connection refused" is said).
fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return format!("HTTP {}: {}", s.code, s.message.trim());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
}

/// Whether the API server answered `code`.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Shorthand for mapping a request error.
fn api(what: &'static str) -> impl FnOnce(kube::Error) -> AdminError {
    move |source| AdminError::Api { what, source }
}

/// Reads the admin kubeconfig files and makes a client for their current context.
pub async fn connect(paths: &[PathBuf]) -> Result<(AdminAccess, kube::Client), AdminError> {
    let access = kubeconfig::load_all(paths).await?;
    let client = kube::Client::try_from(access.config.clone()).map_err(AdminError::Client)?;
    Ok((access, client))
}
