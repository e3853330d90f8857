//! The admin kubeconfig the admin commands use, found as kubectl finds it: `--kubeconfig`, else
//! `$KUBECONFIG` (a colon-separated list, merged; missing files skipped), else
//! `~/.kube/config`.
//!
//! Reading, merging (the first file to define a name wins) and authentication are kube-rs's:
//! client certificates, bearer tokens and token files, exec plugins, as users' kubeconfigs have
//! them. This module adds the search rules, errors that say where it looked, and the one thing
//! a node needs from it: the cluster's CA.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why a kubeconfig could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {} is malformed: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A context, cluster or user it refers to is missing, or a field is absent.
    #[error("kubeconfig: {0}")]
    Incomplete(String),
    /// The current context's settings do not make a client (a CA that does not parse, a
    /// server that is not a URL, an exec plugin that fails, …).
    #[error("kubeconfig: {0}")]
    Unusable(#[source] kube::config::KubeconfigError),
    /// No `--kubeconfig`, and none of the places kubectl looks has a file.
    #[error("{}", not_found(looked))]
    NotFound {
        /// Where it looked, in order (empty when neither KUBECONFIG nor HOME is set).
        looked: Vec<PathBuf>,
    },
}

fn not_found(looked: &[PathBuf]) -> String {
    if looked.is_empty() {
        return "no admin kubeconfig: give --kubeconfig FILE, or set KUBECONFIG \
                (HOME is not set either, so there is no ~/.kube/config)"
            .into();
    }
    let list: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no admin kubeconfig: give --kubeconfig FILE, or set KUBECONFIG; looked for {} \
         (none exists)",
        list.join(", ")
    )
}

/// Which kubeconfig files to read, in kubectl's order: the explicit one; else every file of
/// `kubeconfig_env` (the `KUBECONFIG` value, colon-separated; missing files are skipped, as
/// kubectl skips them); else `HOME/.kube/config`. Takes the environment as arguments so the
/// rules can be tested.
pub fn locate(
    explicit: Option<&Path>,
    kubeconfig_env: Option<&OsStr>,
    home: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, KubeconfigError> {
    if let Some(p) = explicit {
        // Read as given: a missing file is reported by `load_all` with its path.
        return Ok(vec![p.to_path_buf()]);
    }
    let looked: Vec<PathBuf> = match kubeconfig_env.filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => home
            .filter(|h| !h.as_os_str().is_empty())
            .map(|h| h.join(".kube").join("config"))
            .into_iter()
            .collect(),
    };
    let found: Vec<PathBuf> = looked.iter().filter(|p| exists(p)).cloned().collect();
    if found.is_empty() {
        return Err(KubeconfigError::NotFound { looked });
    }
    Ok(found)
}

/// [`locate`] with this process's environment.
pub fn locate_from_env(explicit: Option<&Path>) -> Result<Vec<PathBuf>, KubeconfigError> {
    locate(
        explicit,
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref().map(Path::new),
        Path::is_file,
    )
}

