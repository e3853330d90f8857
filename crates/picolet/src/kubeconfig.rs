//! Reads the admin kubeconfig `picolet enrol` uses: the current context's server, CA and client
//! certificate (inline `-data` or file paths relative to the kubeconfig).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// Why a kubeconfig could not be used.
#[derive(Debug)]
pub enum KubeconfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        message: String,
    },
    /// A context, cluster or user it refers to is missing, or a field is absent.
    Incomplete(String),
}

impl fmt::Display for KubeconfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read kubeconfig {}: {source}", path.display())
            }
            Self::Parse { path, message } => {
                write!(f, "kubeconfig {} is malformed: {message}", path.display())
            }
            Self::Incomplete(m) => write!(f, "kubeconfig: {m}"),
        }
    }
}

impl std::error::Error for KubeconfigError {}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    clusters: Vec<Named<Cluster>>,
    users: Vec<Named<User>>,
    contexts: Vec<Named<Context>>,
    current_context: String,
}

/// What enrolment needs from the admin kubeconfig.
#[derive(Clone, Debug)]
pub struct AdminAccess {
    pub server: String,
    /// The server name from the kubeconfig, when it sets one.
    pub tls_server_name: Option<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn material(
    base: &Path,
    data: &Option<String>,
    file: &Option<String>,
    what: &str,
) -> Result<String, KubeconfigError> {
    if let Some(d) = data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map_err(|e| KubeconfigError::Incomplete(format!("{what}-data is not base64: {e}")))?;
        return String::from_utf8(bytes)
            .map_err(|_| KubeconfigError::Incomplete(format!("{what}-data is not PEM")));
    }
    let Some(f) = file else {
        return Err(KubeconfigError::Incomplete(format!(
            "no {what} (only client-certificate users are supported)"
        )));
    };
    let path = base.join(f);
    std::fs::read_to_string(&path).map_err(|source| KubeconfigError::Read { path, source })
}

/// Loads the current context of the kubeconfig at `path`.
pub fn load(path: &Path) -> Result<AdminAccess, KubeconfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
        path: path.into(),
        source,
    })?;
    let file: File = serde_yaml_ng::from_str(&text).map_err(|e| KubeconfigError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    let ctx = file
        .contexts
        .iter()
        .find(|c| c.name == file.current_context)
        .ok_or_else(|| {
            KubeconfigError::Incomplete(format!("context {:?} not found", file.current_context))
        })?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == ctx.item.cluster)
        .ok_or_else(|| {
            KubeconfigError::Incomplete(format!("cluster {:?} not found", ctx.item.cluster))
        })?;
    let user = file
        .users
        .iter()
        .find(|u| u.name == ctx.item.user)
        .ok_or_else(|| {
            KubeconfigError::Incomplete(format!("user {:?} not found", ctx.item.user))
        })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let c = &cluster.item;
    let u = &user.item;
    Ok(AdminAccess {
        server: c.server.clone(),
        tls_server_name: c.tls_server_name.clone(),
        ca_pem: material(
            base,
            &c.certificate_authority_data,
            &c.certificate_authority,
            "certificate-authority",
        )?,
        cert_pem: material(
            base,
            &u.client_certificate_data,
            &u.client_certificate,
            "client-certificate",
        )?,
        key_pem: material(base, &u.client_key_data, &u.client_key, "client-key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_inline_and_file_material_of_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA-PEM").unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cfg = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c1\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: ca.crt\n\
             users:\n- name: u1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: a\n  context: {{cluster: nope, user: u1}}\n- name: b\n  context:\n    cluster: c1\n    user: u1\n",
            b64("CERT-PEM"),
            b64("KEY-PEM")
        );
        let path = dir.path().join("config");
        std::fs::write(&path, cfg).unwrap();
        let a = load(&path).unwrap();
        assert_eq!(a.server, "https://10.0.0.1:6443");
        assert_eq!(
            (a.ca_pem.as_str(), a.cert_pem.as_str(), a.key_pem.as_str()),
            ("CA-PEM", "CERT-PEM", "KEY-PEM")
        );
        std::fs::write(
            &path,
            "current-context: x\nclusters: []\nusers: []\ncontexts: []\n",
        )
        .unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("context \"x\" not found")
        );
    }
}
