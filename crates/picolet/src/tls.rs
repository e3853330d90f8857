//! rustls configuration for both directions: verified client connections to the API server
//! (pinned cluster CA, optional client certificate) and the kubelet port's server side.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Why a TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM block could not be parsed.
    Pem { what: &'static str, message: String },
    /// rustls refused the configuration.
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    /// The server name is not a valid DNS name or IP.
    ServerName(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pem { what, message } => write!(f, "cannot parse {what}: {message}"),
            Self::Rustls { what, source } => write!(f, "{what}: {source}"),
            Self::ServerName(n) => write!(f, "invalid TLS server name {n:?}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM bundle.
pub fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        what,
        message: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Parses a private key (PKCS#8, SEC1 or PKCS#1).
pub fn key(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        message: e.to_string(),
    })
}

/// A client configuration that trusts only `ca_pem` and, when given, presents a client
/// certificate. There is no option to skip verification.
pub fn client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem, "cluster CA")? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            what: "cluster CA",
            source,
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                certs(cert_pem, "client certificate")?,
                key(key_pem, "client key")?,
            )
            .map_err(|source| TlsError::Rustls {
                what: "client certificate",
                source,
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Validates a server name for SNI and certificate checks.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.into()))
}

/// A certificate chain and key for rustls.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let key = provider()
        .key_provider
        .load_private_key(key(key_pem, "serving key")?)
        .map_err(|source| TlsError::Rustls {
            what: "serving key",
            source,
        })?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        certs(cert_pem, "serving certificate")?,
        key,
    )))
}

/// A server configuration for the kubelet port. With `client_ca_pem`, client certificates
/// are verified against it when presented (a handshake with a bad one fails); clients without
/// one still connect, and the request handler decides what they may see (only `/healthz`).
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(pem, "client CA")? {
                roots.add(c).map_err(|source| TlsError::Rustls {
                    what: "client CA",
                    source,
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Pem {
                what: "client CA",
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(builder.with_cert_resolver(resolver)))
}