/// The admin kubeconfig's current context, ready to make a client, and what a node is given
/// from it.
#[derive(Clone)]
pub struct AdminAccess {
    /// The cluster's `server`, as the kubeconfig writes it.
    pub server: String,
    /// The cluster's CA (PEM), which the node checks the API server against.
    pub ca_pem: String,
    /// kube-rs's client configuration for the current context.
    pub config: kube::Config,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Reads one kubeconfig file (kube-rs makes its relative paths absolute against its directory).
fn read(path: &Path) -> Result<Kubeconfig, KubeconfigError> {
    Kubeconfig::read_from(path).map_err(|e| match e {
        kube::config::KubeconfigError::ReadConfig(source, _) => KubeconfigError::Read {
            path: path.to_path_buf(),
            source,
        },
        source => KubeconfigError::Parse {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Loads the current context of the kubeconfig at `path`.
#[cfg(test)]
pub async fn load(path: &Path) -> Result<AdminAccess, KubeconfigError> {
    load_all(&[path.to_path_buf()]).await
}

/// Loads the current context of the kubeconfig files `paths`, merged as kubectl merges them:
/// the first file that sets `current-context` or defines a name wins.
pub async fn load_all(paths: &[PathBuf]) -> Result<AdminAccess, KubeconfigError> {
    let mut merged = Kubeconfig::default();
    for path in paths {
        merged = merged
            .merge(read(path)?)
            .map_err(|source| KubeconfigError::Parse {
                path: path.clone(),
                source,
            })?;
    }
    // kube-rs checks these too; checked here first for messages that name what is missing,
    // and because it would go on without a user that is not defined (as client-go does).
    let current = merged
        .current_context
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| KubeconfigError::Incomplete("no current-context is set".into()))?;
    let context = merged
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| KubeconfigError::Incomplete(format!("context {current:?} not found")))?;
    let cluster = merged
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            KubeconfigError::Incomplete(format!("cluster {:?} not found", context.cluster))
        })?;
    if let Some(user) = &context.user
        && !merged.auth_infos.iter().any(|u| &u.name == user)
    {
        return Err(KubeconfigError::Incomplete(format!(
            "user {user:?} not found"
        )));
    }
    let server = cluster.server.clone().ok_or_else(|| {
        KubeconfigError::Incomplete(format!("cluster {:?} has no server", context.cluster))
    })?;
    let proxy_url = cluster.proxy_url.clone();
    let mut config = kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
        .await
        .map_err(KubeconfigError::Unusable)?;
    // kube-rs also takes HTTPS_PROXY from the environment, and without its proxy feature then
    // refuses to make a client. The admin commands connect directly, as they always have; a
    // `proxy-url` the kubeconfig sets is kept, and refused with a message that says so.
    if proxy_url.is_none() {
        config.proxy_url = None;
    }
    let ca_pem = match &config.root_cert {
        Some(ders) if !ders.is_empty() => pem_certificates(ders)?,
        _ => {
            return Err(KubeconfigError::Incomplete(
                "no certificate-authority for the current context's cluster (the node needs \
                 the cluster's CA)"
                    .into(),
            ));
        }
    };
    Ok(AdminAccess {
        server,
        ca_pem,
        config,
    })
}

/// DER certificates as one PEM bundle.
fn pem_certificates(ders: &[Vec<u8>]) -> Result<String, KubeconfigError> {
    let mut out = String::new();
    for der in ders {
        let mut pem = vec![0u8; der.len() * 2 + 128];
        let n = picolet_core::pki::pem_encode(picolet_core::pki::CERTIFICATE, der, &mut pem)
            .map_err(|e| KubeconfigError::Incomplete(format!("certificate-authority: {e}")))?;
        out.push_str(&String::from_utf8_lossy(&pem[..n]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// A self-signed CA certificate (PEM) with this common name.
    fn ca(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    /// The certificate of a PEM bundle, as DER, to compare bundles whatever their line breaks.
    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn client_certificate_data(a: &AdminAccess) -> Option<String> {
        a.config.auth_info.client_certificate_data.clone()
    }

    #[tokio::test]
    async fn reads_inline_and_file_material_of_the_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = ca("CA-PEM");
        std::fs::write(dir.path().join("ca.crt"), &ca_pem).unwrap();
        let cfg = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: c1\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority: ca.crt\n\
             users:\n- name: u1\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: a\n  context: {{cluster: nope, user: u1}}\n- name: b\n  context:\n    cluster: c1\n    user: u1\n",
            b64("CERT-PEM"),
            b64("KEY-PEM")
        );
        let path = dir.path().join("config");
        std::fs::write(&path, cfg).unwrap();
        let a = load(&path).await.unwrap();
        assert_eq!(a.server, "https://10.0.0.1:6443");
        assert_eq!(der(&a.ca_pem), der(&ca_pem));
        assert_eq!(client_certificate_data(&a), Some(b64("CERT-PEM")));
        assert!(a.config.auth_info.client_key_data.is_some());
        std::fs::write(
            &path,
            "current-context: x\nclusters: []\nusers: []\ncontexts: []\n",
        )
        .unwrap();
        assert!(
            load(&path)
                .await
                .unwrap_err()
                .to_string()
                .contains("context \"x\" not found")
        );
    }

    #[tokio::test]
    async fn bearer_token_users_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca("CA")).unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: c\nclusters:\n- name: k\n  cluster: {server: 'https://10.0.0.3:6443', certificate-authority: ca.crt}\n\
             users:\n- name: u\n  user: {token: abc}\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\n",
        )
        .unwrap();
        let a = load(&path).await.unwrap();
        assert!(a.config.auth_info.token.is_some());
        // A user the context names must exist.
        std::fs::write(
            &path,
            "current-context: c\nclusters:\n- name: k\n  cluster: {server: 'https://10.0.0.3:6443', certificate-authority: ca.crt}\n\
             contexts:\n- name: c\n  context: {cluster: k, user: u}\n",
        )
        .unwrap();
        let err = load(&path).await.unwrap_err().to_string();
        assert!(err.contains("user \"u\" not found"), "{err}");
    }

