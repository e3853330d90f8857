//! Reads the admin kubeconfig `picolet enrol` uses: the current context's server, CA and client
//! certificate (inline `-data` or file paths relative to the kubeconfig). Found as kubectl finds
//! it: `--kubeconfig`, else `$KUBECONFIG` (a colon-separated list, merged), else
//! `~/.kube/config`.

use std::ffi::OsStr;
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
    /// No `--kubeconfig`, and none of the places kubectl looks has a file.
    NotFound {
        /// Where it looked, in order (empty when neither KUBECONFIG nor HOME is set).
        looked: Vec<PathBuf>,
    },
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
            Self::NotFound { looked } if looked.is_empty() => write!(
                f,
                "no admin kubeconfig: give --kubeconfig FILE, or set KUBECONFIG \
                 (HOME is not set either, so there is no ~/.kube/config)"
            ),
            Self::NotFound { looked } => {
                write!(
                    f,
                    "no admin kubeconfig: give --kubeconfig FILE, or set KUBECONFIG; looked for"
                )?;
                for (i, p) in looked.iter().enumerate() {
                    write!(f, "{} {}", if i == 0 { "" } else { "," }, p.display())?;
                }
                write!(f, " (none exists)")
            }
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

/// One kubeconfig file; each part may be absent, as when several files are merged.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    current_context: Option<String>,
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
        // Read as given: a missing file is reported by `load` with its path.
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
#[cfg(test)]
pub fn load(path: &Path) -> Result<AdminAccess, KubeconfigError> {
    load_all(&[path.to_path_buf()])
}

/// The first entry called `name` in any of `files`, with the directory its relative paths
/// start from: kubectl's merge, where the first file to define a name wins.
fn first<'a, T>(
    files: &'a [(PathBuf, File)],
    part: impl Fn(&'a File) -> &'a [Named<T>],
    name: &str,
) -> Option<(&'a Path, &'a T)> {
    files.iter().find_map(|(path, f)| {
        part(f)
            .iter()
            .find(|n| n.name == name)
            .map(|n| (path.parent().unwrap_or(Path::new(".")), &n.item))
    })
}

/// Loads the current context of the kubeconfig files `paths`, merged as kubectl merges them:
/// the first file that sets `current-context` or defines a name wins.
pub fn load_all(paths: &[PathBuf]) -> Result<AdminAccess, KubeconfigError> {
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| KubeconfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file: File = serde_yaml_ng::from_str(&text).map_err(|e| KubeconfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        files.push((path.clone(), file));
    }
    let current = files
        .iter()
        .find_map(|(_, f)| f.current_context.as_deref().filter(|c| !c.is_empty()))
        .ok_or_else(|| KubeconfigError::Incomplete("no current-context is set".into()))?;
    let (_, ctx) = first(&files, |f| &f.contexts, current)
        .ok_or_else(|| KubeconfigError::Incomplete(format!("context {current:?} not found")))?;
    let (cluster_base, c) = first(&files, |f| &f.clusters, &ctx.cluster).ok_or_else(|| {
        KubeconfigError::Incomplete(format!("cluster {:?} not found", ctx.cluster))
    })?;
    let (user_base, u) = first(&files, |f| &f.users, &ctx.user)
        .ok_or_else(|| KubeconfigError::Incomplete(format!("user {:?} not found", ctx.user)))?;
    Ok(AdminAccess {
        server: c.server.clone(),
        tls_server_name: c.tls_server_name.clone(),
        ca_pem: material(
            cluster_base,
            &c.certificate_authority_data,
            &c.certificate_authority,
            "certificate-authority",
        )?,
        cert_pem: material(
            user_base,
            &u.client_certificate_data,
            &u.client_certificate,
            "client-certificate",
        )?,
        key_pem: material(user_base, &u.client_key_data, &u.client_key, "client-key")?,
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

    #[test]
    fn merges_files_with_the_first_definition_winning() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("ca.crt"), "SUB-CA").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "TOP-CA").unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
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
        let a = load_all(&[one, two, three]).unwrap();
        assert_eq!(a.server, "https://10.0.0.2:6443");
        assert_eq!(
            (a.ca_pem.as_str(), a.cert_pem.as_str(), a.key_pem.as_str()),
            ("SUB-CA", "CERT", "KEY")
        );
    }
}
