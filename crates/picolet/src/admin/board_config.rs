//! `picolet board-config`: one board's settings and credentials as a UF2 that writes only the
//! firmware's configuration sector, so that one firmware UF2 serves every board.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use picolet_device::board_config::{BoardConfig, ConfigError, FLASH_OFFSET, SECTOR_SIZE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::uf2;
use crate::credentials::{Credentials, CredentialsError};

/// What goes into one board's configuration.
pub struct BoardConfigOptions {
    /// The enrolment output for this board.
    pub credentials: PathBuf,
    /// The API server as the board reaches it.
    pub api_server: SocketAddrV4,
    /// Wi-Fi network (empty for the serial-link firmware).
    pub wifi_ssid: String,
    /// Wi-Fi passphrase.
    pub wifi_password: String,
    /// The UF2 to write.
    pub out: PathBuf,
}

/// Why no configuration was written.
#[derive(Debug)]
pub enum BoardConfigError {
    /// The credentials directory is missing or unreadable.
    Credentials(CredentialsError),
    /// A PEM file in it does not parse.
    Pem(&'static str, String),
    /// The record does not fit the sector or lacks a field.
    Record(ConfigError),
    /// The UF2 could not be written.
    Write(PathBuf, std::io::Error),
}

impl std::fmt::Display for BoardConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Credentials(e) => write!(f, "{e}"),
            Self::Pem(what, e) => write!(f, "cannot parse the {what}: {e}"),
            Self::Record(e) => write!(f, "{e}"),
            Self::Write(p, e) => write!(f, "cannot write {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for BoardConfigError {}

/// The configuration sector's bytes for one board, and the node name they configure.
pub fn sector(opts: &BoardConfigOptions) -> Result<(Vec<u8>, String), BoardConfigError> {
    // A directory from `picolet token` (a bootstrap token, no certificate yet) or from
    // `picolet enrol` (certificate and key).
    let bootstrap = opts
        .credentials
        .join(crate::node::join::TOKEN_FILE)
        .exists()
        && !opts.credentials.join("client.crt").exists();
    let (identity, ca_pem, client_ca_pem, cert_pem, key_pem, token) = if bootstrap {
        let (identity, ca, token) = Credentials::load_bootstrap(&opts.credentials)
            .map_err(BoardConfigError::Credentials)?;
        let client_ca = std::fs::read_to_string(opts.credentials.join("client-ca.crt")).ok();
        (identity, ca, client_ca, None, None, token)
    } else {
        let c = Credentials::load(&opts.credentials).map_err(BoardConfigError::Credentials)?;
        (
            c.identity,
            c.ca_pem,
            c.client_ca_pem,
            Some(c.cert_pem),
            Some(c.key_pem),
            String::new(),
        )
    };
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| BoardConfigError::Pem("cluster CA", e.to_string()))?;
    let cert = match &cert_pem {
        Some(pem) => Some(
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| BoardConfigError::Pem("client certificate", e.to_string()))?,
        ),
        None => None,
    };
    let key = match &key_pem {
        Some(pem) => Some(
            PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| BoardConfigError::Pem("client key", e.to_string()))?,
        ),
        None => None,
    };
    let client_ca = match &client_ca_pem {
        Some(pem) => Some(
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| BoardConfigError::Pem("client CA", e.to_string()))?,
        ),
        None => None,
    };
    let config = BoardConfig {
        node_name: &identity.node_name,
        tls_server_name: &identity.tls_server_name,
        api_server: (opts.api_server.ip().octets(), opts.api_server.port()),
        wifi_ssid: &opts.wifi_ssid,
        wifi_password: &opts.wifi_password,
        ca_der: &ca,
        client_cert_der: cert.as_deref().unwrap_or(&[]),
        client_key_pkcs8_der: key.as_ref().map(|k| k.secret_der()).unwrap_or(&[]),
        client_ca_der: client_ca.as_deref().unwrap_or(&[]),
        bootstrap_token: &token,
    };
    let mut sector = vec![0xff; SECTOR_SIZE];
    config
        .encode(&mut sector)
        .map_err(BoardConfigError::Record)?;
    // The firmware checks every field again at boot; check here too, for a clear error now.
    BoardConfig::parse(&sector).map_err(BoardConfigError::Record)?;
    Ok((sector, identity.node_name))
}

/// Writes the board's configuration UF2; returns the node name it configures.
pub fn write(opts: &BoardConfigOptions) -> Result<String, BoardConfigError> {
    let (sector, node) = sector(opts)?;
    let image = uf2::image(FLASH_OFFSET, &sector);
    write_private(&opts.out, &image).map_err(|e| BoardConfigError::Write(opts.out.clone(), e))?;
    Ok(node)
}

/// The UF2 holds the board's private key: readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::NodeIdentity;

    fn credentials(dir: &Path) {
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".into()]).unwrap();
        let node = rcgen::generate_simple_self_signed(vec!["pico-node-3".into()]).unwrap();
        Credentials {
            identity: NodeIdentity {
                node_name: "pico-node-3".into(),
                server: "https://192.168.1.10:6443".into(),
                tls_server_name: "kubernetes".into(),
            },
            ca_pem: ca.cert.pem(),
            cert_pem: node.cert.pem(),
            key_pem: node.key_pair.serialize_pem(),
            client_ca_pem: None,
        }
        .save(dir)
        .unwrap();
    }

    fn options(dir: &Path) -> BoardConfigOptions {
        BoardConfigOptions {
            credentials: dir.join("creds"),
            api_server: "192.168.1.10:6443".parse().unwrap(),
            wifi_ssid: "lab".into(),
            wifi_password: "secret".into(),
            out: dir.join("board.uf2"),
        }
    }

    #[test]
    fn the_sector_holds_the_enrolment_output_as_der() {
        let dir = tempfile::tempdir().unwrap();
        credentials(&dir.path().join("creds"));
        let opts = options(dir.path());
        let (sector, node) = sector(&opts).unwrap();
        assert_eq!(node, "pico-node-3");
        let c = BoardConfig::parse(&sector).unwrap();
        assert_eq!(c.node_name, "pico-node-3");
        assert_eq!(c.tls_server_name, "kubernetes");
        assert_eq!(c.api_server, ([192, 168, 1, 10], 6443));
        assert_eq!((c.wifi_ssid, c.wifi_password), ("lab", "secret"));
        assert_eq!(c.ca_der[0], 0x30, "DER, not PEM");
        assert_eq!(c.client_key_pkcs8_der[0], 0x30);
        assert_eq!(write(&opts).unwrap(), "pico-node-3");
        let uf2 = std::fs::read(&opts.out).unwrap();
        assert_eq!(uf2.len(), 16 * 512, "one 4 KiB sector in 256-byte pages");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&opts.out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the UF2 holds a private key");
    }

    #[test]
    fn missing_credentials_say_so_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let err = write(&opts).unwrap_err();
        assert!(err.to_string().contains("node.toml"), "{err}");
        assert!(!opts.out.exists());
    }
}