    #[test]
    fn is_found_as_kubectl_finds_it() {
        let home = Path::new("/home/ada");
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let explicit = Path::new("admin.conf");
        // --kubeconfig wins over everything, even when missing (load reports that file).
        assert_eq!(
            locate(Some(explicit), Some(OsStr::new("/a")), Some(home), none).unwrap(),
            vec![PathBuf::from("admin.conf")]
        );
        // KUBECONFIG: every existing file of the list, in order, empty entries skipped.
        let only_b = |p: &Path| p != Path::new("/a");
        assert_eq!(
            locate(None, Some(OsStr::new("/a::/b:/c")), Some(home), only_b).unwrap(),
            vec![PathBuf::from("/b"), PathBuf::from("/c")]
        );
        // Then ~/.kube/config; an empty KUBECONFIG counts as unset.
        assert_eq!(
            locate(None, Some(OsStr::new("")), Some(home), all).unwrap(),
            vec![PathBuf::from("/home/ada/.kube/config")]
        );
        // Nothing: the error says where it looked.
        let err = locate(None, Some(OsStr::new("/a:/b")), Some(home), none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no admin kubeconfig: give --kubeconfig FILE, or set KUBECONFIG; looked for /a, /b (none exists)"
        );
        let err = locate(None, None, Some(home), none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/home/ada/.kube/config"), "{err}");
        let err = locate(None, None, None, all).unwrap_err().to_string();
        assert!(err.contains("HOME is not set"), "{err}");
    }

    #[tokio::test]
    async fn merges_files_with_the_first_definition_winning() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (sub_ca, top_ca) = (ca("SUB-CA"), ca("TOP-CA"));
        std::fs::write(sub.join("ca.crt"), &sub_ca).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &top_ca).unwrap();
        // The first file only picks the context; the second defines everything, with paths
        // relative to itself; a third redefines the cluster and loses.
        let one = dir.path().join("one");
        std::fs::write(&one, "current-context: c\n").unwrap();
        let two = sub.join("two");
        std::fs::write(
            &two,
            format!(
                "clusters:\n- name: k\n  cluster: {{server: 'https://10.0.0.2:6443', certificate-authority: ca.crt}}\n\
                 users:\n- name: u\n  user: {{client-certificate-data: {}, client-key-data: {}}}\n\
                 contexts:\n- name: c\n  context: {{cluster: k, user: u}}\ncurrent-context: other\n",
                b64("CERT"),
                b64("KEY")
            ),
        )
        .unwrap();
        let three = dir.path().join("three");
        std::fs::write(
            &three,
            "clusters:\n- name: k\n  cluster: {server: 'https://10.9.9.9:6443', certificate-authority: ca.crt}\n",
        )
        .unwrap();
        let a = load_all(&[one, two, three]).await.unwrap();
        assert_eq!(a.server, "https://10.0.0.2:6443");
        assert_eq!(der(&a.ca_pem), der(&sub_ca));
        assert_eq!(client_certificate_data(&a), Some(b64("CERT")));
    }
}
