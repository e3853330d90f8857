//! The host agent's side of certificate management (the core decides when; see
//! `picolet_core::agent` certificates): a fresh P-256 key for each CSR, made by the same
//! `picolet_device::keys` code the firmware uses, and installing what comes back — files in the
//! credentials directory, the API server endpoint, the kubelet port's serving certificate — while
//! the agent keeps running.
//!
//! Files (next to `client.crt` / `client.key`): `serving.crt` and `serving.key`. Each is written
//! to a temporary name and renamed, so a reader never sees half a file; the key mode is 0600.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use picolet_core::agent::CertKind;
use picolet_core::pki;
use picolet_device::keys::NodeKey;
use rand_core::{OsRng, RngCore};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{self, TlsError};

/// Why a certificate could not be installed.
#[derive(Debug)]
pub enum InstallError {
    /// No key was made for this kind (an issued certificate nobody asked for).
    NoPendingKey(CertKind),
    Pem(pki::PkiError),
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    Tls(TlsError),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoPendingKey(k) => write!(f, "no key waiting for a {} certificate", k.as_str()),
            Self::Pem(e) => write!(f, "encoding PEM: {e}"),
            Self::Write { path, source } => write!(f, "cannot write {}: {source}", path.display()),
            Self::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for InstallError {}

/// A key from the OS random source, mixed with this process's identity and time.
pub fn new_key() -> NodeKey {
    let mut seed = [0u8; 64];
    OsRng.fill_bytes(&mut seed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    NodeKey::from_entropy(
        &seed,
        &[&now.to_le_bytes(), &std::process::id().to_le_bytes()],
    )
    .expect("64 bytes of entropy are enough")
}

/// A key as PKCS#8 `PRIVATE KEY` PEM (the form the firmware build and board configuration
/// read).
pub fn key_pem(key: &NodeKey) -> Result<String, pki::PkiError> {
    let mut buf = [0u8; 512];
    let n = pki::pem_encode(pki::PRIVATE_KEY, &key.pkcs8_der(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// PEM for a certificate DER and a key.
pub fn pem_pair(cert_der: &[u8], key: &NodeKey) -> Result<(String, String), pki::PkiError> {
    let mut buf = vec![0u8; 4096];
    let n = pki::pem_encode(pki::CERTIFICATE, cert_der, &mut buf)?;
    let cert = String::from_utf8_lossy(&buf[..n]).into_owned();
    let key = key_pem(key)?;
    Ok((cert, key))
}

/// Writes `contents` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &str, secret: bool) -> Result<(), InstallError> {
    let err = |source| InstallError::Write {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(err)?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// The keys waiting for their certificates, one per kind.
#[derive(Default)]
pub struct PendingKeys {
    keys: [Option<NodeKey>; 2],
}

impl PendingKeys {
    fn slot(&mut self, kind: CertKind) -> &mut Option<NodeKey> {
        match kind {
            CertKind::Client => &mut self.keys[0],
            CertKind::Serving => &mut self.keys[1],
        }
    }

    /// Remembers the key a CSR of `kind` was made with.
    pub fn put(&mut self, kind: CertKind, key: NodeKey) {
        *self.slot(kind) = Some(key);
    }

    /// Takes the key for an issued certificate of `kind`.
    pub fn take(&mut self, kind: CertKind) -> Result<NodeKey, InstallError> {
        self.slot(kind)
            .take()
            .ok_or(InstallError::NoPendingKey(kind))
    }
}

/// The serving certificate in the form the device's TLS server takes.
pub struct DeviceServing {
    pub cert_der: Vec<u8>,
    pub key: p256::ecdsa::SigningKey,
}

impl fmt::Debug for DeviceServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceServing({} byte certificate)", self.cert_der.len())
    }
}

fn device_serving(cert_pem: &str, key_pem: &str) -> Result<DeviceServing, TlsError> {
    use p256::pkcs8::DecodePrivateKey;
    let cert_der = tls::certs(cert_pem, "serving certificate")?[0].to_vec();
    let key_der = tls::key(key_pem, "serving key")?;
    let key = p256::ecdsa::SigningKey::from_pkcs8_der(key_der.secret_der()).map_err(|e| {
        TlsError::Pem {
            what: "serving key (the device TLS server takes P-256 PKCS#8)",
            message: e.to_string(),
        }
    })?;
    Ok(DeviceServing { cert_der, key })
}

/// The kubelet port's current serving certificate, swapped in place when a new one is issued.
#[derive(Debug)]
pub struct ServingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    device: RwLock<Arc<DeviceServing>>,
}

impl ServingCertificate {
    /// Starts with `cert_pem` / `key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(tls::certified_key(cert_pem, key_pem)?),
            device: RwLock::new(Arc::new(device_serving(cert_pem, key_pem)?)),
        })
    }

    /// Serves `cert_pem` / `key_pem` from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let new = tls::certified_key(cert_pem, key_pem)?;
        let device = Arc::new(device_serving(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        *self.device.write().unwrap_or_else(|p| p.into_inner()) = device;
        Ok(())
    }

    /// The current certificate for the device TLS server.
    pub fn device(&self) -> Arc<DeviceServing> {
        self.device
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
