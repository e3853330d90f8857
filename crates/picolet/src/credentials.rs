//! A node's credentials directory, written by `picolet enrol` and read by `picolet run` (and by
//! the firmware build): `node.toml` plus PEM files.
//!
//! ```text
//! node.toml    node_name, server (https://IP:PORT), tls_server_name (a DNS SAN of the server)
//! ca.crt       the cluster CA that signs the API server's certificate
//! client.crt   the node's client certificate (CN=system:node:NAME, O=system:nodes)
//! client.key   its P-256 private key (mode 0600)
//! client-ca.crt  the CA that signs client certificates (the API server's `--client-ca-file`):
//!              kubelet-port callers are verified against it; `ca.crt` when absent
//! serving.crt, serving.key  the kubelet port's certificate, once issued (see `node_certs`)
//! kubeconfig   the same, for kubectl
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why credentials could not be read or written.
#[derive(Debug)]
pub enum CredentialsError {
    /// A file is missing or unreadable.
    Read { path: PathBuf, source: io::Error },
    /// `node.toml` is malformed.
    Parse { path: PathBuf, message: String },
    /// A file could not be written.
    Write { path: PathBuf, source: io::Error },
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(
                    f,
                    "cannot read {}: {source} (run `picolet enrol` to create credentials)",
                    path.display()
                )
            }
            Self::Parse { path, message } => {
                write!(f, "{} is malformed: {message}", path.display())
            }
            Self::Write { path, source } => write!(f, "cannot write {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// The non-secret part, `node.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The Node's name; the certificate's CN is `system:node:` + this.
    pub node_name: String,
    /// The API server, `https://HOST:PORT`.
    pub server: String,
    /// The name checked against the API server's certificate (the Pico cannot check IP SANs).
    pub tls_server_name: String,
}

/// Everything a node needs to talk to its API server.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub identity: NodeIdentity,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The client CA, when enrolment could read it.
    pub client_ca_pem: Option<String>,
}

fn read(path: &Path) -> Result<String, CredentialsError> {
    fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CredentialsError> {
    let err = |source| CredentialsError::Write {
        path: path.into(),
        source,
    };
    fs::write(path, contents).map_err(err)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

impl Credentials {
    /// The CA kubelet-port client certificates are checked against.
    pub fn client_ca_pem(&self) -> &str {
        self.client_ca_pem.as_deref().unwrap_or(&self.ca_pem)
    }

    /// Reads a credentials directory.
    pub fn load(dir: &Path) -> Result<Self, CredentialsError> {
        let path = dir.join("node.toml");
        let identity = toml::from_str(&read(&path)?).map_err(|e| CredentialsError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            identity,
            ca_pem: read(&dir.join("ca.crt"))?,
            cert_pem: read(&dir.join("client.crt"))?,
            key_pem: read(&dir.join("client.key"))?,
            client_ca_pem: fs::read_to_string(dir.join("client-ca.crt")).ok(),
        })
    }

    /// Writes a directory for a node that will join with a bootstrap token: everything but
    /// the key and certificate, which the node makes and obtains itself.
    pub fn save_bootstrap(
        dir: &Path,
        identity: &NodeIdentity,
        ca_pem: &str,
        client_ca_pem: Option<&str>,
        token: &str,
    ) -> Result<(), CredentialsError> {
        fs::create_dir_all(dir).map_err(|source| CredentialsError::Write {
            path: dir.into(),
            source,
        })?;
        let toml = toml::to_string(identity).expect("NodeIdentity serializes");
        write(&dir.join("node.toml"), &toml, false)?;
        write(&dir.join("ca.crt"), ca_pem, false)?;
        if let Some(ca) = client_ca_pem {
            write(&dir.join("client-ca.crt"), ca, false)?;
        }
        write(&dir.join(crate::bootstrap::TOKEN_FILE), token, true)
    }

    /// Reads what [`Credentials::save_bootstrap`] wrote: identity, cluster CA, token.
    pub fn load_bootstrap(dir: &Path) -> Result<(NodeIdentity, String, String), CredentialsError> {
        let path = dir.join("node.toml");
        let identity = toml::from_str(&read(&path)?).map_err(|e| CredentialsError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let ca = read(&dir.join("ca.crt"))?;
        let token = read(&dir.join(crate::bootstrap::TOKEN_FILE))?;
        Ok((identity, ca, token.trim().to_string()))
    }

    /// Writes a credentials directory (the key readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<(), CredentialsError> {
        fs::create_dir_all(dir).map_err(|source| CredentialsError::Write {
            path: dir.into(),
            source,
        })?;
        let toml = toml::to_string(&self.identity).expect("NodeIdentity serializes");
        write(&dir.join("node.toml"), &toml, false)?;
        write(&dir.join("ca.crt"), &self.ca_pem, false)?;
        write(&dir.join("client.crt"), &self.cert_pem, false)?;
        write(&dir.join("client.key"), &self.key_pem, true)?;
        if let Some(ca) = &self.client_ca_pem {
            write(&dir.join("client-ca.crt"), ca, false)?;
        }
        write(&dir.join("kubeconfig"), &self.kubeconfig(dir), true)
    }

    fn kubeconfig(&self, dir: &Path) -> String {
        let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: picolet\n  cluster:\n    server: {server}\n    \
             certificate-authority: {d}/ca.crt\n    tls-server-name: {sni}\nusers:\n- name: {user}\n  user:\n    \
             client-certificate: {d}/client.crt\n    client-key: {d}/client.key\ncontexts:\n- name: picolet\n  \
             context:\n    cluster: picolet\n    user: {user}\ncurrent-context: picolet\n",
            server = self.identity.server,
            sni = self.identity.tls_server_name,
            user = format_args!("system:node:{}", self.identity.node_name),
            d = abs.display(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_protects_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials {
            identity: NodeIdentity {
                node_name: "pico-node-1".into(),
                server: "https://127.0.0.1:6443".into(),
                tls_server_name: "kubernetes".into(),
            },
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
            client_ca_pem: Some("CLIENT CA".into()),
        };
        c.save(dir.path()).unwrap();
        let back = Credentials::load(dir.path()).unwrap();
        assert_eq!(back.identity, c.identity);
        assert_eq!((back.ca_pem.as_str(), back.key_pem.as_str()), ("CA", "KEY"));
        assert_eq!(back.client_ca_pem(), "CLIENT CA");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = Credentials::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("picolet enrol"), "{err}");
    }
}
