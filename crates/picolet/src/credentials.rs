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
//!
//! Without `--credentials`/`--out`, a node's directory is [`default_dir`]: under the user's
//! configuration directory, not the current one, so every command finds what `enrol` wrote.

use std::ffi::OsStr;
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
    /// No path was given and there is no configuration directory to default to.
    NoDefaultDir,
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
            Self::NoDefaultDir => write!(
                f,
                "no default credentials directory: neither XDG_CONFIG_HOME nor HOME is set; \
                 give the directory (--credentials, or --out for enrol and token)"
            ),
        }
    }
}

impl std::error::Error for CredentialsError {}

/// Where node directories used to go by default, relative to the current directory; still read
/// (with a warning) when the new default is absent, so existing setups keep working.
pub const LEGACY_BASE: &str = "credentials";

/// A node's directory when none is given: `$XDG_CONFIG_HOME/picolet/credentials/NAME` (an
/// absolute XDG_CONFIG_HOME only, as the XDG spec says), else
/// `$HOME/.config/picolet/credentials/NAME`. The same for `enrol`, `token`, `run` and
/// `board-config`, and independent of the current directory. Takes the environment as
/// arguments so the rule can be tested.
pub fn default_dir(
    node_name: &str,
    xdg_config_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Result<PathBuf, CredentialsError> {
    let config = match xdg_config_home.map(Path::new) {
        Some(x) if x.is_absolute() => x.to_path_buf(),
        _ => match home.map(Path::new) {
            Some(h) if !h.as_os_str().is_empty() => h.join(".config"),
            _ => return Err(CredentialsError::NoDefaultDir),
        },
    };
    Ok(config.join("picolet").join("credentials").join(node_name))
}

/// [`default_dir`] with this process's environment.
pub fn default_dir_from_env(node_name: &str) -> Result<PathBuf, CredentialsError> {
    default_dir(
        node_name,
        std::env::var_os("XDG_CONFIG_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// The directory a reading command (`run`, `board-config`) uses: the one given, as given; else
/// [`default_dir`], or the old `./credentials/NAME` when only that one exists. The flag says
/// whether the old one was picked (the caller warns).
pub fn dir_to_read(
    given: Option<&Path>,
    node_name: &str,
    default: Result<PathBuf, CredentialsError>,
    exists: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, bool), CredentialsError> {
    if let Some(g) = given {
        return Ok((g.to_path_buf(), false));
    }
    let legacy = Path::new(LEGACY_BASE).join(node_name);
    match default {
        Ok(d) if exists(&d) || !exists(&legacy) => Ok((d, false)),
        Ok(_) => Ok((legacy, true)),
        Err(_) if exists(&legacy) => Ok((legacy, true)),
        Err(e) => Err(e),
    }
}

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
        write(&dir.join(crate::node::join::TOKEN_FILE), token, true)
    }

    /// Reads what [`Credentials::save_bootstrap`] wrote: identity, cluster CA, token.
    pub fn load_bootstrap(dir: &Path) -> Result<(NodeIdentity, String, String), CredentialsError> {
        let path = dir.join("node.toml");
        let identity = toml::from_str(&read(&path)?).map_err(|e| CredentialsError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let ca = read(&dir.join("ca.crt"))?;
        let token = read(&dir.join(crate::node::join::TOKEN_FILE))?;
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

    #[test]
    fn the_default_directory_does_not_depend_on_the_current_one() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_dir("n1", os("/xdg"), os("/home/ada")).unwrap(),
            PathBuf::from("/xdg/picolet/credentials/n1")
        );
        // A relative XDG_CONFIG_HOME is ignored (XDG spec), as is an unset one.
        for xdg in [os("rel"), None] {
            assert_eq!(
                default_dir("n1", xdg, os("/home/ada")).unwrap(),
                PathBuf::from("/home/ada/.config/picolet/credentials/n1")
            );
        }
        let none = default_dir("n1", None, None).unwrap_err().to_string();
        assert!(none.contains("--credentials"), "{none}");

        let d = || default_dir("n1", None, os("/home/ada"));
        let given = Path::new("somewhere");
        assert_eq!(
            dir_to_read(Some(given), "n1", d(), |_| false).unwrap(),
            (PathBuf::from("somewhere"), false)
        );
        let new = PathBuf::from("/home/ada/.config/picolet/credentials/n1");
        let legacy = PathBuf::from("credentials/n1");
        assert_eq!(
            dir_to_read(None, "n1", d(), |_| true).unwrap(),
            (new.clone(), false)
        );
        assert_eq!(
            dir_to_read(None, "n1", d(), |_| false).unwrap(),
            (new, false)
        );
        let only_legacy = |p: &Path| p == Path::new("credentials/n1");
        assert_eq!(
            dir_to_read(None, "n1", d(), only_legacy).unwrap(),
            (legacy.clone(), true)
        );
        assert_eq!(
            dir_to_read(None, "n1", Err(CredentialsError::NoDefaultDir), only_legacy).unwrap(),
            (legacy, true)
        );
        assert!(dir_to_read(None, "n1", Err(CredentialsError::NoDefaultDir), |_| false).is_err());
    }
}
